"""Run by test_distributed.py: a tiny training run that reports what it saw and the weights it ended with.

Under torchrun (``_ddp_worker.py OUT SYNC_BN``) each of the 2 processes writes ``rank{r}.json`` (the samples
it drew) and ``rank{r}.pt`` (its weights, buffers and class centers when training ended, before the best
checkpoint is reloaded). Without torchrun (``_ddp_worker.py OUT SYNC_BN reference``) one process trains the
same config and writes ``reference.pt``: the single-process run the two-process one must match.
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_split_dict  # noqa: E402

from ferkit.config import load_config  # noqa: E402
from ferkit.engine import distributed  # noqa: E402
from ferkit.engine.train import Trainer  # noqa: E402

RANKS = 2
# fp32 and no augmentation: with per-image random draws a batch of 32 and two shards of 16 would be
# augmented differently, so the runs could not be compared tensor for tensor.
CONFIG = {"model": "resnet_tiny", "stem": "imagenet", "input_size": 32, "batch_size": 32, "epochs": 2,
          "degrees": 0.0, "pad": 0, "flip": False, "warmup_epochs": 0.5, "eval_batch_size": 64,
          "precision": "fp32", "threads": 1}


class ShardedForward(torch.nn.Module):
    """What ``RANKS`` DDP processes compute on one batch, in one process.

    Each rank runs the model on its shard, so BatchNorm normalises each shard by its own statistics
    (PyTorch syncs them on GPUs only); DDP broadcasts rank 0's buffers before every forward, so the
    running statistics follow rank 0's shards alone. The loss on the concatenated outputs is the mean
    of the shards' mean losses (the shards are equal in size), whose gradient is DDP's average.
    """

    def __init__(self, model: torch.nn.Module, ranks: int):
        super().__init__()
        self.model, self.ranks = model, ranks

    def forward(self, x: torch.Tensor, return_features: bool = False):
        norms = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        parts = []
        for rank, piece in enumerate(torch.tensor_split(x, self.ranks)):
            for m in norms:  # batch statistics either way; only rank 0's pass updates the running ones
                m.track_running_stats = rank == 0
            parts.append(self.model(piece, return_features=True))
        for m in norms:
            m.track_running_stats = True
        features, logits = (torch.cat(outputs) for outputs in zip(*parts))
        return (features, logits) if return_features else logits


out = Path(sys.argv[1])
reference = sys.argv[3:] == ["reference"]
cfg = load_config("r18_cbam_island", {**CONFIG, "sync_bn": sys.argv[2] == "1"})
seen = []
original_shard = distributed.shard


def recording_shard(batch, world):
    part = original_shard(batch, world)
    seen.append(part.tolist())
    return part


# the trainer looks the function up in its own module
import ferkit.engine.evaluate as evaluate_module  # noqa: E402
import ferkit.engine.train as train_module  # noqa: E402

train_module.shard = recording_shard
# the run's pictures (test report, curves) are not under test here: 1.5 s or more a process
evaluate_module.can_draw = train_module.can_draw = lambda: False
trainer = Trainer(cfg, tiny_split_dict(), out / ("reference" if reference else "run"), log=lambda s: None,
                  progress=False)
init = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}
if reference:
    assert trainer.world.size == 1
    trainer.forward = ShardedForward(trainer.model, RANKS)
real_finish = trainer.finish


def finish_saving_the_trained_weights():
    # before finish() loads best.pt into every rank: the weights training itself left on this process
    name = "reference" if reference else f"rank{trainer.world.rank}"
    torch.save({"model": trainer.model.state_dict(), "criterion": trainer.criterion.state_dict(), "init": init},
               out / f"{name}.pt")
    return real_finish()


trainer.finish = finish_saving_the_trained_weights
result = trainer.fit()
if not reference:
    rank = trainer.world.rank
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world": trainer.world.size, "val_acc": result.best_val_acc, "test_acc": result.test_acc,
        "epochs": result.epochs_done, "indices": seen, "n_train": len(trainer.images),
    }))
