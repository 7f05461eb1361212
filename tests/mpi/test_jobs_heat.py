"""The heat job's solver under MPI: exact-solution decay, second-order convergence, bit-identity."""

import math
import sys

import numpy as np
import pytest
from helpers import JOBS, serial_heat

import hpcpar
from hpcpar.testing import assert_all

sys.path.insert(0, str(JOBS))
import heat

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(90)]

T_END = 0.05  # with N + 1 a power of two and r = 0.2, T_END is a whole number of steps


def solve(ctx, n, steps, r, dims=None):
    with hpcpar.Grid(ctx, (n, n), dims=dims) as grid:
        u = heat.simulate(ctx, grid, heat.initial_field(grid), steps, r)
        t = steps * r * heat.spacing(n) ** 2
        return heat.relative_error(ctx, grid, u, 1.0, t), grid.gather(u)


def test_matches_exact_decay_and_converges_at_second_order(ctx):
    errors = []
    for n in (15, 31, 63):
        steps = round(T_END / (0.2 * heat.spacing(n) ** 2))
        err, _ = solve(ctx, n, steps, 0.2)
        errors.append(err)
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert_all(errors[-1] < 5e-4, f"error at 63 x 63 is {errors[-1]:.3e}", ctx=ctx)
    # halving h (and dt = r h^2 with it) cuts the error about 4x: second order
    assert_all(all(3.7 < q < 4.3 for q in ratios), f"error ratios {ratios}, errors {errors}", ctx=ctx)
    # the exact amplitude really decayed: the solution is not trivially close to the start
    assert_all(math.exp(-2 * math.pi**2 * T_END) < 0.4, "decay is visible", ctx=ctx)


@pytest.mark.parametrize("n,dims", [(29, None), (30, "cols")])
def test_bit_identical_to_serial_numpy(ctx, n, dims):
    if dims == "cols":
        dims = (1, ctx.size)
    _, field = solve(ctx, n, 40, 0.23, dims=dims)
    same = np.array_equal(field, serial_heat(n, 0.23, 40)) if ctx.is_root else True
    assert_all(same, "final field differs from the serial NumPy result", ctx=ctx)


def test_step_count_hook_and_restart_from_a_step(ctx):
    """simulate(start=k) continues a run exactly; on_step sees every step number."""
    n, r = 21, 0.2
    with hpcpar.Grid(ctx, (n, n)) as grid:
        seen, saved = [], {}

        def hook(k, field):
            seen.append(k)
            if k == 7:
                saved["u"] = field.copy()

        full = grid.gather(heat.simulate(ctx, grid, heat.initial_field(grid), 12, r, on_step=hook))
        resumed = grid.gather(heat.simulate(ctx, grid, saved["u"], 12, r, start=7))
        assert_all(seen == list(range(1, 13)), f"steps seen {seen}", ctx=ctx)
        assert_all(not ctx.is_root or np.array_equal(full, resumed), "restart differs", ctx=ctx)


def test_unstable_time_step_is_refused_on_every_rank(ctx):
    with hpcpar.Grid(ctx, (8, 8)) as grid:
        with pytest.raises(ValueError, match="unstable above 1/4"):
            heat.simulate(ctx, grid, heat.initial_field(grid), 3, 0.3)
        ctx.barrier()
