"""QeRLModule: RL of an LLM on a frozen (quantized) base with LoRA - rollout, rewards, advantages, update."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any, Literal

import lightning as L
import torch

from qerl.algorithms.base import Algorithm
from qerl.callbacks import AdapterExport, NoiseCallback, RolloutSyncCallback, SampleLogger
from qerl.evaluation.validation import ValidationRun, ValidationSettings
from qerl.lora.apply import base_weight_snapshot, reference_policy
from qerl.memory import plan_for_module
from qerl.memory.startup import rollout_rows
from qerl.models.base import PolicyLoader
from qerl.models.logprobs import PaddedRows, stored_logprobs
from qerl.models.packed import PackedGroups
from qerl.noise.base import NoiseDraw, NoiseSchedule
from qerl.noise.inject import noisy_norms
from qerl.noise.precision import RealizedNoise
from qerl.parallel import on_every_rank, sum_over_ranks, world
from qerl.quantizers.base import Quantizer
from qerl.quantizers.dequant_cache import dequantize_once
from qerl.rewards.base import Reward
from qerl.rollout.base import RolloutBackend
from qerl.rollout.hf import HF
from qerl.training import distributed
from qerl.training.checks import check_module_args
from qerl.training.collect import Collected, Collector, collect_groups, data_metrics, draw_prompts, step_sampling
from qerl.training.completion_trainer import MAX_BUFFERS
from qerl.training.overlap import UNITS, check_train_during_rollout, stream_and_train, streams
from qerl.training.policy import build_policy
from qerl.training.resumable import ResumableRun
from qerl.training.running_rewards import RunningRewards
from qerl.training.scoring import Scored, concat_scored, score_rollout
from qerl.training.settings import LoRASettings, OptimizerSettings, global_seed
from qerl.training.step_metrics import StepTimer, peak_memory_gb, reward_metrics, rollout_metrics, update_metrics
from qerl.training.update import TrainBatch, UpdateResult, accumulate_gradients, clip_gradients
from qerl.types import PromptBatch, Rollout, SamplingConfig


class QeRLModule(ResumableRun, L.LightningModule):
    """One RL step per batch of prompts: rollout (AQN noise on), rewards, advantages, clipped policy update.

    Every part comes from the recipe: the policy loader, quantizer, LoRA settings, noise schedule,
    rollout backend, rewards, algorithm and optimizer. The model is built in `setup`, so a recipe
    parses without loading anything.

    Args:
        policy: where the model and tokenizer come from (e.g. `GGUFModel`, `HFModel`, `RandomInit`).
        algorithm: advantages and loss (e.g. `GRPO`, `DAPO`).
        rewards: reward functions; their weighted sum is the reward.
        rollout: generation backend (default `HF`: the policy itself).
        quantizer: 4-bit format of the frozen base (`NVFP4`, `MXFP4`, `NF4`); null keeps it dense.
        lora: LoRA adapters; null trains every weight (only without a quantizer).
        noise: AQN sigma schedule (e.g. `Exponential`); null: no noise.
        sampling: completions per prompt (group size), temperature, top-p, max_new_tokens, stop strings.
        optimizer: AdamW, warm-up and gradient clipping.
        dtype: dtype of the dense parts ("bfloat16", "float32").
        micro_batch_size: completions per forward/backward pass; gradients accumulate over them. "auto": the
            largest that fits the GPU's free memory by the start-up memory plan (`qerl.memory`).
        batches_per_step: prompt batches (rollouts) accumulated into one optimizer step.
        accuracy_reward: the reward whose score > 0 counts as correct (`train/accuracy`); default the first.
        seed: base seed of the per-step rollout sampling and of the AQN draws. None (default): the run's
            `seed_everything` (so a seed sweep varies the rollouts too, not only the LoRA init), 0 without one.
        gradient_checkpointing: recompute decoder activations in backward.
        log_samples_every: write text samples to TensorBoard every N steps (0: never).
        num_samples_logged: how many samples each time.
        export_adapter_every: save the peft adapter every N steps (0: only at the end).
        max_nan_skips: consecutive non-finite steps tolerated (skipped and logged) before stopping.
        validation: sampling of held-out prompts in Lightning's validation loop (`val/accuracy`, `val/pass@k`).
        dequantize_once_per_step: keep a dense copy of each 4-bit layer for the duration of a step instead
            of decoding it at every forward (faster on CPU; costs the memory of the dense layers).
        pack_groups: the update's layout. False (default): micro-batches of padded rows, each row its own copy of
            its prompt. True: up to `micro_batch_size` completions of one group packed behind one copy of their
            prompt, no padding (`qerl.models.packed.PackedGroups`; same log-probs, fewer positions; needs the
            policy's attention to be `sdpa` or `eager`; an `sdpa` policy is switched to `qerl_packed`, which attends
            a long packed group segment by segment and is HF's `sdpa` otherwise).
        train_during_rollout: score and train each group (forward and backward) as soon as its completions end,
            while the engine still generates the others; the optimizer steps once every group is in, with the same
            gradient (`qerl.training.overlap` says why it is exact). Overlaps with `rollout: VLLM` whose engine stays
            awake through training (`enable_sleep_mode` false, or "auto" deciding so); otherwise the step runs as
            without it, with a warning. Needs `num_iterations: 1`, `beta: 0`, no dynamic sampling,
            `batches_per_step: 1`, no `importance_sampling_cap`, one process.
        train_during_rollout_sm_share: with `train_during_rollout`, the share of the GPU's SMs the groups' update
            may use (a CUDA green context); below 1 the rest stay free for the engine's decode. 1 (default): all.
        train_during_rollout_unit: with `train_during_rollout`, "group" (default): a group trains when its last
            completion ends; "completion": while only a few groups are still generating, their completions train
            as they end (one request per completion; the same gradient for group-relative advantages,
            `qerl.training.completion_trainer`), so a group with one completion at the length cap no longer
            leaves all of its update until after the generate.
    """

    def __init__(
        self,
        policy: PolicyLoader,
        algorithm: Algorithm,
        rewards: list[Reward],
        rollout: RolloutBackend | None = None,
        quantizer: Quantizer | None = None,
        lora: LoRASettings | None = LoRASettings(),  # noqa: B008 (jsonargparse reads dataclass defaults)
        noise: NoiseSchedule | None = None,
        sampling: SamplingConfig = SamplingConfig(),  # noqa: B008
        optimizer: OptimizerSettings = OptimizerSettings(),  # noqa: B008
        dtype: str = "bfloat16",
        micro_batch_size: int | str = 8,
        batches_per_step: int = 1,
        accuracy_reward: str | None = None,
        seed: int | None = None,
        gradient_checkpointing: bool = False,
        log_samples_every: int = 10,
        num_samples_logged: int = 2,
        export_adapter_every: int = 0,
        max_nan_skips: int = 5,
        validation: ValidationSettings = ValidationSettings(),  # noqa: B008
        dequantize_once_per_step: bool = False,
        pack_groups: bool = False,
        train_during_rollout: bool = False,
        train_during_rollout_sm_share: float = 1.0,
        train_during_rollout_unit: Literal["group", "completion"] = "group",
    ) -> None:
        super().__init__()
        self.policy = policy
        self.algorithm = algorithm
        self.rewards = list(rewards)
        self.rollout = rollout if rollout is not None else HF()
        self.quantizer = quantizer
        self.lora = dataclasses.replace(lora) if lora is not None else None
        self.noise = noise
        self.sampling = dataclasses.replace(sampling, stop=list(sampling.stop))
        self.optim = dataclasses.replace(optimizer)
        self.dtype_name = dtype
        self.micro_batch_size = micro_batch_size
        self.batches_per_step = batches_per_step
        self.seed = int(seed) if seed is not None else global_seed()
        self.gradient_checkpointing = gradient_checkpointing
        self.log_samples_every = log_samples_every
        self.num_samples_logged = num_samples_logged
        self.export_adapter_every = export_adapter_every
        self.max_nan_skips = max_nan_skips
        self.dequantize_once_per_step = dequantize_once_per_step
        self.pack_groups = bool(pack_groups)
        self.layout = PackedGroups() if self.pack_groups else PaddedRows()
        self.rollout.scoring_layout = self.layout  # VLLM's mismatch forward runs the policy like the update
        self.validation = dataclasses.replace(validation)
        self._validation_run: ValidationRun | None = None
        self.last_validation: dict[str, float] = {}
        counts = {"micro_batch_size": micro_batch_size, "batches_per_step": batches_per_step,
                  "num_samples_logged": num_samples_logged, "log_samples_every": log_samples_every,
                  "export_adapter_every": export_adapter_every, "max_nan_skips": max_nan_skips}
        self.train_during_rollout = bool(train_during_rollout)
        if not 0.0 < float(train_during_rollout_sm_share) <= 1.0:
            raise ValueError("`model.init_args.train_during_rollout_sm_share` must be in (0, 1] (the share of the "
                             f"GPU's SMs the update may use), got {train_during_rollout_sm_share!r}.")
        self.train_during_rollout_sm_share = float(train_during_rollout_sm_share)
        if train_during_rollout_unit not in UNITS:
            raise ValueError(f"`model.init_args.train_during_rollout_unit` must be one of {', '.join(UNITS)}, got "
                             f"{train_during_rollout_unit!r}.")
        if train_during_rollout_unit != "group" and not self.train_during_rollout:
            raise ValueError(f"`model.init_args.train_during_rollout_unit: {train_during_rollout_unit}` says how "
                             "groups train during the rollout, which `model.init_args.train_during_rollout` is off "
                             "for; set it to true, or drop the unit.")
        self.train_during_rollout_unit = train_during_rollout_unit
        #: float32 gradient buffers the update may hold (training by completion), for the memory plan
        self.gradient_buffers = MAX_BUFFERS if self.train_during_rollout and train_during_rollout_unit == "completion" \
            else 0
        if self.train_during_rollout:
            check_train_during_rollout(algorithm, batches_per_step, self.rollout)
        self.accuracy_index = check_module_args(self.sampling, algorithm, self.rewards, self.lora, quantizer, self.optim,
                                                counts, accuracy_reward)
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self.running = RunningRewards()
        self.model = None
        self._base_weights: dict = {}  # loaded values of trainable non-LoRA weights (the KL reference needs them)
        self.tokenizer = None
        self.noise_draw = NoiseDraw()  # published by NoiseCallback at every training batch
        self.last_samples: list[dict[str, Any]] = []
        self._batches_drawn, self._nan_streak, self._pending_resume = 0, 0, None
        self._step_metrics: dict[str, float] | None = None

    # ------------------------------------------------------------------ building
    def setup(self, stage: str) -> None:
        if self.model is None:
            self.model, self.tokenizer = build_policy(self.policy, self.quantizer, self.lora, self.dtype_name,
                                                      self.device, self.gradient_checkpointing,
                                                      noise=self.noise is not None)
            self._base_weights = base_weight_snapshot(self.model) if self.lora is not None else {}
            self.model.train()  # loaders hand out eval-mode models; LoRA dropout and checkpointing need train mode
            self.layout.check(self.model)  # a layout the policy cannot run is refused before any rollout
            if self.train_during_rollout and world()[0] > 1:
                raise ValueError("`model.init_args.train_during_rollout: true` runs in one process only; set it "
                                 "to false under `trainer.strategy: ddp`.")
            distributed.broadcast_only_trainable(self)  # under DDP every rank loads the frozen base itself
            datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
            if datamodule is not None and hasattr(datamodule, "set_tokenizer"):  # the plan measures the prompts
                datamodule.set_tokenizer(self.tokenizer)
            quiet = world()[1] != 0  # under DDP each rank plans its own GPU and rows; rank 0 prints its plan
            picked = self.rollout.plan_rows(rollout_rows(self, datamodule))  # e.g. max_num_seqs "auto"
            if picked and not quiet:
                print(picked)
            # prints the memory plan, warns if it won't fit, resolves "auto"
            plan = plan_for_module(self, datamodule, echo=(lambda *_: None) if quiet else print)
            self.micro_batch_size = plan.micro_batch_size
            if plan.engine_sleep is not None:  # `enable_sleep_mode: auto`, decided by the plan before the engine starts
                self.rollout.resolved_sleep_mode = plan.engine_sleep
            if plan.engine_kv_cache_gb is not None:  # cut so the engine stays awake beside training under the rollout
                self.rollout.resolved_kv_cache_gb = plan.engine_kv_cache_gb
        self.rollout.setup(self.model, self.tokenizer)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "set_tokenizer") and \
                getattr(datamodule, "tokenizer", None) is not self.tokenizer:
            datamodule.set_tokenizer(self.tokenizer)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def configure_optimizers(self):
        o = self.optim
        opt = torch.optim.AdamW(self.trainable_parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                weight_decay=o.weight_decay)
        warmup = int(o.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_callbacks(self):
        callbacks = [RolloutSyncCallback(), AdapterExport(self.export_adapter_every)]
        if self.noise is not None:
            callbacks.append(NoiseCallback(self.noise, seed=self.seed))
        if self.log_samples_every:
            callbacks.append(SampleLogger(self.log_samples_every))
        return callbacks

    # ------------------------------------------------------------------ one step
    def training_step(self, dataloader_iter: Iterator) -> None:
        if not self.dequantize_once_per_step:
            return self._training_step(dataloader_iter)
        with dequantize_once(self.model):
            return self._training_step(dataloader_iter)

    def _training_step(self, dataloader_iter: Iterator) -> None:
        distributed.take_over_gradient_sync(self._trainer)  # under DDP: one all-reduce per step, in _optimize
        timer = StepTimer()
        self._resume_data_position(dataloader_iter)
        parts = Collector(self.tokenizer, self.rollout, self.rewards, self.algorithm, self.sampling, self.seed,
                          self.accuracy_index)
        step = self.global_step  # the optimizer steps move global_step
        if self.train_during_rollout and streams(self.rollout, warn=True):
            collected, train, seen, shaped, advantages, update = self._train_under_rollout(parts, dataloader_iter,
                                                                                          timer, step)
        else:
            collected, train, seen, shaped, advantages, update = self._collect_then_train(parts, dataloader_iter,
                                                                                         timer, step)
        self._remember_samples(seen)
        self.running.update(seen.rewards, seen.correct)  # torchmetrics: reduced over ranks in compute()
        every, rollout_s = distributed.gather_scored(seen, timer.phases.get("rollout", 0.0))  # all ranks' groups
        metrics = {**reward_metrics(every), **rollout_metrics(every, rollout_s), **update}
        metrics.update(self.running.compute())
        metrics.update(self.rollout.last_metrics)  # e.g. VLLM: rollout/mismatch_kl
        if self.noise is not None:  # measured on the generating engine's weights, 0 at sigma 0
            metrics.update(dict.fromkeys(RealizedNoise.TAGS, 0.0)
                           if self.noise_draw.sigma <= 0 else self.rollout.noise_metrics)
        metrics.update(data_metrics(collected, train.num_groups, seen.num_groups, advantages, self.sampling.n,
                                    step, self.algorithm, self.device))
        shaped_sum, shaped_rows, reshaped = sum_over_ranks(
            [float(shaped.sum()), shaped.numel(), float(not torch.equal(shaped, train.rewards))], self.device)
        if reshaped:
            metrics["reward/shaped_mean"] = shaped_sum / max(1.0, shaped_rows)
        metrics.update(timer.metrics())
        metrics["perf/peak_mem"] = peak_memory_gb(self.device)
        # mean over processes: the same value on every rank except perf/, mismatch and refill counters
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1, sync_dist=True)
        self._step_metrics = {k: float(v) for k, v in metrics.items()}  # a checkpoint carries them (see below)
        self.log_dict({"reward": metrics["reward/total_mean"], "acc": metrics["train/accuracy"]}, prog_bar=True,
                      logger=False, on_step=True, on_epoch=False, batch_size=1)

    def _collect_then_train(self, parts: Collector, dataloader_iter: Iterator, timer: StepTimer, step: int):
        """Generate (and refill) the step's groups, then score and train on them."""
        collected, generated = [], []
        for _ in range(self.batches_per_step):
            got = collect_groups(parts, dataloader_iter, timer, step, len(generated), self.noise_draw)
            self._batches_drawn += got.batches_drawn
            collected.append(got)
            generated.extend(got.generated)
        pad = self.rollout.pad_id
        train, seen = concat_scored([got.kept for got in collected], pad), concat_scored(generated, pad)
        with timer.phase("score"):
            shaped = self.algorithm.shape_rewards(train.rewards, train.rollout.lengths, self.sampling.max_new_tokens)
            advantages = self.algorithm.advantages(shaped, self.sampling.n)
        with timer.phase("train"):
            finite_rewards = bool(torch.isfinite(advantages).all()) and bool(torch.isfinite(shaped).all())
            if on_every_rank(finite_rewards, self.device):  # the ranks skip a step together
                deferred = getattr(self.rollout, "mismatch_deferred", False)  # VLLM(measure_mismatch="update")
                update = self._optimize(TrainBatch(train.rollout, advantages, measure_mismatch=deferred))
            else:  # a reward function returned NaN/Inf: nothing trustworthy to learn from
                update = self._skip_step({"train/loss": math.nan, "train/nonfinite_reward": 1.0})
        return collected, train, seen, shaped, advantages, update

    def _train_under_rollout(self, parts: Collector, dataloader_iter: Iterator, timer: StepTimer, step: int):
        """Each group scored and trained while the engine generates the rest (`qerl.training.overlap`)."""
        batch = draw_prompts(dataloader_iter)
        self._batches_drawn += 1
        self.optimizers().zero_grad(set_to_none=True)
        forward_context = self._forward_context()

        def train(group: TrainBatch) -> UpdateResult:
            return accumulate_gradients(self.model, self.algorithm, group, self.micro_batch_size,
                                        self.sampling.temperature, self.manual_backward, forward_context,
                                        totals=(1, 1.0), layout=self.layout)

        def score(index: int, group: Rollout) -> Scored:
            return score_rollout(self.rewards, group, batch.select(index), self.sampling.max_new_tokens,
                                 self.accuracy_index, step)

        ids = self.tokenizer(list(batch.prompts), add_special_tokens=False)["input_ids"]
        done = stream_and_train(self.rollout, self.algorithm, ids, step_sampling(parts, step), score, self.noise_draw,
                                timer, train, self.trainable_parameters(), self.device,
                                self.train_during_rollout_sm_share, self.train_during_rollout_unit)
        with timer.phase("train"):
            if done.finite_rewards:
                update = self._apply_update(done.update)
            else:
                self.optimizers().zero_grad(set_to_none=True)
                update = self._skip_step({"train/loss": math.nan, "train/nonfinite_reward": 1.0})
        update["perf/groups_trained_under_rollout"] = float(done.overlapped_groups)
        collected = [Collected(done.scored, [done.scored], rounds=0, batches_drawn=1)]
        return collected, done.scored, done.scored, done.shaped, done.advantages, update

    def _forward_context(self):
        """The training forward's AQN block when the noise schedule asks for noise in training too (else None)."""
        noise = self.noise_draw
        if not (noise.in_training and noise.sigma > 0):
            return None

        def forward_context():
            return noisy_norms(self.model, noise.sigma, seed=noise.seed, relative=noise.relative)

        return forward_context

    def _optimize(self, batch: TrainBatch) -> dict[str, float]:
        """`num_iterations` optimizer steps on one rollout batch; a non-finite loss or gradient skips the step."""
        opt = self.optimizers()
        temperature, mbs = self.sampling.temperature, self.micro_batch_size
        if self.algorithm.num_iterations > 1:
            batch.old_logprobs = stored_logprobs(self.model, batch.rollout, mbs, temperature, layout=self.layout)
        if self.algorithm.beta > 0:
            batch.ref_logprobs = stored_logprobs(self.model, batch.rollout, mbs, temperature, layout=self.layout,
                                                 context=lambda: reference_policy(self.model, self._base_weights))
        forward_context = self._forward_context()
        totals = distributed.global_totals(batch.rollout.num_rows, float(batch.rollout.completion_mask.sum()),
                                           self.device)  # None in one process
        metrics: dict[str, float] = {}
        for _ in range(self.algorithm.num_iterations):
            opt.zero_grad(set_to_none=True)
            result = accumulate_gradients(self.model, self.algorithm, batch, mbs, temperature, self.manual_backward,
                                          forward_context, totals, layout=self.layout)
            metrics = self._apply_update(result)
            if metrics["train/nan_skipped"]:
                break
        return metrics

    def _apply_update(self, result: UpdateResult) -> dict[str, float]:
        """Clip the accumulated gradients and step the optimizer, or skip the step when anything is non-finite."""
        opt, sched = self.optimizers(), self.lr_schedulers()
        finite = distributed.sum_gradients(self.trainable_parameters(), result.finite)  # every rank agrees
        grad_norm = clip_gradients(self.trainable_parameters(), self.optim.grad_clip) if finite else math.nan
        metrics = update_metrics(distributed.combine_update_metrics(result.metrics, self.device) if finite
                                 else {"loss": math.nan})  # the same keys on every rank
        metrics["train/grad_norm"] = grad_norm
        metrics["train/lr"] = float(opt.param_groups[0]["lr"])
        if not (finite and math.isfinite(grad_norm)):
            opt.zero_grad(set_to_none=True)
            return self._skip_step(metrics)
        self._nan_streak = 0
        opt.step()
        sched.step()
        metrics["train/nan_skipped"] = 0.0
        return metrics

    def _skip_step(self, metrics: dict[str, float]) -> dict[str, float]:
        """Count a step skipped for a non-finite loss, gradient or reward; stop after `max_nan_skips` in a row."""
        self._nan_streak += 1
        if self._nan_streak > self.max_nan_skips:
            raise RuntimeError(
                f"QeRLModule: {self._nan_streak} steps in a row had a non-finite loss, gradient or reward "
                f"(step {self.global_step}); training diverged. Lower `model.init_args.optimizer.lr`, check the "
                "rewards, or raise `model.init_args.max_nan_skips`.")
        return {**metrics, "train/nan_skipped": 1.0}

    def _remember_samples(self, scored: Scored) -> None:
        n, out = scored.rollout.group_size, []
        for g in range(min(self.num_samples_logged, scored.num_groups)):
            row = g * n
            out.append({"prompt": scored.prompts.prompts[g], "completion": scored.rollout.texts[row],
                            "answer": scored.prompts.answers[g], "reward": float(scored.rewards[row]),
                            "scores": {k: float(v[row]) for k, v in scored.scores.items()}})
        self.last_samples = out

    # --------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._validation_run = ValidationRun(self.validation, self.sampling)

    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        """Sample and score held-out prompts (no AQN noise); metrics are logged at the end (`qerl.evaluation.validation`)."""
        if self._validation_run is None:
            self.on_validation_epoch_start()
        self._validation_run.step(self.rollout, self.tokenizer, self.rewards, self.accuracy_index, batch)

    def on_validation_epoch_end(self) -> None:
        run, self._validation_run = self._validation_run, None
        if run is not None:
            run.gather_ranks()  # every rank runs this hook: under DDP the metrics are over all ranks' prompts
        metrics = run.metrics() if run is not None else {}
        if metrics:  # the same values on every rank (sync_dist only keeps Lightning from warning)
            self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=1, sync_dist=True)
            self.last_validation = dict(metrics)
