"""SHA-256 content checksums of quantgraph's own files (zoo checkpoints, native ``.qgn`` artifacts).

A checksum is recorded when the file is written and compared when it is read, so a flipped byte in a weight
(a damaged disk, a bad copy, a careless edit) is refused instead of giving a silently different model. It
guards against accidents, not against an attacker, who can recompute it: the other checks of each loader
(allow-lists, value ranges) are what keep a hostile file harmless.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

#: the key under which a file records its checksum
CHECKSUM_KEY = "sha256"


class UnverifiedFileWarning(UserWarning):
    """A file written before checksums existed was read without one (the CLI prints it as one line)."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_bytes(obj: Any) -> bytes:
    """Canonical JSON of ``obj`` (sorted keys, no spaces): the same value gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def tensor_bytes(name: str, value: torch.Tensor | np.ndarray) -> bytes:
    """Name, dtype, shape and raw bytes of one tensor or array."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        header = json_bytes([name, str(t.dtype), list(t.shape)])
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    else:
        arr = np.ascontiguousarray(value)
        header = json_bytes([name, arr.dtype.str, list(arr.shape)])
        data = arr.tobytes()
    return len(header).to_bytes(8, "little") + header + len(data).to_bytes(8, "little") + data


def content_digest(fields: Any, tensors: Mapping[str, torch.Tensor | np.ndarray]) -> str:
    """The SHA-256 (hex) of JSON ``fields`` and every tensor of ``tensors`` in name order."""
    h = hashlib.sha256(json_bytes(fields))
    for name in sorted(tensors):
        h.update(tensor_bytes(name, tensors[name]))
    return h.hexdigest()


def warn_unverified(what: str, fix: str) -> None:
    """Warn once per file that ``what`` has no checksum (files written by an older quantgraph)."""
    warnings.warn(
        f"{what} has no content checksum (written by an older quantgraph), so it was not verified; {fix}",
        UnverifiedFileWarning,
        stacklevel=3,
    )


def digests_equal(recorded: Any, computed: str) -> bool:
    return isinstance(recorded, str) and recorded == computed
