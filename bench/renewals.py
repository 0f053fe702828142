#!/usr/bin/env python3
"""Lease renewals: how many database leases one deputyd keeps renewed per second, and what a
renewal costs deputyd and Vault, with a real Vault (dev server, from scripts/peers) and a real
PostgreSQL cluster (Debian's packages) on loopback.

One agent declares `--leases` database secrets; Vault's role gives each a `--ttl` lease, which
deputyd renews at two thirds of it, so the rate asked for is leases / (2/3 ttl). The run reads
deputy_secret_renewals_total and deputy_secret_failures_total from deputyd's /metrics over
`--seconds`, and the CPU time of deputyd and Vault over the same window.

    python3 bench/renewals.py [--leases N] [--ttl S] [--seconds N] [--profile release|debug] [--no-build]

Needs root (PostgreSQL runs as the postgres user). BENCHMARKS.md records a run.
"""

import argparse
import http.client
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datapath import ROOT, PEER_BIN, Processes, cpu_seconds, free_port, start_issuer, wait_port  # noqa: E402

# bench/secrets.py, loaded by path: its name is also the standard library's.
_spec = importlib.util.spec_from_file_location("deputy_secrets_bench", Path(__file__).with_name("secrets.py"))
secrets_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(secrets_bench)


def get(admin, path):
    conn = http.client.HTTPConnection(admin, timeout=10)
    conn.request("GET", path)
    return conn.getresponse().read().decode()


def counter(metrics, name):
    """The sum of a counter over its labels."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def all_available(admin, count):
    try:
        status = json.loads(get(admin, "/status"))
    except (OSError, ValueError):
        return False
    agents = [a for a in status.get("secrets", []) if a["agent"] == "alpha"]
    return bool(agents) and sum(s["state"] == "available" for s in agents[0]["secrets"]) == count


def configure_vault(vault, jwks, pg_port, sock, ttl):
    psql, call = secrets_bench.psql, secrets_bench.vault_call
    psql(sock, pg_port, "postgres", "CREATE ROLE vaultadmin WITH LOGIN CREATEROLE PASSWORD 'admin-pw'")
    psql(sock, pg_port, "postgres", "CREATE DATABASE appdb OWNER vaultadmin")
    call(vault, "POST", "sys/auth/jwt", {"type": "jwt"})
    call(vault, "POST", "auth/jwt/config", {"jwks_url": jwks})
    call(vault, "POST", "sys/policies/acl/alpha", {"policy": 'path "database/creds/readonly" { capabilities = ["read"] }'})
    call(vault, "POST", "auth/jwt/role/alpha", {
        "role_type": "jwt", "bound_audiences": ["vault"], "user_claim": "sub",
        "bound_subject": "spiffe://example.org/agent/alpha", "token_policies": ["alpha"], "token_ttl": "1h"})
    call(vault, "POST", "sys/mounts/database", {"type": "database"})
    call(vault, "POST", "database/config/pg", {
        "plugin_name": "postgresql-database-plugin",
        "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{pg_port}/appdb?sslmode=disable",
        "username": "vaultadmin", "password": "admin-pw", "allowed_roles": ["readonly"]})
    call(vault, "POST", "database/roles/readonly", {
        "db_name": "pg",
        "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"],
        "revocation_statements": ["DROP ROLE IF EXISTS \"{{name}}\""],
        "default_ttl": f"{ttl}s", "max_ttl": "1h"})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leases", type=int, default=60)
    parser.add_argument("--ttl", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--profile", choices=["release", "debug"], default="release")
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: PostgreSQL runs as the postgres user")
    if secrets_bench.PG_BIN is None:
        sys.exit("install PostgreSQL first: apt-get install postgresql")
    if not args.no_build:
        build = ["cargo", "build", "-p", "deputyd", "-p", "deputy-cli"]
        subprocess.run(build + (["--release"] if args.profile == "release" else []), check=True, cwd=ROOT)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / args.profile
    deputy, deputyd = target / "deputy", target / "deputyd"
    with tempfile.TemporaryDirectory(prefix="deputy-renewals-bench-") as tmp:
        work = Path(tmp)
        procs = Processes(work)
        try:
            start_issuer(work, procs, deputy)
            pg_port, sock = secrets_bench.start_postgres(work, procs)
            vault = f"127.0.0.1:{free_port()}"
            vault_proc = procs.start("vault", [PEER_BIN / "vault", "server", "-dev", "-dev-no-store-token",
                                               "-dev-root-token-id=root", f"-dev-listen-address={vault}"],
                                     cwd=work, env=dict(os.environ, HOME=str(work)))
            wait_port(int(vault.rsplit(":", 1)[1]))
            time.sleep(1)  # the dev server unseals and mounts after it listens
            admin = f"127.0.0.1:{free_port()}"
            secrets = "".join(f'[[agent.secret]]\nname = "db{i}"\ndatabase = {{ role = "readonly" }}\n'
                              for i in range(args.leases))
            (work / "node.toml").write_text(
                f'trust_domain = "example.org"\n[identity]\nworkload_api = "unix://{work / "workload.sock"}"\n'
                f'delegated_identity_api = "unix://{work / "admin.sock"}"\nmin_backoff = "200ms"\nmax_backoff = "2s"\n'
                f'[admin]\nlisten = "{admin}"\n[state]\ndir = "{work / "state"}"\n'
                f'[[agent]]\nname = "alpha"\nspiffe_id = "spiffe://example.org/agent/alpha"\n'
                f'outbound = "127.0.0.1:0"\nuids = [{os.geteuid()}]\n{secrets}'
                f'[vault]\naddress = "http://{vault}"\n')
            node = procs.start("deputyd", [deputyd, "--config", work / "node.toml"], env=dict(os.environ, RUST_LOG="warn"))
            deadline = time.time() + 30
            while True:
                try:
                    get(admin, "/jwks.json")
                    break
                except OSError:
                    if time.time() > deadline:
                        sys.exit(f"deputyd never served /jwks.json; see {work}")
                    time.sleep(0.1)
            configure_vault(vault, f"http://{admin}/jwks.json", pg_port, sock, args.ttl)
            deadline = time.time() + 120
            while not all_available(admin, args.leases):
                if time.time() > deadline:
                    sys.exit(f"the leases never all became available; see {work}")
                time.sleep(0.2)
            time.sleep(args.ttl)  # into the steady state: every lease on its renewal cycle
            pids = {"deputyd": [node.pid], "vault": [vault_proc.pid]}
            before = get(admin, "/metrics")
            cpu_before = {name: cpu_seconds(p) for name, p in pids.items()}
            started = time.time()
            time.sleep(args.seconds)
            after = get(admin, "/metrics")
            elapsed = time.time() - started
            cpu = {name: cpu_seconds(p) - cpu_before[name] for name, p in pids.items()}
        finally:
            procs.stop_all()

    renewals = counter(after, "deputy_secret_renewals_total") - counter(before, "deputy_secret_renewals_total")
    failures = counter(after, "deputy_secret_failures_total") - counter(before, "deputy_secret_failures_total")
    issued = counter(after, "deputy_secret_issued_total") - counter(before, "deputy_secret_issued_total")
    asked = args.leases / (args.ttl * 2 / 3)
    rate = renewals / elapsed
    print(f"| {args.leases} leases of {args.ttl} s, {args.seconds} s, {args.profile} build | value |\n|---|---|")
    print(f"| renewals asked for (leases / two thirds of the TTL) | {asked:.1f} /s |")
    print(f"| renewals done | {rate:.1f} /s ({renewals:.0f}; {failures:.0f} failed, {issued:.0f} re-issued) |")
    for name in ("deputyd", "vault"):
        per = cpu[name] / renewals * 1e6 if renewals else float("nan")
        print(f"| {name} CPU per renewal | {per:.0f} µs ({cpu[name] / elapsed * 100:.1f}% of a core) |")


if __name__ == "__main__":
    main()
