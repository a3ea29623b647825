"""Passes over the IR and the infrastructure that runs them."""

from quantgraph.passes.infra import CompileContext, PassBase, PassManager, PassResult, Sequential
from quantgraph.passes.registry import available_passes, get_pass, load_pass, register_pass

__all__ = [
    "CompileContext",
    "PassBase",
    "PassManager",
    "PassResult",
    "Sequential",
    "available_passes",
    "get_pass",
    "load_pass",
    "register_pass",
]
