"""Runs an ASGI app of this directory on 127.0.0.1, on a port the kernel picks, and says
`listening on 127.0.0.1:PORT` once it accepts (the test harness reads it: no port is picked
and then bound).

    python serve.py triage|crm
"""

import importlib
import socket
import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))


def main() -> None:
    app = importlib.import_module(sys.argv[1]).app
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    host, port = sock.getsockname()
    print(f"{sys.argv[1]} listening on {host}:{port}", flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
