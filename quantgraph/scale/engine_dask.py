"""Run a native model over a partition folder on Dask (``dask.distributed``): the default engine.

Without ``scheduler`` a local cluster of ``workers`` processes (loopback only) is started and closed again; with
``scheduler`` (``tcp://host:8786``) the run joins that cluster. Workers must see the model file and the
partition folder at the same paths (a shared filesystem). Tasks are ordinary ``Client.submit`` calls, each
partition's on one worker (round-robin; a loose restriction, so Dask re-runs the tasks of a worker that dies
elsewhere); Dask moves the halo pieces between them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from quantgraph.errors import InputError
from quantgraph.scale import layerwise
from quantgraph.scale.result import ScaleResult, assemble, peak_rss
from quantgraph.scale.store import load_manifest


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise InputError(
            "--engine dask needs dask.distributed, which is not installed",
            'pip install "quantgraph[scale]" (or "dask[distributed]")',
        ) from None
    return distributed


def run_dask(
    model: str | Path,
    data: str | Path,
    workers: int = 2,
    scheduler: str | None = None,
    threads: int | None = 1,
    memory_limit: str | int | None = "auto",
    retries: int = 3,
    fault_file: str | None = None,
    client: Any = None,
) -> ScaleResult:
    """Partitioned, layer-wise inference on Dask; the logits equal ``NativeModel.run`` on the whole graph."""
    distributed = _distributed()
    model_path = str(Path(model).resolve())
    manifest = load_manifest(data)
    seg_count = len(layerwise.segments(layerwise.model_for(model_path, threads)))
    own_client = client is None
    cluster = None
    if client is None:
        if scheduler:
            client = distributed.Client(scheduler)
        else:
            if workers < 1:
                raise InputError(
                    f"--workers must be at least 1, got {workers}", "pass --workers N with N >= 1"
                )
            cluster = distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, memory_limit=memory_limit,
            )  # fmt: skip
            client = distributed.Client(cluster)
    try:
        return _run(client, distributed, model_path, manifest, seg_count, threads, retries, fault_file)
    finally:
        if own_client:
            client.close()
            if cluster is not None:
                cluster.close()


def home_workers(client: Any, parts: int) -> list[str]:
    """Partition ``p``'s worker: round-robin over the cluster's workers (sorted addresses). Every task of a
    partition is placed there, so its state never travels; the halo pieces are what moves."""
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise InputError("the Dask cluster has no workers", "start workers, or run without --scheduler")
    return [workers[p % len(workers)] for p in range(parts)]


def _run(
    client: Any,
    distributed: Any,
    model_path: str,
    manifest: Any,
    seg_count: int,
    threads: int | None,
    retries: int,
    fault_file: str | None,
) -> ScaleResult:
    start = time.perf_counter()
    parts = manifest.parts
    folders = [str(manifest.folder(p).resolve()) for p in range(parts)]
    keep: list[Any] = []  # every future stays referenced, so a lost result can be recomputed from its lineage
    home = home_workers(client, parts)

    def submit(fn: Any, *args: Any, part: int, **kwargs: Any) -> Any:
        """A task of partition ``part``, placed on that partition's worker (elsewhere if it is gone)."""
        return client.submit(fn, *args, pure=False, workers=[home[part]], allow_other_workers=True, **kwargs)

    states = [
        submit(layerwise.prepare_part, model_path, folders[p], p, threads, part=p, retries=retries)
        for p in range(parts)
    ]
    keep += states
    distributed.wait(states)
    model = layerwise.model_for(model_path, threads)
    segs = layerwise.segments(model)
    assert len(segs) == seg_count
    seconds = []
    for k, seg in enumerate(segs):
        t0 = time.perf_counter()
        new = []
        for p in range(parts):
            pieces = []
            if seg.exchange is not None:
                for q in manifest.halo_from(p):
                    piece = submit(layerwise.halo_piece, states[q], seg, folders[p], part=q, retries=retries)
                    pieces.append(piece)
            keep += pieces
            fault = fault_file if (k == len(segs) - 1 and p == 0) else None
            new.append(
                submit(
                    layerwise.run_segment,
                    model_path,
                    states[p],
                    k,
                    pieces,
                    threads,
                    fault,
                    part=p,
                    retries=retries,
                )  # fmt: skip
            )
        distributed.wait(new)  # the barrier between layers
        keep += new
        states = new
        seconds.append(time.perf_counter() - t0)
    outs = client.gather(
        [submit(layerwise.outputs, model_path, s, threads, part=p) for p, s in enumerate(states)]
    )
    finals = client.gather(states)
    rss = client.run(peak_rss)
    workers = len(client.scheduler_info()["workers"])
    del keep
    return assemble(
        manifest.num_nodes, folders, outs, finals, segs, seconds, time.perf_counter() - start, workers, rss
    )
