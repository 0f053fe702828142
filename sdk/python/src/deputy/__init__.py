"""Agents on a Deputy mesh.

An agent calls through its node's deputyd (`Agent`, `AsyncAgent`), starts tasks for a
principal (`Task`) or continues the one a request arrived in (`current()`, `Continue`), reads
what deputyd verified about a request (`DeputyASGIMiddleware`, `DeputyWSGIMiddleware`,
`Verified`), and gets deputyd's refusals as exceptions (`deputy.problems`). `deputy.mcp` is an
MCP client transport through the mesh.
"""

from . import problems
from .client import CURRENT, NO_TASK, Agent, AsyncAgent, target
from .middleware import DeputyASGIMiddleware, DeputyWSGIMiddleware
from .problems import ApprovalRequired, DeputyError, PolicyDenied, Problem, ServiceError
from .task import Continue, Task, Verified, current

__all__ = [
    "CURRENT",
    "NO_TASK",
    "Agent",
    "ApprovalRequired",
    "AsyncAgent",
    "Continue",
    "DeputyASGIMiddleware",
    "DeputyError",
    "DeputyWSGIMiddleware",
    "PolicyDenied",
    "Problem",
    "ServiceError",
    "Task",
    "Verified",
    "current",
    "problems",
    "target",
]
