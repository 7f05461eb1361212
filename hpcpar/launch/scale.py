"""Scaling studies: run one job at several rank counts and compare the times.

``hpcpar scale JOB --ranks 1,2,4`` runs the job once per rank count (with
``HPCPAR_REPORT_JSON`` set, so the runner writes each run's timing report), then
prints speedup and parallel efficiency and, with ``--plot``, draws them.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import env
from .mpiexec import launch_command

__all__ = ["Point", "run_scaling", "efficiency_table", "plot_scaling", "weak_args"]


@dataclass
class Point:
    """One run of a scaling study."""

    ranks: int
    seconds: float  # the job's wall time, slowest rank, from its timing report
    regions: dict[str, float] = field(default_factory=dict)  # region -> max over ranks


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


def run_scaling(job: str, job_args: list[str], ranks: list[int], weak: str | None = None,
                weak_power: float = 1.0, timeout: float | None = None,
                echo: Callable[[str], object] = print) -> list[Point]:
    """Run ``job`` at each rank count and collect its timing reports. **Local** (launches jobs)."""
    points = []
    for n in ranks:
        args = weak_args(job_args, weak, n, weak_power) if weak else list(job_args)
        with tempfile.TemporaryDirectory() as tmp:
            report = os.path.join(tmp, "report.json")
            cmd = launch_command(job, args, n)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env={**os.environ, env.HPCPAR_REPORT_JSON: report},
                                  capture_output=True, text=True, timeout=timeout)
            elapsed = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"{job} failed on {n} ranks (exit {proc.returncode}):\n"
                                   + proc.stderr[-4000:])
            if os.path.exists(report):
                with open(report) as fh:
                    data = json.load(fh)
                point = Point(n, data["wall"], {r["name"]: r["max"] for r in data["regions"]})
            else:  # a script that does not use hpcpar.run: time the whole launch
                point = Point(n, elapsed)
        echo(f"  {n:>4} ranks: {point.seconds:.3f} s")
        points.append(point)
    return points


def efficiency_table(points: list[Point], weak: bool = False) -> list[dict]:
    """Speedup and efficiency against the first point. Pure.

    Strong scaling: speedup = T1 / Tn, efficiency = speedup / (n / n1).
    Weak scaling (work grows with n): efficiency = T1 / Tn, speedup = efficiency * n / n1.
    """
    base = points[0]
    rows = []
    for p in points:
        ratio = base.seconds / p.seconds if p.seconds > 0 else float("nan")
        scale = p.ranks / base.ranks
        speedup, eff = (ratio * scale, ratio) if weak else (ratio, ratio / scale)
        rows.append({"ranks": p.ranks, "seconds": p.seconds, "speedup": speedup, "efficiency": eff})
    return rows


def plot_scaling(rows: list[dict], path: str, title: str, weak: bool = False) -> None:
    """Speedup and efficiency against ranks, with the ideal lines, as a PNG. **Local**."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'hpcpar[plot]'") from None
    ranks = [r["ranks"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    a1.plot(ranks, [r["speedup"] for r in rows], "o-", label="measured")
    a1.plot(ranks, [n / ranks[0] for n in ranks], "k--", label="ideal")
    a1.set_xlabel("ranks")
    a1.set_ylabel("speedup")
    a1.legend()
    a2.plot(ranks, [r["efficiency"] for r in rows], "o-", color="C1", label="measured")
    a2.axhline(1.0, color="k", ls="--", label="ideal")
    a2.set_ylim(0, 1.15)
    a2.set_xlabel("ranks")
    a2.set_ylabel("parallel efficiency")
    a2.legend()
    for ax in (a1, a2):
        ax.set_xticks(ranks)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} ({'weak' if weak else 'strong'} scaling)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
