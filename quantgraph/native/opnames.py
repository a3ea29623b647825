"""Python operators a native program may name (``operator.<name>`` steps): one table for lowering and runtime."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

OPERATORS: dict[str, Callable[..., Any]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "floordiv": operator.floordiv,
}
#: callable -> its name in a program
OPERATOR_NAMES: dict[Callable[..., Any], str] = {fn: name for name, fn in OPERATORS.items()}
