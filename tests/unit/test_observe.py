"""Timing summaries, scaling arithmetic and progress lines (pure, no MPI)."""

import io
import time

import pytest

from hpcpar.launch import scale
from hpcpar.observe import timing
from hpcpar.observe.progress import progress


def test_region_accumulates_and_nests():
    t = timing.Timers()
    r = t("work")
    for _ in range(3):
        with r:
            with t("work"):  # nested: counted once
                time.sleep(0.002)
    assert r.calls == 3 and r.total >= 0.006
    assert t("work") is r

    @t("deco")
    def f(x):
        return x + 1

    assert f(1) == 2 and t("deco").calls == 1
    with pytest.raises(ValueError):
        t("")


def test_summarize_imbalance_and_share():
    per_rank = [{"compute": (10, 1.0), "halo": (10, 0.5)},
                {"compute": (10, 3.0)}]
    s = timing.summarize(per_rank, walls=[4.0, 3.5])
    assert s["ranks"] == 2 and s["wall"] == 4.0
    c, h = s["regions"]
    assert (c["min"], c["mean"], c["max"]) == (1.0, 2.0, 3.0)
    assert c["imbalance"] == pytest.approx(1.5) and c["share"] == pytest.approx(0.5)
    assert c["slowest_rank"] == 1
    assert h["per_rank"] == [0.5, 0.0] and h["imbalance"] == pytest.approx(2.0)
    text = timing.format_report(s)
    assert "compute" in text and "1.50" in text and "rank 1" in text


def test_unequal_call_counts_show_as_a_range():
    per_rank = [{"tasks": (21, 1.0), "gather": (1, 0.2)}, {"tasks": (30, 1.1), "gather": (1, 0.1)},
                {"tasks": (24, 0.9), "gather": (1, 0.3)}]
    s = timing.summarize(per_rank, walls=[2.0, 2.0, 2.0])
    tasks, gather = s["regions"]
    assert (tasks["calls"], tasks["calls_min"], tasks["calls_per_rank"]) == (30, 21, [21, 30, 24])
    assert (gather["calls"], gather["calls_min"]) == (1, 1)
    lines = timing.format_report(s).splitlines()
    assert lines[1].split()[:2] == ["region", "calls"]
    assert lines[2].split()[:2] == ["tasks", "21-30"] and lines[3].split()[:2] == ["gather", "1"]


def test_weak_args_and_efficiency():
    assert scale.weak_args(["--samples", "1e6", "--x", "1"], "--samples", 4) == ["--samples", "4000000", "--x", "1"]
    assert scale.weak_args(["--n=100"], "--n", 4, power=0.5) == ["--n=200"]
    with pytest.raises(ValueError, match="--steps"):
        scale.weak_args(["--n", "5"], "--steps", 2)
    pts = [scale.Point(1, 8.0), scale.Point(2, 4.0), scale.Point(4, 4.0)]
    rows = scale.efficiency_table(pts)
    assert [r["speedup"] for r in rows] == [1.0, 2.0, 2.0]
    assert [r["efficiency"] for r in rows] == [1.0, 1.0, 0.5]
    weak = scale.efficiency_table(pts, weak=True)
    assert [r["efficiency"] for r in weak] == [1.0, 2.0, 2.0]


def test_scaling_rows_keep_the_best_run_and_the_spread(tmp_path):
    pts = [scale.Point(1, 8.0, runs=[9.0, 8.0, 8.5]), scale.Point(2, 4.0, runs=[4.0, 5.0, 4.4])]
    rows = scale.efficiency_table(pts)
    one, two = rows
    assert (one["seconds"], one["median"], one["max"]) == (8.0, 8.5, 9.0)
    assert (two["seconds"], two["median"], two["max"], two["runs"]) == (4.0, 4.4, 5.0, [4.0, 5.0, 4.4])
    assert two["speedup"] == 2.0 and two["speedup_min"] == pytest.approx(1.6)
    assert two["efficiency"] == 1.0 and two["efficiency_min"] == pytest.approx(0.8)
    assert scale.table_rows(rows, available=1)[1] == ["2*", "4.000", "4.400", "5.000", "2.00", "1.00"]
    assert scale.table_rows(rows, available=2)[1][0] == "2"
    scale.write_csv(rows, str(tmp_path / "s.csv"))
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "ranks,seconds,median,max,speedup,speedup_min,efficiency,efficiency_min,runs"
    assert lines[2].startswith("2,4.0,4.4,5.0,2.0,1.6") and lines[2].endswith(",4.000000 5.000000 4.400000")


def test_oversubscription_is_named_once():
    assert scale.oversubscribed_note([1, 2], 2) is None
    note = scale.oversubscribed_note([1, 2, 4, 8], 2)
    assert note is not None and "4, 8 ranks outnumber the 2 CPUs" in note and "sched_getaffinity" in note
    assert scale.cpus() >= 1


def test_the_efficiency_axis_shows_every_point(tmp_path):
    pytest.importorskip("matplotlib")
    pts = [scale.Point(1, 2.54, runs=[2.54, 2.6]), scale.Point(2, 1.0, runs=[1.0, 1.1])]
    rows = scale.efficiency_table(pts)
    assert rows[1]["efficiency"] == pytest.approx(1.27)
    low, high = scale.plot_scaling(rows, str(tmp_path / "s.png"), "job", available=1)
    assert low == 0 and high >= 1.27 * 1.05 - 1e-9
    assert scale.plot_scaling(scale.efficiency_table(pts[:1]), str(tmp_path / "t.png"), "job") == (0, 1.05)
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_progress_plain_lines_and_non_root(monkeypatch):
    monkeypatch.setenv("HPCPAR_PROGRESS_EVERY", "0")
    out = io.StringIO()
    assert list(progress(range(3), desc="steps", stream=out)) == [0, 1, 2]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("steps: 1/3 (33%)") and lines[-1].endswith("done")
    out = io.StringIO()
    items = [1, 2]
    assert progress(items, is_root=False, stream=out) is items and out.getvalue() == ""
    monkeypatch.setenv("HPCPAR_PROGRESS", "0")
    assert progress(items, stream=out) is items


def test_env_flag_reads_on_off_switches(monkeypatch):
    from hpcpar import env

    monkeypatch.delenv("HPCPAR_CHECKS", raising=False)
    assert env.flag("HPCPAR_CHECKS", True) and not env.flag("HPCPAR_CHECKS", False)
    for off in ("0", "false", "No", " OFF "):
        monkeypatch.setenv("HPCPAR_CHECKS", off)
        assert not env.flag("HPCPAR_CHECKS", True), off
    for on in ("1", "yes", "true"):
        monkeypatch.setenv("HPCPAR_CHECKS", on)
        assert env.flag("HPCPAR_CHECKS", False), on
    monkeypatch.setenv("HPCPAR_CHECKS", " ")
    assert env.flag("HPCPAR_CHECKS", True)  # empty: the default


def test_info_says_which_collective_mode_is_set(monkeypatch):
    from hpcpar.observe.info import collectives_mode, format_collectives

    def line(**kw):
        return format_collectives(collectives_mode(**kw))

    monkeypatch.delenv("HPCPAR_CHECKS", raising=False)
    monkeypatch.delenv("HPCPAR_DEBUG", raising=False)
    assert line().startswith("checked (HPCPAR_CHECKS unset)") and "debug" not in line()
    monkeypatch.setenv("HPCPAR_CHECKS", "1")
    assert line().startswith("checked (HPCPAR_CHECKS=1)")
    monkeypatch.setenv("HPCPAR_CHECKS", "0")
    assert line().startswith("unchecked (HPCPAR_CHECKS=0)") and "debug" not in line()
    mode = collectives_mode()
    assert (mode["checks"], mode["debug"], mode["HPCPAR_CHECKS"], mode["HPCPAR_DEBUG"]) == (False, False, "0", None)
    monkeypatch.setenv("HPCPAR_DEBUG", "1")
    assert line().startswith("unchecked (HPCPAR_CHECKS=0)") and "; debug (HPCPAR_DEBUG=1)" in line()
    monkeypatch.delenv("HPCPAR_CHECKS")
    assert line().startswith("checked (HPCPAR_CHECKS unset)") and "debug (HPCPAR_DEBUG=1)" in line()
    # a context's own flags win over the variables
    assert line(checks=False, debug=False).startswith("unchecked") and "debug" not in line(debug=False)


def test_format_info_shows_the_mode_and_ranks_that_differ():
    from hpcpar.observe.info import format_info

    checked = {"checks": True, "debug": False, "HPCPAR_CHECKS": None, "HPCPAR_DEBUG": None}
    unchecked = {**checked, "checks": False, "HPCPAR_CHECKS": "0"}
    rank = {"host": "n1", "pid": 1, "cpus": [0, 1], "collectives": checked}
    info = {"hpcpar": "x", "python": "p", "numpy": "n", "mpi4py": "m", "mpi_library": "MPICH",
            "mpi_standard": "4.1", "thread_level": "multiple", "ranks": 3,
            "h5py": {"error": "none"}, "slurm": {}, "collectives": checked,
            "per_rank": [rank, {**rank, "collectives": {**checked, "HPCPAR_CHECKS": "1"}},
                         {**rank, "collectives": unchecked}]}
    text = format_info(info)
    assert "collectives  checked (HPCPAR_CHECKS unset)" in text
    assert "rank 1" not in text.split("ranks        3")[0]  # the same mode, spelled another way
    assert "rank 2    differs from rank 0: unchecked (HPCPAR_CHECKS=0)" in text


def test_format_info_groups_the_ranks_by_host():
    from hpcpar.observe.info import format_info

    checked = {"checks": True, "debug": False, "HPCPAR_CHECKS": None, "HPCPAR_DEBUG": None}
    hosts = ["n1", "n1", "n2", "n1"]
    info = {"hpcpar": "x", "python": "p", "numpy": "n", "mpi4py": "m", "mpi_library": "MPICH",
            "mpi_standard": "4.1", "thread_level": "multiple", "ranks": 4,
            "h5py": {"error": "none"}, "slurm": {}, "collectives": checked,
            "per_rank": [{"host": h, "pid": r, "cpus": [0], "collectives": checked} for r, h in enumerate(hosts)]}
    text = format_info(info)
    assert "hosts        2: n1 (ranks 0-1,3), n2 (rank 2)" in text
    assert "rank 2    host n2 pid 2" in text
