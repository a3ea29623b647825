"""Load a user's graph file: ``.npz``, ``.pt`` (PyG Data or dict of tensors) or networkx JSON/GML/GraphML."""

from __future__ import annotations

import inspect
import json
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantgraph.data.graph import GraphData
from quantgraph.data.validate import validate_graph, validate_labels
from quantgraph.errors import InputError

GRAPH_FILE_SUFFIXES = (".npz", ".pt", ".json", ".gml", ".graphml")
FIELDS = ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask")
MASKS = ("train_mask", "val_mask", "test_mask")


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def load_graph_file(path: str | os.PathLike[str], expected_features: int | None = None) -> GraphData:
    """Load one graph from a file; the suffix picks the format. Every loaded graph is validated."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in GRAPH_FILE_SUFFIXES:
        raise InputError(
            f"unsupported graph file type {suffix or '(no suffix)'} for {path}",
            f"save the graph as one of {', '.join(GRAPH_FILE_SUFFIXES)}",
        )
    if not path.is_file():
        raise InputError(
            f"graph file {path} not found", "check the path (relative paths start in the current folder)"
        )
    readers = {
        ".npz": _read_npz,
        ".pt": _read_pt,
        ".json": _read_json,
        ".gml": _read_gml,
        ".graphml": _read_graphml,
    }
    fields = readers[suffix](path)
    return to_graph(fields, name=path.stem, source=str(path), expected_features=expected_features)


def to_graph(
    fields: dict[str, Any],
    name: str = "graph",
    source: str | None = None,
    expected_features: int | None = None,
) -> GraphData:
    """Build a validated GraphData from raw fields (tensors or arrays); x becomes float32, indices int64."""
    where = source or name
    for key in ("x", "edge_index"):
        if fields.get(key) is None:
            present = ", ".join(sorted(k for k, v in fields.items() if v is not None)) or "nothing"
            raise InputError(
                f"{where} has no {key!r} (it holds {present})",
                "store node features as 'x' [N, F] and edges as 'edge_index' [2, E]",
            )
    tensors: dict[str, torch.Tensor | None] = {}
    for key in FIELDS:
        value = fields.get(key)
        if value is not None and not isinstance(value, torch.Tensor):
            try:
                value = torch.as_tensor(np.asarray(value))
            except (TypeError, ValueError) as exc:
                raise InputError(
                    f"{where}: {key} is not a numeric array ({_one_line(exc)})",
                    f"store {key} as a numeric array",
                ) from exc
        tensors[key] = None if value is None else _plain_tensor(value, key, where)
    x = tensors["x"]
    assert x is not None
    if not x.is_complex():
        x = x.to(torch.float32)  # float64, integer or 0/1 features become float32
    edge_index = tensors["edge_index"]
    assert edge_index is not None
    validate_graph(x, edge_index, expected_features=expected_features, name=where)
    masks = {k: tensors[k] for k in MASKS}
    validate_labels(int(x.shape[0]), tensors["y"], masks, name=where)
    y = tensors["y"]
    return GraphData(
        x=x.contiguous(),
        edge_index=edge_index.to(torch.int64).contiguous(),
        y=None if y is None else y.to(torch.int64),
        train_mask=None if masks["train_mask"] is None else masks["train_mask"].to(torch.bool),
        val_mask=None if masks["val_mask"] is None else masks["val_mask"].to(torch.bool),
        test_mask=None if masks["test_mask"] is None else masks["test_mask"].to(torch.bool),
        name=name,
    )


_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)


def _plain_tensor(value: torch.Tensor, key: str, where: str) -> torch.Tensor:
    """A dense CPU tensor of a dtype torch computes on; unsigned 16/32/64-bit ints become int64."""
    fix = f"store {key} as a plain dense numeric array"
    if value.is_quantized or value.layout != torch.strided or value.device.type != "cpu":
        kind = "quantized" if value.is_quantized else f"{value.layout} on {value.device.type}"
        raise InputError(f"{where}: {key} is a {kind} tensor", fix)
    if value.dtype in _UNSIGNED:
        array = value.numpy()
        if array.size and int(array.max()) > np.iinfo(np.int64).max:
            raise InputError(f"{where}: {key} holds values above the int64 range", fix)
        return torch.from_numpy(array.astype(np.int64))
    return value


# --- .npz -----------------------------------------------------------------------------------------------


def _read_npz(path: Path) -> dict[str, Any]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InputError(
            f"cannot read {path} as a NumPy .npz archive ({_one_line(exc)})",
            "save it with numpy.savez(path, x=..., edge_index=...) (object arrays are not allowed)",
        ) from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(
            f"{path} holds a single array, not an .npz archive of named arrays",
            "save it with numpy.savez(path, x=..., edge_index=..., y=...)",
        )
    with archive:
        if "x" not in archive.files and "tr_x" in archive.files:
            raise InputError(
                f"{path} is a graph-classification archive (tr_/val_/te_ splits), not a single graph",
                "load it with quantgraph.data.load_graph_classification",
            )
        try:
            return {key: archive[key] for key in FIELDS if key in archive.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise InputError(
                f"cannot read the arrays in {path} ({_one_line(exc)})",
                "re-save the file with numpy.savez using plain numeric arrays",
            ) from exc


# --- .pt ------------------------------------------------------------------------------------------------


def _pyg_safe_globals() -> list[Any]:
    """Classes a pickled torch_geometric ``Data`` needs beyond what PyG allowlists itself on import."""
    from torch_geometric.data import Data
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage

    return [Data, DataEdgeAttr, DataTensorAttr, GlobalStorage]


def _torch_load_problem(path: Path, exc: BaseException) -> str:
    """A one-line reason why torch.load(weights_only=True) refused or failed on ``path``."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"{path} holds a Python object ({found.group(1)}) that is not allowed, so it was not loaded"
    found = re.search(r"WeightsUnpickler error:(.*?)(?:Check the documentation|$)", text, re.S)
    detail = " ".join((found.group(1) if found else text).split()).split(". ")[0][:200]
    if not detail:
        detail = "the file is empty or truncated" if isinstance(exc, EOFError) else type(exc).__name__
    return f"cannot read {path} as a torch.save file of tensors ({detail})"


def _read_pt(path: Path) -> dict[str, Any]:
    fix = "save a torch_geometric Data object or a dict of tensors with torch.save (no other Python objects)"
    try:
        with torch.serialization.safe_globals(_pyg_safe_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's pickle-protocol notice for foreign pickles
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ... for bad files
        raise InputError(_torch_load_problem(path, exc), fix) from exc
    from torch_geometric.data import Data

    if isinstance(obj, Data):
        obj = obj.to_dict()
    elif not isinstance(obj, dict):
        raise InputError(
            f"{path} holds a {type(obj).__name__}, not a PyG Data object or a dict of tensors", fix
        )
    for key in FIELDS:
        value = obj.get(key)
        if value is not None and not isinstance(value, torch.Tensor):
            raise InputError(f"{path}: {key!r} is a {type(value).__name__}, not a tensor", fix)
    return {key: obj.get(key) for key in FIELDS}


# --- networkx: node-link JSON, GML, GraphML ---------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    import networkx as nx

    fix = "write it with json.dump(networkx.node_link_data(G), f)"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({_one_line(exc)})", fix) from exc
    if not isinstance(data, dict) or "nodes" not in data:
        raise InputError(f"{path} is not node-link JSON (no top-level 'nodes' list)", fix)
    edges = "links" if "links" in data and "edges" not in data else "edges"
    data.setdefault(edges, [])
    # networkx >= 3.4 names the edge-list key with edges=, older releases with link=.
    key_arg = "edges" if "edges" in inspect.signature(nx.node_link_graph).parameters else "link"
    try:
        graph = nx.node_link_graph(data, **{key_arg: edges})
    except Exception as exc:  # networkx raises KeyError/TypeError/NetworkXError on malformed records
        raise InputError(f"{path} is not valid node-link JSON ({_one_line(exc)})", fix) from exc
    return _from_networkx(graph, path)


def _read_gml(path: Path) -> dict[str, Any]:
    import networkx as nx

    try:
        graph = nx.read_gml(path, label="id")
    except Exception as exc:  # NetworkXError, UnicodeDecodeError, ...
        raise InputError(
            f"cannot read {path} as GML ({_one_line(exc)})", "write it with networkx.write_gml(G, path)"
        ) from exc
    return _from_networkx(graph, path)


def _read_graphml(path: Path) -> dict[str, Any]:
    import networkx as nx

    try:
        graph = nx.read_graphml(path)
    except Exception as exc:  # xml ParseError, NetworkXError, ...
        raise InputError(
            f"cannot read {path} as GraphML ({_one_line(exc)})",
            "write it with networkx.write_graphml(G, path)",
        ) from exc
    return _from_networkx(graph, path)


def _natural_key(node: Any) -> tuple[int, int, str]:
    """Sort integer-like ids numerically (so "10" follows "9"), everything else by its text."""
    if isinstance(node, (int, np.integer)) and not isinstance(node, bool):
        return (0, int(node), "")
    text = str(node)
    if re.fullmatch(r"-?\d+", text.strip()):
        return (0, int(text), text)
    return (1, 0, text)


def _parse_vector(value: Any, node: Any, path: Path) -> list[float]:
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,\s;]+", value.strip().strip("[]")) if p]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    try:
        return [float(p) for p in parts]
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{path}: node {node!r} has a non-numeric feature vector x={value!r}",
            "store x as a list of numbers (in GraphML a comma-separated string like '0.5,1,0')",
        ) from exc


def _parse_bool(value: Any, key: str, node: Any, path: Path) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "false", "0"):
        return value.strip().lower() in ("true", "1")
    if isinstance(value, (bool, int, float, np.integer, np.floating)) and value in (0, 1):
        return bool(value)
    raise InputError(
        f"{path}: node {node!r} has {key}={value!r}, not a boolean", f"store {key} as true/false or 0/1"
    )


def _parse_label(value: Any, node: Any, path: Path) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer() or isinstance(value, bool):
        raise InputError(
            f"{path}: node {node!r} has label y={value!r}, not an integer", "store y as an integer class id"
        )
    return int(number)


def _from_networkx(graph: Any, path: Path) -> dict[str, Any]:
    """Fields from a networkx graph: nodes renumbered 0..N-1 in sorted order, undirected edges both ways."""
    nodes = sorted(graph.nodes, key=_natural_key)
    index = {node: i for i, node in enumerate(nodes)}
    attrs = [graph.nodes[node] for node in nodes]
    missing = [node for node, a in zip(nodes, attrs, strict=True) if "x" not in a]
    if missing:
        raise InputError(
            f"{path}: {len(missing)} of {len(nodes)} nodes have no 'x' feature attribute (first: {missing[0]!r})",
            "give every node an 'x' attribute holding its feature vector",
        )
    rows = [_parse_vector(a["x"], node, path) for node, a in zip(nodes, attrs, strict=True)]
    width = len(rows[0]) if rows else 0
    for node, row in zip(nodes, rows, strict=True):
        if len(row) != width:
            raise InputError(
                f"{path}: node {node!r} has {len(row)} features but node {nodes[0]!r} has {width}",
                "give every node a feature vector of the same length",
            )
    fields: dict[str, Any] = {"x": np.asarray(rows, dtype=np.float32).reshape(len(nodes), width)}
    labelled = [node for node, a in zip(nodes, attrs, strict=True) if "y" in a]
    if labelled and len(labelled) != len(nodes):
        raise InputError(
            f"{path}: only {len(labelled)} of {len(nodes)} nodes have a label 'y'",
            "label every node (use the masks to leave nodes out of training), or drop 'y' everywhere",
        )
    if labelled:
        fields["y"] = np.asarray(
            [_parse_label(a["y"], n, path) for n, a in zip(nodes, attrs, strict=True)], np.int64
        )
    for key in MASKS:
        if any(key in a for a in attrs):
            fields[key] = np.asarray(
                [
                    _parse_bool(a[key], key, n, path) if key in a else False
                    for n, a in zip(nodes, attrs, strict=True)
                ],
                dtype=bool,
            )
    src: list[int] = []
    dst: list[int] = []
    for u, v in graph.edges():
        src.append(index[u])
        dst.append(index[v])
        if not graph.is_directed() and u != v:
            src.append(index[v])
            dst.append(index[u])
    fields["edge_index"] = np.asarray([src, dst], dtype=np.int64).reshape(2, len(src))
    return fields
