"""Human-readable listings: the IR (with roles and quantization annotations), ONNX graphs, native programs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
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


def sniff_format(path: Path) -> str:
    """What a file holds, from its bytes: ``onnx``, ``native`` (.qgn), ``torch`` (a torch zip) or ``unknown``."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            return "unknown"
        return "native" if "program.json" in names else "torch"
    if path.suffix == ".onnx" or head[:1] == b"\x08":  # protobuf field 1 (ir_version), varint
        return "onnx"
    return "unknown"


FORMAT_NAMES = {
    "onnx": "an ONNX model",
    "native": "a quantgraph native model (.qgn)",
    "torch": "a torch file",
    "unknown": "not a format quantgraph reads",
}


def format_onnx(path: Path) -> list[str]:
    """Opsets, inputs and outputs with their shapes, op counts, then the nodes; initializers are elided."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf decode errors have several types
        raise InputError(
            f"{path} is not a readable ONNX file ({type(err).__name__})", "check the file"
        ) from err
    g = model.graph
    counts = Counter(n.op_type for n in g.node)
    values = sum(_numel(t.dims) for t in g.initializer)
    lines = [
        f"ONNX ir_version {model.ir_version}, opsets "
        + ", ".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import),
        "inputs: " + ", ".join(f"{i.name}{_onnx_shape(i)}" for i in g.input),
        "outputs: " + ", ".join(f"{o.name}{_onnx_shape(o)}" for o in g.output),
        f"initializers: {len(g.initializer)} tensors, {values:,} values (elided below)",
        "ops: " + ", ".join(f"{k}×{v}" for k, v in sorted(counts.items())),
        "",
    ]
    bare = onnx.GraphProto()
    bare.CopyFrom(g)
    bare.ClearField("initializer")
    lines += onnx.printer.to_text(bare).splitlines()
    return lines


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _onnx_shape(value) -> str:
    dims = value.type.tensor_type.shape.dim
    return (
        "["
        + ", ".join(d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in dims)
        + "]"
    )


def format_native(path: Path) -> list[str]:
    """A native program: metadata, inputs, constants, then one line per step (stage, op, args, source)."""
    from quantgraph.native.artifact import load_program

    program = load_program(path)
    meta = program.meta
    values = sum(int(a.size) for a in program.arrays.values())
    kinds = Counter(step.op.split(".")[0] for step in program.steps)
    lines = [
        f"quantgraph native program: policy {meta.get('policy')}, {meta.get('bits')} bits, "
        f"quantgraph {meta.get('quantgraph_version')}",
        "inputs: " + ", ".join(program.inputs),
        "outputs: " + ", ".join(program.outputs),
        f"constants: {len(program.arrays)} arrays, {values:,} values (elided below)",
        "steps: " + ", ".join(f"{k}×{v}" for k, v in sorted(kinds.items())),
        "",
    ]
    for step in program.steps:
        args = ", ".join(_native_arg(a) for a in step.args)
        kwargs = "".join(f", {k}={_native_arg(v)}" for k, v in step.kwargs.items())
        source = f"  [{step.source}]" if step.source else ""
        lines.append(f"{step.stage:<7} %{step.out} = {step.op}({args}{kwargs}){source}")
    return lines


def _native_arg(arg: object) -> str:
    if isinstance(arg, dict):
        if "value" in arg:
            return f"%{arg['value']}"
        if "array" in arg:
            return f"@{arg['array']}"
        return next(iter(arg.values()), "?").__str__()
    if isinstance(arg, list):
        return "[" + ", ".join(_native_arg(a) for a in arg) + "]"
    return repr(arg)


def inspect_file(
    path: str | Path,
    console: Console,
    *,
    data_spec: str | None = None,
    data_root: str | None = None,
    policy: str | None = None,
    bits: int | None = None,
    trust_pickle: bool = False,
    imports: Sequence[str] = (),
) -> None:
    """Print an ONNX graph, a native program, or a model's IR (after ``policy``'s passes when given).

    Models are loaded as ``compile`` loads them: pickled ones only with ``trust_pickle``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist", "check the path")
    kind = sniff_format(path)
    if kind == "onnx":
        lines = format_onnx(path)
    elif kind == "native":
        lines = format_native(path)
    else:
        lines = _ir_lines(path, data_spec, data_root, policy, bits, trust_pickle, imports)
    for line in lines:
        console.print(line, markup=False, highlight=False)


def _ir_lines(
    path: Path,
    data_spec: str | None,
    data_root: str | None,
    policy: str | None,
    bits: int | None,
    trust_pickle: bool = False,
    imports: Sequence[str] = (),
):
    from quantgraph.compiler import compile as qg_compile
    from quantgraph.compiler import expected_feature_width
    from quantgraph.data import load_dataset, make_csbm
    from quantgraph.frontend import load_model

    model = load_model(path, trust_pickle=trust_pickle, imports=imports)
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
