"""Read a partition folder written by ``quantgraph.scale.partition`` (manifest checks, memory-mapped arrays)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantgraph.checksum import file_sha256
from quantgraph.errors import InputError
from quantgraph.scale.partition import FILES, FORMAT, VERSION

FIX = "re-create it with `quantgraph partition GRAPH --parts K -o DIR`"


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of a partition folder."""

    path: Path
    doc: dict[str, Any]

    @property
    def parts(self) -> int:
        return int(self.doc["parts"])

    @property
    def num_nodes(self) -> int:
        return int(self.doc["num_nodes"])

    @property
    def num_features(self) -> int:
        return int(self.doc["num_features"])

    def halo_from(self, p: int) -> list[int]:
        """The partitions that send halo rows to partition ``p`` (ascending)."""
        return sorted(int(q) for q in self.doc["partitions"][p]["halo_from"])

    def folder(self, p: int) -> Path:
        return self.path / f"part-{p}"


def is_partition_folder(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder with a ``manifest.json``."""
    return (Path(path) / "manifest.json").is_file()


def load_manifest(path: str | os.PathLike[str], verify: bool = False) -> Manifest:
    """The manifest of a partition folder; ``verify`` also checks every file's SHA-256."""
    folder = Path(path)
    file = folder / "manifest.json"
    if not file.is_file():
        raise InputError(f"{folder} is not a partition folder (no manifest.json)", FIX)
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {file} ({' '.join(str(err).split())[:120]})", FIX) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise InputError(f"{file} is not a version-{VERSION} {FORMAT} manifest", FIX)
    manifest = Manifest(folder, doc)
    if len(doc.get("partitions", [])) != manifest.parts:
        raise InputError(
            f"{file} lists {len(doc.get('partitions', []))} partitions, not {manifest.parts}", FIX
        )
    for p, entry in enumerate(doc["partitions"]):
        for name in FILES:
            member = manifest.folder(p) / name
            if not member.is_file():
                raise InputError(f"{member} is missing", FIX)
            if verify and file_sha256(member) != entry["sha256"][name]:
                raise InputError(f"{member} does not match the checksum in the manifest", FIX)
    return manifest


def load_part(folder: str | os.PathLike[str], mmap: bool = True) -> dict[str, np.ndarray]:
    """The arrays of one partition; ``x`` (and the rest) memory-mapped unless ``mmap`` is False."""
    mode = "r" if mmap else None
    return {name[:-4]: np.load(Path(folder) / name, mmap_mode=mode, allow_pickle=False) for name in FILES}
