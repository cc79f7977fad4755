"""How `VLLM` engines map onto data-parallel ranks (the layout logic; the engines themselves need GPUs)."""
from __future__ import annotations

import pytest
import torch

from qerl.rollout.vllm.ranks import engine_placement, make_group, tensor_parallel_groups


def test_tensor_parallel_groups_are_consecutive_ranks():
    assert tensor_parallel_groups(4, 1) == [[0], [1], [2], [3]]
    assert tensor_parallel_groups(4, 2) == [[0, 1], [2, 3]]
    assert tensor_parallel_groups(8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_a_tensor_parallel_size_that_does_not_divide_the_ranks_is_refused():
    with pytest.raises(ValueError, match="tensor_parallel_size`=3 must divide the number of training processes"):
        tensor_parallel_groups(4, 3)


def test_one_process_keeps_vllms_own_executor():
    assert engine_placement(2, torch.device("cpu")) == {}  # vLLM starts its own TP workers
    assert make_group(2) is None
