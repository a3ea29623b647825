"""Model zoo, zoo checkpoints and the training loops (fast: synthetic graphs only)."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import pytest
import torch
from torch.export import Dim

from quantgraph.errors import InputError
from quantgraph.models import (
    ARCHITECTURES,
    MODEL_DEFAULTS,
    TRAIN_DEFAULTS,
    build_model,
    load_checkpoint,
    save_checkpoint,
    task_of,
)
from quantgraph.training import (
    accuracy,
    collate_graphs,
    evaluate,
    train_graph_classifier,
    train_node_classifier,
)

NODE_ARCHS = [a for a in ARCHITECTURES if task_of(a) == "node"]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These graphs are tiny: one intra-op thread is fastest, and it avoids OpenMP threads spinning against
    other processes on a busy machine (which made single tests take seconds instead of milliseconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Graph:
    """Stand-in for quantgraph.data.GraphData (same field names)."""

    x: torch.Tensor
    edge_index: torch.Tensor
    y: torch.Tensor | None = None
    train_mask: torch.Tensor | None = None
    val_mask: torch.Tensor | None = None
    test_mask: torch.Tensor | None = None
    batch: torch.Tensor | None = None
    name: str = "synthetic"


class NotAllowed:
    """A class the weights-only unpickler must refuse to construct."""

    def __init__(self) -> None:
        self.payload = "arbitrary object"


def random_graph(
    num_nodes: int, num_edges: int, features: int = 6, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random edges among the first nodes, plus explicit self-loops; the last two nodes are isolated."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, features, generator=g)
    connected = num_nodes - 2
    edge_index = torch.randint(0, connected, (2, num_edges), generator=g)
    loops = torch.arange(3).repeat(2, 1)
    return x, torch.cat([edge_index, loops], dim=1)


def node_dynamic_shapes() -> dict:
    return {"x": {0: Dim("num_nodes", min=2)}, "edge_index": {1: Dim("num_edges", min=2)}}


# --------------------------------------------------------------------------------------------------------------
# zoo


@pytest.mark.parametrize("arch", NODE_ARCHS)
def test_node_model_forward_and_config(arch):
    torch.manual_seed(0)
    model = build_model(arch, 6, 3)
    x, edge_index = random_graph(12, 30)
    out = model.eval()(x, edge_index)
    assert out.shape == (12, 3)
    assert torch.isfinite(out).all()
    assert model.qg_arch == arch
    assert model.qg_config["in_channels"] == 6 and model.qg_config["out_channels"] == 3
    assert set(MODEL_DEFAULTS[arch]) <= set(model.qg_config)
    rebuilt = build_model(model.qg_arch, **model.qg_config)
    assert rebuilt.qg_config == model.qg_config
    assert set(TRAIN_DEFAULTS[arch]) >= {"epochs", "lr", "weight_decay"}


EXPORT_CASES = [pytest.param(arch, {}, id=arch) for arch in NODE_ARCHS] + [
    pytest.param("gin", {"project_input": False}, id="gin-unprojected"),
    pytest.param("sage", {"project_input": False}, id="sage-unprojected"),
]


@pytest.mark.parametrize(("arch", "config"), EXPORT_CASES)
def test_node_model_exports_with_dynamic_shapes(arch, config):
    torch.manual_seed(0)
    model = build_model(arch, 6, 3, **config).eval()
    x, edge_index = random_graph(10, 24, seed=1)
    ep = torch.export.export(model, (x, edge_index), dynamic_shapes=node_dynamic_shapes())
    x2, edge_index2 = random_graph(23, 57, seed=2)  # a different node and edge count
    with torch.no_grad():
        expected = model(x2, edge_index2)
        got = ep.module()(x2, edge_index2)
    assert got.shape == (23, 3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = build_model("gcn", 6, 3, dropout=0.5)
    x, edge_index = random_graph(12, 30)
    model.eval()
    torch.testing.assert_close(model(x, edge_index), model(x, edge_index))
    model.train()
    assert not torch.equal(model(x, edge_index), model(x, edge_index))


def batched_graphs(sizes: list[int], features: int = 5, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    xs, edges, batch, offset = [], [], [], 0
    for i, n in enumerate(sizes):
        xs.append(torch.randn(n, features, generator=g))
        edges.append(torch.randint(0, n, (2, 2 * n), generator=g) + offset)
        batch.append(torch.full((n,), i, dtype=torch.long))
        offset += n
    return torch.cat(xs), torch.cat(edges, dim=1), torch.cat(batch)


@pytest.mark.parametrize("pool", ["add", "mean"])
def test_gin_graph_forward_and_export(pool):
    torch.manual_seed(0)
    model = build_model("gin_graph", 5, 3, pool=pool).eval()
    x, edge_index, batch = batched_graphs([4, 6])
    assert model(x, edge_index, batch).shape == (2, 3)
    num_nodes = Dim("num_nodes", min=2)
    ep = torch.export.export(
        model,
        (x, edge_index, batch),
        dynamic_shapes={
            "x": {0: num_nodes},
            "edge_index": {1: Dim("num_edges", min=2)},
            "batch": {0: num_nodes},
        },
    )
    x2, edge_index2, batch2 = batched_graphs([3, 9, 5, 7], seed=1)  # 4 graphs instead of 2
    with torch.no_grad():
        expected = model(x2, edge_index2, batch2)
        got = ep.module()(x2, edge_index2, batch2)
    assert got.shape == (4, 3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_unknown_arch_and_options_are_input_errors():
    with pytest.raises(InputError, match="unknown architecture 'resnet'.*gat.*gcn.*gin.*sage"):
        build_model("resnet", 4, 2)
    with pytest.raises(InputError, match="unknown option"):
        build_model("gcn", 4, 2, heads=4)
    with pytest.raises(InputError, match="dropout"):
        build_model("gcn", 4, 2, dropout=1.5)
    with pytest.raises(InputError, match="in_channels"):
        build_model("gcn", 0, 2)
    with pytest.raises(InputError, match="pool"):
        build_model("gin_graph", 4, 2, pool="max")


# --------------------------------------------------------------------------------------------------------------
# checkpoints


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_checkpoint_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    model = build_model(arch, 5, 3, hidden=16).eval()
    path = tmp_path / f"{arch}.pt"
    save_checkpoint(path, model, metrics={"val_acc": 0.5, "test_acc": 0.25}, dataset="synthetic")
    assert sorted(os.listdir(tmp_path)) == [f"{arch}.pt"]  # no temp files left behind

    raw = torch.load(path, weights_only=True, map_location="cpu")
    assert raw["format"] == "quantgraph-zoo" and raw["version"] == 1 and raw["arch"] == arch
    assert raw["config"]["hidden"] == 16

    loaded, info = load_checkpoint(path)
    assert not loaded.training
    assert info["metrics"] == {"val_acc": 0.5, "test_acc": 0.25}
    assert info["dataset"] == "synthetic" and "state_dict" not in info
    assert loaded.qg_config == model.qg_config
    inputs = batched_graphs([4, 6]) if task_of(arch) == "graph" else random_graph(12, 30, features=5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), model(*inputs), rtol=0, atol=0)


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    model = build_model("gcn", 4, 2)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, build_model("gcn", 4, 2))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]


def test_save_rejects_non_primitive_config(tmp_path):
    model = build_model("gcn", 4, 2)
    with pytest.raises(InputError, match="config"):
        save_checkpoint(tmp_path / "m.pt", model, config={**model.qg_config, "act": torch.nn.ReLU()})
    assert not (tmp_path / "m.pt").exists()


def test_load_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "quantgraph-zoo", "obj": NotAllowed()}, path)
    with pytest.raises(InputError, match="pickled Python objects.*--trust-pickle.*--import MODULE"):
        load_checkpoint(path)
    plain = tmp_path / "plain.pkl"  # a legacy (non-zip) pickle of an arbitrary object
    plain.write_bytes(pickle.dumps(NotAllowed()))
    with pytest.raises(InputError, match="pickled Python objects"):
        load_checkpoint(plain)


def test_load_refuses_truncated_and_garbage_files(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, build_model("gcn", 4, 2))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint\n" * 10)
    with pytest.raises(InputError, match="corrupt"):
        load_checkpoint(garbage)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="corrupt"):
        load_checkpoint(empty)


def test_load_refuses_foreign_files(tmp_path):
    no_format = tmp_path / "sd.pt"
    torch.save(build_model("gcn", 4, 2).state_dict(), no_format)  # a bare state_dict
    with pytest.raises(InputError, match="not a quantgraph zoo checkpoint.*'format' is missing"):
        load_checkpoint(no_format)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else", "version": 1}, other)
    with pytest.raises(InputError, match="format is 'something-else'"):
        load_checkpoint(other)
    incomplete = tmp_path / "incomplete.pt"
    torch.save({"format": "quantgraph-zoo", "version": 1, "arch": "gcn", "config": {}}, incomplete)
    with pytest.raises(InputError, match="'state_dict' is missing"):
        load_checkpoint(incomplete)
    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(InputError, match="holds a Tensor"):
        load_checkpoint(tensor_file)


def test_load_refuses_mismatched_weights(tmp_path):
    path = tmp_path / "m.pt"
    model = build_model("gcn", 4, 2, hidden=8)
    save_checkpoint(path, model, config={**model.qg_config, "hidden": 16})
    with pytest.raises(InputError, match="do not fit"):
        load_checkpoint(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(InputError, match="not a file"):
        load_checkpoint(tmp_path)


# --------------------------------------------------------------------------------------------------------------
# training


def separable_graph(num_nodes: int = 90, classes: int = 3, features: int = 8, seed: int = 0) -> Graph:
    """Homophilous graph: noisy class one-hot features, edges mostly within a class; 1/3 train, 1/3 val."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_nodes) % classes
    x = torch.randn(num_nodes, features, generator=g) * 1.0
    x[:, :classes] += 1.5 * torch.nn.functional.one_hot(y, classes).float()
    src = torch.randint(0, num_nodes, (4 * num_nodes,), generator=g)
    dst = (src + classes * torch.randint(1, 5, src.shape, generator=g)) % num_nodes  # same class
    edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    perm = torch.randperm(num_nodes, generator=g)
    masks = [torch.zeros(num_nodes, dtype=torch.bool) for _ in range(3)]
    for i, m in enumerate(masks):
        m[perm[i * num_nodes // 3 : (i + 1) * num_nodes // 3]] = True
    return Graph(x, edge_index, y, *masks)


@pytest.mark.parametrize("arch", NODE_ARCHS)
def test_training_improves_and_keeps_best_val_epoch(arch):
    data = separable_graph()
    torch.manual_seed(0)
    model = build_model(arch, 8, 3)
    before = evaluate(model, data)
    result = train_node_classifier(model, data, epochs=30, lr=0.01, seed=0)
    assert result.epochs_run == len(result.history) == 30
    best_val = max(h["val_acc"] for h in result.history)
    assert result.val_acc == pytest.approx(best_val)
    best = result.history[result.best_epoch - 1]
    assert best["val_acc"] == best_val
    # ties on val accuracy go to the lower validation loss
    tied = [h for h in result.history if h["val_acc"] == best_val]
    assert best["val_loss"] == min(h["val_loss"] for h in tied)
    # the restored weights are those of the best epoch
    assert evaluate(model, data)["val"] == pytest.approx(best_val)
    assert not model.training
    assert result.val_acc > before["val"] and result.val_acc >= 0.8
    assert result.train_acc >= 0.8 and 0.0 <= result.test_acc <= 1.0


def test_training_is_reproducible_and_supports_patience():
    data = separable_graph()

    def run(**kw):
        torch.manual_seed(1)
        model = build_model("gcn", 8, 3)
        return train_node_classifier(model, data, epochs=40, seed=3, **kw), model

    (r1, m1), (r2, m2) = run(), run()
    assert [h["loss"] for h in r1.history] == [h["loss"] for h in r2.history]
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    r3, _ = run(patience=3)
    assert r3.epochs_run == 40 or r3.epochs_run - r3.best_epoch == 3

    # constant logits: nothing ever beats epoch 1 (equal accuracy and loss), so training stops 3 epochs later
    model = build_model("gcn", 8, 3)
    flat = train_node_classifier(model, data, epochs=40, patience=3, forward=lambda x, e: model(x, e) * 0.0)
    assert flat.best_epoch == 1 and flat.epochs_run == 4


def test_training_with_forward_callable_and_progress():
    data = separable_graph()
    torch.manual_seed(0)
    model = build_model("sage", 8, 3)
    calls = []

    def forward(x, edge_index):
        calls.append(model.training)
        return model(x, edge_index) * 1.0

    result = train_node_classifier(model, data, epochs=5, forward=forward, progress=True)
    assert len(calls) >= 10 and True in calls and False in calls  # training steps and eval passes
    assert result.best_epoch >= 1


def test_training_input_errors():
    data = separable_graph()
    model = build_model("gcn", 8, 3)
    with pytest.raises(InputError, match="val_mask"):
        train_node_classifier(model, Graph(data.x, data.edge_index, data.y, data.train_mask))
    with pytest.raises(InputError, match="epochs"):
        train_node_classifier(model, data, epochs=0)
    frozen = build_model("gcn", 8, 3).requires_grad_(False)
    with pytest.raises(InputError, match="no trainable parameters"):
        train_node_classifier(frozen, data, epochs=1)


def test_accuracy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    y = torch.tensor([0, 1, 1, 1])
    assert accuracy(logits, y) == 0.75
    assert accuracy(logits, y, torch.tensor([False, False, True, False])) == 0.0
    assert accuracy(logits, y, torch.zeros(4, dtype=torch.bool)) != accuracy(logits, y, None)  # NaN


def tiny_graph_set(count: int, seed: int) -> list[Graph]:
    """Class 0: sparse paths, class 1: dense cliques (sum pooling of degree tells them apart)."""
    g = torch.Generator().manual_seed(seed)
    graphs = []
    for i in range(count):
        label = i % 2
        n = int(torch.randint(4, 8, (1,), generator=g))
        if label == 0:
            src = torch.arange(n - 1)
            edge_index = torch.stack([torch.cat([src, src + 1]), torch.cat([src + 1, src])])
        else:
            full = torch.combinations(torch.arange(n), 2).t()
            edge_index = torch.cat([full, full.flip(0)], dim=1)
        graphs.append(Graph(torch.ones(n, 2), edge_index, torch.tensor(label)))
    return graphs


def test_graph_classifier_training():
    train, val, test = tiny_graph_set(24, 0), tiny_graph_set(8, 1), tiny_graph_set(8, 2)
    batch = collate_graphs(train[:3])
    assert batch.num_graphs == 3 and batch.batch.max() == 2 and batch.y.shape == (3,)
    torch.manual_seed(0)
    model = build_model("gin_graph", 2, 2, hidden=16, dropout=0.0)
    result = train_graph_classifier(model, train, val, test, epochs=15, lr=0.01, batch_size=8, seed=0)
    assert result.val_acc == pytest.approx(max(h["val_acc"] for h in result.history))
    assert result.val_acc >= 0.9 and result.test_acc >= 0.9


# --------------------------------------------------------------------------------------------------------------
# FP32 recipes: feature normalisation inside the model, GAT's validation-loss early stopping


def test_row_normalisation_is_part_of_the_model_and_its_export():
    from quantgraph.models.zoo import row_normalize

    torch.manual_seed(0)
    normed = build_model("gcn", 6, 3, normalize_features=True).eval()
    plain = build_model("gcn", 6, 3, normalize_features=False).eval()
    plain.load_state_dict(normed.state_dict())
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(12, 6, generator=g) < 0.5).float()  # bag-of-words: row sums above 1
    _, edge_index = random_graph(12, 30)
    expected = plain(row_normalize(x), edge_index)
    assert torch.allclose(normed(x, edge_index), expected, atol=1e-6)
    assert not torch.allclose(plain(x, edge_index), expected, atol=1e-3)
    program = torch.export.export(normed, (x, edge_index), dynamic_shapes=node_dynamic_shapes())
    assert torch.allclose(program.module()(x, edge_index), expected, atol=1e-6)  # takes raw features
    assert row_normalize(torch.zeros(2, 3)).eq(0).all()  # empty rows stay zero


def test_checkpoint_without_the_normalisation_flag_loads_as_raw_features(tmp_path):
    torch.manual_seed(0)
    model = build_model("gcn", 6, 3, normalize_features=False)
    config = {k: v for k, v in model.qg_config.items() if k != "normalize_features"}  # an older checkpoint
    save_checkpoint(tmp_path / "old.pt", model, arch="gcn", config=config)
    loaded, info = load_checkpoint(tmp_path / "old.pt")
    assert loaded.normalize_features is False and "normalize_features" not in info["config"]


def test_training_can_select_and_stop_on_validation_loss():
    data = separable_graph()
    torch.manual_seed(0)
    model = build_model("gat", 8, 3)
    result = train_node_classifier(model, data, epochs=60, lr=0.01, seed=0, patience=10, select="loss")
    best_loss = min(h["val_loss"] for h in result.history)
    assert result.history[result.best_epoch - 1]["val_loss"] == best_loss
    assert result.epochs_run == 60 or result.epochs_run - result.best_epoch == 10
    with pytest.raises(InputError, match="select"):
        train_node_classifier(model, data, epochs=2, select="f1")


def test_keep_initial_returns_the_starting_model_when_fine_tuning_only_hurts():
    data = separable_graph()
    torch.manual_seed(0)
    model = build_model("gcn", 8, 3)
    train_node_classifier(model, data, epochs=60, seed=0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    start_val = evaluate(model, data)["val"]

    def wreck(keep_initial: bool):
        model.load_state_dict(start)
        return train_node_classifier(model, data, epochs=3, lr=50.0, seed=0, keep_initial=keep_initial)

    wrecked = wreck(False)
    assert wrecked.best_epoch >= 1 and wrecked.val_acc < start_val
    kept = wreck(True)
    assert kept.best_epoch == 0 and kept.val_acc == pytest.approx(start_val)
    for name, value in model.state_dict().items():
        assert torch.equal(value, start[name]), name
    assert kept.epochs_run == 3  # it still trained, and compared every epoch against the start
