#!/usr/bin/env python3
"""What reading MCP costs deputyd: CPU per call of a `tools/call` judged by tool name only, of one
with a declared argument captured for the policy (and of one whose argument a rule of the shipped
policy then judges), and of a `tools/list` whose 100 tools are each judged by the policy (half
kept), through one deputyd pair on the shipped policy (rego, both ends), in one run.

    python3 bench/mcp.py            # builds release binaries
    python3 bench/mcp.py --quick    # shorter runs, for a smoke check

The upstream is a small asyncio Python server answering every JSON-RPC call at once (its CPU is
not counted: only the two deputyd processes are). Load comes from wrk with a Lua script per call
kind, 8 connections. Results are printed as Markdown; BENCHMARKS.md records a run.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datapath  # noqa: E402

ROOT = datapath.ROOT
AGENTS = ("alpha", "tools-plain", "tools-args")
TOOLS = [f"tool_{i:03}" for i in range(100)]

BACKEND = r'''
import asyncio, json

TOOLS = [{"name": f"tool_{i:03}", "description": "A tool of the benchmark.",
          "inputSchema": {"type": "object", "properties": {"customer_id": {"type": "string"}}}}
         for i in range(100)]

async def serve(reader, writer):
    # One write per answer (headers and body together): no small-write stalls on loopback.
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        call = json.loads(await reader.readexactly(length))
        result = {"tools": TOOLS} if call["method"] == "tools/list" else {
            "content": [{"type": "text", "text": "done"}], "isError": False}
        body = json.dumps({"jsonrpc": "2.0", "id": call["id"], "result": result}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
'''


def call_body(method, tool=None):
    params = {}
    if tool:
        params = {"name": tool, "arguments": {"customer_id": "c-1001", "note": "printer on fire " * 8}}
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})


def wrk_script(work, name, host, body):
    script = work / f"{name}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Accept"] = "application/json, text/event-stream"\n'
        f'wrk.headers["Host"] = "{host}"\n')
    return script


def policy(work):
    """The shipped policy; alpha is an EU support agent that may call half the tools."""
    directory = datapath.shipped_policy(work)
    alpha = "spiffe://example.org/agent/alpha"
    (directory / "data.json").write_text(json.dumps({
        "services": {"tools-plain": {"callers": [alpha]}, "tools-args": {"callers": [alpha]}},
        "originate": {alpha: ["user:*"]},
        "limits": {"max_depth": 8, "max_depth_by_service": {}},
        "business_hours": {"days": [], "start": 0, "end": 0},
        "customers": {"c-1001": {"team": "eu"}},
        "mcp": {"tools": {alpha: TOOLS[::2]}, "irreversible_tools": [], "customer_tools": [TOOLS[0]]},
        "a2a": {"methods": {}, "skills": {}}}))
    return directory


def start_pair(work, procs, deputyd, backend, policy_dir):
    """node1: alpha's outbound; node2: the two MCP services, one declaring /customer_id."""
    uid = os.geteuid()
    inbound, outbound = datapath.free_port(), datapath.free_port()
    head = (f'trust_domain = "example.org"\n[identity]\nworkload_api = "unix://{work / "workload.sock"}"\n'
            f'delegated_identity_api = "unix://{work / "admin.sock"}"\n[admin]\nlisten = "127.0.0.1:0"\n'
            f'[policy]\ndir = "{policy_dir}"\n'
            f'[policy.attributes."spiffe://example.org/agent/alpha"]\nkind = "support"\nteam = "eu"\n')
    declared = {"tools-plain": "", "tools-args": 'arguments = ["/customer_id"]\n'}
    node2 = head + f'[state]\ndir = "{work / "node2-state"}"\n[inbound]\nlisten = "127.0.0.1:{inbound}"\n'
    node1 = head + (f'[state]\ndir = "{work / "node1-state"}"\n[[agent]]\nname = "alpha"\n'
                    f'spiffe_id = "spiffe://example.org/agent/alpha"\noutbound = "127.0.0.1:{outbound}"\n'
                    f'uids = [{uid}]\n')
    for name, arguments in declared.items():
        node2 += (f'[[agent]]\nname = "{name}"\nspiffe_id = "spiffe://example.org/agent/{name}"\n'
                  f'upstream = "http://127.0.0.1:{backend}"\nmcp = true\n{arguments}')
        node1 += (f'[[service]]\nname = "{name}"\nspiffe_id = "spiffe://example.org/agent/{name}"\n'
                  f'address = "127.0.0.1:{inbound}"\nmcp = true\n{arguments}')
    (work / "node1.toml").write_text(node1)
    (work / "node2.toml").write_text(node2)
    env = dict(os.environ, RUST_LOG="warn")
    d2 = procs.start("node2", [deputyd, "--config", work / "node2.toml"], env=env)
    d1 = procs.start("node1", [deputyd, "--config", work / "node1.toml"], env=env)
    datapath.wait_port(inbound)
    datapath.wait_port(outbound)
    return outbound, [d1.pid, d2.pid]


def ready(port, host, body, work):
    """Waits until a call goes through (both SVIDs fetched); returns its answer."""
    deadline = time.time() + 60
    while time.time() < deadline:
        out = subprocess.run(["curl", "-s", "-x", f"http://127.0.0.1:{port}", "-H", "content-type: application/json",
                              "-H", "accept: application/json, text/event-stream", "--data", body,
                              f"http://{host}/mcp"], capture_output=True, text=True)
        if out.returncode == 0 and '"result"' in out.stdout:
            return json.loads(out.stdout)
        time.sleep(0.2)
    raise RuntimeError(f"no call to {host} went through; see {work}")


def measure(port, pids, script, seconds):
    """CPU microseconds per call of both deputyd processes, and calls per second."""
    cpu0 = datapath.cpu_seconds(pids)
    out = subprocess.run(["wrk", "-t2", "-c8", f"-d{seconds}s", "-s", script, f"http://127.0.0.1:{port}/mcp"],
                         capture_output=True, text=True, check=True).stdout
    cpu = datapath.cpu_seconds(pids) - cpu0
    total = int(out.split(" requests in")[0].split()[-1])
    errors = "Non-2xx" in out
    if errors or total == 0:
        raise RuntimeError(f"wrk saw refusals; the setup is broken:\n{out}")
    rps = float(out.split("Requests/sec:")[1].split()[0])
    return cpu / total * 1e6, rps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke check")
    parser.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per call kind")
    args = parser.parse_args()
    seconds = 3 if args.quick else 10
    datapath.ensure_tools({"wrk": "wrk", "curl": "curl"})
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bins", "-p", "deputy-cli", "-p", "deputyd"], cwd=ROOT, check=True)
    deputy, deputyd = str(target / "deputy"), str(target / "deputyd")
    work = Path(tempfile.mkdtemp(prefix="deputy-bench-mcp-"))
    procs = datapath.Processes(work)
    try:
        datapath.start_issuer(work, procs, deputy, AGENTS)
        backend_proc = subprocess.Popen([sys.executable, "-c", BACKEND], stdout=subprocess.PIPE, text=True)
        procs.children.append(backend_proc)
        backend = int(backend_proc.stdout.readline())
        port, pids = start_pair(work, procs, deputyd, backend, policy(work))
        kinds = {
            "tools/call, judged by tool name": ("tools-plain", call_body("tools/call", TOOLS[2])),
            "tools/call, argument /customer_id captured": ("tools-args", call_body("tools/call", TOOLS[2])),
            "tools/call, argument captured and judged by a rule": ("tools-args", call_body("tools/call", TOOLS[0])),
            "tools/list, 100 tools judged (50 kept)": ("tools-plain", call_body("tools/list")),
        }
        listed = ready(port, "tools-plain", kinds["tools/list, 100 tools judged (50 kept)"][1], work)
        kept = [t["name"] for t in listed["result"]["tools"]]
        if kept != TOOLS[::2]:
            raise RuntimeError(f"the list was not filtered as the policy says: {kept}")
        for host, body in kinds.values():
            ready(port, host, body, work)
        scripts = {name: wrk_script(work, f"kind{i}", host, body) for i, (name, (host, body)) in enumerate(kinds.items())}
        found = {name: [] for name in kinds}
        for round_ in range(args.rounds):
            order = list(kinds) if round_ % 2 == 0 else list(kinds)[::-1]
            for name in order:
                found[name].append(measure(port, pids, scripts[name], seconds))
                datapath.log(f"{name} round {round_}: {found[name][-1][0]:.1f} us CPU per call, {found[name][-1][1]:.0f} calls/s")
    finally:
        procs.stop_all()
    median = {name: sorted(r)[len(r) // 2] for name, r in found.items()}
    base = median["tools/call, judged by tool name"][0]
    print(f"One deputyd pair, shipped policy (rego) at both ends, wrk 8 connections, {args.rounds} alternating "
          f"rounds of {seconds}s, medians; CPU of both deputyd processes.\n")
    print("| call | CPU µs per call (both ends) | added over a call judged by tool name | calls/s |")
    print("|---|---|---|---|")
    for name, (cpu, rps) in median.items():
        print(f"| {name} | {cpu:.1f} | {cpu - base:+.1f} µs ({100 * (cpu / base - 1):+.0f}%) | {rps:,.0f} |")


if __name__ == "__main__":
    main()
