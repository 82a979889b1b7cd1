"""Tests for ferkit.fileio: atomic writes, and write failures that name the file."""
from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from ferkit import fileio
from ferkit.cli import main
from ferkit.config import load_config
from ferkit.engine.modelfile import save_checkpoint
from ferkit.engine.train import train
from ferkit.errors import FerkitError

from conftest import FAST


def raise_oserror(code: int):
    def write(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise OSError(code, "simulated")
    return write


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(fileio.TEMP_SUFFIX))


def test_disk_full_names_the_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "final.json"
    fileio.write_json({"old": 1}, target)
    with pytest.raises(FerkitError, match=f"disk full while writing {target}; free some space") as err:
        fileio.atomic_write(target, raise_oserror(errno.ENOSPC))
    assert isinstance(err.value, OSError)  # callers that only warn (the data cache) still catch it
    assert json.loads(target.read_text()) == {"old": 1} and leftovers(tmp_path) == []


def test_permission_denied_names_the_file(tmp_path):
    with pytest.raises(FerkitError, match=rf"cannot write {tmp_path / 'a.md'} \(permission denied\)"):
        fileio.atomic_write(tmp_path / "a.md", raise_oserror(errno.EACCES))
    with pytest.raises(FerkitError, match=r"read-only file system"):
        fileio.atomic_write(tmp_path / "a.md", raise_oserror(errno.EROFS))
    with pytest.raises(OSError, match="simulated") as err:  # other errors pass through unchanged
        fileio.atomic_write(tmp_path / "a.md", raise_oserror(errno.EIO))
    assert not isinstance(err.value, FerkitError) and leftovers(tmp_path) == []


def test_a_write_that_raises_keeps_the_old_file(tmp_path):
    target = tmp_path / "config.yaml"
    fileio.write_text("old: 1\n", target)

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_text("new: ")
        raise ValueError("cannot serialise")

    with pytest.raises(ValueError, match="cannot serialise"):
        fileio.atomic_write(target, half_then_fail)
    with pytest.raises(TypeError):  # a payload JSON cannot hold fails before the file is touched
        fileio.write_json({"bad": object()}, target)
    assert target.read_text() == "old: 1\n" and leftovers(tmp_path) == []


def test_written_files_get_the_permissions_a_plain_write_gives(tmp_path):
    old_umask = os.umask(0o027)
    try:
        fresh = fileio.write_text("a\n", tmp_path / "fresh.md")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o640  # 0o666 less the umask, not the temp file's 0o600
        fresh.chmod(0o604)
        fileio.write_json({"b": 1}, fresh)  # an existing file keeps its permissions
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o604 and json.loads(fresh.read_text()) == {"b": 1}
    finally:
        os.umask(old_umask)


def test_torch_save_on_a_full_disk_is_named_not_unexpected_pos(tmp_path, monkeypatch):
    # torch.save to a path reports a full disk as RuntimeError("... unexpected pos ..."), no errno.
    def torch_save(state, tmp):
        Path(tmp).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 71188736 vs 71188624")

    monkeypatch.setattr(torch, "save", torch_save)
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda folder: type("Usage", (), {"free": 4096})())
    with pytest.raises(FerkitError, match=f"disk full while writing {tmp_path / 'last.pt'}"):
        save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda folder: type("Usage", (), {"free": 1 << 40})())
    with pytest.raises(RuntimeError, match="unexpected pos"):  # with space left it is not put down to the disk
        save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    assert leftovers(tmp_path) == []


def test_training_on_a_full_disk_stops_with_one_line(tiny_splits, tmp_path, monkeypatch, capsys):
    real_save = torch.save

    def full_disk(state, tmp):
        real_save(state, tmp)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    cfg = load_config("r18", {**FAST, "epochs": 1})
    with pytest.raises(FerkitError, match=f"disk full while writing {tmp_path / 'run' / 'best.pt'}"):
        train(cfg, tiny_splits, tmp_path / "run", progress=False, log=lambda s: None)
    assert leftovers(tmp_path / "run") == []


def test_training_and_reports_write_through_the_atomic_writer(tiny_splits, tmp_path, written_files):
    train(load_config("r18", {**FAST, "epochs": 1}), tiny_splits, tmp_path / "run", progress=False,
          log=lambda s: None)
    # (checkpoints and pictures hold their own reference to atomic_write)
    for name in ("config.yaml", "final.json", "test_report.json", "test_report.md"):
        assert name in written_files, name


def test_check_writable(tmp_path, monkeypatch):
    fileio.check_writable(tmp_path / "not" / "made" / "yet")
    assert not (tmp_path / "not").exists() and list(tmp_path.iterdir()) == []

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(fileio.tempfile, "mkstemp", denied)
    with pytest.raises(FerkitError, match=f"cannot write {tmp_path} \\(permission denied\\)"):
        fileio.check_writable(tmp_path)


def test_evaluate_into_a_read_only_folder_fails_before_scoring(tiny_splits, tmp_path, monkeypatch, capsys):
    from conftest import write_kaggle_tree

    import ferkit.engine.evaluate

    data = write_kaggle_tree(tmp_path / "fer", {"Training": 4, "PublicTest": 2, "PrivateTest": 2})
    train(load_config("r18", {**FAST, "epochs": 1}), tiny_splits, tmp_path / "run", progress=False,
          log=lambda s: None)
    scored = []
    monkeypatch.setattr(ferkit.engine.evaluate, "evaluate", lambda *a, **k: scored.append(1) or (None, 0.0))
    real_mkstemp = fileio.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if Path(dir) == tmp_path / "run":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(fileio.tempfile, "mkstemp", read_only)
    assert main(["evaluate", str(tmp_path / "run" / "best.pt"), "--data", str(data), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'run'}" in err and len(err.strip().splitlines()) == 1
    assert scored == []  # refused before the scoring
