#!/usr/bin/env python3
"""PNG plots of a data-path run (bench/datapath.py --plots DIR runs this).

    python3 bench/plot.py RESULTS.json DIR

Needs matplotlib (bench/plot-requirements.txt); datapath.py installs it into a virtual
environment in the cache (~/.cache/deputy/bench-venv) and runs this script there. Writes
throughput.png, latency.png, cpu.png and memory.png into DIR.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DEPUTY = "#1f6f8b"
PEER = "#9aa5ad"


def colors(names):
    return [DEPUTY if name.startswith("deputyd") else PEER for name in names]


def bars(ax, names, values, label, fmt):
    y = range(len(names))
    ax.barh(y, values, color=colors(names))
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel(label)
    for i, value in enumerate(values):
        ax.text(value, i, " " + fmt.format(value), va="center", fontsize=8)
    ax.margins(x=0.18)


def main():
    results = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    pairs = {name: r for name, r in results.items() if name != "direct"}
    plain = {name: r for name, r in pairs.items() if "gb_per_cpu_s" in r}
    subtitle = "one run, 2 cores, loopback"

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.45 * len(pairs) + 1.8))
    bars(left, list(pairs), [r["rps"] for r in pairs.values()], "requests/s, 32 keep-alive connections", "{:,.0f}")
    bars(right, list(plain), [r["gb_per_cpu_s"] for r in plain.values()], "streamed GB per CPU-second (both proxies)",
         "{:.2f}")
    right.set_yticks(range(len(plain)), list(plain))
    fig.suptitle(f"Throughput ({subtitle})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)

    fig, ax = plt.subplots(figsize=(11, 0.55 * len(results) + 1.8))
    quantiles = ["p50", "p90", "p99", "p99.9"]
    height = 0.8 / len(quantiles)
    names = list(results)
    for k, q in enumerate(quantiles):
        values = [results[name].get("latency_ms", {}).get(q, 0.0) for name in names]
        ax.barh([i + k * height for i in range(len(names))], values, height=height, label=q)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("response time at 1,000 requests/s, ms (log scale; vegeta, open loop, evenly spaced)")
    ax.legend(loc="lower right")
    ax.set_title(f"Latency percentiles ({subtitle})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)

    fig, ax = plt.subplots(figsize=(10, 0.45 * len(pairs) + 1.6))
    bars(ax, list(pairs), [r["cpu_per_100k"] * 10 for r in pairs.values()],
         "CPU µs per request, both proxies (user + system, during the 32-connection run)", "{:.1f}")
    ax.set_title(f"CPU per request ({subtitle})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "cpu.png", dpi=110)

    idle = {name: r for name, r in pairs.items() if "rss_after_kib" in r}
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(idle) + 1.6))
    bars(ax, list(idle), [(r["rss_after_kib"] - r["rss_before_kib"]) / 1000 for r in idle.values()],
         "KiB of RSS per idle client connection (1,000 connections, both proxies)", "{:.1f}")
    ax.set_title(f"Memory per connection ({subtitle})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=110)


if __name__ == "__main__":
    main()
