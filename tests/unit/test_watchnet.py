"""The tree of the watchdog's messages (hpcpar.core.watchnet): every rank reached once, P-1 edges."""

import pytest

from hpcpar.core.watchnet import BACKUP, COORDINATOR, FANOUT, children, depth


def _walk(size: int, root: int) -> dict[int, int]:
    """Hops from ``root`` to each rank, following children(); fails on a rank reached twice."""
    hops, frontier = {root: 0}, [root]
    while frontier:
        nxt = []
        for rank in frontier:
            for child in children(rank, size, root):
                assert child not in hops, f"rank {child} reached twice (size {size}, root {root})"
                hops[child] = hops[rank] + 1
                nxt.append(child)
        frontier = nxt
    return hops


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 8, 17, 21, 22, 64, 100, 1000])
@pytest.mark.parametrize("root", [COORDINATOR, BACKUP])
def test_the_tree_reaches_every_rank_once_with_size_minus_one_messages(size, root):
    root %= size
    hops = _walk(size, root)
    assert sorted(hops) == list(range(size))
    assert sum(len(children(r, size, root)) for r in range(size)) == size - 1
    assert max(hops.values()) == depth(size)
    assert all(len(children(r, size, root)) <= FANOUT for r in range(size))


@pytest.mark.parametrize("size", [2, 3, 8, 100])
def test_the_coordinator_is_a_leaf_of_the_backup_tree(size):
    # a coordinator that cannot answer withholds the backup round from no other rank
    assert children(COORDINATOR, size, root=BACKUP) == []


def test_depth_grows_as_log4():
    assert [depth(n) for n in (1, 2, 5, 6, 21, 22, 85, 86)] == [0, 1, 1, 2, 2, 3, 3, 4]
