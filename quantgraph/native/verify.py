"""Verify a native program against the integer IR: integers at every quantize point, logits, accuracy."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import torch

from quantgraph.metrics import accuracy, argmax_agreement

if TYPE_CHECKING:
    from quantgraph.compiler import CompiledModel
    from quantgraph.data import GraphData
    from quantgraph.native.runtime import NativeModel


def compare_native_integers(
    model: NativeModel, compiled: CompiledModel, inputs: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """The native runtime's integers against the IR's, for every quantize point the program materialises.

    Message quantizers fused into an aggregation kernel are not materialised; the aggregation's output,
    which they feed, is compared instead.
    """
    got = model.integer_values(inputs)
    expected = compiled.integer_values(inputs)
    mismatched: dict[str, int] = {}
    compared = 0
    for key, value in got.items():
        if key in expected:
            compared += 1
            diff = (
                int((value.long() != expected[key].long()).sum())
                if value.shape == expected[key].shape
                else -1
            )
            if diff:
                mismatched[key] = diff
    fused = sorted(set(expected) - set(got))
    return {
        "compared": compared,
        "equal": not mismatched and compared > 0,
        "mismatched_values": mismatched,
        "fused_into_kernels": fused,
    }


def verify_native(model: NativeModel, compiled: CompiledModel, data: GraphData) -> dict[str, Any]:
    """Run ``model`` on ``data`` and compare it with the IR (integers, logits, test accuracy)."""
    inputs = data.inputs()
    prepared = model.prepare(inputs)
    logits = model.run(inputs, prepared)
    ir_logits = compiled.run(inputs)
    ops = Counter(
        "native" if s.op.startswith("native.") else "aten"
        for s in model.program.steps
        if s.stage == "feature"
    )
    return {
        "integer_tensors": compare_native_integers(model, compiled, inputs),
        "max_abs_error": float((logits - ir_logits).abs().max()) if ir_logits.numel() else 0.0,
        "argmax_agreement": argmax_agreement(logits, ir_logits),
        "accuracy": accuracy(logits, data.y, data.test_mask),
        "feature_steps": {"native": ops["native"], "aten": ops["aten"]},
        "kernels": dict(
            sorted(Counter(s.op for s in model.program.steps if s.op.startswith("native.")).items())
        ),
    }
