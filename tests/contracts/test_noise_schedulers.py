"""Contract every NOISE_SCHEDULERS entry meets (built-ins and plugins alike)."""
from __future__ import annotations

import math

import pytest

from qerl.noise.base import NoiseSchedule
from qerl.registry import NOISE_SCHEDULERS


def test_the_builtins_are_registered():
    assert {"Exponential", "Linear", "Cosine", "Constant", "NoNoise"} <= set(NOISE_SCHEDULERS.names())


def test_entry_is_a_documented_noise_schedule(noise_schedulers_entry):
    assert issubclass(noise_schedulers_entry.cls, NoiseSchedule)
    assert noise_schedulers_entry.summary, f"{noise_schedulers_entry.name} needs a one-line docstring (`qerl list`)"


@pytest.mark.parametrize("total", [1, 7, 100])
def test_defaults_give_finite_nonnegative_deterministic_sigmas(noise_schedulers_entry, total):
    schedule = noise_schedulers_entry.cls()  # every schedule is buildable from its defaults (YAML class_path only)
    values = [schedule.sigma_at(step, total) for step in range(total + 3)]
    assert all(isinstance(v, float) and math.isfinite(v) and v >= 0 for v in values)
    assert values == [schedule.sigma_at(step, total) for step in range(total + 3)]
    assert len(set(values[total:])) == 1  # past the end: one final value holds


def test_bad_progress_is_a_clear_error(noise_schedulers_entry):
    schedule = noise_schedulers_entry.cls()
    with pytest.raises(ValueError, match="step=-1"):
        schedule.sigma_at(-1, 10)
    with pytest.raises(ValueError, match="total_steps=0"):
        schedule.sigma_at(0, 0)
