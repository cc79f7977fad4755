"""Memory planning: the start-up estimate of an RL run's peak GPU memory (the colocated vLLM engine included), the
automatic micro-batch and the engine's automatic gpu_memory_utilization."""
from qerl.memory.engine import EngineEstimate, EngineSettings, auto_utilization, estimate_engine
from qerl.memory.estimate import (
                                  MemoryEstimate,
                                  MemoryPlanWarning,
                                  ModelShape,
                                  RunShape,
                                  auto_micro_batch,
                                  check_fits,
                                  estimate_memory,
                                  free_device_memory,
                                  layer_activation_bytes,
                                  weight_bits,
)
from qerl.memory.startup import MemoryPlan, device_budget, plan_for_module, run_shape

__all__ = ["EngineEstimate", "EngineSettings", "MemoryEstimate", "MemoryPlan", "MemoryPlanWarning", "ModelShape",
           "RunShape", "auto_micro_batch", "auto_utilization", "check_fits", "device_budget", "estimate_engine",
           "estimate_memory", "free_device_memory", "layer_activation_bytes", "plan_for_module", "run_shape",
           "weight_bits"]
