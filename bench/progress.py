"""Progress for the long phases of the benchmark and the chaos run (issue 5): tqdm bars on stderr.

On a terminal a bar redraws in place and disappears when its phase ends, and the timestamped lines
on stdout stay. In a log (stderr is not a terminal, as in CI) every redraw is a line of its own, at
most one every ``LOG_INTERVAL_S`` seconds (``LLM_POOL_PROGRESS_INTERVAL_S`` sets another), and a
phase shorter than that prints no bar at all.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from typing import NoReturn

from tqdm import tqdm

LOG_INTERVAL_S = 10.0


class _LogLines:
    """The file tqdm writes to in a log: its carriage-return redraws become whole lines."""

    def write(self, text: str) -> int:
        for part in text.split("\r"):
            if part.strip():
                sys.stdout.flush()  # the timestamped lines before it come first
                sys.stderr.write(part.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def bar(desc: str, total: float | None = None, unit: str = "it") -> tqdm[NoReturn]:
    """A bar to ``update()``, used as a context manager so that it closes with its phase."""
    if sys.stderr.isatty():
        return tqdm(
            total=total,
            desc=desc,
            unit=unit,
            file=sys.stderr,
            mininterval=0.5,
            delay=1,
            leave=False,
            dynamic_ncols=True,
        )
    interval = float(os.environ.get("LLM_POOL_PROGRESS_INTERVAL_S", LOG_INTERVAL_S))
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=_LogLines(),
        mininterval=interval,
        delay=interval,
        leave=True,
        ascii=True,
        ncols=100,
    )


def echo(line: str) -> None:
    """Print a line on stdout without breaking a bar being drawn on the terminal."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def say(message: str) -> None:
    """The benchmark's timestamped progress line."""
    echo(f"[{datetime.now().strftime('%H:%M:%S')}] {message}")
