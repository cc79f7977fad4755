"""Lightning callbacks of a qerl run: AQN sigma, rollout-engine sync, text samples, adapter export."""
from qerl.callbacks.adapter_export import AdapterExport
from qerl.callbacks.noise import NoiseCallback
from qerl.callbacks.rollout_sync import RolloutSyncCallback
from qerl.callbacks.samples import SampleLogger

__all__ = ["AdapterExport", "NoiseCallback", "RolloutSyncCallback", "SampleLogger"]
