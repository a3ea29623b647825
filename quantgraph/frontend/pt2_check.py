"""Refuse the members of a ``.pt2`` archive that ``torch.export.load`` would unpickle or execute.

``torch.export.load`` (torch 2.13, ``torch/export/pt2_archive/_package.py`` and
``torch/_export/serde/serialize.py``) runs pickle on untrusted bytes in these places:

1. ``data/sample_inputs/<model>.pt``: ``deserialize_torch_artifact`` tries ``torch.load(weights_only=True)`` and
   on failure falls back to ``weights_only=False``. Accepted only if it loads weights-only.
2. weights with ``"use_pickle": true`` in ``data/weights/<model>_weights_config.json``: ``torch.load(...,
   weights_only=False)``. Refused.
3. constants: ``use_pickle`` tensor constants (``torch.load(weights_only=False)``), ``custom_obj_*`` members
   (TorchScript's pickler, ``torch._C._pickle_load_obj``) and ``opaque_obj_*`` members (``pickle.loads``).
   Refused.
4. legacy ``data/weights/<model>.pt`` and ``data/constants/<model>.pt`` (whole pickled state dicts, through the
   same weights-only-then-full fallback), and the pre-2.8 layout (a top-level ``version`` member with
   ``serialized_*.pt`` pickles). Refused.

``data/aotinductor/`` (compiled shared libraries that ``load_pt2`` dlopens) and the other compiled-code folders
are refused too. Everything else is JSON or raw tensor bytes. Each program's graph may call only the ops of
:mod:`quantgraph.frontend.pt2_ops` (checked on its JSON here, before torch deserialises it).
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from quantgraph.errors import InputError
from quantgraph.frontend.pt2_ops import check_serialized_ops
from quantgraph.safe_zip import GiB, ZipLimits

PT2_LIMITS = ZipLimits(max_total=8 * GiB, max_member=8 * GiB)
CODE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia/")
CUSTOM_PREFIXES = ("custom_obj_", "opaque_obj_")
FIX = (
    "re-save it with torch.export.save from plain tensors, or pass --trust-pickle if you trust the file "
    "(it can run code)"
)


def _refuse(path: Path, problem: str) -> InputError:
    return InputError(f"{path}: {problem}; it was not loaded for safety", FIX)


def check_pt2_members(path: str | Path) -> None:
    """InputError naming the first member of ``path`` that loading would unpickle or execute."""
    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or not all("/" in n for n in names):
            raise InputError(
                f"{path} is not a torch.export archive (its members are not under one folder)",
                "save it with torch.export.save",
            )
        (root,) = roots
        rel = {n[len(root) + 1 :]: n for n in names}
        if "version" in rel or any(r.startswith("serialized_") and r.endswith(".pt") for r in rel):
            raise _refuse(path, "it uses the pre-2.8 torch.export layout, whose state dict is a pickle")
        for r in rel:
            if r.startswith(CODE_DIRS):
                raise _refuse(path, f"member {r!r} is compiled code (AOTInductor/ExecuTorch)")
        models = [
            r[len("models/") : -len(".json")] for r in rel if r.startswith("models/") and r.endswith(".json")
        ]
        for model in models:
            check_serialized_ops(path, zf.read(rel[f"models/{model}.json"]))  # an op allow-list (pt2_ops)
            for legacy in (f"data/weights/{model}.pt", f"data/constants/{model}.pt"):
                if legacy in rel:
                    raise _refuse(path, f"member {legacy!r} is a pickled state dict (legacy format)")
            _check_config(path, zf, rel, f"data/weights/{model}_weights_config.json", "weight")
            _check_config(path, zf, rel, f"data/constants/{model}_constants_config.json", "constant")
            sample = rel.get(f"data/sample_inputs/{model}.pt")
            if sample is not None and zf.getinfo(sample).file_size:
                _check_weights_only(path, zf.read(sample), f"data/sample_inputs/{model}.pt")


def _check_config(path: Path, zf: zipfile.ZipFile, rel: dict[str, str], member: str, kind: str) -> None:
    if member not in rel:
        return
    try:
        config = json.loads(zf.read(rel[member]))
        entries = config["config"]
        if not isinstance(entries, dict):
            raise TypeError("config is not a mapping")
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise InputError(
            f"{path}: {member} is malformed ({type(err).__name__})", "save it with torch.export.save"
        ) from None
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            raise InputError(f"{path}: {member} entry {fqn!r} is malformed", "save it with torch.export.save")
        name = str(meta.get("path_name", ""))
        if meta.get("use_pickle"):
            raise _refuse(path, f"{kind} {fqn!r} is stored as a pickle (use_pickle)")
        if name.startswith(CUSTOM_PREFIXES):
            raise _refuse(path, f"{kind} {fqn!r} is a pickled Python/TorchScript object ({name})")


def _check_weights_only(path: Path, payload: bytes, member: str) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except Exception as err:
        detail = " ".join(str(err).split())
        if "WeightsUnpickler error:" in detail:
            detail = detail.split("WeightsUnpickler error:", 1)[1].strip()
        raise _refuse(path, f"{member} holds pickled Python objects ({detail[:120]})") from None
