"""Seed 1's support-triage flow on a real mesh, end to end, with one command (`./run`).

Three deputyd nodes and the embedded issuer, a dev Vault and a throwaway PostgreSQL cluster:

    node1  frontdoor (this script)  starts a task for alice, calls triage
    node2  triage (agents/triage.py) continues it: the sentiment skill, the CRM over MCP and REST,
           a refund (held until an operator approves it; node2 keeps the approval)
    node3  sentiment-analysis (agents/sentiment.py), crm (agents/crm.py: an MCP server reading
           PostgreSQL through deputyd's proxy as a user Vault issued)

Every node enforces the shipped policy (policies/authz) with this example's data: triage is a
support agent of team eu, so it reads eu's customers only, in business hours (every hour of
the week here, so that the example runs whenever it is run; --business-hours uses Mon-Fri
9:00-18:00 Europe/Paris). It prints what happened at each hop and the audit trail of the task
across the three nodes, and exits 0 only if each step went as described.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "sdk/python/src"))

import deputy  # noqa: E402

TD = "example.org"
ID = {name: f"spiffe://{TD}/agent/{name}" for name in ("frontdoor", "triage", "sentiment-analysis", "crm")}


def loopback_host() -> str:
    """A loopback address of this run's own (by pid), so that runs side by side never meet."""
    rest, host = divmod(os.getpid(), 254)
    return f"127.{rest // 256 % 256}.{rest % 256}.{host + 1}"


class Mesh:
    def __init__(self, work: Path, bins: Path, python: str):
        self.work, self.bins, self.python = work, bins, python
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list, env: dict | None = None, wait: str | None = None, user: str | None = None) -> str:
        log = open(self.work / f"{name}.log", "w+")
        proc = subprocess.Popen(
            [str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            cwd=self.work, user=user, start_new_session=True,
        )
        self.procs.append((name, proc))
        if wait is None:
            return ""
        deadline = time.time() + 60
        while time.time() < deadline:
            text = (self.work / f"{name}.log").read_text()
            for line in text.splitlines():
                if wait in line:
                    return line
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise SystemExit(f"{name} did not start ({wait!r} never came); its log:\n{(self.work / f'{name}.log').read_text()[-3000:]}")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def http(method: str, url: str, body: dict | None = None, token: str | None = None) -> dict:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("x-vault-token", token)
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text else {}


def eventually(what: str, check, seconds: float = 60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            found = check()
            if found:
                return found
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def postgres(mesh: Mesh, host: str) -> Path:
    """A throwaway cluster on HOST:5432 with the CRM's database; returns its socket directory."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        raise SystemExit("PostgreSQL's server is needed (apt-get install postgresql)")
    bin_dir = versions[-1].parent
    root = mesh.work / "postgres"
    (root / "sock").mkdir(parents=True)
    user = "postgres" if os.geteuid() == 0 else None
    if user:
        os.chmod(mesh.work, 0o755)
        shutil.chown(root, user, user)
        shutil.chown(root / "sock", user, user)
    subprocess.run([bin_dir / "initdb", "-D", root / "data", "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256"], check=True, capture_output=True, user=user, cwd="/tmp")
    mesh.start("postgres", [bin_dir / "postgres", "-D", root / "data", "-k", root / "sock", "-c",
                            f"listen_addresses={host}", "-p", "5432"], user=user, wait="ready to accept connections")

    def psql(database: str, sql: str) -> None:
        subprocess.run([bin_dir / "psql", "-h", root / "sock", "-p", "5432", "-U", "postgres", "-d", database,
                        "-v", "ON_ERROR_STOP=1", "-qAtc", sql], check=True, capture_output=True, user=user, cwd="/tmp")

    psql("postgres", "CREATE ROLE vaultadmin WITH LOGIN CREATEROLE PASSWORD 'example-admin-password'")
    psql("postgres", "CREATE DATABASE crm OWNER vaultadmin")
    psql("crm", "CREATE TABLE customers (id text PRIMARY KEY, name text, team text);"
                "INSERT INTO customers VALUES ('c-1001', 'Acme GmbH', 'eu'), ('c-2002', 'Globex Inc', 'us');"
                "CREATE TABLE tickets (id int, customer text, subject text);"
                "INSERT INTO tickets VALUES (9, 'c-1001', 'charged twice'), (12, 'c-1001', 'cannot log in');"
                "ALTER TABLE customers OWNER TO vaultadmin; ALTER TABLE tickets OWNER TO vaultadmin")
    return root / "sock"


def configure_vault(vault: str, node3_admin: str, host: str) -> None:
    """As an operator would: JWT auth reading node3's JWKS, a role bound to crm's SPIFFE ID,
    the database engine issuing read-only users."""
    calls = [
        ("sys/auth/jwt", {"type": "jwt"}),
        ("auth/jwt/config", {"jwks_url": f"http://{node3_admin}/jwks.json"}),
        ("sys/policies/acl/crm", {"policy": 'path "database/creds/crm-readonly" { capabilities = ["read"] }'}),
        ("auth/jwt/role/crm", {"role_type": "jwt", "bound_audiences": ["vault"], "user_claim": "sub",
                               "bound_subject": ID["crm"], "token_policies": ["crm"], "token_ttl": "1h"}),
        ("sys/mounts/database", {"type": "database"}),
        ("database/config/crm", {
            "plugin_name": "postgresql-database-plugin",
            "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@{host}:5432/crm?sslmode=disable",
            "username": "vaultadmin", "password": "example-admin-password", "allowed_roles": ["crm-readonly"]}),
        ("database/roles/crm-readonly", {
            "db_name": "crm",
            "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
                                    "GRANT SELECT ON customers, tickets TO \"{{name}}\""],
            "revocation_statements": ["REVOKE ALL ON customers, tickets FROM \"{{name}}\"", "DROP ROLE IF EXISTS \"{{name}}\""],
            "default_ttl": "5m", "max_ttl": "1h"}),
    ]
    for path, body in calls:
        http("POST", f"http://{vault}/v1/{path}", body, token="root")


def policy_dir(work: Path, business_hours: bool) -> Path:
    target = work / "policy"
    target.mkdir()
    for module in (ROOT / "policies/authz").glob("*.rego"):
        if not module.name.endswith("_test.rego"):
            shutil.copy(module, target)
    data = json.loads((HERE / "data.json").read_text())
    if not business_hours:
        data["business_hours"] = {"days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
                                  "start": 0, "end": 24}
    (target / "data.json").write_text(json.dumps(data, indent=2))
    return target


def node_config(work: Path, node: str, host: str, policy: Path, body: str) -> Path:
    uid = os.geteuid()
    # Only the node in front of the CRM knows triage as a support agent of team eu: the receiving
    # end enforces the support rules, whatever the caller's node knows.
    attributes = f'[policy.attributes."{ID["triage"]}"]\nkind = "support"\nteam = "eu"\n' if node == "node3" else ""
    text = f"""trust_domain = "{TD}"
[identity]
workload_api = "unix://{work}/workload.sock"
delegated_identity_api = "unix://{work}/admin.sock"
[admin]
listen = "{host}:{ {'node1': 15000, 'node2': 15100, 'node3': 15200}[node] }"
[state]
dir = "{work}/state-{node}"
[policy]
dir = "{policy}"
time_zone = "Europe/Paris"
{attributes}[approvals]
socket = "{work}/operator-{node}.sock"
operators = [{uid}]
""" + body
    path = work / f"{node}.toml"
    path.write_text(text)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", required=True, help="where deputy and deputyd are")
    parser.add_argument("--vault", required=True, help="the vault binary")
    parser.add_argument("--business-hours", action="store_true", help="Mon-Fri 9:00-18:00 Europe/Paris, as shipped")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, trails)")
    args = parser.parse_args()
    bins = Path(args.bin_dir)
    work = Path(tempfile.mkdtemp(prefix="deputy-support-triage-"))
    mesh = Mesh(work, bins, sys.executable)
    host = loopback_host()
    uid = os.geteuid()
    try:
        return run(mesh, args, host, uid)
    finally:
        mesh.stop()
        if args.keep:
            print(f"(logs and audit trails kept in {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(mesh: Mesh, args, host: str, uid: int) -> int:
    work, bins = mesh.work, mesh.bins
    entries = f'[[entry]]\nspiffe_id = "spiffe://{TD}/deputyd/node"\nselectors = ["unix:uid:{uid}"]\n\n'
    entries += f'[[delegate]]\nselectors = ["unix:uid:{uid}"]\n\n'
    for name, spiffe_id in ID.items():
        entries += f'[[entry]]\nspiffe_id = "{spiffe_id}"\nselectors = ["deputy:agent:{name}"]\n\n'
    (work / "entries.toml").write_text(entries)
    mesh.start("issuer", [bins / "deputy", "issuer", "--trust-domain", TD, "--data-dir", work / "ca", "--workload-socket",
                          work / "workload.sock", "--admin-socket", work / "admin.sock", "--entries", work / "entries.toml"],
               wait="issuer serving")
    postgres(mesh, host)
    vault = f"{host}:8200"
    mesh.start("vault", [args.vault, "server", "-dev", "-dev-no-store-token", "-dev-root-token-id=root",
                         f"-dev-listen-address={vault}"], env={"HOME": str(work)}, wait="Vault server started")
    eventually("Vault", lambda: http("GET", f"http://{vault}/v1/sys/health").get("initialized"))

    # The agents' own processes: each serves where only its deputyd reaches it.
    serve = [mesh.python, "-m", "deputy.serve"]
    env = {"PYTHONPATH": f"{ROOT / 'sdk/python/src'}:{HERE / 'agents'}", "PYTHONDONTWRITEBYTECODE": "1"}
    addr = lambda line: line.rsplit(" ", 1)[1]  # noqa: E731
    sentiment = addr(mesh.start("sentiment", serve + ["sentiment:app"], env, wait="listening on"))
    crm = addr(mesh.start("crm", serve + ["crm:app"], {**env, "CRM_DATABASE": f"{host}:15231"}, wait="listening on"))
    triage = addr(mesh.start("triage", serve + ["triage:app"], {**env, "TRIAGE_OUTBOUND": f"http://{host}:15101"},
                             wait="listening on"))

    policy = policy_dir(work, args.business_hours)
    node1_in, node2_in, node3_in = f"{host}:15008", f"{host}:15108", f"{host}:15208"
    configs = {
        "node3": f"""[inbound]
listen = "{node3_in}"
[vault]
address = "http://{vault}"
[[agent]]
name = "sentiment-analysis"
spiffe_id = "{ID['sentiment-analysis']}"
upstream = "http://{sentiment}"
[[agent]]
name = "crm"
spiffe_id = "{ID['crm']}"
upstream = "http://{crm}"
uids = [{uid}]
mcp = true
[[agent.secret]]
name = "db"
database = {{ role = "crm-readonly" }}
[[agent.postgres]]
listen = "{host}:15231"
upstream = "{host}:5432"
database = "crm"
secret = "db"
""",
        "node2": f"""[inbound]
listen = "{node2_in}"
[[agent]]
name = "triage"
spiffe_id = "{ID['triage']}"
upstream = "http://{triage}"
outbound = "{host}:15101"
uids = [{uid}]
[[service]]
name = "sentiment-analysis"
spiffe_id = "{ID['sentiment-analysis']}"
address = "{node3_in}"
[[service]]
name = "crm"
spiffe_id = "{ID['crm']}"
address = "{node3_in}"
mcp = true
""",
        "node1": f"""[inbound]
listen = "{node1_in}"
[[agent]]
name = "frontdoor"
spiffe_id = "{ID['frontdoor']}"
outbound = "{host}:15001"
uids = [{uid}]
[[service]]
name = "triage"
spiffe_id = "{ID['triage']}"
address = "{node2_in}"
""",
    }
    for node, body in configs.items():
        config = node_config(work, node, host, policy, body)
        mesh.start(node, [bins / "deputyd", "--config", config], {"RUST_LOG": "warn,deputyd=info"}, wait="deputyd started")
    configure_vault(vault, f"{host}:15200", host)
    for node, port in (("node1", 15000), ("node2", 15100), ("node3", 15200)):
        eventually(f"{node} ready", lambda p=port: urllib.request.urlopen(f"http://{host}:{p}/readyz", timeout=5).status == 200)
    eventually("crm's database user from Vault", lambda: any(
        s["state"] == "available" for a in http("GET", f"http://{host}:15200/status")["secrets"] for s in a["secrets"]))

    print("Support triage on a Deputy mesh: three deputyd nodes, the embedded issuer, Vault, PostgreSQL.")
    print(f"Policy: the shipped policies/authz; business hours {'Mon-Fri 9-18 Europe/Paris' if args.business_hours else 'all week (run with --business-hours for 9-18)'}.\n")
    task = deputy.Task("user:alice@example.org", scope=["tickets:read", "customers:read", "payments:write"], ttl="10m")
    ticket = {"customer": "c-1001", "other_customer": "c-2002", "refund": 40,
              "text": "I was charged twice and I want a refund, this is unacceptable"}
    print(f"frontdoor (node1): alice opens a ticket; task {task.id} for {task.principal}, scopes {', '.join(task.scope)}")
    with deputy.Agent(f"http://{host}:15001", client_id="frontdoor") as frontdoor:
        answer = frontdoor.call("triage", "/triage", method="POST", json=ticket, task=task).json()
        steps = answer["steps"]
        if answer["refund"] == "held":
            approval = answer["approval"]
            done = subprocess.run([bins / "deputy", "approvals", "approve", approval, "--note", "alice's double charge",
                                   "--socket", work / "operator-node2.sock"], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"approving {approval} failed: {done.stdout}{done.stderr}")
            steps.append(f"operator (node2): deputy approvals approve {approval}")
            retried = frontdoor.call("triage", f"/refund?approval={approval}", method="POST", json=ticket, task=task).json()
            steps += retried["steps"]
    for step in steps:
        print(f"  {step}")

    trails = [str(work / f"state-{node}/audit") for node in ("node1", "node2", "node3")]
    query = subprocess.run([bins / "deputy", "audit", "query", *trails, "--task", task.id],
                           capture_output=True, text=True, check=True)
    print(f"\ndeputy audit query <node1, node2, node3 trails> --task {task.id}:")
    print(query.stdout)

    expected = [
        "-> sentiment-analysis (skill): negative",
        "(MCP tools/call search_tickets): 2 open ticket(s), read from PostgreSQL as v-",
        "GET /customers/c-2002: refused by service-node: PolicyDenied: ",
        "customer c-2002 belongs to team us, not to the agent's team eu",
        "POST /payments/refunds: held for a human's approval",
        "POST /payments/refunds: refunded 40 for user:alice@example.org",
    ]
    if not args.business_hours:
        expected.append("GET /customers/c-1001: Acme GmbH (team eu)")
    text = "\n".join(steps)
    missing = [e for e in expected if e not in text]
    verified = subprocess.run([bins / "deputy", "audit", "verify", trails[2]], capture_output=True, text=True)
    if missing or query.stdout.count("\n") < 8 or verified.returncode != 0:
        print(f"NOT AS EXPECTED: missing {missing}; audit verify: {verified.stdout}{verified.stderr}")
        return 1
    print("Every hop went as described; node3's trail verifies.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
