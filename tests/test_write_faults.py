"""In-process twins of the fault-injection runs: a full disk under the checkpoint writer and the start-up write
probe (through `fault_hooks`' fake filesystem layer), and StopOnSignal's first and second signal."""
from __future__ import annotations

import os
import signal

import pytest
import torch
from fault_hooks import full_disk_fdopen

from qerl.training.checkpoint_io import CheckpointWriteError, read_checkpoint, serialized_size, write_atomically
from qerl.training.write_probe import OutputFolderError, probe_writable


def checkpoint(step: int) -> dict:
    return {"global_step": step, "state_dict": {"lora_A": torch.full((64, 64), float(step))}}


def test_a_full_disk_keeps_the_old_checkpoint_and_says_what_it_needed(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    write_atomically(checkpoint(2), str(path))
    monkeypatch.setattr(os, "fdopen", full_disk_fdopen(os.fdopen, 1000))
    with pytest.raises(CheckpointWriteError) as caught:
        write_atomically(checkpoint(4), str(path))
    needed = serialized_size(checkpoint(4))
    assert needed > 16_000  # 64 x 64 float32 and the rest
    message = str(caught.value)
    assert message.startswith(f"checkpoint {path} was not written: no space left on the device of {tmp_path} "
                              f"(it needs {needed / 2**20:,.1f} MiB, ")
    assert message.endswith(f"the earlier checkpoint {path} (step 2) is intact: free space (or fix the folder) and "
                            "resume from it with --ckpt_path last.")
    assert caught.value.errno == 28 and "\n" not in message
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temp file left
    assert read_checkpoint(str(path))["global_step"] == 2


def test_a_full_disk_before_any_checkpoint_says_none_was_written(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fdopen", full_disk_fdopen(os.fdopen, 0))
    with pytest.raises(CheckpointWriteError, match="no earlier checkpoint was written"):
        write_atomically(checkpoint(1), str(tmp_path / "c" / "epoch=0-step=1.ckpt"))
    assert os.listdir(tmp_path / "c") == []


def test_the_write_probe_names_a_full_device_a_file_in_the_way_and_leaves_nothing(tmp_path, monkeypatch):
    probe_writable(str(tmp_path / "runs" / "r" / "version_0"), "--trainer.logger.init_args.save_dir")
    assert os.listdir(tmp_path) == []  # it created no folder and left no file
    (tmp_path / "taken").write_text("x")
    with pytest.raises(OutputFolderError, match=r"taken is a file, not a folder; choose another X\.$"):
        probe_writable(str(tmp_path / "taken" / "version_0"), "X")
    monkeypatch.setattr(os, "fdopen", full_disk_fdopen(os.fdopen, 0))
    with pytest.raises(OutputFolderError) as caught:
        probe_writable(str(tmp_path / "runs"), "X")
    assert str(caught.value) == (f"cannot write the run folder {tmp_path / 'runs'} (it would be created in {tmp_path}): "
                                 f"no space left on the device of {tmp_path}; free some space or choose another X.")
    assert os.listdir(tmp_path) == ["taken"]


def test_stop_on_signal_notes_the_first_signal_and_stops_at_the_second(capfd):
    from qerl.callbacks.stop_on_signal import StopOnSignal, StoppedBySignal

    stop = StopOnSignal()
    stop._done = False  # as in a fit, between `setup` and `teardown`
    with pytest.raises(StoppedBySignal) as early:  # no step finished yet: nothing to save, stop at once
        stop._on_signal(signal.SIGINT, None)
    assert early.value.code == 130 and early.value.checkpoint is None
    stop.steps_done = 2
    stop._on_signal(signal.SIGTERM, None)
    assert stop.received == signal.SIGTERM
    assert "SIGTERM received: finishing step 1, then saving a checkpoint" in capfd.readouterr().err
    with pytest.raises(StoppedBySignal) as second:
        stop._on_signal(signal.SIGTERM, None)
    assert second.value.code == 143 and second.value.signal_name == "SIGTERM"
    calls = []
    stop._original[signal.SIGINT] = lambda signum, frame: calls.append(signum)
    stop._done = True  # after the fit (or a failed one): the handler found at `setup` gets the signal
    stop._on_signal(signal.SIGINT, None)
    assert calls == [signal.SIGINT]


def test_an_adapter_the_filesystem_refuses_is_one_line_naming_the_intact_checkpoint(tmp_path):
    """A real refusal (a file where the run's `adapter` folder should be): AdapterWriteError names the adapter and
    the run's intact checkpoint."""
    import lightning as L
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from qerl.callbacks.adapter_export import AdapterExport
    from qerl.training.checkpoint_io import AdapterWriteError

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    module = L.LightningModule()
    module.model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj"]))

    def trainer(root):
        return L.Trainer(default_root_dir=str(root), logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)

    exporter = AdapterExport()
    good = exporter.export(trainer(tmp_path / "good"), module, "step-2")  # the real thing works
    assert os.path.isfile(os.path.join(good, "adapter_model.safetensors"))
    run = tmp_path / "run"
    write_atomically(checkpoint(2), str(run / "checkpoints" / "last.ckpt"))
    (run / "adapter").write_text("a file, not a folder")
    with pytest.raises(AdapterWriteError) as caught:
        exporter.export(trainer(run), module, "step-4")
    assert str(caught.value).startswith(f"adapter {run / 'adapter' / 'step-4'} was not written: Not a directory (")
    assert str(caught.value).endswith(f"the checkpoint {run / 'checkpoints' / 'last.ckpt'} (step 2) is intact: free "
                                      "space (or fix the folder) and resume from it with --ckpt_path last.")
    assert sorted(os.listdir(run)) == ["adapter", "checkpoints"]
