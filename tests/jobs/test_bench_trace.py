"""``hpcpar bench trace`` launched as a real MPI job: the table's structure, never its timings."""

import re

import pytest
from helpers import run_mpi

pytestmark = pytest.mark.timeout(120)

HOOKS = ["marked call (collectives)", "timer region", "farm task", "traced method (exchange, write)",
         "ctx.allreduce 8 B"]


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_bench_trace_prints_each_hook_off_on_and_the_span(ranks):
    r = run_mpi(ranks, ["-m", "hpcpar", "bench", "trace", "--repeats", "1", "--calls", "3000"], timeout=100)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"hpcpar bench trace: {ranks} ranks" in r.stdout and r.stdout.count("hpcpar bench trace") == 1
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in r.stdout.splitlines()
            if ln.startswith("|") and not set(ln) <= set("|-: ")]
    assert rows[0] == ["hook", "off ns", "on ns", "span ns"], r.stdout
    assert [row[0] for row in rows[1:]] == HOOKS, r.stdout
    for hook, off, on, span in rows[1:]:
        assert int(off) > 0 and int(on) > 0, (hook, r.stdout)
        assert re.fullmatch(r"\d+( OVER)?", span), (hook, span)
    assert "44 bytes per kept span" in r.stdout
