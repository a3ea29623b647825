"""Prepare quantization-aware training: a trainable quantizer module after each annotated node.

The quantizer is the registered implementation the spec names (``spec.quantizer``, default
``fake-quant``: :class:`~quantgraph.ir.fake_quant.FakeQuantize`).
"""

from __future__ import annotations

from torch import fx

from quantgraph.errors import InputError
from quantgraph.ir.meta import (
    FAKE_QUANT_PREFIX,
    LAYER_KEY,
    QPARAMS_KEY,
    QSPEC_KEY,
    ROLE_KEY,
    ROWS_KEY,
    SOURCE_KEY,
)
from quantgraph.ir.qspec import default_percentile_tail
from quantgraph.ir.quantizer import QuantizerSettings, get_quantizer, is_quantizer
from quantgraph.options import PERCENTILE_TAIL, Option
from quantgraph.passes.infra import CompileContext, PassBase, PassResult, later
from quantgraph.passes.registry import register_pass

STES = ("gc", "plain")


def fake_quant_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_module" and is_quantizer(gm.get_submodule(n.target))]


def _nodes_before(gm: fx.GraphModule, stop: fx.Node) -> list[fx.Node]:
    out = []
    for n in gm.graph.nodes:
        if n is stop:
            break
        out.append(n)
    return out


def require_fake_quant(gm: fx.GraphModule, pass_name: str) -> None:
    """Precondition shared by the passes that work on prepared (fake-quantized) graphs."""
    if not fake_quant_nodes(gm):
        raise InputError(
            "the graph has no FakeQuantize modules (quantizers)", f"run 'prepare-qat' before '{pass_name}'"
        )


@register_pass
class PrepareQATPass(PassBase):
    """Insert the spec's quantizer (``FakeQuantize`` by default) after every annotated node (ranges start from calibration when present).

    Each quantizer tracks percentile ranges when its spec's observer is "percentile", else min/max.
    """

    name = "prepare-qat"
    description = "insert trainable FakeQuantize modules (percentile/min-max ranges, STE) at annotated nodes"
    options = (
        Option(
            "ste", str, "gc", "straight-through gradient: gc zeroes it where values saturate", choices=STES
        ),
        Option(
            "ema_momentum", float, None, "range tracking by EMA with this momentum (unset: running min/max)"
        ),
        PERCENTILE_TAIL,
    )

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        if not any(QSPEC_KEY in n.meta for n in gm.graph.nodes):
            raise InputError("no node is annotated for quantization", "run 'annotate' before 'prepare-qat'")

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        ste, momentum = self.option(ctx, "ste"), self.option(ctx, "ema_momentum")
        tail_option = self.option(ctx, "percentile_tail")
        targets = [n for n in gm.graph.nodes if QSPEC_KEY in n.meta]
        last_placeholder = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
        by_name = {n.name: n for n in gm.graph.nodes}
        for node in targets:
            spec = node.meta[QSPEC_KEY]
            percentile = spec.observer == "percentile"
            tail = (tail_option or default_percentile_tail(spec.bits)) if percentile else 0.0
            settings = QuantizerSettings(tail=tail, momentum=momentum, clip_grad=ste == "gc")
            module = get_quantizer(spec.quantizer).from_spec(spec, node.meta.get(QPARAMS_KEY), settings)
            name = f"{FAKE_QUANT_PREFIX}{node.name}"
            gm.add_submodule(name, module)
            users = list(node.users)
            anchor = last_placeholder if node.op == "placeholder" else node
            kwargs = {}
            if spec.group_index is not None and getattr(module, "takes_groups", False):
                group = by_name[spec.group_index]  # per-group quantizers read each row's group
                kwargs["groups"] = group
                anchor = later(gm, anchor, group)
            with gm.graph.inserting_after(anchor):
                fq = gm.graph.call_module(name, (node,), kwargs)
            fq.meta.update(
                {
                    SOURCE_KEY: node.name,
                    ROLE_KEY: node.meta.get(ROLE_KEY),
                    LAYER_KEY: node.meta.get(LAYER_KEY),
                    ROWS_KEY: node.meta.get(ROWS_KEY, "other"),
                }
            )
            earlier = set(_nodes_before(gm, fq))  # e.g. the bucket index reading x's size
            for user in users:
                if user not in earlier:
                    user.replace_input_with(node, fq)
        ctx.report["fake_quant_modules"] = len(targets)
        return PassResult(gm, bool(targets))
