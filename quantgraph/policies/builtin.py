"""Built-in policies: ``fp32`` (export only), ``minmax`` (post-training min/max calibration), ``ptq``
(label-free per-degree-bucket clip search) and the QAT policies."""

from __future__ import annotations

from quantgraph.ir.qspec import Granularity, QuantSpec
from quantgraph.ir.roles import QUANTIZABLE_ROLES, Role
from quantgraph.policies.base import GRAPH_PASSES, Policy, QConfigBuilder, register_policy

PTQ_PASSES = (*GRAPH_PASSES, "annotate", "calibrate", "insert-qdq")


def minmax_qconfig(bits: int) -> dict[Role, QuantSpec]:
    """Per-channel symmetric weights; per-tensor affine activations at every activation role."""
    weight = QuantSpec(bits=bits, signed=True, symmetric=True, granularity=Granularity.PER_CHANNEL, axis=0)
    activation = QuantSpec(bits=bits, signed=True, symmetric=False, granularity=Granularity.PER_TENSOR)
    return {role: (weight if role == Role.WEIGHT else activation) for role in QUANTIZABLE_ROLES}


FP32 = register_policy(
    Policy(
        name="fp32",
        description="no quantization: canonicalize and export the FP32 model",
        pipeline=GRAPH_PASSES,
        quantizes=False,
    )
)

MINMAX = register_policy(
    Policy(
        name="minmax",
        description="post-training quantization: per-channel symmetric weights, per-tensor affine "
        "activations at every role, min/max ranges from the calibration graph",
        pipeline=PTQ_PASSES,
        qconfig=minmax_qconfig,
    )
)

#: ``ptq``: the label-free PTQ recommended beside min/max (docs/results.md, "Label-free PTQ").
PTQ_BUCKET_PASSES = (*GRAPH_PASSES, "annotate", "degree-buckets", "calibrate", "insert-qdq")

PTQ = register_policy(
    Policy(
        name="ptq",
        description="label-free post-training quantization: min/max's quantizers, but every node-row activation "
        "gets a range per in-degree bucket, each chosen by a relative-MSE clip search on the calibration graph",
        pipeline=PTQ_BUCKET_PASSES,
        qconfig=minmax_qconfig,
        defaults={
            "calibration": "relative-mse",
            "group_roles": ("linear_out", "aggregation", "update", "output"),
        },
    )
)

QAT_PASSES = (
    *GRAPH_PASSES,
    "dropout-to-module",
    "annotate",
    "calibrate",
    "prepare-qat",
    "train-qat",
    "convert-qat",
)
DEGREE_QUANT_PASSES = (
    *GRAPH_PASSES,
    "dropout-to-module",
    "annotate",
    "degree-buckets",  # off unless --option group_roles=... (ranges per in-degree bucket)
    "calibrate",
    "prepare-qat",
    "degree-mask",
    "train-qat",
    "convert-qat",
)


def per_tensor_affine_qconfig(observer: str) -> QConfigBuilder:
    """Degree-Quant's quantizer: per-tensor affine (range contains 0) at every role, weights included.

    Input features always use min/max: they are fixed data, and a percentile cut would zero out sparse
    bag-of-words inputs (CiteSeer's are 99% zeros, so its 1% tail is 0).
    """

    def build(bits: int) -> dict[Role, QuantSpec]:
        spec = QuantSpec(bits=bits, signed=True, symmetric=False, observer=observer)
        qconfig = dict.fromkeys(QUANTIZABLE_ROLES, spec)
        qconfig[Role.INPUT] = QuantSpec(bits=bits, signed=True, symmetric=False, observer="minmax")
        return qconfig

    return build


QAT = register_policy(
    Policy(
        name="qat",
        description="plain quantization-aware training: fake-quant at every role, min/max ranges, plain STE",
        pipeline=QAT_PASSES,
        qconfig=per_tensor_affine_qconfig("minmax"),
        defaults={"trace_training": True, "ste": "plain"},
    )
)

DEGREE_QUANT = register_policy(
    Policy(
        name="degree-quant",
        description="Degree-Quant QAT: percentile ranges, saturation-aware STE, degree-based protective masks "
        "(--option group_roles=...: those roles get a range per in-degree bucket)",
        pipeline=DEGREE_QUANT_PASSES,
        qconfig=per_tensor_affine_qconfig("percentile"),
        defaults={"trace_training": True, "group_roles": ()},
    )
)

MIXQ_PASSES = (
    *GRAPH_PASSES,
    "dropout-to-module",
    "annotate",
    "calibrate",
    "prepare-qat",
    "search-bits",
    "train-qat",
    "convert-qat",
)


def mixq_qconfig(bits: int) -> dict[Role, QuantSpec]:
    """MixQ's quantization points: per-tensor affine at every role but MESSAGE, ``bits`` before the search.

    Messages are not quantized on their own: a message is the product of a quantized gathered feature and
    a quantized edge weight, so the aggregation can run on integers. Input features keep min/max ranges.
    """
    qconfig = per_tensor_affine_qconfig("percentile")(bits)
    del qconfig[Role.MESSAGE]
    return qconfig


MIXQ = register_policy(
    Policy(
        name="mixq",
        description="MixQ mixed precision: a learned bitwidth per quantization point (BitOPs penalty), then QAT",
        pipeline=MIXQ_PASSES,
        qconfig=mixq_qconfig,
        defaults={"trace_training": True},
    )
)

SGQUANT_PASSES = (
    *GRAPH_PASSES,
    "dropout-to-module",
    "annotate",
    "sgquant-annotate",
    "calibrate",
    "prepare-qat",
    "sgquant-bits",
    "train-qat",
    "sgquant-budget",
    "convert-qat",
)


def sgquant_qconfig(bits: int) -> dict[Role, QuantSpec]:
    """SGQuant: asymmetric uniform per tensor (per degree bucket with ``sgquant_buckets``) at every role,
    gathered rows included (x_j gets the aggregation bits); bits per point come from ``sgquant-bits``."""
    spec = QuantSpec(bits=bits, signed=True, symmetric=False, quantizer="sgquant")
    return dict.fromkeys((*QUANTIZABLE_ROLES, Role.GATHER), spec)


SGQUANT = register_policy(
    Policy(
        name="sgquant",
        description="SGQuant: bits per layer/component/degree bucket (given, or ABS under a memory budget), then QAT",
        pipeline=SGQUANT_PASSES,
        qconfig=sgquant_qconfig,
        defaults={"trace_training": True, "keep_initial": True},
    )
)


import quantgraph.policies.a2q  # noqa: E402, F401  (A²Q: its own module)
import quantgraph.policies.smp  # noqa: E402, F401  (SMP: its own module)
