"""Pure parts of the task tools and jobs: no ranks needed."""

import pickle
import sys

import pytest
from helpers import JOBS

from hpcpar.tasks.farm import TaskError, default_chunksize

sys.path.insert(0, str(JOBS))
import crawler
import fibonacci


@pytest.mark.parametrize("n,size,want", [(0, 2, 1), (1, 4, 1), (10_000, 2, 1250), (9, 2, 2), (100, 3, 9)])
def test_default_chunksize_is_ceil_n_over_4_workers(n, size, want):
    assert default_chunksize(n, size) == want


def test_task_error_pickles_with_its_fields():
    err = TaskError("task 3 raised X on rank 1 (host n07)", 3, 1, "X", "Traceback ...", stage=2,
                    host="n07")
    back = pickle.loads(pickle.dumps(err))
    assert (back.index, back.rank, back.stage, back.exc_type, back.remote_traceback, back.host) == (
        3, 1, 2, "X", "Traceback ...", "n07")
    assert str(back) == str(err)


def test_links_of_resolves_relative_drops_fragments_and_other_hosts():
    base = "http://127.0.0.1:8000/"
    html = ('<a href="b.html">x</a><a href="/c#top">y</a><a href="http://example.com/z">z</a>'
            '<a href="b.html#s">again</a><a name="anchor-only">n</a>')
    assert crawler.links_of("http://127.0.0.1:8000/p/a.html", html, base) == [
        "http://127.0.0.1:8000/c", "http://127.0.0.1:8000/p/b.html"]


@pytest.mark.parametrize("url,ok", [("http://127.0.0.1:1/", True), ("http://[::1]:80/", True),
                                    ("http://localhost/", True), ("http://10.0.0.1/", False),
                                    ("http://example.com/", False)])
def test_crawler_fetches_loopback_only(url, ok):
    if ok:
        crawler.check_loopback(url)
    else:
        with pytest.raises(ValueError, match="only loopback"):
            crawler.check_loopback(url)


def test_generated_site_graph_is_connected_and_has_broken_links():
    site, targets = crawler.make_site(120, seed=9)
    graph = crawler.expected_graph(targets, "http://127.0.0.1:9/")
    fetched = [u for u, v in graph.items() if v is not None]
    assert len(fetched) == 120  # every page reachable from /
    assert any(v is None for v in graph.values())


def test_fib_loop_and_fast_doubling_agree():
    assert [fibonacci.fib(n) for n in range(10)] == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]
    assert all(fibonacci.fib(n) == fibonacci.fib_doubling(n) for n in (0, 1, 2, 50, 999, 1234))


def _checkpoint(ns, chunk):
    """The fields of a checkpoint (jobs/fibonacci.py) holding three finished tasks."""
    parts = [ns[i:i + chunk] for i in range(0, len(ns), chunk)]
    done = {i: [fibonacci.fib_doubling(n) for n in parts[i]] for i in (0, 2, len(parts) - 1)}
    return fibonacci.encode(ns, chunk, done), done


def test_fibonacci_checkpoint_round_trip_keeps_big_integers_exact():
    ns = fibonacci.inputs(40, 30000, seed=3) + [0, 25000]  # F(0) = 0; F(25000): over 5000 decimal digits
    fields, done = _checkpoint(ns, 6)
    back = fibonacci.decode(fields, ns, 6, "fib.ckpt")
    assert back == done and max(x.bit_length() for xs in back.values() for x in xs) > 17000


@pytest.mark.parametrize("damage,match", [
    ("flip", "truncated or corrupt"),
    ("cut", "truncated or corrupt"),
    ("missing", "not a fibonacci checkpoint"),
    ("other", "not a fibonacci checkpoint"),
])
def test_fibonacci_checkpoint_damage_is_a_clear_error(damage, match):
    ns = fibonacci.inputs(30, 2000, seed=1)
    fields, _ = _checkpoint(ns, 4)
    if damage == "flip":
        fields["values"][-20] ^= 1
    elif damage == "cut":
        fields["values"] = fields["values"][:len(fields["values"]) // 2]
    elif damage == "missing":
        del fields["lengths"]
    else:
        fields["format"] = b"hpcpar-heat"
    with pytest.raises(fibonacci.CheckpointError, match=match) as info:
        fibonacci.decode(fields, ns, 4, "/tmp/fib.ckpt")
    assert "'/tmp/fib.ckpt'" in str(info.value) and "delete it" in str(info.value)


def test_fibonacci_checkpoint_of_other_inputs_is_refused():
    ns = fibonacci.inputs(30, 2000, seed=1)
    fields, _ = _checkpoint(ns, 4)
    for other_ns, chunk in ((ns, 5), (fibonacci.inputs(30, 2000, seed=2), 4)):
        with pytest.raises(fibonacci.CheckpointError, match="written for other inputs"):
            fibonacci.decode(fields, other_ns, chunk, "fib.ckpt")
