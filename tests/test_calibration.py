"""Label-free range calibration: MSE, relative-MSE and entropy observers against min/max."""

from __future__ import annotations

import pytest
import torch

from quantgraph.errors import InputError
from quantgraph.ir.qspec import QuantSpec
from quantgraph.passes.observers import (
    entropy_optimal_bound,
    make_observer,
    quantization_mse,
    relative_weight,
)
from quantgraph.policies.base import get_policy


def _heavy_tailed(n: int = 20000) -> torch.Tensor:
    """Non-negative log-normal values (sigma 1.5), like GIN's sums over power-law degrees."""
    g = torch.Generator().manual_seed(0)
    return torch.exp(1.5 * torch.randn(n, generator=g))


def _range(observer_name: str, x: torch.Tensor, bits: int) -> tuple[float, float, torch.Tensor]:
    spec = QuantSpec(bits=bits, observer=observer_name)
    obs = make_observer(spec)
    for chunk in x.split(5000):  # several calibration batches
        obs.update(chunk)
    qp = obs.qparams()
    lo = float((qp.qmin - qp.zero_point) * qp.scale)
    hi = float((qp.qmax - qp.zero_point) * qp.scale)
    return lo, hi, qp


def test_mse_range_beats_minmax_on_a_heavy_tailed_tensor():
    x = _heavy_tailed()
    spec = QuantSpec(bits=4)
    _, hi_minmax, _ = _range("minmax", x, 4)
    lo, hi, _ = _range("mse", x, 4)
    assert hi < 0.85 * hi_minmax  # the tail is clipped
    err_mse = quantization_mse(x, torch.tensor(lo), torch.tensor(hi), spec)
    err_minmax = quantization_mse(x, x.min(), x.max(), spec)
    assert err_mse < 0.8 * err_minmax


def test_mse_range_is_never_worse_than_minmax():
    # at INT8 plain MSE keeps most of a log-normal tail (a rare large value costs more clipped than the
    # finer step saves), but the chosen range is never worse than min/max, which is one of its candidates
    x = _heavy_tailed()
    spec = QuantSpec(bits=8)
    lo, hi, _ = _range("mse", x, 8)
    assert quantization_mse(x, torch.tensor(lo), torch.tensor(hi), spec) <= quantization_mse(
        x, x.min(), x.max(), spec
    )


def test_relative_mse_clips_harder_and_lowers_the_relative_error():
    x = _heavy_tailed()
    spec = QuantSpec(bits=8)
    _, hi_mse, _ = _range("mse", x, 8)
    lo, hi_rel, _ = _range("relative-mse", x, 8)
    assert hi_rel < 0.5 * hi_mse
    w = relative_weight(x)
    rel = quantization_mse(x, torch.tensor(lo), torch.tensor(hi_rel), spec, w)
    plain = quantization_mse(x, torch.tensor(0.0), torch.tensor(hi_mse), spec, w)
    assert rel < plain


@pytest.mark.parametrize("name", ["mse", "relative-mse"])
def test_mse_keeps_the_range_of_a_uniform_tensor(name):
    x = torch.linspace(-1.0, 3.0, 4001)
    lo, hi, _ = _range(name, x, 8)
    assert lo == pytest.approx(-1.0, abs=0.05) and hi == pytest.approx(3.0, abs=0.05)


def test_entropy_bound_clips_the_tail_only():
    x = _heavy_tailed()
    bound = entropy_optimal_bound(x.abs(), 8)
    assert 1.0 <= bound < float(x.max())
    assert entropy_optimal_bound(torch.zeros(10), 8) == 0.0
    with pytest.raises(InputError, match="8 bits"):
        _range("entropy", x, 4)


def test_mse_observer_rejects_per_channel_specs():
    obs = make_observer(QuantSpec(bits=8, observer="mse", granularity="per_channel", axis=0))
    with pytest.raises(InputError, match="per-tensor"):
        obs.update(torch.randn(4, 3))


def test_calibration_option_sets_activation_observers_only():
    qconfig = get_policy("minmax").build_qconfig(8, "relative-mse")
    observers = {role.value: spec.observer for role, spec in qconfig.items()}
    assert observers["weight"] == "minmax" and observers["input"] == "minmax"
    assert "relative-mse" in observers.values()
    with pytest.raises(InputError, match="unknown calibration"):
        get_policy("minmax").build_qconfig(8, "kl")
