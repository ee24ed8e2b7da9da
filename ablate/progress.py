"""Progress on stderr: a tqdm bar on a terminal, plain throttled lines anywhere else.

Under SLURM (or `2> file`) stderr is a file; a tqdm bar would still redraw with carriage returns every
0.1 s, so an hour-long cell wrote megabytes of frames that `less` and `tail` cannot read. There each
update is one whole line, printed at a step that is a multiple of `every` (the trainer passes
trainer.log_every) and at most once per `min_interval_s`, plus the first such step (an early s/step
estimate) and the last step.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from tqdm.auto import tqdm

MIN_INTERVAL_S = 30.0


def is_terminal(stream: IO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def track(iterable: Iterable, *, desc: str, total: int | None = None, initial: int = 0, every: int = 1,
             unit: str = "step", disable: bool = False, stream: IO | None = None):
    """An iterable with set_postfix() and close(): tqdm on a terminal, PlainProgress otherwise."""
    stream = sys.stderr if stream is None else stream
    if disable or is_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, initial=initial, unit=unit, leave=False, disable=disable,
                    file=stream)
    return PlainProgress(iterable, desc=desc, total=total, initial=initial, every=every, unit=unit, stream=stream)


class PlainProgress:
    """`desc: step 40/150 (27%), 0.52 s/step, eta 57s, loss=0.512 acc=0.81`, one line per update."""

    def __init__(self, iterable: Iterable, *, desc: str, total: int | None, initial: int = 0, every: int = 1,
                 unit: str = "step", stream: IO, min_interval_s: float = MIN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.iterable, self.desc, self.unit, self.stream = iterable, desc, unit, stream
        self.total = total if total is not None else _length(iterable, initial)
        self.n = self.initial = initial
        self.every, self.min_interval_s, self.clock = max(1, every), min_interval_s, clock
        self.postfix: dict[str, Any] = {}
        self.start = clock()
        self.last_line: float | None = None

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item  # the caller's step runs here, set_postfix() included
            self.n += 1
            self._maybe_print()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        """Nothing to erase: every line already printed stays, as a log should."""

    def _maybe_print(self) -> None:
        now = self.clock()
        last = self.n == self.total
        due = self.n % self.every == 0 and (self.last_line is None or now - self.last_line >= self.min_interval_s)
        if not (last or due):
            return
        self.last_line = now
        print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float) -> str:
        done = self.n - self.initial
        per_step = (now - self.start) / done if done else 0.0
        parts = [f"{self.unit} {self.n}/{self.total}" if self.total else f"{self.unit} {self.n}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{per_step:.2f} s/{self.unit}")
        if self.total and self.n < self.total:
            parts.append(f"eta {format_duration(per_step * (self.total - self.n))}")
        text = f"{self.desc}: " + ", ".join(parts)
        if self.postfix:
            text += ", " + " ".join(f"{k}={v}" for k, v in self.postfix.items())
        return text


def _length(iterable: Iterable, initial: int) -> int | None:
    try:
        return initial + len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def format_duration(seconds: float) -> str:
    """57s, 12m03s, 3h05m: short enough for a log line, exact enough for an ETA."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
