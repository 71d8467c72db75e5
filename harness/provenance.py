"""Which code produced a result: the git SHA of this checkout (recorded per row)."""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`git rev-parse HEAD` of the checkout holding this package, with "-dirty" when it has
    uncommitted changes; "" when it is not a git checkout (an installed wheel, no git).

    Cached: the driver asks once per command, and the rows it writes carry it (`git_sha`).
    """
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=_REPO).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True,
                               cwd=_REPO).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return sha + ("-dirty" if dirty else "")
