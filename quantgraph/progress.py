"""Progress bars (rich) that turn off for ``--quiet`` and non-interactive use."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


def make_progress(transient: bool = True) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        transient=transient,
    )


def progress_iter(
    items: Iterable[T], description: str, *, enabled: bool, total: int | None = None
) -> Iterator[T]:
    """Iterate ``items``, showing a bar when ``enabled``."""
    if not enabled:
        yield from items
        return
    items = list(items)
    with make_progress() as bar:
        task = bar.add_task(description, total=total or len(items), status="")
        for item in items:
            yield item
            bar.advance(task)
