"""Records of finished runs for a results folder: what ``ferkit reproduce`` writes its tables from."""
from __future__ import annotations

import json
from pathlib import Path

from ferkit.engine.runs import init_chain, read_final
from ferkit.errors import FerkitError
from ferkit.fileio import write_json


def record_run(run_dir: str | Path, results_dir: str | Path, group: str, name: str | None = None) -> Path:
    """Copy a finished run's ``final.json`` with its command into ``results/<group>/<name>.json``."""
    run_dir = Path(run_dir)
    if not (run_dir / "final.json").is_file():
        raise FerkitError(f"{run_dir}: no final.json (the run has not finished)")
    record = read_final(run_dir)
    if record is None:
        raise FerkitError(f"{run_dir / 'final.json'}: damaged (not a JSON mapping of a run's figures)")
    command = run_dir / "command.txt"
    record["command"] = command.read_text().strip() if command.is_file() else None
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    record["curve"] = [{k: e[k] for k in ("epoch", "train_acc", "val_acc", "loss", "wall_s")} for e in epochs]
    # A run that started from another run's weights (init=) cost that run's minutes too.
    before = list(init_chain(record))
    if before:
        record["init_run"] = before[0].name
        record["prior_wall_s"] = sum((read_final(d) or {}).get("wall_s", 0.0) for d in before)
    return write_json(record, Path(results_dir) / group / f"{name or run_dir.name}.json")
