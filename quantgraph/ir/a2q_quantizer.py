"""A²Q's quantizers (Zhu et al., ICLR 2023; official code weihai-98/A-2Q): learned per-node bitwidths.

Signed symmetric quantization without zero point, as ``u_quant_fea_func_gama_div`` of the official code:
``s = |ŝ|``, ``b = round(|b̂|)`` (kept in [1, 8] so a value fits int8), ``qmax = 2^(b-1) - 1`` and
``x̂ = s · sign(x) · floor(|clip(x / s, ±qmax)| + 0.5)``. The gradients (:class:`A2QRound`):

* x: straight-through, zeroed where ``x`` was clipped;
* s: ``Σ w · [(q - x/s) · 1(in range) + sign(x) · qmax · 1(clipped)]``;
* b: ``Σ w · 1(clipped) · sign(x) · (qmax + 1) · ln 2 · s``;

where ``w`` is the task gradient, or with **Local Gradient** (node features of node-level tasks) the
gradient of ``E_i = (1/d) · ‖x̂_i - x_i‖₁``, i.e. ``sign(x̂ - x) / d``. Both are multiplied by the sign of
the raw parameter (the chain rule through ``|·|``), which the official code omits (its parameters stay
positive, where the two agree).

Three registered kinds:

* ``a2q`` with a ``PER_NODE`` spec: one learned ``(s_i, b_i)`` per row (the transductive graph's nodes);
  with ``PER_CHANNEL``/``PER_TENSOR``: learned scales at the spec's fixed bits (weights per output channel,
  the linear output XW per column, ``axis=1``).
* ``a2q-nns``: the Nearest-Neighbour Strategy, ``num_groups`` learned ``(s_k, b_k)``; each row picks
  ``argmin_k (max_j |x_ij| - qmax_k · s_k)²`` (:func:`nns_groups`), in training and in the exported graph,
  so the model serves graphs it never saw. Gradients reach the chosen groups through the gather.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from quantgraph.ir.qspec import Granularity, QParams, QuantSpec
from quantgraph.ir.quantizer import Quantizer, QuantizerSettings, register_quantizer

MIN_LEARNED_BITS, MAX_LEARNED_BITS = 1, 8
SCALE_EPS = 1e-8
LN2 = math.log(2.0)


def integer_bits(bits: Tensor) -> Tensor:
    """``round(|b̂|)`` kept in [1, 8] (8: the widest integer a backend stores)."""
    return bits.detach().abs().round().clamp(MIN_LEARNED_BITS, MAX_LEARNED_BITS)


def qmax_of(bits: Tensor) -> Tensor:
    """``2^(b-1) - 1`` of the integer bits (0 at 1 bit: every value quantizes to 0)."""
    return torch.pow(2.0, integer_bits(bits) - 1) - 1


def positive_scale(scale: Tensor) -> Tensor:
    return scale.abs().clamp_min(SCALE_EPS)


def _levels(x: Tensor, s: Tensor, qmax: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``v = x / s``, whether ``|v| <= qmax``, ``sign(x)`` and the level ``sign(x)·floor(min(|v|, qmax) + 0.5)``."""
    v = x / s
    magnitude = v.abs()
    inside = magnitude <= qmax
    sign_x = torch.sign(x)
    return v, inside, sign_x, torch.minimum(magnitude, qmax).add_(0.5).floor_().mul_(sign_x)


class A2QRound(torch.autograd.Function):
    """A²Q's fake quantization with its custom gradients for x, the scale and the bits (see module docs).

    ``scale`` and ``bits`` broadcast against ``x`` (e.g. ``[N, 1]`` per row, ``[1, C]`` per column, ``[]``);
    each parameter's gradient is reduced over the elements it applies to: summed (task gradient) or, with
    ``local``, averaged over them with ``w = sign(x̂ - x)`` (Local Gradient).
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, bits: Tensor, local: bool) -> Tensor:  # noqa: D401
        s = positive_scale(scale)
        qmax = qmax_of(bits)
        v, inside, sign_x, q = _levels(x, s, qmax)
        out = q * s
        ctx.local = local
        wants_params = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        if not (ctx.needs_input_grad[0] or wants_params):
            return out
        rounding = v.neg_().add_(q).masked_fill_(~inside, 0.0)  # (q - x/s) where in range
        clipped = sign_x.masked_fill_(inside, 0.0)  # sign(x) where clipped
        if local and wants_params:  # Local Gradient ignores the upstream gradient: reduce now, save [N, 1]
            weight = torch.sign(out - x)  # d E / d x̂ (times d)
            grads = _param_grads(weight, rounding, clipped, s, qmax, scale, bits, ctx.needs_input_grad, True)
            ctx.save_for_backward(inside if ctx.needs_input_grad[0] else None, *grads)
        else:
            ctx.save_for_backward(inside, rounding, clipped, s, qmax, scale, bits)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.local and len(ctx.saved_tensors) == 3:
            inside, grad_scale, grad_bits = ctx.saved_tensors
        else:
            inside, rounding, clipped, s, qmax, scale, bits = ctx.saved_tensors
            grad_scale, grad_bits = _param_grads(
                grad, rounding, clipped, s, qmax, scale, bits, ctx.needs_input_grad, False
            )
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        return grad_x, grad_scale, grad_bits, None


def _param_grads(
    w: Tensor,
    rounding: Tensor,
    clipped: Tensor,
    s: Tensor,
    qmax: Tensor,
    scale: Tensor,
    bits: Tensor,
    needs: tuple[bool, ...],
    local: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """The scale and bit gradients for the per-element weights ``w`` (task gradient, or ``sign(x̂ - x)``
    averaged over each parameter's elements with ``local``)."""
    grad_scale = grad_bits = None
    if not (needs[1] or needs[2]):
        return grad_scale, grad_bits
    at_clip = (w * clipped).sum_to_size(qmax.shape)  # Σ w · sign(x) over the clipped values
    count = rounding.numel() // max(qmax.numel(), 1) if local else 1  # local: a mean over them
    if needs[1]:
        in_range = (w * rounding).sum_to_size(qmax.shape)
        grad_scale = ((in_range + at_clip * qmax) / count * torch.sign(scale)).sum_to_size(scale.shape)
    if needs[2]:
        grad_bits = (at_clip * (qmax + 1) * LN2 * s / count * torch.sign(bits)).sum_to_size(bits.shape)
    return grad_scale, grad_bits


class A2QRoundSparseRows(torch.autograd.Function):
    """:class:`A2QRound` with Local Gradient for mostly-zero rows (bag-of-words inputs) and per-row parameters,
    computed on the non-zero values only: a zero quantizes to 0 and adds nothing to either gradient
    (``sign(x) = 0``, ``x̂ - x = 0``), so the results are the dense ones (up to the order of the sums)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, bits: Tensor, rows: Tensor, cols: Tensor) -> Tensor:  # noqa: D401
        s_rows, qmax_rows = positive_scale(scale), qmax_of(bits)
        xv = x[rows, cols]
        s, qmax = s_rows.reshape(-1)[rows], qmax_rows.reshape(-1)[rows]
        v, inside, sign_x, q = _levels(xv, s, qmax)
        out_v = q * s
        out = torch.zeros_like(x)
        out[rows, cols] = out_v
        weight = torch.sign(out_v - xv)
        n, count = x.shape[0], max(x.shape[1], 1)
        at_clip = x.new_zeros(n).index_add_(0, rows, weight * sign_x.masked_fill(inside, 0.0)).view(-1, 1)
        in_range = x.new_zeros(n).index_add_(0, rows, weight * (q - v).masked_fill_(~inside, 0.0)).view(-1, 1)
        grad_scale = (in_range + at_clip * qmax_rows) / count * torch.sign(scale)
        grad_bits = at_clip * (qmax_rows + 1) * LN2 * s_rows / count * torch.sign(bits)
        ctx.save_for_backward(grad_scale, grad_bits)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad_scale, grad_bits = ctx.saved_tensors
        return None, grad_scale, grad_bits, None, None


#: below this fraction of non-zero values, per-row Local Gradient runs on the non-zeros only
SPARSE_DENSITY = 0.25


def a2q_quantize(x: Tensor, scale: Tensor, bits: Tensor, local: bool = False) -> Tensor:
    """A²Q's fake quantization; without autograd (``no_grad``, validation) only the forward values."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, scale, bits)):
        per_row = x.dim() == 2 and scale.shape == bits.shape == (x.shape[0], 1)
        if local and per_row and not x.requires_grad:
            rows, cols = x.nonzero(as_tuple=True)
            if rows.numel() < SPARSE_DENSITY * x.numel():
                return A2QRoundSparseRows.apply(x, scale, bits, rows, cols)
        return A2QRound.apply(x, scale, bits, local)
    s = positive_scale(scale)
    q = torch.minimum((x / s).abs(), qmax_of(bits)).add_(0.5).floor_().mul_(torch.sign(x))
    return q * s


def along_axis(param: Tensor, x: Tensor, axis: int) -> Tensor:
    """A 0-d or 1-d parameter viewed to broadcast along ``axis`` of ``x``."""
    if param.dim() == 0:
        return param
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return param.reshape(shape)


def nns_thresholds(scale: Tensor, bits: Tensor) -> Tensor:
    """Each group's largest representable magnitude ``qmax_k · s_k`` (float32, what the graph compares)."""
    return (qmax_of(bits) * positive_scale(scale.detach())).float()


def nns_groups(x: Tensor, thresholds: Tensor) -> Tensor:
    """NNS group of each row: ``argmin_k (max_j |x_ij| - t_k)²`` (first index on ties, like ONNX ArgMin)."""
    rows = x.detach().abs().reshape(x.shape[0], -1).amax(dim=1, keepdim=True)
    diff = rows - thresholds.reshape(1, -1)
    return (diff * diff).argmin(dim=1)


def _symmetric_qparams(scale: Tensor, qmax: Tensor, axis: int) -> QParams:
    qmax_i = qmax.to(torch.int32)
    return QParams(
        scale=positive_scale(scale.detach()).float(),
        zero_point=torch.zeros_like(qmax_i),
        qmin=-qmax_i,
        qmax=qmax_i,
        axis=axis,
    )


def _init_scale(init: QParams | None, spec: QuantSpec, count: int | None) -> Tensor:
    """Initial scales: the calibrated symmetric range over ``qmax`` at the spec's bits, else 1."""
    if init is None:
        return torch.ones(() if count is None else (count,))
    bound = torch.maximum(
        ((init.qmin - init.zero_point) * init.scale).abs(), ((init.qmax - init.zero_point) * init.scale).abs()
    ).float()
    qmax = float(2 ** (spec.bits - 1) - 1)
    scale = torch.where(bound > 0, bound / max(qmax, 1.0), torch.ones_like(bound))
    return scale.reshape(()) if count is None else scale.reshape(-1).expand(count).clone()


class A2QBase(Quantizer):
    """Shared state: ``local_gradient`` (set by the training pass) and whether negative values were seen."""

    def __init__(self) -> None:
        super().__init__()
        self.local_gradient = False
        self.register_buffer("seen_negative", torch.tensor(False))

    def _observe_sign(self, x: Tensor) -> None:
        if self.training and not bool(self.seen_negative):
            self.seen_negative.fill_(bool((x.detach() < 0).any()))

    def learned_bits(self) -> bool:
        return isinstance(getattr(self, "bits", None), nn.Parameter)

    def row_bits(self, x: Tensor | None = None) -> Tensor:
        """Integer bits of each row (learned quantizers) for reports; NNS needs ``x`` to choose groups."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"bits={'learned' if self.learned_bits() else self.spec.bits}, local={self.local_gradient}"


@register_quantizer
class A2QQuantizer(A2QBase):
    """``a2q``: per-node learned (s_i, b_i) for PER_NODE specs; learned scales at fixed bits otherwise."""

    kind = "a2q"

    def __init__(self, spec: QuantSpec, scale: Tensor) -> None:
        super().__init__()
        self.spec = spec
        self.axis = spec.axis if scale.dim() else 0
        self.scale = nn.Parameter(scale.float().clone())
        bits = torch.full_like(self.scale.detach(), float(spec.bits))
        if spec.granularity == Granularity.PER_NODE:
            self.bits = nn.Parameter(bits)
        else:
            self.register_buffer("bits", bits)

    @classmethod
    def from_spec(cls, spec: QuantSpec, init: QParams | None, settings: QuantizerSettings) -> A2QQuantizer:
        per_axis = spec.granularity in (Granularity.PER_NODE, Granularity.PER_CHANNEL)
        count = int(init.scale.numel()) if per_axis and init is not None else None
        if per_axis and count is None:
            raise ValueError(
                f"a2q {spec.granularity} quantizer needs calibrated ranges (run calibrate first)"
            )
        return cls(spec, _init_scale(init, spec, count))

    def forward(self, x: Tensor, protect: Tensor | None = None) -> Tensor:
        self._observe_sign(x)
        local = self.local_gradient and self.training
        scale, bits = along_axis(self.scale, x, self.axis), along_axis(self.bits, x, self.axis)
        return a2q_quantize(x, scale, bits, local)

    def qparams(self) -> QParams:
        return _symmetric_qparams(self.scale, qmax_of(self.bits), self.axis)

    def row_bits(self, x: Tensor | None = None) -> Tensor:
        return integer_bits(self.bits)

    def bit_count(self) -> float:
        return float(integer_bits(self.bits).mean())

    def storage_bits(self) -> int:
        return int(integer_bits(self.bits).max())


@register_quantizer
class A2QNNSQuantizer(A2QBase):
    """``a2q-nns``: ``num_groups`` learned (s_k, b_k); each row picks its group by :func:`nns_groups`."""

    kind = "a2q-nns"

    def __init__(self, spec: QuantSpec, scale: Tensor) -> None:
        super().__init__()
        self.spec = spec
        self.scale = nn.Parameter(scale.float().clone())
        self.bits = nn.Parameter(torch.full_like(self.scale.detach(), float(spec.bits)))

    @classmethod
    def from_spec(cls, spec: QuantSpec, init: QParams | None, settings: QuantizerSettings) -> A2QNNSQuantizer:
        """Groups' ranges spread geometrically from 1/1000 of the calibrated range up to all of it."""
        groups = int(spec.num_groups or 1000)
        top = float(_init_scale(init, spec, None).max()) if init is not None else 1.0
        spread = torch.logspace(-3.0, 0.0, groups) if groups > 1 else torch.ones(1)
        return cls(spec, top * spread)

    def thresholds(self) -> Tensor:
        return nns_thresholds(self.scale, self.bits)

    def groups(self, x: Tensor) -> Tensor:
        return nns_groups(x, self.thresholds())

    def forward(self, x: Tensor, protect: Tensor | None = None) -> Tensor:
        self._observe_sign(x)
        group = self.groups(x)
        scale = along_axis(self.scale.index_select(0, group), x, 0)
        bits = along_axis(self.bits.index_select(0, group), x, 0)
        return a2q_quantize(x, scale, bits, self.local_gradient and self.training)

    def qparams(self) -> QParams:
        """The group tables (axis 0); the exported graph gathers them by each row's group."""
        return _symmetric_qparams(self.scale, qmax_of(self.bits), 0)

    def row_bits(self, x: Tensor | None = None) -> Tensor:
        if x is None:
            raise ValueError("NNS bits per row depend on the features: pass x")
        return integer_bits(self.bits).index_select(0, self.groups(x))

    def bit_count(self) -> float:
        return float(integer_bits(self.bits).mean())

    def storage_bits(self) -> int:
        return int(integer_bits(self.bits).max())
