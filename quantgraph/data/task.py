"""A learning task: node classification on one graph, or graph classification over split graph sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantgraph.data.graph import GraphData
from quantgraph.data.graph_classification import collate, load_graph_classification


@dataclass
class Task:
    """What ``compile``/``train``/``eval`` need: the evaluation graph plus, for graph tasks, the splits."""

    kind: str  # "node" or "graph"
    data: GraphData  # node task: the graph; graph task: the test graphs batched into one
    graphs: dict[str, list[GraphData]] | None = None

    def calibration(self) -> list[GraphData]:
        return [collate(self.graphs["train"])] if self.graphs else [self.data]

    def task_data(self) -> dict[str, Any]:
        if self.graphs:
            return {"graphs": {"train": self.graphs["train"], "val": self.graphs["val"]}}
        return {"node": self.data}


def is_graph_classification_file(spec: str) -> bool:
    path = Path(spec)
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as archive:
            return "tr_x" in archive.files
    except (OSError, ValueError):
        return False


def load_task(spec: str, root: str | None = None) -> Task:
    """``spec`` as for ``load_dataset``, or a graph-classification ``.npz`` (splits tr/val/te)."""
    if is_graph_classification_file(spec):
        splits = load_graph_classification(spec)
        test = collate(splits["test"])
        test.name = f"{Path(spec).stem} (test graphs)"
        return Task("graph", test, splits)
    from quantgraph.data import load_dataset

    return Task("node", load_dataset(spec, root))
