"""The mesh the tests run against is started by `tests/tests/sdk_python.rs` (the README's test
command runs it), which hands its addresses over in the environment. Run alone:

    cargo test -p deputy-tests --test sdk_python
"""

import os
import subprocess

import pytest


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: these tests run against the mesh tests/tests/sdk_python.rs "
            "starts (cargo test -p deputy-tests --test sdk_python)"
        )
    return value


@pytest.fixture(scope="session")
def mesh() -> dict[str, str]:
    return {
        name: _env(f"DEPUTY_{name.upper()}")
        for name in ("frontdoor", "triage", "node1_operator", "node2_operator", "bin", "node1_audit", "node2_audit")
    }


@pytest.fixture(scope="session")
def deputy_cli(mesh):
    """Runs `deputy ARGS` (as an operator); returns its output, failing on an error."""

    def run(*args: str) -> str:
        done = subprocess.run([mesh["bin"], *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    return run
