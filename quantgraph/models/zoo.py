"""A small zoo of GNNs built from PyTorch Geometric layers.

Node classifiers (``gcn``, ``gat``, ``gin``, ``sage``) have ``forward(x, edge_index) -> logits [N, C]``;
the graph classifier ``gin_graph`` has ``forward(x, edge_index, batch) -> logits [G, C]``. Outputs are raw
logits (no softmax). All models are written for ``torch.export`` with dynamic node and edge counts: no Python
control flow on tensor values, dropout only through ``F.dropout(..., training=self.training)``.

Every model built by :func:`build_model` records how to rebuild it: ``model.qg_arch`` (the registry name) and
``model.qg_config`` (the constructor keyword arguments, primitive values only), so
``build_model(model.qg_arch, **model.qg_config)`` gives an identical, freshly initialised model.

Weight initialisation uses PyTorch's global RNG; call ``torch.manual_seed`` before :func:`build_model` for a
reproducible model (models never re-seed themselves).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import (
    AGNNConv,
    GATConv,
    GCNConv,
    GINConv,
    SAGEConv,
    global_add_pool,
    global_mean_pool,
)

from quantgraph.errors import InputError
from quantgraph.ir.smp_ops import smp_multiplier

__all__ = [
    "AGNN",
    "ARCHITECTURES",
    "MODEL_DEFAULTS",
    "TRAIN_DEFAULTS",
    "GAT",
    "GCN",
    "GIN",
    "GINGraph",
    "RowNormalize",
    "SAGE",
    "SMP",
    "APPNPDeep",
    "build_model",
    "graph_count",
    "task_of",
]


def row_normalize(x: Tensor) -> Tensor:
    """Each row divided by its sum (rows summing to less than 1 are left as they are): PyG's
    ``NormalizeFeatures``. Node classifiers built with ``normalize_features=True`` apply it first in
    ``forward`` (as :class:`RowNormalize`), so the traced model, its exported ONNX and the native program all
    take raw features."""
    return x / x.sum(dim=-1, keepdim=True).clamp(min=1.0)


class RowNormalize(nn.Module):
    """:func:`row_normalize` as a module marked as input preprocessing (``qg_preprocess``): ``tag-roles``
    gives its ops no quantization point and puts the input point on its result. No parameters, so a
    checkpoint's state dict is the same with or without it."""

    qg_preprocess: ClassVar[bool] = True

    def forward(self, x: Tensor) -> Tensor:
        return row_normalize(x)


def _normalizer(normalize_features: bool) -> RowNormalize | None:
    return RowNormalize() if normalize_features else None


def _mlp(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    """Two linear layers with a ReLU between them (the GIN update function)."""
    return nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, out_channels))


class GCN(nn.Module):
    """Two GCN layers (Kipf & Welling): GCNConv, ReLU, dropout, GCNConv.

    ``input_dropout`` (default 0) drops raw input features in training; the paper uses 0.5, which gains
    about half a point on Cora but triples training time on CPU (the mask over a wide, sparse feature matrix
    costs more than the rest of the step).
    """

    arch: ClassVar[str] = "gcn"
    task: ClassVar[str] = "node"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        dropout: float = 0.5,
        input_dropout: float = 0.0,
        normalize_features: bool = True,
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.normalize_features = normalize_features
        self.feature_norm = _normalizer(normalize_features)
        self.conv1 = GCNConv(in_channels, hidden)
        self.conv2 = GCNConv(hidden, out_channels)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        if self.feature_norm is not None:  # fixed at build time: no data-dependent branch
            x = self.feature_norm(x)
        x = F.dropout(x, p=self.input_dropout, training=self.training)
        x = F.relu(self.conv1(x, edge_index))
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.conv2(x, edge_index)


class GAT(nn.Module):
    """Two GAT layers (Velickovic et al.): ``heads`` x ``hidden`` concatenated, ELU, then one head to classes.

    ``dropout`` applies to the hidden features and to the attention coefficients, ``input_dropout`` to the
    raw input features (both 0.6 in the paper).
    """

    arch: ClassVar[str] = "gat"
    task: ClassVar[str] = "node"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 8,
        heads: int = 8,
        dropout: float = 0.6,
        input_dropout: float = 0.6,
        normalize_features: bool = True,
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.normalize_features = normalize_features
        self.feature_norm = _normalizer(normalize_features)
        self.conv1 = GATConv(in_channels, hidden, heads=heads, concat=True, dropout=dropout)
        self.conv2 = GATConv(hidden * heads, out_channels, heads=1, concat=False, dropout=dropout)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        if self.feature_norm is not None:  # fixed at build time: no data-dependent branch
            x = self.feature_norm(x)
        x = F.dropout(x, p=self.input_dropout, training=self.training)
        x = F.elu(self.conv1(x, edge_index))
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.conv2(x, edge_index)


class AGNN(nn.Module):
    """Attention-based GNN (Thekumparampil et al.), the model of SGQuant's released code: input dropout,
    Linear + ReLU, two ``AGNNConv`` propagations (the first with a fixed temperature, the second learned),
    dropout, Linear to classes. ``AGNNConv`` attends with the cosine similarity of neighbours' features."""

    arch: ClassVar[str] = "agnn"
    task: ClassVar[str] = "node"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 16,
        dropout: float = 0.5,
        input_dropout: float = 0.5,
        normalize_features: bool = False,
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.normalize_features = normalize_features
        self.feature_norm = _normalizer(normalize_features)  # input preprocessing: not quantized
        self.lin1 = nn.Linear(in_channels, hidden)
        self.prop1 = AGNNConv(requires_grad=False)
        self.prop2 = AGNNConv(requires_grad=True)
        self.lin2 = nn.Linear(hidden, out_channels)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        if self.feature_norm is not None:  # fixed at build time: no data-dependent branch
            x = self.feature_norm(x)
        x = F.dropout(x, p=self.input_dropout, training=self.training)
        x = F.relu(self.lin1(x))
        x = self.prop1(x, edge_index)
        x = self.prop2(x, edge_index)
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.lin2(x)


class _ProjectedInput(nn.Module):
    """Shared by GIN and SAGE: optional input dropout and bias-free input projection ``lin_in``, then
    conv -> ReLU -> dropout -> conv. Subclasses only say how to build their two convolutions.

    GINConv and SAGEConv aggregate *before* their linear maps, so on wide inputs (Cora: 1433 columns) the
    first layer gathers and scatters every input column along every edge, which dominates training time.
    ``project_input=True`` first maps features to ``hidden`` columns with a bias-free Linear. For GIN this is
    an exact re-factorisation (the first MLP Linear ``W1`` becomes ``W1' @ P``: same function class); for
    SAGE the neighbour and root weights then share the projection. Accuracy on Cora is unchanged and
    training is about 5x faster. ``project_input=False`` gives the textbook layer order.
    """

    task: ClassVar[str] = "node"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        dropout: float = 0.5,
        input_dropout: float = 0.0,
        project_input: bool = True,
        normalize_features: bool = False,
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.normalize_features = normalize_features
        self.feature_norm = _normalizer(normalize_features)
        self.project_input = project_input
        self.lin_in = nn.Linear(in_channels, hidden, bias=False) if project_input else None
        first = hidden if project_input else in_channels
        self.conv1, self.conv2 = self._convs(first, hidden, out_channels)

    def _convs(self, first: int, hidden: int, out_channels: int) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        if self.feature_norm is not None:  # fixed at build time: no data-dependent branch
            x = self.feature_norm(x)
        x = F.dropout(x, p=self.input_dropout, training=self.training)
        x = self.lin_in(x) if self.lin_in is not None else x
        x = F.relu(self.conv1(x, edge_index))
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.conv2(x, edge_index)


class GIN(_ProjectedInput):
    """Two GIN layers (Xu et al.); by default 2-layer MLPs and a fixed ``eps = 0``.

    ``mlp_layers`` (1 or 2) is the depth of each layer's update MLP (1: a single Linear, as in A²Q's
    node-level GIN); ``train_eps`` makes ``eps`` a learned parameter (GINConv's ``train_eps``).
    See :class:`_ProjectedInput` for ``project_input`` (default True) and ``input_dropout`` (default 0).
    """

    arch: ClassVar[str] = "gin"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        train_eps: bool = False,
        mlp_layers: int = 2,
        **kwargs: Any,
    ) -> None:
        if mlp_layers not in (1, 2):
            raise InputError(f"gin mlp_layers={mlp_layers!r} is not supported", "use 1 or 2")
        self.train_eps = train_eps
        self.mlp_layers = mlp_layers
        super().__init__(in_channels, out_channels, **kwargs)

    def _update(self, in_channels: int, hidden: int, out_channels: int) -> nn.Module:
        if self.mlp_layers == 1:
            return nn.Sequential(nn.Linear(in_channels, out_channels))
        return _mlp(in_channels, hidden, out_channels)

    def _convs(self, first: int, hidden: int, out_channels: int) -> tuple[nn.Module, nn.Module]:
        return (
            GINConv(self._update(first, hidden, hidden), train_eps=self.train_eps),
            GINConv(self._update(hidden, hidden, out_channels), train_eps=self.train_eps),
        )


class SAGE(_ProjectedInput):
    """Two GraphSAGE layers (Hamilton et al.) with mean aggregation and a root weight.

    See :class:`_ProjectedInput` for ``project_input`` (default True) and ``input_dropout`` (default 0).
    """

    arch: ClassVar[str] = "sage"

    def _convs(self, first: int, hidden: int, out_channels: int) -> tuple[nn.Module, nn.Module]:
        return SAGEConv(first, hidden, aggr="mean"), SAGEConv(hidden, out_channels, aggr="mean")


def graph_count(batch: Tensor) -> Any:
    """The number of graphs in a batch vector, ``max(batch) + 1``, as an int (a SymInt under export).

    The count is a property of the batch vector's *values*, so it is data-dependent: under ``torch.export``
    this becomes an unbacked symbol ``u0 = aten.item(aten.max(batch))`` and the pooled tensor has shape
    ``[u0 + 1, F]`` (export adds a runtime assertion ``u0 + 1 >= 0``). ``Tensor.item()`` is the form export
    accepts; ``int(tensor)`` (what PyG's pooling does when ``size`` is omitted) fails with
    ``GuardOnDataDependentSymNode``. Graphs are identified by id, so ``batch`` need not be sorted; a graph id
    that no node uses gives a row of zeros.
    """
    return batch.max().item() + 1


class GINGraph(nn.Module):
    """Graph-classification GIN: 3 GIN layers (2-layer MLPs, ReLU), global pooling, 2-layer MLP head.

    ``forward(x, edge_index, batch)`` returns logits ``[G, C]`` where ``G = max(batch) + 1`` (see
    :func:`graph_count` for how that number is exported). ``pool`` is ``"mean"`` (default: trains stably
    on the 40-80-node benchmark graphs) or ``"add"`` (the GIN paper's sum; needs a lower learning rate).
    """

    arch: ClassVar[str] = "gin_graph"
    task: ClassVar[str] = "graph"
    POOLS: ClassVar[tuple[str, ...]] = ("add", "mean")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        num_layers: int = 3,
        dropout: float = 0.5,
        pool: str = "mean",
    ) -> None:
        super().__init__()
        if pool not in self.POOLS:
            raise InputError(
                f"gin_graph pool={pool!r} is not supported", f"use one of {', '.join(self.POOLS)}"
            )
        if not isinstance(num_layers, int) or num_layers < 1:
            raise InputError(f"gin_graph num_layers={num_layers!r} is invalid", "use an integer >= 1")
        self.dropout = dropout
        self.pool = pool
        self.convs = nn.ModuleList(
            GINConv(_mlp(in_channels if i == 0 else hidden, hidden, hidden), train_eps=False)
            for i in range(num_layers)
        )
        self.head1 = nn.Linear(hidden, hidden)
        self.head2 = nn.Linear(hidden, out_channels)

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor) -> Tensor:
        for conv in self.convs:
            x = F.relu(conv(x, edge_index))
        size = graph_count(batch)
        if self.pool == "add":  # a Python attribute, fixed at construction: no tensor-dependent branching
            g = global_add_pool(x, batch, size=size)
        else:
            g = global_mean_pool(x, batch, size=size)
        g = F.relu(self.head1(g))
        g = F.dropout(g, p=self.dropout, training=self.training)
        return self.head2(g)


def normalized_adjacency(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor, Tensor]:
    """``Ã = D^-½ (A + I) D^-½`` as (source, target, weight ``[E + N, 1]``): self-loops appended, degrees
    counted on the targets (GCN's normalisation, in plain torch so it traces to IR scatters)."""
    loop = torch.arange(num_nodes, device=edge_index.device)
    src, dst = torch.cat([edge_index[0], loop]), torch.cat([edge_index[1], loop])
    ones = torch.ones_like(dst, dtype=torch.float32)  # no edge-count size: programs read sizes off x only
    deg = torch.zeros(num_nodes, device=edge_index.device).index_add(0, dst, ones)
    inv_sqrt = deg.pow(-0.5)
    return src, dst, (inv_sqrt[src] * inv_sqrt[dst]).unsqueeze(-1)


class Propagate(nn.Module):
    """``Ã X``: gather the source rows, scale by the edge weight, scatter-sum by target."""

    def forward(self, x: Tensor, src: Tensor, dst: Tensor, weight: Tensor) -> Tensor:
        return torch.zeros_like(x).index_add(0, dst, weight * x.index_select(0, src))


class SmoothStep(nn.Module):
    """One step of smoothness-aware message propagation (Wang et al., CIKM 2023), from the official code:

    ``X̃ = (1 − (1+μ)η_H)·X + μη_H·ÃX + η_H·H;  Δ = X̃ − X;  X ← X̃ + 2η_H·λ·ÃΔ;  s ← s + 2η_s·λ·s;
    λ ← λ + η_λ·(α_thr·|E| − s² − tr(ΔᵀLΔ))``, with ``L = I − Ã`` and ``|E|`` the edges of ``A + I``.
    ``constrained=False`` is the plain step ``X ← X̃`` (APPNP with teleport η_H when μη_H = 1 − η_H).
    λ and s are 0-d state threaded through the steps, detached (not learned); the coefficient ``2η_H·λ``
    passes through the ``smp_multiplier`` marker, which ``smp-freeze`` turns into a constant on export.
    """

    def __init__(self, mu: float, eta_h: float, eta_s: float, eta_lambda: float, alpha: float,
                 constrained: bool) -> None:  # fmt: skip
        super().__init__()
        self.keep, self.mix, self.teleport = 1.0 - (1.0 + mu) * eta_h, mu * eta_h, eta_h
        self.eta_h, self.eta_s, self.eta_lambda, self.alpha = eta_h, eta_s, eta_lambda, alpha
        self.constrained = constrained
        self.prop = Propagate()
        self.gap = Propagate() if constrained else None

    def forward(self, x: Tensor, h: Tensor, graph: tuple[Tensor, Tensor, Tensor], state: tuple[Tensor, Tensor],
                num_edges: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:  # fmt: skip
        src, dst, weight = graph
        xt = self.mix * self.prop(x, src, dst, weight) + self.teleport * h
        if self.keep != 0.0:  # 0 for the paper's μ = 9, η_H = 0.1
            xt = xt + self.keep * x
        if self.gap is None:
            return xt, state
        lam, s = state
        gap = xt - x
        gap_prop = self.gap(gap, src, dst, weight)
        out = xt + smp_multiplier(2.0 * self.eta_h * lam) * gap_prop
        s = s + 2.0 * self.eta_s * lam * s
        smoothness = (gap * gap).sum() - (gap * gap_prop).sum()  # tr(ΔᵀLΔ), L = I − Ã
        lam = lam + self.eta_lambda * (self.alpha * num_edges - s * s - smoothness)
        return out, (lam.detach(), s.detach())


class SMP(nn.Module):
    """Deep propagation GNN of SMP (Wang et al., CIKM 2023): dropout, Linear(F→hidden), ReLU, dropout,
    Linear(hidden→C), ``K`` smoothness-aware propagation steps (:class:`SmoothStep`), log-softmax.

    The aggregation is sparse (gather/scatter over ``A + I``; the official code builds a dense N×N matrix).
    ``alpha_threshold`` is α_thr of the constraint ``tr(ΔᵀLΔ) ≤ α_thr·|E|``; λ and s start at 0.001 in
    every forward. ``constrained=False`` drops the constraint (arch ``appnp``: K plain APPNP-style steps).
    """

    arch: ClassVar[str] = "smp"
    task: ClassVar[str] = "node"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        dropout: float = 0.8,
        K: int = 10,
        mu: float = 9.0,
        eta_h: float = 0.1,
        eta_s: float = 1e-5,
        eta_lambda: float = 1e-5,
        alpha_threshold: float = 0.1,
        constrained: bool = True,
        normalize_features: bool = True,
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.normalize_features = normalize_features
        self.feature_norm = _normalizer(normalize_features)
        self.lin1 = nn.Linear(in_channels, hidden)
        self.lin2 = nn.Linear(hidden, out_channels)
        self.steps = nn.ModuleList(
            SmoothStep(mu, eta_h, eta_s, eta_lambda, alpha_threshold, constrained) for _ in range(K)
        )

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        if self.feature_norm is not None:  # fixed at build time: no data-dependent branch
            x = self.feature_norm(x)
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = F.relu(self.lin1(x))
        x = F.dropout(x, p=self.dropout, training=self.training)
        h = self.lin2(x)
        graph = normalized_adjacency(edge_index, h.shape[0])
        num_edges = torch.ones_like(graph[0], dtype=h.dtype).sum()  # |E| of A + I (the nnz of Ã)
        state = (h.new_full((), 1e-3), h.new_full((), 1e-3))  # λ, s: reset in every forward (official)
        x = h
        for step in self.steps:
            x, state = step(x, h, graph, state, num_edges)
        return F.log_softmax(x, dim=-1)


class APPNPDeep(SMP):
    """The comparison baseline: :class:`SMP` without the smoothness constraint (K plain propagation steps
    ``X ← (1 − (1+μ)η_H)·X + μη_H·ÃX + η_H·H``: APPNP with teleport 0.1 at the defaults)."""

    arch: ClassVar[str] = "appnp"


#: Registry: architecture name -> model class.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "gcn": GCN,
    "gat": GAT,
    "agnn": AGNN,
    "gin": GIN,
    "sage": SAGE,
    "gin_graph": GINGraph,
    "smp": SMP,
    "appnp": APPNPDeep,
}

_SMP_DEFAULTS = {"hidden": 64, "dropout": 0.8, "K": 10, "mu": 9.0, "eta_h": 0.1, "eta_s": 1e-5, "eta_lambda": 1e-5,
                 "alpha_threshold": 0.1, "normalize_features": True}  # fmt: skip

#: Per-architecture model hyper-parameters (the constructor keyword defaults, besides in/out channels).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "gcn": {"hidden": 64, "dropout": 0.5, "input_dropout": 0.0, "normalize_features": True},
    "gat": {"hidden": 8, "heads": 8, "dropout": 0.6, "input_dropout": 0.6, "normalize_features": True},
    "agnn": {"hidden": 16, "dropout": 0.5, "input_dropout": 0.5, "normalize_features": False},
    "gin": {
        "hidden": 64,
        "dropout": 0.5,
        "input_dropout": 0.0,
        "project_input": True,
        "normalize_features": False,
        "train_eps": True,
        "mlp_layers": 1,
    },
    "sage": {
        "hidden": 64,
        "dropout": 0.5,
        "input_dropout": 0.0,
        "project_input": True,
        "normalize_features": True,
    },
    "gin_graph": {"hidden": 64, "num_layers": 3, "dropout": 0.5, "pool": "mean"},
    "smp": {**_SMP_DEFAULTS, "constrained": True},  # the official FP32 command (README of SMP_GNN_Quant)
    "appnp": {**_SMP_DEFAULTS, "constrained": False},
}

#: Recommended training settings per architecture (keyword arguments of the ``quantgraph.training`` loops).
#: Node models: full-batch Adam on the public Planetoid split; the best-validation epoch is kept.
#: ``patience``/``select`` (optional) are the early stopping of :func:`quantgraph.training.train_node_classifier`.
#: Chosen on validation (docs/results.md, "FP32 recipes"): GCN and GAT on row-normalised features
#: (``normalize_features``, on by default in :data:`MODEL_DEFAULTS`; a :class:`RowNormalize` preprocessing
#: module inside the model, which no policy quantizes); GAT with the paper's 1000 epochs and early stopping
#: on validation loss (patience 100); GIN on raw features (normalisation lowered it) with lr 0.005 and
#: weight decay 5e-3, then (issue 12, 3 seeds, mean validation over Cora and CiteSeer 73.9 vs 72.4)
#: one-Linear update MLPs and a learned eps (A²Q's GIN layer) at hidden 64, lr 0.01, weight decay 1e-2;
#: SAGE row-normalised too (validation, 2 seeds: CiteSeer 70.3 vs 68.8 raw, Cora 78.2 vs 78.4 raw).
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "gcn": {"epochs": 200, "lr": 0.01, "weight_decay": 5e-4},
    "gat": {"epochs": 1000, "lr": 0.005, "weight_decay": 5e-4, "patience": 100, "select": "loss"},
    "agnn": {"epochs": 200, "lr": 0.01, "weight_decay": 5e-4},  # PyG's AGNN example
    "gin": {"epochs": 200, "lr": 0.01, "weight_decay": 1e-2},
    "sage": {"epochs": 200, "lr": 0.01, "weight_decay": 5e-4},
    "gin_graph": {"epochs": 150, "lr": 0.002, "weight_decay": 0.0, "batch_size": 32},
    "smp": {"epochs": 200, "lr": 0.01, "weight_decay": 1e-5},  # SMP's official FP32 command (no lr decay)
    "appnp": {"epochs": 200, "lr": 0.01, "weight_decay": 1e-5},
}


def task_of(arch: str) -> str:
    """``"node"`` or ``"graph"``: what the architecture classifies."""
    return _model_class(arch).task  # type: ignore[attr-defined]


def _model_class(arch: str) -> type[nn.Module]:
    if arch not in ARCHITECTURES:
        raise InputError(
            f"unknown architecture {arch!r}", f"choose one of: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[arch]


def _check_channels(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name}={value!r} is not a positive integer", f"pass {name} as an integer >= 1")
    return value


def build_model(arch: str, in_channels: int, out_channels: int, **config: Any) -> nn.Module:
    """Build a zoo model: ``arch`` from :data:`ARCHITECTURES`, per-arch defaults from :data:`MODEL_DEFAULTS`.

    ``config`` overrides the defaults (e.g. ``hidden=32, dropout=0.0``); an unknown key is an
    :class:`InputError`. The model gets ``qg_arch`` and ``qg_config`` attributes (see the module docs).
    """
    cls = _model_class(arch)
    in_channels = _check_channels("in_channels", in_channels)
    out_channels = _check_channels("out_channels", out_channels)
    defaults = MODEL_DEFAULTS[arch]
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise InputError(
            f"unknown option(s) {', '.join(unknown)} for architecture {arch!r}",
            f"{arch} accepts: {', '.join(defaults)}",
        )
    kwargs = {**defaults, **config}
    for key in ("hidden", "heads", "num_layers", "K", "mlp_layers"):
        if key in kwargs:
            _check_channels(key, kwargs[key])
    for key in ("dropout", "input_dropout"):
        if key in kwargs:
            p = kwargs[key]
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p < 1.0:
                raise InputError(f"{key}={p!r} is out of range", "use a probability in [0, 1)")
            kwargs[key] = float(p)
    for key in ("project_input", "normalize_features", "constrained", "train_eps"):
        if key in kwargs and not isinstance(kwargs[key], bool):
            raise InputError(f"{key}={kwargs[key]!r} is not a boolean", "use true or false")
    model = cls(in_channels, out_channels, **kwargs)
    model.qg_arch = arch
    model.qg_config = {"in_channels": in_channels, "out_channels": out_channels, **kwargs}
    return model
