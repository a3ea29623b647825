"""Memory as SGQuant counts it: every tensor inference stores, in bits, against the same tensors in FP32.

The tensors are the model's quantization points (layer inputs, weights and attention vectors, ``X W``,
gathered rows, edge weights, attention logits and coefficients, messages, aggregations, updates, the
output), sized on a graph (the calibration graph), plus the biases, which stay FP32. A point quantized
per degree bucket counts each bucket's elements at that bucket's bits. SGQuant's released code counts the
tensors its GAT materialises (x_i and x_j per edge, three attention tensors, ...); this IR stores what the
traced model computes, so the totals differ from theirs while the rule is the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx

from quantgraph.ir.meta import ROLE_KEY, SOURCE_KEY
from quantgraph.ir.roles import Role
from quantgraph.passes.infra import attr_tensor
from quantgraph.sgquant.components import COMPONENT_KEY, SGQ_LAYER_KEY
from quantgraph.sgquant.quantizer import FP32_BITS, SGQuantizer


@dataclass(frozen=True)
class PointSize:
    """One stored tensor: its quantizer module, place and element count per group (one entry per tensor)."""

    module: str
    node: str
    layer: int
    component: str
    role: str
    elements: tuple[int, ...]


def sgquant_quantizers(gm: fx.GraphModule) -> dict[str, tuple[fx.Node, SGQuantizer]]:
    """Quantizer call nodes of ``gm`` whose module is an :class:`SGQuantizer`, by module name."""
    out = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            module = gm.get_submodule(n.target)
            if isinstance(module, SGQuantizer):
                out[str(n.target)] = (n, module)
    return out


def measure_points(
    gm: fx.GraphModule, input_names: list[str], inputs: Mapping[str, Tensor]
) -> list[PointSize]:
    """Element counts of every sgquant point on ``inputs`` (one forward pass in eval mode)."""
    quantizers = sgquant_quantizers(gm)
    by_name = {n.name: n for n in gm.graph.nodes}
    seen: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, (_node, module) in quantizers.items():

        def hook(mod, args, kwargs, _name=name):
            x = args[0]
            groups = kwargs.get("groups")
            if mod.grouped and groups is not None:
                width = x[0].numel() if x.shape[0] else 0
                counts = torch.bincount(groups.reshape(-1), minlength=int(mod.bits.numel())) * width
                seen[_name] = tuple(int(c) for c in counts)
            else:
                seen[_name] = (int(x.numel()),)

        hooks.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            gm(*[inputs[n] for n in input_names])
    finally:
        gm.train(was_training)
        for h in hooks:
            h.remove()
    sizes = []
    for name, (node, _module) in quantizers.items():
        source = by_name.get(node.meta.get(SOURCE_KEY), node)
        sizes.append(
            PointSize(
                module=name,
                node=source.name,
                layer=int(source.meta.get(SGQ_LAYER_KEY, 0)),
                component=str(source.meta.get(COMPONENT_KEY, "combination")),
                role=str(source.meta.get(ROLE_KEY, Role.OTHER).value),
                elements=seen.get(name, (0,)),
            )
        )
    return sizes


def bias_elements(gm: fx.GraphModule) -> int:
    """Elements of the parameters tagged as biases (they stay FP32 in every configuration)."""
    total = 0
    for n in gm.graph.nodes:
        if n.op == "get_attr" and n.meta.get(ROLE_KEY) == Role.BIAS:
            total += attr_tensor(gm, str(n.target)).numel()
    return total


def point_bits(size: PointSize, bits: Tensor | list[int] | int) -> int:
    """Bits this point stores with ``bits`` (per group, or one value)."""
    per_group = (
        torch.as_tensor(bits, dtype=torch.int64).expand(len(size.elements))
        if len(size.elements) > 1
        else None
    )
    if per_group is None:
        value = int(torch.as_tensor(bits).reshape(-1)[0])
        return size.elements[0] * value
    return int(sum(e * int(b) for e, b in zip(size.elements, per_group.tolist(), strict=True)))


def memory_report(sizes: list[PointSize], bits: Mapping[str, Any], fp32_extra: int = 0) -> dict[str, Any]:
    """Total and per-component / per-layer memory (bits and Mbit) against FP32, and the reduction factor.

    ``bits``: module name -> bits (per group or one value); ``fp32_extra``: elements that stay FP32 (biases).
    ``input_features``: the input features alone (they are part of layer 0's combination tensors).
    """

    def empty() -> dict[str, int]:
        return {"fp32_bits": 0, "quantized_bits": 0}

    total, by_comp, by_layer, inputs = empty(), {}, {}, empty()
    for size in sizes:
        fp32 = sum(size.elements) * FP32_BITS
        quant = point_bits(size, bits[size.module])
        if size.role == Role.INPUT.value:  # the input features (also in their combination component)
            inputs["fp32_bits"] += fp32
            inputs["quantized_bits"] += quant
        for table in (
            total,
            by_comp.setdefault(size.component, empty()),
            by_layer.setdefault(f"{size.layer}.{size.component}", empty()),
        ):
            table["fp32_bits"] += fp32
            table["quantized_bits"] += quant
    extra = fp32_extra * FP32_BITS
    total["fp32_bits"] += extra
    total["quantized_bits"] += extra
    by_comp.setdefault("bias (fp32)", empty())
    by_comp["bias (fp32)"]["fp32_bits"] += extra
    by_comp["bias (fp32)"]["quantized_bits"] += extra

    def finish(t: dict[str, int]) -> dict[str, Any]:
        q = t["quantized_bits"]
        return {
            **t,
            "fp32_mbit": round(t["fp32_bits"] / 1e6, 4),
            "quantized_mbit": round(q / 1e6, 4),
            "reduction": round(t["fp32_bits"] / q, 4) if q else None,
        }

    return {
        **finish(total),
        "by_component": {k: finish(v) for k, v in sorted(by_comp.items())},
        "by_layer_component": {k: finish(v) for k, v in sorted(by_layer.items())},
        "input_features": finish(inputs),
    }
