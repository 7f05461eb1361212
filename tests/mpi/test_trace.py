"""Timeline traces (HPCPAR_TRACE): a valid Trace Event file with every rank, every kind of span,
waits that show who was late, clocks aligned across ranks, a bounded buffer, and its picture."""

from __future__ import annotations

import gzip
import io
import json
import time

import numpy as np
import pytest

import hpcpar
from hpcpar.observe import gantt, trace, tracefile
from hpcpar.testing import assert_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(120)]

META = {"process_name", "thread_name", "process_sort_index", "thread_sort_index"}


@pytest.fixture(autouse=True)
def recorder_off():
    trace.RECORDER.on = False
    yield
    trace.RECORDER.on = False


def problems_of(data: dict, size: int) -> list[str]:
    """What is wrong with a trace file, per the Trace Event format's documented fields."""
    bad = []
    events = data.get("traceEvents")
    if not isinstance(events, list) or not events:
        return ["no traceEvents list"]
    named_pids, named_tids, tids = set(), set(), set()
    for e in events:
        ph = e.get("ph")
        if not isinstance(e.get("pid"), int) or not isinstance(e.get("tid"), int) \
                or not isinstance(e.get("name"), str) or not isinstance(e.get("args"), dict):
            bad.append(f"missing pid/tid/name/args: {e}")
        elif ph == "M":
            if e["name"] not in META:
                bad.append(f"unknown metadata {e}")
            if e["name"] == "process_name":
                named_pids.add(e["pid"])
            if e["name"] == "thread_name":
                named_tids.add(e["tid"])
                if e["args"].get("name") != f"rank {e['tid']}":
                    bad.append(f"thread name {e}")
        elif ph == "X":
            if not isinstance(e.get("cat"), str) or not isinstance(e.get("ts"), (int, float)) \
                    or not isinstance(e.get("dur"), (int, float)) or e["dur"] < 0:
                bad.append(f"bad complete event {e}")
            if e["pid"] not in named_pids:
                bad.append(f"pid {e['pid']} of a span has no process_name before it")
            tids.add(e["tid"])
        else:
            bad.append(f"unexpected ph {ph!r}")
    if tids != set(range(size)) or named_tids != set(range(size)):
        bad.append(f"ranks with spans {sorted(tids)}, named {sorted(named_tids)}; want 0..{size - 1}")
    return bad


def traced_run(ctx, path, body) -> dict | None:
    """Trace ``body()`` on every rank into ``path``; root gets the loaded file."""
    assert_all(tracefile.begin(ctx, str(path)), "tracing on", ctx=ctx)
    body()
    out = io.StringIO()
    written = tracefile.end(ctx, stream=out)
    assert_all(trace.RECORDER.on is False, "tracing off after end", ctx=ctx)
    if not ctx.is_root:
        return None
    assert written is not None and "wrote" in out.getvalue()
    return tracefile.read(written)


def test_a_trace_has_every_rank_and_every_kind_of_span(ctx, shared_dir):
    def body():
        for _ in range(3):
            with ctx.timer("compute"):
                time.sleep(0.002)
            ctx.allreduce(np.ones(8))
        ctx.bcast(np.arange(16) if ctx.is_root else None)
        grid = hpcpar.Grid(ctx, (12, 12), periodic=True)
        a = grid.zeros()
        grid.exchange(a)
        grid.exchange_begin(a)  # one exchange split in two, as a time-step loop does
        grid.exchange_end()
        hpcpar.farm(ctx, lambda x: x * 2, range(12) if ctx.is_root else None)
        hpcpar.pipeline(ctx, [lambda x: x + 1, lambda x: x * 3], range(6) if ctx.is_root else None)
        with hpcpar.Output(ctx, shared_dir / "out.h5") as out:
            out.write("x", np.full(5, ctx.rank, dtype=np.float64))
        hpcpar.Checkpoint(ctx, shared_dir / "ckpt.h5").save(7, u=np.zeros(4))
        grid.free()

    data = traced_run(ctx, shared_dir / "run.json", body)
    problem = None
    if ctx.is_root:
        assert data is not None
        bad = problems_of(data, ctx.size)
        spans = [e for e in data["traceEvents"] if e["ph"] == "X"]
        cats = {e["cat"] for e in spans}
        want = {"region", "collective", "exchange", "task", "item", "io", "checkpoint"}
        want |= {"wait"} if ctx.size > 1 else set()  # one rank never waits for another
        if not want <= cats:
            bad.append(f"kinds {sorted(cats)} lack {sorted(want - cats)}")
        reduce = [e for e in spans if e["name"] == "allreduce"]
        if len(reduce) < 3 * ctx.size or any(e["args"].get("bytes") != 64 or "wait_us" not in e["args"]
                                             for e in reduce):
            bad.append(f"allreduce spans {reduce[:3]}")
        sends = [e for e in spans if e["name"] == "exchange_begin"]
        if len(sends) != 2 * ctx.size or any(e["args"]["peers"] < 1 or e["args"]["bytes"] <= 0
                                             for e in sends):
            bad.append(f"exchange_begin spans {sends}")
        ends = [e for e in spans if e["name"] == "exchange_end"]
        if len(ends) != 2 * ctx.size:
            bad.append(f"exchange_end spans {ends}")
        # one span per exchange call: the watchdog's mark of a Grid call records no second one
        twice = [e for e in spans if e["name"].startswith("Grid.")]
        if twice:
            bad.append(f"Grid exchanges recorded twice, also as {sorted({e['name'] for e in twice})}")
        tasks = sorted(e["args"]["index"] for e in spans if e["cat"] == "task")
        if tasks != list(range(12)):
            bad.append(f"farm task indices {tasks}")
        save = [e for e in spans if e["cat"] == "checkpoint"]
        if not save or save[0]["args"].get("step") != 7 or save[0]["args"].get("bytes") != 32:
            bad.append(f"checkpoint spans {save}")
        problem = "; ".join(bad[:5]) or None
    problem = ctx.comm.bcast(problem, root=0)
    assert_all(problem is None, str(problem), ctx=ctx)


def test_clocks_are_aligned_and_waits_show_the_late_rank(ctx, shared_dir):
    late = 0.15

    def body():
        for _ in range(5):
            ctx.barrier()
        if ctx.rank == ctx.size - 1:
            time.sleep(late)
        ctx.allreduce(np.ones(1))

    data = traced_run(ctx, shared_dir / "clock.json.gz", body)
    problem = None
    if ctx.is_root:
        assert data is not None
        spans = [e for e in data["traceEvents"] if e["ph"] == "X" and e["cat"] == "collective"]
        tol = 5000.0  # µs: a loaded, oversubscribed machine delays barrier exits by milliseconds
        bad = []
        for call in range(5):
            b = [e for e in spans if e["name"] == "barrier" and e["args"]["call"] == call]
            first_end = min(e["ts"] + e["dur"] for e in b)
            last_start = max(e["ts"] for e in b)
            if len(b) != ctx.size or first_end < last_start - tol:
                bad.append(f"barrier {call}: a rank left at {first_end:.0f} µs before the last "
                           f"arrived at {last_start:.0f} µs")
        red = {e["tid"]: e for e in spans if e["name"] == "allreduce"}
        if ctx.size > 1:
            early = [red[r]["args"]["wait_us"] for r in range(ctx.size - 1)]
            if min(early) < 0.7 * late * 1e6 or red[ctx.size - 1]["args"]["wait_us"] > 0.3 * late * 1e6:
                bad.append(f"waits {[red[r]['args']['wait_us'] for r in range(ctx.size)]} µs")
        elif red[0]["args"]["wait_us"] != 0:
            bad.append(f"one rank waited {red[0]['args']['wait_us']} µs")
        problem = "; ".join(bad) or None
    problem = ctx.comm.bcast(problem, root=0)
    assert_all(problem is None, str(problem), ctx=ctx)
    if ctx.is_root:  # the .gz name gave a gzip file
        with gzip.open(shared_dir / "clock.json.gz", "rt") as fh:
            json.load(fh)


def test_a_full_buffer_keeps_the_first_spans_and_says_so(ctx, shared_dir, monkeypatch):
    monkeypatch.setenv("HPCPAR_TRACE_EVENTS", str(trace.CHUNK))
    assert_all(tracefile.begin(ctx, str(shared_dir / "full.json")), "tracing on", ctx=ctx)
    region = ctx.timer("tiny")
    for _ in range(trace.CHUNK + 100):
        with region:
            pass
    kept, dropped = len(trace.RECORDER.events()), trace.RECORDER.dropped
    out = io.StringIO()
    tracefile.end(ctx, stream=out)
    assert_all(kept == trace.CHUNK and dropped == 100, f"kept {kept}, dropped {dropped}", ctx=ctx)
    said = ctx.comm.bcast("filled up" in out.getvalue() and "HPCPAR_TRACE_EVENTS" in out.getvalue())
    assert_all(said, "root says that the buffer filled up", ctx=ctx)


def test_an_unwritable_trace_path_fails_on_every_rank(ctx, shared_dir):
    path = shared_dir / "no such dir" / "x.json"
    try:
        tracefile.begin(ctx, str(path))
        problem = "no error"
    except ValueError as exc:
        problem = None if "cannot write the trace" in str(exc) and "rank 0" in str(exc) else str(exc)
    assert_all(problem is None, str(problem), ctx=ctx)
    assert_all(not trace.RECORDER.on, "tracing stays off", ctx=ctx)


def test_the_gantt_chart_is_drawn(ctx, shared_dir):
    pytest.importorskip("matplotlib")

    def body():
        with ctx.timer("compute"):
            time.sleep(0.01 * ctx.rank)
        ctx.barrier()

    data = traced_run(ctx, shared_dir / "g.json", body)
    ok = True
    if ctx.is_root:
        assert data is not None
        png = shared_dir / "g.png"
        gantt.plot(data, str(png), title="test")
        ok = png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        parts = gantt.summarize(data)["ranks"]
        ok = ok and sorted(parts) == list(range(ctx.size))
    assert_all(ctx.comm.bcast(ok), "the PNG is written and the summary has every rank", ctx=ctx)
