"""Policies: a named pipeline of passes plus the quantization config and defaults it runs with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from quantgraph.errors import InputError
from quantgraph.ir.qspec import QuantSpec, check_bits
from quantgraph.ir.roles import Role

QConfigBuilder = Callable[[int], dict[Role, QuantSpec]]


@dataclass(frozen=True)
class Policy:
    """A named pipeline: pass names in order, a bits -> (role -> spec) builder, and default options."""

    name: str
    description: str
    pipeline: tuple[str, ...]
    qconfig: QConfigBuilder | None = None
    default_bits: int = 8
    quantizes: bool = True
    defaults: dict[str, Any] = field(default_factory=dict)

    def build_qconfig(self, bits: int) -> dict[Role, QuantSpec]:
        check_bits(bits)
        return self.qconfig(bits) if self.qconfig is not None else {}


_POLICIES: dict[str, Policy] = {}
_entry_points_loaded = False


def register_policy(policy: Policy) -> Policy:
    _POLICIES[policy.name] = policy
    return policy


def available_policies() -> dict[str, Policy]:
    global _entry_points_loaded
    import quantgraph.policies.builtin  # noqa: F401  (registers the built-in policies)

    if not _entry_points_loaded:
        _entry_points_loaded = True
        for ep in entry_points(group="quantgraph.policies"):
            obj = ep.load()
            policy = obj() if callable(obj) and not isinstance(obj, Policy) else obj
            if isinstance(policy, Policy):
                _POLICIES.setdefault(policy.name, policy)
    return dict(sorted(_POLICIES.items()))


def get_policy(name: str) -> Policy:
    policies = available_policies()
    if name not in policies:
        raise InputError(
            f"unknown policy '{name}'", f"choose one of {', '.join(policies)} (see `quantgraph passes`)"
        )
    return policies[name]
