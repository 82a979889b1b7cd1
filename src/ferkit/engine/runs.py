"""What a finished run folder says about itself: its record for ``results/``, and the runs it started from."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from ferkit.errors import FerkitError
from ferkit.fileio import write_json


def read_final(run_dir: Path) -> dict[str, Any] | None:
    """A run folder's ``final.json`` as a mapping; None when it is missing, unreadable or damaged (it only
    describes the run: a model beside it is used all the same)."""
    try:
        final = json.loads((run_dir / "final.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(final, dict) or not isinstance(final.get("config", {}), dict):
        return None
    return final


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


def init_run(final: dict[str, Any]) -> Path | None:
    """The finished run folder whose checkpoint a run's ``init=`` named, if it is still there."""
    init = final.get("config", {}).get("init")
    init = Path(init) if isinstance(init, str) else Path()
    if init.suffix == ".pt" and read_final(init.parent) is not None:
        return init.parent
    return None


def init_chain(final: dict[str, Any], limit: int = 20) -> Iterator[Path]:
    """The finished run folders a run started from (``init=``), nearest first; ``limit`` stops a loop."""
    parent = init_run(final)
    while parent is not None and limit > 0:
        yield parent
        parent = init_run(read_final(parent) or {})
        limit -= 1


def run_facts(run_dir: str | Path) -> dict[str, Any]:
    """How the run in ``run_dir`` was made, from the files ``ferkit train`` leaves there (empty if none)."""
    run_dir = Path(run_dir)
    info: dict[str, Any] = {}
    if (run_dir / "command.txt").is_file():
        info["command"] = (run_dir / "command.txt").read_text(errors="replace").strip()
    final = read_final(run_dir)
    if final is not None:
        keep = ("git_commit", "hardware", "seed", "epochs_done", "best_epoch", "wall_s", "val_acc", "test_acc")
        info.update({k: final[k] for k in keep if k in final}, config=final.get("config"))
    return info


def run_provenance(run_dir: str | Path) -> dict[str, Any]:
    """:func:`run_facts` of a run, each run its weights came from (``init=``) nested under ``started_from``."""
    run_dir = Path(run_dir)
    info = node = run_facts(run_dir)
    for parent in init_chain(read_final(run_dir) or {}):
        node["started_from"] = node = run_facts(parent)
    return info
