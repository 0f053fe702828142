#!/usr/bin/env python3
"""Conformance: Deputy's `rego` engine (regorus) against OPA's own engine.

Every decision case under policies/cases, and a few hundred variants of each (one field changed
at a time: time of day, weekday, method, path, chain depth, scopes, principal, MCP tool, the
actor's attributes...), is decided twice: by OPA's evaluation engine (v1.20.2, from the PyPI
package opa-golib-python-bindings) and by `deputy policy eval --inputs` (regorus). Any
disagreement in the entrypoint's raw value fails the run, and every case must also match its
recorded expectation. The policy's own `test_*` rules run under OPA too.

The wasm engine leg needs `opa build -t wasm`, so it runs only when an `opa` CLI is on PATH
(then every input is also decided by `deputy policy eval --bundle`); otherwise it says it was
skipped and why.

Usage: opa_conformance.py --deputy PATH/TO/deputy [--policy policies/authz] [--cases policies/cases]
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
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ENTRYPOINT = "deputy/authz/decision"
WHEEL_VERSION = "0.4.4"


def cache_dir() -> Path:
    base = os.environ.get("DEPUTY_CACHE") or os.path.join(Path.home(), ".cache", "deputy")
    return Path(base) / f"opa-golib-python-bindings-{WHEEL_VERSION}"


def fetch_oracle() -> Path:
    """Downloads the pinned wheel once (hash-checked by pip) and unpacks it into the cache."""
    target = cache_dir()
    if (target / "opa_bindings" / "libopabridge.so").is_file():
        return target
    with tempfile.TemporaryDirectory() as download:
        # The wheel declares Python >= 3.14 but its ctypes code runs on 3.11: download it for
        # 3.14 and load it from a plain directory instead of installing it.
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--python-version", "3.14", "--only-binary=:all:", "--require-hashes",
               "-r", str(HERE / "requirements.txt"), "-d", download]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"error: cannot download OPA's engine from PyPI ({' '.join(cmd)}):\n"
                     f"{result.stderr.strip()}\nThe conformance check needs PyPI once; later "
                     f"runs use {target}.")
        wheels = list(Path(download).glob("*.whl"))
        staging = Path(tempfile.mkdtemp(dir=target.parent if target.parent.exists() else None))
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extractall(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def opa_engine(policy_dir: Path, with_tests: bool):
    from opa_bindings.engine import OpaEngine  # noqa: E402 (path set up by fetch_oracle)

    engine = OpaEngine()
    for path in sorted(policy_dir.glob("*.rego")):
        if path.name.endswith("_test.rego") and not with_tests:
            continue
        engine.add_policy(path.name, path.read_text())
    data = policy_dir / "data.json"
    if data.is_file():
        engine.add_data(json.loads(data.read_text()))
    return engine


def opa_decide(engine, document):
    from opa_bindings.engine import OpaError, OpaUndefinedError

    try:
        return {"raw": engine.eval_document(ENTRYPOINT.replace("/", "."), document), "error": None}
    except OpaUndefinedError:
        return {"raw": None, "error": None}
    except OpaError as e:
        return {"raw": None, "error": str(e)}


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
       {"method": "tools/list"}, {"method": "tools/call"}]
ATTRIBUTES = [{}, {"kind": "support", "team": "eu"}, {"kind": "support", "team": "us"},
              {"kind": "support"}, {"kind": "triage", "team": "eu"}]
IDS = ["spiffe://example.org/agent/triage", "spiffe://example.org/agent/support-eu",
       "spiffe://example.org/agent/support-us", "spiffe://example.org/agent/billing",
       "spiffe://example.org/agent/crm", "spiffe://other.org/agent/x"]
SERVICES = ["tickets", "crm", "payments", "tools", "unknown"]


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


def drop(doc, field):
    # Fields the schema allows to be absent; the policy must fail closed without them.
    doc.pop(field, None)


MUTATIONS = [
    (set_time, TIMES), (set_method, METHODS), (set_path, PATHS), (set_scope, SCOPES),
    (set_principal, PRINCIPALS), (set_mcp, MCP), (set_attributes, ATTRIBUTES),
    (set_actor_id, IDS), (set_service, SERVICES), (set_depth, [0, 1, 2, 3, 4, 5, 8]),
    (set_new_task, [True, False]), (drop, ["peer", "service", "task"]),
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


def regorus_decide(deputy: str, policy: Path, documents, flag="--dir"):
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


def run_opa_tests(policy_dir: Path):
    engine = opa_engine(policy_dir, with_tests=True)
    failures, count = [], 0
    for path in sorted(policy_dir.glob("*_test.rego")):
        text = path.read_text()
        package = next(l.split()[1] for l in text.splitlines() if l.startswith("package "))
        names = sorted({l.split()[0].split("(")[0] for l in text.splitlines()
                        if l.startswith("test_")})
        for name in names:
            count += 1
            try:
                rows = engine.eval_query(f"data.{package}.{name} == true")
            except Exception as e:  # an error is a failure with its message
                rows, name = [], f"{name} ({e})"
            if not rows:
                failures.append(f"data.{package}.{name}")
    return count, failures


def wasm_leg(deputy: str, policy_dir: Path, named, opa):
    """Compiles the policy with `opa build -t wasm` and decides every input with Deputy's wasm
    engine; returns the disagreements with OPA's own engine."""
    opa_cli = shutil.which("opa")
    if opa_cli is None:
        print("wasm engine: SKIPPED: no `opa` CLI on PATH to compile the policy with "
              "`opa build -t wasm -e deputy/authz/decision` (it cannot be installed on this "
              "machine); the wasm engine's own tests use modules that speak OPA's wasm ABI")
        return []
    with tempfile.TemporaryDirectory() as work:
        sources = Path(work) / "policy"
        shutil.copytree(policy_dir, sources,
                        ignore=shutil.ignore_patterns("*_test.rego"))
        bundle = Path(work) / "bundle.tar.gz"
        built = subprocess.run([opa_cli, "build", "-t", "wasm", "-e", ENTRYPOINT, "-o",
                                str(bundle), "."], cwd=sources, capture_output=True, text=True)
        if built.returncode != 0:
            sys.exit(f"error: opa build -t wasm failed:\n{built.stderr}")
        ours = regorus_decide(deputy, bundle, [doc for _, doc in named], flag="--bundle")
    disagreements = [(name, doc, theirs, mine)
                     for (name, doc), theirs, mine in zip(named, opa, ours, strict=True)
                     if theirs["error"] or mine["error"] or theirs["raw"] != mine["raw"]]
    print(f"wasm engine: {len(named) - len(disagreements)} of {len(named)} inputs decided as "
          f"OPA decides them")
    return disagreements


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deputy", required=True, help="the deputy CLI binary")
    parser.add_argument("--policy", default=str(ROOT / "policies" / "authz"))
    parser.add_argument("--cases", default=str(ROOT / "policies" / "cases"))
    parser.add_argument("--random", type=int, default=300,
                        help="how many seeded random multi-field variants to add")
    args = parser.parse_args()
    policy_dir = Path(args.policy)

    sys.path.insert(0, str(fetch_oracle()))
    cases = [json.loads(p.read_text()) for p in sorted(Path(args.cases).glob("*.json"))]
    if not cases:
        sys.exit(f"error: no decision cases in {args.cases}")

    named = list(variants(cases, args.random))
    engine = opa_engine(policy_dir, with_tests=False)
    opa = [opa_decide(engine, doc) for _, doc in named]
    ours = regorus_decide(args.deputy, policy_dir, [doc for _, doc in named])

    disagreements = []
    for (name, doc), theirs, mine in zip(named, opa, ours, strict=True):
        if theirs["error"] or mine["error"]:
            disagreements.append((name, doc, theirs, mine))
        elif theirs["raw"] != mine["raw"]:
            disagreements.append((name, doc, theirs, mine))
    expected = {c["name"]: c["expect"] for c in cases}
    mismatched = [(name, opa_result["raw"], expected[name])
                  for (name, _), opa_result in zip(named, opa)
                  if name in expected and opa_result["raw"] != expected[name]]

    allowed = sum(1 for r in opa if isinstance(r["raw"], dict) and r["raw"].get("allow") is True)
    print(f"decisions: {len(named)} inputs ({len(cases)} cases and their variants), "
          f"{allowed} allowed, {len(named) - allowed} denied, decided by OPA v1.20.2 and regorus")
    for name, got, want in mismatched:
        print(f"CASE {name}: OPA decided {json.dumps(got)}, the case expects {json.dumps(want)}")

    tests, failed_tests = run_opa_tests(policy_dir)
    print(f"rego tests under OPA: {tests - len(failed_tests)} of {tests} passed")
    for name in failed_tests:
        print(f"FAIL {name}")
    disagreements += wasm_leg(args.deputy, policy_dir, named, opa)
    for name, doc, theirs, mine in disagreements[:10]:
        print(f"DISAGREE {name}\n  input: {json.dumps(doc)}\n  opa:     {json.dumps(theirs)}\n"
              f"  deputy: {json.dumps(mine)}")

    if disagreements or mismatched or failed_tests or tests == 0:
        print(f"conformance FAILED: {len(disagreements)} disagreements, {len(mismatched)} cases "
              f"off their expectation, {len(failed_tests)} failed tests")
        sys.exit(1)
    print("conformance ok: the engines agree on every input")


if __name__ == "__main__":
    main()
