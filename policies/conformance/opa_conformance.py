#!/usr/bin/env python3
"""Conformance: Deputy's engines against OPA itself.

Every decision case under policies/cases, and a few hundred variants of each (one field changed
at a time: time of day, weekday, method, path, chain depth, scopes, principal, MCP tool, the
actor's attributes...), is decided three times: by OPA (`opa eval`, v1.22.3, built from its Go
module by scripts/peers), by Deputy's `rego` engine (regorus, `deputy policy eval --inputs
--dir`) and by Deputy's `wasm` engine on the policy compiled with `opa build -t wasm -e
deputy/authz/decision` (`deputy policy eval --inputs --bundle`). Any disagreement in the
entrypoint's raw value fails the run, and every case must also match its recorded expectation.
The policy's own `test_*` rules run under `opa test`.

Usage: opa_conformance.py --deputy PATH/TO/deputy [--opa PATH/TO/opa] [--policy policies/authz]
       [--cases policies/cases]
"""

import argparse
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ENTRYPOINT = "deputy/authz/decision"
OPA_VERSION = "1.22.3"


def default_opa() -> str:
    """The OPA that scripts/peers builds (the same place the tests look)."""
    if os.environ.get("DEPUTY_PEERS_BIN"):
        return os.path.join(os.environ["DEPUTY_PEERS_BIN"], "opa")
    base = os.environ.get("DEPUTY_CACHE") or os.path.join(Path.home(), ".cache", "deputy")
    return os.path.join(base, "peers", "bin", "opa")


def check_opa(opa: str):
    try:
        version = subprocess.run([opa, "version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"error: cannot run OPA at {opa} ({e}); build it with ./scripts/peers "
                 f"(the README's test command does)")
    if f"Version: {OPA_VERSION}" not in version.stdout:
        sys.exit(f"error: {opa} is not OPA {OPA_VERSION}:\n{version.stdout}")


def policy_copy(policy_dir: Path, work: Path) -> Path:
    """The policy as deputyd serves it: its modules and data, without the tests."""
    sources = work / "policy"
    shutil.copytree(policy_dir, sources, ignore=shutil.ignore_patterns("*_test.rego"))
    return sources


def opa_decide_all(opa: str, sources: Path, documents):
    """Every document decided by `opa eval` in one process: each input is given with `with
    input as`, which OPA evaluates as if it were the input. If one input makes the query fail
    (an evaluation error), the inputs are decided one by one so that the error is told apart."""
    with tempfile.TemporaryDirectory() as work:
        inputs = Path(work) / "inputs.json"
        inputs.write_text(json.dumps({"deputy_conformance_inputs": documents}))
        query = ("x := {i: d | some i; doc := data.deputy_conformance_inputs[i]; "
                 f"d := data.{ENTRYPOINT.replace('/', '.')} with input as doc}}")
        result = subprocess.run([opa, "eval", "--format", "json", "-d", str(sources), "-d",
                                 str(inputs), query], capture_output=True, text=True)
        if result.returncode == 0:
            decided = json.loads(result.stdout)["result"][0]["bindings"]["x"]
            return [{"raw": decided.get(str(i)), "error": None} for i in range(len(documents))]
    return [opa_decide_one(opa, sources, doc) for doc in documents]


def opa_decide_one(opa: str, sources: Path, document):
    result = subprocess.run([opa, "eval", "--format", "json", "--stdin-input", "-d",
                             str(sources), f"data.{ENTRYPOINT.replace('/', '.')}"],
                            input=json.dumps(document), capture_output=True, text=True)
    if result.returncode != 0:
        return {"raw": None, "error": (result.stdout + result.stderr).strip()}
    rows = json.loads(result.stdout).get("result") or []
    return {"raw": rows[0]["expressions"][0]["value"] if rows else None, "error": None}


# ---- variants: one field changed at a time, then a few seeded random combinations ----

TIMES = [("Monday", 8), ("Monday", 9), ("Wednesday", 12), ("Friday", 17), ("Friday", 18),
         ("Saturday", 10), ("Sunday", 23), ("Tuesday", 0)]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]
PATHS = ["/customers/c-1001/orders", "/customers/c-2002", "/customers/c-9999/notes",
         "/customers/", "/payments/refund", "/tickets/42", "/", "/mcp"]
SCOPES = [[], ["customers:read"], ["customers:write"], ["customers:read", "tickets:read"],
          ["customers:read", "customers:write"], ["tickets:*"], ["payments:refund"]]
PRINCIPALS = [None, "user:alice@example.org", "user:bob@example.org", "service:invoicing",
              "service:other", "group:ops"]
MCP = [None, {"method": "tools/call", "tool": "refund"},
       {"method": "tools/call", "tool": "search_tickets"},
       {"method": "tools/call", "tool": "summarize"}, {"method": "tools/call", "tool": "rm_rf"},
       {"method": "tools/list"}, {"method": "tools/call"},
       {"method": "tools/call", "tool": "lookup_customer", "arguments": {"/customer_id": "c-1001"}},
       {"method": "tools/call", "tool": "lookup_customer", "arguments": {"/customer_id": "c-2002"}},
       {"method": "tools/call", "tool": "lookup_customer", "arguments": {"/customer_id": 1001}},
       {"method": "tools/call", "tool": "lookup_customer", "arguments": {"/other": True}},
       {"method": "tools/call", "tool": "lookup_customer"},
       {"method": "prompts/get", "prompt": "triage_summary"},
       {"method": "resources/read", "resource": "crm://customers/c-1001"}]
A2A = [None, {"method": "message/send"}, {"method": "message/send", "skill": "summarize"},
       {"method": "message/stream", "skill": "delete_everything"}, {"method": "tasks/cancel"},
       {"method": "tasks/get"}]
PHASES = [None, "list"]
ATTRIBUTES = [{}, {"kind": "support", "team": "eu"}, {"kind": "support", "team": "us"},
              {"kind": "support"}, {"kind": "triage", "team": "eu"}]
IDS = ["spiffe://example.org/agent/triage", "spiffe://example.org/agent/support-eu",
       "spiffe://example.org/agent/support-us", "spiffe://example.org/agent/billing",
       "spiffe://example.org/agent/crm", "spiffe://other.org/agent/x"]
SERVICES = ["tickets", "crm", "payments", "tools", "unknown"]
ORIGINS = [None, ("spiffe://example.org/agent/frontdoor", "user:alice@example.org"),
           ("spiffe://example.org/agent/billing", "service:invoicing"),
           ("spiffe://example.org/agent/billing", "user:alice@example.org"),
           ("spiffe://example.org/agent/support-us", "user:bob@example.org"),
           ("spiffe://other.org/agent/x", "user:alice@example.org"),
           ("spiffe://example.org/agent/frontdoor", "")]


def actor_key(doc):
    return "agent" if doc["direction"] == "outbound" else "peer"


def set_time(doc, weekday_hour):
    doc["time"]["weekday"], doc["time"]["hour"] = weekday_hour


def set_method(doc, method):
    doc["request"]["method"] = method


def set_path(doc, path):
    doc["request"]["path"] = path


def set_scope(doc, scope):
    doc.setdefault("task", {"id": "t-variant", "new": False, "scope": []})["scope"] = scope


def set_principal(doc, principal):
    if principal is None:
        doc.pop("principal", None)
    else:
        doc["principal"] = principal


def set_mcp(doc, mcp):
    if mcp is None:
        doc["request"].pop("mcp", None)
    else:
        doc["request"]["mcp"] = mcp


def set_a2a(doc, a2a):
    if a2a is None:
        doc["request"].pop("a2a", None)
    else:
        doc["request"]["a2a"] = a2a


def set_phase(doc, phase):
    if phase is None:
        doc.pop("phase", None)
    else:
        doc["phase"] = phase


def set_attributes(doc, attributes):
    actor = doc.get(actor_key(doc))
    if actor is not None:
        actor["attributes"] = attributes


def set_actor_id(doc, spiffe_id):
    actor = doc.get(actor_key(doc))
    if actor is not None:
        actor["spiffe_id"] = spiffe_id
        if "trust_domain" in actor:
            actor["trust_domain"] = spiffe_id.split("/")[2]
        if "name" in actor:
            actor["name"] = spiffe_id.rsplit("/", 1)[1]


def set_service(doc, name):
    if doc["direction"] == "outbound":
        doc["service"] = {"name": name, "spiffe_id": f"spiffe://example.org/agent/{name}",
                          "attributes": {}}
    else:
        doc["agent"]["name"] = name
        doc["agent"]["spiffe_id"] = f"spiffe://example.org/agent/{name}"


def set_depth(doc, depth):
    template = doc["chain"][0] if doc["chain"] else {
        "iss": "spiffe://example.org/agent/triage", "aud": "spiffe://example.org/agent/crm",
        "scope": ["customers:read"], "iat": 1795683500, "exp": 1795684100}
    doc["chain"] = [copy.deepcopy(template) for _ in range(depth)]


def set_new_task(doc, new):
    if "task" in doc:
        doc["task"]["new"] = new


def set_origin(doc, origin):
    # Who started the task: what the receiving end judges origination by.
    task = doc.get("task")
    if task is None:
        return
    if origin is None:
        task.pop("origin", None)
    else:
        task["origin"] = {"agent": origin[0], "principal": origin[1]}


def drop(doc, field):
    # Fields the schema allows to be absent; the policy must fail closed without them.
    doc.pop(field, None)


MUTATIONS = [
    (set_time, TIMES), (set_method, METHODS), (set_path, PATHS), (set_scope, SCOPES),
    (set_principal, PRINCIPALS), (set_mcp, MCP), (set_a2a, A2A), (set_phase, PHASES),
    (set_attributes, ATTRIBUTES),
    (set_actor_id, IDS), (set_service, SERVICES), (set_depth, [0, 1, 2, 3, 4, 5, 8]),
    (set_new_task, [True, False]), (drop, ["peer", "service", "task"]),
    (set_origin, ORIGINS),
]


def variants(cases, random_count):
    for case in cases:
        yield case["name"], case["input"]
        for mutate, values in MUTATIONS:
            for value in values:
                doc = copy.deepcopy(case["input"])
                mutate(doc, value)
                yield f"{case['name']} / {mutate.__name__}({value!r})", doc
    rng = random.Random(20261130)
    for n in range(random_count):
        case = rng.choice(cases)
        doc = copy.deepcopy(case["input"])
        chosen = rng.sample(MUTATIONS, 3)
        for mutate, values in chosen:
            mutate(doc, rng.choice(values))
        yield f"{case['name']} / random #{n}", doc


def deputy_decide(deputy: str, policy: Path, documents, flag="--dir"):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as lines:
        for doc in documents:
            lines.write(json.dumps(doc) + "\n")
    try:
        result = subprocess.run([deputy, "policy", "eval", flag, str(policy),
                                 "--inputs", lines.name], capture_output=True, text=True)
    finally:
        os.unlink(lines.name)
    if result.returncode != 0:
        sys.exit(f"error: deputy policy eval --inputs failed:\n{result.stderr}")
    return [json.loads(line) for line in result.stdout.splitlines()]


def run_opa_tests(opa: str, policy_dir: Path):
    """`opa test` on the policy: how many tests ran, and the names of those that failed."""
    result = subprocess.run([opa, "test", "--format", "json", str(policy_dir)],
                            capture_output=True, text=True)
    try:
        results = json.loads(result.stdout)
    except json.JSONDecodeError:
        sys.exit(f"error: opa test did not run:\n{result.stdout}{result.stderr}")
    failed = [f"{r['package']}.{r['name']}" + (f" ({r['error']})" if r.get("error") else "")
              for r in results if r.get("fail") or r.get("error")]
    return len(results), failed


def wasm_leg(deputy: str, opa: str, sources: Path, named, reference):
    """Compiles the policy with `opa build -t wasm` and decides every input with Deputy's wasm
    engine; returns the disagreements with OPA."""
    with tempfile.TemporaryDirectory() as work:
        bundle = Path(work) / "bundle.tar.gz"
        built = subprocess.run([opa, "build", "-t", "wasm", "-e", ENTRYPOINT, "-o",
                                str(bundle), "."], cwd=sources, capture_output=True, text=True)
        if built.returncode != 0:
            sys.exit(f"error: opa build -t wasm failed:\n{built.stderr}")
        ours = deputy_decide(deputy, bundle, [doc for _, doc in named], flag="--bundle")
    disagreements = [(f"wasm: {name}", doc, theirs, mine)
                     for (name, doc), theirs, mine in zip(named, reference, ours, strict=True)
                     if theirs["error"] or mine["error"] or theirs["raw"] != mine["raw"]]
    print(f"wasm engine: {len(named) - len(disagreements)} of {len(named)} inputs decided as "
          f"OPA decides them")
    return disagreements


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deputy", required=True, help="the deputy CLI binary")
    parser.add_argument("--opa", default=default_opa(),
                        help="OPA's CLI (default: the one scripts/peers builds)")
    parser.add_argument("--policy", default=str(ROOT / "policies" / "authz"))
    parser.add_argument("--cases", default=str(ROOT / "policies" / "cases"))
    parser.add_argument("--random", type=int, default=300,
                        help="how many seeded random multi-field variants to add")
    args = parser.parse_args()
    policy_dir = Path(args.policy)
    check_opa(args.opa)

    cases = [json.loads(p.read_text()) for p in sorted(Path(args.cases).glob("*.json"))]
    if not cases:
        sys.exit(f"error: no decision cases in {args.cases}")

    named = list(variants(cases, args.random))
    with tempfile.TemporaryDirectory() as work:
        sources = policy_copy(policy_dir, Path(work))
        opa = opa_decide_all(args.opa, sources, [doc for _, doc in named])
        ours = deputy_decide(args.deputy, policy_dir, [doc for _, doc in named])
        disagreements = [(f"rego: {name}", doc, theirs, mine)
                         for (name, doc), theirs, mine in zip(named, opa, ours, strict=True)
                         if theirs["error"] or mine["error"] or theirs["raw"] != mine["raw"]]
        print(f"rego engine: {len(named) - len(disagreements)} of {len(named)} inputs decided "
              f"as OPA decides them")
        disagreements += wasm_leg(args.deputy, args.opa, sources, named, opa)

    expected = {c["name"]: c["expect"] for c in cases}
    mismatched = [(name, opa_result["raw"], expected[name])
                  for (name, _), opa_result in zip(named, opa)
                  if name in expected and opa_result["raw"] != expected[name]]
    allowed = sum(1 for r in opa if isinstance(r["raw"], dict) and r["raw"].get("allow") is True)
    print(f"decisions: {len(named)} inputs ({len(cases)} cases and their variants), "
          f"{allowed} allowed, {len(named) - allowed} denied, decided by OPA {OPA_VERSION}, "
          f"regorus and the wasm engine")
    for name, got, want in mismatched:
        print(f"CASE {name}: OPA decided {json.dumps(got)}, the case expects {json.dumps(want)}")

    tests, failed_tests = run_opa_tests(args.opa, policy_dir)
    print(f"opa test: {tests - len(failed_tests)} of {tests} passed")
    for name in failed_tests:
        print(f"FAIL {name}")
    for name, doc, theirs, mine in disagreements[:10]:
        print(f"DISAGREE {name}\n  input: {json.dumps(doc)}\n  opa:     {json.dumps(theirs)}\n"
              f"  deputy: {json.dumps(mine)}")

    if disagreements or mismatched or failed_tests or tests == 0:
        print(f"conformance FAILED: {len(disagreements)} disagreements, {len(mismatched)} cases "
              f"off their expectation, {len(failed_tests)} failed tests")
        sys.exit(1)
    print("conformance ok: OPA and both of Deputy's engines agree on every input")


if __name__ == "__main__":
    main()
