"""quantgraph: a compiler-style quantization toolchain for graph neural networks.

Typical use::

    import quantgraph as qg
    data = qg.load_dataset("cora", root="../shared/data/planetoid")
    model = qg.build_model("gcn", data.num_features, data.num_classes)
    qg.train_node_classifier(model, data)
    compiled = qg.compile(model, data, policy="minmax", bits=8)
    compiled.export_onnx("gcn_int8.onnx")
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it; imported on first use so that ``quantgraph --help`` and
#: ``import quantgraph.errors`` do not load torch.
_EXPORTS = {
    "CompiledModel": "quantgraph.compiler",
    "PassInsertion": "quantgraph.compiler",
    "compile": "quantgraph.compiler",
    "GraphData": "quantgraph.data",
    "load_dataset": "quantgraph.data",
    "InputError": "quantgraph.errors",
    "PassError": "quantgraph.errors",
    "QuantGraphError": "quantgraph.errors",
    "UnsupportedOpError": "quantgraph.errors",
    "load_model": "quantgraph.frontend",
    "trace": "quantgraph.frontend",
    "build_model": "quantgraph.models",
    "load_checkpoint": "quantgraph.models",
    "save_checkpoint": "quantgraph.models",
    "PassBase": "quantgraph.passes",
    "PassResult": "quantgraph.passes",
    "register_pass": "quantgraph.passes",
    "Policy": "quantgraph.policies",
    "register_policy": "quantgraph.policies",
    "train_node_classifier": "quantgraph.training",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'quantgraph' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__version__ = "0.1.0"

__all__ = [
    "CompiledModel",
    "GraphData",
    "InputError",
    "PassBase",
    "PassError",
    "PassInsertion",
    "PassResult",
    "Policy",
    "QuantGraphError",
    "UnsupportedOpError",
    "build_model",
    "compile",
    "load_checkpoint",
    "load_dataset",
    "load_model",
    "register_pass",
    "register_policy",
    "save_checkpoint",
    "trace",
    "train_node_classifier",
]
