"""Policies: a named pipeline of passes plus the quantization config and defaults it runs with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from quantgraph.errors import InputError
from quantgraph.ir.qspec import Granularity, QuantSpec, check_bits
from quantgraph.ir.roles import Role
from quantgraph.options import Option
from quantgraph.passes.observers import available_observers
from quantgraph.registry import Registry

#: The passes that turn a traced graph into the canonical IR (every policy starts with them).
GRAPH_PASSES = ("canonicalize", "tag-roles")

QConfigBuilder = Callable[[int], dict[Role, QuantSpec]]


@dataclass(frozen=True)
class Policy:
    """A named pipeline: pass names in order, a bits -> (role -> spec) builder, and default options.

    ``defaults`` override declared options' defaults for this policy (a choice of the method, e.g. plain
    STE for ``qat``); ``options`` declares keys only this policy's builder reads.
    """

    name: str
    description: str
    pipeline: tuple[str, ...]
    qconfig: QConfigBuilder | None = None
    default_bits: int = 8
    quantizes: bool = True
    defaults: dict[str, Any] = field(default_factory=dict)
    options: tuple[Option, ...] = ()

    def build_qconfig(
        self, bits: int, calibration: str | None = None, tail: float | None = None
    ) -> dict[Role, QuantSpec]:
        """Role -> spec at ``bits``; ``calibration`` overrides the range method of activations.

        Input features keep min/max: a percentile cut zeroes sparse bag-of-words inputs.
        """
        check_bits(bits)
        qconfig = self.qconfig(bits) if self.qconfig is not None else {}
        if calibration is None:
            return qconfig
        methods = available_observers()  # range methods, ORT's ``calibrate_method`` analogue
        if calibration not in methods:
            raise InputError(
                f"unknown calibration method '{calibration}'", f"use one of {', '.join(methods)}"
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


def with_reduced_weight_range(qconfig: dict[Role, QuantSpec]) -> dict[Role, QuantSpec]:
    """``qconfig`` with 8-bit weights narrowed to 7 bits ([-64, 63], still stored as int8).

    onnxruntime's ``reduce_range``: on x86 CPUs without VNNI the int8 kernels add u8 x s8 products in
    pairs into a saturating int16 (:mod:`quantgraph.cpu`); 7-bit weights keep every pair sum in range.
    """
    return {
        role: spec.with_bits(7) if role == Role.WEIGHT and spec.bits == 8 and spec.signed else spec
        for role, spec in qconfig.items()
    }


def with_per_channel_weights(
    qconfig: dict[Role, QuantSpec], pipeline: Sequence[str]
) -> dict[Role, QuantSpec]:
    """``qconfig`` with weights quantized symmetrically per output channel (axis 0) at the same bits.

    The ranges are min/max per channel, as onnxruntime's and PyTorch's per-channel weight quantizers use.
    Only the plain ``fake-quant`` quantizer (and PTQ observers) implement per-channel ranges.
    """
    spec = qconfig.get(Role.WEIGHT)
    if spec is None or spec.quantizer != "fake-quant" or "search-bits" in pipeline:
        what = (
            "this policy quantizes no weights through its role map"
            if spec is None
            else f"this policy's weight quantizer ('{spec.quantizer}'"
            f"{', searched bitwidths' if 'search-bits' in pipeline else ''}) has no per-channel form"
        )
        raise InputError(
            f"per_channel_weights: {what}",
            "leave per_channel_weights off, or use minmax, ptq, qat or degree-quant",
        )
    per_channel = replace(
        spec, symmetric=True, granularity=Granularity.PER_CHANNEL, axis=0, observer="minmax", observer_args=()
    )
    return {**qconfig, Role.WEIGHT: per_channel}


def _builtin_policies() -> None:
    import quantgraph.policies.builtin  # noqa: F401  (registers the built-in policies)


def _adapt(name: str, obj: object) -> tuple[str, Policy] | None:
    policy = obj() if callable(obj) and not isinstance(obj, Policy) else obj
    return (policy.name, policy) if isinstance(policy, Policy) else None


POLICIES: Registry[Policy] = Registry(
    "policy", "quantgraph.policies", _adapt, _builtin_policies, fix="(see `quantgraph passes`)"
)


def register_policy(policy: Policy) -> Policy:
    return POLICIES.add(policy.name, policy)


def available_policies() -> dict[str, Policy]:
    return POLICIES.available()


def get_policy(name: str) -> Policy:
    return POLICIES.get(name)
