"""Pass infrastructure, shaped after onnx_ir's and torch.fx's: ``call`` returns a ``PassResult``.

A pass declares the options it reads (``options``, :class:`quantgraph.options.Option`) and may declare ``requires`` (checked before it runs) and ``ensures`` (checked after). A
``PassManager`` runs passes in order and, when one fails, raises a ``PassError`` naming the failing
pass and the pass that ran before it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, fx

from quantgraph.errors import PassError, QuantGraphError
from quantgraph.ir.qspec import QuantSpec
from quantgraph.ir.roles import Role
from quantgraph.options import Option
from quantgraph.progress import stage


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) graph module and whether it changed anything."""

    graph_module: fx.GraphModule
    modified: bool


@dataclass
class CompileContext:
    """State shared by the passes of one compilation (the NNCF-style shared calibration lives here)."""

    input_names: list[str]
    dim_names: dict[str, str] = field(default_factory=dict)
    calibration_data: list[dict[str, Tensor]] = field(default_factory=list)
    qconfig: dict[Role, QuantSpec] = field(default_factory=dict)  # role -> spec, set by the policy
    bits: int = 8
    #: option key -> value as given (``compile`` has parsed and checked them against the declarations)
    options: dict[str, Any] = field(default_factory=dict)
    progress: bool = False
    #: passes add their findings here: JSON-ready values only (no modules, no datasets)
    report: dict[str, Any] = field(default_factory=dict)
    #: labelled data for training passes: {"node": GraphData} or {"graphs": {"train": [...], "val": [...]}}
    task_data: dict[str, Any] = field(default_factory=dict)
    #: the Q/DQ form of an integer IR, kept by ``fold-scales`` before it rewrites (BitOPs count on it)
    qdq_module: fx.GraphModule | None = None
    #: graphs whose in-degrees the int32 overflow proof covers when not the calibration graphs (a sample's graph)
    degree_data: list[dict[str, Tensor]] = field(default_factory=list)


class PassBase:
    """One transformation of the IR. Subclasses set ``name``/``description`` and implement ``call``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: the option keys this pass reads (``compile`` accepts and checks exactly the declared ones)
    options: ClassVar[tuple[Option, ...]] = ()

    def option(self, ctx: CompileContext, key: str) -> Any:
        """The value of declared option ``key`` in ``ctx.options`` (parsed), else its default."""
        for opt in type(self).options:
            if opt.name == key:
                return opt.read(ctx.options)
        raise KeyError(f"pass {self.display_name} reads option '{key}' without declaring it in `options`")

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        """Raise if the graph is not in the state this pass needs."""

    def ensures(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        """Raise if the pass left the graph in a wrong state."""

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        raise NotImplementedError

    def __call__(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        self.requires(gm, ctx)
        result = self.call(gm, ctx)
        if not isinstance(result, PassResult):
            raise TypeError(f"pass {self.display_name} returned {type(result).__name__}, expected PassResult")
        if result.modified:
            result.graph_module.graph.lint()
            result.graph_module.recompile()
        self.ensures(result.graph_module, ctx)
        return result

    @property
    def display_name(self) -> str:
        return self.name or type(self).__name__


class Sequential(PassBase):
    """Run passes in order as one pass."""

    name = "sequential"
    description = "runs a list of passes in order"

    def __init__(self, passes: Sequence[PassBase]) -> None:
        self.passes = list(passes)

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        modified = False
        for p in self.passes:
            result = p(gm, ctx)
            gm, modified = result.graph_module, modified or result.modified
        return PassResult(gm, modified)


@dataclass
class PassRecord:
    name: str
    modified: bool
    seconds: float


class PassManager:
    """Run a pipeline of passes, recording what ran and naming the failing pass on error."""

    def __init__(self, passes: Sequence[PassBase]) -> None:
        self.passes = list(passes)
        self.records: list[PassRecord] = []

    def __call__(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        modified = False
        previous = "<start>"
        for p in self.passes:
            start = time.perf_counter()
            try:
                with stage(f"pass {p.display_name}"):
                    result = p(gm, ctx)
            except QuantGraphError as err:
                raise type(err)(
                    f"pass '{p.display_name}' (after '{previous}') failed: {err.problem}", err.fix
                ) from err
            except Exception as err:  # a bug or bad state inside the pass: still name it
                raise PassError(
                    f"pass '{p.display_name}' (after '{previous}') failed: {type(err).__name__}: {_first_line(err)}",
                    "check the pass's requirements or report this with the model that triggered it",
                ) from err
            self.records.append(PassRecord(p.display_name, result.modified, time.perf_counter() - start))
            gm, modified = result.graph_module, modified or result.modified
            previous = p.display_name
        return PassResult(gm, modified)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def call_function_nodes(gm: fx.GraphModule, target: Any | None = None) -> list[fx.Node]:
    """The ``call_function`` nodes of ``gm`` (optionally only those calling ``target``)."""
    return [n for n in gm.graph.nodes if n.op == "call_function" and (target is None or n.target == target)]


def is_float_value(node: fx.Node) -> bool:
    """Whether the node's value (from tracing metadata) is a floating-point tensor."""
    val = node.meta.get("val")
    return isinstance(val, Tensor) and val.is_floating_point()


def attr_tensor(gm: fx.GraphModule, target: str) -> Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def add_constant(gm: fx.GraphModule, name: str, value: Tensor, before: fx.Node) -> fx.Node:
    """Register ``value`` as a buffer of ``gm`` and return a ``get_attr`` node reading it."""
    target = name.replace(".", "_")
    gm.register_buffer(target, value.detach().clone())
    with gm.graph.inserting_before(before):
        node = gm.graph.get_attr(target)
    node.meta["val"] = value
    return node


def node_value_is_float(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Float check that also works for ``get_attr`` nodes without metadata."""
    if node.op == "get_attr":
        t = attr_tensor(gm, node.target)
        return isinstance(t, Tensor) and t.is_floating_point()
    return is_float_value(node)


def later(gm: fx.GraphModule, a: fx.Node, b: fx.Node) -> fx.Node:
    """Whichever of two nodes of ``gm`` comes later in the graph (insert after it to follow both)."""
    for n in reversed(gm.graph.nodes):
        if n is a or n is b:
            return n
    return a


def same_value(a: object, b: object) -> bool:
    """Whether two IR arguments compute the same value (same op tree over the same leaves)."""
    if a is b:
        return True
    if isinstance(a, fx.Node) and isinstance(b, fx.Node):
        return (
            (a.op, a.target) == (b.op, b.target)
            and len(a.args) == len(b.args)
            and all(same_value(x, y) for x, y in zip(a.args, b.args, strict=True))
        )
    return a == b


__all__ = [
    "CompileContext",
    "PassBase",
    "PassManager",
    "PassRecord",
    "PassResult",
    "Sequential",
    "add_constant",
    "attr_tensor",
    "call_function_nodes",
    "is_float_value",
    "later",
    "node_value_is_float",
    "same_value",
]
