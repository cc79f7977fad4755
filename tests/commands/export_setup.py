"""Shared setup of the export tests: a trained NVFP4 + LoRA policy, its deployable folder, an engine's log-probs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

PROMPTS, COMPLETIONS = [list(b"12+35="), list(b"What is 7*8?")], [list(b"47<"), list(b" 56 ok")]


def perturb(model, seed: int) -> None:
    """Move every trainable tensor (LoRA and norms) away from its start, so the adapter changes the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    model.eval()


def trained_policy(config: dict):
    """A float32 NVFP4 + LoRA r4 policy (trained norms) of the tiny random Qwen2 with `config`, on the CPU."""
    from qerl.models import RandomInit
    from qerl.quantizers import NVFP4
    from qerl.training.policy import build_policy
    from qerl.training.settings import LoRASettings

    policy, _ = build_policy(RandomInit(config, seed=0), NVFP4(), LoRASettings(rank=4, alpha=8.0, train_norms=True),
                             "float32", "cpu", False)
    perturb(policy, 5)
    return policy


def export_deployable(policy, config: dict, tmp_path: Path, dtype: str) -> Path:
    """`qerl export` of `policy`'s saved adapter over the same random base: the deployable folder."""
    from qerl.commands.export import main
    from qerl.lora.adapter_folder import save_adapter

    adapter = save_adapter(policy, str(tmp_path / "adapter"))
    out = tmp_path / "served"
    sets = [f"{k}={v}" for k, v in config.items()]
    assert main(["--model", "tiny", "--set", *sets, "--quantizer", "NVFP4", "--adapter", adapter, "--output", str(out),
                 "--dtype", dtype]) == 0
    return out


def engine_logprobs(script: str, model: Path, adapter: Path) -> list[list[float | None]]:
    """Run `script` (a vLLM engine) in a child process on `model` + `adapter`; the prompt log-probs it prints."""
    sequences = [p + c for p, c in zip(PROMPTS, COMPLETIONS)]
    child = subprocess.run([sys.executable, "-c", script, str(model), str(adapter), json.dumps(sequences)],
                           capture_output=True, text=True, timeout=900, check=False)
    line = next((x for x in child.stdout.splitlines() if x.startswith("LOGPROBS=")), None)
    assert line is not None, child.stderr[-6000:]
    return json.loads(line.removeprefix("LOGPROBS="))


def policy_logprobs(policy, prompt: list[int], completion: list[int], device: str = "cpu"):
    """(with the adapter, base only) per-token log-probs of `completion` after `prompt`, float32 on the CPU."""
    from qerl.models.logprobs import completion_logprobs

    p, c = torch.tensor([prompt], device=device), torch.tensor([completion], device=device)
    with torch.no_grad():
        want = completion_logprobs(policy, p, torch.ones_like(p), c, torch.ones_like(c)).logprobs[0].float().cpu()
        with policy.disable_adapter():
            base = completion_logprobs(policy, p, torch.ones_like(p), c, torch.ones_like(c)).logprobs[0].float().cpu()
    return want, base
