"""Zoo checkpoints: a plain dict of primitives and tensors, written atomically, read with ``weights_only``.

Layout (``torch.save`` of a dict)::

    {"format": "quantgraph-zoo", "version": 1, "arch": str, "config": {...}, "state_dict": {...},
     "metrics": {str: float}, "dataset": str, "sha256": str}

``sha256`` is the content checksum of every other field and every tensor's bytes
(:func:`checkpoint_digest`): a checkpoint whose content does not match it (a flipped byte) is refused.
Checkpoints written before the checksum existed have no ``sha256``; they load with a warning.

``config`` holds the constructor keyword arguments (primitive values only) so that
``build_model(arch, **config)`` rebuilds the model. Loading never unpickles Python objects: it uses
``torch.load(path, weights_only=True, map_location="cpu")`` only.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantgraph.checksum import CHECKSUM_KEY, content_digest, warn_unverified
from quantgraph.errors import InputError
from quantgraph.models.zoo import ARCHITECTURES, MODEL_DEFAULTS, build_model

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "load_checkpoint", "read_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "quantgraph-zoo"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("format", "version", "arch", "config", "state_dict")

#: Messages of the weights-only unpickler that mean "the file holds pickled Python objects" (as opposed to
#: bytes that are not a pickle at all).
_UNSAFE_PICKLE = re.compile(
    r"GLOBAL |unrecognized function|Can only (create|build)|is blocked|must be imported|persistent id"
)

_PRIMITIVES = (str, int, float, bool, type(None))


def _check_primitive(value: Any, where: str) -> Any:
    """Lists/tuples/dicts of str/int/float/bool/None; anything else is rejected (it would need pickling)."""
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, list | tuple):
        return [_check_primitive(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _check_primitive(v, f"{where}.{k}") for k, v in value.items()}
    raise InputError(
        f"checkpoint field {where} has a value of type {type(value).__name__}",
        "store only str, int, float, bool, None and lists/dicts of them",
    )


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    arch: str | None = None,
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    dataset: str = "",
) -> Path:
    """Write ``model`` as a zoo checkpoint at ``path`` (atomically: a temp file, then ``os.replace``).

    ``arch``/``config`` default to ``model.qg_arch``/``model.qg_config`` (set by ``build_model``).
    ``metrics`` values must be numbers (stored as floats). Returns the path written.
    """
    arch = arch if arch is not None else getattr(model, "qg_arch", None)
    config = config if config is not None else getattr(model, "qg_config", None)
    if arch is None or config is None:
        raise InputError(
            "the model does not record its architecture and config",
            "build it with quantgraph.models.build_model or pass arch= and config=",
        )
    if arch not in ARCHITECTURES:
        raise InputError(
            f"unknown architecture {arch!r}", f"choose one of: {', '.join(sorted(ARCHITECTURES))}"
        )
    clean_metrics: dict[str, float] = {}
    for k, v in (metrics or {}).items():
        try:
            clean_metrics[str(k)] = float(v)
        except (TypeError, ValueError):
            raise InputError(f"metric {k!r} is not a number ({v!r})", "pass numeric metrics") from None
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": arch,
        "config": _check_primitive(dict(config), "config"),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "metrics": clean_metrics,
        "dataset": str(dataset),
    }
    payload[CHECKSUM_KEY] = checkpoint_digest(payload)
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"directory {str(path.parent)!r} does not exist", "create it or choose another path")
    from quantgraph.fileio import atomic_file

    with atomic_file(path) as f:  # whole or not at all, with the user's umask
        torch.save(payload, f)
    return path


def checkpoint_digest(obj: Mapping[str, Any]) -> str:
    """The SHA-256 of a checkpoint dict's fields (all but ``sha256``) and its state dict's tensors."""
    fields = {k: v for k, v in obj.items() if k not in ("state_dict", CHECKSUM_KEY)}
    return content_digest(fields, obj["state_dict"])


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate the checkpoint dict without building the model (InputError on any problem)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint {str(path)!r} does not exist", "check the path")
    if not path.is_file():
        raise InputError(f"checkpoint {str(path)!r} is not a file", "pass the path of a .pt checkpoint file")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # truncated zip, garbage bytes, pickled objects, I/O errors, ...
        names = _unsafe_globals(e, path)
        if names is not None:
            example = f" (e.g. {names[0]})" if names else ""
            raise InputError(
                f"checkpoint {str(path)!r} contains pickled Python objects{example}; "
                "it was not loaded for safety",
                "if you trust this file, load it with the explicit opt-in --trust-pickle "
                "(plus --import MODULE for the module defining its classes)",
            ) from None
        raise InputError(
            f"checkpoint {str(path)!r} is corrupt or not a PyTorch file ({type(e).__name__}: {_first_line(e)})",
            "re-create it with quantgraph (e.g. train the model again)",
        ) from None
    _validate(obj, path)
    return obj


def _unsafe_globals(error: BaseException, path: Path) -> list[str] | None:
    """Names of pickled Python objects if that is why the weights-only load failed, else None.

    The weights-only unpickler says so for protocol-2 pickles (torch.save's default); for other pickles
    (e.g. ``pickle.dump`` with protocol 4) it stops earlier, so the file's pickle opcodes are scanned
    (with :mod:`pickletools`, which never executes anything) for GLOBAL/STACK_GLOBAL/INST.
    """
    if not isinstance(error, pickle.UnpicklingError):
        return None
    message = str(error)
    if _UNSAFE_PICKLE.search(message):
        m = re.search(r"GLOBAL (\S+) was not an allowed global", message)
        return [m.group(1)] if m else []
    found = _scan_pickle_globals(path)
    return found if found else None


def _scan_pickle_globals(path: Path, limit: int = 64 << 20) -> list[str]:
    """Globals a pickle file (or a torch zip's data.pkl) would import; [] if none or unreadable."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                members = [n for n in z.namelist() if n.endswith("data.pkl")]
                data = z.read(members[0])[:limit] if members else b""
        else:
            with open(path, "rb") as f:
                data = f.read(limit)
    except Exception:
        return []
    found: list[str] = []
    stream = io.BytesIO(data)
    for _ in range(8):  # legacy torch files are several pickles in a row
        strings: list[str] = []
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if isinstance(arg, str) and "UNICODE" in op.name:
                    strings.append(arg)
                elif op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    found.append(".".join(strings[-2:]) or "<object>")
        except Exception:
            break
        if stream.tell() >= len(data):
            break
    return found


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:  # skip torch's advice to set weights_only=False
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line[:200]


def _validate(obj: Any, path: Path) -> None:
    where = repr(str(path))
    if not isinstance(obj, dict):
        raise InputError(
            f"{where} is not a quantgraph zoo checkpoint (it holds a {type(obj).__name__}, not a dict)",
            "pass a checkpoint written by quantgraph (save_checkpoint / the train command)",
        )
    if "format" not in obj:
        raise InputError(
            f"{where} is not a quantgraph zoo checkpoint (key 'format' is missing)",
            "pass a checkpoint written by quantgraph (save_checkpoint / the train command)",
        )
    if obj["format"] != CHECKPOINT_FORMAT:
        raise InputError(
            f"{where} is not a quantgraph zoo checkpoint (format is {obj['format']!r}, "
            f"expected {CHECKPOINT_FORMAT!r})",
            "pass a checkpoint written by quantgraph (save_checkpoint / the train command)",
        )
    for key in REQUIRED_KEYS:
        if key not in obj:
            raise InputError(
                f"{where} is an incomplete quantgraph zoo checkpoint (key {key!r} is missing)",
                "re-create it with quantgraph",
            )
    if obj["version"] != CHECKPOINT_VERSION:
        raise InputError(
            f"{where} has checkpoint version {obj['version']!r}; this quantgraph reads version {CHECKPOINT_VERSION}",
            "re-create the checkpoint with this version of quantgraph",
        )
    if obj["arch"] not in ARCHITECTURES:
        raise InputError(
            f"{where} names unknown architecture {obj['arch']!r}",
            f"known architectures: {', '.join(sorted(ARCHITECTURES))}",
        )
    if not isinstance(obj["config"], dict) or not isinstance(obj["state_dict"], dict):
        raise InputError(f"{where} has a malformed config or state_dict", "re-create it with quantgraph")
    for k, v in obj["state_dict"].items():
        if not isinstance(v, torch.Tensor):
            raise InputError(
                f"{where}: state_dict entry {k!r} is not a tensor", "re-create it with quantgraph"
            )
    metrics = obj.get("metrics", {})
    if not isinstance(metrics, dict) or not all(isinstance(v, int | float) for v in metrics.values()):
        raise InputError(f"{where} has malformed metrics (numbers expected)", "re-create it with quantgraph")
    _verify_checksum(obj, where)


def _verify_checksum(obj: dict[str, Any], where: str) -> None:
    recorded = obj.get(CHECKSUM_KEY)
    if recorded is None:
        warn_unverified(f"checkpoint {where}", "re-save it with this quantgraph to add one")
        return
    try:
        computed = checkpoint_digest(obj)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"{where} has fields that cannot be checksummed ({err})", "re-create it") from None
    if recorded != computed:
        raise InputError(
            f"checkpoint {where} is corrupt: its content does not match the SHA-256 recorded when it was "
            "written (a changed byte)",
            "re-create it with `quantgraph train`, or copy it again from its source",
        )


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a zoo checkpoint: ``(model in eval mode, info)``.

    ``info`` is the checkpoint dict without ``state_dict`` (format, version, arch, config, metrics, dataset).
    """
    obj = read_checkpoint(path)
    where = repr(str(path))
    config = dict(obj["config"])
    if "normalize_features" in MODEL_DEFAULTS.get(obj["arch"], {}):
        # checkpoints written before the flag existed were trained on raw features
        config.setdefault("normalize_features", False)
    try:
        model = build_model(obj["arch"], **config)
    except InputError as e:
        raise InputError(f"{where} has an invalid config: {e.problem}", e.fix or "re-create it") from None
    except TypeError as e:
        raise InputError(f"{where} has an invalid config ({e})", "re-create it with quantgraph") from None
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except RuntimeError as e:
        raise InputError(
            f"{where}: the weights do not fit a {obj['arch']} model with the stored config ({_first_line(e)})",
            "re-create the checkpoint with quantgraph",
        ) from None
    model.eval()
    info = {k: v for k, v in obj.items() if k != "state_dict"}
    info.setdefault("metrics", {})
    info.setdefault("dataset", "")
    info["metrics"] = {k: float(v) for k, v in info["metrics"].items()}
    return model, info
