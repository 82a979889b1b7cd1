"""Run under torchrun by test_distributed.py: a tiny 2-process training run that reports what each rank saw."""
import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_split_dict  # noqa: E402

from ferkit.config import load_config  # noqa: E402
from ferkit.engine import distributed  # noqa: E402
from ferkit.engine.train import Trainer  # noqa: E402

out = Path(sys.argv[1])
cfg = load_config("r18_cbam_island", {"stem": "imagenet", "input_size": 32, "batch_size": 32, "epochs": 2,
                                      "degrees": 0.0, "warmup_epochs": 0.5, "sync_bn": sys.argv[2] == "1",
                                      "eval_batch_size": 64})
seen = []
original_shard = distributed.shard


def recording_shard(batch, world):
    part = original_shard(batch, world)
    seen.append(part.tolist())
    return part


# the trainer looks the function up in its own module
import ferkit.engine.train as train_module  # noqa: E402

train_module.shard = recording_shard
trainer = Trainer(cfg, tiny_split_dict(), out / "run", log=lambda s: None, progress=False)
result = trainer.fit()
rank = trainer.world.rank
(out / f"rank{rank}.json").write_text(json.dumps({
    "rank": rank, "world": trainer.world.size, "val_acc": result.best_val_acc, "test_acc": result.test_acc,
    "epochs": result.epochs_done, "indices": seen, "n_train": len(trainer.images),
    "fc_sum": float(trainer.model.fc.weight.detach().double().sum()),
    "centers_sum": float(trainer.criterion.aux.centers.detach().double().sum()),
}))
