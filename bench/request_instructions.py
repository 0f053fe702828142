#!/usr/bin/env python3
"""Instructions per request through a deputyd pair, counted by valgrind (callgrind): the data
path's cost in a measure that does not move with the machine's load.

Three pairs as bench/datapath.py builds them (plain, the shipped policy at both ends on the rego
engine, the same policy compiled by `opa build -t wasm` on the wasm engine), each deputyd run
under callgrind. After a warm-up, both nodes' counters are zeroed, COUNT requests are sent one
after another on one keep-alive connection, and the counters are dumped: the instructions both
nodes executed, divided by COUNT. Instrumentation runs only while counting (--instr-atstart=no),
so start-up costs nothing.

With --profile, each dump is kept and `callgrind_annotate` prints the functions that cost the most
(inclusive), to see where the instructions policy adds go.

Usage: python3 bench/request_instructions.py [--count N] [--profile] [--no-build]
"""

import argparse
import http.client
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datapath import (ROOT, Processes, deputyd_pair, ensure_tools, log, shipped_policy,  # noqa: E402
                      start_backend, start_issuer, wasm_bundle)


def callgrind(work, deputyd):
    """A wrapper that runs deputyd under callgrind, instrumentation off until asked."""
    wrapper = work / "deputyd-callgrind"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="{work}/callgrind.%p" '
        f'"{deputyd}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def control(pid, *args):
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def send(port, count):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(count):
        conn.request("GET", "/", headers={"Host": "beta"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            sys.exit(f"a request got {response.status}; the setup is broken")
    conn.close()


def total_instructions(dump):
    """The `summary:` (or `totals:`) line of one callgrind dump file."""
    text = dump.read_text()
    match = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if not match:
        sys.exit(f"{dump} has no instruction total")
    return int(match.group(1))


def measure(work, pids, port, count, label, profile):
    """Instructions of `count` requests, both nodes together."""
    send(port, 50)  # warm: connections made, links and SVIDs cached
    for pid in pids:
        control(pid, "--instr=on")
        control(pid, "--zero")
    send(port, count)
    total = 0
    for pid in pids:
        control(pid, "--dump=" + label)
        control(pid, "--instr=off")
        dumps = sorted(work.glob(f"callgrind.{pid}.*"), key=lambda p: p.stat().st_mtime)
        total += total_instructions(dumps[-1])
        if profile:
            out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=90", str(dumps[-1])],
                                 capture_output=True, text=True, check=True).stdout
            (work / f"profile-{label}-{pid}.txt").write_text(out)
            log(f"profile of {label}, pid {pid}: {work / f'profile-{label}-{pid}.txt'}")
    return total / count


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="keep the dumps and annotate them")
    parser.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    args = parser.parse_args()
    ensure_tools({"valgrind": "valgrind"})
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bins", "-p", "deputy-cli", "-p", "deputyd"],
                       cwd=ROOT, check=True)
    deputy = str(target / "deputy")
    work = Path(tempfile.mkdtemp(prefix="deputy-instructions-"))
    procs = Processes(work)
    wrapper = callgrind(work, target / "deputyd")
    uid = os.geteuid()
    results = {}
    try:
        start_issuer(work, procs, deputy)
        backend = start_backend(procs, deputy)
        policy = shipped_policy(work)
        pairs = {
            "plain": dict(agent_extra='originate = ["user:*"]\n'),
            "policy (rego, both ends)": dict(node_extra=f'[policy]\ndir = "{policy}"\n'),
            "policy (wasm, both ends)": dict(
                node_extra=f'[policy]\nengine = "wasm"\nbundle = "{wasm_bundle(work, policy)}"\n'),
        }
        for index, (name, extra) in enumerate(pairs.items()):
            log(f"== {name}")
            port, pids = deputyd_pair(work, procs, str(wrapper), backend, uid, f"pair{index}", **extra)
            results[name] = measure(work, pids, port, args.count, f"pair{index}", args.profile)
            log(f"{name}: {results[name]:,.0f} instructions per request")
    finally:
        procs.stop_all()
    plain = results["plain"]
    print(f"Instructions per request, both deputyd nodes together (callgrind, {args.count} requests"
          " one after another on one keep-alive connection).\n")
    print("| pair | instructions per request | added over the plain pair |")
    print("|---|---|---|")
    for name, value in results.items():
        added = "-" if name == "plain" else f"{value - plain:,.0f} ({(value - plain) / plain:.0%})"
        print(f"| {name} | {value:,.0f} | {added} |")
    print(f"\n(work directory: {work})")


if __name__ == "__main__":
    main()
