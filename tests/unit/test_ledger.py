"""The run ledger of ``hpcpar run --hosts``: which ranks started where, and which never ended."""

import os
import time

from hpcpar.launch import ledger


def test_only_ranks_that_started_and_never_ended_are_named_by_host(tmp_path):
    d = str(tmp_path)
    for rank, pid in ((0, 10), (1, 11), (2, 12), (3, 13)):
        ledger.started(d, rank, pid)
    ledger.ended(d, 0, -9)
    ledger.ended(d, 1, 0)
    seen = ledger.read(d, 5)
    assert set(seen) == {0, 1, 2, 3} and seen[2][1:] == (12, False) and seen[1][2]
    text = ledger.lost_ranks_text(d, 5)
    host = seen[2][0]
    assert f"hpcpar: ranks 2 (pid 12), 3 (pid 13) of 5 on host {host} ended without a word" in text
    assert "rank 4 of 5 never started" in text


def test_hosts_of_the_ranks_asked_about(tmp_path):
    """What the watchdog reads on its error path: the host of each rank that did not answer."""
    d = str(tmp_path)
    ledger.started(d, 1, 11)
    ledger.started(d, 3, 13)
    (tmp_path / "rank-2").write_text("ended -9\n")  # a witness's line only: no host known
    host = ledger.read(d, 4)[1][0]
    assert ledger.hosts(d, [1, 2, 3, 5]) == {1: host, 3: host}
    assert ledger.hosts(d, []) == {} and ledger.hosts(None, [1]) == {} and ledger.hosts("", [1]) == {}


def test_nothing_is_said_when_every_rank_vanished_alike_or_none(tmp_path):
    d = str(tmp_path)
    assert ledger.lost_ranks_text(d, 2) is None  # no ledger written at all
    ledger.started(d, 0, 1)
    ledger.started(d, 1, 2)
    assert ledger.lost_ranks_text(d, 2) is None  # all alike: nothing tells them apart
    ledger.ended(d, 0, 1)
    ledger.ended(d, 1, -15)
    assert ledger.lost_ranks_text(d, 2) is None
    # No ledger directory: nothing recorded, nothing raised.
    ledger.started(None, 0, 1)
    ledger.ended(str(tmp_path / "absent"), 0, 1)


def test_the_witness_records_the_end_when_its_pipe_closes(tmp_path):
    d = str(tmp_path)
    ledger.started(d, 0, os.getpid())
    fd = ledger.witness(d, 0)
    assert fd is not None
    time.sleep(0.2)
    assert not ledger.read(d, 1)[0][2]
    os.close(fd)  # the guardian's end, as when it is killed
    deadline = time.monotonic() + 10
    while not ledger.read(d, 1)[0][2] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ledger.read(d, 1)[0][2]
    ledger.settle(d, 1, timeout=1)


def test_unfinished_ranks_are_those_whose_guardian_wrote_no_end_0(tmp_path):
    d = str(tmp_path)
    for rank in range(5):
        ledger.started(d, rank, 10 + rank)
    ledger.ended(d, 0, 0)
    (tmp_path / "rank-0").open("a").write("ended -9\n")  # its witness, after the guardian ended
    ledger.ended(d, 1, -15)  # stopped by the launcher
    ledger.ended(d, 1, 0)
    ledger.ended(d, 3, 0)
    # rank 2 started and left no end (its host lost); rank 4's only end is its witness's
    (tmp_path / "rank-4").open("a").write("ended -9\n")
    assert ledger.unfinished(d, 6) == [1, 2, 4, 5]  # rank 5: never started
    assert ledger.unfinished(d, 1) == [] and ledger.unfinished(d, 0) == []
