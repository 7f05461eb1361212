"""Report what each rank sees (MPI rank/size, Slurm node, arguments, one variable) as JSON lines.

``--out FILE`` gets one JSON object per rank (root gathers them). ``--fail R``
makes rank R raise ``RuntimeError("probe failure on purpose")`` after a barrier.
``--sweep P`` makes root write ``sum(k**P for k < 1000)`` computed over all
ranks; in a job array the exponent is ``ctx.array_index`` instead, and
``{index}`` in ``--out`` becomes the array index.
"""

import json
import os
import socket
import sys

import numpy as np

import hpcpar


def main(ctx):
    argv = sys.argv[1:]
    out = argv[argv.index("--out") + 1] if "--out" in argv else None
    if out is not None:
        out = out.replace("{index}", str(ctx.array_index))
    me = {"rank": ctx.rank, "size": ctx.size, "node": os.environ.get("SLURMD_NODENAME"),
          "host": socket.gethostname(), "procid": os.environ.get("SLURM_PROCID"),
          "argv": argv, "hostile": os.environ.get("HOSTILE"), "array_index": ctx.array_index,
          "srun_cpus": os.environ.get("SRUN_CPUS_PER_TASK"),
          "cpus_per_task": os.environ.get("SLURM_CPUS_PER_TASK")}
    every = ctx.comm.gather(me, root=0)
    if "--fail" in argv:
        bad = int(argv[argv.index("--fail") + 1])
        ctx.barrier()
        if ctx.rank == bad:
            raise RuntimeError("probe failure on purpose")
        ctx.barrier()
    result = None
    if "--sweep" in argv:
        power = ctx.array_index if ctx.array_index is not None else int(argv[argv.index("--sweep") + 1])
        mine = hpcpar.partition.block_range(1000, ctx.size, ctx.rank)
        result = int(ctx.allreduce(np.sum(np.arange(mine.start, mine.stop, dtype=np.int64) ** power)))
    if ctx.is_root and out:
        with open(out, "w") as fh:
            json.dump({"ranks": every, "sweep": result}, fh)


hpcpar.run(main)
