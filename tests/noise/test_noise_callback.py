"""NoiseCallback with a real Lightning Trainer on a toy module: per-step sigma, logging, resume."""
from __future__ import annotations

import csv

import lightning as L
import pytest
import torch

from qerl.callbacks.noise import NoiseCallback
from qerl.noise import Constant, Exponential

PAPER = [0, 1e-2, 5.62e-3, 3.16e-3, 1.78e-3, 1e-3, 5.62e-4, 3.16e-4, 1.78e-4, 1e-4]


class ToyModule(L.LightningModule):
    """Records what the callback published at each step; stops itself at `stop_at` if given."""

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.stop_at = stop_at
        self.seen: list[tuple[int, float, int, bool]] = []

    def training_step(self, batch, batch_idx):
        d = self.noise_draw
        self.seen.append((self.global_step, d.sigma, d.seed, d.in_training))
        if self.stop_at is not None and self.global_step + 1 >= self.stop_at:
            self.trainer.should_stop = True
        return self.layer(batch).pow(2).mean()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def trainer(tmp_path, callback, **kwargs) -> L.Trainer:
    options = {"max_steps": 20, "logger": L.pytorch.loggers.CSVLogger(tmp_path, name="run"), "log_every_n_steps": 1,
               "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu", "devices": 1,
               "enable_checkpointing": False}
    options.update(kwargs)
    return L.Trainer(callbacks=[callback], **options)


def test_sigma_follows_the_schedule_over_max_steps_and_is_logged(tmp_path):
    module, callback = ToyModule(), NoiseCallback(Exponential(), seed=11)
    run = trainer(tmp_path, callback)
    run.fit(module)
    sigmas = [s for _, s, _, _ in module.seen]
    assert [step for step, *_ in module.seen] == list(range(20))
    assert sigmas == pytest.approx([v for v in PAPER for _ in range(2)], rel=2e-3)  # two steps per stage
    assert [seed for *_, seed, _ in module.seen] == [callback.seed_for(s) for s in range(20)]
    assert len({seed for *_, seed, _ in module.seen}) == 20 and not any(t for *_, t in module.seen)
    with open(run.logger.log_dir + "/metrics.csv") as f:
        logged = [float(r["noise/sigma"]) for r in csv.DictReader(f) if r.get("noise/sigma")]
    assert logged == pytest.approx(sigmas, rel=1e-6)


def test_total_steps_falls_back_to_estimated_stepping_batches(tmp_path):
    module, callback = ToyModule(), NoiseCallback(Exponential(num_stages=4), apply_in_training=True, seed=0)
    trainer(tmp_path, callback, max_steps=-1, max_epochs=1).fit(module)  # 32 batches, one epoch
    assert callback.total_steps == 32
    assert [s for _, s, _, _ in module.seen] == pytest.approx([0.0] * 8 + [1e-2] * 8 + [1e-3] * 8 + [1e-4] * 8)
    assert all(in_training for *_, in_training in module.seen)


def test_resumed_run_continues_the_schedule(tmp_path):
    full = ToyModule()
    trainer(tmp_path / "full", NoiseCallback(Exponential(), seed=3)).fit(full)

    first = ToyModule(stop_at=9)
    run = trainer(tmp_path / "a", NoiseCallback(Exponential(), seed=3))
    run.fit(first)
    assert len(first.seen) == 9
    ckpt = tmp_path / "stopped.ckpt"
    run.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["callbacks"]
    saved = next(v for k, v in state.items() if k.startswith("NoiseCallback"))
    assert saved["total_steps"] == 20 and saved["last_step"] == 8 and saved["seed"] == 3

    second = ToyModule()
    resumed = NoiseCallback(Exponential(), seed=999)  # the checkpoint's seed wins, so the noise draws match too
    trainer(tmp_path / "b", resumed, max_steps=20).fit(second, ckpt_path=ckpt)
    assert first.seen + second.seen == full.seen


def test_a_longer_resumed_run_keeps_the_planned_length(tmp_path):
    first = ToyModule(stop_at=10)
    run = trainer(tmp_path / "a", NoiseCallback(Exponential(), seed=0))
    run.fit(first)
    run.save_checkpoint(tmp_path / "c.ckpt")
    second = ToyModule()
    trainer(tmp_path / "b", NoiseCallback(Exponential()), max_steps=30).fit(second, ckpt_path=tmp_path / "c.ckpt")
    sigmas = [s for _, s, _, _ in second.seen]
    assert sigmas[:10] == pytest.approx([v for v in PAPER[5:] for _ in range(2)], rel=2e-3)
    assert sigmas[10:] == [1e-4] * 10  # past the planned 20 steps: the last stage holds


class IteratorModule(ToyModule):
    """Like QeRLModule: manual optimization and a training_step that pulls from the dataloader iterator."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, dataloader_iter):
        batch, _, _ = next(dataloader_iter)  # (batch, batch_idx, dataloader_idx)
        d = self.noise_draw
        self.seen.append((self.global_step, d.sigma, d.seed, d.in_training))
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(self.layer(batch).pow(2).mean())
        opt.step()


def test_manual_optimization_with_a_dataloader_iterator(tmp_path):
    module = IteratorModule()
    trainer(tmp_path, NoiseCallback(Exponential(), seed=1), max_steps=10).fit(module)
    assert [s for _, s, _, _ in module.seen] == pytest.approx(PAPER, rel=2e-3)


def test_unknown_run_length_is_a_clear_error(tmp_path):
    run = trainer(tmp_path, NoiseCallback(Constant()), max_steps=-1, max_epochs=-1)
    with pytest.raises(ValueError, match="Set trainer.max_steps"):
        run.fit(ToyModule())


def test_schedule_must_be_a_noise_schedule():
    with pytest.raises(TypeError, match="schedule='exponential'"):
        NoiseCallback("exponential")
