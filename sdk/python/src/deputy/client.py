"""Agents' clients: every call goes to the agent's own deputyd (its outbound listener), which
attests the caller, signs the delegation, enforces policy and carries the call over mTLS.

`service` is the logical name deputyd routes by. `mcp://SERVICE/path` URLs are the same
thing written as a URL: the SDK sends them to deputyd as `http://SERVICE/path` (the scheme is
a local routing convention, not a protocol), and deputyd takes an absolute-form `mcp://` request
line too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from .problems import raise_for
from .task import APPROVAL, DRY_RUN, IDEMPOTENCY_KEY, Continue, Task, current

#: Continue the task of the request being handled (when there is one); the default.
CURRENT = "current"
#: Make the call in no task.
NO_TASK = "none"

TaskArg = Task | Continue | str | None


_SERVICE = re.compile(r"[a-z0-9][a-z0-9._-]*")


def _service(name: str) -> str:
    if not _SERVICE.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a service name (lower-case letters, digits, '.', '-', '_'): "
            "deputyd routes by its configured [[service]] names"
        )
    return name


def target(url_or_service: str, path: str = "/") -> str:
    """The URL deputyd is sent for `mcp://SERVICE/path`, `http://SERVICE/path` or a bare
    service name with `path`."""
    if "://" not in url_or_service:
        if not path.startswith("/"):
            path = "/" + path
        return f"http://{_service(url_or_service)}{path}"
    parts = urlsplit(url_or_service)
    if parts.username or parts.password or parts.port:
        raise ValueError(f"{url_or_service!r}: name the service alone (no user, password or port)")
    if parts.scheme not in ("mcp", "http"):
        raise ValueError(
            f"{url_or_service!r}: deputyd routes mcp://SERVICE/... and http://SERVICE/...; "
            "TLS to the service is deputyd's job, so do not ask for https"
        )
    if not parts.hostname:
        raise ValueError(f"{url_or_service!r} names no service")
    rest = parts.path or "/"
    if parts.query:
        rest += "?" + parts.query
    return f"http://{_service(parts.hostname)}{rest}"


def call_headers(
    task: TaskArg,
    *,
    headers: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
    dry_run: bool = False,
    approval: str | None = None,
) -> dict[str, str]:
    """The headers of one call: the caller's, the task's, and the gateway's."""
    out = {k.lower(): v for k, v in (headers or {}).items()}
    if task == CURRENT or task is None:
        verified = current()
        task = verified.continuing() if verified and verified.context else None
    if isinstance(task, (Task, Continue)):
        out.update(task.headers())
    elif task not in (None, NO_TASK):
        raise TypeError(f"task must be a Task, a Continue, CURRENT or NO_TASK, not {task!r}")
    if idempotency_key is not None:
        out[IDEMPOTENCY_KEY] = idempotency_key
    if dry_run:
        out[DRY_RUN] = "true"
    if approval is not None:
        out[APPROVAL] = approval
    return out


def _client_settings(proxy_url: str, timeout: float) -> dict[str, Any]:
    # The agent's deputyd is its only way out: no environment proxy, no redirects followed
    # (a redirect would leave the mesh's naming), no TLS (deputyd does it).
    return {"proxy": proxy_url, "timeout": timeout, "trust_env": False, "follow_redirects": False}


class Agent:
    """An agent's synchronous client, bound to its deputyd listener (`proxy_url`,
    `http://127.0.0.1:15001`)."""

    def __init__(self, proxy_url: str, *, client_id: str | None = None, timeout: float = 30.0) -> None:
        self.proxy_url = proxy_url
        self.client_id = client_id
        self._http = httpx.Client(**_client_settings(proxy_url, timeout))

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        task: TaskArg = CURRENT,
        idempotency_key: str | None = None,
        dry_run: bool = False,
        approval: str | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """`method` to `url` (`mcp://SERVICE/path` or `http://SERVICE/path`) through deputyd;
        raises deputyd's refusal as its [`Problem`](deputy.problems.Problem) and the service's
        error status as [`ServiceError`](deputy.problems.ServiceError)."""
        headers = call_headers(task, headers=headers, idempotency_key=idempotency_key, dry_run=dry_run, approval=approval)
        return raise_for(self._http.request(method, target(url), headers=headers, **kwargs))

    def call(self, service: str, path: str = "/", method: str = "GET", **kwargs: Any) -> httpx.Response:
        """`method` `path` on `service`; see [`request`](Agent.request)."""
        return self.request(method, target(service, path), **kwargs)

    def invoke_skill(self, name: str, payload: Any, **kwargs: Any) -> Any:
        """Invokes the skill `name`: the service of that name, `POST mcp://NAME/invoke` with
        `payload` as JSON; returns its JSON answer."""
        return self.request("POST", f"mcp://{name}/invoke", json=payload, **kwargs).json()


class AsyncAgent:
    """An agent's asynchronous client; see [`Agent`]."""

    def __init__(self, proxy_url: str, *, client_id: str | None = None, timeout: float = 30.0) -> None:
        self.proxy_url = proxy_url
        self.client_id = client_id
        self.timeout = timeout
        self._http = httpx.AsyncClient(**_client_settings(proxy_url, timeout))

    async def __aenter__(self) -> AsyncAgent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        task: TaskArg = CURRENT,
        idempotency_key: str | None = None,
        dry_run: bool = False,
        approval: str | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """See [`Agent.request`]."""
        headers = call_headers(task, headers=headers, idempotency_key=idempotency_key, dry_run=dry_run, approval=approval)
        return raise_for(await self._http.request(method, target(url), headers=headers, **kwargs))

    async def call(self, service: str, path: str = "/", method: str = "GET", **kwargs: Any) -> httpx.Response:
        """See [`Agent.call`]."""
        return await self.request(method, target(service, path), **kwargs)

    async def invoke_skill(self, name: str, payload: Any, **kwargs: Any) -> Any:
        """See [`Agent.invoke_skill`]."""
        response = await self.request("POST", f"mcp://{name}/invoke", json=payload, **kwargs)
        return response.json()
