"""Named wall-time regions per rank, and the job's load-imbalance report.

``with ctx.timer("halo"):`` adds the time spent inside the block to the region
``"halo"`` of this process. Entering and leaving costs two ``perf_counter`` calls
and a dict-free attribute update (about 0.3 µs), cheap enough for a time-step
loop. :func:`report` combines every rank's regions into one table on root.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from .trace import RECORDER, REGION

if TYPE_CHECKING:
    from ..core.context import Context

__all__ = ["Region", "Timers", "REGISTRY", "timed", "summarize", "report", "format_report", "mode_label"]


class Region:
    """One named region: a reusable context manager and decorator. **Local**.

    Nested use of the same region counts the outermost span only.
    """

    __slots__ = ("name", "calls", "total", "_start", "_depth", "_span")

    def __init__(self, name: str):
        self.name = name
        self.calls = 0
        self.total = 0.0
        self._start = 0.0
        self._depth = 0
        self._span = -1  # the region's index in the trace's name table, once traced

    def __enter__(self) -> Region:
        if self._depth == 0:
            self._start = time.perf_counter()
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            end = time.perf_counter()
            self.total += end - self._start
            self.calls += 1
            if RECORDER.on:  # tracing (HPCPAR_TRACE)
                i = self._span
                if i < 0:
                    i = self._span = RECORDER.name_id(REGION, self.name)
                RECORDER.put(i, self._start, end)

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self:
                return fn(*args, **kwargs)
        return wrapper


class Timers:
    """The regions of one process, in the order first used. **Local**."""

    def __init__(self) -> None:
        self.regions: dict[str, Region] = {}
        self.started = time.perf_counter()

    def __call__(self, name: str) -> Region:
        region = self.regions.get(name)
        if region is None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"a timer region needs a non-empty name, got {name!r}")
            region = self.regions[name] = Region(name)
        return region

    def snapshot(self) -> dict[str, tuple[int, float]]:
        """``{name: (calls, seconds)}`` for this process."""
        return {n: (r.calls, r.total) for n, r in self.regions.items()}

    def reset(self) -> None:
        self.regions.clear()
        self.started = time.perf_counter()


#: The regions of this process; ``ctx.timer`` and :func:`timed` record here.
REGISTRY = Timers()


def timed(name: str) -> Region:
    """``@hpcpar.timed("compute")`` or ``with hpcpar.timed("io"):``. **Local**."""
    return REGISTRY(name)


def summarize(per_rank: list[dict[str, tuple[int, float]]], walls: list[float]) -> dict[str, Any]:
    """Combine the ranks' snapshots. Pure: the report's numbers, for tests and tools.

    Returns ``{"ranks", "wall", "regions": [{name, calls, calls_min, calls_per_rank,
    min, mean, max, imbalance, share, slowest_rank, per_rank}]}``; ``calls`` is the
    most calls of a rank and ``calls_min`` the fewest (they differ when ranks enter
    a region unequally often, e.g. around farm tasks); ``share`` is the mean time
    over the job's wall time (the slowest rank's), ``imbalance`` is max / mean of
    the ranks' times (1.0 = perfect).
    """
    names: list[str] = []
    for snap in per_rank:
        names.extend(n for n in snap if n not in names)
    wall = max(walls) if walls else 0.0
    rows = []
    for name in names:
        secs = [snap.get(name, (0, 0.0))[1] for snap in per_rank]
        calls = [snap.get(name, (0, 0.0))[0] for snap in per_rank]
        mean = sum(secs) / len(secs)
        rows.append({
            "name": name,
            "calls": max(calls),
            "calls_min": min(calls),
            "calls_per_rank": calls,
            "min": min(secs),
            "mean": mean,
            "max": max(secs),
            "imbalance": (max(secs) / mean) if mean > 0 else 1.0,
            "share": (mean / wall) if wall > 0 else 0.0,
            "slowest_rank": secs.index(max(secs)),
            "per_rank": secs,
        })
    return {"ranks": len(per_rank), "wall": wall, "regions": rows}


def mode_label(ctx: Any) -> str:
    """``"checked"``, ``"unchecked"`` (``HPCPAR_CHECKS=0``), with ``" + debug"`` in debug mode. **Local**."""
    mode = "checked" if getattr(ctx, "checks", True) else "unchecked"
    return mode + (" + debug" if getattr(ctx, "debug", False) else "")


def format_report(summary: dict[str, Any]) -> str:
    """The table root prints at the end of a job."""
    mode = f", collectives {summary['collectives']}" if summary.get("collectives") else ""
    head = f"hpcpar timing: {summary['ranks']} ranks, wall {summary['wall']:.3f} s (slowest rank){mode}"
    if not summary["regions"]:
        return head + "\n  (no timed regions; use `with ctx.timer(\"name\"):`)"
    w = max(6, *(len(r["name"]) for r in summary["regions"]))
    calls = [_calls(r) for r in summary["regions"]]
    c = max(7, *(len(x) for x in calls))
    lines = [head, f"  {'region':<{w}} {'calls':>{c}} {'min s':>9} {'mean s':>9} {'max s':>9} "
                   f"{'imbal.':>7} {'share':>6}  slowest"]
    for r, n in zip(summary["regions"], calls):
        lines.append(f"  {r['name']:<{w}} {n:>{c}} {r['min']:>9.4f} {r['mean']:>9.4f} "
                     f"{r['max']:>9.4f} {r['imbalance']:>7.2f} {100 * r['share']:>5.1f}%  "
                     f"rank {r['slowest_rank']}")
    return "\n".join(lines)


def _calls(row: dict[str, Any]) -> str:
    """``"12"``, or ``"9-14"`` (fewest-most) when the ranks entered the region unequally often."""
    low = row.get("calls_min", row["calls"])
    return str(row["calls"]) if low == row["calls"] else f"{low}-{row['calls']}"


def report(ctx: Context, stream: TextIO | None = None, json_path: str | None = None,
           timers: Timers = REGISTRY) -> dict | None:
    """Gather every rank's regions; root prints the table and optionally writes JSON.

    **Collective** over ``ctx``. Returns the summary dict on root, None elsewhere.
    """
    import sys

    wall = time.perf_counter() - timers.started
    per_rank = ctx.comm.gather((timers.snapshot(), wall), root=ctx.root)
    if not ctx.is_root:
        return None
    assert per_rank is not None  # root receives every rank's regions
    summary = summarize([p[0] for p in per_rank], [p[1] for p in per_rank])
    summary["collectives"] = mode_label(ctx)
    print(format_report(summary), file=stream or sys.stderr, flush=True)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(summary, fh, indent=2)
    return summary
