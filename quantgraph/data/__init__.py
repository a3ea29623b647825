"""Graph data: the GraphData container, input validation and loaders (Planetoid, synthetic, files)."""

from __future__ import annotations

import os
from pathlib import Path

from quantgraph.data.files import GRAPH_FILE_SUFFIXES, load_graph_file
from quantgraph.data.graph import GraphData
from quantgraph.data.graph_classification import collate, load_graph_classification
from quantgraph.data.planetoid import PLANETOID_NAMES, load_planetoid
from quantgraph.data.synthetic import make_csbm
from quantgraph.data.validate import validate_graph
from quantgraph.errors import InputError

__all__ = [
    "GraphData",
    "collate",
    "load_dataset",
    "load_graph_classification",
    "make_csbm",
    "parse_synthetic_spec",
    "validate_graph",
]

# Short and full parameter names accepted in "synthetic:key=value,..." and the type each one takes.
SYNTHETIC_KEYS: dict[str, tuple[str, type]] = {
    "nodes": ("num_nodes", int),
    "classes": ("num_classes", int),
    "features": ("num_features", int),
    "degree": ("avg_degree", float),
    "homophily": ("homophily", float),
    "power": ("power", float),
    "noise": ("feature_noise", float),
    "seed": ("seed", int),
}
SYNTHETIC_KEYS.update({full: (full, kind) for full, kind in list(SYNTHETIC_KEYS.values())})

ACCEPTED_FORMS = (
    "use cora, citeseer or pubmed (Planetoid files under the data root), "
    "synthetic or synthetic:nodes=N,classes=C,features=F,degree=D,homophily=H,power=P,noise=S,seed=K, "
    f"or a graph file ending in {', '.join(GRAPH_FILE_SUFFIXES)}"
)


def parse_synthetic_spec(spec: str) -> dict[str, int | float]:
    """Keyword arguments for make_csbm from ``synthetic`` or ``synthetic:nodes=500,seed=3``."""
    _, _, params = spec.partition(":")
    kwargs: dict[str, int | float] = {}
    for item in filter(None, (p.strip() for p in params.split(","))):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep or key.lower() not in SYNTHETIC_KEYS:
            raise InputError(
                f"bad synthetic option {item!r} in {spec!r}",
                f"write key=value pairs with keys from {', '.join(sorted(SYNTHETIC_KEYS))}",
            )
        name, kind = SYNTHETIC_KEYS[key.lower()]
        try:
            number = float(value)
            if kind is int and not number.is_integer():
                raise ValueError(value)
            kwargs[name] = int(number) if kind is int else number
        except ValueError as exc:
            raise InputError(
                f"synthetic option {key}={value!r} is not a valid {kind.__name__}",
                f"give {key} a {'whole number' if kind is int else 'number'}, e.g. synthetic:nodes=500,seed=3",
            ) from exc
    return kwargs


def load_dataset(spec: str, root: str | os.PathLike[str] | None = None) -> GraphData:
    """Load a graph by name or path: ``cora``/``citeseer``/``pubmed``, ``synthetic[:k=v,...]`` or a file.

    Planetoid files are looked up under ``root`` (else ``$QUANTGRAPH_DATA_ROOT``). Every graph returned
    has passed validate_graph.
    """
    text = str(spec).strip()
    lower = text.lower()
    if lower in PLANETOID_NAMES:
        return load_planetoid(lower, root)
    if lower == "synthetic" or lower.startswith("synthetic:"):
        return make_csbm(**parse_synthetic_spec(text))  # type: ignore[arg-type]
    path = Path(text).expanduser()
    if path.suffix.lower() in GRAPH_FILE_SUFFIXES:
        return load_graph_file(path)
    if path.exists():
        raise InputError(
            f"file {path} has an unsupported type {path.suffix or '(no suffix)'}", ACCEPTED_FORMS
        )
    raise InputError(f"unknown dataset {text!r}", ACCEPTED_FORMS)
