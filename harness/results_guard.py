"""One command per results folder at a time, and a way out of old state.

`folder_lock(results_dir)`: an exclusive `fcntl.flock` on `results_dir/.lock`, held for the
whole command. The kernel drops the lock when the process ends in any way (exit, Ctrl-C,
SIGKILL, a crash), so a dead run never blocks the next one; a second live command on the
same folder is refused with one line naming the holder's pid. Only the driver takes the
lock: trials and actors write under deterministic keys on its behalf.

`move_aside(results_dir)`: what `--fresh` does. Everything in the folder (state, Tune's
bookkeeping, Parquet tables, models, cells, report) moves into
`results_dir/previous/<UTC time>/`; nothing is deleted, and the next run starts from zero.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import os
import sys
from pathlib import Path
from typing import Iterator

from harness.errors import UserError

LOCK_FILE = ".lock"
PREVIOUS_DIR = "previous"


@contextlib.contextmanager
def folder_lock(results_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the results folder's lock for the `with` block; UserError if another process holds it."""
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "another process"
            raise UserError(f"results folder {folder} is in use by {holder}; wait for that run to end "
                            f"(or stop it), or use another --out or experiment name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def move_aside(results_dir: str | os.PathLike[str], *, now: _dt.datetime | None = None) -> Path | None:
    """Move the folder's contents (but the lock and older `previous/` runs) into
    `previous/<UTC time>/`; returns that folder, or None when there was nothing to move."""
    folder = Path(results_dir)
    if not folder.is_dir():
        return None
    entries = [p for p in folder.iterdir() if p.name not in (LOCK_FILE, PREVIOUS_DIR)]
    if not entries:
        return None
    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y%m%dT%H%M%S%fZ")
    target = folder / PREVIOUS_DIR / stamp
    target.mkdir(parents=True)
    for entry in entries:
        os.replace(entry, target / entry.name)
    return target


def report_set_aside(moved: list[tuple[Path, Path, str]]) -> None:
    """One warning line per file set aside (`harness.store.set_aside_unreadable`)."""
    for old, new, reason in moved:
        print(f"warning: {old} is unreadable ({reason}); moved to {new}, its rows are recomputed", file=sys.stderr)
