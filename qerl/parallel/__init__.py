"""The default process group as every floor sees it: this process's rank, and the few collectives shared by
training, rollout, memory, data and evaluation. Without a process group (one process) each is the identity.

The DDP step's own collectives (the gradient all-reduce, global loss normalizers, metric combining) stay in
`qerl.training.distributed`, which builds on these.
"""
from qerl.parallel.group import gather_objects, is_distributed, on_every_rank, sum_over_ranks, world

__all__ = ["gather_objects", "is_distributed", "on_every_rank", "sum_over_ranks", "world"]
