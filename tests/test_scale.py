"""Issue 18: partitioned, layer-wise inference on Dask equals the single-process native run bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import quantgraph as qg
from quantgraph.errors import InputError
from quantgraph.native.runtime import NativeModel
from quantgraph.scale.partition import assign, partition_graph
from quantgraph.scale.store import load_manifest

from .conftest import TwoLayer
from .test_native_backend import _power_law

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def _graph_with_isolated(n: int = 160, seed: int = 3):
    g = _power_law(n, seed)
    keep = (g.edge_index < n - 20).all(0)  # the last 20 nodes: no edges at all
    g.edge_index = g.edge_index[:, keep]
    return g


def _model(kind: str, bits: int, tmp_path):
    torch.manual_seed(0)
    compiled = qg.compile(
        TwoLayer(kind).eval(), _power_law(300, 0), policy="minmax", bits=bits, backend="native"
    )
    path = tmp_path / f"{kind}{bits}.qgn"
    compiled.export_native(path)
    return path


@pytest.mark.parametrize("kind", ["gcn", "gin", "sage"])
@pytest.mark.parametrize("bits", [8, 4])
def test_partitioned_logits_equal_single_process(kind, bits, tmp_path, client):
    from quantgraph.scale.engine_dask import run_dask

    path = _model(kind, bits, tmp_path)
    g = _graph_with_isolated()
    expected = NativeModel.load(path, threads=1).run(g.inputs()).numpy()
    x, ei = g.x.numpy(), g.edge_index.numpy()
    n = len(x)
    uneven = np.where(np.arange(n) < 5, 0, np.where(np.arange(n) < n - 30, 1, 2)).astype(np.int32)
    for name, membership in (("metis", assign(ei, n, 3, "metis")), ("uneven", uneven)):
        parts = tmp_path / name
        partition_graph(x, ei, 3, parts, membership=membership)
        sizes = [p["owned"] for p in json.loads((parts / "manifest.json").read_text())["partitions"]]
        if name == "uneven":  # 5, 125 and 30 owned nodes (the 20 isolated ones among the 30)
            assert sizes == [5, n - 35, 30]
        result = run_dask(path, parts, client=client)
        assert result.logits.shape == expected.shape
        assert np.array_equal(result.logits, expected), (
            kind,
            bits,
            name,
            np.abs(result.logits - expected).max(),
        )
        assert sum(result.bytes_per_layer) > 0
        assert result.state_moves == 0  # every task of a partition ran where its state was: pieces moved
        # halo rows travel packed: 4-bit rows are half the bytes of 8-bit rows, both far below float32
        assert sum(result.bytes_per_layer) * (8 // bits) * 4 <= sum(result.float32_bytes_per_layer) + 64 * 3


def test_dask_sizes_a_partition_state_by_its_arrays(tmp_path):
    """Dask's default size of an unknown object is ``sys.getsizeof`` (56 bytes): placement then ignored the
    states and shipped them to the halo pieces."""
    from dask.sizeof import sizeof

    from quantgraph.scale import layerwise

    path = _model("gcn", 8, tmp_path)
    g = _power_law(150, 5)
    partition_graph(g.x.numpy(), g.edge_index.numpy(), 2, tmp_path / "parts", method="hash")
    state = layerwise.prepare_part(str(path), str(load_manifest(tmp_path / "parts").folder(0)), 0, 1)
    x = state.values["x"]
    assert state.pids and state.moves() == 0
    assert sizeof(state) == state.nbytes() >= x.numel() * x.element_size() > 1000


def killed_worker_case(kind: str, tmp_path):
    """A 4-bit model, its expected logits, 2 hash partitions in ``tmp_path/parts`` and an armed fault file."""
    path = _model(kind, 4, tmp_path)
    g = _power_law(150, 5)
    expected = NativeModel.load(path, threads=1).run(g.inputs()).numpy()
    partition_graph(g.x.numpy(), g.edge_index.numpy(), 2, tmp_path / "parts", method="hash")
    fault = tmp_path / "kill-once"
    fault.write_text("the first task of the last layer that sees this file ends its worker process")
    return path, expected, fault


def test_killed_worker_is_retried_and_result_is_exact(tmp_path, client):
    from quantgraph.scale.engine_dask import run_dask

    path, expected, fault = killed_worker_case("gcn", tmp_path)
    before = set(client.scheduler_info()["workers"])
    result = run_dask(path, tmp_path / "parts", client=client, fault_file=str(fault))
    assert not fault.exists(), "the fault was never injected"
    client.wait_for_workers(2, timeout=60)
    assert set(client.scheduler_info()["workers"]) != before  # a worker died and the nanny replaced it
    assert np.array_equal(result.logits, expected)


def test_partition_folder_and_errors(tmp_path):
    g = _graph_with_isolated(80, 1)
    x, ei = g.x.numpy(), g.edge_index.numpy()
    s = partition_graph(x, ei, 4, tmp_path / "p", method="range")
    assert sum(s.owned) == 80
    m = load_manifest(tmp_path / "p", verify=True)
    assert m.parts == 4 and m.num_nodes == 80
    x_part = np.load(tmp_path / "p" / "part-1" / "x.npy", mmap_mode="r")
    owned = np.load(tmp_path / "p" / "part-1" / "owned.npy")
    assert isinstance(x_part, np.memmap) and np.array_equal(np.asarray(x_part), x[owned])
    (tmp_path / "p" / "part-1" / "x.npy").write_bytes(b"\x93NUMPY broken")
    with pytest.raises(InputError, match="checksum"):
        load_manifest(tmp_path / "p", verify=True)
    with pytest.raises(InputError, match="already exists"):
        partition_graph(x, ei, 2, tmp_path / "p")
    with pytest.raises(InputError, match="exceeds"):
        partition_graph(x, ei, 81, tmp_path / "q")
    with pytest.raises(InputError, match="not a partition folder"):
        load_manifest(tmp_path)
    assert not (tmp_path / "q").exists()


def test_cli_partition_then_run_equals_single_process(tmp_path, capsys):
    from quantgraph.cli import main

    path = _model("gin", 4, tmp_path)
    g = _power_law(120, 7)
    np.savez(tmp_path / "g.npz", x=g.x.numpy(), edge_index=g.edge_index.numpy())
    parts = tmp_path / "parts"
    assert main(["partition", str(tmp_path / "g.npz"), "--parts", "3", "-o", str(parts)]) == 0
    assert main(["partition", str(tmp_path / "g.npz"), "--parts", "3", "-o", str(parts)]) == 2
    assert "already exists" in capsys.readouterr().err
    out = tmp_path / "logits.npy"
    assert main(["run", str(path), "--data", str(parts), "--workers", "2", "-o", str(out)]) == 0
    expected = NativeModel.load(path, threads=1).run(g.inputs()).numpy()
    assert np.array_equal(np.load(out), expected)
