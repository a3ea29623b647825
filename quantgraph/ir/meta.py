"""The IR contract's metadata keys: what passes write into ``node.meta`` and later stages read.

Every ``qg_*`` key is named here once; passes and backends import the constant, never the string.

==================  ====================================  =============================================
key                 value                                 written by
==================  ====================================  =============================================
``ROLE_KEY``        :class:`~quantgraph.ir.roles.Role`    ``tag-roles`` (copied by passes that add nodes)
``LAYER_KEY``       ``int | None`` layer index            ``tag-roles``
``ROWS_KEY``        ``"node" | "edge" | "other"``         ``tag-roles``: what the value's rows index
``QSPEC_KEY``       :class:`~quantgraph.ir.qspec.QuantSpec`  ``annotate`` (``search-bits`` rewrites bits)
``QPARAMS_KEY``     :class:`~quantgraph.ir.qspec.QParams`    ``calibrate`` / ``convert-qat``
``SOURCE_KEY``      name of the quantized node            quantize/dequantize and fake-quant nodes
``QDQ_KEY``         name of the node's dequantize         ``insert-qdq`` / ``convert-qat``
``INTEGER_KEY``     ``True``: the node computes integers  ``fold-scales``
``ACCUMULATOR_KEY`` key of its int32 ``AccumulatorBound``  ``fold-scales``
``EXACT_SCALE_KEY`` exact float64 scale of a dequantize  ``quantize-bias``
==================  ====================================  =============================================
"""

from __future__ import annotations

ROLE_KEY = "qg_role"
LAYER_KEY = "qg_layer"
ROWS_KEY = "qg_rows"
QSPEC_KEY = "qg_qspec"
QPARAMS_KEY = "qg_qparams"
SOURCE_KEY = "qg_source"
QDQ_KEY = "qg_qdq"
INTEGER_KEY = "qg_integer"
ACCUMULATOR_KEY = "qg_accumulator"
EXACT_SCALE_KEY = "qg_exact_scale"

#: ``prepare-qat`` names each quantizer submodule ``FAKE_QUANT_PREFIX + <quantized node's name>``.
FAKE_QUANT_PREFIX = "qg_fq_"

ALL_KEYS = (
    ROLE_KEY,
    LAYER_KEY,
    ROWS_KEY,
    QSPEC_KEY,
    QPARAMS_KEY,
    SOURCE_KEY,
    QDQ_KEY,
    INTEGER_KEY,
    ACCUMULATOR_KEY,
    EXACT_SCALE_KEY,
)
