"""Hostile payloads for the security tests: pickles whose unpickling creates a marker folder."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import torch


class Marker:
    """Unpickling this calls ``os.mkdir(path)``: the test checks that ``path`` never appears."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def marker_pickle(path: Path, protocol: int = 2) -> bytes:
    return pickle.dumps(Marker(path), protocol=protocol)


def marker_torch_save(path: Path) -> bytes:
    """A ``torch.save`` file (zip with ``data.pkl``) whose unpickling creates ``path``."""
    buf = io.BytesIO()
    torch.save({"x": Marker(path)}, buf)
    return buf.getvalue()


def rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes], add: dict[str, bytes] | None = None) -> None:
    """Copy the zip ``src`` to ``dst`` replacing members (by name suffix) and adding new ones (full names)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new
            zout.writestr(info.filename, data)
        for name, data in (add or {}).items():
            zout.writestr(name, data)


def zip_root(path: Path) -> str:
    with zipfile.ZipFile(path) as z:
        return z.namelist()[0].split("/", 1)[0]
