"""Policies: a named pipeline of passes plus the quantization config and defaults it runs with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any

from quantgraph.errors import InputError
from quantgraph.ir.qspec import QuantSpec, check_bits
from quantgraph.ir.roles import Role

#: Range methods for activations (weights always use their min/max): ORT's ``calibrate_method`` analogue.
CALIBRATION_METHODS = ("minmax", "percentile", "mse", "relative-mse", "entropy")

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

    def build_qconfig(
        self, bits: int, calibration: str | None = None, tail: float | None = None
    ) -> dict[Role, QuantSpec]:
        """Role -> spec at ``bits``; ``calibration`` overrides the range method of activations.

        Input features keep min/max: a percentile cut zeroes sparse bag-of-words inputs. ``mse`` picks
        each activation range minimising the quantization error on the calibration graph (no labels).
        """
        check_bits(bits)
        qconfig = self.qconfig(bits) if self.qconfig is not None else {}
        if calibration is None:
            return qconfig
        if calibration not in CALIBRATION_METHODS:
            raise InputError(
                f"unknown calibration method '{calibration}'", f"use one of {', '.join(CALIBRATION_METHODS)}"
            )
        args = (("tail", float(tail)),) if calibration == "percentile" and tail is not None else ()
        fixed = (Role.WEIGHT, Role.INPUT)  # weights and input data keep their full min/max range
        return {
            role: spec if role in fixed else replace(spec, observer=calibration, observer_args=args)
            for role, spec in qconfig.items()
        }


def without_roles(qconfig: dict[Role, QuantSpec], names: Sequence[str] | None) -> dict[Role, QuantSpec]:
    """``qconfig`` with no quantizer at the named roles (like NNCF's ignored scope, by role)."""
    skipped = set()
    for name in names or ():
        try:
            skipped.add(Role(name))
        except ValueError:
            valid = ", ".join(r.value for r in Role if r in qconfig) or "none"
            raise InputError(f"unknown role '{name}' to skip", f"use one of {valid}") from None
    return {role: spec for role, spec in qconfig.items() if role not in skipped}


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
