"""The one Rollout builder: rows in, padded tensors out; whole groups selected; rollouts joined."""
from __future__ import annotations

import torch

from qerl.types import Rollout

PAD = 9


def two_groups() -> Rollout:
    return Rollout.from_rows(prompts=[[1, 2], [1, 2], [3], [3]], completions=[[4], [5, 6], [], [7, 8, 8]],
                             logprobs=[[-0.5], [-0.1, -0.2], [], [-1.0, -2.0, -3.0]],
                             truncated=[False, False, True, True], texts=["a", "b", "", "c"], group_size=2,
                             pad_id=PAD)


def test_from_rows_pads_prompts_left_and_completions_right():
    r = two_groups()
    assert r.prompt_ids.tolist() == [[1, 2], [1, 2], [PAD, 3], [PAD, 3]]
    assert r.prompt_mask.tolist() == [[1, 1], [1, 1], [0, 1], [0, 1]]
    assert r.completion_ids.tolist() == [[4, PAD, PAD], [5, 6, PAD], [PAD, PAD, PAD], [7, 8, 8]]
    assert r.lengths.tolist() == [1, 2, 0, 3]
    assert r.logprobs[3].tolist() == [-1.0, -2.0, -3.0] and r.logprobs[0, 1:].tolist() == [0.0, 0.0]
    assert r.group_index.tolist() == [0, 0, 1, 1] and r.truncated.tolist() == [False, False, True, True]


def test_select_keeps_whole_groups_and_renumbers_them():
    r = two_groups()
    r.importance_weights = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    second = r.select(torch.tensor([False, False, True, True]))
    assert second.texts == ["", "c"] and second.group_index.tolist() == [0, 0]
    assert torch.equal(second.completion_ids, r.completion_ids[2:])
    assert torch.equal(second.importance_weights, r.importance_weights[2:])


def test_concat_pads_to_the_widest_and_drops_weights_only_some_parts_have():
    a, b = two_groups(), Rollout.from_rows([[5, 6, 7], [5, 6, 7]], [[1, 1, 1, 1], [2]], [[0.0] * 4, [-0.3]],
                                           [False, False], ["x", "y"], group_size=2, pad_id=PAD)
    joined = Rollout.concat([a, b], PAD)
    assert joined.prompt_ids.shape == (6, 3) and joined.completion_ids.shape == (6, 4)
    assert joined.prompt_ids[0].tolist() == [PAD, 1, 2] and joined.prompt_mask[0].tolist() == [0, 1, 1]
    assert joined.completion_ids[1].tolist() == [5, 6, PAD, PAD] and joined.completion_mask[4].sum() == 4
    assert joined.group_index.tolist() == [0, 0, 1, 1, 2, 2] and joined.texts == ["a", "b", "", "c", "x", "y"]
    assert joined.importance_weights is None
    a.importance_weights, b.importance_weights = torch.ones(4, 3), torch.full((2, 4), 2.0)
    weighted = Rollout.concat([a, b], PAD)
    assert weighted.importance_weights[0].tolist() == [1.0, 1.0, 1.0, 0.0] and weighted.importance_weights[5, 3] == 2.0
