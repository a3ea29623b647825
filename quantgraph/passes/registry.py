"""Pass registry: built-in passes register by name; third-party ones load from entry points.

Entry-point groups: ``quantgraph.passes`` (a ``PassBase`` subclass) and ``quantgraph.policies``
(a ``Policy``). ``load_object("module:Class")`` imports a user's pass for ``--pass``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from quantgraph.errors import InputError
from quantgraph.passes.infra import PassBase

_PASSES: dict[str, type[PassBase]] = {}
_entry_points_loaded = False


def register_pass(cls: type[PassBase]) -> type[PassBase]:
    """Class decorator: make a pass available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    _PASSES[cls.name] = cls
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group="quantgraph.passes"):
        cls = ep.load()
        _PASSES.setdefault(getattr(cls, "name", "") or ep.name, cls)


def available_passes() -> dict[str, type[PassBase]]:
    import quantgraph.passes.builtin  # noqa: F401  (registers the built-in passes)

    _load_entry_points()
    return dict(sorted(_PASSES.items()))


def get_pass(name: str) -> PassBase:
    passes = available_passes()
    if name not in passes:
        raise InputError(
            f"unknown pass '{name}'",
            f"choose one of {', '.join(passes)} (see `quantgraph passes`) or load your own with --pass module:Class",
        )
    return passes[name]()


def load_object(spec: str) -> object:
    """Import ``module:attr`` (e.g. ``mypkg.passes:MyPass``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"'{spec}' is not of the form module:Class", "write e.g. --pass mypkg.passes:MyPass")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError(
            f"cannot import module '{module_name}' ({err})", "check the name and that it is on PYTHONPATH"
        ) from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise InputError(f"module '{module_name}' has no attribute '{attr}'", "check the class name") from err


def load_pass(spec: str) -> PassBase:
    """Instantiate a user pass from ``module:Class`` (a PassBase subclass or a ready instance)."""
    obj = load_object(spec)
    if isinstance(obj, type) and issubclass(obj, PassBase):
        return obj()
    if isinstance(obj, PassBase):
        return obj
    raise InputError(
        f"'{spec}' is not a quantgraph pass", "subclass quantgraph.passes.PassBase and implement call()"
    )
