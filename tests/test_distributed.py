import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ferkit.engine.distributed import World, batch_bounds, shard

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


def test_torchrun_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    worker = Path(__file__).parent / "_ddp_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(worker), str(tmp_path), "1"]  # sync_bn on: ignored on CPU, logged
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
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
    # weights stay in sync, so validation agrees on every rank; only rank 0 wrote the run
    assert ranks[0]["val_acc"] == ranks[1]["val_acc"] and ranks[0]["test_acc"] == ranks[1]["test_acc"]
    assert ranks[0]["fc_sum"] == pytest.approx(ranks[1]["fc_sum"], rel=1e-6)
    assert ranks[0]["centers_sum"] == pytest.approx(ranks[1]["centers_sum"], rel=1e-6)
    assert (tmp_path / "run" / "final.json").is_file()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
