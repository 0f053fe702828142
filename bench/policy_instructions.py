#!/usr/bin/env python3
"""Instructions per policy decision, counted by valgrind (callgrind): a measure that does not
move with the machine's load, so two commits (or two ways of writing a rule) compare exactly
where timings on a shared machine differ by half from one run to the next.

For each decision case it runs `examples/decide_loop.rs` (`Policy::decide`, as deputyd calls it:
input serialized once, rego evaluated on regorus's VM, decision read strictly, decision log
event) with 0 and with N decisions, and prints the difference divided by N.

With --wasm, the policy is compiled first by `opa build -t wasm` (the OPA scripts/peers builds)
and decided by the wasm engine.

Usage: python3 bench/policy_instructions.py [--count N] [--policy DIR] [--wasm] [CASE ...]
       (CASE: a name in policies/cases/; default: every case; installs valgrind if root)
"""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from datapath import ensure_tools  # noqa: E402


def instructions(binary, policy, case, count):
    """Instructions the program executes for `count` decisions (load included)."""
    env = dict(os.environ)
    env.pop("RUST_BACKTRACE", None)  # regorus captures backtraces for internal errors with it
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         str(binary), str(policy), str(case), str(count)],
        capture_output=True, text=True, env=env, check=True,
    )
    match = re.search(r"Collected : (\d+)", run.stderr)
    if not match:
        sys.exit(f"valgrind printed no instruction count:\n{run.stderr}")
    return int(match.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--policy", type=Path, default=ROOT / "policies" / "authz")
    parser.add_argument("--wasm", action="store_true", help="compile with opa build -t wasm first")
    parser.add_argument("cases", nargs="*")
    args = parser.parse_args()
    if args.wasm:
        from datapath import go_peer  # noqa: E402
        import tempfile
        bundle = Path(tempfile.mkdtemp(prefix="deputy-instructions-")) / "policy.tar.gz"
        subprocess.run([go_peer("opa"), "build", "-t", "wasm", "-e", "deputy/authz/decision",
                        "-o", str(bundle), str(args.policy)], check=True)
        args.policy = bundle
    ensure_tools({"valgrind": "valgrind"})
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "deputy-policy", "--example", "decide_loop"],
                   cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = target / "release" / "examples" / "decide_loop"
    names = args.cases or sorted(p.stem for p in (ROOT / "policies" / "cases").glob("*.json"))
    print(f"{'case':<40} {'instructions/decision':>22}")
    for name in names:
        case = ROOT / "policies" / "cases" / f"{name}.json"
        base = instructions(binary, args.policy, case, 0)
        loaded = instructions(binary, args.policy, case, args.count)
        print(f"{name:<40} {(loaded - base) // args.count:>22,}")


if __name__ == "__main__":
    main()
