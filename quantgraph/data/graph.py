"""The in-memory graph container every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GraphData:
    """One graph (or a disjoint union of graphs when ``batch`` is set) with optional labels and splits.

    ``edge_index`` row 0 holds source nodes and row 1 target nodes. ``y`` holds node labels, or one label
    per graph when ``batch`` is set.
    """

    x: torch.Tensor
    edge_index: torch.Tensor
    y: torch.Tensor | None = None
    train_mask: torch.Tensor | None = None
    val_mask: torch.Tensor | None = None
    test_mask: torch.Tensor | None = None
    batch: torch.Tensor | None = None
    name: str = "graph"

    @property
    def num_nodes(self) -> int:
        """Number of nodes N."""
        return int(self.x.shape[0])

    @property
    def num_edges(self) -> int:
        """Number of directed edges E (an undirected edge counts twice)."""
        return int(self.edge_index.shape[1])

    @property
    def num_features(self) -> int:
        """Feature width F."""
        return int(self.x.shape[1])

    @property
    def num_classes(self) -> int | None:
        """``max(y) + 1``, or None without labels."""
        if self.y is None or self.y.numel() == 0:
            return None
        return int(self.y.max()) + 1

    @property
    def num_graphs(self) -> int:
        """Number of graphs: ``max(batch) + 1`` for batched data, else 1."""
        if self.batch is None or self.batch.numel() == 0:
            return 1
        return int(self.batch.max()) + 1

    @property
    def has_labels(self) -> bool:
        """True when ``y`` is set."""
        return self.y is not None

    @property
    def has_splits(self) -> bool:
        """True when all three of the train, validation and test masks are set."""
        return self.train_mask is not None and self.val_mask is not None and self.test_mask is not None

    def inputs(self) -> dict[str, torch.Tensor]:
        """The model inputs: ``x`` and ``edge_index``, plus ``batch`` for graph-level data."""
        out = {"x": self.x, "edge_index": self.edge_index}
        if self.batch is not None:
            out["batch"] = self.batch
        return out

    def __repr__(self) -> str:
        parts = [f"nodes={self.num_nodes}", f"edges={self.num_edges}", f"features={self.num_features}"]
        if self.num_classes is not None:
            parts.append(f"classes={self.num_classes}")
        if self.batch is not None:
            parts.append(f"graphs={self.num_graphs}")
        return f"GraphData({self.name!r}, {', '.join(parts)})"
