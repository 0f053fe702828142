#!/usr/bin/env python3
"""Policy engines side by side, one run: OPA's own engine (Go, v1.20.2, through the PyPI
bindings the conformance check uses) against Deputy's rego engine (regorus, through
`deputy policy eval --inputs`), on the shipped policy and the same input (a support agent
reading its own team's customer: every rule runs).

Both sides pay JSON encoding per decision (ctypes and a JSON envelope for OPA; parsing the
input line and printing the result line for Deputy), so the ratio is the comparison; the
Criterion bench (`cargo bench -p deputy-policy --bench decisions`) has Deputy's in-process cost.

Usage: python3 bench/policy_engines.py [--count N]   (builds the release deputy binary)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "policies" / "conformance"))
import opa_conformance  # noqa: E402  (fetches and caches OPA's engine)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    args = parser.parse_args()
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    subprocess.run(["cargo", "build", "--release", "-p", "deputy-cli", "--bin", "deputy"], cwd=ROOT, check=True)
    policy = ROOT / "policies" / "authz"
    case = json.loads((ROOT / "policies" / "cases" / "support-reads-own-team-customer.json").read_text())
    document = case["input"]

    sys.path.insert(0, str(opa_conformance.fetch_oracle()))
    engine = opa_conformance.opa_engine(policy, with_tests=False)
    for _ in range(500):
        opa_conformance.opa_decide(engine, document)
    started = time.perf_counter()
    for _ in range(args.count):
        result = opa_conformance.opa_decide(engine, document)
    opa_us = (time.perf_counter() - started) / args.count * 1e6
    assert result["raw"] == case["expect"], result

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as lines:
        line = json.dumps(document) + "\n"
        lines.write(line * args.count)
    try:
        started = time.perf_counter()
        out = subprocess.run([str(target / "deputy"), "policy", "eval", "--dir", str(policy),
                              "--inputs", lines.name], capture_output=True, text=True, check=True)
        deputy_us = (time.perf_counter() - started) / args.count * 1e6
    finally:
        os.unlink(lines.name)
    last = json.loads(out.stdout.splitlines()[-1])
    assert last["raw"] == case["expect"], last

    print(f"{args.count} decisions of the shipped policy, one input, 1 core each, one run\n")
    print("| engine | µs per decision (incl. JSON in/out) | decisions/s |")
    print("|---|---|---|")
    print(f"| OPA v1.20.2 (Go `rego` package, via ctypes) | {opa_us:.1f} | {1e6 / opa_us:,.0f} |")
    print(f"| Deputy `rego` engine (regorus 0.14) | {deputy_us:.1f} | {1e6 / deputy_us:,.0f} |")


if __name__ == "__main__":
    main()
