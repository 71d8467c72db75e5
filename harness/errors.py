"""Errors that mean "the user's input is wrong": the CLI prints them as one line, exit 2.

Library rooms (`search_spaces`, `kernels`, `trainers`) raise `ValueError`, `KeyError`,
`FileNotFoundError` with messages that name the thing and the fix; `trainers.data` raises
`DatasetError` (a `ValueError`). The CLI wraps them via `UserError` so no traceback leaks.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input (config, file, name) with a message that names the problem and the fix."""


class ConfigError(UserError, ValueError):
    """An experiment config that cannot be used: names the key, the file and valid choices."""
