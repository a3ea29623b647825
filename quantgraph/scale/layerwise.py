"""Layer-wise execution of a native program over partitions: the engine-independent tasks.

The program's feature stage (its fused plan, as ``NativeModel.run`` executes it) is cut before every
aggregation into *segments*. Segment ``k >= 1`` begins with an aggregation that reads rows of neighbours: for
it, each partition receives the halo rows of that aggregation's input from the partitions that own them,
packed as the aggregation reads them (int8 rows, or 4/2-bit fields, two or four to a byte) and never as floats.
Every other step is row-wise, so a partition computes it on its owned rows alone. The engines
(``engine_dask``, ``engine_ray``) run one task per partition per segment, with a barrier between segments.

Models whose graph stage ``graph_exchange`` can prove (GCN, SAGE, GIN) run it on each partition's owned
in-edges alone: the graph stage is cut before each exchange point into *graph segments*, which come first
and receive the halo rows of a node-level value (a degree normalisation, as float) from its owners. Other models
run their whole graph stage on the stub layout (see ``partition``) when the partition is prepared.

A partition's state holds its graph-stage values (prepared on its local graph) and the owned rows of every
value a later segment reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from quantgraph.errors import InputError
from quantgraph.native import kernels
from quantgraph.native.artifact import Step, references
from quantgraph.native.fusion import FusedStep
from quantgraph.native.runtime import NativeModel, PackedRows
from quantgraph.scale.graph_exchange import exchange_points
from quantgraph.scale.store import load_part

#: feature-stage ops that act on each row alone (plus the aggregations, which the segments handle)
ROW_WISE = {
    "native.quantize", "native.linear", "native.requantize", "native.aggregate",
    "quantgraph.quantize.default", "quantgraph.dequantize.default", "quantgraph.requantize.default",
    "quantgraph.linear_int.default", "aten.add.Tensor", "aten.sub.Tensor", "aten.mul.Tensor",
    "aten.relu.default", "aten.clamp.default", "aten.round.default", "aten.to.dtype",
    "aten._to_copy.default", "aten.linear.default", "aten.addmm.default", "aten.mm.default",
    "aten.t.default", "aten.permute.default",
}  # fmt: skip

_MODELS: dict[tuple[str, float, int | None], NativeModel] = {}


@dataclass(frozen=True)
class Segment:
    """Plan items from one aggregation up to the next; ``exchange`` is the aggregation's input (or None).

    A ``stage == "graph"`` segment holds graph-stage steps from one exchange point up to the next; its
    ``exchange`` is the node-level value whose halo rows it receives (as they are: float)."""

    items: list[Step | FusedStep]
    exchange: str | None
    bits: int
    live_after: frozenset[str]
    stage: str = "feature"


@dataclass
class PartState:
    """One partition's values between segments (owned rows only), the bytes it received per segment, and the
    process that produced it at each task (``pids``: a change means the engine moved the state)."""

    part: int
    owned: int
    local: int
    values: dict[str, Any]
    received: dict[int, int] = field(default_factory=dict)
    received_float32: dict[int, int] = field(default_factory=dict)
    pids: tuple[int, ...] = ()

    def nbytes(self) -> int:
        """Bytes of the arrays it holds (what an engine moves when it ships the state)."""
        return sum(_value_bytes(v) for v in self.values.values())

    def moves(self) -> int:
        """How many of its tasks ran in another process than the one before."""
        return sum(a != b for a, b in zip(self.pids, self.pids[1:], strict=False))


def _value_bytes(value: Any) -> int:
    if isinstance(value, PackedRows):
        return int(value.data.nbytes)
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    return 64  # a scalar, a shape: small


def _register_dask_sizeof() -> None:
    """Tell Dask how large a state is. Its default (``sys.getsizeof``: 56 bytes for any state, 80 for a
    tensor) made the scheduler ship gigabyte states to wherever a task's small halo pieces were, so the
    partitions of a run piled up on one worker."""
    try:
        from dask.sizeof import sizeof
    except ImportError:  # Dask is optional (the Ray engine does not need it)
        return
    sizeof.register(PartState)(lambda state: state.nbytes())


_register_dask_sizeof()


def model_for(path: str, threads: int | None = None) -> NativeModel:
    """The native model at ``path``, loaded once per process (workers keep it between tasks)."""
    key = (str(path), os.path.getmtime(path), threads)
    if key not in _MODELS:
        _MODELS[key] = NativeModel.load(path, threads=threads)
    return _MODELS[key]


def _head(item: Step | FusedStep) -> Step:
    return item.head if isinstance(item, FusedStep) else item


def _reads(item: Step | FusedStep) -> set[str]:
    steps = item.steps if isinstance(item, FusedStep) else [item]
    return {n for s in steps for n in references({"args": s.args, "kwargs": s.kwargs})}


def _graph_segments(model: NativeModel) -> list[Segment]:
    """The graph stage cut before each exchange point (none for the stub layout)."""
    points = exchange_points(model)
    if not points:
        return []
    steps = model._steps("graph")
    bounds = [pt.index for pt in points] + [len(steps)]
    return [
        Segment(steps[a:b], pt.value, 0, frozenset(), "graph")
        for pt, a, b in zip(points, bounds[:-1], bounds[1:], strict=True)
    ]


def segments(model: NativeModel) -> list[Segment]:
    """The graph segments, then the model's fused plan cut before every aggregation; refuses steps that are
    not row-wise."""
    if sorted(model.program.inputs) != ["edge_index", "x"] or model.feature_inputs != ["x"]:
        raise InputError(
            f"partitioned runs take models with inputs x and edge_index, this one has {model.program.inputs}",
            "run it single-process with `quantgraph run MODEL --data GRAPH`",
        )
    plan = model._plan if model.fuse else model._steps("feature")
    for item in plan:
        steps = item.steps if isinstance(item, FusedStep) else [item]
        for s in steps:
            if s.op not in ROW_WISE:
                raise InputError(
                    f"step {s.out} ({s.op}) of this model is not row-wise, so it cannot run partitioned",
                    "partitioned runs support models whose only neighbourhood op is native.aggregate "
                    "(GCN, GIN, SAGE; not GAT)",
                )
    cuts = [i for i, item in enumerate(plan) if _head(item).op == "native.aggregate"]
    bounds = [0, *cuts, len(plan)] if not cuts or cuts[0] != 0 else [*cuts, len(plan)]
    out: list[Segment] = _graph_segments(model)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        items = plan[a:b]
        head = _head(items[0]) if items else None
        agg = head is not None and head.op == "native.aggregate"
        later = set(model.program.outputs)
        for item in plan[b:]:
            later |= _reads(item)
        out.append(
            Segment(
                items,
                head.args[1]["value"] if agg else None,
                int(head.kwargs["bits"]) if agg else 8,
                frozenset(later),
            )
        )
    return out


def _run_graph_steps(model: NativeModel, steps: list[Step], values: dict[str, Any], local: int) -> None:
    """Graph-stage steps on a local graph of ``local`` nodes (as ``NativeModel.prepare`` runs them)."""
    for step in steps:
        if step.op == "input.size":  # of the feature input x (the state holds x's owned rows only)
            _, axis = step.args
            values[step.out] = local if axis == 0 else int(values["x"].shape[axis])
        else:
            values[step.out] = model._execute(step, values)


def _graph_done(model: NativeModel, values: dict[str, Any]) -> dict[str, Any]:
    """The graph-stage values the feature stage reads (intermediates dropped)."""
    return {n: v for n, v in values.items() if n in model._feature_reads or n == "x"}


def prepare_part(model_path: str, folder: str, part: int, threads: int | None = None) -> PartState:
    """Run the graph stage (up to its first exchange point) on a partition's local graph, and load its owned
    features (memory-mapped file). Exchange layout when the model allows it, else the stub layout."""
    model = model_for(model_path, threads)
    arrays = load_part(folder)
    owned = len(arrays["owned"])
    local = owned + len(arrays["halo_owner"]) + 1  # + the dummy node
    x = arrays["x"]
    shape_only = np.broadcast_to(np.zeros((), dtype=np.float32), (local, x.shape[1]))
    points = exchange_points(model)
    if points is None:  # the stub layout: every edge of the partition
        edges = torch.from_numpy(np.array(arrays["edges"]))
        prepared = model.prepare({"x": shape_only, "edge_index": edges}, order="none")
        values = dict(prepared.values)
    else:  # the exchange layout: the edges into owned nodes
        edges = torch.from_numpy(np.array(arrays["edges"][:, : int(arrays["owned_edges"])]))
        steps = model._steps("graph")
        values = {"x": shape_only, "edge_index": edges}
        _run_graph_steps(model, steps[: points[0].index if points else len(steps)], values, local)
        if not points:
            values = _graph_done(model, values)
    values["x"] = torch.from_numpy(np.array(x, dtype=np.float32))
    return PartState(part, owned, local, values, pids=(os.getpid(),))


def pack_rows(value: Any, rows: np.ndarray | slice, bits: int) -> np.ndarray:
    """Rows of an aggregation input as the bytes that travel: int8 rows, or packed 4/2-bit fields."""
    if isinstance(value, PackedRows):
        return np.ascontiguousarray(value.data[rows]).view(np.uint8)
    q = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
    q = np.ascontiguousarray(q[rows], dtype=np.int8)
    return kernels.pack(q, bits, check=False).view(np.uint8)


def halo_piece(state: PartState, seg: Segment, dest_folder: str) -> np.ndarray:
    """The packed rows of ``state``'s partition that partition ``dest_folder`` holds as halo, in its order."""
    dest = load_part(dest_folder)
    rows = np.asarray(dest["halo_pos"][np.asarray(dest["halo_owner"]) == state.part])
    assert seg.exchange is not None
    if seg.stage == "graph":
        return np.ascontiguousarray(state.values[seg.exchange].numpy()[rows])
    return pack_rows(state.values[seg.exchange], rows, seg.bits)


def _run_graph_segment(
    model: NativeModel, state: PartState, index: int, pieces: list[np.ndarray]
) -> PartState:
    """A graph segment: the exchanged value's halo rows from their owners, then the steps up to the next."""
    segs = segments(model)
    seg = segs[index]
    assert seg.exchange is not None
    values = dict(state.values)
    table = values[seg.exchange].clone()
    halo = torch.from_numpy(np.concatenate(pieces)) if pieces else table[:0]
    if state.owned + len(halo) + 1 != state.local:
        raise InputError(
            f"partition {state.part} received {len(halo)} halo rows of {seg.exchange} for a local graph of "
            f"{state.local}",
            "re-create the partition folder",
        )
    table[state.owned : state.owned + len(halo)] = halo
    values[seg.exchange] = table
    _run_graph_steps(model, [i for i in seg.items if isinstance(i, Step)], values, state.local)
    if index + 1 == len(segs) or segs[index + 1].stage != "graph":
        values = _graph_done(model, values)
    received = dict(state.received)
    received[index] = int(sum(p.nbytes for p in pieces))
    received_f32 = dict(state.received_float32)
    received_f32[index] = received[index]
    pids = (*state.pids, os.getpid())
    return PartState(state.part, state.owned, state.local, values, received, received_f32, pids)


def _num_features(value: Any) -> int:
    return value.num_features if isinstance(value, PackedRows) else int(value.shape[1])


def _assemble(state: PartState, seg: Segment, pieces: list[np.ndarray]) -> Any:
    """The aggregation input over the local graph: owned rows, halo rows (in halo order), a zero dummy row."""
    assert seg.exchange is not None
    value = state.values[seg.exchange]
    width = _num_features(value)
    own = pack_rows(value, slice(None), seg.bits)
    parts = [own, *pieces]
    total = sum(len(p) for p in parts) + 1
    row = kernels.row_bytes(width, seg.bits)
    out = kernels.aligned_empty((total, row), np.uint8)
    at = 0
    for p in parts:
        out[at : at + len(p)] = p[:, :row]
        at += len(p)
    out[at:] = 0  # the dummy row: read only by halo rows, whose outputs are discarded
    if total != state.local:
        raise InputError(
            f"partition {state.part} assembled {total} rows for a local graph of {state.local}",
            "re-create the partition folder",
        )
    if seg.bits == 8:
        return torch.from_numpy(out.view(np.int8))
    return PackedRows(out, seg.bits, width)


def _owned_rows(value: Any, state: PartState) -> Any:
    if isinstance(value, PackedRows) and value.data.shape[0] == state.local:
        return PackedRows(np.ascontiguousarray(value.data[: state.owned]), value.bits, value.num_features)
    if isinstance(value, Tensor) and value.dim() and value.shape[0] == state.local:
        return value[: state.owned].contiguous()
    return value


def run_segment(
    model_path: str,
    state: PartState,
    index: int,
    pieces: list[np.ndarray],
    threads: int | None = None,
    fault_file: str | None = None,
) -> PartState:
    """Segment ``index`` on one partition: assemble the halo, run the items, keep owned rows of live values.

    ``fault_file`` (tests only): when that file exists, delete it and end this worker process abruptly, as a
    crashed machine would; the engine must re-run the task elsewhere.
    """
    if fault_file is not None and os.path.exists(fault_file):
        os.remove(fault_file)
        os._exit(1)
    model = model_for(model_path, threads)
    seg = segments(model)[index]
    if seg.stage == "graph":
        return _run_graph_segment(model, state, index, pieces)
    values = dict(state.values)
    if seg.exchange is not None:
        owned_value = values[seg.exchange]
        values[seg.exchange] = _assemble(state, seg, pieces)
    for i, item in enumerate(seg.items):
        if isinstance(item, FusedStep):
            out = model._fused(item, values, None)
        else:
            out = model._execute(item, values)
        values[item.out] = _owned_rows(out, state)
        if i == 0 and seg.exchange is not None:
            values[seg.exchange] = owned_value
    keep = {k: v for k, v in values.items() if k in seg.live_after}  # what later segments read
    received = dict(state.received)
    received_f32 = dict(state.received_float32)
    if seg.exchange is not None:
        received[index] = int(sum(p.nbytes for p in pieces))
        width = _num_features(state.values[seg.exchange])
        received_f32[index] = int(sum(len(p) for p in pieces)) * width * 4
    pids = (*state.pids, os.getpid())
    return PartState(state.part, state.owned, state.local, keep, received, received_f32, pids)


def outputs(model_path: str, state: PartState, threads: int | None = None) -> np.ndarray:
    """The owned rows of the program's first output (the logits), as float32."""
    model = model_for(model_path, threads)
    value = state.values[model.program.outputs[0]]
    return np.asarray(value.numpy() if isinstance(value, Tensor) else value)


def output_file(folder: str | Path) -> np.ndarray:
    """The global ids of a partition's owned rows."""
    return np.asarray(load_part(folder)["owned"])
