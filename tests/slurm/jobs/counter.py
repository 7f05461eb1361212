"""A checkpointed time-step loop: stops on SIGUSR1, saves, asks to be requeued, resumes.

Every step updates each element on its own (``x = sin(x) + cos(1.3 x + k) / 2``),
so the result is bit-identical for any rank count and any stop/resume point.
Root saves ``{step, x}`` with ``np.savez`` to a temporary file and renames it
over ``--checkpoint``; a rerun finds it and continues from that step.
"""

import argparse
import json
import os
import time

import numpy as np

import hpcpar
from hpcpar import slurm


def save(path, **arrays):
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def main(ctx):
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--progress", help="root writes the last finished step here")
    args = p.parse_args()

    start, full = 0, None
    if ctx.is_root:
        if os.path.exists(args.checkpoint):
            with np.load(args.checkpoint) as data:
                start, full = int(data["step"]), data["x"]
            print(f"resuming from step {start} (restart {os.environ.get('SLURM_RESTART_COUNT', 0)})",
                  flush=True)
        else:
            full = np.linspace(0.0, 1.0, args.n)
    start = ctx.bcast(start)
    x = ctx.scatter(full)
    for k in range(start, args.steps):
        if ctx.should_stop():
            full = ctx.gather(x)
            if ctx.is_root:
                save(args.checkpoint, step=np.int64(k), x=full)
                print(f"checkpoint at step {k}", flush=True)
                slurm.requeue()
            return
        x = np.sin(x) + 0.5 * np.cos(1.3 * x + k)
        ctx.barrier()
        if ctx.is_root and args.progress:
            with open(args.progress + ".tmp", "w") as fh:
                json.dump({"step": k + 1}, fh)
            os.replace(args.progress + ".tmp", args.progress)
        time.sleep(args.sleep)
    full = ctx.gather(x)
    if ctx.is_root:
        np.save(args.result, full)
        print(f"done: {args.steps} steps on {ctx.size} ranks", flush=True)


hpcpar.run(main)
