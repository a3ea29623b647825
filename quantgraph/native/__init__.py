"""Native integer kernels (C99 + OpenMP, JIT-compiled on first use) for quantized GNN inference.

Importing this package compiles nothing; the first kernel call builds ``kernels.c`` into the cache (see
``quantgraph.native.build``) and raises ``InputError`` when no C compiler is available.
"""

from quantgraph.native.build import available, load
from quantgraph.native.kernels import (
    BITS,
    CSR,
    MessageQuant,
    PackedWeight,
    aligned_empty,
    gemm_i8,
    pack,
    pack_weight,
    quantize,
    requantize,
    requantize_affine,
    row_bytes,
    spmm,
    spmm_requantize,
    unpack,
)

__all__ = [
    "BITS",
    "CSR",
    "MessageQuant",
    "PackedWeight",
    "aligned_empty",
    "available",
    "gemm_i8",
    "load",
    "pack",
    "pack_weight",
    "quantize",
    "requantize",
    "requantize_affine",
    "row_bytes",
    "spmm",
    "spmm_requantize",
    "unpack",
]
