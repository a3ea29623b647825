"""What a partitioned run returns, assembled the same way for every engine (Dask, Ray)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantgraph.scale import layerwise


@dataclass
class ScaleResult:
    """Logits in global node order, and what moved: halo bytes per feature segment (packed, and as float32
    would be) and in all graph segments (``graph_bytes``: node-level graph values such as degrees, as float).
    ``seconds_per_layer`` lists every segment, the ``graph_segments`` first."""

    logits: np.ndarray
    bytes_per_layer: list[int]
    float32_bytes_per_layer: list[int]
    seconds_per_layer: list[float]
    seconds: float
    parts: int
    workers: int
    worker_peak_rss: dict[str, int] = field(default_factory=dict)
    graph_bytes: int = 0
    graph_segments: int = 0
    #: tasks of a partition that ran in another process than its previous task (the state was shipped)
    state_moves: int = 0


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM; ru_maxrss would carry the parent's across exec)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def output_with_rss(model_path: str, state: Any, threads: int | None = None) -> tuple[np.ndarray, str, int]:
    """``layerwise.outputs`` plus the process that ran it and its peak memory (for engines without ``run``)."""
    return layerwise.outputs(model_path, state, threads), f"pid {os.getpid()}", peak_rss()


def assemble(
    num_nodes: int,
    folders: list[str],
    outs: list[np.ndarray],
    finals: list[Any],
    segs: list[layerwise.Segment],
    seconds: list[float],
    elapsed: float,
    workers: int,
    rss: dict[str, int],
) -> ScaleResult:
    """Logits in global node order from each partition's owned rows, and the halo bytes moved per segment."""
    width = outs[0].shape[1] if outs and outs[0].ndim == 2 else 1
    logits = np.zeros((num_nodes, width), dtype=outs[0].dtype if outs else np.float32)
    for folder, rows in zip(folders, outs, strict=True):
        logits[layerwise.output_file(folder)] = rows.reshape(len(rows), width)
    graph = [k for k, seg in enumerate(segs) if seg.stage == "graph"]
    feature = [k for k, seg in enumerate(segs) if seg.stage != "graph"]
    per_layer = [sum(s.received.get(k, 0) for s in finals) for k in feature]
    per_layer_f32 = [sum(s.received_float32.get(k, 0) for s in finals) for k in feature]
    graph_bytes = sum(s.received.get(k, 0) for s in finals for k in graph)
    return ScaleResult(
        logits,
        per_layer,
        per_layer_f32,
        seconds,
        elapsed,
        len(folders),
        workers,
        rss,
        graph_bytes,
        len(graph),
        sum(s.moves() for s in finals),
    )
