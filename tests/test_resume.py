"""Checkpoint and resume: 4 steps straight equal 2 steps + resume + 2 steps, and `qerl fit --ckpt_path last` continues."""
from __future__ import annotations

import textwrap

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from rl_helpers import RESUME_RECIPE, MetricsRecorder, lora_state, tiny_data, tiny_module, tiny_trainer

COMPARED = ["train/loss", "train/grad_norm", "reward/total_mean", "rollout/length_mean", "train/entropy",
            "noise/sigma", "train/lr", "train/ratio_mean",
            "reward/running_mean", "train/accuracy_running"]  # running means continue through a resume


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class StopAt(L.Callback):
    """Ends fit after optimizer step `step`, as if the job had been killed there."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def run(root, ckpt_dir, stop_at=None, ckpt_path=None):
    L.seed_everything(0)  # as `qerl fit` does: LoRA's A matrices start from the global RNG
    module, recorder = tiny_module(), MetricsRecorder()
    callbacks = [recorder, ModelCheckpoint(dirpath=str(ckpt_dir), every_n_train_steps=1, save_last=True,
                                           save_top_k=-1)]
    if stop_at is not None:
        callbacks.append(StopAt(stop_at))
    trainer = tiny_trainer(root, 4, callbacks=callbacks, enable_checkpointing=True)
    trainer.fit(module, tiny_data(), ckpt_path=ckpt_path)
    return module, trainer, recorder.steps


def test_two_steps_resume_two_steps_equals_four_straight(tmp_path):
    straight, trainer, steps = run(tmp_path / "a", tmp_path / "a_ckpt")
    assert trainer.global_step == 4 and len(steps) == 4

    _, first, head = run(tmp_path / "b", tmp_path / "b_ckpt", stop_at=2)
    assert first.global_step == 2
    resumed, second, tail = run(tmp_path / "c", tmp_path / "b_ckpt", ckpt_path="last")
    assert second.global_step == 4 and len(tail) == 2
    for i, step in enumerate(head + tail):
        for key in COMPARED:
            assert step[key] == pytest.approx(steps[i][key], rel=1e-5, abs=1e-7), (i, key)
    assert any(s["train/grad_norm"] > 0 for s in steps)  # the comparison is not between all-zero runs
    a, b = lora_state(straight), lora_state(resumed)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_checkpoint_holds_only_trainable_weights_and_the_run_state(tmp_path):
    run(tmp_path / "a", tmp_path / "ckpt", stop_at=1)
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert ckpt["qerl"]["batches_drawn"] == 1 and "rng" in ckpt["qerl"]
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"]
    noise_state = next(v for k, v in ckpt["callbacks"].items() if "NoiseCallback" in k)
    assert noise_state["total_steps"] == 4 and noise_state["last_step"] == 0


NOISE = "\n  noise: {class_path: Exponential, init_args: {sigma_start: 0.01, sigma_end: 0.001, num_stages: 3}}"


def resume_recipe(path, root) -> str:
    """The 2-step TensorBoard recipe with AQN on and no sample logging."""
    return textwrap.dedent(RESUME_RECIPE.format(path=path, logger="lightning.pytorch.loggers.TensorBoardLogger",
                                                init_args=f"{{save_dir: {root}, name: run}}", noise=NOISE, samples=0))


def test_qerl_fit_ckpt_path_last_continues_the_run(tmp_path):
    from qerl.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(resume_recipe(recipe, tmp_path))
    assert main(["fit", "--config", str(recipe)]) == 0
    assert torch.load(tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert main(["fit", "--config", str(recipe), "--trainer.max_steps=3", "--ckpt_path=last"]) == 0
    ckpt = torch.load(tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3 and ckpt["qerl"]["batches_drawn"] == 3


def test_qerl_fit_reports_a_lora_target_matching_no_module_without_a_traceback(tmp_path, capsys):
    from qerl.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(resume_recipe(recipe, tmp_path))
    assert main(["fit", "--config", str(recipe), "--model.lora.targets=[q_proj,attn_qkv]"]) != 0
    err = capsys.readouterr().err
    assert "lora.targets" in err and "attn_qkv" in err and "Traceback" not in err


def test_running_means_continue_from_their_saved_window_after_it_wrapped():
    """13 steps through a window of 4 (the ring wrapped): a fresh RunningRewards loaded from the saved state
    gives the same means as the original, now and after 3 more steps."""
    from qerl.training.running_rewards import RunningRewards

    gen = torch.Generator().manual_seed(0)
    steps = [(torch.rand(6, generator=gen), (torch.rand(6, generator=gen) > 0.5).float()) for _ in range(16)]
    original, restored = RunningRewards(window=4), RunningRewards(window=4)
    for rewards, correct in steps[:13]:
        original.update(rewards, correct)
    restored.load_state(original.state())
    assert restored.compute() == original.compute()
    for rewards, correct in steps[13:]:
        original.update(rewards, correct)
        restored.update(rewards, correct)
        assert restored.compute() == original.compute()
    last4 = torch.cat([r for r, _ in steps[12:]])
    assert original.compute()["reward/running_mean"] == pytest.approx(float(last4.mean()), rel=1e-6)
    other = RunningRewards(window=5)
    other.load_state(original.state())  # another window length: nothing carried over
    other.update(*steps[0])
    assert other.compute()["reward/running_mean"] == pytest.approx(float(steps[0][0].mean()), rel=1e-6)
