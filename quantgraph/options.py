"""Declared options: every key ``compile`` accepts is an :class:`Option` with a type, a default and help.

Passes, policies and backends list the options they read (``options = (EPOCHS, LR, ...)``); the option
object is the one source of truth for its default. ``compile`` rejects a key that nothing declares,
naming the valid ones, and parses each given value (CLI ``--option key=value`` strings included).
A pass reads a value with ``self.option(ctx, "epochs")`` (see :class:`quantgraph.passes.PassBase`).

This module imports nothing heavy: the CLI reads it to build its help.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from quantgraph.errors import InputError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"{value!r} is not a boolean")


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a boolean is not an integer")
    number = float(value) if not isinstance(value, int) else value
    if number != int(number):
        raise ValueError(f"{value!r} is not a whole number")
    return int(number)


def _parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return float(value)


def str_list(value: Any) -> tuple[str, ...]:
    """A list of names from a sequence or a comma-separated string such as ``"message,update"``."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(v).strip() for v in items if str(v).strip())


_PARSERS: dict[Any, Callable[[Any], Any]] = {
    bool: _parse_bool,
    int: _parse_int,
    float: _parse_float,
    str: str,
}


@dataclass(frozen=True)
class Option:
    """One option key: ``type`` is ``int``, ``float``, ``bool``, ``str`` or a parser callable.

    ``default`` None means "not set" (the reader then picks a documented context-dependent default,
    which ``help`` states). ``choices`` and ``minimum`` are checked on every given value.
    """

    name: str
    type: Any
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None

    @property
    def type_name(self) -> str:
        return getattr(self.type, "__name__", str(self.type))

    def parse(self, value: Any) -> Any:
        """The typed value of ``value`` (None stays None), or an :class:`InputError` naming the option."""
        if value is None:
            return None
        parser = _PARSERS.get(self.type, self.type)
        try:
            parsed = parser(value)
        except InputError:
            raise
        except (TypeError, ValueError, OverflowError) as err:
            raise InputError(
                f"option {self.name}={value!r} is not a valid {self.type_name} ({err})",
                f"give {self.name} as a {self.type_name}: {self.help}",
            ) from err
        if self.choices is not None and parsed not in self.choices:
            raise InputError(
                f"option {self.name}={value!r} is not allowed",
                f"use one of {', '.join(map(str, self.choices))}",
            )
        if self.minimum is not None and not (math.isfinite(parsed) and parsed >= self.minimum):
            raise InputError(
                f"{self.name}={value!r} is invalid", f"use a finite {self.name} >= {self.minimum}"
            )
        return parsed

    def read(self, options: Mapping[str, Any]) -> Any:
        """This option's value in ``options`` (parsed), or its default when absent or None."""
        value = options.get(self.name)
        return self.default if value is None else self.parse(value)

    def to_row(self) -> dict[str, str]:
        default = "(context)" if self.default is None else repr(self.default)
        choices = f" [{', '.join(map(str, self.choices))}]" if self.choices else ""
        return {"name": self.name, "type": self.type_name + choices, "default": default, "help": self.help}


def index_options(options: Iterable[Option]) -> dict[str, Option]:
    """Name -> option; the first declaration of a name wins (share the object to share an option)."""
    table: dict[str, Option] = {}
    for opt in options:
        table.setdefault(opt.name, opt)
    return table


def check_options(
    given: Mapping[str, Any], declared: Mapping[str, Option], known: Iterable[str] = ()
) -> dict[str, Any]:
    """``given`` with each value parsed by its declared option.

    A key neither ``declared`` nor ``known`` (declared by another registered pass, policy or backend,
    so valid in some pipeline) is an error that lists the valid keys.
    """
    known = set(known)
    parsed: dict[str, Any] = {}
    for key, value in given.items():
        opt = declared.get(key)
        if opt is None:
            if key not in known:
                raise InputError(
                    f"unknown option '{key}'",
                    f"valid options here: {', '.join(sorted(declared))} "
                    "(see `quantgraph passes --options NAME`)",
                )
            parsed[key] = value
            continue
        parsed[key] = opt.parse(value)
    return parsed


def parse_assignments(specs: Iterable[str]) -> dict[str, str]:
    """``["key=value", ...]`` (the CLI's ``--option``) as a dict of strings."""
    out: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--option '{spec}' is not key=value", "write e.g. --option epochs=50")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


#: Options of ``compile`` itself (read before or around the pipeline).
SEED = Option("seed", int, 0, "random seed of the passes (training, masks); a compile is repeatable")
CALIBRATION = Option(
    "calibration",
    str,
    None,
    "activation range method: a registered observer (minmax, percentile, ...); unset: the policy's",
)
PERCENTILE_TAIL = Option(
    "percentile_tail",
    float,
    None,
    "fraction cut per side by percentile ranges (unset: 0.001 at 8 bits, 0.01 below)",
)
SKIP_ROLES = Option("skip_roles", str_list, (), "roles left unquantized (comma-separated, e.g. message)")
TRACE_TRAINING = Option("trace_training", bool, False, "trace the model in training mode (keeps dropout)")
REDUCE_RANGE = Option(
    "reduce_range",
    bool,
    False,
    "8-bit weights use 7 bits ([-64, 63]) so x86 CPUs without VNNI run them exactly in onnxruntime/OpenVINO",
)
PER_CHANNEL_WEIGHTS = Option(
    "per_channel_weights",
    bool,
    False,
    "weights get a symmetric min/max range per output channel (onnxruntime's per_channel); "
    "the QAT policies default to one range per tensor, as their papers do",
)
COMPILE_OPTIONS = (
    SEED,
    CALIBRATION,
    PERCENTILE_TAIL,
    SKIP_ROLES,
    TRACE_TRAINING,
    REDUCE_RANGE,
    PER_CHANNEL_WEIGHTS,
)
