#!/usr/bin/env python3
"""Scale on one node: idle client connections, concurrent streams, and agents with rotating SVIDs.

    python3 bench/scale.py                 # builds release binaries; 10,000 / 1,000 / 100
    python3 bench/scale.py --no-build      # the release binaries as they are
    python3 bench/scale.py --quick         # smaller counts and a shorter rotation window

Three measurements, each on a deputyd pair of its own (node1: the callers' outbound listeners;
node2: beta's inbound, in front of `deputy demo-agent`), with `RUST_LOG=warn`:

- **idle**: N client connections to alpha's outbound listener, each after one request, left open
  (opened concurrently: deputyd closes an agent's connection idle for `[timeouts] connect`, 5 s);
  node1's RSS before and once all are open, per connection it holds open then
  (`deputy_open_connections{direction="outbound"}`).
- **streams**: M concurrent server-sent event streams (`/events`, 50 events 100 ms apart) from
  beta through the pair, all open at once; every event of every stream must arrive; both nodes'
  peak RSS and CPU.
- **agents**: A agents on node1, each with an outbound listener and a uid of its own, SVIDs of
  2 minutes (the issuer renews them at half-life: one rotation a minute per agent) for a window
  of several minutes; node1's RSS and CPU per minute, rotations counted from its metrics (its
  agents and alpha), and one call through every agent at the end. This pair logs at `info`: the
  agents' outbound addresses are read from its log.

Every agent's SVID lives 2 minutes in all three. Run as root (the agents' callers run as their
uids). Results are printed as Markdown; BENCHMARKS.md records a run.
"""

import argparse
import asyncio
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datapath  # noqa: E402

ROOT = datapath.ROOT
log = datapath.log


def admin_of(work, name):
    """node1's admin address, from its start line."""
    text = (work / f"{name}-node1.log").read_text()
    return re.search(r"admin=(\S+)", text).group(1)


def metric_sum(admin, name):
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


async def open_idle(port, count):
    """`count` connections, each after one answered request, opened 200 at a time."""
    gate = asyncio.Semaphore(200)

    async def one():
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: beta\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer: {head[:120]!r}")
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
            await reader.readexactly(length)
            return writer

    return await asyncio.gather(*(one() for _ in range(count)))


def idle(work, procs, deputyd, backend, count):
    uid = os.geteuid()
    admin = f"127.0.0.1:{datapath.free_port()}"
    port, pids = datapath.deputyd_pair(
        work, procs, deputyd, backend, uid, "idle", admin1=admin,
        node_extra=f"[limits]\nmax_connections = {count + 1000}\n")
    node1 = pids[:1]
    before = datapath.rss_kib(node1)
    held_before = metric_sum(admin, 'deputy_open_connections{direction="outbound"}')

    async def measure():
        t0 = time.time()
        writers = await open_idle(port, count)
        opened = time.time() - t0
        # Read at once: deputyd closes a connection idle for [timeouts] connect (5 s).
        after = datapath.rss_kib(node1)
        held = metric_sum(admin, 'deputy_open_connections{direction="outbound"}') - held_before
        served = await asyncio.to_thread(datapath.answers, port, "beta")
        for writer in writers:
            writer.close()
        return opened, after, held, served

    opened, after, held, served = asyncio.run(measure())
    if not served:
        raise RuntimeError("a new call failed with the idle connections open")
    return {"count": count, "held": held, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_conn": (after - before) / held, "open_seconds": opened}


async def one_stream(port, events):
    try:
        return await read_stream(port, events)
    except (OSError, asyncio.IncompleteReadError) as e:
        return f"failed: {e}", 0


async def read_stream(port, events):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(f"GET /events?count={events} HTTP/1.1\r\nHost: beta\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    status = (await reader.readline()).decode(errors="replace").strip()
    body = await reader.read()
    writer.close()
    return status, body.count(b"event: tick")


async def streams_at_once(port, count, events, sample):
    tasks = [asyncio.create_task(one_stream(port, events)) for _ in range(count)]
    peak = 0
    while not all(t.done() for t in tasks):
        peak = max(peak, sample())
        await asyncio.sleep(0.25)
    return [t.result() for t in tasks], peak


def streams(work, procs, deputyd, backend, count, events):
    uid = os.geteuid()
    port, pids = datapath.deputyd_pair(
        work, procs, deputyd, backend, uid, "streams",
        node_extra=f"[limits]\nmax_connections = {count + 1000}\n")
    before = datapath.rss_kib(pids)
    cpu0 = datapath.cpu_seconds(pids)
    t0 = time.time()
    results, peak = asyncio.run(streams_at_once(port, count, events, lambda: datapath.rss_kib(pids)))
    took = time.time() - t0
    cpu = datapath.cpu_seconds(pids) - cpu0
    statuses = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    complete = sum(1 for status, n in results if "200" in status and n == events)
    return {"count": count, "events": events, "complete": complete, "statuses": statuses,
            "seconds": took, "rss_before_kib": before, "rss_peak_kib": peak,
            "kib_per_stream": (peak - before) / count, "cpu_seconds": cpu}


def agents(work, procs, deputy, deputyd, backend, count, window):
    """`count` agents on one node with SVIDs of two minutes, for `window` seconds."""
    uid = os.geteuid()
    names = [f"a{i:03}" for i in range(count)]
    first_uid = 61000
    node_extra = "".join(
        f'[[agent]]\nname = "{name}"\nspiffe_id = "spiffe://example.org/agent/{name}"\n'
        f'outbound = "127.0.0.1:0"\nuids = [{first_uid + i}]\n'
        for i, name in enumerate(names))
    # node2 serves every agent (allow_peers takes a pattern).
    port, pids = datapath.deputyd_pair(
        work, procs, deputyd, backend, uid, "agents",
        node_extra="", agent_extra="", node1_tail=node_extra,
        allow="spiffe://example.org/agent/*", rust_log="info")
    node1 = pids[:1]
    admin = admin_of(work, "agents")
    log_text = (work / "agents-node1.log").read_text()
    outbound = dict(re.findall(r"agent=(\S+) outbound=(\S+)", log_text))
    rotations0 = metric_sum(admin, "deputy_svid_rotations_total")
    cpu0 = datapath.cpu_seconds(node1)
    rss = []
    t0 = time.time()
    while time.time() - t0 < window:
        rss.append(datapath.rss_kib(node1))
        time.sleep(5)
    elapsed = time.time() - t0
    cpu = datapath.cpu_seconds(node1) - cpu0
    rotations = metric_sum(admin, "deputy_svid_rotations_total") - rotations0
    failed = []
    for i, name in enumerate(names):
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: beta",
                              f"http://{outbound[name]}/"], capture_output=True, text=True,
                             user=first_uid + i, timeout=30)
        if out.stdout != "200":
            failed.append((name, out.stdout))
    # node1's SVIDs: the agents' and alpha's.
    return {"agents": count, "window_seconds": elapsed, "rotations": rotations,
            "rotations_per_agent_minute": rotations / (count + 1) / (elapsed / 60),
            "cpu_seconds_per_minute": cpu / (elapsed / 60), "rss_first_kib": rss[0],
            "rss_max_kib": max(rss), "rss_last_kib": rss[-1], "failed_calls": failed}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts, shorter window")
    parser.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    parser.add_argument("--only", default="", help="idle, streams or agents")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the agents' callers run as uids of their own")
    idle_count, stream_count, agent_count, window = (
        (2000, 200, 20, 150) if args.quick else (10_000, 1000, 100, 300))
    if args.only not in ("", "idle", "streams", "agents"):
        sys.exit(f"--only {args.only}: say idle, streams or agents")
    datapath.ensure_tools({"curl": "curl"})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bins", "-p", "deputy-cli", "-p", "deputyd"],
                       cwd=ROOT, check=True)
    deputy, deputyd = str(target / "deputy"), str(target / "deputyd")
    work = Path(tempfile.mkdtemp(prefix="deputy-bench-scale-"))
    os.chmod(work, 0o755)
    procs = datapath.Processes(work)
    results = {}
    try:
        names = ["alpha", "beta"] + [f"a{i:03}" for i in range(agent_count)]
        datapath.start_issuer(work, procs, deputy, names, agent_ttl="2m")
        backend = datapath.start_backend(procs, deputy)
        if args.only in ("", "idle"):
            results["idle"] = idle(work, procs, deputyd, backend, idle_count)
            log(f"idle: {results['idle']}")
        if args.only in ("", "streams"):
            results["streams"] = streams(work, procs, deputyd, backend, stream_count, 50)
            log(f"streams: {results['streams']}")
        if args.only in ("", "agents"):
            results["agents"] = agents(work, procs, deputy, deputyd, backend, agent_count, window)
            log(f"agents: {results['agents']}")
    finally:
        procs.stop_all()
    print("One node on 2 cores, loopback; deputyd release build, RUST_LOG=warn (the agents' pair: info).\n")
    if "idle" in results:
        r = results["idle"]
        print(f"- **{r['count']:,} idle client connections** on alpha's outbound listener (each after one "
              f"request; {r['held']:,.0f} held open when measured): node1 {r['rss_before_kib'] / 1024:.1f} -> "
              f"{r['rss_after_kib'] / 1024:.1f} MiB, **{r['kib_per_conn']:.1f} KiB per connection** (opened "
              f"in {r['open_seconds']:.1f} s); a new call is served with all of them open.")
    if "streams" in results:
        r = results["streams"]
        print(f"- **{r['count']:,} concurrent event streams** ({r['events']} events each, 100 ms apart) "
              f"through the pair: {r['complete']:,} complete, answers {r['statuses']}; both nodes "
              f"{r['rss_before_kib'] / 1024:.1f} -> {r['rss_peak_kib'] / 1024:.1f} MiB at the peak "
              f"({r['kib_per_stream']:.1f} KiB per stream), {r['cpu_seconds']:.2f} CPU-s for "
              f"{r['seconds']:.1f} s.")
    if "agents" in results:
        r = results["agents"]
        print(f"- **{r['agents']} agents on one node**, SVIDs of 2 minutes: {r['rotations']:.0f} rotations "
              f"in {r['window_seconds']:.0f} s ({r['rotations_per_agent_minute']:.2f} per agent per "
              f"minute), node1 {r['cpu_seconds_per_minute']:.2f} CPU-s per minute, RSS "
              f"{r['rss_first_kib'] / 1024:.1f} MiB first, {r['rss_max_kib'] / 1024:.1f} max, "
              f"{r['rss_last_kib'] / 1024:.1f} last; a call through every agent after: "
              f"{r['agents'] - len(r['failed_calls'])} of {r['agents']} served"
              + (f", failed: {r['failed_calls'][:5]}" if r["failed_calls"] else "") + ".")
    failed = (("streams" in results and results["streams"]["complete"] != results["streams"]["count"])
              or ("agents" in results and results["agents"]["failed_calls"]))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
