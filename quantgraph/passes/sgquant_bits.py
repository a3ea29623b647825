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
from quantgraph.ir.meta import QPARAMS_KEY, QSPEC_KEY, ROLE_KEY, SOURCE_KEY
from quantgraph.ir.roles import Role
from quantgraph.metrics import accuracy
from quantgraph.options import Option
from quantgraph.passes.infra import CompileContext, PassBase, PassResult
from quantgraph.passes.registry import register_pass
from quantgraph.passes.sgquant_annotate import CANDIDATES
from quantgraph.passes.train_qat import TRAINING_OPTIONS, require_labelled_task, training_hyperparameters
from quantgraph.sgquant.candidate import CandidateEvaluator
from quantgraph.sgquant.components import COMPONENT_KEY, FP32_KEY, SGQ_LAYER_KEY
from quantgraph.sgquant.config import INPUT, BitConfig
from quantgraph.sgquant.memory import (
    PointSize,
    bias_elements,
    measure_points,
    memory_report,
    point_bits,
    sgquant_quantizers,
)
from quantgraph.sgquant.quantizer import FP32_BITS, SGQuantizer
from quantgraph.sgquant.ranges import RangeTable, record_values
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
ABS_FINETUNE_EPOCHS = Option(
    "abs_finetune_epochs",
    int,
    10,
    "ABS: fine-tuning epochs per candidate before its validation score (0: calibrated ranges only)",
    minimum=0,
)
RANGE_INIT = Option(
    "sgquant_range_init",
    str,
    "mse",
    "ranges for the chosen bits: mse (least-MSE clipping per bits, from calibration) or calibrated (min/max)",
    choices=("mse", "calibrated"),
)
ABS_REFINE_TOP = Option(
    "abs_refine_top",
    int,
    6,
    "ABS: screen candidates with calibrated ranges, then fine-tune this many Pareto points and choose among "
    "them (0: fine-tune every candidate)",
    minimum=0,
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
        if source.meta.get(ROLE_KEY) == Role.INPUT:  # the input features: their own search dimension
            comp = INPUT
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


def _set_all(
    quantizers: dict[str, tuple[fx.Node, SGQuantizer]],
    bits: dict[str, list[int]],
    ranges: RangeTable | None = None,
) -> None:
    """Set every quantizer's bits, and with ``ranges`` its MSE-optimal range for those bits."""
    for name, (_node, module) in quantizers.items():
        value = bits[name]
        module.set_bits(value if module.grouped else value[0])
        if ranges is not None:
            ranges.apply(name, module)


def _all_fp32(dims: dict[str, list]) -> dict[str, list[int]]:
    return {name: [FP32_BITS] * max(1, len(ds)) for name, ds in dims.items()}


def _fp32_val_acc(gm: fx.GraphModule, ctx: CompileContext, quantizers, dims) -> float | None:
    """Validation accuracy of this IR with every quantizer bypassed (None without labelled nodes)."""
    data = ctx.task_data.get("node")
    if data is None or data.y is None or data.val_mask is None:
        return None
    _set_all(quantizers, _all_fp32(dims))
    gm.eval()
    with torch.no_grad():
        return accuracy(gm(data.x, data.edge_index)[0], data.y, data.val_mask)


@register_pass
class SGQuantBitsPass(PassBase):
    """Set every SGQuant point's bits from a configuration or from the ABS search; record memory."""

    name = "sgquant-bits"
    description = (
        "SGQuant bits per layer/component/degree bucket: given rules, or ABS under a memory/accuracy budget"
    )
    options = (
        CONFIG,
        MEMORY_TARGET,
        ACCURACY_TOLERANCE,
        ABS_EVALUATIONS,
        ABS_FINETUNE_EPOCHS,
        ABS_REFINE_TOP,
        RANGE_INIT,
        CANDIDATES,
        *TRAINING_OPTIONS,
    )

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        if not sgquant_quantizers(gm):
            raise InputError(
                "the graph has no sgquant quantizers", "run 'prepare-qat' with the sgquant policy first"
            )

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        quantizers = sgquant_quantizers(gm)
        by_name = {n.name: n for n in gm.graph.nodes}
        dims = _dims(quantizers, by_name)
        for node, module in quantizers.values():  # input data keep their calibrated min/max range
            if by_name[node.meta[SOURCE_KEY]].meta.get(ROLE_KEY) == Role.INPUT:
                module.freeze_range()
        sizes = measure_points(gm, ctx.input_names, ctx.calibration_data[0])
        ranges = None
        if self.option(ctx, "sgquant_range_init") == "mse":
            calib = ctx.calibration_data[0]
            ranges = RangeTable(record_values(gm, quantizers, [calib[n] for n in ctx.input_names]))
        fp32_extra = bias_elements(gm)
        info = ctx.report.setdefault("sgquant", {})
        text = self.option(ctx, "sgquant_config")
        if text is None and (info.get("buckets") or {}).get("bucket_bits"):  # SGQuant's sqrt degree map
            text = ",".join(f"*.*.b{k}={b}" for k, b in enumerate(info["buckets"]["bucket_bits"]))
        config = BitConfig.parse(text, default=ctx.bits)
        target, tolerance = self.option(ctx, "memory_target"), self.option(ctx, "accuracy_tolerance")
        if target is not None or tolerance is not None:
            search = self._search(gm, ctx, quantizers, dims, sizes, fp32_extra, target, tolerance, ranges)
            config = BitConfig.parse(search.pop("chosen_config_text"))
            info["abs"] = search
        if "abs" in info:
            info["fp32_val_acc"] = info["abs"]["fp32"]["val_acc"]
        else:
            info["fp32_val_acc"] = _fp32_val_acc(gm, ctx, quantizers, dims)
        bits = _resolve(config, dims)
        _set_all(quantizers, bits, ranges)
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
        self, gm, ctx, quantizers, dims, sizes: list[PointSize], fp32_extra: int, target, tolerance, ranges
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

        hp = training_hyperparameters(ctx, self.option(ctx, "abs_finetune_epochs"))
        evaluator = CandidateEvaluator(
            gm,
            lambda x, ei: gm(x, ei)[0],
            data.x,
            data.edge_index,
            data.y,
            data.train_mask,
            data.val_mask,
            epochs=hp["epochs"],
            lr=hp["lr"],
            weight_decay=hp["weight_decay"],
            seed=hp["seed"],
        )

        top = self.option(ctx, "abs_refine_top")

        def evaluate(config) -> float:  # a screen with calibrated ranges, or the fine-tuned score
            return evaluator.score(
                lambda: _set_all(quantizers, module_bits(config), ranges), 0 if top else None
            )

        def refine(config) -> float:
            return evaluator.score(lambda: _set_all(quantizers, module_bits(config), ranges))

        fp32_acc = _fp32_val_acc(gm, ctx, quantizers, dims)  # the checkpoint itself, not fine-tuned
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
            refine=refine if top and hp["epochs"] else None,
            refine_top=top,
        )
        evaluator.restore()  # the chosen bits start QAT from the calibrated state, not the last candidate's
        result["chosen_config_text"] = space.to_text(result.pop("chosen_config"))
        result["finetune_epochs_per_candidate"] = hp["epochs"]
        result["screen"] = (
            "calibrated ranges, then fine-tuned Pareto points"
            if result["refined"]
            else (f"{hp['epochs']} fine-tuning epochs per candidate" if hp["epochs"] else "calibrated ranges")
        )
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
