"""qerl.training.distributed and qerl.parallel on a real 2-process gloo group: counts, the gradient all-reduce, metric combining, RNG pick."""
from __future__ import annotations

import math
import os
import socket

import torch
import torch.multiprocessing as mp


def _rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    from qerl import parallel
    from qerl.training import distributed as d

    cpu = torch.device("cpu")
    results = {"world": parallel.world(), "draws": [d.global_draw(i) for i in range(3)],
               "totals": d.global_totals(3 + rank, 10.0 * (rank + 1), cpu)}
    a, b = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(3))
    a.grad = torch.full((2, 2), float(rank + 1))
    if rank == 0:
        b.grad = torch.ones(3)  # rank 1 never touched b: counts as zeros
    results["finite"] = d.sum_gradients([a, b], finite=True)
    results["grads"] = (a.grad.clone(), b.grad.clone())
    results["finite_when_one_rank_is_not"] = d.sum_gradients([a, b], finite=rank == 0)
    metrics = {"loss": 0.5 * (rank + 1), "ratio_min": 0.9 - 0.1 * rank, "ratio_max": 1.1 + rank}
    if rank == 0:
        metrics["kl"] = 0.25  # a key rank 1 skipped
    results["metrics"] = d.combine_update_metrics(metrics, cpu)
    results["every"] = (parallel.on_every_rank(True, cpu), parallel.on_every_rank(rank == 0, cpu))
    results["rng"] = d.own_rng({"rng": "rank0", "rng_by_rank": ["rank0", "rank1"]})["rng"]
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_two_ranks_agree_on_counts_gradients_metrics_and_skips(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world"] == (2, 0) and r1["world"] == (2, 1)
    assert r0["draws"] == [0, 2, 4] and r1["draws"] == [1, 3, 5]  # rank r of W: draws r, W + r, ...
    assert r0["totals"] == r1["totals"] == (7, 30.0)
    assert r0["finite"] and r1["finite"]
    for r in (r0, r1):
        assert torch.equal(r["grads"][0], torch.full((2, 2), 3.0)) and torch.equal(r["grads"][1], torch.ones(3))
        assert r["finite_when_one_rank_is_not"] is False
        assert r["metrics"]["loss"] == 1.5 and r["metrics"]["kl"] == 0.25
        assert math.isclose(r["metrics"]["ratio_min"], 0.8) and r["metrics"]["ratio_max"] == 2.1
        assert r["every"] == (True, False)
    assert (r0["rng"], r1["rng"]) == ("rank0", "rank1")
