"""The latency-over-time plot (``latency.png``), drawn only when matplotlib is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Results = dict[str, dict[str, Any]]


def plot(results: Results, path: Path) -> str:
    """Latency over time (and the backlog's RSS) as a PNG at ``path``; says what it did."""
    panels = (("latency", _latency_panel), ("naive", _naive_panel), ("backlog", _rss_panel))
    drawn = [(draw, results[name]["series"]) for name, draw in panels if _has_series(results, name)]
    if not drawn:
        return "no plot: none of latency, naive, backlog ran"
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return "no plot: matplotlib is not installed (pip install -e '.[bench]')"
    # "20", not "2 x 10^1", on log axes; between decades only 2 and 5 are labelled.
    plain = FuncFormatter(lambda value, _pos: f"{value:g}")
    sparse = FuncFormatter(lambda value, _pos: f"{value:g}" if f"{value:g}"[0] in "25" else "")
    fig, axes = plt.subplots(len(drawn), 1, figsize=(10, 3.6 * len(drawn)), squeeze=False)
    for ax, (panel, series) in zip(axes[:, 0], drawn, strict=True):
        panel(ax, series)
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(sparse)
        ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"wrote {path}"


def _has_series(results: Results, name: str) -> bool:
    return bool(results.get(name, {}).get("series"))


def _latency_panel(ax: Any, s: dict[str, Any]) -> None:
    ax.scatter(s["t_s"], s["arrival_ms"], s=3, label="POST -> arrival at receiver")
    ax.scatter(s["t_s"], s["answer_ms"], s=3, label="POST answer", alpha=0.6)
    for limit, style in ((5, "--"), (25, ":")):
        ax.axhline(limit, color="grey", linestyle=style, linewidth=1, label=f"{limit} ms")
    ax.set_yscale("log")
    ax.set(
        title="Relay at a steady 200 events/s (targets: p50 <= 5 ms, p99 <= 25 ms)",
        xlabel="seconds",
        ylabel="ms",
    )
    ax.legend(loc="upper right", markerscale=4)


def _naive_panel(ax: Any, s: dict[str, Any]) -> None:
    for name, label in (("relay", "relay answer"), ("naive", "naive receiver answer")):
        ax.scatter(s[name]["t_s"], s[name]["answer_ms"], s=4, label=label)
    _mark_steps(ax, s["naive"])
    ax.set_yscale("log")
    rates = ", ".join(f"{r:g}" for r in sorted(set(s["naive"]["rate"])))
    ax.set(
        title=f"Against a Slack taking 100 ms per message, at {rates} requests/s in turn",
        xlabel="seconds since the first step (steps marked for the naive receiver)",
        ylabel="answer ms",
    )
    ax.legend(loc="center left", markerscale=4)


def _mark_steps(ax: Any, timeline: dict[str, list[float]]) -> None:
    """A label where each rate step of ``timeline`` begins."""
    seen: set[float] = set()
    for t, rate in zip(timeline["t_s"], timeline["rate"], strict=True):
        if rate not in seen:
            seen.add(rate)
            ax.axvline(t, color="grey", linewidth=0.5)
            ax.annotate(f"{rate:g}/s", (t, 1), xycoords=("data", "axes fraction"), fontsize=8,
                        xytext=(2, -10), textcoords="offset points")  # fmt: skip


def _rss_panel(ax: Any, s: dict[str, Any]) -> None:
    ax.plot(s["rss_t_s"], s["rss_mb"], label="relay RSS")
    ax.axhline(150, color="grey", linestyle="--", linewidth=1, label="150 MB target")
    ax.axvline(s["accept_end_s"], color="tab:red", linewidth=1, label="all accepted")
    ax.axvline(s["up_at_s"], color="tab:green", linewidth=1, linestyle=":", label="receiver up")
    ax.set(
        title="Backlog: relay memory while accepting (receiver down), then draining",
        xlabel="seconds since spawn",
        ylabel="MB",
    )
    ax.legend(loc="lower right")
