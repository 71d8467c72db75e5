"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A library-room module (no harness imports), so the trainers' checkpoints and episode lists
and the harness's result store share one writer.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; some platforms cannot open folders, which is harmless there."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened; rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask, read without changing it where the platform allows (Linux
    /proc); elsewhere set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], write: Callable[[Any], None]) -> Path:
    """Call `write(binary_file)` on a temp file beside `path`, fsync, rename over `path`.

    The one atomic writer of the project: every result file of the harness (Parquet, JSON,
    text, CSV, figures, model files, episode lists, via `harness.store`), the trainers'
    checkpoints and the stored episode lists go through it. The file gets the mode a plain
    `open()` would give (0o666 minus the umask: 0644 under 022), not the temp file's 0600,
    so a group sharing a results folder can read it. On any failure the temp file is
    removed and the error re-raised; `path` keeps its old content (or stays absent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path
