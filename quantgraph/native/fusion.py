"""Fusion plan of a native program's feature stage: which steps run as one kernel call.

The program keeps one step per IR op group (``lower.py``); at load time the runtime folds neighbouring steps
into the kernel that produces their input, without changing any integer:

* ``native.requantize`` steps that are the only reader of the previous value join the epilogue of the
  ``native.aggregate`` / ``native.linear`` / ``native.requantize`` before them (at most ``MAX_STAGES``);
* a chain whose only reader is a 4/2-bit ``native.aggregate`` is stored packed by the producing kernel (rows
  of at most ``NativeModel.narrow_rows`` features stay int8: see ``NativeModel._out_bits``);
* a chain whose only reader is a per-tensor ``quantgraph.dequantize`` writes float32 itself;
* a ``native.quantize`` of a feature input read only by a ``native.linear`` runs inside the GEMM.

``NativeModel.integer_values`` runs the unfused steps, so every quantize point is still materialised there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from quantgraph.native.artifact import Program, Step, references
from quantgraph.native.kernels import MAX_STAGES

DEQUANTIZE = "quantgraph.dequantize.default"
HEADS = ("native.aggregate", "native.linear", "native.requantize")


@dataclass
class FusedStep:
    """One kernel call standing for ``head``, the ``stages`` after it and optionally the quantize before it."""

    head: Step
    stages: list[Step] = field(default_factory=list)
    input_quantize: Step | None = None
    dequantize: Step | None = None
    out_bits: int = 8
    reader_message: bool = False  # the 4/2-bit aggregation reading the packed output quantizes messages

    @property
    def out(self) -> str:
        if self.dequantize is not None:
            return self.dequantize.out
        return self.stages[-1].out if self.stages else self.head.out

    @property
    def steps(self) -> list[Step]:
        before = [self.input_quantize] if self.input_quantize is not None else []
        after = [self.dequantize] if self.dequantize is not None else []
        return [*before, self.head, *self.stages, *after]


def _value_arg(arg: object) -> str | None:
    return arg["value"] if isinstance(arg, dict) and "value" in arg else None


def _scalar_array(program: Program, arg: object) -> bool:
    return isinstance(arg, dict) and "array" in arg and program.arrays[arg["array"]].size == 1


def plan(program: Program) -> list[Step | FusedStep]:
    """The feature stage as plain steps and fused kernel calls, in program order."""
    steps = [s for s in program.steps if s.stage == "feature"]
    readers: Counter[str] = Counter()
    for s in steps:
        readers.update(set(references({"args": s.args, "kwargs": s.kwargs})))
    outputs = set(program.outputs)
    feature_inputs = set(program.meta.get("feature_inputs", []))
    by_input: dict[str, list[Step]] = {}
    for s in steps:
        for name in set(references({"args": s.args, "kwargs": s.kwargs})):
            by_input.setdefault(name, []).append(s)

    def sole_reader(name: str) -> Step | None:
        users = by_input.get(name, [])
        return users[0] if len(users) == 1 and readers[name] == 1 and name not in outputs else None

    taken: set[int] = set()
    fused: dict[int, FusedStep] = {}
    for s in steps:
        if (
            id(s) in taken
            or s.op not in HEADS
            or (s.op != "native.requantize" and not s.kwargs.get("requant"))
        ):
            continue
        f = FusedStep(s)
        if s.op == "native.linear":
            src = _value_arg(s.args[0])
            q = next((p for p in steps if p.out == src and p.op == "native.quantize"), None)
            if q is not None and sole_reader(src) is s and _value_arg(q.args[0]) in feature_inputs:
                f.input_quantize = q
        while len(f.stages) + 1 < MAX_STAGES:
            nxt = sole_reader(f.out)
            if nxt is None or nxt.op != "native.requantize" or _value_arg(nxt.args[0]) != f.out:
                break
            f.stages.append(nxt)
        nxt = sole_reader(f.out)
        if nxt is not None and nxt.op == "native.aggregate" and int(nxt.kwargs["bits"]) < 8:
            if _value_arg(nxt.args[1]) == f.out:
                f.out_bits = int(nxt.kwargs["bits"])
                f.reader_message = nxt.kwargs.get("message") is not None
        elif nxt is not None and nxt.op == DEQUANTIZE and _value_arg(nxt.args[0]) == f.out:
            if (
                len(nxt.args) == 4
                and _scalar_array(program, nxt.args[1])
                and _scalar_array(program, nxt.args[2])
            ):
                f.dequantize = nxt
        if len(f.steps) == 1 and f.out_bits == 8 and s.op != "native.linear":  # (a GEMM's requantize: fused)
            continue
        for member in f.steps:
            taken.add(id(member))
        fused[id(s)] = f
    out: list[Step | FusedStep] = []
    for s in steps:
        if id(s) in fused:
            out.append(fused[id(s)])
        elif id(s) not in taken:
            out.append(s)
    return out
