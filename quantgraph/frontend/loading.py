"""Load a model file: a zoo checkpoint (.pt, weights only), a torch.export program (.pt2), or, only
with an explicit opt-in, a pickled full module."""

from __future__ import annotations

import importlib
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch

from quantgraph.errors import InputError


def load_model(
    path: str | Path, *, trust_pickle: bool = False, imports: Sequence[str] = ()
) -> torch.nn.Module | torch.export.ExportedProgram:
    """Load ``path`` safely; pickled modules need ``trust_pickle`` (``--trust-pickle``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"model file {path} does not exist", "check the path (train one with `quantgraph train`)"
        )
    if path.suffix == ".pt2":
        return _load_exported(path)
    if trust_pickle:
        return _load_pickled_module(path, imports)
    from quantgraph.models import load_checkpoint

    model, _meta = load_checkpoint(path)
    return model


def _load_exported(path: Path) -> torch.export.ExportedProgram:
    try:
        return torch.export.load(str(path))
    except (zipfile.BadZipFile, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as err:
        raise InputError(
            f"{path} is not a readable torch.export program ({type(err).__name__})",
            "save it with torch.export.save(torch.export.export(model, args), path)",
        ) from err


def _load_pickled_module(path: Path, imports: Sequence[str]) -> torch.nn.Module:
    for name in imports:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise InputError(
                f"cannot import '{name}' ({err})", "put the module defining your classes on PYTHONPATH"
            ) from err
    try:
        obj = torch.load(path, weights_only=False, map_location="cpu")
    except (zipfile.BadZipFile, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise InputError(
            f"{path} is corrupt or not a torch file ({type(err).__name__})", "re-save the model"
        ) from err
    except AttributeError as err:
        raise InputError(
            f"{path} needs a class that is not importable ({err})",
            "add --import MODULE for the module that defines the model class",
        ) from err
    if not isinstance(obj, torch.nn.Module):
        raise InputError(
            f"{path} holds a {type(obj).__name__}, not a torch.nn.Module", "save the whole module"
        )
    return obj
