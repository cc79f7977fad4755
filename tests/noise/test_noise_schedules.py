"""The sigma schedules: exact stage values, boundaries, and bad input."""
from __future__ import annotations

import itertools
import math

import pytest

from qerl.noise import Constant, Cosine, Exponential, Linear, NoNoise
from qerl.registry import NOISE_SCHEDULERS

PAPER = [0, 1e-2, 5.62e-3, 3.16e-3, 1.78e-3, 1e-3, 5.62e-4, 3.16e-4, 1.78e-4, 1e-4]


@pytest.mark.parametrize("total", [10, 100, 1000, 1234])
def test_exponential_gives_the_paper_stages(total):
    schedule = Exponential(sigma_start=1e-2, sigma_end=1e-4, num_stages=10)
    for k, expected in enumerate(PAPER):
        first = math.ceil(k * total / 10)  # first step of stage k
        last = math.ceil((k + 1) * total / 10) - 1
        for step in (first, last):
            assert schedule.sigma_at(step, total) == pytest.approx(expected, rel=2e-3, abs=0), (k, step)


def test_exponential_is_geometric_and_hits_the_end_points_exactly():
    schedule = Exponential(sigma_start=5e-2, sigma_end=5e-4, num_stages=10)
    values = [schedule.sigma_at(k * 10, 100) for k in range(10)]
    assert values[0] == 0.0 and values[1] == 5e-2 and values[-1] == 5e-4
    ratios = [values[k + 1] / values[k] for k in range(1, 9)]
    assert all(r == pytest.approx((5e-4 / 5e-2) ** (1 / 8), rel=1e-12) for r in ratios)


@pytest.mark.parametrize("cls", [Linear, Cosine])
def test_linear_and_cosine_share_stage_zero_and_end_points(cls):
    schedule = cls(sigma_start=1e-2, sigma_end=1e-4, num_stages=10)
    values = [schedule.sigma_at(k * 10, 100) for k in range(10)]
    assert values[0] == 0.0 and values[1] == 1e-2 and values[-1] == 1e-4
    assert all(a > b for a, b in itertools.pairwise(values[1:]))  # strictly decaying


def test_linear_values():
    values = [Linear(1e-2, 0.0, 6).sigma_at(k, 6) for k in range(6)]
    assert values == pytest.approx([0, 1e-2, 7.5e-3, 5e-3, 2.5e-3, 0], abs=1e-15)


def test_cosine_values():
    values = [Cosine(1e-2, 0.0, 6).sigma_at(k, 6) for k in range(6)]
    expected = [0] + [0.5e-2 * (1 + math.cos(math.pi * t / 4)) for t in range(5)]
    assert values == pytest.approx(expected, abs=1e-15)
    assert values[3] == pytest.approx(5e-3)  # half way


def test_steps_past_the_end_stay_in_the_last_stage():
    assert Exponential().sigma_at(10**6, 100) == 1e-4


def test_two_stages_give_zero_then_sigma_start():
    schedule = Exponential(1e-2, 1e-3, num_stages=2)
    assert [schedule.sigma_at(s, 4) for s in range(4)] == [0.0, 0.0, 1e-2, 1e-2]


def test_constant_and_no_noise():
    assert {Constant(3e-3).sigma_at(s, 7) for s in range(10)} == {3e-3}
    assert {NoNoise().sigma_at(s, 7) for s in range(10)} == {0.0}
    assert Exponential(0.0, 0.0).sigma_at(50, 100) == 0.0


def test_registry_names_and_aliases():
    assert {"Exponential", "Linear", "Cosine", "Constant", "NoNoise"} <= set(NOISE_SCHEDULERS.names())
    assert NOISE_SCHEDULERS.get("none") is NoNoise and NOISE_SCHEDULERS.get("off") is NoNoise
    assert NOISE_SCHEDULERS.get("exponential") is Exponential


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: Exponential(sigma_start=-1e-2), "sigma_start=-0.01"),
        (lambda: Linear(sigma_end=-1.0), "sigma_end=-1.0"),
        (lambda: Constant(sigma=-3.0), "sigma=-3.0"),
        (lambda: Constant(sigma=float("nan")), "sigma=nan"),
        (lambda: Cosine(sigma_start=1e-3, sigma_end=1e-2), "sigma_end=0.01"),
        (lambda: Exponential(sigma_start=1e-4, sigma_end=1e-2), "sigma_end=0.01"),
        (lambda: Linear(num_stages=1), "num_stages=1"),
        (lambda: Exponential(num_stages=0), "num_stages=0"),
        (lambda: Exponential(num_stages=2.5), "num_stages=2.5"),
        (lambda: Exponential(sigma_end=0.0), "sigma_end=0.0"),
        (lambda: Constant(sigma="loud"), "sigma='loud'"),
    ],
)
def test_bad_parameters_name_the_value(build, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(".", r"\.")):
        build()


@pytest.mark.parametrize(("step", "total", "named"), [(-1, 10, "step=-1"), (0, 0, "total_steps=0"),
                                                      (3, None, "total_steps=None"), (1.5, 10, "step=1.5")])
def test_bad_progress_names_the_value(step, total, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        Exponential().sigma_at(step, total)
