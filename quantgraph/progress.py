"""Progress bars (rich) and the timed stage log, both off for ``--quiet`` and bars off when piped."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


def make_progress(transient: bool = True) -> Progress:
    from rich.console import Console

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=Console(stderr=True),
        transient=transient,
    )


def progress_iter(
    items: Iterable[T], description: str, *, enabled: bool, total: int | None = None
) -> Iterator[T]:
    """Iterate ``items``, showing a bar on stderr when ``enabled`` and stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield from items
        return
    items = list(items)
    with make_progress() as bar:
        task = bar.add_task(description, total=total or len(items), status="")
        for item in items:
            yield item
            bar.advance(task)


class StageLog:
    """Timed compile stages (trace, passes, calibration, training, export, verify), one line each on stderr.

    Off until :func:`enable_stage_log`; the CLI turns it on unless ``--quiet``. Each finished stage is one
    plain line, ``quantgraph: <stage> <seconds> s``, on a terminal or piped alike (no escape codes).
    """

    def __init__(self) -> None:
        self.enabled = False

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield  # a failing stage prints nothing: its error line follows
        if self.enabled:
            seconds = time.perf_counter() - start
            print(f"quantgraph: {name:<28} {seconds:7.2f} s", file=sys.stderr, flush=True)


STAGES = StageLog()


def enable_stage_log() -> None:
    """Print a line for every finished stage to stderr (the stream at print time)."""
    STAGES.enabled = True


def disable_stage_log() -> None:
    STAGES.enabled = False


def stage(name: str):
    """Context manager timing one stage; prints only when the stage log is enabled."""
    return STAGES.stage(name)
