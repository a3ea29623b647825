"""Human-readable listings of the IR (with roles and quantization annotations) and of ONNX graphs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from rich.console import Console
from torch import fx

from quantgraph.errors import InputError
from quantgraph.ir.meta import LAYER_KEY, QPARAMS_KEY, QSPEC_KEY, ROLE_KEY


def _fmt_arg(a: object) -> str:
    if isinstance(a, fx.Node):
        return f"%{a.name}"
    if isinstance(a, (list, tuple)):
        return "[" + ", ".join(_fmt_arg(x) for x in a) + "]"
    return repr(a)


def _target_name(node: fx.Node) -> str:
    target = node.target
    if node.op == "get_attr":
        return f"get_attr {target}"
    if node.op in ("placeholder", "output"):
        return node.op
    name = getattr(target, "__name__", str(target))
    if isinstance(target, torch._ops.OpOverload):
        name = f"{target.namespace}.{target._schema.name.split('::')[-1]}"
    return name


def format_ir(gm: fx.GraphModule) -> list[str]:
    """One line per node: ``%name = op(args)  [role L<layer>] {qspec}``."""
    lines = []
    for node in gm.graph.nodes:
        args = ", ".join(_fmt_arg(a) for a in node.args)
        tags = []
        if ROLE_KEY in node.meta:
            layer = node.meta.get(LAYER_KEY)
            tags.append(node.meta[ROLE_KEY].value + ("" if layer is None else f" L{layer}"))
        spec = node.meta.get(QSPEC_KEY)
        if spec is not None:
            sym = "sym" if spec.symmetric else "affine"
            tags.append(
                f"q{spec.bits} {'s' if spec.signed else 'u'} {sym} {spec.granularity.value} {spec.observer}"
            )
        qp = node.meta.get(QPARAMS_KEY)
        if qp is not None and qp.scale.dim() == 0:
            tags.append(f"scale={qp.scale.item():.4g} zp={int(qp.zero_point.item())}")
        suffix = f"  [{' | '.join(tags)}]" if tags else ""
        lines.append(f"%{node.name} = {_target_name(node)}({args}){suffix}")
    return lines


def format_onnx(path: Path) -> list[str]:
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf decode errors have several types
        raise InputError(
            f"{path} is not a readable ONNX file ({type(err).__name__})", "check the file"
        ) from err
    g = model.graph
    counts = Counter(n.op_type for n in g.node)
    lines = [
        f"ONNX ir_version {model.ir_version}, opsets "
        + ", ".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import),
        "inputs: " + ", ".join(f"{i.name}{_onnx_shape(i)}" for i in g.input),
        "outputs: " + ", ".join(f"{o.name}{_onnx_shape(o)}" for o in g.output),
        "ops: " + ", ".join(f"{k}×{v}" for k, v in sorted(counts.items())),
        "",
    ]
    lines += onnx.printer.to_text(g).splitlines()
    return lines


def _onnx_shape(value) -> str:
    dims = value.type.tensor_type.shape.dim
    return "[" + ", ".join(d.dim_param or str(d.dim_value) for d in dims) + "]"


def inspect_file(
    path: str | Path,
    console: Console,
    *,
    data_spec: str | None = None,
    data_root: str | None = None,
    policy: str | None = None,
    bits: int | None = None,
) -> None:
    """Print an ONNX graph, or a model's IR (after ``policy``'s passes when given)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist", "check the path")
    if path.suffix == ".onnx":
        lines = format_onnx(path)
    else:
        lines = _ir_lines(path, data_spec, data_root, policy, bits)
    for line in lines:
        console.print(line, markup=False, highlight=False)


def _ir_lines(path: Path, data_spec: str | None, data_root: str | None, policy: str | None, bits: int | None):
    from quantgraph.compiler import compile as qg_compile
    from quantgraph.compiler import expected_feature_width
    from quantgraph.data import load_dataset, make_csbm
    from quantgraph.frontend import load_model

    model = load_model(path)
    if data_spec:
        data = load_dataset(data_spec, data_root)
    else:
        width = expected_feature_width(model)
        if width is None:
            raise InputError(
                f"cannot tell the feature width of {path}", "pass --data to trace on a real graph"
            )
        data = make_csbm(num_nodes=200, num_features=width, seed=0)
    compiled = qg_compile(model, data, policy=policy or "fp32", bits=bits)
    return format_ir(compiled.graph_module)
