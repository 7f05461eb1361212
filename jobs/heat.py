"""2-D heat diffusion on the unit square, verified against the exact solution.

Solves u_t = alpha (u_xx + u_yy) on [0, 1]^2 with u = 0 on the walls (Dirichlet)
and u(x, y, 0) = sin(pi x) sin(pi y), whose exact solution decays as
exp(-2 pi^2 alpha t). The grid has N x N interior points x_i = (i + 1) h,
h = 1 / (N + 1); each explicit Euler step applies the 5-point stencil

    u_new = u + r * (u_north + u_south + u_west + u_east - 4 u),  r = alpha dt / h^2

(stable for r <= 1/4). The domain is split over the ranks with :class:`hpcpar.Grid`;
halos travel while each rank updates its deep interior. Every rank computes every
cell with the same floating-point operations in the same order, so the field is
bit-identical for any number of ranks.

    mpiexec -n 4 python jobs/heat.py --n 512 --steps 500
    hpcpar run -n 4 jobs/heat.py --png heat.png
    mpiexec -n 4 python jobs/heat.py --out heat.h5 --snapshot-every 50 \
        --checkpoint heat.ckpt.h5 --every 100

``--out FILE`` writes one HDF5 file (:class:`hpcpar.Output`): the dataset
``snapshots`` (one field every ``--snapshot-every`` steps; their step numbers in
the root attribute ``snapshot_steps``), the final field ``u``, the run parameters
and hpcpar's provenance as root attributes. ``--checkpoint FILE --every K``
saves the field every K steps (:class:`hpcpar.Checkpoint`); when FILE exists at
start the run resumes from it, on any number of ranks, and ends with the field
bit-identical to an uninterrupted run (an existing ``--out`` file is then kept,
with the snapshots after the checkpoint's step dropped).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from collections.abc import Callable

import numpy as np

import hpcpar
from hpcpar import slurm
from hpcpar.bench.kernels import heat_stencil  # the stencil `hpcpar bench halo` measures
from hpcpar.launch.options import job_args, parse_checked

#: Defaults of this job's sbatch script (``hpcpar slurm render-all`` writes slurm/heat.sbatch):
#: USR1 two minutes before the limit, then checkpoint, requeue and resume.
SLURM = {"ntasks": 4, "time": 30, "signal": 120, "requeue": True,
         "args": ["--n", "2048", "--steps", "20000", "--checkpoint", "heat.ckpt.h5", "--every", "500",
                  "--out", "heat.h5", "--snapshot-every", "2000"]}

#: The largest stable r = alpha dt / h^2 of the explicit 5-point scheme in 2-D.
R_MAX = 0.25


def parser() -> argparse.ArgumentParser:
    """The job's options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=512, help="interior grid points per side (default 512)")
    p.add_argument("--steps", type=int, default=500, help="time steps (default 500)")
    p.add_argument("--alpha", type=float, default=1.0, help="diffusivity (default 1)")
    p.add_argument("--r", type=float, default=0.2,
                   help=f"alpha dt / h^2, the time step in units of h^2/alpha; at most {R_MAX} (default 0.2)")
    p.add_argument("--dims", default=None,
                   help="process grid as RxC, e.g. 2x2 (default: balanced for the rank count)")
    p.add_argument("--png", metavar="FILE", help="write an image of the final field (needs matplotlib)")
    p.add_argument("--save-npy", metavar="FILE", help="write the final global field to a .npy file")
    p.add_argument("--out", metavar="FILE",
                   help="write snapshots, the final field u and the run's parameters to an HDF5 file")
    p.add_argument("--snapshot-every", type=int, default=0, metavar="K",
                   help="with --out: append the field to 'snapshots' every K steps (default 0: none)")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="save a checkpoint every --every steps; resume from FILE when it exists")
    p.add_argument("--every", type=int, default=100, metavar="K",
                   help="checkpoint interval in steps, and the last step (default 100)")
    p.add_argument("--stop-check", type=int, default=10, metavar="K",
                   help="check every K steps whether any rank got SIGUSR1 (Slurm's time-limit "
                   "warning); then save the checkpoint, requeue when the job allows it, and end "
                   "(default 10; 0: never)")
    return p


#: Output-file options, checked before the run (directory exists and is writable).
OUTPUTS = ("png", "save_npy", "out", "checkpoint")


def check(args: argparse.Namespace) -> str | None:
    """The first problem with the options, or None (the same on every rank)."""
    for name in ("snapshot_every", "every", "steps"):
        if getattr(args, name) < 0:
            return f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}"
    if args.n < 1:
        return f"--n must be >= 1, got {args.n}"
    if not (math.isfinite(args.alpha) and args.alpha > 0):
        return f"--alpha must be a positive diffusivity, got {args.alpha:g}"
    if not 0 < args.r <= R_MAX:
        return f"--r must be in (0, {R_MAX}] (the explicit scheme is unstable above it), got {args.r:g}"
    if args.stop_check < 0:
        return f"--stop-check must be >= 0, got {args.stop_check}"
    if args.every == 0 and args.checkpoint:
        return "--every must be >= 1 with --checkpoint"
    if args.snapshot_every and not args.out:
        return "--snapshot-every needs --out FILE"
    try:
        dims = _parse_dims(args.dims)
    except ValueError as exc:
        return str(exc)
    if dims is not None and (len(dims) != 2 or min(dims) < 1):
        return f"--dims must be two positive numbers like 2x2, got {args.dims!r}"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked (without the output-path checks of :func:`main`)."""
    return parse_checked(parser(), check, argv)


def spacing(n: int) -> float:
    """The grid spacing h = 1 / (n + 1) of n interior points on [0, 1]."""
    return 1.0 / (n + 1)


def initial_field(grid: hpcpar.Grid, dtype: np.typing.DTypeLike = np.float64) -> np.ndarray:
    """sin(pi x) sin(pi y) on this rank's block, zero ghost cells. **Local**.

    The 1-D sine profiles are computed over the whole axis and then sliced, so every
    cell gets exactly the value a serial code computes.
    """
    u = grid.zeros(dtype)
    profiles = []
    for n, sl in zip(grid.shape, grid.global_slices):
        x = np.arange(1, n + 1, dtype=dtype) * spacing(n)
        profiles.append(np.sin(np.pi * x)[sl])
    grid.interior(u)[...] = profiles[0][:, None] * profiles[1][None, :]
    return u


def exact_amplitude(alpha: float, t: float) -> float:
    """The factor exp(-2 pi^2 alpha t) by which the exact solution has decayed at time t."""
    return math.exp(-2.0 * math.pi**2 * alpha * t)


_UNTIMED = contextlib.nullcontext()


def step(grid: hpcpar.Grid, u: np.ndarray, out: np.ndarray, r: float,
         compute: contextlib.AbstractContextManager = _UNTIMED,
         exchange: contextlib.AbstractContextManager = _UNTIMED) -> np.ndarray:
    """One explicit step from ``u`` into ``out`` (both with halo of width 1). **Collective**.

    The halo exchange of ``u`` overlaps the update of the cells that need no ghost
    cell; the rim follows once the ghosts have arrived. Wall ghost cells are never
    written, so they keep the Dirichlet value 0 of :meth:`hpcpar.Grid.zeros`.
    ``compute`` and ``exchange`` are timer regions (``ctx.timer(...)``) around the
    stencil work and the halo exchange (each is entered twice per step, so the
    timing table counts two calls per step).

    Returns:
        ``out``.
    """
    n0, n1 = grid.local_shape
    with exchange:
        grid.exchange_begin(u, corners=False)  # the 5-point stencil needs no corners
    with compute:
        heat_stencil(u, out, r, slice(2, n0), slice(2, n1))  # the deep interior
    with exchange:
        grid.exchange_end()
    with compute:
        heat_stencil(u, out, r, slice(1, 2), slice(1, n1 + 1))  # first row
        heat_stencil(u, out, r, slice(max(n0, 2), n0 + 1), slice(1, n1 + 1))  # last row
        heat_stencil(u, out, r, slice(2, n0), slice(1, 2))  # first column
        heat_stencil(u, out, r, slice(2, n0), slice(max(n1, 2), n1 + 1))  # last column
    return out


def simulate(ctx: hpcpar.Context, grid: hpcpar.Grid, u: np.ndarray, steps: int, r: float,
             start: int = 0,
             on_step: Callable[[int, np.ndarray], None] | None = None,
             stop: Callable[[int], bool] | None = None) -> np.ndarray:
    """Advance ``u`` from step ``start`` to step ``steps``. **Collective**.

    Args:
        ctx: the job's context.
        grid: the grid of ``u``.
        u: the field at step ``start``, with halo; it is overwritten (double buffer).
        steps: the number of the last step.
        r: alpha dt / h^2.
        start: the number of the step ``u`` holds (0 for the initial field; a
            restart passes the step of its checkpoint).
        on_step: called on every rank as ``on_step(k, field)`` after each step ``k``
            (output and checkpoints hook in here; ``field`` is the current array
            with halo, valid until the next step).
        stop: called on every rank as ``stop(k)`` after ``on_step``; the loop ends
            after step ``k`` when it returns true (it must agree on all ranks, e.g.
            ``ctx.should_stop``).

    The time goes to the timer regions ``"compute"`` and ``"exchange"`` of
    ``ctx.timer`` (the table :func:`hpcpar.run` prints at the end).

    Returns:
        The field after step ``steps`` (``u`` or its twin buffer).
    """
    if not 0 < r <= R_MAX:
        raise ValueError(f"r = alpha dt / h^2 = {r} is outside (0, {R_MAX}]: the explicit scheme "
                         "is unstable above 1/4; use a smaller --r")
    if grid.ndim != 2 or grid.halo != 1 or u.shape != grid.halo_shape:
        raise ValueError(f"simulate needs a 2-D grid with halo 1 and a field of shape {grid.halo_shape}; "
                         f"got a {grid.ndim}-D grid with halo {grid.halo} and a field of shape {u.shape}")
    other = np.zeros_like(u)
    compute, exchange = ctx.timer("compute"), ctx.timer("exchange")
    for k in range(start + 1, steps + 1):
        step(grid, u, other, r, compute, exchange)
        u, other = other, u
        if on_step is not None:
            on_step(k, u)
        if stop is not None and stop(k):
            break
    return u


def relative_error(ctx: hpcpar.Context, grid: hpcpar.Grid, u: np.ndarray, alpha: float,
                   t: float) -> float:
    """max |u - exact| / exp(-2 pi^2 alpha t) over the whole grid. **Collective**: every rank gets it."""
    amp = exact_amplitude(alpha, t)
    exact = grid.interior(initial_field(grid)) * amp
    local = float(np.max(np.abs(grid.interior(u) - exact), initial=0.0))
    return ctx.allreduce(local, op="max") / amp


def write_png(path: str, field: np.ndarray, title: str) -> None:
    """Save an image of ``field`` (root only; needs the ``plot`` extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--png needs matplotlib: pip install 'hpcpar[plot]'") from None
    fig, ax = plt.subplots(figsize=(5, 4.2))
    im = ax.imshow(field, origin="lower", extent=(0, 1, 0, 1), cmap="inferno")
    fig.colorbar(im, ax=ax, label="u")
    ax.set(xlabel="y", ylabel="x", title=title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _parse_dims(text):
    if text is None:
        return None
    try:
        return tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--dims must look like 2x2, got {text!r}") from None


def resume(ctx: hpcpar.Context, grid: hpcpar.Grid, ckpt: hpcpar.Checkpoint,
           args: argparse.Namespace) -> tuple[int, np.ndarray] | None:
    """``(step, field with halo)`` from the checkpoint, or None when there is none. **Collective**.

    The checkpoint may come from any number of ranks (it is re-partitioned onto
    ``grid``). Raises ValueError on every rank when it was written for other
    parameters (``--n``, ``--r``, ``--alpha``) or lies beyond ``--steps``.
    """
    state = ckpt.load(grid=grid)
    if state is None:
        return None
    k, fields = state
    saved = {"n": int(fields.get("n", -1)), "r": float(fields.get("r", math.nan)),
             "alpha": float(fields.get("alpha", math.nan))}
    wrong = [f"--{key} {saved[key]:g} (this run: {getattr(args, key):g})"
             for key in saved if saved[key] != getattr(args, key)]
    if wrong or "u" not in fields:
        raise ValueError(f"checkpoint {ckpt.path} was written by a run with "
                         f"{', '.join(wrong) or 'no field u'}; use the same parameters or "
                         "remove the file to start afresh")
    if k > args.steps:
        raise ValueError(f"checkpoint {ckpt.path} holds step {k}, beyond --steps {args.steps}; "
                         "ask for more steps or remove the file")
    u = grid.zeros(fields["u"].dtype)
    grid.interior(u)[...] = fields["u"]
    return k, u


def open_output(ctx: hpcpar.Context, path: str, grid: hpcpar.Grid,
                resumed_at: int | None) -> hpcpar.Output:
    """Open the ``--out`` file. **Collective**.

    A fresh run (``resumed_at`` None) creates it. A run resumed at step ``k``
    reopens it and drops what the run writes again: the snapshots after step
    ``k`` (:meth:`hpcpar.Output.truncate`) and the final field ``u``; so the file
    ends as an uninterrupted run's. When it is missing or cannot be reopened
    (damaged by the crash), root says so and the run writes it afresh.
    """
    if resumed_at is not None:
        try:
            out = hpcpar.Output(ctx, path, "a", decomposition=grid.dims)
        except hpcpar.CollectiveError as exc:  # raised alike on every rank
            why = exc
        else:
            try:
                steps = [int(s) for s in np.atleast_1d(out.attrs.get("snapshot_steps", []))]
                keep = sum(1 for s in steps if s <= resumed_at)
                if "snapshots" in out:
                    out.truncate("snapshots", min(keep, out.steps("snapshots")))
                out.attrs["snapshot_steps"] = np.array(steps[:keep], dtype=np.int64)
                if "u" in out:
                    out.delete("u")
                return out
            except hpcpar.CollectiveError as exc:
                out.close()
                why = exc
        if ctx.is_root:
            print(f"heat: cannot reuse {path} after the restart ({why}); writing it afresh", flush=True)
    out = hpcpar.Output(ctx, path, "w", decomposition=grid.dims)
    out.attrs["snapshot_steps"] = np.zeros(0, np.int64)
    return out


def main(ctx: hpcpar.Context, argv: list[str] | None = None) -> np.ndarray | None:
    args = job_args(ctx, parser(), argv, check, OUTPUTS)
    if args.png:  # fail early, before the run, when matplotlib is missing
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("--png needs matplotlib: pip install 'hpcpar[plot]'") from None
    n, h = args.n, spacing(args.n)
    dt = args.r * h * h / args.alpha
    with hpcpar.Grid(ctx, (n, n), dims=_parse_dims(args.dims)) as grid, contextlib.ExitStack() as stack:
        ckpt = hpcpar.Checkpoint(ctx, args.checkpoint) if args.checkpoint else None
        state = resume(ctx, grid, ckpt, args) if ckpt else None
        start, u = state if state else (0, initial_field(grid))
        if state and ctx.is_root:
            print(f"heat: resuming from step {start} of {ckpt.path}", flush=True)
        out = None
        if args.out:
            out = stack.enter_context(open_output(ctx, args.out, grid, start if state else None))
            out.attrs.update({"n": n, "steps": args.steps, "alpha": args.alpha, "r": args.r,
                              "dt": dt, "dims": np.array(grid.dims), "h": h,
                              "snapshot_every": args.snapshot_every,
                              "checkpoint_every": args.every if ckpt else 0})
        hook = make_hook(ctx, grid, args, out, ckpt) if (out or ckpt) else None
        reached = start

        def on_step(k: int, field: np.ndarray) -> None:
            nonlocal reached
            reached = k
            if hook is not None:
                hook(k, field)

        # SIGUSR1 (Slurm's warning before the time limit, or `scancel --signal=USR1`)
        # ends the loop on every rank at the same step; checked every --stop-check steps.
        stop = (lambda k: ctx.should_stop(every=args.stop_check)) if args.stop_check > 0 else None
        ctx.barrier()
        t0 = time.perf_counter()
        u = simulate(ctx, grid, u, args.steps, args.r, start=start, on_step=on_step, stop=stop)
        elapsed = ctx.allreduce(time.perf_counter() - t0, op="max")
        if reached < args.steps:
            return stopped_early(ctx, grid, u, reached, args, ckpt)
        done = args.steps - start  # the steps this run computed (none when resumed at --steps)
        if ckpt is not None and args.steps % args.every and done > 0:
            with ctx.timer("output"):  # the final state, also when --steps < --every
                ckpt.save(args.steps, u=(grid, u), n=args.n, r=args.r, alpha=args.alpha)
        if out is not None:
            with ctx.timer("output"):
                out.write("u", grid, u)
        t = args.steps * dt
        err = relative_error(ctx, grid, u, args.alpha, t)
        field = grid.gather(u) if (args.png or args.save_npy) else None
        if ctx.is_root:
            print(f"heat: {n} x {n} grid on {ctx.size} ranks (dims {'x'.join(map(str, grid.dims))}), "
                  f"{args.steps} steps to t = {t:.4g} (alpha {args.alpha:g}, r {args.r:g}): "
                  f"{rate(n, done, elapsed, start if state else None)}; "
                  f"max error vs exact {err:.3e} (relative to the amplitude)")
            if done > 0:  # the table printed at the end counts calls, not steps
                print(f"heat: the timing table counts {2 * done} calls of 'compute' and 'exchange' for "
                      f"{done} steps: each step enters both twice (the halo exchange overlaps the "
                      "interior update)")
            if args.save_npy:
                np.save(args.save_npy, field)
            if args.png:
                write_png(args.png, field, f"heat, t = {t:.3g}, {n}x{n}, {ctx.size} ranks")
                print(f"wrote {args.png}")
        return field


def rate(n: int, done: int, seconds: float, resumed_at: int | None = None) -> str:
    """The speed of ``done`` steps of an ``n`` x ``n`` grid in ``seconds``, as the job prints it.

    A run that computed no step (resumed from a checkpoint already at ``--steps``,
    or ``--steps 0``) has no speed: it says so instead of printing one.
    """
    since = f" (resumed at step {resumed_at})" if resumed_at is not None else ""
    if done <= 0:
        return f"no steps computed{since}"
    per = seconds / done
    text = f"{per * 1e3:.3f} ms/step" + (f", {n * n / per / 1e6:.1f} M cells/s" if per > 0 else "")
    return f"{done} steps computed{since}, {text}" if since else text


def stopped_early(ctx: hpcpar.Context, grid: hpcpar.Grid, u: np.ndarray, k: int,
                  args: argparse.Namespace, ckpt: hpcpar.Checkpoint | None) -> None:
    """After a stop request at step ``k``: save the checkpoint and, under Slurm with
    ``requeue=True``, put the job back in the queue to resume from it. **Collective**."""
    if ckpt is not None and not (args.every and k % args.every == 0):  # not saved by the hook
        with ctx.timer("output"):
            ckpt.save(k, u=(grid, u), n=args.n, r=args.r, alpha=args.alpha)
    if ctx.is_root:
        if ckpt is None:
            print(f"heat: stop requested at step {k} of {args.steps}; no --checkpoint, so the "
                  "run cannot be resumed", flush=True)
        else:
            print(f"heat: stop requested; checkpoint at step {k} of {args.steps} in {ckpt.path}",
                  flush=True)
            if slurm.requeue():
                print("heat: job requeued; it resumes from the checkpoint", flush=True)
    return None


def make_hook(ctx: hpcpar.Context, grid: hpcpar.Grid, args: argparse.Namespace,
              out: hpcpar.Output | None, ckpt: hpcpar.Checkpoint | None) -> Callable[[int, np.ndarray], None]:
    """The ``on_step`` of :func:`simulate`: snapshots, checkpoints (timer region ``"output"``)."""
    region = ctx.timer("output")
    snap, every = args.snapshot_every if out else 0, args.every if ckpt else 0

    def on_step(k: int, u: np.ndarray) -> None:
        if snap and k % snap == 0:
            with region:
                out.append("snapshots", grid, u)
                steps = np.append(out.attrs["snapshot_steps"], np.int64(k))
                out.attrs["snapshot_steps"] = steps
                out.flush()  # a crash later keeps this snapshot readable
        if every and k % every == 0:
            with region:
                ckpt.save(k, u=(grid, u), n=args.n, r=args.r, alpha=args.alpha)

    return on_step


if __name__ == "__main__":
    hpcpar.run(main)
