"""`python -m bench [--quick]`: run the benchmarks, print a table, write bench/results.json and
refresh the results table in README.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import attestation, chain, evm, limits
from bench._harness import Limit, Metric

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"


def machine() -> dict[str, object]:
    import psutil

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def render(metrics: list[Metric], found: list[Limit], quick: bool) -> str:
    by_name = {limit.name: limit for limit in found}
    lines = [
        f"Last run: {'`make bench-quick` (reduced sizes)' if quick else '`make bench`'}, {metrics[0].date if metrics else ''}.",
        "",
        "| metric | value | target | met | bounded by (limit, ratio) |",
        "|---|---|---|---|---|",
    ]
    for m in metrics:
        bound = ""
        if m.bound_by and m.bound_by in by_name:
            limit = by_name[m.bound_by]
            bound = f"{limit.name} = {limit.value:,.0f} {limit.unit} ({m.value / limit.value:.2f}×)"
        sign = "≥" if m.better == "higher" else "≤"
        lines.append(
            f"| {m.name} | {m.value:,.2f} {m.unit} | {sign} {m.target:,} {m.unit} | {'yes' if m.met else '**no**'} | {bound} |"
        )
    lines += ["", "| physical limit | value |", "|---|---|"]
    lines += [f"| {limit.name} | {limit.value:,.2f} {limit.unit} |" for limit in found]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="every metric, at reduced size (under 2 minutes)"
    )
    args = parser.parse_args()
    quick = args.quick
    metrics: list[Metric] = []
    with tempfile.TemporaryDirectory(prefix="umbra-bench-") as tmp:
        work = Path(tmp)
        found = limits.measure(seconds=0.5 if quick else 2.0, requests=500 if quick else 3000)
        metrics += chain.transfers(work, count=5000 if quick else 30000)
        metrics += chain.restart(work, blocks=10_000 if quick else 100_000)
        metrics += attestation.verifications(seconds=0.5 if quick else 2.0)
        metrics += evm.inbox_vs_sequencer(work, count=3000 if quick else 20000)

    table = Table(title="Umbra benchmarks" + (" (quick)" if quick else ""))
    for column in ("metric", "value", "target", "met"):
        table.add_column(column)
    for m in metrics:
        table.add_row(m.name, f"{m.value:,.2f} {m.unit}", f"{m.target:,} {m.unit}", "yes" if m.met else "NO")
    for limit in found:
        table.add_row(f"[dim]limit: {limit.name}[/dim]", f"{limit.value:,.2f} {limit.unit}", "", "")
    Console().print(table)

    results = {
        "machine": machine(),
        "metrics": [m.to_json() for m in metrics],
        "limits": [x.to_json() for x in found],
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = README.read_text()
    block = f"<!-- bench:start -->\n{render(metrics, found, quick)}\n<!-- bench:end -->"
    if "<!-- bench:start -->" in text:
        text = re.sub(r"<!-- bench:start -->.*<!-- bench:end -->", lambda _: block, text, flags=re.S)
        README.write_text(text)


if __name__ == "__main__":
    main()
