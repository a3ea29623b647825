"""SGQuant's bits: apply a configuration (per layer / component / degree bucket), or find one with ABS.

Runs after ``prepare-qat`` (every point has an :class:`~quantgraph.sgquant.quantizer.SGQuantizer` with its
calibrated range) and before ``train-qat``. Without a budget the ``sgquant_config`` rules give the bits
(default: ``--bits`` everywhere). With ``memory_target`` (a reduction factor vs FP32) or
``accuracy_tolerance`` (validation accuracy points below FP32, as a fraction), ABS
(:mod:`quantgraph.sgquant.search`) searches the per-(layer, component, bucket) bits on the validation
nodes and applies the chosen point. Points left at 32 bits lose their quantizer. The report's ``sgquant``
section has the configuration, the bits of every point, the memory count (:mod:`quantgraph.sgquant.memory`)
and, after ABS, the Pareto front it searched.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import fx

from quantgraph.errors import InputError
from quantgraph.ir.meta import QPARAMS_KEY, QSPEC_KEY, SOURCE_KEY
from quantgraph.metrics import accuracy
from quantgraph.options import SEED, Option
from quantgraph.passes.infra import CompileContext, PassBase, PassResult
from quantgraph.passes.registry import register_pass
from quantgraph.passes.sgquant_annotate import CANDIDATES
from quantgraph.passes.train_qat import require_labelled_task
from quantgraph.sgquant.components import COMPONENT_KEY, FP32_KEY, SGQ_LAYER_KEY
from quantgraph.sgquant.config import BitConfig
from quantgraph.sgquant.memory import (
    PointSize,
    bias_elements,
    measure_points,
    memory_report,
    point_bits,
    sgquant_quantizers,
)
from quantgraph.sgquant.quantizer import FP32_BITS, SGQuantizer
from quantgraph.sgquant.search import SearchSpace, run_abs

CONFIG = Option(
    "sgquant_config", str, None, "bit rules LAYER.COMPONENT[.bBUCKET]=BITS, e.g. 0.*=4,1.*=32 (unset: --bits)"
)
MEMORY_TARGET = Option(
    "memory_target", float, None, "ABS: memory reduction factor vs FP32 to reach (e.g. 16)", minimum=1.0
)
ACCURACY_TOLERANCE = Option(
    "accuracy_tolerance",
    float,
    None,
    "ABS: least memory within this validation-accuracy drop (e.g. 0.004)",
    minimum=0.0,
)
ABS_EVALUATIONS = Option(
    "abs_evaluations", int, 48, "ABS: validation evaluations of candidate configurations", minimum=1
)


def _dims(quantizers: dict[str, tuple[fx.Node, SGQuantizer]], by_name: dict[str, fx.Node]) -> dict[str, list]:
    """Module name -> its search dimensions: [(layer, component, None)] or one per bucket."""
    out = {}
    for name, (node, module) in quantizers.items():
        source = by_name[node.meta[SOURCE_KEY]]
        layer, comp = (
            int(source.meta.get(SGQ_LAYER_KEY, 0)),
            str(source.meta.get(COMPONENT_KEY, "combination")),
        )
        groups = module.bits.numel() if module.grouped else 0
        if source.meta.get(FP32_KEY):  # a softmax denominator: stays FP32, not searched
            out[name] = []
        else:
            out[name] = [(layer, comp, None)] if not groups else [(layer, comp, g) for g in range(groups)]
    return out


def _resolve(config: BitConfig, dims: dict[str, list]) -> dict[str, list[int]]:
    return {
        name: [config.bits(layer, comp, bucket) for layer, comp, bucket in ds] or [FP32_BITS]
        for name, ds in dims.items()
    }


def _set_all(quantizers: dict[str, tuple[fx.Node, SGQuantizer]], bits: dict[str, list[int]]) -> None:
    for name, (_node, module) in quantizers.items():
        value = bits[name]
        module.set_bits(value if module.grouped else value[0])


@register_pass
class SGQuantBitsPass(PassBase):
    """Set every SGQuant point's bits from a configuration or from the ABS search; record memory."""

    name = "sgquant-bits"
    description = (
        "SGQuant bits per layer/component/degree bucket: given rules, or ABS under a memory/accuracy budget"
    )
    options = (CONFIG, MEMORY_TARGET, ACCURACY_TOLERANCE, ABS_EVALUATIONS, CANDIDATES, SEED)

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        if not sgquant_quantizers(gm):
            raise InputError(
                "the graph has no sgquant quantizers", "run 'prepare-qat' with the sgquant policy first"
            )
        if (
            self.option(ctx, "memory_target") is not None
            and self.option(ctx, "accuracy_tolerance") is not None
        ):
            raise InputError(
                "ABS takes one budget, got memory_target and accuracy_tolerance", "give only one"
            )

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        quantizers = sgquant_quantizers(gm)
        by_name = {n.name: n for n in gm.graph.nodes}
        dims = _dims(quantizers, by_name)
        sizes = measure_points(gm, ctx.input_names, ctx.calibration_data[0])
        fp32_extra = bias_elements(gm)
        info = ctx.report.setdefault("sgquant", {})
        text = self.option(ctx, "sgquant_config")
        if text is None and (info.get("buckets") or {}).get("bucket_bits"):  # SGQuant's sqrt degree map
            text = ",".join(f"*.*.b{k}={b}" for k, b in enumerate(info["buckets"]["bucket_bits"]))
        config = BitConfig.parse(text, default=ctx.bits)
        target, tolerance = self.option(ctx, "memory_target"), self.option(ctx, "accuracy_tolerance")
        if target is not None or tolerance is not None:
            search = self._search(gm, ctx, quantizers, dims, sizes, fp32_extra, target, tolerance)
            config = BitConfig.parse(search.pop("chosen_config_text"))
            info["abs"] = search
        bits = _resolve(config, dims)
        _set_all(quantizers, bits)
        info["config"] = config.to_text()
        info["memory"] = memory_report(sizes, bits, fp32_extra)
        info["bits"] = {
            by_name[quantizers[name][0].meta[SOURCE_KEY]].name: {
                "layer": int(by_name[quantizers[name][0].meta[SOURCE_KEY]].meta.get(SGQ_LAYER_KEY, 0)),
                "component": str(by_name[quantizers[name][0].meta[SOURCE_KEY]].meta.get(COMPONENT_KEY)),
                "bits": bits[name] if len(bits[name]) > 1 else bits[name][0],
            }
            for name in quantizers
        }
        self._freeze_bits(gm, quantizers, by_name)
        return PassResult(gm, True)

    def _search(
        self, gm, ctx, quantizers, dims, sizes: list[PointSize], fp32_extra: int, target, tolerance
    ) -> dict[str, Any]:
        require_labelled_task(ctx)
        data = ctx.task_data.get("node")
        if data is None:
            raise InputError(
                "ABS evaluates on validation nodes; this task has none",
                "use a node-classification dataset or give sgquant_config",
            )
        space_dims = tuple(
            sorted(
                {d for ds in dims.values() for d in ds},
                key=lambda d: (d[0], d[1], -1 if d[2] is None else d[2]),
            )
        )
        space = SearchSpace(space_dims, tuple(self.option(ctx, "sgquant_candidates")))
        index = {d: i for i, d in enumerate(space_dims)}
        size_of = {s.module: s for s in sizes}
        extra = fp32_extra * FP32_BITS

        def module_bits(config) -> dict[str, list[int]]:
            return {name: [config[index[d]] for d in ds] or [FP32_BITS] for name, ds in dims.items()}

        def memory(config) -> int:
            bits = module_bits(config)
            return extra + sum(
                point_bits(size_of[n], bits[n] if len(bits[n]) > 1 else bits[n][0]) for n in dims
            )

        def evaluate(config) -> float:
            _set_all(quantizers, module_bits(config))
            gm.eval()
            with torch.no_grad():
                logits = gm(data.x, data.edge_index)[0]
            return accuracy(logits, data.y, data.val_mask)

        for _n, module in quantizers.values():  # FP32 reference accuracy: every quantizer bypassed
            module.set_bits(FP32_BITS)
        gm.eval()
        with torch.no_grad():
            fp32_acc = accuracy(gm(data.x, data.edge_index)[0], data.y, data.val_mask)
        fp32_memory = extra + sum(sum(s.elements) * FP32_BITS for s in sizes)
        result = run_abs(
            space,
            evaluate,
            memory,
            fp32_memory,
            fp32_acc,
            memory_target=target,
            accuracy_tolerance=tolerance,
            evaluations=self.option(ctx, "abs_evaluations"),
            seed=self.option(ctx, "seed"),
        )
        result["chosen_config_text"] = space.to_text(result.pop("chosen_config"))
        return result

    @staticmethod
    def _freeze_bits(gm: fx.GraphModule, quantizers, by_name) -> None:
        """Points at 32 bits lose their quantizer; the others' specs record their (widest) bits."""
        for name, (node, module) in quantizers.items():
            source = by_name[node.meta[SOURCE_KEY]]
            if module.bypassed:
                node.replace_all_uses_with(source)
                gm.graph.erase_node(node)
                gm.delete_submodule(name)
                source.meta.pop(QSPEC_KEY, None)
                source.meta.pop(QPARAMS_KEY, None)
                continue
            widest = int(module.bits.max())
            spec = source.meta[QSPEC_KEY]
            source.meta[QSPEC_KEY] = replace(spec, bits=widest, signed=widest > 1)
