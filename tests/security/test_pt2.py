"""`.pt2` files never unpickle untrusted bytes without --trust-pickle (issue 10, code execution)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from quantgraph.cli import main
from quantgraph.errors import InputError
from quantgraph.frontend import load_model
from quantgraph.models import ARCHITECTURES, build_model

from .payloads import marker_pickle, marker_torch_save, rewrite_zip, zip_root


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


@pytest.fixture(scope="module")
def clean_pt2(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "clean.pt2"
    torch.export.save(torch.export.export(Small(), (torch.randn(5, 4),)), path)
    return path


def _weights_config(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        (name,) = [n for n in z.namelist() if n.endswith("model_weights_config.json")]
        return json.loads(z.read(name))


def _payload(kind: str, clean: Path, dst: Path, marker: Path) -> None:
    root = zip_root(clean)
    if kind == "sample_inputs":
        rewrite_zip(clean, dst, {"data/sample_inputs/model.pt": marker_torch_save(marker)})
    elif kind == "use_pickle_weight":
        config = _weights_config(clean)
        entry = config["config"]["lin.weight"]
        entry["use_pickle"] = True
        rewrite_zip(
            clean,
            dst,
            {
                "data/weights/model_weights_config.json": json.dumps(config).encode(),
                f"data/weights/{entry['path_name']}": marker_torch_save(marker),
            },
        )
    elif kind == "opaque_constant":
        config = {
            "config": {
                "evil": {
                    "path_name": "opaque_obj_0",
                    "is_param": False,
                    "use_pickle": True,
                    "tensor_meta": None,
                }
            }
        }
        rewrite_zip(
            clean,
            dst,
            {"data/constants/model_constants_config.json": json.dumps(config).encode()},
            {f"{root}/data/constants/opaque_obj_0": marker_pickle(marker)},
        )
    elif kind == "legacy_weights":
        rewrite_zip(clean, dst, {}, {f"{root}/data/weights/model.pt": marker_torch_save(marker)})
    else:
        raise ValueError(kind)


PAYLOADS = ["sample_inputs", "use_pickle_weight", "opaque_constant", "legacy_weights"]


@pytest.mark.parametrize("kind", PAYLOADS)
def test_payload_is_live_in_plain_torch_export_load(kind, clean_pt2, tmp_path):
    """The payloads are real: torch.export.load itself runs them (so the refusals below mean something)."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt2"
    _payload(kind, clean_pt2, evil, marker)
    try:
        torch.export.load(evil)
    except Exception:
        pass
    assert marker.exists()


@pytest.mark.parametrize("kind", PAYLOADS)
def test_pt2_payload_is_refused_without_trust_pickle(kind, clean_pt2, tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt2"
    _payload(kind, clean_pt2, evil, marker)
    with pytest.raises(InputError, match="--trust-pickle"):
        load_model(evil)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["compile", "inspect"])
def test_pt2_payload_refused_by_cli(command, clean_pt2, tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt2"
    _payload("sample_inputs", clean_pt2, evil, marker)
    args = [command, str(evil)]
    if command == "compile":
        args += ["--data", "synthetic", "-o", str(tmp_path / "m.onnx"), "--quiet"]
    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pickled" in err[0]
    assert not marker.exists()
    assert not (tmp_path / "m.onnx").exists()


def test_aotinductor_member_is_refused(clean_pt2, tmp_path):
    evil = tmp_path / "aoti.pt2"
    rewrite_zip(clean_pt2, evil, {}, {f"{zip_root(clean_pt2)}/data/aotinductor/model/x.so": b"\x7fELF"})
    with pytest.raises(InputError, match="compiled code"):
        load_model(evil)


def test_clean_zoo_model_pt2_still_loads(tmp_path):
    model = build_model("gcn", in_channels=6, out_channels=3).eval()
    x, edge_index = torch.randn(10, 6), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    ep = torch.export.export(model, (x, edge_index))
    path = tmp_path / "gcn.pt2"
    torch.export.save(ep, path)
    loaded = load_model(path)
    assert isinstance(loaded, torch.export.ExportedProgram)
    torch.testing.assert_close(loaded.module()(x, edge_index), model(x, edge_index))


def test_trust_pickle_still_loads_pickled_weights(clean_pt2, tmp_path):
    """--trust-pickle keeps torch's own loader: a use_pickle weight (here a real tensor) loads."""
    import io

    config = _weights_config(clean_pt2)
    entry = config["config"]["lin.weight"]
    entry["use_pickle"] = True
    buf = io.BytesIO()
    torch.save(torch.nn.Parameter(torch.ones(3, 4)), buf)
    path = tmp_path / "pickled_weight.pt2"
    rewrite_zip(
        clean_pt2,
        path,
        {
            "data/weights/model_weights_config.json": json.dumps(config).encode(),
            f"data/weights/{entry['path_name']}": buf.getvalue(),
        },
    )
    with pytest.raises(InputError, match="use_pickle"):
        load_model(path)
    ep = load_model(path, trust_pickle=True)
    assert torch.equal(ep.state_dict["lin.weight"], torch.ones(3, 4))


def test_zip_bomb_pt2_is_refused(tmp_path):
    path = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb/archive_format", b"pt2")
        z.writestr("bomb/data/weights/weight_0", b"\0" * (64 << 20))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(InputError, match="decompression bomb"):
        load_model(path)


class _Zeros(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.zeros(4)


def _from_file_pt2(tmp_path: Path, secret: Path) -> Path:
    """A pickle-free .pt2 whose graph reads ``secret`` with aten.from_file (its zeros node rewritten)."""
    clean = tmp_path / "zeros.pt2"
    torch.export.save(torch.export.export(_Zeros(), (torch.zeros(4),)), clean)
    with zipfile.ZipFile(clean) as z:
        (name,) = [n for n in z.namelist() if n.endswith("models/model.json")]
        doc = json.loads(z.read(name))
    for node in doc["graph_module"]["graph"]["nodes"]:
        if node["target"] == "torch.ops.aten.zeros.default":
            node["target"] = "torch.ops.aten.from_file.default"
            dtype = [i for i in node["inputs"] if i["name"] == "dtype"]
            node["inputs"] = [
                {"name": "filename", "arg": {"as_string": str(secret)}, "kind": 1},
                {"name": "size", "arg": {"as_int": 4}, "kind": 2},
                *dtype,
            ]
    evil = tmp_path / "from_file.pt2"
    rewrite_zip(clean, evil, {"models/model.json": json.dumps(doc).encode()})
    return evil


def test_pt2_graph_calling_from_file_is_refused(tmp_path, capsys):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    evil = _from_file_pt2(tmp_path, secret)
    # live: plain torch.export.load builds a module that reads the file
    leaked = torch.export.load(evil).module()(torch.zeros(4))
    assert leaked.tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(InputError, match="from_file.*allow-list"):
        load_model(evil)
    assert main(["inspect", str(evil)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "aten.from_file" in err[0]


def test_pt2_op_allow_list_admits_the_zoo_and_refuses_other_libraries():
    from quantgraph.frontend.pt2_ops import allowed

    assert allowed("torch.ops.aten.scatter_add_.default") and allowed("_operator.getitem")
    for name in ("torch.ops.aten.from_file.default", "torch.ops.aten.set_.source_Storage",
                 "torch.ops.mylib.run.default", "torch.ops.higher_order.cond", "builtins.eval"):  # fmt: skip
        assert not allowed(name), name


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_zoo_architecture_exports_within_the_allow_list(arch):
    """A new zoo model whose export needs another op must add it to pt2_ops.ATEN_OPS (and say why)."""
    from quantgraph.frontend.pt2_ops import allowed, target_name

    model = build_model(arch, 6, 3).eval()
    x, edge_index = torch.randn(10, 6), torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 0, 0]])
    try:
        ep = torch.export.export(model, (x, edge_index))
    except Exception:  # graph-level models also take the graph index of each node
        ep = torch.export.export(model, (x, edge_index, torch.zeros(10, dtype=torch.long)))
    called = {target_name(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not {t for t in called if not allowed(t)}
