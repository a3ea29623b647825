"""Cora, CiteSeer and PubMed from local Planetoid raw files (``ind.<name>.*``); never downloads anything."""

from __future__ import annotations

import os
import pickle
import types
import warnings
from pathlib import Path
from typing import Any

import torch

from quantgraph.data.graph import GraphData
from quantgraph.data.validate import validate_graph, validate_labels
from quantgraph.errors import InputError

PLANETOID_NAMES = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}
RAW_SUFFIXES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
ENV_ROOT = "QUANTGRAPH_DATA_ROOT"


#: The globals the Planetoid raw files reference (scipy CSR matrices, NumPy arrays, a defaultdict of lists).
PLANETOID_GLOBALS = {
    ("scipy.sparse.csr", "csr_matrix"),
    ("scipy.sparse._csr", "csr_matrix"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("collections", "defaultdict"),
    ("__builtin__", "list"),
    ("builtins", "list"),
}


class PlanetoidUnpickler(pickle.Unpickler):
    """Unpickles only :data:`PLANETOID_GLOBALS`; any other global is refused with an InputError."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in PLANETOID_GLOBALS:
            raise InputError(
                f"a Planetoid raw file references {module}.{name}, which Planetoid files never contain "
                "(refused: unpickling it could run code)",
                "replace the ind.* files with intact copies of the Planetoid distribution",
            )
        if module == "__builtin__":
            return list
        if module.startswith("scipy.sparse"):
            import scipy.sparse

            return scipy.sparse.csr_matrix
        if module.startswith("numpy") and name == "_reconstruct":
            return _numpy_reconstruct()
        return super().find_class(module, name)


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return PlanetoidUnpickler(file, encoding=kwargs.get("encoding", "latin1")).load()


_RESTRICTED_PICKLE = types.SimpleNamespace(load=_restricted_load)


def _fix(prefix: str) -> str:
    return f"pass --data-root DIR or set {ENV_ROOT} to a folder holding the ind.{prefix}.* files"


def resolve_root(root: str | os.PathLike[str] | None, prefix: str = "<name>") -> Path:
    """The data root: ``root`` if given, else ``$QUANTGRAPH_DATA_ROOT``; InputError if neither is usable."""
    if root is None or str(root) == "":
        root = os.environ.get(ENV_ROOT) or None
    if root is None:
        raise InputError(f"no data root given and {ENV_ROOT} is not set", _fix(prefix))
    path = Path(root).expanduser()
    if not path.is_dir():
        raise InputError(f"data root {path} does not exist or is not a folder", _fix(prefix))
    return path


def candidate_folders(root: Path, name: str) -> list[Path]:
    """Folders searched for ``ind.<name>.*``, in order: flat, PyG's ``<Name>/raw`` and one level down."""
    pretty = PLANETOID_NAMES.get(name.lower(), name)
    subs = ["", f"{pretty}/raw", f"{name.lower()}/raw", pretty, name.lower(), "raw"]
    out: list[Path] = []
    for base in (root, root / "planetoid", root / "Planetoid"):
        for sub in subs:
            folder = base / sub if sub else base
            if folder not in out:
                out.append(folder)
    return out


def find_planetoid_folder(root: Path, name: str) -> Path:
    """The first candidate folder that holds all eight ``ind.<name>.*`` files."""
    prefix = name.lower()
    files = [f"ind.{prefix}.{s}" for s in RAW_SUFFIXES]
    partial: tuple[Path, list[str]] | None = None
    for folder in candidate_folders(root, name):
        if not folder.is_dir():
            continue
        missing = [f for f in files if not (folder / f).is_file()]
        if not missing:
            return folder
        if len(missing) < len(files) and partial is None:
            partial = (folder, missing)
    if partial is not None:
        folder, missing = partial
        raise InputError(f"Planetoid folder {folder} lacks {', '.join(missing)}", _fix(prefix))
    pretty = PLANETOID_NAMES.get(prefix, name)
    raise InputError(
        f"no Planetoid files ind.{prefix}.{{{','.join(RAW_SUFFIXES)}}} found in {root} "
        f"(looked there, in its {pretty}/raw, {prefix}/raw, {pretty}, {prefix} and raw subfolders, "
        "and the same under planetoid/)",
        _fix(prefix),
    )


def load_planetoid(name: str, root: str | os.PathLike[str] | None = None) -> GraphData:
    """Load Cora, CiteSeer or PubMed with the public split (e.g. 140/500/1000 nodes for Cora).

    The raw files are pickles (that is the Planetoid format); they are read with a restricted unpickler that
    admits only the NumPy/SciPy types these files contain, so a planted file cannot run code.
    """
    prefix = name.lower()
    if prefix not in PLANETOID_NAMES:
        raise InputError(
            f"unknown Planetoid dataset {name!r}",
            f"use one of {', '.join(PLANETOID_NAMES.values())}",
        )
    folder = find_planetoid_folder(resolve_root(root, prefix), prefix)
    try:
        from torch_geometric.io import read_planetoid_data
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise InputError(f"cannot read Planetoid files: {exc}", "install torch_geometric and scipy") from exc
    import torch_geometric.io.planetoid as pyg_planetoid

    saved_pickle = pyg_planetoid.pickle
    pyg_planetoid.pickle = _RESTRICTED_PICKLE  # PyG's read_file calls pickle.load: only the types below
    try:
        with warnings.catch_warnings():  # PyG's reader edits the global warning filters; keep them local
            data = read_planetoid_data(str(folder), prefix)
    except InputError:
        raise
    except Exception as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise InputError(
            f"could not read the Planetoid files ind.{prefix}.* in {folder} ({detail})",
            f"replace them with intact copies of the Planetoid ind.{prefix}.* files",
        ) from exc
    finally:
        pyg_planetoid.pickle = saved_pickle
    graph = GraphData(
        x=data.x.to(torch.float32).contiguous(),
        edge_index=data.edge_index.to(torch.int64).contiguous(),
        y=data.y.to(torch.int64),
        train_mask=data.train_mask.to(torch.bool),
        val_mask=data.val_mask.to(torch.bool),
        test_mask=data.test_mask.to(torch.bool),
        name=PLANETOID_NAMES[prefix],
    )
    validate_graph(graph.x, graph.edge_index, name=graph.name)
    masks = {"train_mask": graph.train_mask, "val_mask": graph.val_mask, "test_mask": graph.test_mask}
    validate_labels(graph.num_nodes, graph.y, masks, name=graph.name)
    return graph
