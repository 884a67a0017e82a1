"""The benchmark plots: commands/s against workers, and command latency against load (PNG)."""

from __future__ import annotations

from pathlib import Path

from bench.confidential import COMMANDS_TARGET, Curves

__all__ = ["LATENCY_PNG", "SCALING_PNG", "draw"]

HERE = Path(__file__).resolve().parent
SCALING_PNG = HERE / "scaling.png"
LATENCY_PNG = HERE / "latency.png"


def draw(curves: Curves, *, quick: bool, stamp: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    run = f"{'make bench-quick' if quick else 'make bench'}, {stamp}"
    if curves.scaling:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        workers = sorted(curves.scaling)
        ax.plot(workers, [curves.scaling[w] for w in workers], "o-", label="measured")
        ax.plot(
            sorted(COMMANDS_TARGET),
            [COMMANDS_TARGET[w] for w in sorted(COMMANDS_TARGET)],
            "--",
            color="grey",
            label="target (linear from 500/s at 4)",
        )
        ax.set_xscale("log", base=2)
        ax.set_xticks(workers, [str(w) for w in workers])
        ax.set_xlabel("workers scheduled")
        ax.set_ylabel("commands/s (settled)")
        ax.set_title(f"Commands/s against workers ({run})", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(SCALING_PNG)
        plt.close(fig)
        written.append(SCALING_PNG)
    if curves.load:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        points = sorted(curves.load, key=lambda p: p["rate"])
        rates = [p["rate"] for p in points]
        ax.plot(rates, [p["p50"] for p in points], "o-", label="p50")
        ax.plot(rates, [p["p99"] for p in points], "s-", label="p99")
        for p in points:
            ax.annotate(
                f"{int(p['inflight'])}",
                (p["rate"], p["p50"]),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
            )
        ax.axhline(220, color="grey", linestyle="--", label="p50 target, 2 blocks + 20 ms")
        ax.set_xlabel("commands/s (numbers: commands in flight; 8 workers)")
        ax.set_ylabel("request to settlement (ms)")
        ax.set_title(f"Command latency against load ({run})", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(LATENCY_PNG)
        plt.close(fig)
        written.append(LATENCY_PNG)
    return written
