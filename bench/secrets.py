#!/usr/bin/env python3
"""Secrets benchmark: a real Vault (dev server, from scripts/peers) and a real PostgreSQL cluster
(Debian's packages) behind deputyd, on loopback, in one run:

- the time from deputyd's start to the agent's first usable credentials (a database user and a
  KV secret), Vault already configured;
- the CPU deputyd spends per request with a credential injected, against the same pair without
  (wrk through alpha's outbound listener, node1's CPU time per request);
- pgbench (select-only) through the PostgreSQL auth proxy against PostgreSQL directly, on kept
  connections and with a new connection per transaction (-C), where the proxy's SCRAM login
  counts.

    python3 bench/secrets.py [--seconds N] [--no-build]

Needs root (PostgreSQL runs as the postgres user), wrk and pgbench. Ratios within one run are what
to compare; BENCHMARKS.md records a run.
"""

import argparse
import http.client
import json
import os
import pwd
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datapath import (ROOT, PEER_BIN, Processes, cpu_seconds, deputyd_pair, ensure_tools,  # noqa: E402
                      free_port, log, start_backend, start_issuer, wait_port, wrk)

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1] if Path("/usr/lib/postgresql").exists() else None


def as_postgres():
    user = pwd.getpwnam("postgres")
    return dict(user=user.pw_uid, group=user.pw_gid, cwd="/tmp")


def start_postgres(work, procs):
    root = work / "pg"
    (root / "sock").mkdir(parents=True)
    os.chmod(work, 0o755)
    subprocess.run(["chown", "-R", "postgres:postgres", root], check=True)
    subprocess.run([PG_BIN / "initdb", "-D", root / "data", "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256"], check=True, stdout=subprocess.DEVNULL, **as_postgres())
    port = free_port()
    procs.start("postgres", [PG_BIN / "postgres", "-D", root / "data", "-k", root / "sock",
                             "-c", "listen_addresses=127.0.0.1", "-p", str(port), "-c", "max_connections=200"],
                **as_postgres())
    wait_port(port)
    return port, root / "sock"


def psql(sock, port, db, sql):
    subprocess.run([PG_BIN / "psql", "-h", sock, "-p", str(port), "-d", db, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                   check=True, stdout=subprocess.DEVNULL, **as_postgres())


def vault_call(addr, method, path, body=None):
    conn = http.client.HTTPConnection(addr, timeout=30)
    conn.request(method, f"/v1/{path}", body=json.dumps(body) if body is not None else None,
                 headers={"X-Vault-Token": "root", "Content-Type": "application/json"})
    response = conn.getresponse()
    text = response.read().decode()
    if response.status >= 300:
        sys.exit(f"Vault {method} {path}: {response.status} {text}")
    return text


def configure_vault(vault, jwks, pg_port, sock):
    psql(sock, pg_port, "postgres", "CREATE ROLE vaultadmin WITH LOGIN CREATEROLE PASSWORD 'admin-pw'")
    psql(sock, pg_port, "postgres", "CREATE DATABASE appdb OWNER vaultadmin")
    subprocess.run([PG_BIN / "pgbench", "-i", "-q", "-s", "2", "-h", "127.0.0.1", "-p", str(pg_port), "-U",
                    "vaultadmin", "appdb"], check=True, capture_output=True,
                   env=dict(os.environ, PGPASSWORD="admin-pw"))
    vault_call(vault, "POST", "sys/auth/jwt", {"type": "jwt"})
    vault_call(vault, "POST", "auth/jwt/config", {"jwks_url": jwks})
    vault_call(vault, "POST", "sys/policies/acl/alpha", {"policy":
               'path "database/creds/readonly" { capabilities = ["read"] }\n'
               'path "secret/data/agents/alpha" { capabilities = ["read"] }'})
    vault_call(vault, "POST", "auth/jwt/role/alpha", {
        "role_type": "jwt", "bound_audiences": ["vault"], "user_claim": "sub",
        "bound_subject": "spiffe://example.org/agent/alpha", "token_policies": ["alpha"], "token_ttl": "1h"})
    vault_call(vault, "POST", "sys/mounts/database", {"type": "database"})
    vault_call(vault, "POST", "database/config/pg", {
        "plugin_name": "postgresql-database-plugin",
        "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{pg_port}/appdb?sslmode=disable",
        "username": "vaultadmin", "password": "admin-pw", "allowed_roles": ["readonly"]})
    vault_call(vault, "POST", "database/roles/readonly", {
        "db_name": "pg",
        "creation_statements": [
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\""],
        "revocation_statements": ["REVOKE ALL ON ALL TABLES IN SCHEMA public FROM \"{{name}}\"",
                                  "DROP ROLE IF EXISTS \"{{name}}\""],
        "default_ttl": "10m", "max_ttl": "1h"})
    vault_call(vault, "POST", "secret/data/agents/alpha", {"data": {"token": "bench-token-0123456789"}})


def jwks_served(admin):
    try:
        conn = http.client.HTTPConnection(admin, timeout=5)
        conn.request("GET", "/jwks.json")
        return conn.getresponse().status == 200
    except OSError:
        return False


def secrets_available(admin):
    try:
        conn = http.client.HTTPConnection(admin, timeout=5)
        conn.request("GET", "/status")
        status = json.loads(conn.getresponse().read())
    except (OSError, ValueError):
        return False
    agents = [a for a in status.get("secrets", []) if a["agent"] == "alpha"]
    return bool(agents) and all(s["state"] == "available" for s in agents[0]["secrets"])


def pgbench(port, user, seconds, connect_each, password=None):
    argv = [PG_BIN / "pgbench", "-n", "-S", "-c", "4", "-j", "2", "-T", str(seconds), "-h", "127.0.0.1",
            "-p", str(port), "-U", user, "appdb"]
    if connect_each:
        argv.append("-C")
    env = dict(os.environ, PGPASSWORD=password or "", PGSSLMODE="disable")
    out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout
    return float(re.search(r"tps = ([\d.]+)", out).group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: PostgreSQL runs as the postgres user")
    if PG_BIN is None:
        sys.exit("install PostgreSQL first: apt-get install postgresql")
    ensure_tools({"wrk": "wrk"})
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "deputyd", "-p", "deputy-cli"], check=True, cwd=ROOT)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    deputy, deputyd = target / "deputy", target / "deputyd"
    uid = os.geteuid()
    with tempfile.TemporaryDirectory(prefix="deputy-secrets-bench-") as tmp:
        work = Path(tmp)
        procs = Processes(work)
        try:
            start_issuer(work, procs, deputy)
            backend = start_backend(procs, deputy)
            pg_port, sock = start_postgres(work, procs)
            vault = f"127.0.0.1:{free_port()}"
            procs.start("vault", [PEER_BIN / "vault", "server", "-dev", "-dev-no-store-token",
                                  "-dev-root-token-id=root", f"-dev-listen-address={vault}"], cwd=work,
                        env=dict(os.environ, HOME=str(work)))
            wait_port(int(vault.rsplit(":", 1)[1]))
            time.sleep(1)  # the dev server unseals and mounts after it listens
            admin = f"127.0.0.1:{free_port()}"
            proxy_port = free_port()
            secrets = (f'[[agent.secret]]\nname = "db"\ndatabase = {{ role = "readonly" }}\n'
                       f'[[agent.secret]]\nname = "crm"\nkv = {{ path = "agents/alpha" }}\n'
                       f'[[agent.inject]]\nservice = "beta"\nheader = "authorization"\n'
                       f'value = "Bearer {{{{ secret.crm.token }}}}"\n'
                       f'[[agent.postgres]]\nlisten = "127.0.0.1:{proxy_port}"\nupstream = "127.0.0.1:{pg_port}"\n'
                       f'database = "appdb"\nsecret = "db"\n'
                       f'[vault]\naddress = "http://{vault}"\n')
            # The plain pair's node1 serves the JWKS Vault reads ([vault] with no secret).
            jwks_admin = f"127.0.0.1:{free_port()}"
            plain_port, plain_pids = deputyd_pair(work, procs, deputyd, backend, uid, "plain",
                                                  agent_extra=f'[vault]\naddress = "http://{vault}"\n',
                                                  admin1=jwks_admin)
            deadline = time.time() + 30
            while not jwks_served(jwks_admin):
                if time.time() > deadline:
                    sys.exit(f"no JWKS on {jwks_admin}; see {work}")
                time.sleep(0.1)
            configure_vault(vault, f"http://{jwks_admin}/jwks.json", pg_port, sock)
            inject_admin = f"127.0.0.1:{free_port()}"
            injected_port, injected_pids = deputyd_pair(
                work, procs, deputyd, backend, uid, "inject", agent_extra=secrets, admin1=inject_admin)
            deadline = time.time() + 60
            while not secrets_available(inject_admin):
                if time.time() > deadline:
                    sys.exit(f"the secrets never became available; see {work}")
                time.sleep(0.1)

            # Start to first credential: a second deputyd for alpha, Vault configured.
            (work / "first.toml").write_text(
                (work / "inject-node1.toml").read_text()
                .replace(f'listen = "{inject_admin}"', f'listen = "{admin}"', 1)
                .replace(f'outbound = "127.0.0.1:', 'outbound = "127.0.0.1:0" #', 1)
                .replace(f'listen = "127.0.0.1:{proxy_port}"', 'listen = "127.0.0.1:0"', 1)
                .replace(str(work / "inject-node1-state"), str(work / "first-state")))
            started = time.time()
            first = procs.start("first", [deputyd, "--config", work / "first.toml"], env=dict(os.environ, RUST_LOG="warn"))
            while not secrets_available(admin):
                if time.time() - started > 60:
                    sys.exit(f"no credential within 60 s; see {work}/first.log")
                time.sleep(0.01)
            first_credential = time.time() - started
            first.terminate()
            first.wait(timeout=20)

            results = {}
            for name, port, pids in [("plain", plain_port, plain_pids), ("injected", injected_port, injected_pids),
                                     ("plain again", plain_port, plain_pids),
                                     ("injected again", injected_port, injected_pids)]:
                before = cpu_seconds(pids[:1])
                rps, total, errors, socket_errors = wrk(port, "beta", args.seconds, 8)
                cpu = cpu_seconds(pids[:1]) - before
                if errors or socket_errors:
                    sys.exit(f"{name}: {errors} errors, socket errors {socket_errors}")
                results[name] = (rps, cpu / total * 1e6)
            password = "admin-pw"
            bench = {}
            for name, port, user, pw in [("direct", pg_port, "vaultadmin", password),
                                         ("through the proxy", proxy_port, "alpha", None)]:
                bench[name] = (pgbench(port, user, args.seconds, False, pw),
                               pgbench(port, user, args.seconds, True, pw))
        finally:
            procs.stop_all()

    print("| measure | value |\n|---|---|")
    print(f"| deputyd start to the agent's first credentials (database user and KV secret) | {first_credential * 1000:.0f} ms |")
    for name, (rps, us) in results.items():
        print(f"| node1 CPU per request, {name} | {us:.1f} µs ({rps:.0f} requests/s) |")
    plain = (results["plain"][1] + results["plain again"][1]) / 2
    injected = (results["injected"][1] + results["injected again"][1]) / 2
    print(f"| injection's CPU per request on node1 | {injected - plain:+.1f} µs ({(injected / plain - 1) * 100:+.1f}%) |")
    for name, (kept, each) in bench.items():
        print(f"| pgbench -S, 4 clients, {name} | {kept:.0f} tps kept connections; {each:.0f} tps a connection per transaction |")
    print(f"| proxy / direct | {bench['through the proxy'][0] / bench['direct'][0]:.2f} kept; "
          f"{bench['through the proxy'][1] / bench['direct'][1]:.2f} per transaction |")


if __name__ == "__main__":
    main()
