"""`PackedGroups`: a training layout that computes a group's prompt once and packs its completions without padding.

The rows of a GRPO/DAPO group share one prompt. The default layout (`qerl.models.logprobs.PaddedRows`) runs every
row as prompt + completion, padded to the micro-batch's longest: at the 7B GSM8K shape (prompt 256, 8 completions a
group, mean ~490 tokens) a third of the update's positions are copies of prompts, and more are padding. Here a
micro-batch is up to `size` rows of one group, laid out as one sequence

    [prompt | completion 1 | completion 2 | ... | completion k]

with each completion's position ids continuing from the prompt's end and a block mask: a prompt token sees the
prompt before it (causal); a completion token sees the whole prompt and its own completion up to itself, never
another completion. Every token therefore sees exactly what it sees in its own padded row, so the log-probs are the
same function of the weights (equal up to float rounding; tests/test_packed.py) and the gradients sum the prompt's
share over the group instead of computing it k times. The LM head runs only on real completion positions.

An `sdpa` policy attends segment by segment (`qerl.models.segment_attention`: the prompt causally, each completion
against the prompt and itself with a lower-right causal bias), so only the scores the block structure allows are
computed and no mask is held. An `eager` policy (or `segments=False`) takes a dense (L x L) additive block mask in the
decoder's dtype, 2 L^2 bytes in bf16, built in place with rows aligned for SDPA; other attention implementations are
refused with what to change. Activations per micro-batch are at most the padded layout's (one prompt instead of k, no
padding); the memory plan counts the packed layout (`RunShape.packed`).
"""
from __future__ import annotations

import torch
from torch import nn

from qerl.models import segment_attention
from qerl.models.logprobs import DEFAULT_LOGITS_BUDGET, TokenLogprobs, causal_lm, head_logprobs
from qerl.types import Rollout

MASKS = ("sdpa", "eager", segment_attention.NAME)
#: packed positions above which `PackedGroups(segments=None)` attends segment by segment: one 7B attention layer,
#: forward + backward on an H100, 8 completions behind a 256-token prompt, segments vs the dense mask: 4.64 vs 1.25 ms
#: at 2,256 positions, 4.15 vs 3.53 at 4,176, 5.14 vs 6.72 at 5,856, 13.8 vs 42.8 at 16,256
#: (benchmarks/results/packed-attention-NVIDIA-H100-80GB-HBM3-2026-12-07.json)
SEGMENTS_FROM = 5000


def completion_lengths(rollout: Rollout, rows: torch.Tensor) -> list[int]:
    """Generated tokens of each row; refuses a completion mask that is not a prefix of ones (right padding)."""
    mask = rollout.completion_mask[rows].bool()
    lengths = mask.sum(dim=1)
    prefix = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0) < lengths.unsqueeze(1)
    if not torch.equal(mask, prefix):
        raise ValueError("PackedGroups: a completion mask has a hole (ones after a zero); packing needs right-padded "
                         "completions. Use the default layout (`pack_groups: false`).")
    return [int(n) for n in lengths.tolist()]


#: the mask's rows are allocated to a multiple of this many columns: PyTorch's memory-efficient SDPA kernel copies an
#: additive mask whose row stride is not aligned (to 8 elements; 16 covers it), once per attention call
MASK_ALIGN = 16


def block_mask(prompt_len: int, lengths: list[int], device, dtype: torch.dtype) -> torch.Tensor:
    """(1, 1, L, L) additive mask of the packed sequence (0 where a token may attend, the dtype's min elsewhere):
    causal, and a completion token sees only the prompt and its own completion.

    Built in place in one (L, L) tensor - no (L, L) temporaries - whose rows are padded to `MASK_ALIGN` columns and
    sliced, so SDPA takes it as it is (a boolean mask would be converted to this form by every attention call)."""
    total = prompt_len + sum(lengths)
    width = -(-total // MASK_ALIGN) * MASK_ALIGN
    mask = torch.full((total, width), torch.finfo(dtype).min, dtype=dtype, device=device)[:, :total]
    mask[:prompt_len, :prompt_len].triu_(1)  # the prompt: causal
    start = prompt_len
    for n in lengths:
        mask[start:start + n, :prompt_len] = 0  # the whole prompt
        mask[start:start + n, start:start + n].triu_(1)  # its own completion, causal
        start += n
    return mask[None, None]


class PackedGroups:
    """Micro-batches of up to `size` rows of one group, each packed behind one copy of the group's prompt.

    Selected by `QeRLModule(pack_groups=True)` and `benchmarks/step.py --pack-groups`. How an `sdpa` policy attends
    (`segments`): True, segment by segment (`qerl.models.segment_attention`: no mask, only the allowed scores, but a
    few launches per completion); False, through the dense block mask (all L^2 scores); None (default), by the packed
    sequence's length - segments above `SEGMENTS_FROM` positions, the mask up to it. An `eager` policy always takes
    the mask. `batched`: where the segments are taken, all completions attend in one padded call (two calls a layer
    instead of one per completion plus the prompt's; `segment_attention._completions_in_one_call`) while the
    padding at most doubles their scores (`segment_attention.worth_one_call`), one call each otherwise."""

    name = "packed_groups"

    def __init__(self, logits_budget: int = DEFAULT_LOGITS_BUDGET, segments: bool | None = None,
                 batched: bool = False) -> None:
        self.logits_budget = int(logits_budget)
        self.segments = segments
        self.batched = bool(batched)

    def check(self, model: nn.Module) -> None:
        """Refuse a policy whose attention cannot take the packed layout (QeRLModule calls it at setup, before any
        rollout, so a wrong setting costs no step)."""
        implementation = getattr(causal_lm(model).config, "_attn_implementation", "eager") or "eager"
        if implementation not in MASKS:
            raise ValueError(f"PackedGroups needs the policy's attention implementation to be one of {MASKS} (it takes "
                             f"a custom block mask); the policy runs {implementation!r}. Set "
                             "`model.init_args.pack_groups: false`, or load the policy with sdpa attention.")

    def batches(self, rollout: Rollout, size: int):
        """Row-index groups: each group's rows in order, in runs of at most `size` (groups are contiguous)."""
        size = max(1, int(size))
        groups = rollout.group_index.tolist()  # one copy to the host, not one per row
        starts = [0] + [i for i in range(1, len(groups)) if groups[i] != groups[i - 1]]
        ends = starts[1:] + [len(groups)]
        for start, end in zip(starts, ends):
            for first in range(start, end, size):
                yield torch.arange(first, min(first + size, end), device=rollout.group_index.device)

    def positions(self, rollout: Rollout, size: int) -> int:
        """Positions the decoder computes over the whole rollout: one prompt per micro-batch, no padding."""
        lengths = rollout.completion_mask.sum(dim=1).tolist()
        prompts = rollout.prompt_mask.sum(dim=1).tolist()
        return sum(prompts[rows[0]] + sum(lengths[r] for r in rows)
                   for rows in (batch.tolist() for batch in self.batches(rollout, size)))

    def logprobs(self, model: nn.Module, rollout: Rollout, rows: torch.Tensor, temperature: float,
                 with_entropy: bool = False) -> TokenLogprobs:
        """(len(rows), W) log-probs (and entropy) of the rows' completions, W their longest completion (at least 1),
        as `PaddedRows.logprobs` gives them; positions past a row's completion hold 0."""
        if int(rollout.group_index[rows].min()) != int(rollout.group_index[rows].max()):
            raise ValueError("PackedGroups: a micro-batch must hold rows of one group (one prompt).")
        lm = causal_lm(model)
        self.check(model)
        can_segment = segment_attention.use_segment_attention(lm.config)  # an sdpa policy switches to qerl_packed
        head, decoder = lm.get_output_embeddings(), lm.get_decoder()
        temperature = float(temperature) if temperature and temperature > 0 else 1.0
        device = rollout.completion_ids.device
        row_list = rows.tolist()
        prompt = rollout.prompt_ids[row_list[0]][rollout.prompt_mask[row_list[0]].bool()]
        prompt_len, lengths = int(prompt.numel()), completion_lengths(rollout, rows)
        width = max(1, max(lengths))
        ids = torch.cat([prompt] + [rollout.completion_ids[r, :n] for r, n in zip(row_list, lengths)]).unsqueeze(0)
        positions = torch.cat([torch.arange(prompt_len, device=device)]
                              + [torch.arange(prompt_len, prompt_len + n, device=device) for n in lengths])
        total = prompt_len + sum(lengths)
        if can_segment and (self.segments if self.segments is not None else total > SEGMENTS_FROM):
            hidden = decoder(input_ids=ids, attention_mask=torch.zeros(segment_attention.NO_MASK_SHAPE, device=device),
                             position_ids=positions.unsqueeze(0), use_cache=False,
                             packed_segments=(prompt_len, tuple(lengths), self.batched)).last_hidden_state[0]
        else:
            dtype = next(decoder.parameters()).dtype
            mask = block_mask(prompt_len, lengths, device, dtype if dtype.is_floating_point else torch.float32)
            hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions.unsqueeze(0),
                             use_cache=False).last_hidden_state[0]
        # the hidden state that predicts token t of completion i: the prompt's last for t = 0, else its own t - 1
        source, out_row, out_col, offset = [], [], [], prompt_len
        for i, n in enumerate(lengths):
            steps = torch.arange(n, device=device)
            source.append(torch.where(steps == 0, prompt_len - 1, offset + steps - 1))
            out_row.append(torch.full((n,), i, dtype=torch.long, device=device))
            out_col.append(steps)
            offset += n
        source = torch.cat(source)
        targets = ids[0, prompt_len:]  # the completions, back to back: what those hidden states predict
        picked, entropies = head_logprobs(head, hidden[source].unsqueeze(0), targets.unsqueeze(0), temperature,
                                          with_entropy, self.logits_budget)
        where = (torch.cat(out_row), torch.cat(out_col))
        logprobs = torch.zeros(len(lengths), width, dtype=torch.float32, device=device).index_put(where, picked[0])
        entropy = torch.zeros_like(logprobs) if with_entropy else None
        if entropies is not None:
            entropy = entropy.index_put(where, entropies[0])
        return TokenLogprobs(logprobs=logprobs, entropy=entropy)
