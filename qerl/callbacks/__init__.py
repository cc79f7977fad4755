"""Lightning callbacks of a qerl run: AQN sigma, rollout-engine sync, text samples, adapter export, stop on a signal."""
from qerl.callbacks.adapter_export import AdapterExport
from qerl.callbacks.noise import NoiseCallback
from qerl.callbacks.rollout_sync import RolloutSyncCallback
from qerl.callbacks.samples import SampleLogger
from qerl.callbacks.stop_on_signal import StopOnSignal, StoppedBySignal

__all__ = ["AdapterExport", "NoiseCallback", "RolloutSyncCallback", "SampleLogger", "StopOnSignal", "StoppedBySignal"]
