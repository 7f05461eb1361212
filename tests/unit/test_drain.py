"""hpcpar.observe.drain: a failing rank waits until its launcher has read its report."""

import os
import socket
import subprocess
import sys
import time

from hpcpar.observe.drain import unread

# Writes 32 KiB to stdout (a pipe the test reads late), drains, then leaves a mark.
CHILD = """
import sys, pathlib
from hpcpar.observe.drain import drain
sys.stdout.write("x" * 32768)
drain(limit=float(sys.argv[2]))
pathlib.Path(sys.argv[1]).write_text("drained")
"""


def _wait_for(path, seconds):
    end = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < end:
        time.sleep(0.02)
    return path.exists()


def test_unread_counts_a_pipes_and_a_sockets_queue(tmp_path):
    r, w = os.pipe()
    try:
        assert unread(w) == 0
        os.write(w, b"y" * 1000)
        assert unread(w) == 1000
        os.read(r, 400)
        assert unread(w) == 600
        os.close(r)
        assert unread(w) == 0                  # the reader is gone: nothing to wait for
    finally:
        for fd in (r, w):
            try:
                os.close(fd)
            except OSError:
                pass
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"z" * 500)
        assert unread(a.fileno()) > 0
        b.recv(500)
        assert unread(a.fileno()) == 0
        a.sendall(b"z" * 500)
        b.close()
        assert unread(a.fileno()) == 0         # the peer is gone
    with open(tmp_path / "f", "w") as f:       # a file keeps nothing back
        f.write("text")
        f.flush()
        assert unread(f.fileno()) == 0
    assert unread(12345) == 0                  # not open: nothing to wait for


def test_drain_waits_until_the_reader_has_read(tmp_path):
    mark = tmp_path / "mark"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(mark), "60"],
                             stdout=subprocess.PIPE, env={**os.environ, "HPCPAR_ABORT_GRACE": "0"})
    try:
        time.sleep(1.0)
        assert not mark.exists(), "drain returned while its output was still unread"
        out = child.stdout.read()
        assert out == b"x" * 32768
        assert child.wait(timeout=60) == 0
        assert mark.exists()
    finally:
        child.kill()
        child.wait()


def test_drain_gives_up_after_its_limit(tmp_path):
    mark = tmp_path / "mark"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(mark), "0.5"],
                             stdout=subprocess.PIPE, env={**os.environ, "HPCPAR_ABORT_GRACE": "0"})
    try:
        assert _wait_for(mark, 60), "drain waited past its limit for a reader that never reads"
        assert child.stdout.read() == b"x" * 32768   # nothing lost by giving up
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
        child.wait()
