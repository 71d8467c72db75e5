"""Progress display: a tqdm bar on a terminal, a periodic one-line report anywhere else.

tqdm redraws its bar with carriage returns, which a log file or a CI console keeps as one
line per refresh (and several bars at once, one per search, garble each other). So a bar is
drawn only when the output stream is a terminal; otherwise `LineProgress` prints one plain
line every `interval` seconds (and a last one when it closes) with the count, percent,
rate and the latest postfix values. Both offer the subset of tqdm's API this project uses:
`update`, `set_description`, `set_postfix`, `close` and use as a context manager.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO

# Seconds between two lines of the non-terminal progress.
DEFAULT_INTERVAL = 30.0


class LineProgress:
    """Plain-line progress for logs: `<desc>: <n>/<total> <unit> (<p>%), <rate>/s, <elapsed> s`."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", *, stream: TextIO | None = None,
                 interval: float = DEFAULT_INTERVAL, initial: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.stream = stream if stream is not None else sys.stderr
        self.interval = float(interval)
        self._clock = clock
        self._start = self._last = clock()
        self._initial = initial
        self._postfix = ""
        self._closed = False

    def line(self) -> str:
        """The current progress as one line (no newline)."""
        elapsed = self._clock() - self._start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        post = f", {self._postfix}" if self._postfix else ""
        return f"{self.desc or 'progress'}: {done} {self.unit}{pct}, {rate:.3g} {self.unit}/s, {elapsed:.0f} s{post}"

    def _emit(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._last = self._clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._clock() - self._last >= self.interval:
            self._emit()

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def set_postfix(self, **values: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n > self._initial:
                self._emit()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Silent:
    """Progress that shows nothing (progress disabled)."""

    def __init__(self) -> None:
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description(self, desc: str, refresh: bool = True) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether `stream` (default stderr, where progress goes) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(total: int | None, desc: str = "", unit: str = "it", *, enabled: bool = True,
                 stream: TextIO | None = None, interval: float = DEFAULT_INTERVAL, initial: int = 0,
                 **tqdm_options: Any) -> Any:
    """A tqdm bar when `stream` (default stderr) is a terminal, else a `LineProgress`;
    nothing at all when `enabled` is false. `tqdm_options` (position, leave, ...) apply to
    the bar only."""
    if not enabled:
        return _Silent()
    if is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream, **tqdm_options)
    return LineProgress(total, desc, unit, stream=stream, interval=interval, initial=initial)
