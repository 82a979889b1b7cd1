import json
import os
import subprocess
import sys
from pathlib import Path

from ferkit.engine.distributed import World, batch_bounds, shard
from ferkit.models import create_model

import torch


def test_batch_bounds_cover_every_sample_once():
    for n, bs in [(140, 32), (128, 32), (31, 32), (1000, 128)]:
        bounds = batch_bounds(n, bs)
        covered = [i for lo, hi in bounds for i in range(lo, hi)]
        assert covered == list(range(n))
        assert all(hi - lo >= min(bs, n) for lo, hi in bounds)


def test_shards_partition_the_batch():
    batch = torch.randperm(45)
    parts = [shard(batch, World(rank, 4)) for rank in range(4)]
    assert torch.equal(torch.cat(parts), batch)
    assert {len(p) for p in parts} <= {11, 12}


def start_worker(out, *args, torchrun):
    """Start tests/_ddp_worker.py on one CPU thread per process, under torchrun with 2 processes or alone."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # alone means alone
        env.pop(key, None)
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun else []
    cmd = [sys.executable, *launcher, str(Path(__file__).parent / "_ddp_worker.py"), str(out), *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def test_torchrun_two_cpu_processes(tmp_path):
    # the two-process run and the one-process reference below at once: neither reads the other's files
    ranks_run = start_worker(tmp_path, "1", torchrun=True)  # sync_bn on: ignored on CPU, logged
    reference_run = start_worker(tmp_path, "1", "reference", torchrun=False)
    finish(ranks_run)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    # every epoch: the two ranks' samples together are each training sample exactly once
    n = ranks[0]["n_train"]
    steps = len(ranks[0]["indices"])
    assert steps == len(ranks[1]["indices"]) and steps % 2 == 0
    per_epoch = steps // 2
    for epoch in range(2):
        window = slice(epoch * per_epoch, (epoch + 1) * per_epoch)
        seen = [i for r in ranks for batch in r["indices"][window] for i in batch]
        assert sorted(seen) == list(range(n))
    # the ranks step together: every parameter and class center equal to the last bit. (BatchNorm's
    # running statistics are each rank's own between forwards; rank 0's are the ones saved.)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    params = [name for name, _ in create_model("resnet_tiny", attention="cbam").named_parameters()]
    assert len(params) > 40 and set(params) < set(rank0["model"])
    for name in params:
        assert torch.equal(rank0["model"][name], rank1["model"][name]), name
    assert rank0["criterion"]["aux.centers"].shape == (7, 64)
    assert torch.equal(rank0["criterion"]["aux.centers"], rank1["criterion"]["aux.centers"])
    assert ranks[0]["val_acc"] == ranks[1]["val_acc"] and ranks[0]["test_acc"] == ranks[1]["test_acc"]
    # only rank 0 wrote the run
    assert (tmp_path / "run" / "final.json").is_file()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2

    # One process training on the same batches, each half through the model on its own as a rank runs it
    # (see _ddp_worker.ShardedForward), ends where the two processes did: averaged gradients equal the
    # full batch's. The tolerance, 1e-5, is for the order of float sums over 10 SGD steps (measured:
    # 2.4e-7 on weights and BN statistics, 1.2e-6 on the centers); BatchNorm over the whole batch
    # instead of per rank, summed instead of averaged gradients (lr x2) or a doubled center step each
    # moved them by 0.05 to 4.
    finish(reference_run)
    reference = torch.load(tmp_path / "reference.pt", weights_only=True)
    assert list(reference["model"]) == list(rank0["model"])
    for name, tensor in reference["model"].items():
        torch.testing.assert_close(rank0["model"][name], tensor, rtol=1e-5, atol=1e-5,
                                   msg=lambda message, name=name: f"{name}: {message}")
    torch.testing.assert_close(rank0["criterion"]["aux.centers"], reference["criterion"]["aux.centers"],
                               rtol=1e-5, atol=1e-5)
    moved = [name for name in params if not torch.equal(reference["model"][name], reference["init"][name])]
    assert moved == params  # training changed every parameter, so agreeing says something
