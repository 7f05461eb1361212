"""The ``hpcpar`` command: run jobs under MPI, inspect the environment, benchmark.

Each subcommand lives in its own function; ``hpcpar --help`` and
``hpcpar COMMAND --help`` explain them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import env

__all__ = ["main"]

_EPILOG = """\
examples:
  hpcpar run -n 4 jobs/pi.py --samples 10000000   run a script on 4 ranks
  mpiexec -n 4 python jobs/pi.py                  the same, started by hand
  mpiexec -n 2 hpcpar info                        what MPI, h5py and CPUs each rank sees
  mpiexec -n 2 hpcpar bench collectives           hpcpar vs raw mpi4py vs pickle
  mpiexec -n 2 hpcpar bench output --size 64M     shared HDF5 output vs one process
  mpiexec -n 2 hpcpar bench halo                  Grid heat step vs hand-written Sendrecv vs 1 rank
"""


def _cmd_info(args: argparse.Namespace) -> int:
    from . import info
    from .comm import Context

    with Context() as ctx:
        data = info.collect(ctx)
    if data is not None:
        print(json.dumps(data, indent=2) if args.json else info.format_info(data))
    return 0


def _split_run_args(argv: list[str]) -> tuple[int | None, list[str]]:
    """Allow ``hpcpar run SCRIPT [args] -n N`` as well as ``hpcpar run -n N SCRIPT [args]``."""
    if len(argv) >= 3 and argv[-2] in ("-n", "--ranks") and argv[-1].isdigit():
        return int(argv[-1]), argv[:-2]
    return None, argv


def _cmd_run(args: argparse.Namespace) -> int:
    from .launch import launch

    trailing, script_args = _split_run_args(args.args)
    ranks = args.ranks if args.ranks is not None else (trailing or 1)
    if ranks < 1:
        print(f"hpcpar run: -n must be at least 1, got {ranks}", file=sys.stderr)
        return 2
    extra = {}
    if args.timeout is not None:
        extra[env.HPCPAR_TIMEOUT] = str(args.timeout)
    if args.debug:
        extra[env.HPCPAR_DEBUG] = "1"
    if args.report:
        extra[env.HPCPAR_REPORT] = "1"
    if args.report_json:
        extra[env.HPCPAR_REPORT_JSON] = os.path.abspath(args.report_json)
    try:
        return launch(args.script, script_args, ranks, extra)
    except FileNotFoundError as exc:
        print(f"hpcpar run: {exc}", file=sys.stderr)
        return 2


def _cmd_scale(args: argparse.Namespace) -> int:
    from . import bench, scale

    try:
        ranks = [int(x) for x in args.ranks.split(",") if x.strip()]
    except ValueError:
        print(f"hpcpar scale: --ranks wants a list like 1,2,4, got {args.ranks!r}", file=sys.stderr)
        return 2
    if not ranks or min(ranks) < 1:
        print("hpcpar scale: --ranks needs positive rank counts", file=sys.stderr)
        return 2
    job_args = args.args
    kind = "weak" if args.weak else "strong"
    print(f"hpcpar scale: {args.job} {' '.join(job_args)} ({kind} scaling)")
    try:
        points = scale.run_scaling(args.job, job_args, ranks, weak=args.weak,
                                   weak_power=args.weak_power, timeout=args.timeout)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"hpcpar scale: {exc}", file=sys.stderr)
        return 1
    rows = scale.efficiency_table(points, weak=bool(args.weak))
    print(bench.format_table(
        ["ranks", "seconds", "speedup", "efficiency"],
        [[r["ranks"], f"{r['seconds']:.3f}", f"{r['speedup']:.2f}", f"{r['efficiency']:.2f}"]
         for r in rows]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"job": args.job, "args": job_args, "weak": bool(args.weak), "rows": rows}, fh,
                      indent=2)
    if args.plot:
        try:
            scale.plot_scaling(rows, args.plot, os.path.basename(args.job), weak=bool(args.weak))
        except RuntimeError as exc:
            print(f"hpcpar scale: {exc}", file=sys.stderr)
            return 1
        print(f"plot written to {args.plot}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    return bench.main(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hpcpar`` command."""
    from . import __version__, bench

    parser = argparse.ArgumentParser(
        prog="hpcpar",
        description="Run and inspect SPMD Python programs under MPI.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hpcpar {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="show MPI library, h5py, CPUs and Slurm variables per rank",
                       description="Show the MPI library and version, mpi4py, h5py (and whether it was "
                       "built with MPI), the CPUs each rank may use, and Slurm variables. Run it under "
                       "mpiexec to see every rank.")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "run", help="run a script on N ranks under the hpcpar runner",
        description="Launch `mpiexec -n N python hpcpar/_guardian.py SCRIPT ARGS` (each rank runs "
        "the script under the hpcpar runner; a rank killed by a signal is reported by rank). An uncaught "
        "exception on any rank prints `rank R of N failed:` with its traceback and ends the "
        "whole job with a non-zero status. `-n N` may also come last: "
        "`hpcpar run SCRIPT [ARGS] -n N`. The launcher is $HPCPAR_MPIEXEC, else the "
        "mpiexec beside this Python, else mpiexec on PATH.")
    p.add_argument("-n", "--ranks", type=int, default=None, help="number of ranks (default 1)")
    p.add_argument("--report", action="store_true",
                   help="print the per-rank timing table at the end, even with no timed region")
    p.add_argument("--report-json", metavar="FILE", help="also write the timing report as JSON")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="a rank blocked longer than this in one hpcpar call dumps every rank's "
                   "stacks and aborts the job with status 124 (sets HPCPAR_TIMEOUT)")
    p.add_argument("--debug", action="store_true",
                   help="debug checks before every collective (sets HPCPAR_DEBUG=1)")
    p.add_argument("script", help="the Python script to run on every rank")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "scale", help="run a job at several rank counts: speedup, efficiency, plot",
        description="Run JOB once per rank count with the timing report on, then print speedup "
        "and parallel efficiency against the first count. Strong scaling keeps the job's "
        "arguments; --weak OPTION multiplies that job option by the rank count (times "
        "--weak-power: 0.5 for the side of a 2-D grid) so the work per rank stays constant.",
        epilog="example: hpcpar scale jobs/heat.py --ranks 1,2,4 --plot heat.png -- --n 1024 --steps 200")
    p.add_argument("job", help="the job script; its own arguments follow `--`")
    p.add_argument("--ranks", default="1,2,4", help="comma-separated rank counts (default 1,2,4)")
    p.add_argument("--weak", metavar="OPTION", help="weak scaling: the job option to scale, e.g. --samples")
    p.add_argument("--weak-power", type=float, default=1.0, help="scale OPTION by ranks**POWER (default 1)")
    p.add_argument("--plot", metavar="FILE.png", help="draw speedup and efficiency (needs matplotlib)")
    p.add_argument("--json", metavar="FILE", help="write the table as JSON")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per run")
    p.set_defaults(func=_cmd_scale, args=[])

    p = sub.add_parser("bench", help="measure hpcpar against the baselines it runs itself",
                       description="Benchmarks print ratios against baselines run in the same "
                       "MPI job. Start them under mpiexec, e.g. `mpiexec -n 2 hpcpar bench collectives`.")
    bench.configure(p)
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hpcpar`` console script."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    job_args = None
    if argv[:1] == ["scale"] and "--" in argv:  # job arguments follow `--`
        cut = argv.index("--")
        argv, job_args = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if job_args is not None:
        args.args = job_args
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
