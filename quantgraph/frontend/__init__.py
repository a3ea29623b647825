"""Frontend: lowers a PyTorch/PyG model into the quantgraph IR (a torch.fx GraphModule)."""

from quantgraph.frontend.loading import load_model
from quantgraph.frontend.tracer import TracedGraph, trace, trace_exported

__all__ = ["TracedGraph", "load_model", "trace", "trace_exported"]
