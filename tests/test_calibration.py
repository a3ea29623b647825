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


def _two_groups() -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of group 0 in [0, 1] (low-degree nodes), rows of group 1 a heavy tail 100x larger (hubs)."""
    g = torch.Generator().manual_seed(1)
    small = torch.rand(300, 8, generator=g)
    large = 100.0 * torch.exp(1.5 * torch.randn(40, 8, generator=g))
    return torch.cat([small, large]), torch.cat([torch.zeros(300), torch.ones(40)]).long()


def _group_spec(name: str, bits: int = 8, groups: int = 3) -> QuantSpec:
    return QuantSpec(
        bits=bits, observer=name, granularity="per_group", axis=0, group_index="bucket", num_groups=groups
    )


@pytest.mark.parametrize("name", ["mse", "relative-mse", "entropy"])
def test_per_group_search_gives_each_group_its_own_clipped_range(name):
    x, groups = _two_groups()
    obs = make_observer(_group_spec(name))
    for rows in (slice(0, 170), slice(170, 340)):  # two calibration batches
        obs.update(x[rows], groups[rows])
    qp = obs.qparams()
    hi = (qp.qmax - qp.zero_point) * qp.scale
    assert hi.shape == (3,)
    assert float(hi[0]) <= 1.0 + 1e-3 and float(hi[1]) > 50.0  # the small rows keep a fine step
    assert float(hi[1]) <= float(x[300:].max()) + 1e-3  # the hub group is never widened
    assert float(hi[2]) == pytest.approx(0.0, abs=1e-4)  # no row fell in group 2: [0, 0] (eps scale)
    if name == "entropy":  # TensorRT's KL threshold on a sparse histogram of uniform rows clips them hard
        return
    tensor = make_observer(QuantSpec(bits=8, observer=name))
    tensor.update(x)
    per_tensor = tensor.qparams()
    spec = QuantSpec(bits=8)
    small = x[:300]
    lo0 = (qp.qmin[0] - qp.zero_point[0]) * qp.scale[0]
    lo_t = (per_tensor.qmin - per_tensor.zero_point) * per_tensor.scale
    hi_t = (per_tensor.qmax - per_tensor.zero_point) * per_tensor.scale
    err_group = quantization_mse(small, lo0, hi[0], spec)
    err_tensor = quantization_mse(small, lo_t, hi_t, spec)
    assert err_group < 0.01 * err_tensor  # the low-degree rows: 100x less error with their own range


def test_per_group_mse_is_never_worse_than_the_groups_minmax():
    x, groups = _two_groups()
    obs = make_observer(_group_spec("mse", bits=4, groups=2))
    obs.update(x, groups)
    qp = obs.qparams()
    spec = QuantSpec(bits=4)
    for k in range(2):
        rows = x[groups == k]
        lo = (qp.qmin[k] - qp.zero_point[k]) * qp.scale[k]
        hi = (qp.qmax - qp.zero_point)[k] * qp.scale[k]
        assert quantization_mse(rows, lo, hi, spec) <= quantization_mse(rows, rows.min(), rows.max(), spec)
