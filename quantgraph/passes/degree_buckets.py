"""Per-group quantization by in-degree: node-row values get one parameter set per in-degree bucket.

The pass adds the bucket computation to the graph (in-degree by a scatter of ones over the edge
targets, then ``bucket = #{boundaries <= degree}``), so the group of each row is computed from the graph
the model runs on: one compiled model serves any node count. Each annotated node-row value whose role
is in ``group_roles`` gets a ``PER_GROUP`` spec naming that bucket node; ``calibrate`` then observes a
range per bucket and ``insert-qdq`` gathers the parameter tables by the bucket index.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import fx

from quantgraph.errors import InputError
from quantgraph.ir.meta import QSPEC_KEY, ROLE_KEY, ROWS_KEY
from quantgraph.ir.ops import SCATTER
from quantgraph.ir.qspec import Granularity
from quantgraph.ir.roles import Role
from quantgraph.options import Option, str_list
from quantgraph.passes.infra import CompileContext, PassBase, PassResult, add_constant
from quantgraph.passes.registry import register_pass

aten = torch.ops.aten
BUCKET_NODE = "qg_degree_bucket"  # prefix of the boundary constant


def parse_boundaries(value: object) -> tuple[int, ...]:
    """Ascending positive in-degree boundaries from a sequence or "1,2,4,8"."""
    try:
        bounds = tuple(int(v) for v in str_list(value))
    except ValueError as err:
        raise InputError(f"degree boundaries {value!r} are not integers", "write e.g. 2,4,8") from err
    if not bounds or list(bounds) != sorted(set(bounds)) or bounds[0] < 1:
        raise InputError(
            f"degree boundaries {value!r} are invalid", "give ascending positive integers, e.g. 2,4,8"
        )
    return bounds


def degree_buckets(degree: torch.Tensor, boundaries: tuple[int, ...]) -> torch.Tensor:
    """The bucket of each node: how many boundaries its in-degree reaches (what the graph computes)."""
    bounds = torch.tensor(boundaries, dtype=torch.float32)
    return (degree.float().unsqueeze(1) >= bounds.unsqueeze(0)).float().sum(1).long()


def insert_bucket_index(gm: fx.GraphModule, boundaries: tuple[int, ...]) -> fx.Node:
    """Add the in-degree bucket computation after the placeholders; returns the int64 bucket node."""
    placeholders = {n.name: n for n in gm.graph.nodes if n.op == "placeholder"}
    first = next(n for n in gm.graph.nodes if n.op != "placeholder")
    bounds = add_constant(
        gm, f"{BUCKET_NODE}_boundaries", torch.tensor([boundaries], dtype=torch.float32), first
    )
    g = gm.graph
    with g.inserting_before(first):
        target = g.call_function(aten.select.int, (placeholders["edge_index"], 0, 1))
        ones = g.call_function(aten.ones_like.default, (target,), {"dtype": torch.float32})
        num_nodes = g.call_function(aten.sym_size.int, (placeholders["x"], 0))
        degree = g.call_function(SCATTER, (ones, target, num_nodes, "sum"))
        column = g.call_function(aten.unsqueeze.default, (degree, 1))
        reached = g.call_function(aten.ge.Tensor, (column, bounds))
        counted = g.call_function(aten._to_copy.default, (reached,), {"dtype": torch.float32})
        total = g.call_function(aten.sum.dim_IntList, (counted, [1]))
        bucket = g.call_function(aten._to_copy.default, (total,), {"dtype": torch.int64})
    for node in (target, ones, num_nodes, degree, column, reached, counted, total, bucket):
        node.meta[ROLE_KEY] = Role.STRUCTURE
        node.meta[ROWS_KEY] = "other"
    bucket.meta[ROWS_KEY] = "node"
    return bucket


def group_by_bucket(targets: list[fx.Node], bucket: fx.Node, num_groups: int) -> None:
    """Give each target's spec one parameter set per bucket, the bucket of each row read from ``bucket``."""
    for node in targets:
        node.meta[QSPEC_KEY] = replace(
            node.meta[QSPEC_KEY],
            granularity=Granularity.PER_GROUP,
            axis=0,
            group_index=bucket.name,
            num_groups=num_groups,
        )


@register_pass
class DegreeBucketsPass(PassBase):
    """Give node-row quantizers one parameter set per in-degree bucket (computed in the graph)."""

    name = "degree-buckets"
    description = "per-group quantization: node-row values get parameters per in-degree bucket"
    options = (
        Option(
            "degree_boundaries", parse_boundaries, (2, 4, 8, 16), "in-degree bucket boundaries (ascending)"
        ),
        Option(
            "group_roles",
            str_list,
            ("aggregation", "update"),
            "roles quantized per bucket (node-row values only)",
        ),
    )

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        if not any(QSPEC_KEY in n.meta for n in gm.graph.nodes):
            raise InputError(
                "no node is annotated for quantization", "run 'annotate' before 'degree-buckets'"
            )
        if "edge_index" not in ctx.input_names or "x" not in ctx.input_names:
            raise InputError(
                "degree buckets need inputs named x and edge_index", "name the forward arguments so"
            )

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        boundaries = self.option(ctx, "degree_boundaries")
        roles = {Role(r) for r in self.option(ctx, "group_roles")}
        targets = [
            n
            for n in gm.graph.nodes
            if QSPEC_KEY in n.meta and n.meta.get(ROWS_KEY) == "node" and n.meta.get(ROLE_KEY) in roles
        ]
        if not targets:
            return PassResult(gm, False)
        bucket = insert_bucket_index(gm, boundaries)
        group_by_bucket(targets, bucket, len(boundaries) + 1)
        ctx.report["degree_buckets"] = {
            "boundaries": list(boundaries),
            "groups": len(boundaries) + 1,
            "nodes": [n.name for n in targets],
        }
        return PassResult(gm, True)
