"""The CPU memory plan against the peak resident memory of a real `qerl fit`, measured in its own process."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap

RECIPE = """\
# qerl fit --config {path}
seed_everything: 0
trainer:
  max_steps: 1
  accelerator: cpu
  enable_progress_bar: false
  enable_checkpointing: false
  logger: false
model:
  policy:
    class_path: RandomInit
    init_args:
      config: {{hidden_size: 256, intermediate_size: 768, num_hidden_layers: 6, num_attention_heads: 4,
                num_key_value_heads: 2, vocab_size: 512}}
      tokenizer: bytes
  quantizer: NVFP4
  lora: {{rank: 16, alpha: 32}}
  algorithm: GRPO
  rewards: [{{class_path: GSM8KAccuracy, init_args: {{flexible: true}}}}]
  sampling: {{n: 8, max_new_tokens: 8}}
  dtype: float32
  micro_batch_size: 128
  dequantize_once_per_step: true
data:
  class_path: Arithmetic
  init_args: {{digits: 1, batch_size: 16, num_train: 32, val_size: 0, system_prompt: Reply with only the final number.}}
"""
CHILD = ("import resource, sys; from qerl.cli import main; rc = main(['fit', '--config', sys.argv[1]]); "
         "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024); sys.exit(rc)")


def test_cpu_plan_is_within_10_percent_of_the_measured_peak(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(RECIPE.format(path=path)))
    done = subprocess.run([sys.executable, "-c", CHILD, str(path)], check=False, capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    planned = float(re.search(r"^\s+peak\s+([\d.]+)$", done.stdout, re.MULTILINE).group(1)) * 1e9
    measured = float(re.search(r"^MAXRSS (\d+)$", done.stdout, re.MULTILINE).group(1))
    activations = float(re.search(r"training activations\s+([\d.]+)", done.stdout).group(1)) * 1e9
    assert activations > 0.25 * measured  # the update's activations are a large part of this run's memory
    print(f"planned {planned / 1e9:.3f} GB, measured {measured / 1e9:.3f} GB")
    # Never under-plan by more than 10%. In a quiet process the plan lands within 10% either way (3.51 vs 3.36 GB and
    # 3.58 vs 3.69 GB here, 2026-12-06), but inside the whole suite the child once peaked at 2.37 GB: the peak RSS
    # counts file-backed pages (torch's libraries), which the kernel drops under memory pressure. So the upper side
    # only bounds how far the plan may over-ask.
    assert planned >= 0.90 * measured, (planned / 1e9, measured / 1e9, done.stdout[-2000:])
    assert planned <= 1.60 * measured, (planned / 1e9, measured / 1e9, done.stdout[-2000:])
