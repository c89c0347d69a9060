"""Data parallel on CPU with the gloo backend and 2 processes: collectives, and a whole run under torchrun.

`trainer.device: cpu` makes them gloo CPU processes on any machine, one with a single GPU included.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from helpers import dwc, tiny_experiments, write_project

from dwc_core.engine.distributed import Dist

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    d = Dist.from_env("cpu")  # gloo on the CPU even where CUDA is available (never set_device)
    try:
        # gradient averaging
        p = torch.nn.Parameter(torch.zeros(3))
        p.grad = torch.full((3,), float(rank + 1))
        d.average_gradients([p])
        # module broadcast from rank 0
        m = torch.nn.Linear(2, 2)
        with torch.no_grad():
            m.weight.fill_(float(rank + 10))
        d.broadcast_module(m)
        # sharded gather of 5 rows (ranks get 3 and 2) keeps order
        start, stop, per = d.shard(5)
        rows = torch.arange(start, stop, dtype=torch.float32).view(-1, 1).repeat(1, 2)
        gathered = d.gather_rows(rows, 5, per)
        # agreement on a flag raised by one rank only
        flag = d.any(rank == 1, torch.device("cpu"))
        out.put((rank, p.grad.tolist(), m.weight.flatten().tolist(), gathered[:, 0].tolist(), flag))
    finally:
        d.close()


def test_collectives_with_two_gloo_processes():
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for _rank, grad, weight, gathered, flag in results:
        assert grad == [1.5, 1.5, 1.5]  # mean of 1 and 2
        assert weight == [10.0] * 4  # rank 0's values everywhere
        assert gathered == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert flag is True


TINY = tiny_experiments(
    "epochs: 1, batch_size: 16, lr: 1.0e-3, num_workers: 0, log_every: 2, heartbeat_s: 0.5, device: cpu"
)


def test_torchrun_two_processes_matches_single_process_evaluation(tmp_path):
    from dwc_core.runs.registry import Registry

    write_project(tmp_path, TINY)
    for gpus in ("2", "1"):
        res = dwc(tmp_path, "run", "tiny", "--set", f"trainer.gpus={gpus}")
        assert res.returncode == 0, res.stdout + res.stderr
    reg = Registry(tmp_path / "runs" / "registry.db")
    ddp, single = reg.get(1), reg.get(2)
    assert ddp["status"] == "done" and single["status"] == "done"
    # the untrained model, evaluated on 2 ranks (sharded encoding, gathered on rank 0), scores exactly as on 1
    e_ddp, e_single = reg.evaluations(1)[0], reg.evaluations(2)[0]
    assert e_ddp["epoch"] == e_single["epoch"] == 0
    assert e_ddp["metrics"] == e_single["metrics"] and e_ddp["num_queries"] == 48
    # half the steps: each global step consumes 2 × batch_size samples
    steps_ddp = max(m["step"] for m in reg.metrics(1, split="train"))
    steps_single = max(m["step"] for m in reg.metrics(2, split="train"))
    assert steps_ddp * 2 == steps_single == 320 // 16
    assert "world size 2" in " ".join(e["message"] for e in reg.events(1))
    # where evaluation time goes, as metrics of every evaluation
    phases = {m["name"] for m in reg.metrics(2, split="test")}
    assert {"eval_encode_gallery_s", "eval_encode_queries_s", "eval_rank_s", "eval_write_s"} <= phases
