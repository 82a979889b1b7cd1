"""What a finished run folder says about itself: its final figures, and the runs it started from."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from ferkit.engine import modelfile


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
        if isinstance(final.get("teacher_training"), list):
            info["teachers"] = final["teacher_training"]
    return info


def run_provenance(run_dir: str | Path) -> dict[str, Any]:
    """:func:`run_facts` of a run, each run its weights came from (``init=``) nested under ``started_from``: run
    folders while they are there, then the record a model file it started from carried (``init_training``)."""
    run_dir = Path(run_dir)
    info = node = run_facts(run_dir)
    final = read_final(run_dir) or {}
    for parent in init_chain(final):
        node["started_from"] = node = run_facts(parent)
        final = read_final(parent) or {}
    if isinstance(final.get("init_training"), dict):
        node["started_from"] = final["init_training"]
    return info


def training_record(path: Path) -> dict[str, Any]:
    """How the weights in ``path`` were trained: a model file's own record, which travels with the file, else
    what the run folder around it says (:func:`run_provenance`); empty when neither says."""
    if path.suffix == ".safetensors":
        training = modelfile.read(path)[0].info.get("training")
        if isinstance(training, dict) and training:
            return training
    return run_provenance(path.parent)
