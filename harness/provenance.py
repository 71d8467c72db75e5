"""Which code produced a result: the git SHA of this checkout (recorded per row)."""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
# The project's code: what a result depends on, and what the driver ships to every Ray node
# (`harness.ray_session.code_runtime_env`).
CODE_PACKAGES = ("harness", "kernels", "search_spaces", "trainers")


def is_dirty(porcelain: str) -> bool:
    """Whether `git status --porcelain` output means the code differs from its commit: a
    tracked file changed, or an untracked file inside CODE_PACKAGES (a new module). Other
    untracked files (a log, a results folder, a notebook) change no result."""
    for line in porcelain.splitlines():
        status, path = line[:2], line[3:].strip('"')
        if status != "??" or path.split("/", 1)[0] in CODE_PACKAGES:
            return True
    return False


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`git rev-parse HEAD` of the checkout holding this package, with "-dirty" when its code
    has uncommitted changes (`is_dirty`); "" when it is not a git checkout (an installed
    wheel, no git).

    Cached: the driver asks once per command, and the rows it writes carry it (`git_sha`).
    """
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=_REPO).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True,
                                cwd=_REPO).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    return sha + ("-dirty" if is_dirty(status) else "")
