"""Run an example job with a crash at a known moment: a stand-in for a node failure in tests.

    mpiexec -n N python tests/jobs/crashing.py heat K [heat.py options]
        the last rank kills itself (SIGKILL) right after step K, after that
        step's snapshot and checkpoint
    mpiexec -n N python tests/jobs/crashing.py fibonacci M [fibonacci.py options]
        root kills itself (SIGKILL) once a checkpoint it saved holds at least M tasks

The jobs know nothing of this: the wrapper imports the job's module from
``jobs/``, wraps one of its functions, and runs its ``main`` with the remaining
arguments. MPICH's mpiexec then ends the whole job, as after a node failure.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))  # also in spawned pool workers


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def crash_heat(after: int) -> None:
    import heat

    make_hook = heat.make_hook

    def hook_then_crash(ctx, grid, args, out, ckpt):
        hook = make_hook(ctx, grid, args, out, ckpt)

        def on_step(k, u):
            hook(k, u)
            if k == after and ctx.rank == ctx.size - 1:
                _die()
        return on_step

    heat.make_hook = hook_then_crash


def crash_fibonacci(tasks: int) -> None:
    import fibonacci

    save_results = fibonacci.save_results

    def save_then_crash(ckpt, ns, chunk, done):
        save_results(ckpt, ns, chunk, done)
        if len(done) >= tasks:
            _die()

    fibonacci.save_results = save_then_crash


if __name__ == "__main__":
    import importlib

    import hpcpar

    job, when, *rest = sys.argv[1:]
    {"heat": crash_heat, "fibonacci": crash_fibonacci}[job](int(when))
    sys.argv = [str(Path(sys.path[0]) / f"{job}.py"), *rest]
    hpcpar.run(importlib.import_module(job).main)
