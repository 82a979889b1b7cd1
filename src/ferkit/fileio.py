"""Atomic file writes: every file ferkit writes (checkpoints, caches, models, results, pictures) goes through here.

A write goes to a temporary file in the target's folder and is then renamed over the target, so a crash
or a full disk leaves the old file or the new one, never half of one, and readers never see a partial file.
A write that fails for want of space or permission raises :class:`WriteError` naming the file.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from ferkit.errors import FerkitError

TEMP_SUFFIX = ".tmp"
"""Temp files are ``.<target name>.<random><TEMP_SUFFIX>`` beside their target."""
_NEARLY_FULL = 1 << 20  # bytes free under which a failed write is put down to a full disk
_FULL = {errno.ENOSPC, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


class WriteError(FerkitError, OSError):
    """A file could not be written (disk full, no permission); an OSError too, for callers that only warn."""


def _write_error(target: Path, error: BaseException, disk_full: bool) -> WriteError | None:
    """The WriteError that explains ``error`` while writing ``target``, or None when it is not about the disk."""
    code = getattr(error, "errno", None)
    if code in _FULL or (disk_full and isinstance(error, (OSError, RuntimeError))):
        # torch.save to a path reports a full disk only as RuntimeError("... unexpected pos ..."),
        # hence the free-space check for errors without an errno.
        return WriteError(f"disk full while writing {target}; free some space and run again "
                          "(the previous file, if any, is intact)")
    if code in _DENIED:
        reason = "read-only file system" if code == errno.EROFS else "permission denied"
        return WriteError(f"cannot write {target} ({reason}); make the folder writable or choose another")
    blocker = _file_in_the_way(target)
    if code in (errno.ENOTDIR, errno.EEXIST) and blocker is not None:
        return WriteError(f"cannot write {target}: {blocker} is a file, not a folder; choose another output")
    if code == errno.ENAMETOOLONG:
        return WriteError(f"cannot write {short_path(target)}: the name is longer than the file system allows; "
                          "choose a shorter one")
    return None


def _file_in_the_way(target: Path) -> Path | None:
    """The first folder on the way to ``target`` that exists as something other than a folder, if any."""
    for parent in reversed(target.absolute().parents):
        try:
            if parent.exists() and not parent.is_dir():
                return parent
        except OSError:  # a name too long to ask about
            return None
    return None


def short_path(path: str | os.PathLike[str], limit: int = 120) -> str:
    """``path`` as text, its middle cut out past ``limit`` characters: a message stays one readable line."""
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"


@contextlib.contextmanager
def _explained(target: Path) -> Iterator[None]:
    """Turn a disk-full or permission OSError raised inside into a WriteError naming ``target``."""
    try:
        yield
    except OSError as e:
        explained = _write_error(target, e, False)
        if explained is None:
            raise
        raise explained from None


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL
    except OSError:
        return False


def _file_mode(target: Path) -> int:
    """The permission bits ``target`` gets: those it has now, or those a plain ``open()`` gives a new file."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        pass
    # The umask can only be read by setting it; Linux shows it in /proc, elsewhere it is set
    # (to a strict value, so files other threads make meanwhile are never too open) and put back.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it over ``path``; returns ``path``.

    The file ends with the permissions a plain write would leave (the old file's, or the umask's for a
    new one), not the owner-only ones of the temp file.
    """
    target = Path(path)
    with _explained(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        # After the write, so an old file's read-only bits cannot stop it.
        os.chmod(tmp, _file_mode(target))
        os.replace(tmp, target)
    except BaseException as e:
        # Judge the space before the partial temp file that may have filled the disk is removed.
        explained = _write_error(target, e, _nearly_full(target.parent))
        Path(tmp).unlink(missing_ok=True)
        if explained is not None:
            raise explained from None
        raise
    return target


def write_json(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``payload`` to ``path`` as indented JSON, atomically."""
    text = json.dumps(payload, indent=2) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_text(text: str, path: str | os.PathLike[str]) -> Path:
    """Write ``text`` to ``path``, atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


PLOTS_EXTRA = 'pip install "ferkit[plots]"'


def can_draw() -> bool:
    """Whether matplotlib (the ``plots`` extra) is installed, so figures can be drawn."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def new_figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure`` (``kwargs`` to its constructor); FerkitError saying what to install without it.

    A bare Figure renders through Agg without pyplot, so drawing works headless and leaves the user's
    chosen backend alone.
    """
    if not can_draw():
        raise FerkitError(f"drawing figures needs matplotlib: {PLOTS_EXTRA}")
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 150) -> Path:
    """Write a matplotlib ``Figure`` to ``path`` as PNG."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append ``line`` and a newline to ``path`` (a log, such as metrics.jsonl), flushed to disk."""
    target = Path(path)
    with _explained(target), open(target, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temp files that writes killed before their rename left in ``folder``; returns them."""
    stale = [p for p in Path(folder).glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def check_writable(folder: str | os.PathLike[str]) -> None:
    """Raise WriteError unless files can be created in ``folder``, or, when it does not exist yet, in the
    nearest folder above it that does (where it would be made). Creates nothing that stays."""
    target = Path(folder).absolute()
    blocker = _file_in_the_way(target / "x")
    if blocker is not None:
        raise WriteError(f"cannot write in {target}: {blocker} is a file, not a folder; choose another output")
    existing = next((p for p in (target, *target.parents) if p.is_dir()), target.anchor)
    with _explained(target):
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".ferkit-probe.", suffix=TEMP_SUFFIX)
    os.close(fd)
    os.unlink(probe)
