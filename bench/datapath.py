#!/usr/bin/env python3
"""Side-by-side data-path benchmark on loopback: direct, stunnel, haproxy, nginx, ghostunnel and deputyd pairs.

Every pair carries plain HTTP from a client, across one TLS 1.3 hop with the same P-256
certificates (SVIDs minted by `deputy issuer`), to the same upstream (`deputy demo-agent`).
ghostunnel (v1.8.4, built by scripts/peers) takes its SVIDs from the issuer's Workload API itself
and checks the peer's SPIFFE ID, as deputyd does.

    python3 bench/datapath.py            # builds release binaries, installs the peers if root
    python3 bench/datapath.py --quick    # shorter runs, for a smoke check
    python3 bench/datapath.py --baseline OLD/deputyd --only "deputyd pair"
                                         # adds the plain pair on another build of deputyd
                                         # (a commit before a change), to measure the change

Peers come from Debian packages (stunnel4, haproxy, nginx-light, wrk) and from scripts/peers
(ghostunnel; opa, which compiles the policy for the wasm pair; vegeta, which sends the fixed rate
latency is measured at). Results are
printed as Markdown; BENCHMARKS.md records a run. Ratios within one run are what to compare: the
machine is shared and absolute numbers drift.
"""

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = {"stunnel": "stunnel4", "haproxy": "haproxy", "nginx": "nginx-light", "wrk": "wrk"}
PEER_BIN = Path(os.environ.get("DEPUTY_CACHE", Path.home() / ".cache" / "deputy")) / "peers" / "bin"


def go_peer(name):
    path = PEER_BIN / name
    if not path.exists():
        sys.exit(f"{path} is missing: build the peers first with ./scripts/peers")
    return str(path)


def log(message):
    print(message, file=sys.stderr, flush=True)


def ensure_peers():
    ensure_tools(PEERS)
    if not (PEER_BIN / "vegeta").exists():
        # A load generator only the benchmarks use: scripts/peers builds it when asked.
        subprocess.run([ROOT / "scripts" / "peers", "vegeta"], check=True)


def ensure_tools(tools):
    """Installs the Debian packages of `tools` (program -> package) that are missing."""
    missing = [pkg for tool, pkg in tools.items() if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"installing {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    else:
        sys.exit(f"install the peer programs first: apt-get install {' '.join(missing)}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def with_children(pid):
    """`pid` and its child processes (an nginx master and its workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)]


NGINX_COMMON = """user root;
worker_processes 2;
pid {work}/nginx-{side}.pid;
error_log {work}/nginx-{side}-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log {work}/nginx-{side}-access.log;
  client_body_temp_path {work}/nginx-{side}-body;
  proxy_temp_path {work}/nginx-{side}-proxy;
  keepalive_requests 1000000;
  proxy_http_version 1.1;
  proxy_buffering off;
  proxy_request_buffering off;
"""


def nginx_pair(work, procs, certs, backend):
    """nginx terminating HTTP and proxying over TLS 1.3 with a client certificate to a second nginx
    that requires one, upstream keep-alive on, access logs on at both; returns the front port and
    the process ids (master and workers) of each side."""
    front, back = free_port(), free_port()
    (work / "nginx-front.conf").write_text(
        NGINX_COMMON.format(work=work, side="front")
        + f"""  upstream back {{ server 127.0.0.1:{back}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{front};
    location / {{
      proxy_pass https://back;
      # (a location's proxy_set_header replaces every one of the levels above)
      proxy_set_header Host $host;
      proxy_set_header Connection "";
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_certificate {certs / 'svid.pem'};
      proxy_ssl_certificate_key {certs / 'svid.key'};
      proxy_ssl_session_reuse on;
    }}
  }}
}}
""")
    (work / "nginx-back.conf").write_text(
        NGINX_COMMON.format(work=work, side="back")
        + f"""  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{back} ssl;
    ssl_protocols TLSv1.3;
    ssl_certificate {certs / 'svid.pem'};
    ssl_certificate_key {certs / 'svid.key'};
    ssl_client_certificate {certs / 'bundle.pem'};
    ssl_verify_client on;
    location / {{
      proxy_pass http://backend;
      proxy_set_header Host $host;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
    masters = []
    for side in ("back", "front"):
        masters.append(procs.start(f"nginx-{side}", ["nginx", "-g", "daemon off;", "-e", work / f"nginx-{side}-error.log",
                                                     "-p", work, "-c", work / f"nginx-{side}.conf"]))
    wait_port(front)
    wait_port(back)
    # The workers are forked after the listeners are bound: wait for both of each master's.
    deadline = time.time() + 20
    while any(len(with_children(m.pid)) < 3 for m in masters):
        if time.time() > deadline:
            raise RuntimeError(f"nginx did not start its workers; see {work}")
        time.sleep(0.05)
    return front, [with_children(master.pid) for master in masters]


def cpu_seconds(pids):
    """User plus system CPU time of the processes, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def rss_kib(pids):
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


class Processes:
    def __init__(self, work):
        self.work = work
        self.children = []

    def start(self, name, argv, **kwargs):
        out = open(self.work / f"{name}.log", "w")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)
        self.children.append(proc)
        return proc

    def stop_all(self):
        for proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.children:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_issuer(work, procs, deputy, agents=("alpha", "beta"), agent_ttl=None):
    """Starts `deputy issuer` with entries for the bench node and `agents` (their SVIDs living
    `agent_ttl`, if given); returns the directory of the node's SVID files (svid.pem, svid.key,
    bundle.pem, combined.pem)."""
    uid = os.geteuid()
    ttl = f'x509_ttl = "{agent_ttl}"\n' if agent_ttl else ""
    (work / "entries.toml").write_text(
        f'[[entry]]\nspiffe_id = "spiffe://example.org/bench/node"\nselectors = ["unix:uid:{uid}"]\n\n'
        + "".join(f'[[entry]]\nspiffe_id = "spiffe://example.org/agent/{a}"\nselectors = ["deputy:agent:{a}"]\n{ttl}\n'
                  for a in agents)
        + f'[[delegate]]\nselectors = ["unix:uid:{uid}"]\n'
    )
    procs.start("issuer", [deputy, "issuer", "--trust-domain", "example.org", "--ephemeral",
                           "--workload-socket", work / "workload.sock", "--admin-socket", work / "admin.sock",
                           "--entries", work / "entries.toml"])
    deadline = time.time() + 20
    while not (work / "workload.sock").exists() and time.time() < deadline:
        time.sleep(0.05)
    certs = work / "certs"
    subprocess.run([deputy, "svid", "fetch", "--socket", work / "workload.sock", "--write", certs],
                   check=True, stdout=subprocess.DEVNULL)
    (certs / "combined.pem").write_text((certs / "svid.pem").read_text() + (certs / "svid.key").read_text())
    return certs


def start_backend(procs, deputy):
    """Starts the upstream every pair forwards to (`deputy demo-agent`); returns its port."""
    backend = free_port()
    procs.start("backend", [deputy, "demo-agent", "--name", "beta", "--listen", f"127.0.0.1:{backend}"])
    wait_port(backend)
    return backend


def shipped_policy(work):
    """The shipped policy's modules with data for alpha and beta, in a directory of `work`."""
    policy = work / "policy"
    policy.mkdir()
    for module in (ROOT / "policies" / "authz").glob("*.rego"):
        if not module.name.endswith("_test.rego"):
            shutil.copy(module, policy / module.name)
    (policy / "data.json").write_text(json.dumps({
        "services": {"beta": {"callers": ["spiffe://example.org/agent/alpha"]}},
        "originate": {"spiffe://example.org/agent/alpha": ["user:*"]},
        "limits": {"max_depth": 8, "max_depth_by_service": {}},
        "business_hours": {"days": [], "start": 0, "end": 0},
        "customers": {}, "mcp": {"tools": {}, "irreversible_tools": []}}))
    return policy


def wasm_bundle(work, policy):
    """`policy` compiled by `opa build -t wasm` (the OPA scripts/peers builds)."""
    bundle = work / "policy.tar.gz"
    subprocess.run([go_peer("opa"), "build", "-t", "wasm", "-e", "deputy/authz/decision", "-o", bundle, policy],
                   check=True)
    return bundle


def setup(work, procs, deputy, deputyd, baseline=None):
    uid = os.geteuid()
    certs = start_issuer(work, procs, deputy)
    combined = certs / "combined.pem"
    backend = start_backend(procs, deputy)
    setups = {"direct": {"port": backend, "pids": [], "host": "beta"}}

    # stunnel pair: plain -> TLS 1.3 (client cert) -> plain.
    front, back = free_port(), free_port()
    common = f"foreground = yes\npid =\nsslVersionMin = TLSv1.3\ncert = {certs / 'svid.pem'}\nkey = {certs / 'svid.key'}\nCAfile = {certs / 'bundle.pem'}\nverifyChain = yes\nTIMEOUTclose = 0\n"
    (work / "stunnel-client.conf").write_text(common + f"[c]\nclient = yes\naccept = 127.0.0.1:{front}\nconnect = 127.0.0.1:{back}\n")
    (work / "stunnel-server.conf").write_text(common + f"[s]\naccept = 127.0.0.1:{back}\nconnect = 127.0.0.1:{backend}\n")
    s1 = procs.start("stunnel-client", ["stunnel", work / "stunnel-client.conf"])
    s2 = procs.start("stunnel-server", ["stunnel", work / "stunnel-server.conf"])
    wait_port(front)
    wait_port(back)
    setups["stunnel pair"] = {"port": front, "pids": [s1.pid, s2.pid], "host": "beta"}

    # haproxy pair: HTTP in, TLS 1.3 with client certificate between them, connections reused.
    front, back = free_port(), free_port()
    glob = "global\n  maxconn 4000\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n  ssl-default-server-options ssl-min-ver TLSv1.3\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n"
    (work / "haproxy-client.cfg").write_text(
        glob + f"frontend f\n  bind 127.0.0.1:{front}\n  default_backend b\nbackend b\n"
        f"  server s 127.0.0.1:{back} ssl crt {combined} ca-file {certs / 'bundle.pem'} verify required\n")
    (work / "haproxy-server.cfg").write_text(
        glob + f"frontend f\n  bind 127.0.0.1:{back} ssl crt {combined} ca-file {certs / 'bundle.pem'} verify required\n"
        f"  default_backend b\nbackend b\n  server s 127.0.0.1:{backend}\n")
    h1 = procs.start("haproxy-client", ["haproxy", "-db", "-f", work / "haproxy-client.cfg"])
    h2 = procs.start("haproxy-server", ["haproxy", "-db", "-f", work / "haproxy-server.cfg"])
    wait_port(front)
    wait_port(back)
    setups["haproxy pair"] = {"port": front, "pids": [h1.pid, h2.pid], "host": "beta"}

    # nginx pair: the front does not verify the back's certificate (nginx checks a DNS name, and
    # an SVID has only a URI SAN); the back requires and verifies the front's.
    front, sides = nginx_pair(work, procs, certs, backend)
    setups["nginx pair"] = {"port": front, "pids": [pid for side in sides for pid in side], "sides": sides,
                            "host": "beta"}

    # ghostunnel pair: SVIDs from the Workload API, the peer's SPIFFE ID checked at both ends.
    front, back = free_port(), free_port()
    api = f"unix://{work / 'workload.sock'}"
    node_id = "spiffe://example.org/bench/node"
    g2 = procs.start("ghostunnel-server", [go_peer("ghostunnel"), "server", "--use-workload-api-addr", api,
                                           "--listen", f"127.0.0.1:{back}", "--target", f"127.0.0.1:{backend}",
                                           "--allow-uri", node_id])
    g1 = procs.start("ghostunnel-client", [go_peer("ghostunnel"), "client", "--use-workload-api-addr", api,
                                           "--listen", f"127.0.0.1:{front}", "--target", f"127.0.0.1:{back}",
                                           "--verify-uri", node_id])
    wait_port(front)
    wait_port(back)
    setups["ghostunnel pair"] = {"port": front, "pids": [g1.pid, g2.pid], "host": "beta"}

    # deputyd pair: alpha's outbound on node1 -> mTLS -> node2's inbound -> beta.
    outbound, pids = deputyd_pair(work, procs, deputyd, backend, uid, "plain",
                                  agent_extra='originate = ["user:*"]\n')
    setups["deputyd pair"] = {"port": outbound, "pids": pids, "host": "beta"}
    # The same pair with deputyd's default logging (info: an access line per call at
    # each node, written to a file here as the journal would take it), as nginx logs every
    # request at both ends in its pair.
    logged, logged_pids = deputyd_pair(work, procs, deputyd, backend, uid, "logging",
                                       agent_extra='originate = ["user:*"]\n', rust_log="info")
    setups["deputyd pair, default logging"] = {"port": logged, "pids": logged_pids, "host": "beta", "chain": True}
    if baseline:
        # The same plain pair on another build (its own state directories).
        outbound, pids = deputyd_pair(work, procs, baseline, backend, uid, "baseline",
                                      agent_extra='originate = ["user:*"]\n')
        setups["deputyd pair (baseline build)"] = {"port": outbound, "pids": pids, "host": "beta"}
    # The same pair carrying a delegation chain on every call. One task: alpha's deputyd reuses
    # its link and node2 verifies it from cache. A new task per call: a link signed by node1 and
    # verified cold by node2 on every request (the worst case).
    task = ["Deputy-Principal: user:alice@example.org", "Deputy-Scope: tickets:read, users:read"]
    setups["deputyd pair + chain (one task)"] = {"port": outbound, "pids": pids, "host": "beta",
                                                  "headers": task + ["Deputy-Task: bench-task"], "chain": True}
    setups["deputyd pair + chain (new task per call)"] = {"port": outbound, "pids": pids,
                                                          "host": "beta", "headers": task, "chain": True}
    # A second pair deciding every call with the shipped policy (its modules as shipped, data for
    # alpha and beta), at both ends: the policy's cost per request.
    policy = shipped_policy(work)
    outbound, pids = deputyd_pair(work, procs, deputyd, backend, uid, "policy",
                                  node_extra=f'[policy]\ndir = "{policy}"\n')
    setups["deputyd pair + policy (rego, both ends)"] = {"port": outbound, "pids": pids, "host": "beta",
                                                          "chain": True}
    setups["deputyd pair + policy + chain (one task)"] = {
        "port": outbound, "pids": pids, "host": "beta", "chain": True,
        "headers": task + ["Deputy-Task: bench-task"]}
    # The same policy compiled by `opa build -t wasm`, on the wasm engine.
    bundle = wasm_bundle(work, policy)
    outbound, pids = deputyd_pair(work, procs, deputyd, backend, uid, "wasm",
                                  node_extra=f'[policy]\nengine = "wasm"\nbundle = "{bundle}"\n')
    setups["deputyd pair + policy (wasm, both ends)"] = {"port": outbound, "pids": pids, "host": "beta",
                                                          "chain": True}
    return setups


def deputyd_pair(work, procs, deputyd, backend, uid, name, agent_extra="", node_extra="", admin1="127.0.0.1:0",
                 node1_tail="", allow="spiffe://example.org/agent/alpha", rust_log="warn"):
    """Starts node1 (alpha's outbound, its admin listener on `admin1`; `node1_tail` appended to
    its config) and node2 (beta's inbound, serving the peers `allow` matches); returns alpha's
    outbound port and both pids once a call goes through."""
    inbound, outbound = free_port(), free_port()
    identity = (f'trust_domain = "example.org"\n[identity]\nworkload_api = "unix://{work / "workload.sock"}"\n'
                f'delegated_identity_api = "unix://{work / "admin.sock"}"\n[admin]\nlisten = "127.0.0.1:0"\n')
    # Without a policy, node2 serves alpha's calls (and its tasks) because it is told to.
    admission = "" if "[policy]" in node_extra else (
        f'allow_peers = ["{allow}"]\n'
        '[[originate]]\nspiffe_id = "spiffe://example.org/agent/alpha"\nprincipals = ["user:*"]\n')
    state = lambda node: f'[state]\ndir = "{work / f"{name}-{node}-state"}"\n'
    (work / f"{name}-node2.toml").write_text(
        identity + state("node2") + f'[inbound]\nlisten = "127.0.0.1:{inbound}"\n{admission}[[agent]]\nname = "beta"\n'
        f'spiffe_id = "spiffe://example.org/agent/beta"\n'
        f'upstream = "http://127.0.0.1:{backend}"\n' + node_extra)
    (work / f"{name}-node1.toml").write_text(
        identity.replace('listen = "127.0.0.1:0"', f'listen = "{admin1}"') + state("node1") + f'[[agent]]\nname = "alpha"\nspiffe_id = "spiffe://example.org/agent/alpha"\n'
        f'outbound = "127.0.0.1:{outbound}"\nuids = [{uid}]\n'
        + agent_extra +
        f'[[service]]\nname = "beta"\nspiffe_id = "spiffe://example.org/agent/beta"\naddress = "127.0.0.1:{inbound}"\n'
        + node_extra + node1_tail)
    env = dict(os.environ, RUST_LOG=rust_log)
    d2 = procs.start(f"{name}-node2", [deputyd, "--config", work / f"{name}-node2.toml"], env=env)
    d1 = procs.start(f"{name}-node1", [deputyd, "--config", work / f"{name}-node1.toml"], env=env)
    wait_port(inbound)
    wait_port(outbound)
    # Ready when a call goes through (both SVIDs fetched).
    deadline = time.time() + 60
    while not answers(outbound, "beta"):
        if time.time() > deadline:
            raise RuntimeError(f"the {name} deputyd pair never carried a call; see {work}")
        time.sleep(0.2)
    return outbound, [d1.pid, d2.pid]


def answers(port, host):
    """Whether a GET through `port` gets a 200."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/", headers={"Host": host})
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def header_args(headers, flag="-H"):
    return [arg for h in headers for arg in (flag, h)]


def wrk(port, host, seconds, connections, close=False, headers=()):
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-H", f"Host: {host}", *header_args(headers)]
    if close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run([*argv, f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return rps, total, (int(errors.group(1)) if errors else 0), (socket_errors.group(1) if socket_errors else "")


def latency_at_rate(port, host, work, name, rate, seconds, headers=()):
    """Latency percentiles (p50, p90, p99, p99.9) in ms at a fixed request rate, sent by vegeta:
    requests spaced evenly (open loop: a slow answer does not hold back the ones due after it;
    more connections open as answers lag). h2load --rps was used before: its clients all fire on
    the same tick, so it measured how long a burst of ten took to clear, which is CPU per request
    over two cores, not the time a call spends on the path."""
    results = work / f"vegeta-{name.replace(' ', '-')}.bin"
    target = f"GET http://127.0.0.1:{port}/\n".encode()
    with open(results, "wb") as out:
        subprocess.run([go_peer("vegeta"), "attack", f"-rate={rate}/s", f"-duration={seconds}s", "-http2=false",
                        "-header", f"Host: {host}", *header_args(headers, "-header")],
                       input=target, stdout=out, check=True)
    encoded = subprocess.run([go_peer("vegeta"), "encode", "--to", "json", results],
                             capture_output=True, text=True, check=True).stdout
    # One JSON object per request: its status and latency (ns); a refused or failed request is
    # no latency sample.
    rows = [json.loads(line) for line in encoded.splitlines() if line.strip()]
    failed = sum(1 for row in rows if row["code"] != 200)
    if failed or len(rows) < rate * seconds:
        raise RuntimeError(f"{name}: {failed} of {len(rows)} requests were not answered 200 "
                           f"({rate * seconds} sent); see {results} (vegeta report {results})")
    durations = sorted(row["latency"] / 1e6 for row in rows)
    p = lambda q: durations[min(len(durations) - 1, int(q * len(durations)))]
    return {f"p{q * 100:g}": p(q) for q in (0.5, 0.9, 0.99, 0.999)}


def stream_throughput(port, host, total_bytes):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET /bytes?n={total_bytes} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        received = 0
        buf = bytearray(1 << 20)
        while True:
            n = s.recv_into(buf)
            if n == 0:
                break
            received += n
    return received


def idle_memory(port, host, pids, count):
    before = rss_kib(pids)
    sockets = []
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    # One request on each connection, one after another, then all of them left open and idle.
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(10)
        s.sendall(request)
        data = s.recv(65536)
        if not data.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected answer: {data[:80]!r}")
        sockets.append(s)
    time.sleep(1.0)
    after = rss_kib(pids)
    for s in sockets:
        s.close()
    return before, after


def compare(setups, work, seconds, rounds):
    """This build's plain pair against the baseline's, alternating (A B B A A B ...), so that
    neither gains from going first or last; prints the medians of each."""
    names = ["deputyd pair", "deputyd pair (baseline build)"]
    found = {name: {"cpu_per_100k": [], "p50_ms": [], "p99_ms": [], "rps": []} for name in names}
    for round_ in range(rounds):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            s = setups[name]
            cpu0 = cpu_seconds(s["pids"])
            rps, total, errors, _ = wrk(s["port"], s["host"], seconds, 32)
            if errors:
                raise RuntimeError(f"{name}: {errors} non-2xx responses; the setup is broken")
            found[name]["cpu_per_100k"].append((cpu_seconds(s["pids"]) - cpu0) / total * 100_000)
            found[name]["rps"].append(rps)
            latency = latency_at_rate(s["port"], s["host"], work, f"{name}-{round_}", 1000, seconds)
            p50, p99 = latency["p50"], latency["p99"]
            found[name]["p50_ms"].append(p50)
            found[name]["p99_ms"].append(p99)
            log(f"{name} round {round_}: {json.dumps({k: v[-1] for k, v in found[name].items()})}")
    median = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in found.items()}
    this, base = median[names[0]], median[names[1]]
    print(f"Alternating, {rounds} rounds of {seconds}s each, medians:\n")
    print("| pair | req/s at 32 conns | p50 / p99 at 1000 rps (ms) | CPU s per 100k req |")
    print("|---|---|---|---|")
    for name in names:
        m = median[name]
        print(f"| {name} | {m['rps']:,.0f} | {m['p50_ms']:.3f} / {m['p99_ms']:.3f} | {m['cpu_per_100k']:.2f} |")
    print(f"\nThis build against the baseline: CPU {100 * (this['cpu_per_100k'] / base['cpu_per_100k'] - 1):+.1f}%, "
          f"p99 {this['p99_ms'] - base['p99_ms']:+.3f} ms, p50 {this['p50_ms'] - base['p50_ms']:+.3f} ms")
    print(f"(raw: {json.dumps(found)})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke check")
    parser.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    parser.add_argument("--baseline", default="", help="another deputyd binary: its plain pair runs beside this one's")
    parser.add_argument("--rounds", type=int, default=0,
                        help="with --baseline: only compare the two plain pairs, alternating, this many rounds each")
    parser.add_argument("--only", default="", help="run only the setups whose name contains this (direct always runs)")
    parser.add_argument("--plots", default="", help="write PNG plots of the run into this directory (bench/plot.py)")
    args = parser.parse_args()
    seconds = 3 if args.quick else 10
    ensure_peers()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bins", "-p", "deputy-cli", "-p", "deputyd"], cwd=ROOT, check=True)
    deputy, deputyd = str(target / "deputy"), str(target / "deputyd")
    work = Path(tempfile.mkdtemp(prefix="deputy-bench-"))
    procs = Processes(work)
    results = {}
    try:
        setups = setup(work, procs, deputy, deputyd, args.baseline or None)
        if args.baseline and args.rounds:
            return compare(setups, work, seconds, args.rounds)
        for name, s in setups.items():
            if name != "direct" and args.only not in name:
                continue
            log(f"== {name}")
            r = {}
            headers = s.get("headers", ())
            cpu0 = cpu_seconds(s["pids"])
            rps, total, errors, sock_err = wrk(s["port"], s["host"], seconds, 32, headers=headers)
            cpu = cpu_seconds(s["pids"]) - cpu0
            r["rps"] = rps
            r["errors"] = errors
            if errors:
                raise RuntimeError(f"{name}: {errors} non-2xx responses; the setup is broken")
            r["cpu_per_100k"] = cpu / total * 100_000 if s["pids"] else 0.0
            latency = latency_at_rate(s["port"], s["host"], work, name, 1000, seconds, headers)
            r["p50_ms"], r["p99_ms"] = latency["p50"], latency["p99"]
            r["latency_ms"] = latency
            if s.get("chain"):
                # Streams and idle connections are the plain pair's; only per-request costs differ.
                results[name] = r
                log(json.dumps(r))
                continue
            sides = s.get("sides", [[pid] for pid in s["pids"]])
            side0 = [cpu_seconds(side) for side in sides]
            t0 = time.time()
            received = stream_throughput(s["port"], s["host"], (1 if args.quick else 4) << 30)
            r["stream_gbps"] = received / (time.time() - t0) / 1e9
            side_cpu = [cpu_seconds(side) - c0 for side, c0 in zip(sides, side0)]
            cpu = sum(side_cpu)
            r["gb_per_cpu_s"] = received / 1e9 / cpu if cpu > 0 else float("inf")
            # Per side: what one end of the pair (the busier) streams per CPU-second.
            busier = max(side_cpu, default=0.0)
            r["gb_per_cpu_s_side"] = received / 1e9 / busier if busier > 0 else float("inf")
            r["new_conn_rps"] = wrk(s["port"], s["host"], seconds, 32, close=True)[0]
            if s["pids"]:
                before, after = idle_memory(s["port"], s["host"], s["pids"], 1000)
                r["rss_before_kib"], r["rss_after_kib"] = before, after
            results[name] = r
            log(json.dumps(r))
    finally:
        procs.stop_all()
    direct = results["direct"]
    print(f"Side by side, one run, {seconds}s per measurement, 2 cores, loopback.\n")
    print("| setup | req/s at 32 conns | added p50 / p99 at 1000 rps (ms) | CPU s per 100k req (proxies) | stream GB per CPU-s (both / busier side) | new conns/s | RSS with 1000 idle conns |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        added = "-" if name == "direct" else f"{r['p50_ms'] - direct['p50_ms']:.3f} / {r['p99_ms'] - direct['p99_ms']:.3f}"
        cpu = "-" if name == "direct" else f"{r['cpu_per_100k']:.2f}"
        gb = "-" if "gb_per_cpu_s" not in r or name == "direct" else f"{r['gb_per_cpu_s']:.2f} / {r['gb_per_cpu_s_side']:.2f}"
        rss = "-" if "rss_after_kib" not in r else f"{r['rss_before_kib'] / 1024:.1f} -> {r['rss_after_kib'] / 1024:.1f} MiB"
        conns = f"{r['new_conn_rps']:,.0f}" if "new_conn_rps" in r else "-"
        print(f"| {name} | {r['rps']:,.0f} | {added} | {cpu} | {gb} | {conns} | {rss} |")
    print(f"\n(direct p50 / p99: {direct['p50_ms']:.3f} / {direct['p99_ms']:.3f} ms; raw results: {json.dumps(results)})")
    (work / "results.json").write_text(json.dumps(results, indent=1))
    if args.plots:
        plot(work / "results.json", Path(args.plots))


def plot(results, directory):
    """Runs bench/plot.py in a virtual environment of the cache holding matplotlib."""
    venv = PEER_BIN.parent.parent / "bench-venv"
    python = venv / "bin" / "python"
    requirements = ROOT / "bench" / "plot-requirements.txt"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "-r", requirements], check=True)
    subprocess.run([python, ROOT / "bench" / "plot.py", results, directory], check=True)
    log(f"plots written to {directory}")


if __name__ == "__main__":
    main()
