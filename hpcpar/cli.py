"""The ``hpcpar`` command: run jobs under MPI, inspect the environment, benchmark.

Each subcommand lives in its own function; ``hpcpar --help`` and
``hpcpar COMMAND --help`` explain them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from . import env

if TYPE_CHECKING:
    from .launch.command import Host

__all__ = ["main"]

_EPILOG = """\
examples:
  hpcpar run -n 4 jobs/pi.py --samples 10000000   run a script on 4 ranks
  mpiexec -n 4 python jobs/pi.py                  the same, started by hand
  mpiexec -n 2 hpcpar info                        what MPI, h5py and CPUs each rank sees
  mpiexec -n 2 hpcpar bench collectives           hpcpar vs raw mpi4py vs pickle
  mpiexec -n 2 hpcpar bench output --size 64M     shared HDF5 output vs one process
  mpiexec -n 2 hpcpar bench halo                  Grid heat step vs hand-written Sendrecv vs 1 rank
  hpcpar submit jobs/pi.py -N 1 -n 2 -t 5 --wait -- --samples 1e8   a Slurm batch job
  hpcpar slurm render jobs/pi.py -n 4 -t 10        print the sbatch script only
"""


def _cmd_info(args: argparse.Namespace) -> int:
    from .core.context import Context
    from .observe import info

    with Context() as ctx:
        data = info.collect(ctx)
    if data is not None:
        print(json.dumps(data, indent=2) if args.json else info.format_info(data))
    return 0


#: Options of ``hpcpar run`` that take a value (the word after them is not the program).
_RUN_VALUED = ("-n", "--ranks", "--report-json", "--timeout", "--hosts", "--hostfile", "--launcher-arg",
               "--trace")


def split_run_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """``hpcpar run``'s own options, and the program with its arguments. **Local**, pure.

    The program starts at the first word that is neither an option of ``hpcpar run``
    nor its value: ``SCRIPT``, ``-m MODULE``, or whatever follows ``--``. Everything
    from there on belongs to the program, untouched (no option of ``hpcpar run`` is
    taken from it, not even an abbreviation).
    """
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return argv[:i], argv[i + 1:]
        if word == "-m" or word == "-" or not word.startswith("-"):
            return argv[:i], argv[i:]
        i += 2 if word in _RUN_VALUED else 1
    return argv, []


def _cmd_run(args: argparse.Namespace) -> int:
    from .launch.mpiexec import launch

    program = args.program
    if not program or program == ["-m"]:
        print("hpcpar run: no program given: hpcpar run -n N SCRIPT [ARGS] "
              "or hpcpar run -n N -m MODULE [ARGS]", file=sys.stderr)
        return 2
    ranks = args.ranks if args.ranks is not None else 1
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
    if args.trace:
        extra[env.HPCPAR_TRACE] = os.path.abspath(args.trace)
    module = program[0] == "-m"
    target, rest = (program[1], program[2:]) if module else (program[0], program[1:])
    try:
        hosts = _run_hosts(args)
        return launch(target, rest, ranks, extra, module=module, hosts=hosts,
                      launcher_args=args.launcher_arg)
    except (FileNotFoundError, ValueError) as exc:
        print(f"hpcpar run: {exc}", file=sys.stderr)
        return 2


def _run_hosts(args: argparse.Namespace) -> list[Host] | None:
    """The hosts of ``--hosts`` or ``--hostfile`` (None: neither was given)."""
    from .launch.command import parse_hosts, read_hostfile

    if args.hosts and args.hostfile:
        raise ValueError("give either --hosts or --hostfile, not both")
    if args.hosts:
        return parse_hosts(args.hosts)
    if args.hostfile:
        return read_hostfile(args.hostfile)
    return None
def _cmd_trace(args: argparse.Namespace) -> int:
    from .observe import gantt, tracefile

    try:
        data = tracefile.read(args.file)
    except (OSError, ValueError) as exc:
        print(f"hpcpar trace: {exc}", file=sys.stderr)
        return 2
    print(gantt.format_summary(gantt.summarize(data)))
    if args.png:
        try:
            gantt.plot(data, args.png, title=args.title or os.path.basename(args.file))
        except RuntimeError as exc:
            print(f"hpcpar trace: {exc}", file=sys.stderr)
            return 1
        print(f"chart written to {args.png}")
    return 0


def _cmd_scale(args: argparse.Namespace) -> int:
    from . import bench
    from .launch import scale

    try:
        ranks = [int(x) for x in args.ranks.split(",") if x.strip()]
    except ValueError:
        print(f"hpcpar scale: --ranks wants a list like 1,2,4, got {args.ranks!r}", file=sys.stderr)
        return 2
    if not ranks or min(ranks) < 1:
        print("hpcpar scale: --ranks needs positive rank counts", file=sys.stderr)
        return 2
    if args.repeat < 1:
        print(f"hpcpar scale: --repeat needs at least 1 run per rank count, got {args.repeat}",
              file=sys.stderr)
        return 2
    job_args = args.args
    kind = "weak" if args.weak else "strong"
    print(f"hpcpar scale: {args.job} {' '.join(job_args)} ({kind} scaling, runs per count: {args.repeat})")
    available = scale.cpus()
    note = scale.oversubscribed_note(ranks, available)
    if note:
        print(note, file=sys.stderr, flush=True)
    try:
        points = scale.run_scaling(args.job, job_args, ranks, weak=args.weak, weak_power=args.weak_power,
                                   timeout=args.timeout, repeat=args.repeat)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"hpcpar scale: {exc}", file=sys.stderr)
        return 1
    rows = scale.efficiency_table(points, weak=bool(args.weak))
    print(bench.format_table(scale.COLUMNS, scale.table_rows(rows, available)))
    print(f"speedup and efficiency of the best run of {args.repeat} per count"
          + (f"; * more ranks than CPUs here ({available})" if note else ""))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"job": args.job, "args": job_args, "weak": bool(args.weak), "repeat": args.repeat,
                       "cpus": available, "rows": rows}, fh, indent=2)
    if args.csv:
        scale.write_csv(rows, args.csv)
    if args.plot:
        try:
            scale.plot_scaling(rows, args.plot, os.path.basename(args.job), weak=bool(args.weak),
                               available=available)
        except RuntimeError as exc:
            print(f"hpcpar scale: {exc}", file=sys.stderr)
            return 1
        print(f"plot written to {args.plot}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    return bench.main(args)


# ---- Slurm: submit, status, cancel, slurm render / render-all ------------------
def _add_spec_options(p: argparse.ArgumentParser) -> None:
    """The JobSpec fields as options (the names follow sbatch)."""
    p.add_argument("job", help="the job: a Python file (jobs/pi.py) or a module name; "
                   "its own arguments follow `--`")
    g = p.add_argument_group("allocation (as in sbatch)")
    g.add_argument("-J", "--job-name")
    g.add_argument("-N", "--nodes", type=int)
    g.add_argument("-n", "--ntasks", type=int)
    g.add_argument("--ntasks-per-node", type=int)
    g.add_argument("-c", "--cpus-per-task", type=int)
    g.add_argument("--mem", help="memory per node, e.g. 4G")
    g.add_argument("-t", "--time", help="time limit: minutes, H:M:S, D-H:M ...")
    g.add_argument("-p", "--partition")
    g.add_argument("-A", "--account")
    g.add_argument("-q", "--qos")
    g.add_argument("-a", "--array", help="job array indices, e.g. 0-2")
    g.add_argument("-o", "--output", help="stdout file pattern, e.g. %%x-%%j.out")
    g.add_argument("-e", "--error", help="stderr file pattern")
    g = p.add_argument_group("how the job runs")
    g.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="export a variable in the script (repeatable)")
    g.add_argument("--launcher", choices=["srun", "mpiexec"], default="srun",
                   help="srun --mpi=pmi2 (default) or the MPI library's mpiexec")
    g.add_argument("--python", help="the Python interpreter in the job (default: this one)")
    g.add_argument("--signal", type=int, metavar="SECONDS",
                   help="SIGUSR1 to every rank this long before the time limit (ctx.should_stop())")
    g.add_argument("--requeue", action="store_true",
                   help="let hpcpar.slurm.requeue() put the job back in the queue")
    g.add_argument("--sbatch", action="append", default=[], metavar="--OPTION[=VALUE]", dest="extra",
                   help="a further long sbatch option, checked (repeatable), e.g. --sbatch=--constraint=gpu")


def _spec_from_args(args: argparse.Namespace):
    from .slurm import JobSpec

    envs = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--env {item!r}: use NAME=VALUE")
        envs[name] = value
    t = args.time
    if t is not None and t.isdigit():
        t = int(t)
    return JobSpec(job=args.job, args=list(args.args), job_name=args.job_name, nodes=args.nodes,
                   ntasks=args.ntasks, ntasks_per_node=args.ntasks_per_node,
                   cpus_per_task=args.cpus_per_task, mem=args.mem, time=t, partition=args.partition,
                   account=args.account, qos=args.qos, array=args.array, output=args.output,
                   error=args.error, env=envs, launcher=args.launcher, python=args.python,
                   signal=args.signal, requeue=args.requeue, extra=args.extra)


def _print_status(st, as_json: bool) -> None:
    if as_json:
        print(json.dumps(st.to_dict(), indent=2))
        return
    line = f"job {st.job_id}: {st.state}"
    if st.exit_code is not None:
        line += f" (exit {st.exit_code})"
    if st.reason:
        line += f" reason {st.reason}"
    if st.restarts:
        line += f", restarted {st.restarts}x"
    print(line)
    if st.message:
        print(f"  rank {st.rank} failed: {st.message}" + (f" (on host {st.host})" if st.host else ""))
    if st.stdout:
        print(f"  output {st.stdout}")
    for idx, task in st.tasks.items():
        extra = f" (exit {task.exit_code})" if task.exit_code is not None else ""
        print(f"  task {idx} (job {task.job_id}): {task.state}{extra}"
              + (f" rank {task.rank} failed: {task.message}" if task.message else "")
              + (f" (on host {task.host})" if task.message and task.host else ""))


def _cmd_submit(args: argparse.Namespace) -> int:
    from . import slurm

    try:
        spec = _spec_from_args(args)
        job_id = slurm.submit(spec, workdir=args.workdir)
    except (ValueError, slurm.SlurmError) as exc:
        print(f"hpcpar submit: {exc}", file=sys.stderr)
        return 2
    print(f"submitted batch job {job_id}", flush=True)
    if not args.wait:
        return 0
    try:
        st = slurm.wait(job_id, timeout=args.timeout, workdir=args.workdir)
    except (TimeoutError, slurm.SlurmError) as exc:
        print(f"hpcpar submit: {exc}", file=sys.stderr)
        return 1
    _print_status(st, args.json)
    return 0 if st.ok else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from . import slurm

    try:
        st = slurm.status(args.job_id, workdir=args.workdir)
    except (ValueError, slurm.SlurmError) as exc:
        print(f"hpcpar status: {exc}", file=sys.stderr)
        return 2
    _print_status(st, args.json)
    return 0 if st.state != "UNKNOWN" else 1


def _cmd_cancel(args: argparse.Namespace) -> int:
    from . import slurm

    try:
        slurm.cancel(args.job_id, signal=args.signal)
    except (ValueError, slurm.SlurmError) as exc:
        print(f"hpcpar cancel: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_slurm_render(args: argparse.Namespace) -> int:
    try:
        text = _spec_from_args(args).render()
    except ValueError as exc:
        print(f"hpcpar slurm render: {exc}", file=sys.stderr)
        return 2
    if args.write:
        with open(args.write, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_slurm_render_all(args: argparse.Namespace) -> int:
    from . import slurm

    try:
        scripts = slurm.render_jobs(args.jobs)
    except (ValueError, SyntaxError, TypeError) as exc:
        print(f"hpcpar slurm render-all: {exc}", file=sys.stderr)
        return 2
    stale = []
    for name, text in scripts.items():
        path = os.path.join(args.out, name)
        old = open(path).read() if os.path.exists(path) else None
        if old == text:
            continue
        stale.append(path)
        if not args.check:
            os.makedirs(args.out, exist_ok=True)
            with open(path, "w") as fh:
                fh.write(text)
    if args.check:
        for path in stale:
            print(f"{path} is out of date: run `hpcpar slurm render-all`", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        print(f"wrote {path}")
    return 0


def _add_slurm_parsers(sub) -> None:
    p = sub.add_parser(
        "submit", help="submit a job to Slurm (sbatch), optionally wait for it",
        description="Render the job's sbatch script (see `hpcpar slurm render`) and submit it "
        "with sbatch. The job's own arguments follow `--`.",
        epilog="example: hpcpar submit jobs/pi.py --nodes 1 --ntasks 2 --time 5 --wait -- --samples 1e8")
    _add_spec_options(p)
    p.add_argument("--workdir", help="the job's working directory (default: here)")
    p.add_argument("--wait", action="store_true", help="wait until the job ends; exit 0 only if it completed")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    p.add_argument("--json", action="store_true", help="with --wait: print the final status as JSON")
    p.set_defaults(func=_cmd_submit, args=[])

    p = sub.add_parser("status", help="state and exit code of a Slurm job (and the failing rank)",
                       description="Ask scontrol, sacct and the jobcomp file, and read the hpcpar "
                       "status file in the job's directory.")
    p.add_argument("job_id")
    p.add_argument("--workdir", help="where to look for the status file if Slurm forgot the job")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("cancel", help="cancel a Slurm job, or send its steps a signal")
    p.add_argument("job_id")
    p.add_argument("--signal", help="send this signal (e.g. USR1: ctx.should_stop()) instead of cancelling")
    p.set_defaults(func=_cmd_cancel)

    p = sub.add_parser("slurm", help="sbatch scripts: render one, or regenerate slurm/ for every job",
                       description="Render sbatch scripts without submitting them.")
    ssub = p.add_subparsers(dest="slurm_command", metavar="SUBCOMMAND", required=True)
    q = ssub.add_parser("render", help="print the sbatch script of a job",
                        epilog="example: hpcpar slurm render jobs/pi.py -n 4 -t 10 -- --samples 1e9")
    _add_spec_options(q)
    q.add_argument("--write", metavar="FILE", help="write the script to FILE instead of printing it")
    q.set_defaults(func=_cmd_slurm_render, args=[])
    q = ssub.add_parser("render-all", help="write slurm/NAME.sbatch for every jobs/NAME.py",
                        description="Render every job in --jobs with its SLURM defaults "
                        "(a literal dict in the job file) into --out.")
    q.add_argument("--jobs", default="jobs", help="the jobs directory (default jobs)")
    q.add_argument("--out", default="slurm", help="where the scripts go (default slurm)")
    q.add_argument("--check", action="store_true", help="write nothing; exit 1 if a script is out of date")
    q.set_defaults(func=_cmd_slurm_render_all)


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

    p = sub.add_parser("info", help="show MPI library, h5py, collectives mode, CPUs and Slurm variables",
                       description="Show the MPI library and version, mpi4py, h5py (and whether it was "
                       "built with MPI), whether the collectives are checked (HPCPAR_CHECKS) and in "
                       "debug mode (HPCPAR_DEBUG), the CPUs each rank may use, and Slurm variables. "
                       "Run it under mpiexec to see every rank.")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "run", help="run a program on N ranks, as mpiexec -n N python would, under the hpcpar runner",
        allow_abbrev=False,
        usage="hpcpar run [-n N] [--timeout S] [--debug] [--report] [--report-json FILE] "
        "(SCRIPT | -m MODULE) [ARGS ...]",
        description="Run SCRIPT (or `-m MODULE`) with ARGS on N ranks, as `mpiexec -n N python SCRIPT "
        "ARGS` would: the program starts with MPI not initialised, so its own mpi4py.rc settings, "
        "MPI.Init and MPI.Finalize work, and __file__ and sys.argv are what python gives. Everything "
        "after SCRIPT or MODULE belongs to the program. An uncaught exception on any rank prints "
        "`rank R of N failed:` with its traceback and ends the whole job with a non-zero status; the "
        "same failure of several ranks is printed once; a rank killed by a signal is reported by rank. "
        "The launcher is $HPCPAR_MPIEXEC, else the mpiexec beside this Python, else mpiexec on PATH.",
        epilog="examples: hpcpar run -n 4 jobs/heat.py --r 0.2; hpcpar run -n 3 -m mpi4py.futures job.py")
    p.add_argument("-n", "--ranks", type=int, default=None, help="number of ranks (default 1)")
    p.add_argument("--report", action="store_true",
                   help="print the per-rank timing table at the end, even with no timed region")
    p.add_argument("--report-json", metavar="FILE", help="also write the timing report as JSON")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="a rank blocked longer than this in one hpcpar call (or in the final check) "
                   "dumps every rank's stacks and aborts the job with status 124 (sets HPCPAR_TIMEOUT)")
    p.add_argument("--debug", action="store_true",
                   help="debug checks before every collective, hpcpar's frames in tracebacks "
                   "(sets HPCPAR_DEBUG=1)")
    p.add_argument("--hosts", metavar="H1,H2[:SLOTS],...",
                   help="run the ranks on these hosts (MPICH: -hosts, Open MPI: --host, srun: --nodelist)")
    p.add_argument("--hostfile", metavar="FILE",
                   help="the hosts, one per line: NAME, NAME:SLOTS or NAME slots=N")
    p.add_argument("--launcher-arg", action="append", default=[], metavar="ARG",
                   help="pass ARG to the launcher as it is (repeatable; write --launcher-arg=-ARG "
                   "for an ARG that starts with -), e.g. --launcher-arg=-launcher --launcher-arg=ssh")
    p.add_argument("--trace", metavar="FILE",
                   help="write a per-rank timeline (Chrome Trace Event JSON for Perfetto or "
                   "chrome://tracing; FILE.gz compressed) at the end (sets HPCPAR_TRACE)")
    p.add_argument("-m", dest="module_help", metavar="MODULE",
                   help="run library module MODULE as a script, as python -m does (ends the options)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "scale", help="run a job at several rank counts: speedup, efficiency, plot",
        description="Run JOB --repeat times per rank count (in rounds) with the timing report on, "
        "then print the best, median and slowest run and the speedup and parallel efficiency of "
        "the best runs against the first count. Strong scaling keeps the job's "
        "arguments; --weak OPTION multiplies that job option by the rank count (times "
        "--weak-power: 0.5 for the side of a 2-D grid) so the work per rank stays constant.",
        epilog="example: hpcpar scale jobs/heat.py --ranks 1,2,4 --plot heat.png -- --n 1024 --steps 200")
    p.add_argument("job", help="the job script; its own arguments follow `--`")
    p.add_argument("--ranks", default="1,2,4", help="comma-separated rank counts (default 1,2,4)")
    p.add_argument("--weak", metavar="OPTION", help="weak scaling: the job option to scale, e.g. --samples")
    p.add_argument("--weak-power", type=float, default=1.0, help="scale OPTION by ranks**POWER (default 1)")
    p.add_argument("--plot", metavar="FILE.png", help="draw speedup and efficiency (needs matplotlib)")
    p.add_argument("--repeat", type=int, default=3, metavar="K",
                   help="runs per rank count; the best is compared, the spread shown (default 3)")
    p.add_argument("--json", metavar="FILE", help="write the table as JSON (every run's seconds too)")
    p.add_argument("--csv", metavar="FILE", help="write the table as CSV")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per run")
    p.set_defaults(func=_cmd_scale, args=[])

    p = sub.add_parser(
        "trace", help="summarize a trace written by --trace / HPCPAR_TRACE, or draw it as a PNG",
        description="Print, per rank, the time spent computing, communicating, in I/O and waiting "
        "for other ranks over the trace's window; --png draws a Gantt chart (one row per rank, a "
        "colour per kind of span, and those four parts per rank; needs matplotlib).",
        epilog="example: hpcpar run -n 4 --trace run.json jobs/heat.py && "
        "hpcpar trace run.json --png run.png")
    p.add_argument("file", help="the trace (JSON, or gzip-compressed JSON)")
    p.add_argument("--png", metavar="FILE", help="draw the Gantt chart into FILE (.png, .svg, .pdf)")
    p.add_argument("--title", help="the chart's title (default: the file name)")
    p.set_defaults(func=_cmd_trace)

    p = sub.add_parser("bench", help="measure hpcpar against the baselines it runs itself",
                       description="Benchmarks print ratios against baselines run in the same "
                       "MPI job. Start them under mpiexec, e.g. `mpiexec -n 2 hpcpar bench collectives`.")
    bench.configure(p)
    p.set_defaults(func=_cmd_bench)

    _add_slurm_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hpcpar`` console script."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    job_args = None
    program = None
    if argv[:1] == ["run"]:  # the program and its arguments are not parsed here
        own, program = split_run_argv(argv[1:])
        argv = ["run", *own]
    if argv[:1] in (["scale"], ["submit"], ["slurm"]) and "--" in argv:  # job arguments follow `--`
        cut = argv.index("--")
        argv, job_args = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if job_args is not None:
        args.args = job_args
    if program is not None:
        args.program = program
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
