"""Memory planning: the start-up estimate of an RL run's peak GPU memory and the automatic micro-batch."""
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

__all__ = ["MemoryEstimate", "MemoryPlan", "MemoryPlanWarning", "ModelShape", "RunShape", "auto_micro_batch",
           "check_fits", "device_budget", "estimate_memory", "free_device_memory", "layer_activation_bytes",
           "plan_for_module", "run_shape", "weight_bits"]
