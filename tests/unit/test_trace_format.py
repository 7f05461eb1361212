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
