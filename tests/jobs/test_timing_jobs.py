"""Timing report, logging and scaling on real MPI jobs (launched from plain pytest)."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from helpers import JOBS, run_mpi

pytestmark = pytest.mark.timeout(180)


def test_timing_report_of_a_job(tmp_path):
    report = tmp_path / "r.json"
    r = run_mpi(3, [str(JOBS / "pi.py"), "--samples", "3e6"], env={"HPCPAR_REPORT_JSON": str(report)})
    assert r.returncode == 0, r.stderr
    assert "hpcpar timing: 3 ranks" in r.stderr and r.stderr.count("hpcpar timing") == 1
    assert "collectives checked" in r.stderr, r.stderr
    data = json.loads(report.read_text())
    assert data["collectives"] == "checked"
    names = [x["name"] for x in data["regions"]]
    assert names == ["compute", "reduce"] and data["ranks"] == 3
    compute = data["regions"][0]
    assert len(compute["per_rank"]) == 3 and compute["max"] >= compute["mean"] >= compute["min"] > 0


def test_logger_root_only_unless_asked(tmp_path):
    p = tmp_path / "log.py"
    p.write_text(textwrap.dedent("""
        import hpcpar
        log = hpcpar.get_logger("job")
        def main(ctx):
            log.info("hello from %d", ctx.rank)
            log.debug("hidden")
        hpcpar.run(main)
    """))
    r = run_mpi(2, [str(p)], env={"HPCPAR_REPORT": "0"})
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("hello") == 1 and "[rank 0/2] INFO job: hello from 0" in r.stderr
    r = run_mpi(2, [str(p)], env={"HPCPAR_LOG_ALL": "1", "HPCPAR_LOG_LEVEL": "DEBUG", "HPCPAR_REPORT": "0"})
    assert "[rank 1/2] INFO job: hello from 1" in r.stderr and r.stderr.count("hidden") == 2


def test_hpcpar_scale_prints_table_and_plot(tmp_path):
    png, js, cs = tmp_path / "s.png", tmp_path / "s.json", tmp_path / "s.csv"
    r = subprocess.run([sys.executable, "-m", "hpcpar", "scale", str(JOBS / "pi.py"), "--ranks", "1,2",
                        "--repeat", "2", "--plot", str(png), "--json", str(js), "--csv", str(cs),
                        "--", "--samples", "2e6"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| ranks | best s | median s | max s | speedup | efficiency |" in r.stdout
    assert r.stdout.count("run 1/2") == 2 and r.stdout.count("run 2/2") == 2, r.stdout
    data = json.loads(js.read_text())
    rows = data["rows"]
    assert data["repeat"] == 2 and data["cpus"] >= 1
    assert [x["ranks"] for x in rows] == [1, 2] and rows[0]["speedup"] == 1.0
    for row in rows:
        assert len(row["runs"]) == 2 and row["seconds"] == min(row["runs"]) and row["max"] == max(row["runs"])
        assert row["speedup_min"] <= row["speedup"] and row["efficiency_min"] <= row["efficiency"]
    lines = cs.read_text().splitlines()
    assert lines[0].startswith("ranks,seconds,median,max") and len(lines) == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _one_cpu() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")
def test_hpcpar_scale_warns_once_when_ranks_outnumber_the_cpus(tmp_path):
    """Started on one CPU, 2 ranks are oversubscribed: one warning, the point marked."""
    js = tmp_path / "s.json"
    r = subprocess.run([sys.executable, "-m", "hpcpar", "scale", str(JOBS / "pi.py"), "--ranks", "1,2",
                        "--repeat", "1", "--json", str(js), "--", "--samples", "1e5"],
                       capture_output=True, text=True, timeout=120, preexec_fn=_one_cpu)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning: 2 ranks outnumber the 1 CPU this process may use") == 1, r.stderr
    assert re.search(r"\|\s+2\* \|", r.stdout) and "* more ranks than CPUs here (1)" in r.stdout, r.stdout
    assert json.loads(js.read_text())["cpus"] == 1


def test_hpcpar_scale_refuses_a_repeat_below_one():
    r = subprocess.run([sys.executable, "-m", "hpcpar", "scale", str(JOBS / "pi.py"), "--repeat", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--repeat needs at least 1 run" in r.stderr, r.stderr


def test_hpcpar_run_report_flag(tmp_path):
    p = tmp_path / "plain.py"
    p.write_text("import hpcpar\nhpcpar.run(lambda ctx: None)\n")
    r = subprocess.run([sys.executable, "-m", "hpcpar", "run", "--report", "-n", "2", str(p)],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "HPCPAR_CHECKS": "0"})
    assert r.returncode == 0 and "hpcpar timing: 2 ranks" in r.stderr and "no timed regions" in r.stderr
    assert "collectives unchecked" in r.stderr, r.stderr


def _table(stderr: str) -> dict[str, list[str]]:
    """The rows of the timing table root printed, by region name."""
    lines = stderr[stderr.index("hpcpar timing"):].splitlines()[2:]
    rows = {}
    for line in lines:
        if not line.startswith("  "):
            break
        cells = line.rsplit(None, 8)  # region names may hold spaces
        rows[cells[0].strip()] = cells[1:]
    return rows


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_mandelbrot_prints_the_imbalances_its_timing_table_shows(tmp_path, ranks):
    report = tmp_path / "r.json"
    h, per_task = 90, 4
    r = run_mpi(ranks, [str(JOBS / "mandelbrot.py"), "--width", "120", "--height", str(h), "--max-iter", "80",
                        "--rows", str(per_task)], env={"HPCPAR_REPORT_JSON": str(report)})
    assert r.returncode == 0, r.stderr
    said = {region: value for value, region in
            re.findall(r"load imbalance (\d+\.\d\d) \(max/mean compute time: region '([a-z ]+)'", r.stdout)}
    assert set(said) == {"static compute", "farm tasks"}, r.stdout
    data = {x["name"]: x for x in json.loads(report.read_text())["regions"]}
    table = _table(r.stderr)
    for region, value in said.items():
        assert f"{data[region]['imbalance']:.2f}" == value, (region, data[region], r.stdout)
        assert table[region][4] == value, (region, table[region], r.stdout)  # the imbal. column
    tasks = data["farm tasks"]
    assert sum(tasks["calls_per_rank"]) == -(-h // per_task)  # every task counted once, on the rank that ran it
    low, high = min(tasks["calls_per_rank"]), max(tasks["calls_per_rank"])
    assert table["farm tasks"][0] == (str(high) if low == high else f"{low}-{high}")
    assert data["static compute"]["calls_per_rank"] == [1] * ranks


def test_heat_says_how_its_timing_table_counts_calls(tmp_path):
    report = tmp_path / "r.json"
    r = run_mpi(2, [str(JOBS / "heat.py"), "--n", "32", "--steps", "7"], env={"HPCPAR_REPORT_JSON": str(report)})
    assert r.returncode == 0, r.stderr
    assert "the timing table counts 14 calls of 'compute' and 'exchange' for 7 steps" in r.stdout, r.stdout
    data = {x["name"]: x for x in json.loads(report.read_text())["regions"]}
    assert data["compute"]["calls_per_rank"] == [14, 14] and data["exchange"]["calls_per_rank"] == [14, 14]
