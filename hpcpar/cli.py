"""The ``hpcpar`` command: run jobs under MPI, inspect the environment, benchmark.

Each subcommand lives in its own function; ``hpcpar --help`` and
``hpcpar COMMAND --help`` explain them.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]

_EPILOG = """\
examples:
  hpcpar run -n 4 jobs/pi.py --samples 10000000   run a script on 4 ranks
  mpiexec -n 4 python jobs/pi.py                  the same, started by hand
  mpiexec -n 2 hpcpar info                        what MPI, h5py and CPUs each rank sees
  mpiexec -n 2 hpcpar bench collectives           hpcpar vs raw mpi4py vs pickle
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
    try:
        return launch(args.script, script_args, ranks)
    except FileNotFoundError as exc:
        print(f"hpcpar run: {exc}", file=sys.stderr)
        return 2


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
        description="Launch `mpiexec -n N python -m hpcpar._script SCRIPT ARGS`. An uncaught "
        "exception on any rank prints `rank R of N failed:` with its traceback and ends the "
        "whole job with a non-zero status. `-n N` may also come last: "
        "`hpcpar run SCRIPT [ARGS] -n N`. The launcher is $HPCPAR_MPIEXEC, else the "
        "mpiexec beside this Python, else mpiexec on PATH.")
    p.add_argument("-n", "--ranks", type=int, default=None, help="number of ranks (default 1)")
    p.add_argument("script", help="the Python script to run on every rank")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("bench", help="measure hpcpar against the baselines it runs itself",
                       description="Benchmarks print ratios against baselines run in the same "
                       "MPI job. Start them under mpiexec, e.g. `mpiexec -n 2 hpcpar bench collectives`.")
    bench.configure(p)
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hpcpar`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
