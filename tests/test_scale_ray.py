"""Issue 18: ``--engine ray`` gives the single-process native logits bit for bit, also when a worker dies."""

from __future__ import annotations

import numpy as np
import pytest

from quantgraph.native.runtime import NativeModel
from quantgraph.scale.partition import partition_graph

from .test_native_backend import _power_law
from .test_scale import _graph_with_isolated, _model, killed_worker_case

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize(("kind", "bits"), [("gcn", 8), ("sage", 4)])
def test_ray_logits_equal_single_process(kind, bits, tmp_path, session):
    from quantgraph.scale.engine_ray import run_ray

    path = _model(kind, bits, tmp_path)
    g = _graph_with_isolated()
    expected = NativeModel.load(path, threads=1).run(g.inputs()).numpy()
    n = len(g.x)
    uneven = np.where(np.arange(n) < 5, 0, np.where(np.arange(n) < n - 30, 1, 2)).astype(np.int32)
    partition_graph(g.x.numpy(), g.edge_index.numpy(), 3, tmp_path / "parts", membership=uneven)
    result = run_ray(path, tmp_path / "parts")
    assert np.array_equal(result.logits, expected), np.abs(result.logits - expected).max()
    assert sum(result.bytes_per_layer) * (8 // bits) * 4 <= sum(result.float32_bytes_per_layer) + 64 * 3
    assert result.worker_peak_rss and min(result.worker_peak_rss.values()) > 0
    assert ray.is_initialized()  # a session the caller opened stays open


def test_ray_killed_worker_is_retried_and_result_is_exact(tmp_path, session):
    from quantgraph.scale.engine_ray import run_ray

    path, expected, fault = killed_worker_case("gin", tmp_path)
    result = run_ray(path, tmp_path / "parts", fault_file=str(fault))
    assert not fault.exists(), "the fault was never injected"
    assert np.array_equal(result.logits, expected)  # without a retry, ray.get would raise WorkerCrashedError


def test_cli_run_with_engine_ray(tmp_path, session, capsys):
    from quantgraph.cli import main

    path = _model("gcn", 4, tmp_path)
    g = _power_law(120, 7)
    partition_graph(g.x.numpy(), g.edge_index.numpy(), 2, tmp_path / "parts")
    out = tmp_path / "logits.npy"
    assert main(["run", str(path), "--data", str(tmp_path / "parts"), "--engine", "ray", "-o", str(out)]) == 0
    assert "ray workers" in capsys.readouterr().out
    assert np.array_equal(np.load(out), NativeModel.load(path, threads=1).run(g.inputs()).numpy())
