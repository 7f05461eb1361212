"""A small dynamic task farm in plain mpi4py: root hands out tasks, workers ask for more.

Task ``t`` is ``sum(i * i for i in range(t * 1000))``; root writes
``{task: value}`` and which rank did each task to ``--out`` as JSON.
"""

import argparse
import json

import hpcpar

TASK, STOP = 1, 2


def work(t):
    return sum(i * i for i in range(t * 1000))


def main(ctx):
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    comm = ctx.comm
    if ctx.size == 1:
        results = {t: (work(t), 0) for t in range(args.tasks)}
    elif ctx.is_root:
        results, todo, active = {}, list(range(args.tasks)), ctx.size - 1
        from mpi4py import MPI
        st = MPI.Status()
        while active:
            msg = comm.recv(source=MPI.ANY_SOURCE, status=st)
            if msg is not None:
                results[msg[0]] = (msg[1], st.Get_source())
            if todo:
                comm.send(todo.pop(0), dest=st.Get_source(), tag=TASK)
            else:
                comm.send(None, dest=st.Get_source(), tag=STOP)
                active -= 1
    else:
        comm.send(None, dest=0)
        while True:
            t = comm.recv(source=0)
            if t is None:
                break
            comm.send((t, work(t)), dest=0)
    if ctx.is_root:
        with open(args.out, "w") as fh:
            json.dump({"ranks": ctx.size, "results": {str(k): v for k, v in results.items()}}, fh)


hpcpar.run(main)
