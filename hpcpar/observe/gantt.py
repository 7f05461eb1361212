"""A trace as a picture: a Gantt chart of every rank's spans, and compute/communication/wait per rank.

:func:`summarize` is pure (no plotting library): per rank, the seconds of the
trace's window spent waiting for other ranks (the ``wait`` spans: the part of
each collective before the last rank arrived, and the final check), communicating
(collectives, halo exchanges, marked waits, less their waits), in I/O (Output
writes, checkpoint saves) and computing (the rest, which includes timer regions,
farm tasks and pipeline items). :func:`plot` draws the chart (``hpcpar trace FILE
--png out.png``; needs matplotlib, the ``plot`` extra).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["COLORS", "PARTS", "spans", "summarize", "format_summary", "plot"]

#: Colour per span kind (the trace's ``cat``), drawn in this order (later on top).
COLORS = {"region": "#c6dbef", "task": "#74c476", "item": "#41ab5d", "collective": "#fd8d3c",
          "exchange": "#9e9ac8", "mark": "#bcbddc", "io": "#4292c6", "checkpoint": "#08519c",
          "wait": "#d62728"}
#: The parts of a rank's time in :func:`summarize`, with their colours.
PARTS = {"compute": "#74c476", "communication": "#fd8d3c", "io": "#4292c6", "wait": "#d62728"}
_COMM = ("collective", "exchange", "mark")
_IO = ("io", "checkpoint")


def spans(data: dict) -> tuple[dict[int, dict[str, np.ndarray]], dict[int, str]]:
    """``({rank: {cat: array of (start, end) seconds}}, {rank: host})`` from a loaded trace."""
    hosts = {e["pid"]: e["args"]["name"] for e in data["traceEvents"]
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    ranks: dict[int, dict[str, list]] = {}
    where: dict[int, str] = {}
    for e in data["traceEvents"]:
        ph = e.get("ph")
        if ph == "M" and e.get("name") == "thread_name":
            ranks.setdefault(e["tid"], {})
            where[e["tid"]] = hosts.get(e["pid"], str(e["pid"]))
        elif ph == "X":
            t = e["ts"] * 1e-6
            ranks.setdefault(e["tid"], {}).setdefault(e.get("cat", "mark"), []).append(
                (t, t + e.get("dur", 0.0) * 1e-6))
    out = {r: {c: np.array(v, dtype=float).reshape(-1, 2) for c, v in cats.items()}
           for r, cats in ranks.items()}
    return dict(sorted(out.items())), where


def _union(iv: list[np.ndarray]) -> float:
    """Total length of the union of intervals."""
    a = np.concatenate([x for x in iv if len(x)]) if any(len(x) for x in iv) else np.zeros((0, 2))
    if not len(a):
        return 0.0
    a = a[np.argsort(a[:, 0])]
    ends = np.maximum.accumulate(a[:, 1])
    starts = a[:, 0]
    # a new block starts where a start lies beyond every earlier end
    new = np.empty(len(a), bool)
    new[0] = True
    new[1:] = starts[1:] > ends[:-1]
    idx = np.flatnonzero(new)
    block_end = np.append(ends[idx[1:] - 1], ends[-1])
    return float(np.sum(block_end - starts[idx]))


def summarize(data: dict) -> dict[str, Any]:
    """Per rank, seconds of compute, communication, io and wait over the trace's window. Pure.

    Returns ``{"window": seconds, "ranks": {rank: {part: seconds}}}``; the parts of
    a rank add up to the window (the first span's start to the last span's end, over
    all ranks).
    """
    per, _ = spans(data)
    all_iv = [iv for cats in per.values() for iv in cats.values() if len(iv)]
    lo = min((float(iv[:, 0].min()) for iv in all_iv), default=0.0)
    hi = max((float(iv[:, 1].max()) for iv in all_iv), default=0.0)
    window = hi - lo
    rows = {}
    for rank, cats in per.items():
        def get(names: tuple[str, ...]) -> list[np.ndarray]:
            return [cats[c] for c in names if c in cats]
        wait = _union(get(("wait",)))
        comm_wait = _union(get(_COMM + ("wait",)))
        busy = _union(get(_COMM + ("wait",) + _IO))
        rows[rank] = {"compute": max(0.0, window - busy), "communication": comm_wait - wait,
                      "io": busy - comm_wait, "wait": wait}
    return {"window": window, "ranks": rows}


def format_summary(summary: dict[str, Any]) -> str:
    """The per-rank table ``hpcpar trace FILE`` prints."""
    w = summary["window"] or 1.0
    lines = [f"trace window {summary['window']:.3f} s, {len(summary['ranks'])} ranks",
             f"  {'rank':>5} " + " ".join(f"{p:>14}" for p in PARTS)]
    for rank, parts in summary["ranks"].items():
        lines.append(f"  {rank:>5} " + " ".join(
            f"{parts[p]:>8.3f} {100 * parts[p] / w:>4.0f}%" for p in PARTS))
    return "\n".join(lines)


def plot(data: dict, path: str, title: str = "") -> None:
    """Draw the Gantt chart of a loaded trace into ``path`` (PNG, SVG, PDF). **Local**.

    Raises:
        RuntimeError: matplotlib is not installed (``pip install 'hpcpar[plot]'``).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise RuntimeError("drawing a trace needs matplotlib: pip install 'hpcpar[plot]'") from None
    per, hosts = spans(data)
    summary = summarize(data)
    ranks = list(per)
    n = max(1, len(ranks))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 1.6 + 0.16 * n), sharey=True,
                                 gridspec_kw={"width_ratios": [5, 1], "wspace": 0.04})
    all_iv = [iv for cats in per.values() for iv in cats.values() if len(iv)]
    lo = min((float(iv[:, 0].min()) for iv in all_iv), default=0.0)
    for y, rank in enumerate(ranks):
        for cat, color in COLORS.items():
            iv = per[rank].get(cat)
            if iv is None or not len(iv):
                continue
            # regions are the background band; waits sit on their collectives
            height, base = (0.36, y - 0.45) if cat == "region" else (0.8, y - 0.4)
            ax.broken_barh(list(zip(iv[:, 0] - lo, iv[:, 1] - iv[:, 0])), (base, height),
                           facecolors=color, edgecolors="none", linewidth=0)
    ax.set_xlabel("seconds since the trace started")
    ax.set_xlim(0, max(summary["window"], 1e-9))
    ax.set_ylim(n - 0.5, -0.5)
    step = max(1, n // 32)
    ax.set_yticks(range(0, n, step))
    ax.set_yticklabels([f"rank {ranks[i]}" for i in range(0, n, step)], fontsize=7 if n > 16 else 9)
    ax.grid(axis="x", alpha=0.3)
    used = {c for cats in per.values() for c in cats}
    ax.legend(handles=[Patch(color=c, label=k) for k, c in COLORS.items() if k in used],
              loc="lower left", bbox_to_anchor=(0, 1.0), ncol=len(COLORS), fontsize=7, frameon=False)
    window = summary["window"] or 1.0
    left = np.zeros(n)
    for part, color in PARTS.items():
        vals = np.array([summary["ranks"][r][part] / window for r in ranks]) * 100
        bx.barh(range(n), vals, left=left, color=color, height=0.8, label=part)
        left += vals
    bx.set_xlim(0, 100)
    bx.set_xlabel("% of the window")
    bx.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, fontsize=7, frameon=False)
    height = 1.6 + 0.16 * n  # inches: room above the axes for the legends, then the title
    fig.subplots_adjust(top=1 - 0.55 / height)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / height)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
