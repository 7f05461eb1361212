"""The task-parallel jobs (fibonacci, mandelbrot, crawler) checked for exact results under MPI."""

import sys

import numpy as np
import pytest
from helpers import JOBS

import hpcpar
from hpcpar.testing import assert_all

sys.path.insert(0, str(JOBS))  # before the imports: pool workers find the job modules the same way
import crawler
import fibonacci
import mandelbrot

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(120)]


def plain_fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def test_fibonacci_exact_big_integers(ctx):
    ns = fibonacci.inputs(300, 3000, seed=7) + [0, 1, 2, 1000] if ctx.is_root else None
    got = fibonacci.compute(ctx, ns, chunk=16, workers=1)
    if ctx.is_root:
        want = [plain_fib(n) for n in ns]
        ok = got == want and len(set(ns)) > 100 and max(got).bit_length() > 2000
        ok = ok and all(fibonacci.fib_doubling(n) == w for n, w in zip(ns[:50], want[:50]))
    else:
        ok = got is None
    assert_all(ok, "fibonacci results differ from a serial loop", ctx=ctx)


def test_mandelbrot_static_and_farm_agree_with_serial(ctx, tmp_path):
    w, h, m = 120, 90, 60
    serial = mandelbrot.rows(0, h, w, h, m)
    img_s, busy_s = mandelbrot.static(ctx, w, h, m)
    img_f, busy_f = mandelbrot.dynamic(ctx, w, h, m, per_task=3)
    imb = [mandelbrot.imbalance(ctx, busy_s), mandelbrot.imbalance(ctx, busy_f)]
    if ctx.is_root:
        ok = np.array_equal(img_s, serial) and np.array_equal(img_f, serial)
        ok = ok and 0 < np.count_nonzero(serial == m) < serial.size  # both inside and outside points
    else:
        ok = img_s is None and img_f is None
    ok = ok and all(x >= 1.0 for x in imb)
    assert_all(ok, f"mandelbrot images differ from serial (imbalance {imb})", ctx=ctx)


def test_mandelbrot_main_prints_imbalance_and_writes_png(ctx, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = ctx.bcast(str(tmp_path / "m.png") if ctx.is_root else None)
    image = mandelbrot.main(ctx, ["--width", "64", "--height", "48", "--max-iter", "40", "--png", path])
    out = capsys.readouterr().out
    if ctx.is_root:
        with open(path, "rb") as f:
            head = f.read(8)
        ok = (head == b"\x89PNG\r\n\x1a\n" and image.shape == (48, 64)
              and out.count("load imbalance") == 2 and "static blocks" in out and "dynamic farm" in out)
    else:
        ok = image is None and out == ""
    assert_all(ok, f"mandelbrot main output: {out!r}", ctx=ctx)


def test_mandelbrot_out_writes_each_ranks_rows_to_hdf5(ctx, shared_dir, capsys):
    import h5py

    from hpcpar.decomp import partition

    w, h, m = 48, 37, 50  # 37 rows: uneven blocks on 2 and 3 ranks
    path = str(shared_dir / "m.h5")
    image = mandelbrot.main(ctx, ["--width", str(w), "--height", str(h), "--max-iter", str(m),
                                  "--out", path])
    capsys.readouterr()
    serial = mandelbrot.rows(0, h, w, h, m)
    mine = hpcpar.read(ctx, path, "image")  # this rank's block, read back in parallel
    r = partition.block_range(h, ctx.size, ctx.rank)
    ok = mine.dtype == np.uint16 and np.array_equal(mine, serial[r.start:r.stop])
    if ctx.is_root:
        with h5py.File(path, "r") as f:
            d = f["image"]
            ok = ok and np.array_equal(d[...], serial) and np.array_equal(image, serial)
            ok = ok and (d.attrs["width"], d.attrs["height"], d.attrs["max_iter"]) == (w, h, m)
            ok = ok and np.array_equal(d.attrs["region"], mandelbrot.REGION)
            ok = ok and f.attrs["mpi_ranks"] == ctx.size and f.attrs["job"] == "mandelbrot"
    assert_all(ok, "the HDF5 image differs from a serial computation", ctx=ctx)


def test_crawler_finds_the_known_link_graph(ctx):
    server = targets = base = None
    if ctx.is_root:
        site, targets = crawler.make_site(200, seed=3)
        server, base = crawler.serve(site)
    try:
        graph = crawler.crawl(ctx, base, threads=4, batch=8, timeout=10)
    finally:
        if server is not None:
            server.shutdown()
    if ctx.is_root:
        want = crawler.expected_graph(targets, base)
        ok = graph == want and sum(v is None for v in want.values()) > 0 and len(want) > 200
        msg = f"{len(graph)} URLs crawled, {len(want)} expected; differ: " + \
            str([u for u in set(graph) | set(want) if graph.get(u, 0) != want.get(u, 0)][:5])
    else:
        ok, msg = graph is None, "non-root gets None"
    assert_all(ok, msg, ctx=ctx)


def test_crawler_max_pages_and_loopback_only(ctx):
    server = None
    base = None
    if ctx.is_root:
        site, _ = crawler.make_site(100, seed=4)
        server, base = crawler.serve(site)
    try:
        graph = crawler.crawl(ctx, base, threads=2, batch=4, max_pages=20)
    finally:
        if server is not None:
            server.shutdown()
    ok = 0 < len(graph) <= 20 if ctx.is_root else graph is None
    try:
        crawler.crawl(ctx, "http://example.com/" if ctx.is_root else None)
        refused = False
    except ValueError as exc:
        refused = "only loopback" in str(exc)
    assert_all(ok and refused, "max_pages bound and loopback check", ctx=ctx)
