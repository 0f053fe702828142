"""Tasks: starting one for a principal, continuing the one a request arrived in, and the facts
deputyd verified about a request (who called, for whom, in which task, with what rights).

The agent never sees delegation links: it names what it wants in `Deputy-*` headers to its own
deputyd, which signs, verifies and enforces (docs/delegation.md).
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

PRINCIPAL = "deputy-principal"
TASK = "deputy-task"
SCOPE = "deputy-scope"
BUDGET = "deputy-budget"
TASK_TTL = "deputy-task-ttl"
CONTEXT = "deputy-context"
DRY_RUN = "deputy-dry-run"
APPROVAL = "deputy-approval"
CHAIN_ACTORS = "deputy-chain-actors"
PEER_ID = "deputy-peer-id"
REQUEST_ID = "deputy-request-id"
IDEMPOTENCY_KEY = "idempotency-key"


@dataclass(frozen=True)
class Task:
    """A task this agent starts for `principal` (`user:alice@example.org`), granting the
    service it calls `scope` (`["tickets:read"]`), at most `budget` calls below it, for `ttl`
    (`"10m"`, or seconds). Its `id` is fixed here (a UUID unless given), so that every call
    made with this object, an MCP session's included, is one task."""

    principal: str
    scope: tuple[str, ...] | list[str] = ()
    budget: int | None = None
    ttl: str | int | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        if not self.principal:
            raise ValueError("a task acts for a principal, such as 'user:alice@example.org'")
        if not self.scope or isinstance(self.scope, str):
            raise ValueError(
                "a task grants scopes, as a list such as ['tickets:read']: deputyd refuses a "
                "task without them"
            )

    def headers(self) -> dict[str, str]:
        return {PRINCIPAL: self.principal, TASK: self.id, **_grant(self.scope, self.budget, self.ttl)}


@dataclass(frozen=True)
class Continue:
    """Continue the task behind `context` (the handle deputyd delivered with a request),
    narrowing it to `scope` and `budget` if given (omitted: what was granted)."""

    context: str
    scope: tuple[str, ...] | list[str] = ()
    budget: int | None = None
    ttl: str | int | None = None

    def headers(self) -> dict[str, str]:
        return {CONTEXT: self.context, **_grant(self.scope, self.budget, self.ttl)}


def _grant(scope: tuple[str, ...] | list[str], budget: int | None, ttl: str | int | None) -> dict[str, str]:
    """The headers of what the next link grants."""
    headers = {}
    if scope:
        headers[SCOPE] = ", ".join(scope)
    if budget is not None:
        headers[BUDGET] = str(budget)
    if ttl is not None:
        headers[TASK_TTL] = str(ttl)
    return headers


@dataclass(frozen=True)
class Verified:
    """What this agent's deputyd verified about a request it delivered: the mTLS peer, and,
    when the call is part of a task, the task, the principal, the granted scopes, the calls
    left, the chain's agents (first delegator first) and the handle to continue it."""

    peer: str
    request_id: str | None = None
    task: str | None = None
    principal: str | None = None
    scope: tuple[str, ...] = ()
    budget: int | None = None
    actors: tuple[str, ...] = ()
    context: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Verified | None:
        """The facts in `headers` (names lower case), or `None` when the request did not come
        through deputyd (no `Deputy-Peer-Id`)."""
        peer = headers.get(PEER_ID)
        if not peer:
            return None
        budget = headers.get(BUDGET)
        return cls(
            peer=peer,
            request_id=headers.get(REQUEST_ID),
            task=headers.get(TASK),
            principal=headers.get(PRINCIPAL),
            scope=_list(headers.get(SCOPE)),
            budget=int(budget) if budget and budget.isdigit() else None,
            actors=_list(headers.get(CHAIN_ACTORS)),
            context=headers.get(CONTEXT),
        )

    def continuing(self, scope: tuple[str, ...] | list[str] = (), budget: int | None = None) -> Continue:
        """The task this request arrived in, to continue in a call of this agent's."""
        if not self.context:
            raise LookupError(
                f"the request from {self.peer} is part of no task (deputyd delivered no "
                "Deputy-Context handle); start one with Task(principal=...)"
            )
        return Continue(self.context, scope, budget)


def _list(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


_current: contextvars.ContextVar[Verified | None] = contextvars.ContextVar("deputy_verified", default=None)


def current() -> Verified | None:
    """The facts of the request being handled (set by the ASGI or WSGI middleware), if any."""
    return _current.get()


def _enter(verified: Verified | None) -> contextvars.Token[Verified | None]:
    return _current.set(verified)


def _leave(token: contextvars.Token[Verified | None]) -> None:
    _current.reset(token)
