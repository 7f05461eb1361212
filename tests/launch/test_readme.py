"""Every complete program in the README runs: blocks of ```python that call hpcpar.run."""

import re

import pytest
from helpers import ROOT, run_mpi

BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def programs():
    text = (ROOT / "README.md").read_text()
    found = []
    for m in BLOCK.finditer(text):
        code = m.group(1)
        if "hpcpar.run(" in code:
            line = text[:m.start()].count("\n") + 1
            found.append(pytest.param(code, id=f"README-line-{line}"))
    return found


def test_readme_has_runnable_programs():
    assert len(programs()) >= 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("code", programs())
def test_readme_program_runs_on_2_ranks(tmp_path, code):
    p = tmp_path / "snippet.py"
    p.write_text(code)
    r = run_mpi(2, [str(p)], timeout=90, cwd=str(tmp_path), env={"HPCPAR_REPORT": "0"})
    assert r.returncode == 0, f"README program failed:\n{code}\n--- stderr ---\n{r.stderr[-3000:]}"
