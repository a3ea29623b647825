"""SGQuant's granularities as annotation: layer and component of every point, optional degree buckets.

Runs after ``annotate``. Each annotated node gets its layer and component (``quantgraph.sgquant.components``:
aggregation vs combination) in its metadata. With ``sgquant_buckets`` set, every annotated node-row value
(layer inputs, ``X W``, aggregations, updates) becomes ``PER_GROUP`` over in-degree buckets whose index is
computed in the graph (``degree-buckets``' ``insert_bucket_index``), so the model serves any graph; each
bucket then has its own range and bits. ``sgquant_buckets=sqrt`` uses SGQuant's 32/sqrt(d) map snapped to
``sgquant_candidates`` (boundaries from the calibration graph's in-degrees; each bucket's bits become the
default bits of that bucket).

The input point: with ``sgquant_raw_input`` (default) and a model that row-normalises its features itself
(a preprocessing module), the input quantizer moves from the normalised features to the raw features ``x``,
the tensor inference stores (Cora's and CiteSeer's 0/1 bag-of-words features are exact at 1 bit; their
normalised values ``1/k`` are not, per tensor); the normalisation then runs on the dequantized features.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from quantgraph.errors import InputError
from quantgraph.ir.meta import QPARAMS_KEY, QSPEC_KEY, ROLE_KEY, ROWS_KEY
from quantgraph.ir.roles import Role
from quantgraph.options import Option
from quantgraph.passes.degree_buckets import group_by_bucket, insert_bucket_index, parse_boundaries
from quantgraph.passes.infra import CompileContext, PassBase, PassResult
from quantgraph.passes.registry import register_pass
from quantgraph.sgquant.components import COMPONENT_KEY, FP32_KEY, SGQ_LAYER_KEY, classify, denominators
from quantgraph.sgquant.config import sqrt_degree_map
from quantgraph.sgquant.quantizer import FP32_BITS


def parse_buckets(value: Any) -> str | tuple[int, ...]:
    """``""``/``none`` (no buckets), ``sqrt`` (SGQuant's degree map) or ascending boundaries ``2,4,8``."""
    text = value if isinstance(value, str) else ",".join(str(v) for v in value)
    text = text.strip().lower()
    if text in ("", "none", "off"):
        return ()
    if text == "sqrt":
        return "sqrt"
    return parse_boundaries(text)


def parse_candidates(value: Any) -> tuple[int, ...]:
    """Candidate bitwidths, e.g. ``1,2,4,8`` (32 allowed: not quantized)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        bits = tuple(sorted({int(v) for v in items if str(v).strip()}))
    except ValueError as err:
        raise InputError(f"bit candidates {value!r} are not integers", "write e.g. 1,2,4,8") from err
    if not bits or any(b not in (*range(1, 9), FP32_BITS) for b in bits):
        raise InputError(
            f"bit candidates {value!r} are invalid", "use bits from 1 to 8 (and 32), e.g. 1,2,4,8"
        )
    return bits


BUCKETS = Option(
    "sgquant_buckets",
    parse_buckets,
    (),
    "in-degree bucket boundaries (e.g. 2,4,8), 'sqrt' (SGQuant's map) or none",
)
CANDIDATES = Option(
    "sgquant_candidates", parse_candidates, (1, 2, 4, 8), "candidate bits (ABS search; the sqrt degree map)"
)
RAW_INPUT = Option(
    "sgquant_raw_input",
    bool,
    True,
    "quantize the raw input features x (before the model's row normalisation) instead of the normalised ones",
)
BUCKET_ROLES = (Role.INPUT, Role.LINEAR_OUT, Role.AGGREGATION, Role.UPDATE, Role.OUTPUT)


def move_input_to_raw(gm: fx.GraphModule) -> str | None:
    """Move the input point from the preprocessed features to the raw feature placeholder ``x`` (when the
    placeholder is read only by the preprocessing); returns the preprocessed node's name, or None."""
    raw = next((n for n in gm.graph.nodes if n.op == "placeholder" and n.name == "x"), None)
    if raw is None or raw.meta.get(ROLE_KEY) != Role.PREPROCESS:
        return None
    entering = [
        n
        for n in gm.graph.nodes
        if n.meta.get(ROLE_KEY) == Role.INPUT and QSPEC_KEY in n.meta and n is not raw
    ]
    if len(entering) != 1:
        return None
    node = entering[0]
    raw.meta[QSPEC_KEY] = node.meta.pop(QSPEC_KEY)
    node.meta.pop(QPARAMS_KEY, None)
    raw.meta[ROLE_KEY], node.meta[ROLE_KEY] = Role.INPUT, Role.PREPROCESS
    raw.meta[ROWS_KEY] = node.meta.get(ROWS_KEY, "node")
    return node.name


def max_in_degree(ctx: CompileContext) -> int:
    degree = 0
    for inputs in ctx.calibration_data:
        ei = inputs.get("edge_index")
        if ei is not None and ei.numel():
            degree = max(degree, int(torch.bincount(ei[1]).max()))
    return degree


@register_pass
class SGQuantAnnotatePass(PassBase):
    """Tag each point's layer and component; bucket node-row points by in-degree when asked."""

    name = "sgquant-annotate"
    description = "SGQuant granularities: layer and component per point, in-degree buckets for node rows"
    options = (BUCKETS, CANDIDATES, RAW_INPUT)

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        if not any(QSPEC_KEY in n.meta for n in gm.graph.nodes):
            raise InputError(
                "no node is annotated for quantization", "run 'annotate' before 'sgquant-annotate'"
            )

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        moved = move_input_to_raw(gm) if self.option(ctx, "sgquant_raw_input") else None
        points = classify(gm)
        by_name = {n.name: n for n in gm.graph.nodes}
        kept = denominators(gm) & set(points)
        for name, (layer, comp) in points.items():
            by_name[name].meta[SGQ_LAYER_KEY] = layer
            by_name[name].meta[COMPONENT_KEY] = comp
            if name in kept:
                by_name[name].meta[FP32_KEY] = True
        buckets = self.option(ctx, "sgquant_buckets")
        info: dict[str, Any] = {"buckets": None, "fp32_points": sorted(kept), "raw_input": moved is not None}
        if buckets:
            if "edge_index" not in ctx.input_names or "x" not in ctx.input_names:
                raise InputError(
                    "degree buckets need inputs named x and edge_index", "name the forward arguments so"
                )
            bucket_bits = None
            if buckets == "sqrt":
                cands = [c for c in self.option(ctx, "sgquant_candidates") if c != FP32_BITS]
                boundaries, bucket_bits = sqrt_degree_map(cands, max_in_degree(ctx))
            else:
                boundaries = buckets
            if boundaries:
                targets = [
                    by_name[name]
                    for name in points
                    if name not in kept
                    and by_name[name].meta.get(ROWS_KEY) == "node"
                    and by_name[name].meta.get(ROLE_KEY) in BUCKET_ROLES
                ]
                bucket = insert_bucket_index(gm, boundaries)
                group_by_bucket(targets, bucket, len(boundaries) + 1)
                info["buckets"] = {
                    "boundaries": list(boundaries),
                    "groups": len(boundaries) + 1,
                    "map": "sqrt" if buckets == "sqrt" else "boundaries",
                    "bucket_bits": list(bucket_bits) if bucket_bits else None,
                    "points": [n.name for n in targets],
                }
        info["points"] = {
            name: {"layer": layer, "component": str(comp), "role": by_name[name].meta[ROLE_KEY].value}
            for name, (layer, comp) in points.items()
        }
        ctx.report.setdefault("sgquant", {}).update(info)
        return PassResult(gm, bool(buckets) or moved is not None)
