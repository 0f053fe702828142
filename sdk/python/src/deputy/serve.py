"""Serves an agent's ASGI app where deputyd reaches it, and says where:

    python -m deputy.serve MODULE:APP [--listen 127.0.0.1:0 | unix:///run/deputy/NAME.sock]

With port 0 the kernel picks the port; the line `NAME listening on HOST:PORT` (or the socket's
path) is printed once the socket accepts, for whatever starts the agent to read. It listens on
loopback or a unix socket only: the app trusts the facts deputyd hands it, so nothing else may
reach it. Needs uvicorn (`pip install 'deputy-sdk[serve]'`).
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import os
import socket
import sys


def bind(listen: str) -> tuple[socket.socket, str]:
    """A listening socket for `listen` and how to name it."""
    if listen.startswith("unix://"):
        path = listen.removeprefix("unix://")
        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(128)
        return sock, f"unix://{path}"
    host, _, port = listen.rpartition(":")
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"--listen {listen}: listen on loopback or a unix socket, where only deputyd reaches the app")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, int(port)))
    sock.listen(128)
    bound_host, bound_port = sock.getsockname()
    return sock, f"{bound_host}:{bound_port}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deputy.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("app", help="MODULE:ATTRIBUTE of the ASGI app")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT on loopback, or unix:///PATH")
    parser.add_argument("--name", help="the name printed (default: the module)")
    args = parser.parse_args(argv)
    import uvicorn

    module, _, attribute = args.app.partition(":")
    sys.path.insert(0, os.getcwd())
    app = getattr(importlib.import_module(module), attribute or "app")
    sock, where = bind(args.listen)
    print(f"{args.name or module} listening on {where}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on")).run(sockets=[sock])


if __name__ == "__main__":
    main()
