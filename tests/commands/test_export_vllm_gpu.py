"""GPU twin of test_export_vllm.py: vLLM serves the deployable folder itself - the NVFP4 base packed, through its
FP4 kernels - with the exported adapter, and gives the policy's log-probs.

The reference is the exported folder loaded back by qerl on the GPU in bf16 with the exported adapter
(`lora.init_from`), the regime `tests/rollout/test_vllm_gpu.py` bounds (mean |gap| per token, bf16 both sides).
A float32 reference does not work on this tiny random model: bf16 arithmetic alone moves its log-probs by up to
~1 nat (H100, 2026-12-06: max gap 0.6-0.9 against a float32 policy, with the base alone off by as much).
"""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                                  reason="vllm is not installed")]

CONFIG = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2}
ENGINE = r"""
import json, os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest
folder, adapter, sequences = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
llm = LLM(model=folder, enable_lora=True, max_lora_rank=8, dtype="bfloat16", max_model_len=64, max_num_seqs=4,
          gpu_memory_utilization=0.15, enforce_eager=True, seed=0, skip_tokenizer_init=True)
params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0, detokenize=False)
out = []
for tokens in sequences:
    result = llm.generate([{"prompt_token_ids": tokens}], params, lora_request=LoRARequest("policy", 1, adapter))[0]
    out.append([None if d is None else d[t].logprob for d, t in zip(result.prompt_logprobs, tokens)])
print("LOGPROBS=" + json.dumps(out))
"""


def test_vllm_on_cuda_serves_the_exported_nvfp4_folder_with_the_policys_logprobs(tmp_path):
    from export_setup import COMPLETIONS, PROMPTS, engine_logprobs, export_deployable, policy_logprobs, trained_policy

    from qerl.models import HFModel
    from qerl.quantizers import NVFP4
    from qerl.training.policy import build_policy
    from qerl.training.settings import LoRASettings

    out = export_deployable(trained_policy(CONFIG), CONFIG, tmp_path, "bfloat16")
    with open(out / "config.json") as f:
        assert json.load(f)["quantization_config"]["format"] == "nvfp4-pack-quantized"  # served packed, not dense
    served = engine_logprobs(ENGINE, out, out / "adapter")
    reference, _ = build_policy(HFModel(str(out)), NVFP4(), LoRASettings(rank=4, alpha=8.0,
                                                                         init_from=str(out / "adapter")),
                                "bfloat16", "cuda", False)
    reference.eval()
    gaps, effects = [], []
    for prompt, completion, engine in zip(PROMPTS, COMPLETIONS, served):
        want, base_lp = policy_logprobs(reference, prompt, completion, device="cuda")
        gaps.append(float((torch.tensor(engine[len(prompt):]) - want).abs().mean()))
        effects.append(float((want - base_lp).abs().max()))
    print(f"vLLM on CUDA (NVFP4 folder + exported adapter) vs the folder in qerl, bf16: mean gap {max(gaps):.3e}, "
          f"adapter effect {min(effects):.3e}")
    assert max(effects) > 0.05  # the adapter matters
    assert max(gaps) < 3e-2  # test_vllm_gpu.TOKEN_TOL: bf16 both sides (H200: 0.013-0.014 for the rollout engine)
