"""A backend as a plug-in: writes each quantize point's integer parameters and values as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from quantgraph.backends.registry import Backend, register_backend
from quantgraph.fileio import atomic_write_bytes
from quantgraph.ir.meta import SOURCE_KEY
from quantgraph.ir.ops import QUANTIZE
from quantgraph.metrics import accuracy


@register_backend
class QuantParamsJSONBackend(Backend):
    name = "qparams-json"
    description = "JSON with every quantize point's scale, zero point and integer range (a plug-in backend)"
    suffix = ".json"
    report_key = "qparams_json"

    def lower(self, compiled, data) -> dict[str, Any]:
        gm = compiled.graph_module
        points = {}
        for node in gm.graph.nodes:
            if node.target == QUANTIZE:
                consts = [gm.get_buffer(a.target) for a in node.args[1:5]]
                scale, zero, qmin, qmax = (t.flatten().tolist() for t in consts)
                points[node.meta.get(SOURCE_KEY, node.name)] = {
                    "scale": scale,
                    "zero_point": zero,
                    "qmin": qmin,
                    "qmax": qmax,
                }
        return {"points": points, "logits": compiled.run(data).tolist()}

    def verify(self, artifact: dict[str, Any], compiled, data) -> dict[str, Any]:
        logits = torch.tensor(artifact["logits"])
        return {
            "points": len(artifact["points"]),
            "positive_scales": all(min(p["scale"]) > 0 for p in artifact["points"].values()),
            "accuracy": accuracy(logits, data.y, data.test_mask),
        }

    def save(self, artifact: dict[str, Any], path: str | Path) -> int:
        # inside the CLI's output transaction the file appears only when the command ends: size the bytes
        data = (json.dumps(artifact, indent=2, sort_keys=True) + "\n").encode()
        atomic_write_bytes(path, data)
        return len(data)
