"""Scaling studies: run one job at several rank counts and compare the times.

``hpcpar scale JOB --ranks 1,2,4 --repeat 3`` runs the job ``--repeat`` times per
rank count, in rounds (each round runs every rank count once, so a change in the
machine's load falls on every point alike), with ``HPCPAR_REPORT_JSON`` set so the
runner writes each run's timing report. It prints, per rank count, the best,
median and slowest run, and speedup and parallel efficiency of the best runs;
``--plot`` draws them with the spread of the runs as error bars. Rank counts
beyond the CPUs this process may use (:func:`cpus`) are oversubscribed: the
study says so once, and marks those points.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import env
from .mpiexec import launch_command

__all__ = ["Point", "run_scaling", "efficiency_table", "plot_scaling", "weak_args", "cpus",
           "oversubscribed_note", "COLUMNS", "table_rows", "write_csv"]


@dataclass
class Point:
    """One rank count of a scaling study: its runs' wall times."""

    ranks: int
    seconds: float  # the best (shortest) run's wall time, slowest rank, from its timing report
    regions: dict[str, float] = field(default_factory=dict)  # of the best run: region -> max over ranks
    runs: list[float] = field(default_factory=list)  # every run's wall time, in the order run

    def __post_init__(self) -> None:
        if not self.runs:
            self.runs = [self.seconds]


def cpus() -> int:
    """The CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` elsewhere). **Local**."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def oversubscribed_note(ranks: list[int], available: int) -> str | None:
    """The warning for rank counts above ``available`` CPUs, or None. **Local**, pure."""
    over = [n for n in ranks if n > available]
    if not over:
        return None
    return (f"hpcpar scale: warning: {', '.join(map(str, over))} ranks outnumber the {available} "
            f"CPU{'s' if available != 1 else ''} this process may use (os.sched_getaffinity): those "
            "points share CPUs, so their times show the oversubscription, not how the job scales")


def weak_args(args: list[str], name: str, ranks: int, power: float = 1.0) -> list[str]:
    """``args`` with the value of option ``name`` multiplied by ``ranks ** power``. **Local**, pure.

    ``weak_args(["--samples", "1e6"], "--samples", 4)`` → ``["--samples", "4000000"]``.
    For a 2-D grid side use ``power=0.5`` so the cell count grows with the ranks.
    """
    out = list(args)
    for i, a in enumerate(out):
        if a == name and i + 1 < len(out):
            value, idx = out[i + 1], i + 1
            break
        if a.startswith(name + "="):
            value, idx = a.split("=", 1)[1], i
            break
    else:
        raise ValueError(f"--weak needs the job option {name} among the job arguments {args}")
    scaled = float(value) * ranks ** power
    text = str(int(round(scaled))) if float(value).is_integer() or power == 1.0 else f"{scaled:g}"
    out[idx] = text if idx != i else f"{name}={text}"
    return out


def _run_once(job: str, args: list[str], n: int, timeout: float | None) -> tuple[float, dict[str, float]]:
    """One launch of ``job`` on ``n`` ranks: (wall seconds, region -> max over ranks)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        cmd = launch_command(job, args, n)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env={**os.environ, env.HPCPAR_REPORT_JSON: report},
                              capture_output=True, text=True, timeout=timeout)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{job} failed on {n} ranks (exit {proc.returncode}):\n" + proc.stderr[-4000:])
        if not os.path.exists(report):  # a script that does not use hpcpar.run: time the whole launch
            return elapsed, {}
        with open(report) as fh:
            data = json.load(fh)
        return data["wall"], {r["name"]: r["max"] for r in data["regions"]}


def run_scaling(job: str, job_args: list[str], ranks: list[int], weak: str | None = None,
                weak_power: float = 1.0, timeout: float | None = None,
                echo: Callable[[str], object] = print, repeat: int = 1) -> list[Point]:
    """Run ``job`` ``repeat`` times at each rank count and collect its timing reports. **Local**.

    Runs go in rounds: every rank count once per round. Each point keeps every
    run's wall time (:attr:`Point.runs`) and the best one's regions.

    Raises:
        ValueError: ``repeat`` below 1, or ``weak`` not among the job's arguments.
        RuntimeError: a run failed (its exit status and the end of its stderr).
    """
    if repeat < 1:
        raise ValueError(f"--repeat must be at least 1, got {repeat}")
    args = {n: weak_args(job_args, weak, n, weak_power) if weak else list(job_args) for n in ranks}
    runs: dict[int, list[tuple[float, dict[str, float]]]] = {n: [] for n in ranks}
    for k in range(repeat):
        for n in ranks:
            seconds, regions = _run_once(job, args[n], n, timeout)
            runs[n].append((seconds, regions))
            echo(f"  {n:>4} ranks, run {k + 1}/{repeat}: {seconds:.3f} s")
    points = []
    for n in ranks:
        best = min(runs[n], key=lambda r: r[0])
        points.append(Point(n, best[0], best[1], [s for s, _ in runs[n]]))
    return points


def efficiency_table(points: list[Point], weak: bool = False) -> list[dict]:
    """Speedup and efficiency of the best runs against the first point's best, with their spread. Pure.

    Strong scaling: speedup = T1 / Tn, efficiency = speedup / (n / n1).
    Weak scaling (work grows with n): efficiency = T1 / Tn, speedup = efficiency * n / n1.
    ``seconds`` is the best run, ``median`` and ``max`` the others; ``speedup_min`` and
    ``efficiency_min`` are those of the slowest run (against the same T1).
    """
    base = points[0]

    def ratios(p: Point, t: float) -> tuple[float, float]:
        ratio = base.seconds / t if t > 0 else float("nan")
        scale = p.ranks / base.ranks
        return (ratio * scale, ratio) if weak else (ratio, ratio / scale)

    rows = []
    for p in points:
        speedup, eff = ratios(p, p.seconds)
        worst = max(p.runs)
        speedup_min, eff_min = ratios(p, worst)
        rows.append({"ranks": p.ranks, "seconds": p.seconds, "median": statistics.median(p.runs),
                     "max": worst, "runs": list(p.runs), "speedup": speedup, "efficiency": eff,
                     "speedup_min": speedup_min, "efficiency_min": eff_min})
    return rows


#: The columns of the table ``hpcpar scale`` prints.
COLUMNS = ["ranks", "best s", "median s", "max s", "speedup", "efficiency"]


def table_rows(rows: list[dict], available: int | None = None) -> list[list[str]]:
    """The cells of :data:`COLUMNS` per row; ranks above ``available`` CPUs get a ``*``. Pure."""
    return [[f"{r['ranks']}{'*' if available and r['ranks'] > available else ''}", f"{r['seconds']:.3f}",
             f"{r['median']:.3f}", f"{r['max']:.3f}", f"{r['speedup']:.2f}", f"{r['efficiency']:.2f}"]
            for r in rows]


def write_csv(rows: list[dict], path: str) -> None:
    """The table as CSV: one line per rank count, every run's seconds in ``runs`` (space-separated)."""
    keys = ["ranks", "seconds", "median", "max", "speedup", "speedup_min", "efficiency", "efficiency_min"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys + ["runs"])
        for r in rows:
            w.writerow([r[k] for k in keys] + [" ".join(f"{s:.6f}" for s in r["runs"])])


def plot_scaling(rows: list[dict], path: str, title: str, weak: bool = False,
                 available: int | None = None) -> tuple[float, float]:
    """Speedup and efficiency of the best runs against ranks, the ideal lines, and error bars
    down to the slowest run, as a PNG; ranks above ``available`` CPUs are shaded. **Local**.

    Returns:
        The limits of the efficiency axis (they include every point, also above 1).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'hpcpar[plot]'") from None
    ranks = [r["ranks"] for r in rows]
    runs = max(len(r["runs"]) for r in rows)
    label = f"best of {runs} runs (bar: slowest)" if runs > 1 else "measured"
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    for ax, key, color in ((a1, "speedup", "C0"), (a2, "efficiency", "C1")):
        best = [r[key] for r in rows]
        low = [max(0.0, r[key] - r[f"{key}_min"]) for r in rows]
        ax.errorbar(ranks, best, yerr=[low, [0.0] * len(rows)], fmt="o-", color=color, capsize=4,
                    label=label)
    a1.plot(ranks, [n / ranks[0] for n in ranks], "k--", label="ideal")
    a1.set_ylabel("speedup")
    a2.axhline(1.0, color="k", ls="--", label="ideal")
    top = max([r["efficiency"] for r in rows] + [1.0])
    a2.set_ylim(0, max(1.05, top * 1.05))  # every point stays in view, also above 1
    a2.set_ylabel("parallel efficiency")
    for ax in (a1, a2):
        if available and ranks[-1] > available:
            ax.axvspan(available + 0.5, ranks[-1] + 0.5, color="0.85", zorder=0,
                       label=f"more ranks than CPUs ({available})")
        ax.set_xlabel("ranks")
        ax.set_xticks(ranks)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title} ({'weak' if weak else 'strong'} scaling)")
    fig.savefig(path, dpi=110)
    limits = a2.get_ylim()
    plt.close(fig)
    return float(limits[0]), float(limits[1])
