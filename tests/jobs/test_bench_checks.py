"""``hpcpar bench checks`` launched as a real MPI job: the table's structure, never its timings."""

import re

import pytest
from helpers import run_mpi

pytestmark = pytest.mark.timeout(180)

HEADER = ["call", "raw us", "floor/raw", "u-floor/raw", "checked us", "checked/raw", "unchecked us", "unchecked/raw", "debug us"]
CALLS = ["barrier", "allreduce 8 B", "bcast 1 KB", "scatter 1 KB/rank", "gather 1 KB/rank",
         "allgather 16x8 B/rank"]
#: call -> (checked target, unchecked target) as printed in the ratio cells
TARGETS = {"allreduce 8 B": ("2.0", "1.2"), "bcast 1 KB": ("2.5", "1.2"), "scatter 1 KB/rank": ("2.5", "1.2")}
RATIO = re.compile(r"^\d+\.\d\dx(?: \(<= (\d\.\d)x\)( MISS)?)?$")


def _table(stdout: str) -> list[list[str]]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if not set(ln) <= set("|-: ")]


@pytest.mark.parametrize("ranks", [2, 3])
def test_bench_checks_prints_every_call_and_mode_with_the_targets(ranks):
    r = run_mpi(ranks, ["-m", "hpcpar", "bench", "checks", "--repeats", "1", "--min-time", "0.005"],
                timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr
    header, *rows = _table(r.stdout)
    assert header == HEADER, r.stdout
    assert [row[0] for row in rows] == CALLS, r.stdout
    missed = 0
    for call, raw, floor, ufloor, chk, chk_ratio, unc, unc_ratio, dbg in rows:
        for t in (raw, chk, unc, dbg):
            assert float(t) > 0, (call, r.stdout)
        for f in (floor, ufloor):
            assert f.endswith("x") and float(f[:-1]) > 0, (call, r.stdout)
        got = []
        for cell in (chk_ratio, unc_ratio):
            m = RATIO.match(cell)
            assert m, (call, cell)
            got.append(m.group(1))
            if m.group(2):
                missed += 1
        assert tuple(got) == TARGETS.get(call, (None, None)), (call, r.stdout)
    assert "watchdog mark (enter + leave, local):" in r.stdout
    if ranks == 2:
        assert re.search(rf"(targets: {6 - missed} of 6 met; missed: |all 6 targets met)", r.stdout), r.stdout
    else:
        assert missed == 0, r.stdout  # targets are set for 2 ranks: shown, never marked
        assert "targets not judged: they are set for 2 ranks, this job has 3" in r.stdout
