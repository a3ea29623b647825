"""The model zoo: PyG node/graph classifiers, their defaults, and zoo checkpoints."""

from quantgraph.models.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from quantgraph.models.zoo import (
    ARCHITECTURES,
    GAT,
    GCN,
    GIN,
    MODEL_DEFAULTS,
    SAGE,
    TRAIN_DEFAULTS,
    GINGraph,
    build_model,
    graph_count,
    task_of,
)

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "GAT",
    "GCN",
    "GIN",
    "GINGraph",
    "MODEL_DEFAULTS",
    "SAGE",
    "TRAIN_DEFAULTS",
    "build_model",
    "graph_count",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "task_of",
]
