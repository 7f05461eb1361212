"""``hpcpar run --trace FILE`` and ``hpcpar trace FILE --png``: real jobs, real files."""

import json
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT

pytestmark = pytest.mark.timeout(180)


def hpcpar(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcpar", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_hpcpar_run_trace_writes_a_timeline_that_hpcpar_trace_draws(tmp_path):
    job = tmp_path / "job.py"
    job.write_text(textwrap.dedent("""
        import time, numpy as np, hpcpar
        def main(ctx):
            with ctx.timer("compute"):
                time.sleep(0.05 * ctx.rank)   # the last rank is the slowest
            ctx.allreduce(np.ones(4))
        hpcpar.run(main)
    """))
    out = tmp_path / "run.json"
    r = hpcpar("run", "-n", "3", "--trace", str(out), str(job))
    assert r.returncode == 0, r.stderr
    assert f"hpcpar trace: wrote {out} (" in r.stderr
    data = json.loads(out.read_text())
    spans = [e for e in data["traceEvents"] if e["ph"] == "X"]
    assert {e["tid"] for e in spans} == {0, 1, 2}
    reduce = {e["tid"]: e["args"]["wait_us"] for e in spans if e["name"] == "allreduce"}
    assert reduce[0] > 50_000 and reduce[2] < reduce[0], reduce  # rank 0 waited for rank 2
    assert {e["tid"] for e in spans if e["name"] == "finish" and e["cat"] == "wait"} == {0, 1, 2}

    png = tmp_path / "run.png"
    r = hpcpar("trace", str(out), "--png", str(png))
    assert r.returncode == 0, r.stderr
    assert "communication" in r.stdout and "wait" in r.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_hpcpar_trace_names_a_file_that_is_not_a_trace(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = hpcpar("trace", str(bad))
    assert r.returncode == 2 and "is not a trace file" in r.stderr
    r = hpcpar("trace", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "missing.json" in r.stderr
