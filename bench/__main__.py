"""`python -m bench [--quick]`: run the benchmarks, print a table, write bench/results.json,
draw bench/scaling.png and bench/latency.png, and refresh the results section of README.md.

Every metric has a target (`better` says which way); the physical limits measured in the same run
go under `limits`, and a metric that a limit bounds is printed beside it with the ratio. The
quick run measures every metric at reduced size. Machine load moves absolute figures: compare
ratios taken in one run."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import attestation, chain, confidential, enclave, evm, limits, memory, plots, scheduler
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
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def _gap(m: Metric) -> str:
    """How far an unmet metric is from its target, as a factor of the target."""
    if m.met:
        return "yes"
    if not m.target:
        return "**no**"
    factor = m.value / m.target
    return f"**no**: {factor:.2f}× the target"


def _bound(m: Metric, by_name: dict[str, Limit]) -> str:
    if not m.bound_by or m.bound_by not in by_name:
        return ""
    limit = by_name[m.bound_by]
    ratio = m.value / limit.value if limit.value else float("nan")
    return f"{limit.name} = {limit.value:,.2f} {limit.unit} ({ratio:.2f}×)"


def render(metrics: list[Metric], found: list[Limit], quick: bool, plotted: list[Path] | None = None) -> str:
    by_name = {limit.name: limit for limit in found}
    lines = [
        f"Last run: {'`make bench-quick` (reduced sizes)' if quick else '`make bench`'}, "
        f"{metrics[0].date if metrics else ''}. A target not met is marked **no**, with the measured "
        "figure as a factor of the target; the gaps are named below the tables.",
        "",
        "| metric | value | target | met | bounded by (limit, ratio) |",
        "|---|---|---|---|---|",
    ]
    for m in metrics:
        sign = "≥" if m.better == "higher" else "≤"
        lines.append(
            f"| {m.name} | {m.value:,.2f} {m.unit} | {sign} {m.target:,} {m.unit} | {_gap(m)} | {_bound(m, by_name)} |"
        )
    lines += ["", "| physical limit | value |", "|---|---|"]
    lines += [f"| {limit.name} | {limit.value:,.2f} {limit.unit} |" for limit in found]
    if plotted:
        lines += [""]
        titles = {
            plots.SCALING_PNG.name: "Commands/s against workers",
            plots.LATENCY_PNG.name: "Latency against load",
        }
        for path in plotted:
            lines.append(f"![{titles.get(path.name, path.stem)}](bench/{path.name})")
    gaps = [m for m in metrics if not m.met]
    if gaps:
        lines += ["", "Gaps (targets not met, with the measured figure):", ""]
        for m in gaps:
            why = f" {m.note}" if m.note else ""
            lines.append(f"- **{m.name}**: {m.value:,.2f} {m.unit} against {m.target:,} {m.unit}.{why}")
    return "\n".join(lines)


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise SystemExit(143)  # unwinds every `with`: the processes the suite started are killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="every metric, at reduced size (under 2 minutes)"
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="keep the networks' data and logs here (default: a temp dir)"
    )
    args = parser.parse_args()
    quick = args.quick
    signal.signal(signal.SIGTERM, _on_sigterm)
    metrics: list[Metric] = []
    curves = confidential.Curves()
    began = time.perf_counter()

    def section(name: str, fn: Callable[[], list[Metric]]) -> None:
        start = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        metrics.extend(fn())
        print(f"[bench] {name}: {time.perf_counter() - start:.1f} s", flush=True)

    host = machine()
    with tempfile.TemporaryDirectory(prefix="umbra-bench-") as tmp:
        work = Path(tmp) if args.work is None else args.work.resolve()
        work.mkdir(parents=True, exist_ok=True)
        # Memory, not speed: it runs beside the rest at idle CPU priority (bench.memory), and is
        # stopped while the microbenchmarks and the node's own throughput are measured.
        rss = memory.start(work, count=100_000 if quick else 1_000_000)
        try:
            with rss.paused():
                start = time.perf_counter()
                found = limits.measure(seconds=0.5 if quick else 2.0, requests=500 if quick else 3000)
                print(f"[bench] limits: {time.perf_counter() - start:.1f} s", flush=True)
                section("attestation", lambda: attestation.verifications(seconds=0.5 if quick else 2.0))
                section("confidential overhead", lambda: enclave.overhead(runs=30 if quick else 60))
                section("scheduler", lambda: scheduler.run(quick=quick))
                section(
                    "transfers",
                    lambda: chain.transfers(work, count=5000 if quick else 30000, paced_s=3 if quick else 10),
                )
            section("restart", lambda: chain.restart(work, blocks=5_000 if quick else 100_000))
            section("evm", lambda: evm.inbox_vs_sequencer(work, count=5000 if quick else 20000))
            section("confidential path", lambda: confidential.run(work, quick=quick, curves=curves))
            section("node memory (finishing)", rss.result)
        finally:
            rss.kill()
    print(f"[bench] total: {time.perf_counter() - began:.0f} s", flush=True)

    table = Table(title="Umbra benchmarks" + (" (quick)" if quick else ""))
    for column in ("metric", "value", "target", "met", "bounded by (limit, ratio)"):
        table.add_column(column)
    by_name = {limit.name: limit for limit in found}
    for m in metrics:
        sign = "≥" if m.better == "higher" else "≤"
        table.add_row(
            m.name,
            f"{m.value:,.2f} {m.unit}",
            f"{sign} {m.target:,} {m.unit}",
            "yes" if m.met else "NO",
            _bound(m, by_name),
        )
    for limit in found:
        table.add_row(f"[dim]limit: {limit.name}[/dim]", f"{limit.value:,.2f} {limit.unit}", "", "", "")
    Console(width=200).print(table)

    plotted = plots.draw(curves, quick=quick, stamp=metrics[0].date if metrics else "")
    results = {
        "machine": host,
        "metrics": [m.to_json() for m in metrics],
        "limits": [x.to_json() for x in found],
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = README.read_text()
    block = f"<!-- bench:start -->\n{render(metrics, found, quick, plotted)}\n<!-- bench:end -->"
    if "<!-- bench:start -->" in text:
        text = re.sub(r"<!-- bench:start -->.*<!-- bench:end -->", lambda _: block, text, flags=re.S)
        README.write_text(text)


if __name__ == "__main__":
    main()
