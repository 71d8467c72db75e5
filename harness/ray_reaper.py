"""`python -m harness.ray_reaper PID`: end the local Ray of a driver that died without cleanup.

The embedded local Ray (`harness.ray_session.ensure_ray` without an address) runs as
children of the command's process. When the command ends normally, `ray.shutdown()` stops
them; when it is SIGKILLed (or crashes hard), the GCS, the raylet and the workers exit on
their own, but the raylet's dashboard and runtime-env agents stay alive for minutes
(measured with ray 2.60: still running 40 s after the driver). This watcher, started in its
own session next to the local Ray, remembers the Ray processes under the driver and, once
the driver is gone, sends them SIGTERM, then SIGKILL after a grace period.

Linux only (it reads /proc); elsewhere `ensure_ray` does not start it. A process is
remembered only if it descends from the driver and looks like Ray's (its command line names
Ray's package folder or is a `ray::` process title), and it is signalled only if its start
time is unchanged, so a recycled pid is never touched.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards); None if gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22), None if it is gone."""
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def parent_map() -> dict[int, int]:
    """pid -> parent pid of every visible process."""
    out = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                out[int(entry.name)] = int(fields[1])
    return out


def descendants(pid: int, parents: dict[int, int]) -> list[int]:
    """All processes below `pid` in the `parents` tree (pid -> parent pid)."""
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def looks_like_ray(pid: int) -> bool:
    try:
        cmdline = (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return cmdline.startswith(b"ray::") or b"/ray/" in cmdline


def _alive(pid: int, started: str | None) -> bool:
    return started is not None and start_time(pid) == started


def watch(driver: int, *, interval: float = 1.0, grace: float = 3.0) -> list[int]:
    """Wait for `driver` to end, then stop its remembered Ray processes; returns their pids."""
    driver_start = start_time(driver)
    known: dict[int, str] = {}
    while _alive(driver, driver_start):
        for pid in descendants(driver, parent_map()):
            if pid not in known and looks_like_ray(pid):
                started = start_time(pid)
                if started is not None:
                    known[pid] = started
        time.sleep(interval)
    left = [pid for pid, started in known.items() if _alive(pid, started)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while wait and time.monotonic() < deadline and any(_alive(p, known[p]) for p in left):
            time.sleep(0.1)
        left = [p for p in left if _alive(p, known[p])]
    return sorted(known)


def start_for_current_process() -> bool:
    """Start a watcher of this process (detached, own session, no inherited pipes).

    Returns whether one was started (not on platforms without /proc)."""
    import subprocess

    if not (PROC / str(os.getpid()) / "stat").is_file():
        return False
    # Run by file path: the watcher imports nothing of the package, so it works installed or not.
    subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(os.getpid())],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)
    return True


if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    watch(int(sys.argv[1]))
