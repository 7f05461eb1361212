"""Every job's ``parse_args`` (:func:`hpcpar.launch.options.parse_checked`): argparse's problems and
the job's own checks end with one ``error:`` line and status 2, without MPI."""

import importlib.util
import subprocess
import sys

import pytest
from helpers import JOBS

#: A job, good options and what they give, bad options and the error's text.
CASES = [
    ("heat", ["--n", "16"], ("n", 16), ["--alpha", "0"], "--alpha must be a positive"),
    ("pi", ["--samples", "4e3"], ("samples", 4000), ["--samples", "1.5"], "not a whole number"),
    ("fibonacci", ["--count", "3"], ("count", 3), ["--count", "-3"], "--count must be >= 0"),
    ("sort", ["--n", "100"], ("n", 100), ["--n", "2.5"], "not a whole number"),
    ("crawler", ["--serve-demo"], ("serve_demo", True), ["--serve-demo", "--threads", "0"],
     "--threads must be >= 1"),
    ("mandelbrot", ["--width", "8"], ("width", 8), ["--max-iter", "70000"], "--max-iter must be <= 65535"),
]


def _job(name: str):
    spec = importlib.util.spec_from_file_location(f"job_{name}", JOBS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,good,want,bad,text", CASES, ids=[c[0] for c in CASES])
def test_parse_args_checks_the_options_like_the_job(name, good, want, bad, text, capsys):
    job = _job(name)
    assert getattr(job.parse_args(good), want[0]) == want[1]
    with pytest.raises(SystemExit) as exc:
        job.parse_args(bad)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("usage: ")
    assert [line for line in err.splitlines() if ": error: " in line] == [
        next(line for line in err.splitlines() if text in line)], err


def test_parsing_a_jobs_options_starts_no_mpi():
    code = (f"import importlib.util, sys; s = importlib.util.spec_from_file_location('pi', {str(JOBS / 'pi.py')!r}); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); m.parse_args(['--samples', '10']); "
            "print('mpi4py.MPI' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr
