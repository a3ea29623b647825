"""Load a model file: a zoo checkpoint (.pt, weights only), a torch.export program (.pt2), or, only
with an explicit opt-in, a pickled full module."""

from __future__ import annotations

import contextlib
import importlib
import logging
import pickle
import types
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from quantgraph.errors import InputError
from quantgraph.frontend.pt2_check import PT2_LIMITS, check_pt2_members
from quantgraph.frontend.pt2_ops import check_loaded_ops
from quantgraph.safe_zip import inspect_zip


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
        return load_exported(path, trust_pickle=trust_pickle)
    if trust_pickle:
        return _load_pickled_module(path, imports)
    from quantgraph.models import load_checkpoint

    model, _meta = load_checkpoint(path)
    return model


def load_exported(path: str | Path, *, trust_pickle: bool = False) -> torch.export.ExportedProgram:
    """Load a ``torch.export.save`` archive; without ``trust_pickle`` nothing in it is ever unpickled.

    ``torch.export.load`` unpickles in several places; see :mod:`quantgraph.frontend.pt2_check`, which refuses
    every such member before the archive is opened, and loads with ``torch.load`` forced to weights-only.
    """
    path = Path(path)
    inspect_zip(path, "torch.export program (.pt2)", PT2_LIMITS)
    if not trust_pickle:
        check_pt2_members(path)
    try:
        with _quiet_torch_logs(), _weights_only(enforce=not trust_pickle), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if trust_pickle:
                return torch.export.load(str(path))
            from torch.export.pt2_archive._package import load_pt2

            programs = load_pt2(str(path)).exported_programs
    except InputError:
        raise
    except Exception as err:  # torch raises many types on malformed archives (AssertionError, KeyError, ...)
        detail = " ".join(str(err).split())[:160]
        raise InputError(
            f"{path} is not a readable torch.export program ({type(err).__name__}: {detail})",
            "save it with torch.export.save(torch.export.export(model, args), path)",
        ) from None
    if "model" not in programs:
        raise InputError(
            f"{path} holds no exported program named 'model'",
            "save it with torch.export.save(torch.export.export(model, args), path)",
        )
    if not trust_pickle:
        check_loaded_ops(path, programs["model"])
    return programs["model"]


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """Silence torch.export's logger (it logs tracebacks of errors we report in one line)."""
    names = (
        "torch.export",
        "torch._export",
        "torch.export.pt2_archive._package",
        "torch._export.serde.serialize",
    )
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _weights_only(enforce: bool) -> Iterator[None]:
    """While loading a ``.pt2``: every ``torch.load`` is weights-only and ``pickle.loads`` of the archive
    reader refuses (a second line of defence behind ``check_pt2_members``)."""
    if not enforce:
        yield
        return
    from torch.export.pt2_archive import _package

    original = torch.load

    def weights_only_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(f, *args, **kwargs)

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise InputError("the .pt2 archive holds a pickled object", "pass --trust-pickle if you trust it")

    guarded_pickle = types.SimpleNamespace(loads=refuse, load=refuse)
    saved_pickle = _package.pickle
    torch.load, _package.pickle = weights_only_load, guarded_pickle  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load, _package.pickle = original, saved_pickle  # type: ignore[assignment]


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
