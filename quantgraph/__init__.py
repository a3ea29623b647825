"""quantgraph: a compiler-style quantization toolchain for graph neural networks."""

__version__ = "0.1.0"
