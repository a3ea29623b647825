"""One registry shape for every plug-in kind: built-ins by name, third-party ones from an entry-point group.

Passes (``quantgraph.passes``), policies (``quantgraph.policies``), quantizers (``quantgraph.quantizers``),
observers (``quantgraph.observers``) and backends (``quantgraph.backends``) each keep a :class:`Registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from quantgraph.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> plug-in. ``builtins`` imports the modules that register the built-in ones (lazily);
    ``adapt`` turns an entry point's object into ``(name, item)`` (None: not this kind, skipped)."""

    def __init__(
        self,
        what: str,
        group: str,
        adapt: Callable[[str, object], tuple[str, T] | None],
        builtins: Callable[[], None] | None = None,
        fix: str = "",
    ) -> None:
        self.what, self.group, self.adapt, self.builtins, self.fix = what, group, adapt, builtins, fix
        self.entries: dict[str, T] = {}
        self._entry_points_loaded = False

    def add(self, name: str, item: T) -> T:
        self.entries[name] = item
        return item

    def available(self) -> dict[str, T]:
        if self.builtins is not None:
            self.builtins()
        if not self._entry_points_loaded:
            self._entry_points_loaded = True
            for ep in entry_points(group=self.group):
                adapted = self.adapt(ep.name, ep.load())
                if adapted is not None:
                    self.entries.setdefault(*adapted)
        return dict(sorted(self.entries.items()))

    def get(self, name: str) -> T:
        items = self.available()
        if name not in items:
            fix = f"choose one of {', '.join(items)}" + (f" {self.fix}" if self.fix else "")
            raise InputError(f"unknown {self.what} '{name}'", fix)
        return items[name]
