"""Shared calibration (NNCF-style): one run over the calibration graphs feeds every annotated node's observer."""

from __future__ import annotations

from typing import Any

from torch import fx

from quantgraph.errors import InputError
from quantgraph.ir.meta import QPARAMS_KEY, QSPEC_KEY
from quantgraph.passes.infra import CompileContext, PassBase, PassResult, attr_tensor
from quantgraph.passes.observers import Observer, make_observer
from quantgraph.passes.registry import register_pass
from quantgraph.progress import progress_iter


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, observers: dict[str, Observer]) -> None:
        super().__init__(gm)
        self.observers = observers
        self.nodes = {n.name: n for n in gm.graph.nodes}
        self.pending: dict[str, list[tuple[Observer, Any]]] = {}  # group not computed yet (inputs)

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        obs = self.observers.get(n.name)
        if obs is not None:
            group = obs.spec.group_index
            if group is not None and self.nodes[group] not in self.env:
                self.pending.setdefault(group, []).append((obs, value))
            else:
                obs.update(value, self.env[self.nodes[group]] if group is not None else None)
        for waiting, held in self.pending.pop(n.name, ()):
            waiting.update(held, value)
        return value


@register_pass
class CalibratePass(PassBase):
    """Run the calibration graphs once, observe every annotated value, store ``meta[QPARAMS_KEY]``."""

    name = "calibrate"
    description = "observe annotated values on the calibration graphs and choose scales/zero points"

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        if not ctx.calibration_data:
            raise InputError("no calibration graph was given", "pass --data with a graph to calibrate on")

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        observers: dict[str, Observer] = {}
        constants: dict[str, fx.Node] = {}
        for node in gm.graph.nodes:
            spec = node.meta.get(QSPEC_KEY)
            if spec is None:
                continue
            observers[node.name] = make_observer(spec)
            if node.op == "get_attr":
                constants[node.name] = node
        for name, node in constants.items():  # weights need no data
            observers[name].update(attr_tensor(gm, node.target))
        activations = {k: v for k, v in observers.items() if k not in constants}
        if activations:
            recorder = _Recorder(gm, activations)
            for inputs in progress_iter(ctx.calibration_data, "calibrating", enabled=ctx.progress):
                recorder.run(*[inputs[n] for n in ctx.input_names])
        for node in gm.graph.nodes:
            if node.name in observers:
                node.meta[QPARAMS_KEY] = observers[node.name].qparams().check(node.name)
        return PassResult(gm, bool(observers))
