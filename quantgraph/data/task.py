"""A learning task: node classification on one graph, or graph classification over split graph sets."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantgraph.data.graph import GraphData
from quantgraph.data.graph_classification import SPLITS, collate, load_graph_classification
from quantgraph.errors import InputError, reading

DATASET_HINT = "cora, citeseer, pubmed, synthetic, or a .npz/.pt/.json/.gml/.graphml file"


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
    """Whether ``spec`` names an ``.npz`` holding the graph-classification layout (a ``tr_x`` array).

    Only the zip directory is read; a file that is not a readable zip is not one (the single-graph
    loader then reports what is wrong with it).
    """
    path = Path(spec)
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return "tr_x.npy" in archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError):
        return False


def load_task(spec: str, root: str | None = None) -> Task:
    """``spec`` as for ``load_dataset``, or a graph-classification ``.npz`` (splits tr/val/te).

    Whatever a malformed file makes a parser raise becomes one ``InputError`` naming the file.
    """
    with reading(spec, "graph dataset", f"check the file or name (one of {DATASET_HINT})"):
        return _load_task(spec, root)


def _load_task(spec: str, root: str | None) -> Task:
    if is_graph_classification_file(spec):
        splits = load_graph_classification(spec)
        missing = [f"{prefix}_ ({split})" for prefix, split in SPLITS.items() if not splits.get(split)]
        if missing:
            raise InputError(
                f"{spec} has no graphs for the split(s) {', '.join(missing)}",
                "store train (tr_), validation (val_) and test (te_) graphs, at least one each",
            )
        test = collate(splits["test"])
        test.name = f"{Path(spec).stem} (test graphs)"
        return Task("graph", test, splits)
    from quantgraph.data import load_dataset

    return Task("node", load_dataset(spec, root))
