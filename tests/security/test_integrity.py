"""Silently wrong models are refused (issue 10): checksummed checkpoints, non-finite quantization parameters,
and `inspect` reading models exactly as `compile` does (`--trust-pickle`)."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from quantgraph.checksum import UnverifiedFileWarning
from quantgraph.cli import main
from quantgraph.data import make_csbm
from quantgraph.errors import InputError
from quantgraph.models import build_model, load_checkpoint, save_checkpoint


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "gcn.pt"
    save_checkpoint(path, build_model("gcn", 8, 3))
    return path


def _flip_in_largest_member(src: Path, dst: Path) -> None:
    """Flip one bit in the middle of the largest stored member (a tensor's bytes): the zip stays readable."""
    dst.write_bytes(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED
    with open(dst, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        offset = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x04]))


def test_flipped_byte_in_a_checkpoint_is_refused(checkpoint, tmp_path, capsys):
    bad = tmp_path / "flipped.pt"
    _flip_in_largest_member(checkpoint, bad)
    raw = torch.load(bad, weights_only=True)  # it still loads as a PyTorch file: only the checksum sees it
    assert raw["sha256"]
    with pytest.raises(InputError, match="does not match the SHA-256"):
        load_checkpoint(bad)
    out = tmp_path / "m.onnx"
    assert main(["compile", str(bad), "--data", "synthetic:features=8", "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SHA-256" in err[0]
    assert not out.exists()


def test_checkpoint_checksum_covers_config_and_metrics(checkpoint, tmp_path):
    obj = torch.load(checkpoint, weights_only=True)
    obj["config"]["hidden"] = 7
    changed = tmp_path / "config.pt"
    torch.save(obj, changed)
    with pytest.raises(InputError, match="SHA-256"):
        load_checkpoint(changed)


def test_checkpoint_without_checksum_loads_with_one_warning_line(checkpoint, tmp_path, capsys):
    obj = torch.load(checkpoint, weights_only=True)
    del obj["sha256"]
    old = tmp_path / "old.pt"
    torch.save(obj, old)
    with pytest.warns(UnverifiedFileWarning, match="no content checksum"):
        model, _info = load_checkpoint(old)
    assert isinstance(model, torch.nn.Module)
    out = tmp_path / "old.onnx"
    assert main(["compile", str(old), "--data", "synthetic:features=8", "-o", str(out), "--quiet"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "checksum" in line]
    assert warnings and all(line.startswith("warning: ") for line in warnings)
    assert out.exists()


@pytest.mark.parametrize("backend", ["onnx-qdq", "native"])
def test_features_that_overflow_the_scale_are_an_error_naming_the_tensor(tmp_path, capsys, backend):
    """±3.4e38 features: max - min overflows float32, the scale would be inf and every output 0. (A model that
    row-normalises its features inside has finite inputs to its first quantization point: raw features here.)"""
    checkpoint = tmp_path / "raw.pt"
    save_checkpoint(checkpoint, build_model("gcn", 8, 3, normalize_features=False))
    data = make_csbm(num_nodes=60, num_features=8, seed=0)
    x = data.x.numpy().copy()
    x[0, 0], x[1, 0] = 3.4e38, -3.4e38
    npz = tmp_path / "huge.npz"
    np.savez(npz, x=x, edge_index=data.edge_index.numpy(), y=data.y.numpy())
    out = tmp_path / ("m.qgn" if backend == "native" else "m.onnx")
    rc = main(
        ["compile", str(checkpoint), "--data", str(npz), "--backend", backend, "-o", str(out), "--quiet"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "tensor 'x'" in err[0] and "scale inf" in err[0]
    assert not out.exists()


def test_inspect_honours_trust_pickle(tmp_path, capsys):
    from tests.user_modules import UserGNN

    path = tmp_path / "pickled.pt"
    torch.save(UserGNN(16, 8, 3), path)
    assert main(["inspect", str(path)]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(["inspect", str(path), "--import", "tests.user_modules"]) == 2
    assert "--import is only used with --trust-pickle" in capsys.readouterr().err
    trusted = [
        "inspect",
        str(path),
        "--data",
        "synthetic:features=16",
        "--trust-pickle",
        "--import",
        "tests.user_modules",
    ]
    assert main(trusted) == 0
    assert "linear" in capsys.readouterr().out  # the traced IR of the module
