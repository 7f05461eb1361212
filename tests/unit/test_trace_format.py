"""The trace recorder and the Gantt summary, without MPI."""

import numpy as np

from hpcpar.observe import gantt, trace


def test_tracing_off_records_nothing_and_on_records_a_span():
    rec = trace.Recorder()

    class Thing:
        @trace.traced(trace.IO, "write", trace.array_bytes)
        def write(self, name, data):
            return data.sum()

    old = trace.RECORDER
    assert Thing().write("x", np.ones(4)) == 4
    assert len(old.events()) == 0 or not old.on
    rec.reset(10, 1)
    rec.add(trace.REGION, "compute", 1.0, 2.0)
    rec.add(trace.REGION, "compute", 2.0, 3.0, 8, 1, 2)
    ev = rec.events()
    assert list(ev["t0"]) == [1.0, 2.0] and list(ev["nbytes"]) == [0, 8]
    assert rec.names == [(trace.REGION, "compute")] and list(ev["what"]) == [0, 0]


def test_a_full_recorder_counts_what_it_drops():
    rec = trace.Recorder()
    rec.reset(1, 1)  # at least one chunk is kept
    for i in range(trace.CHUNK + 5):
        rec.add(trace.TASK, "task", float(i), i + 0.5, 0, i, 0)
    assert len(rec.events()) == trace.CHUNK and rec.dropped == 5


def test_summary_parts_add_up_to_the_window():
    def x(tid, cat, ts, dur, name="s"):
        return {"ph": "X", "pid": 0, "tid": tid, "cat": cat, "name": name, "ts": ts, "dur": dur, "args": {}}
    data = {"traceEvents": [
        {"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": "h"}},
        {"ph": "M", "name": "thread_name", "pid": 0, "tid": 0, "args": {"name": "rank 0"}},
        {"ph": "M", "name": "thread_name", "pid": 0, "tid": 1, "args": {"name": "rank 1"}},
        x(0, "region", 0, 1e6), x(0, "collective", 1e6, 1e6), x(0, "wait", 1e6, 6e5),
        x(1, "region", 0, 1.6e6), x(1, "collective", 1.6e6, 4e5), x(1, "io", 1.7e6, 2e5),
    ]}
    s = gantt.summarize(data)
    assert abs(s["window"] - 2.0) < 1e-9
    r0, r1 = s["ranks"][0], s["ranks"][1]
    assert abs(r0["wait"] - 0.6) < 1e-9 and abs(r0["communication"] - 0.4) < 1e-9
    assert abs(r0["compute"] - 1.0) < 1e-9 and r0["io"] == 0
    assert abs(r1["communication"] - 0.4) < 1e-9 and r1["io"] == 0 and abs(r1["compute"] - 1.6) < 1e-9
    for parts in s["ranks"].values():
        assert abs(sum(parts.values()) - s["window"]) < 1e-9
    assert "rank" in gantt.format_summary(s)


def test_the_packed_layout_is_the_event_dtype():
    import struct

    assert trace.SIZE == trace.EVENT.itemsize == struct.calcsize("<ddiqqq")
    rec = trace.Recorder()
    rec.reset(trace.CHUNK, 1)
    rec.add(trace.TASK, "task", 1.25, 2.5, 2**40, 7, -3)
    ev = rec.events()
    assert ev.dtype == trace.EVENT and ev.tolist() == [(1.25, 2.5, 0, 2**40, 7, -3)]


def test_spans_across_chunks_are_kept_in_order_up_to_the_exact_cap():
    rec = trace.Recorder()
    cap = 2 * trace.CHUNK + 123  # not a multiple of the chunk
    rec.reset(cap, 1)
    n = 3 * trace.CHUNK + 50
    for i in range(n):
        rec.add(trace.ITEM, "item", float(i), i + 0.5, 0, i, 1)
    ev = rec.events()
    assert len(ev) == cap and rec.dropped == n - cap
    assert list(ev["a"]) == list(range(cap)) and np.array_equal(ev["t0"], np.arange(cap, dtype=float))
    assert len(rec.events()) == cap  # reading does not change what is kept
    rec.reset(cap, 1)
    assert len(rec.events()) == 0 and rec.dropped == 0


def test_values_beyond_int64_are_recorded_as_minus_one():
    rec = trace.Recorder()
    rec.reset(trace.CHUNK, 1)
    rec.add(trace.IO, "w", 0.0, 1.0, 2**70, np.int64(5), None)  # type: ignore[arg-type]
    rec.add(trace.IO, "w", 1.0, 2.0, 16)
    ev = rec.events()
    assert ev[["nbytes", "a", "b"]].tolist() == [(-1, 5, -1), (16, -1, -1)]


def test_a_name_keeps_its_index_across_resets():
    rec = trace.Recorder()
    i = rec.name_id(trace.EXCHANGE, "exchange_begin")
    rec.reset(trace.CHUNK, 4)
    assert rec.name_id(trace.EXCHANGE, "exchange_begin") == i
    rec.put(i, 0.0, 1.0, 64, 2)
    assert rec.names[rec.events()["what"][0]] == (trace.EXCHANGE, "exchange_begin")
