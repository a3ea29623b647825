"""quantgraph: a compiler-style quantization toolchain for graph neural networks.

Typical use::

    import quantgraph as qg
    data = qg.load_dataset("cora", root="../shared/data/planetoid")
    model = qg.build_model("gcn", data.num_features, data.num_classes)
    qg.train_node_classifier(model, data)
    compiled = qg.compile(model, data, policy="minmax", bits=8)
    compiled.export_onnx("gcn_int8.onnx")
"""

from quantgraph.compiler import CompiledModel, PassInsertion, compile
from quantgraph.data import GraphData, load_dataset
from quantgraph.errors import InputError, PassError, QuantGraphError, UnsupportedOpError
from quantgraph.frontend import load_model, trace
from quantgraph.models import build_model, load_checkpoint, save_checkpoint
from quantgraph.passes import PassBase, PassResult, register_pass
from quantgraph.policies import Policy, register_policy
from quantgraph.training import train_node_classifier

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
