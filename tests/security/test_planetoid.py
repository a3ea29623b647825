"""Planetoid raw files are read with a restricted unpickler: a planted ``ind.cora.x`` cannot run code."""

from __future__ import annotations

import shutil

import pytest

from quantgraph.data.planetoid import RAW_SUFFIXES, load_planetoid
from quantgraph.errors import InputError

from .payloads import marker_pickle


@pytest.fixture
def cora_copy(planetoid_root, tmp_path):
    src = next(
        (p for p in (planetoid_root, planetoid_root / "planetoid") if (p / "ind.cora.x").is_file()), None
    )
    if src is None:
        pytest.skip("Cora raw files not found")
    dst = tmp_path / "planetoid"
    dst.mkdir()
    for suffix in RAW_SUFFIXES:
        shutil.copy(src / f"ind.cora.{suffix}", dst / f"ind.cora.{suffix}")
    return dst


def test_planted_code_payload_is_refused(cora_copy, tmp_path):
    marker = tmp_path / "ran"
    (cora_copy / "ind.cora.x").write_bytes(marker_pickle(marker))
    with pytest.raises(InputError, match="posix.mkdir|os.mkdir|refused"):
        load_planetoid("cora", cora_copy)
    assert not marker.exists()


def test_intact_cora_still_loads(cora_copy):
    graph = load_planetoid("cora", cora_copy)
    assert graph.num_nodes == 2708 and int(graph.train_mask.sum()) == 140
