"""Plots of a benchmark run's raw samples (``python -m benchmarks --plot``).

matplotlib is imported only here and only when a plot is asked for, so the
benchmarks run without it (``pip install matplotlib`` to plot).
"""

from __future__ import annotations

from pathlib import Path

from .report import Figure


def latency_plot(figure: Figure, path: Path) -> None:
    """The distributions of ``figure.samples`` (microseconds): a histogram
    on log bins beside the tail (share of samples above x, log-log)."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert figure.samples
    series = {label: sorted(values) for label, values in figure.samples.items() if values}
    low = max(1.0, min(v[0] for v in series.values()))
    high = max(v[-1] for v in series.values())
    bins = [low * (high / low) ** (i / 60) for i in range(61)]
    fig, (hist, tail) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (label, values), color in zip(series.items(), ("tab:blue", "tab:orange", "tab:green")):
        p50, p99 = values[len(values) // 2], values[min(len(values) - 1, int(len(values) * 0.99))]
        hist.hist(values, bins=bins, alpha=0.6, color=color)
        hist.axvline(p99, color=color, linestyle="--", linewidth=1)
        share = [1 - i / len(values) for i in range(len(values))]
        tail.loglog(values, share, color=color,
                    label=f"{label}\np50 {p50:.0f} us, p99 {p99:.0f} us, n={len(values):,}")
        tail.axvline(p99, color=color, linestyle="--", linewidth=1)
    hist.set_xscale("log")
    hist.set_xlabel("latency (us, log scale); dashed: p99")
    hist.set_ylabel("samples")
    tail.axhline(0.01, color="grey", linewidth=0.5)
    tail.set_xlabel("latency (us)")
    tail.set_ylabel("share of samples slower")
    tail.set_title("tail", fontsize=10)
    tail.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"Write-to-event latency: {figure.note.split(';')[0]}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
