"""RunFolderSaveConfig: the recipe as run, saved into the run's own folder for every logger (W&B included)."""
from __future__ import annotations

import os

from lightning.pytorch.cli import SaveConfigCallback

from qerl.callbacks.adapter_export import run_dir, shares_save_dir


class RunFolderSaveConfig(SaveConfigCallback):
    """Lightning's `SaveConfigCallback`, but into `run_dir(trainer)`.

    For TensorBoard and CSV that is `trainer.log_dir` (the version folder) as before. W&B's `trainer.log_dir` is
    its `save_dir`, shared by every run, so a second run there would stop on the first run's `config.yaml`; here
    it goes to `<save_dir>/<project>/<run id>/`, next to the run's checkpoints and adapters.
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved or not self.save_to_log_dir:
            return super().setup(trainer, pl_module, stage)
        log_dir = trainer.log_dir  # every rank: a broadcast under DDP
        if not shares_save_dir(trainer.loggers[0] if trainer.loggers else None, log_dir):
            return super().setup(trainer, pl_module, stage)  # a version folder of its own (TensorBoard, CSV)
        folder = run_dir(trainer)  # every rank takes this branch (one more broadcast); rank 0 knows the run id
        if trainer.is_global_zero:
            path = os.path.join(folder, self.config_filename)
            if os.path.isfile(path) and not self.overwrite:
                raise RuntimeError(f"{path} exists already: this run id's folder holds another run's config.")
            os.makedirs(folder, exist_ok=True)
            self.parser.save(self.config, path, skip_none=False, overwrite=self.overwrite, multifile=self.multifile)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)
        return None
