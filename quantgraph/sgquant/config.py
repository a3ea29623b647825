"""The SGQuant bit configuration: bits per (layer, component, degree bucket), and its text form.

Text form (the ``sgquant_config`` option and the report): comma-separated ``KEY=BITS`` rules, where KEY is
``LAYER.COMPONENT`` or ``LAYER.COMPONENT.bBUCKET``; ``*`` matches any layer or component; the most specific
rule wins (bucket > layer and component > one of them > ``*.*``). Bits are 1-8, or 32 (not quantized;
not allowed for a single bucket). Component ``input`` names the input features, a combination tensor
(``combination`` rules reach them; ``0.input=1`` overrides those). Examples::

    *.*=4                                   uniform 4 bits
    0.*=4,1.*=32                            layer-wise (SGQuant's (4, 32))
    0.aggregation=4,0.combination=8,1.aggregation=6,1.combination=1   component-wise
    *.*=2,0.input=1                         2 bits, the 0/1 input features at 1 bit
    *.*=8,*.*.b1=4,*.*.b2=2                 topology-aware: node rows of buckets 1 and 2 get fewer bits

Degree buckets: ``bucket = #{boundaries <= in-degree}`` (``quantgraph.passes.degree_buckets``). SGQuant's
own map, ``bits(d) = 32 / sqrt(d)`` (degree <= 1: 32) snapped up to the smallest candidate it does not
exceed (the largest candidate above all), is :func:`sqrt_degree_map`: it gives the bucket boundaries and each
bucket's bits, high-degree nodes getting fewer bits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from quantgraph.errors import InputError
from quantgraph.sgquant.components import Component
from quantgraph.sgquant.quantizer import FP32_BITS

_RULE = re.compile(r"^(\*|\d+)\.(\*|aggregation|combination|input)(?:\.b(\d+))?$")
INPUT = "input"  # the input features: a combination tensor with its own rules (``0.input=1``)
VALID_BITS = (1, 2, 3, 4, 5, 6, 7, 8, FP32_BITS)


@dataclass(frozen=True)
class BitConfig:
    """Bits rules keyed by (layer or None, component or None, bucket or None); None matches anything."""

    rules: dict[tuple[int | None, str | None, int | None], int] = field(default_factory=dict)
    default: int = 8

    @classmethod
    def parse(cls, text: str | None, default: int = 8) -> BitConfig:
        rules: dict[tuple[int | None, str | None, int | None], int] = {}
        for item in (text or "").split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            match = _RULE.match(key.strip())
            if not sep or match is None:
                raise InputError(
                    f"sgquant config rule {item!r} is not LAYER.COMPONENT[.bBUCKET]=BITS",
                    "write e.g. 0.aggregation=4,0.combination=8 or *.*=4 (components: aggregation, combination, input)",
                )
            try:
                bits = int(value)
            except ValueError:
                bits = -1
            if bits not in VALID_BITS:
                raise InputError(f"sgquant config rule {item!r}: bits must be 1-8 or 32", "e.g. *.*=4")
            layer, comp, bucket = match.groups()
            if bucket is not None and bits == FP32_BITS:
                raise InputError(
                    f"sgquant config rule {item!r} leaves one degree bucket FP32",
                    "a bucket takes 1-8 bits; give 32 to the whole layer/component instead",
                )
            rules[
                (
                    None if layer == "*" else int(layer),
                    None if comp == "*" else comp,
                    None if bucket is None else int(bucket),
                )
            ] = bits
        return cls(rules, default)

    def bits(self, layer: int, component: Component | str, bucket: int | None = None) -> int:
        """The most specific rule's bits for this point (and bucket), else ``default``.

        The input features (component ``input``) are combination tensors: ``combination`` rules reach them,
        an ``input`` rule is more specific."""
        best, best_rank = self.default, -1
        comps = (INPUT, str(Component.COMBINATION)) if str(component) == INPUT else (str(component),)
        for (r_layer, r_comp, r_bucket), bits in self.rules.items():
            if r_layer is not None and r_layer != layer:
                continue
            if r_comp is not None and r_comp not in comps:
                continue
            if r_bucket is not None and r_bucket != bucket:
                continue
            comp_rank = 0 if r_comp is None else (2 if r_comp == INPUT and len(comps) > 1 else 1)
            rank = 6 * (r_bucket is not None) + 3 * (r_layer is not None) + comp_rank
            if rank > best_rank:
                best, best_rank = bits, rank
        return best

    def to_text(self) -> str:
        def key(k: tuple[int | None, str | None, int | None]) -> str:
            layer, comp, bucket = k
            text = f"{'*' if layer is None else layer}.{comp or '*'}"
            return text if bucket is None else f"{text}.b{bucket}"

        order = sorted(
            self.rules, key=lambda k: (k[2] is not None, k[0] is not None, k[1] is not None, str(k))
        )
        return ",".join(f"{key(k)}={self.rules[k]}" for k in order) or f"*.*={self.default}"


def sgquant_degree_bits(degree: int) -> float:
    """SGQuant's degree -> bits before snapping: 32 up to degree 1, 32/sqrt(d) up to 1024, then 2."""
    if degree <= 1:
        return float(FP32_BITS)
    if degree <= 1024:
        return max(2.0, 32.0 / math.sqrt(degree))
    return 2.0


def snap(value: float, candidates: Sequence[int]) -> int:
    """The smallest candidate >= value (their ``bisect_left``), the largest candidate when none is."""
    ordered = sorted(candidates)
    return next((c for c in ordered if c >= value), ordered[-1])


def sqrt_degree_map(candidates: Iterable[int], max_degree: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(bucket boundaries, bits per bucket) of SGQuant's 32/sqrt(d) map snapped to ``candidates``,
    for in-degrees 0..``max_degree``. Bits never increase with degree."""
    cands = sorted(set(candidates))
    bounds: list[int] = []
    bits = [snap(sgquant_degree_bits(0), cands)]
    for d in range(1, max(1, max_degree) + 1):
        b = snap(sgquant_degree_bits(d), cands)
        if b != bits[-1]:
            bounds.append(d)
            bits.append(b)
    return tuple(bounds), tuple(bits)
