"""The Mandelbrot set two ways: a static block partition of the rows, and a dynamic farm.

Rows inside the set cost ``--max-iter`` iterations per pixel, rows far outside a
few, so equal blocks of rows give the ranks very unequal work. The job computes
the image both ways, prints each one's *load imbalance* (the busiest rank's
compute time over the mean: 1.00 is perfect balance) and checks that the two
images are identical. Each imbalance is the one the timing table at the end shows
for the region it names: ``static compute`` (each rank's block) and ``farm tasks``
(the tasks a rank ran; its calls column gives the fewest-most tasks of a rank).
The regions ``static gather`` and ``farm`` (the whole farm, tasks included) hold
each rank's wait for the others as well (the gather is mostly the wait of the
ranks that finished their blocks early), so their imbalance does not measure
the balance of the work. ``--png`` writes the image with matplotlib; ``--out``
writes it to HDF5 with :class:`hpcpar.Output`, each rank writing its own block of rows
(dataset ``image``, uint16 escape counts, the parameters as its attributes).

    mpiexec -n 2 python jobs/mandelbrot.py --width 800 --height 600 --png mandelbrot.png
    mpiexec -n 2 python jobs/mandelbrot.py --out mandelbrot.h5
    hpcpar run -n 4 jobs/mandelbrot.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import hpcpar
from hpcpar import partition

# The kernel is shared with `hpcpar bench farm`: rows(y0, y1, width, height, max_iter)
# gives the uint16 escape counts of rows y0:y1 of the image spanning REGION.
from hpcpar.bench.kernels import MANDELBROT_REGION as REGION
from hpcpar.bench.kernels import mandelbrot_rows as rows
from hpcpar.launch.options import job_args, parse_checked


def parser() -> argparse.ArgumentParser:
    """The job's options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=800, help="pixels per row (default 800)")
    p.add_argument("--height", type=int, default=600, help="rows (default 600)")
    p.add_argument("--max-iter", type=int, default=200, help="iterations before a point counts as inside")
    p.add_argument("--rows", type=int, default=4, help="rows per farm task (default 4)")
    p.add_argument("--png", metavar="PATH", help="write the image as a PNG (needs matplotlib)")
    p.add_argument("--out", metavar="FILE",
                   help="write the image to HDF5 (dataset 'image', each rank its rows)")
    return p


#: Output-file options, checked before the job starts (directory exists and is writable).
OUTPUTS: tuple[str, ...] = ('png', 'out')


def check(args: argparse.Namespace) -> str | None:
    """The first problem with the options, or None (the same on every rank)."""
    if args.width < 1:
        return f"--width must be >= 1, got {args.width}"
    if args.height < 1:
        return f"--height must be >= 1, got {args.height}"
    if args.max_iter < 1:
        return f"--max-iter must be >= 1, got {args.max_iter}"
    if args.rows < 1:
        return f"--rows must be >= 1, got {args.rows}"
    if args.max_iter > 65535:
        return f"--max-iter must be <= 65535 (escape counts are stored as uint16), got {args.max_iter}"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked (without the output-path checks of :func:`main`)."""
    return parse_checked(parser(), check, argv)


def static_block(ctx: hpcpar.Context, width: int, height: int, max_iter: int) -> tuple[np.ndarray, float]:
    """This rank's equal block of rows. **Local**: (block, compute seconds).

    The block is rows ``partition.block_range(height, ctx.size, ctx.rank)``; the
    seconds are those the timer region ``static compute`` adds.
    """
    r = partition.block_range(height, ctx.size, ctx.rank)
    region = ctx.timer("static compute")
    before = region.total
    with region:
        block = rows(r.start, r.stop, width, height, max_iter)
    return block, region.total - before


def static(ctx: hpcpar.Context, width: int, height: int,
           max_iter: int) -> tuple[np.ndarray | None, float]:
    """Equal blocks of rows per rank. **Collective**: (image on root, this rank's compute seconds)."""
    block, busy = static_block(ctx, width, height, max_iter)
    with ctx.timer("static gather"):
        image = ctx.gather(block)
    return image, busy


def dynamic(ctx: hpcpar.Context, width: int, height: int, max_iter: int,
            per_task: int) -> tuple[np.ndarray | None, float]:
    """Tasks of ``per_task`` rows handed out by :func:`hpcpar.farm`.

    **Collective**: (image on root, this rank's busy seconds: what the timer
    region ``farm tasks``, entered once per task, adds).
    """
    region = ctx.timer("farm tasks")
    before = region.total

    def task(y0):
        with region:
            return rows(y0, min(height, y0 + per_task), width, height, max_iter)

    with ctx.timer("farm"):
        parts = hpcpar.farm(ctx, task, range(0, height, per_task) if ctx.is_root else None, chunksize=1)
    image = np.concatenate(parts) if ctx.is_root else None
    return image, region.total - before


def imbalance(ctx: hpcpar.Context, busy: float) -> float:
    """The busiest rank's compute time over the mean. **Collective**: the same on every rank."""
    times = ctx.comm.allgather(busy)
    mean = sum(times) / len(times)
    return max(times) / mean if mean > 0 else 1.0


def write_png(ctx: hpcpar.Context, path: str, image: np.ndarray | None, block: np.ndarray,
              args: argparse.Namespace) -> None:
    """The image as a PNG, written by root. **Collective** (the other ranks do nothing)."""
    if not ctx.is_root:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(path, image, cmap="magma", origin="upper")


def write_h5(ctx: hpcpar.Context, path: str, image: np.ndarray | None, block: np.ndarray,
             args: argparse.Namespace) -> None:
    """The image as dataset ``image`` of the HDF5 file ``path``. **Collective**.

    Every rank writes its static block of rows (:meth:`hpcpar.Output.write`); the
    dataset's attributes hold the parameters (``width``, ``height``,
    ``max_iter``, ``region`` = re_min, re_max, im_min, im_max; row 0 is ``im_max``).
    """
    attrs = {"width": args.width, "height": args.height, "max_iter": args.max_iter,
             "region": np.array(REGION), "value": "escape count (max_iter: inside the set)"}
    with hpcpar.Output(ctx, path) as out:
        out.write("image", block, attrs=attrs)
        out.attrs["job"] = "mandelbrot"


#: Output writers by command-line option (``--png``, ``--out``). Each is called on
#: every rank as ``writer(ctx, path, image, block, args)``: ``image`` is the whole
#: image on root (None elsewhere), ``block`` this rank's static block of rows.
WRITERS = {"png": write_png, "out": write_h5}


def main(ctx: hpcpar.Context, argv: list[str] | None = None) -> np.ndarray | None:
    args = job_args(ctx, parser(), argv, check, OUTPUTS)
    w, h, m = args.width, args.height, args.max_iter
    ctx.barrier()
    t0 = time.perf_counter()
    block, busy_static = static_block(ctx, w, h, m)  # as static(), keeping the block for the writers
    with ctx.timer("static gather"):
        img_static = ctx.gather(block)
    t_static = ctx.comm.allreduce(time.perf_counter() - t0, op=max_op())
    imb_static = imbalance(ctx, busy_static)
    ctx.barrier()
    t0 = time.perf_counter()
    img_farm, busy_farm = dynamic(ctx, w, h, m, args.rows)
    t_farm = ctx.comm.allreduce(time.perf_counter() - t0, op=max_op())
    imb_farm = imbalance(ctx, busy_farm)
    same = ctx.comm.bcast(np.array_equal(img_static, img_farm) if ctx.is_root else None, root=ctx.root)
    if not same:
        raise SystemExit("mandelbrot: the static and farmed images differ")
    if ctx.is_root:
        inside = int(np.count_nonzero(img_farm == m))
        print(f"mandelbrot {w}x{h}, max_iter {m}, {ctx.size} ranks, {inside:,} pixels inside")
        print(f"  static blocks: {t_static:.3f} s, load imbalance {imb_static:.2f} "
              "(max/mean compute time: region 'static compute')")
        print(f"  dynamic farm:  {t_farm:.3f} s, load imbalance {imb_farm:.2f} "
              f"(max/mean compute time: region 'farm tasks'; {args.rows} rows per task)")
    for option, writer in WRITERS.items():
        path = getattr(args, option, None)
        if path:
            with ctx.timer("output"):
                writer(ctx, path, img_farm, block, args)
            if ctx.is_root:
                print(f"  wrote {path}")
    return img_farm if ctx.is_root else None


def max_op() -> object:
    from mpi4py import MPI

    return MPI.MAX


if __name__ == "__main__":
    hpcpar.run(main)
