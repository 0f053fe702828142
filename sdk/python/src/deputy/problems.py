"""deputyd's refusals as exceptions: one class per problem type, with the problem's fields.

deputyd answers a call it refuses with an RFC 9457 problem (`application/problem+json`) and
says which deputyd refused it in `Deputy-Problem-Source` (`this-node`: the agent's own;
`service-node`: the one in front of the service). Only such responses become these exceptions:
a service can write any body, but it cannot set that header (deputyd removes every `Deputy-*`
header an agent answers with), so a service cannot make an agent believe, say, that an approval
is required.
"""

from __future__ import annotations

from typing import Any

import httpx

PROBLEM_SOURCE = "deputy-problem-source"
PROBLEM_PREFIX = "urn:deputy:problem:"


class DeputyError(Exception):
    """Anything this SDK raises."""


class ServiceError(DeputyError):
    """The service answered with an error status (4xx or 5xx) of its own: not a refusal of
    deputyd's. `response` is its answer."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        super().__init__(
            f"the service answered {response.status_code} {response.reason_phrase} "
            f"to {response.request.method} {response.request.url}"
        )


class Problem(DeputyError):
    """A call deputyd refused. Subclasses name each problem type; every field of the problem
    is an attribute (`type`, `title`, `status`, `detail`, `request_id`, `decision_id`,
    `reasons`, `approval_id`), `source` says which deputyd refused (`this-node` or
    `service-node`) and `body` holds the whole problem."""

    #: The problem type's last segment (`policy-denied`); `None` for an unknown type.
    kind: str | None = None

    def __init__(self, body: dict[str, Any], source: str) -> None:
        self.body = body
        self.source = source
        self.type: str = str(body.get("type", ""))
        self.title: str = str(body.get("title", ""))
        status = body.get("status", 0)
        self.status: int = status if isinstance(status, int) else 0
        self.detail: str = str(body.get("detail", ""))
        self.request_id: str | None = body.get("request_id")
        self.decision_id: str | None = body.get("decision_id")
        self.reasons: list[str] = list(body.get("reasons", []) or [])
        self.approval_id: str | None = body.get("approval_id")
        where = "this agent's deputyd" if source == "this-node" else "the service's deputyd"
        super().__init__(f"{self.title or self.type} ({self.status}, refused by {where}): {self.detail}")


def _problem(name: str, kind: str, doc: str) -> type[Problem]:
    return type(name, (Problem,), {"kind": kind, "__doc__": doc})


# One class per type deputyd answers with (crates/deputy-proxy/src/problem.rs).
UnknownService = _problem("UnknownService", "unknown-service", "No service of that name is configured on the node.")
MissingTarget = _problem("MissingTarget", "missing-target", "The request named no service.")
CallerNotAttested = _problem("CallerNotAttested", "caller-not-attested", "The caller is not the agent of this listener.")
NoIdentity = _problem("NoIdentity", "no-identity", "deputyd holds no SVID for the agent yet.")
PeerIdentityMismatch = _problem("PeerIdentityMismatch", "peer-identity-mismatch", "The service presented another SPIFFE ID than configured.")
PeerNotTrusted = _problem("PeerNotTrusted", "peer-not-trusted", "The service's certificate did not verify.")
UpstreamUnavailable = _problem("UpstreamUnavailable", "upstream-unavailable", "The service (or its deputyd) could not be reached.")
Timeout = _problem("Timeout", "timeout", "The service did not answer in time.")
BadRequest = _problem("BadRequest", "bad-request", "The request was malformed.")
ChainRejected = _problem("ChainRejected", "chain-rejected", "The delegation chain did not verify at the receiving end.")
ChainTooLarge = _problem("ChainTooLarge", "chain-too-large", "The delegation chain is larger than allowed.")
OriginationRefused = _problem("OriginationRefused", "origination-refused", "The agent may not start tasks for this principal.")
ContextRefused = _problem("ContextRefused", "context-refused", "The task handle is unknown, expired, or another agent's.")
ScopeEscalation = _problem("ScopeEscalation", "scope-escalation", "A scope asked for is not covered by what was granted.")
BudgetEscalation = _problem("BudgetEscalation", "budget-escalation", "More calls were asked for than remain.")
BudgetExhausted = _problem("BudgetExhausted", "budget-exhausted", "Every call the task's link allows has been made.")
ExtensionRefused = _problem("ExtensionRefused", "extension-refused", "The delegation would make a cycle.")
PolicyDenied = _problem("PolicyDenied", "policy-denied", "The policy denied the call; `reasons` says why.")
ApprovalRequired = _problem(
    "ApprovalRequired",
    "approval-required",
    "The call is held until an operator approves it: retry the identical call with "
    "`approval=exc.approval_id` once approved.",
)
ApprovalRefused = _problem("ApprovalRefused", "approval-refused", "The approval named does not let the call through.")
Revoked = _problem("Revoked", "revoked", "The task, agent or principal was revoked.")
AuditUnavailable = _problem("AuditUnavailable", "audit-unavailable", "deputyd cannot write its audit trail and refuses calls.")
IdempotencyKeyRequired = _problem("IdempotencyKeyRequired", "idempotency-key-required", "This write needs an Idempotency-Key.")
IdempotencyConflict = _problem("IdempotencyConflict", "idempotency-conflict", "A call with this key is still in flight.")
IdempotencyKeyReused = _problem("IdempotencyKeyReused", "idempotency-key-reused", "The key was used for another request.")
BodyRefused = _problem("BodyRefused", "body-refused", "The body could not be read or is refused.")
AnswerRefused = _problem(
    "AnswerRefused", "answer-refused", "The service answered a list deputyd could not read, so it was not passed on."
)
BodyNotInspectable = _problem("BodyNotInspectable", "body-not-inspectable", "The policy needs a body deputyd cannot read.")
PeerNotAllowed = _problem("PeerNotAllowed", "peer-not-allowed", "The receiving node does not serve this caller.")
Overloaded = _problem("Overloaded", "overloaded", "deputyd is at a limit; retry later.")
SecretUnavailable = _problem("SecretUnavailable", "secret-unavailable", "A credential the call needs is not available.")
Internal = _problem("Internal", "internal", "deputyd failed; see its log.")

BY_KIND: dict[str, type[Problem]] = {
    cls.kind: cls  # type: ignore[misc]
    for cls in list(globals().values())
    if isinstance(cls, type) and issubclass(cls, Problem) and cls.kind
}


def problem_of(response: httpx.Response) -> Problem | None:
    """The problem `response` carries, if deputyd refused the call; else `None`."""
    source = response.headers.get(PROBLEM_SOURCE)
    if source not in ("this-node", "service-node"):
        return None
    try:
        body = response.json()
    except ValueError:
        body = {"type": "", "status": response.status_code, "detail": response.text[:500]}
    if not isinstance(body, dict):
        body = {"status": response.status_code, "detail": str(body)[:500]}
    kind = str(body.get("type", "")).removeprefix(PROBLEM_PREFIX)
    return BY_KIND.get(kind, Problem)(body, source)


def raise_for(response: httpx.Response) -> httpx.Response:
    """Raises the [`Problem`] deputyd refused the call with, or a [`ServiceError`] for the
    service's own error status; returns `response` otherwise."""
    problem = problem_of(response)
    if problem is not None:
        raise problem
    if response.status_code >= 400:
        raise ServiceError(response)
    return response
