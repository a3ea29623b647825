"""``--engine ray``: the same layer-wise tasks as ``engine_dask``, as Ray remote functions.

Without ``scheduler`` a local Ray instance with ``workers`` CPUs is started and shut down again; with
``scheduler`` (``ray://host:10001`` or ``auto``) the run joins that cluster, and a Ray session the caller
already opened is used and left open. Tasks retry (``max_retries``) when their worker process dies (tested in
``tests/test_scale_ray.py``); a result lost with its node is left to Ray's lineage reconstruction (not tested).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from quantgraph.errors import InputError
from quantgraph.scale import layerwise
from quantgraph.scale.result import ScaleResult, assemble, output_with_rss
from quantgraph.scale.store import load_manifest


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError(
            "--engine ray needs the ray package, which is not installed",
            'pip install "quantgraph[ray]", or use --engine dask',
        ) from None
    return ray


def _segment(
    model_path: str, state: Any, index: int, threads: int | None, fault: str | None, *pieces: np.ndarray
) -> Any:
    """``layerwise.run_segment`` with the pieces as top-level arguments (Ray resolves only those)."""
    return layerwise.run_segment(model_path, state, index, list(pieces), threads, fault)


def run_ray(
    model: str | Path,
    data: str | Path,
    workers: int = 2,
    scheduler: str | None = None,
    threads: int | None = 1,
    retries: int = 3,
    fault_file: str | None = None,
) -> ScaleResult:
    """Partitioned inference on Ray (``scheduler``: a Ray address such as ``ray://host:10001``; else local)."""
    ray = _ray()
    model_path = str(Path(model).resolve())
    manifest = load_manifest(data)
    own_session = not ray.is_initialized()
    if own_session:
        if not scheduler and workers < 1:
            raise InputError(f"--workers must be at least 1, got {workers}", "pass --workers N with N >= 1")
        ray.init(address=scheduler, num_cpus=None if scheduler else workers, log_to_driver=False)
    try:
        start = time.perf_counter()
        opts = {"max_retries": retries}
        prepare = ray.remote(**opts)(layerwise.prepare_part)
        piece = ray.remote(**opts)(layerwise.halo_piece)
        segment = ray.remote(**opts)(_segment)
        output = ray.remote(**opts)(output_with_rss)
        folders = [str(manifest.folder(p).resolve()) for p in range(manifest.parts)]
        states = [prepare.remote(model_path, folders[p], p, threads) for p in range(manifest.parts)]
        ray.wait(states, num_returns=len(states))
        segs = layerwise.segments(layerwise.model_for(model_path, threads))
        seconds = []
        for k, seg in enumerate(segs):
            t0 = time.perf_counter()
            new = []
            for p in range(manifest.parts):
                pieces = (
                    [piece.remote(states[q], seg, folders[p]) for q in manifest.halo_from(p)]
                    if seg.exchange is not None
                    else []
                )
                fault = fault_file if (k == len(segs) - 1 and p == 0) else None
                new.append(segment.remote(model_path, states[p], k, threads, fault, *pieces))
            ray.wait(new, num_returns=len(new))
            states = new
            seconds.append(time.perf_counter() - t0)
        outs = ray.get([output.remote(model_path, s, threads) for s in states])
        finals = ray.get(states)
    finally:
        if own_session:
            ray.shutdown()
    rss = {who: peak for _, who, peak in outs}  # the processes that ran an output task (Ray pools workers)
    return assemble(
        manifest.num_nodes, folders, [o[0] for o in outs], finals, segs, seconds, time.perf_counter() - start,
        workers, rss,
    )  # fmt: skip
