"""Pass registry: built-in passes register by name; third-party ones load from entry points.

Entry-point groups: ``quantgraph.passes`` (a ``PassBase`` subclass) and ``quantgraph.policies``
(a ``Policy``). ``load_object("module:Class")`` imports a user's pass for ``--pass``.
"""

from __future__ import annotations

import importlib

from quantgraph.errors import InputError
from quantgraph.passes.infra import PassBase
from quantgraph.registry import Registry


def _builtin_passes() -> None:
    import quantgraph.passes.builtin  # noqa: F401  (registers the built-in passes)


def _adapt(name: str, obj: object) -> tuple[str, type[PassBase]] | None:
    return (getattr(obj, "name", "") or name, obj) if isinstance(obj, type) else None


PASSES: Registry[type[PassBase]] = Registry(
    "pass",
    "quantgraph.passes",
    _adapt,
    _builtin_passes,
    fix="(see `quantgraph passes`) or load your own with --pass module:Class",
)


def register_pass(cls: type[PassBase]) -> type[PassBase]:
    """Class decorator: make a pass available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    return PASSES.add(cls.name, cls)


def available_passes() -> dict[str, type[PassBase]]:
    return PASSES.available()


def get_pass(name: str) -> PassBase:
    return PASSES.get(name)()


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
