"""The PMPI counting library (hpcpar.bench.counting), tested by launching real jobs under it.

A library cannot be preloaded into a running process, so these tests are plain
pytest: they build the library, start small jobs with it preloaded and read the
counts each rank writes to a JSON file.
"""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from hpcpar.bench import counting

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def lib() -> str:
    try:
        cc = counting.compiler()
    except FileNotFoundError as exc:
        pytest.skip(f"no mpicc to build the PMPI counting library: {exc}")
    show = subprocess.run([cc, "-show"], capture_output=True, text=True, timeout=60).stdout.split()
    if show and not shutil.which(show[0]):
        pytest.skip(f"{cc} calls the C compiler {show[0]!r}, which is not installed")
    return counting.build()


def run_counted(tmp_path, lib: str, ranks: int, body: str) -> list[dict]:
    """Run ``body`` (which sets ``snap``, a counting snapshot) on ``ranks`` ranks; every rank's ``snap``."""
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent("""
        import json, sys
        import numpy as np
        from mpi4py import MPI
        from hpcpar.bench import counting
        comm = MPI.COMM_WORLD
        counters = counting.Counters()
    """) + textwrap.dedent(body) + textwrap.dedent("""
        snap = counting.fold(snap)
        with open(f"{sys.argv[1]}/{comm.rank}.json", "w") as fh:
            json.dump({k: [c.calls, c.sent, c.recv] for k, c in snap.items()}, fh)
    """))
    cmd = counting.job_command(ranks, [sys.executable, str(path), str(tmp_path)], lib)
    r = subprocess.run(["timeout", "150", *cmd], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(ranks)]


def test_without_the_library_the_counters_say_how_to_load_it():
    assert not counting.Counters.loaded()
    with pytest.raises(RuntimeError, match="LD_PRELOAD"):
        counting.Counters()


@pytest.mark.parametrize("ranks", [2, 4])
def test_raw_mpi4py_calls_are_counted_exactly(tmp_path, lib, ranks):
    snaps = run_counted(tmp_path, lib, ranks, """
        a, b = np.ones(1), np.empty(1)
        block = np.zeros(128)            # 1 KB
        every = np.empty(128 * comm.size)
        counters.reset()
        for _ in range(10):
            comm.Allreduce(a, b)         # 8 bytes each
        for _ in range(3):
            comm.Bcast(block, root=0)
        comm.Allgather(block, every)
        comm.Barrier()
        snap = counters.read()
    """)
    for rank, snap in enumerate(snaps):
        kb = 1024
        assert snap["Allreduce"] == [10, 80, 80], (rank, snap)
        assert snap["Bcast"] == ([3, 3 * kb, 0] if rank == 0 else [3, 0, 3 * kb]), (rank, snap)
        assert snap["Allgather"] == [1, kb, ranks * kb], (rank, snap)
        assert snap["Barrier"] == [1, 0, 0], (rank, snap)
        assert set(snap) == {"Allreduce", "Bcast", "Allgather", "Barrier"}, (rank, snap)


def test_point_to_point_and_v_collectives_count_the_bytes_of_each_rank(tmp_path, lib):
    snaps = run_counted(tmp_path, lib, 3, """
        counts = [1, 2, 3]               # float64 elements per rank
        displs = [0, 1, 3]
        mine = np.full(counts[comm.rank], float(comm.rank))
        full = np.empty(6)
        counters.reset()
        comm.Allgatherv(mine, [full, counts, displs, MPI.DOUBLE])
        comm.Scatterv([full, counts, displs, MPI.DOUBLE] if comm.rank == 0 else None, mine, root=0)
        nxt, prv = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
        comm.Sendrecv(np.zeros(4), dest=nxt, recvbuf=np.empty(4), source=prv)
        comm.Sendrecv(np.zeros(4), dest=MPI.PROC_NULL, recvbuf=np.empty(4), source=MPI.PROC_NULL)
        snap = counters.read()
    """)
    for rank, snap in enumerate(snaps):
        mine = 8 * [1, 2, 3][rank]
        assert snap["Allgatherv"] == [1, mine, 48], (rank, snap)
        assert snap["Scatterv"] == [1, 48 if rank == 0 else 0, mine], (rank, snap)
        assert snap["Sendrecv"] == [2, 32, 32], (rank, snap)


_OPERATIONS = """
    import hpcpar
    ctx = hpcpar.Context()
    me, p = comm.rank, comm.size
    x, one, res = np.float64(1.0), np.ones(1), np.empty(1)
    kb, kbuf = np.arange(128.0), np.empty(128)
    full, block = np.zeros(128 * p), np.zeros(128)
    counts, displs = [1024] * p, [1024 * r for r in range(p)]
    ops = {
        "allreduce": (lambda: ctx.allreduce(x), lambda: comm.Allreduce(one, res)),
        "bcast": (lambda: ctx.bcast(kb if me == 0 else None), lambda: comm.Bcast(kb if me == 0 else kbuf)),
        "scatter": (lambda: ctx.scatter(full if me == 0 else None),
                    lambda: comm.Scatterv([full, counts, displs, MPI.BYTE] if me == 0 else None,
                                          [block, 1024, MPI.BYTE])),
        "gather": (lambda: ctx.gather(block),
                   lambda: comm.Gatherv([block, 1024, MPI.BYTE],
                                        [full, counts, displs, MPI.BYTE] if me == 0 else None)),
        "barrier": (lambda: ctx.barrier(), lambda: comm.Barrier()),
    }
    snap = {}
    for name, (ours, raw) in ops.items():
        for fn, tag in ((ours, "hpcpar"), (raw, "raw")):
            for _ in range(3):
                fn()                     # warm-up: plans and counts are settled once
            counters.reset()
            for _ in range(20):
                fn()
            c = counting.total(counters.read()).scaled(1 / 20)
            snap[f"{name} {tag}"] = c
    ctx.free()
"""


def _per_call(tmp_path, lib, ranks: int) -> dict[str, tuple[float, float]]:
    """Per operation: (extra MPI calls, extra bytes received) of hpcpar over raw mpi4py, largest rank."""
    snaps = run_counted(tmp_path, lib, ranks, _OPERATIONS)
    out = {}
    for name in ("allreduce", "bcast", "scatter", "gather", "barrier"):
        calls = max(s[f"{name} hpcpar"][0] - s[f"{name} raw"][0] for s in snaps)
        recv = max(s[f"{name} hpcpar"][2] - s[f"{name} raw"][2] for s in snaps)
        out[name] = (calls, recv)
    return out

def test_bench_scale_counts_raw_checked_and_unchecked_per_rank_count(tmp_path, lib):
    out = tmp_path / "scale.json"
    r = subprocess.run(["timeout", "170", sys.executable, "-m", "hpcpar", "bench", "scale", "--ranks", "2,3",
                        "--repeat", "2", "--warmup", "1", "--side", "4", "--json", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    header = next(ln for ln in r.stdout.splitlines() if ln.startswith("| P |"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "P", "operation", "raw", "checked", "unchecked", "checked - raw", "unchecked - raw", "checked MPI calls"]
    data = json.loads(out.read_text())
    ops = ["allreduce f64", "allreduce object", "bcast 1 KB", "scatter 1 KB/rank", "gather 1 KB/rank",
           "allgather 1 KB/rank", "barrier", "halo 2-D faces 4x4/rank", "output write 1 KB/rank"]
    assert [(row["ranks"], row["op"]) for row in data["rows"]] == [(p, op) for p in (2, 3) for op in ops]
    for row in data["rows"]:
        for mode in ("raw", "checked", "unchecked"):
            assert set(row[mode]) == {"calls", "recv", "sent", "funcs"}, (row["op"], mode)
            assert 1 <= row[mode]["calls"] <= sum(row[mode]["funcs"].values()), (row["op"], mode)
        if row["op"] == "allreduce f64":
            assert row["raw"] == {"calls": 1, "recv": 8, "sent": 8, "funcs": {"Allreduce_c": 1}}
        if row["op"] in ("allreduce f64", "barrier"):  # unchecked: the raw call and nothing else
            assert row["unchecked"] == row["raw"], row
        if row["op"] in ("bcast 1 KB", "scatter 1 KB/rank"):  # unchecked: one Bcast of the announcement
            assert row["unchecked"]["funcs"] == {"Bcast_c": 1}, row
        if "gather" in row["op"]:  # the block lengths, then the data; checked: the agreement instead
            v = "Allgatherv_c" if row["op"].startswith("allgather") else "Gatherv_c"
            assert row["unchecked"]["funcs"] == {v.replace("v_c", "_c"): 1, v: 1}, row
            assert row["checked"]["funcs"] == {"Allreduce_c": 1, v: 1}, row
        if row["op"].startswith("halo"):  # faces only, four Sendrecv on every rank, walls included
            assert row["raw"]["funcs"] == {"Sendrecv_c": 4}, row
            # a grid of one kind of array: no agreement per exchange, checked or not
            assert "Allreduce_c" not in row["checked"]["funcs"], row
    assert [m["op"] for m in data["model"]] == ops  # the fit of the checked mode's extra bytes
    assert all(set(m["projected"]) == {"1024", "8192", "65536"} for m in data["model"])


@pytest.mark.slow
def test_the_check_traffic_of_checked_collectives_does_not_grow_with_the_ranks(tmp_path, lib):
    (tmp_path / "4").mkdir()
    (tmp_path / "16").mkdir()
    at4 = _per_call(tmp_path / "4", lib, 4)
    at16 = _per_call(tmp_path / "16", lib, 16)
    print("extra (calls, bytes received) per call over raw mpi4py:", at4, "at 4 ranks;", at16, "at 16")
    assert at4["allreduce"][1] > 0
    assert at16 == at4, f"{at4} at 4 ranks, {at16} at 16"
    for name, (calls, _) in at16.items():
        assert calls <= 1, f"{name}: {calls} MPI calls beyond raw mpi4py's"


_OUTPUT_WRITE = """
    import hpcpar
    ctx = hpcpar.Context()
    with hpcpar.Output(ctx, f"{sys.argv[1]}/out.h5", provenance=False) as out:
        block = np.arange(16.0) + comm.rank  # 128 bytes per rank, written as one dataset
        for i in range(3):
            out.write(f"warm{i}", block)
        counters.reset()
        for i in range(10):
            out.write(f"x{i}", block)
        snap = {k: c.scaled(1 / 10) for k, c in counters.read().items()}
        mode = out.mode
    ctx.free()
"""


def _write_recv(tmp_path, lib, ranks: int) -> list[dict[str, float]]:
    """Bytes received per ``Output.write`` on each rank, per MPI function."""
    return [{k: c[2] for k, c in snap.items() if c[2]}
            for snap in run_counted(tmp_path, lib, ranks, _OUTPUT_WRITE)]


@pytest.mark.slow
def test_the_agreement_traffic_of_an_output_write_does_not_grow_with_the_ranks(tmp_path, lib):
    (tmp_path / "4").mkdir()
    (tmp_path / "16").mkdir()
    at4, at16 = _write_recv(tmp_path / "4", lib, 4), _write_recv(tmp_path / "16", lib, 16)
    print("bytes received per Output.write: root", at4[0], "at 4 ranks,", at16[0], "at 16; rank 1",
          at4[1], "at 4,", at16[1], "at 16")
    assert all(snap == at4[1] for snap in at4[1:] + at16[1:]), (at4, at16)
    assert sum(at4[1].values()) < 1024, at4[1]  # agreement, the file's replies: a few hundred bytes
    # Root alone receives each rank's block (128 bytes) and its box (2 int64), as the
    # serial path gathers the data to root; nothing else it receives grows.
    grown = {k: at16[0].get(k, 0) - at4[0].get(k, 0) for k in {*at4[0], *at16[0]}}
    assert {k: v for k, v in grown.items() if v} == {"Irecv": 12 * 128, "Gather": 12 * 16}, (at4[0], at16[0])
