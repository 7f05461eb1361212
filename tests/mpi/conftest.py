"""Fixtures shared by the MPI tests."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def shared_dir(ctx):
    """A fresh directory that every rank sees (made by root), removed after the test."""
    path = tempfile.mkdtemp(prefix="hpcpar-test-") if ctx.is_root else None
    path = ctx.comm.bcast(path, root=0)
    yield Path(path)
    ctx.comm.Barrier()
    if ctx.is_root:
        shutil.rmtree(path, ignore_errors=True)


