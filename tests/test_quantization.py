"""Tests for courselib.quantization: hand-worked uniform quantization, PyTorch answer keys, XNOR alpha."""

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

from courselib import quantization as Q
from courselib.measure import state_dict_bytes
from courselib.models import MLP

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ hand-worked examples
def test_affine_two_bits_hand_worked():
    # range [-1, 2]: scale = 3 / 3 = 1, zero_point = round(1) = 1, q = round(x) + 1 (0.5 rounds to 0)
    q, s, z = Q.quantize_uniform(np.array([-1.0, 0.0, 0.5, 2.0]), 2)
    assert q.tolist() == [0, 1, 1, 3] and q.dtype == np.uint8
    assert s == 1.0 and z == 1
    assert isinstance(s, float) and isinstance(z, int)
    np.testing.assert_array_equal(Q.dequantize(q, s, z), [-1.0, 0.0, 0.0, 2.0])


def test_affine_eight_bits_hand_worked():
    # range [-0.5, 2.05]: scale = 2.55 / 255 = 0.01, zero_point = round(50) = 50
    x = np.array([-0.5, 0.0, 0.013, 1.0, 2.05])
    q, s, z = Q.quantize_uniform(x, 8)
    assert s == pytest.approx(0.01) and z == 50
    assert q.tolist() == [0, 50, 51, 150, 255]


def test_symmetric_two_bits_hand_worked():
    # max|x| = 1: scale = 1 / 1.5 = 2/3, zero_point = 2, q = round(1.5 x) + 2 (ties to even: -1.5 -> -2)
    q, s, z = Q.quantize_uniform(np.array([-1.0, 0.25, 0.5, 1.0]), 2, symmetric=True)
    assert s == pytest.approx(2 / 3) and z == 2
    assert q.tolist() == [0, 2, 3, 3]


def test_range_includes_zero_for_positive_and_negative_data():
    q, s, z = Q.quantize_uniform(np.array([1.0, 2.0, 3.0]), 2)  # range [0, 3]
    assert (q.tolist(), s, z) == ([1, 2, 3], 1.0, 0)
    q, s, z = Q.quantize_uniform(np.array([-3.0, -2.0, -1.0]), 2)  # range [-3, 0]
    assert (q.tolist(), s, z) == ([0, 1, 2], 1.0, 3)
    # zero is always exact, whatever the data
    x = np.concatenate([[0.0], np.random.default_rng(0).uniform(0.3, 5.0, 50)])
    q, s, z = Q.quantize_uniform(x, 3)
    assert Q.dequantize(q, s, z)[0] == 0.0


def test_constant_tensors():
    q, s, z = Q.quantize_uniform(np.zeros((3, 4)), 8)
    assert s == 0.0 and z == 0 and not q.any()
    np.testing.assert_array_equal(Q.dequantize(q, s, z), np.zeros((3, 4), np.float32))
    # a nonzero constant: range [0, c], represented exactly by the top integer
    q, s, z = Q.quantize_uniform(np.full(5, 2.0), 2)
    assert s == pytest.approx(2 / 3) and z == 0 and q.tolist() == [3] * 5
    np.testing.assert_allclose(Q.dequantize(q, s, z), 2.0)
    # symmetric: the grid is s * {-2, -1, 0, 1} with s = 2 / 1.5; -2 maps to -1.5, a tie, rounded to even -2
    q, s, z = Q.quantize_uniform(np.full(5, -2.0), 2, symmetric=True)
    assert z == 2 and q.tolist() == [0] * 5
    np.testing.assert_allclose(Q.dequantize(q, s, z), -8 / 3, rtol=1e-6)


def test_per_channel_hand_worked_with_a_zero_channel():
    W = np.array([[-1.0, 2.0], [0.0, 0.3], [0.0, 0.0]])
    q, s, z = Q.quantize_uniform(W, 2, per_channel_axis=0)
    assert s.shape == (3, 1) and z.shape == (3, 1)
    np.testing.assert_allclose(s.ravel(), [1.0, 0.1, 0.0])
    assert z.ravel().tolist() == [1, 0, 0]
    assert q.tolist() == [[0, 3], [0, 3], [0, 0]]
    np.testing.assert_allclose(Q.dequantize(q, s, z), [[-1, 2], [0, 0.3], [0, 0]], rtol=1e-6)
    # the same with 1-D vectors and axis=, as PyTorch stores them
    np.testing.assert_allclose(Q.dequantize(q, s.ravel(), z.ravel(), axis=0), Q.dequantize(q, s, z))


def test_error_is_at_most_half_a_step_and_falls_with_bits():
    x = _randn(2000).numpy()
    errs = []
    for b in (1, 2, 4, 8, 12):
        q, s, z = Q.quantize_uniform(x, b)
        x_hat = Q.dequantize(q, s, z)
        assert np.abs(x - x_hat).max() <= s / 2 + 1e-6
        assert q.max() <= 2**b - 1
        errs.append(Q.quantization_error(x, x_hat))
    assert all(a > b for a, b in zip(errs, errs[1:]))


def test_torch_in_torch_out_and_dtypes():
    x = _randn(4, 5)
    q, s, z = Q.quantize_uniform(x, 8, per_channel_axis=1)
    assert isinstance(q, torch.Tensor) and q.dtype == torch.uint8
    assert isinstance(s, torch.Tensor) and s.shape == (1, 5)
    qn, sn, zn = Q.quantize_uniform(x.numpy(), 8, per_channel_axis=1)
    np.testing.assert_array_equal(q.numpy(), qn)
    np.testing.assert_array_equal(s.numpy(), sn)
    assert isinstance(Q.dequantize(q, s, z), torch.Tensor)
    q12, _, _ = Q.quantize_uniform(x, 12)
    assert q12.dtype == torch.int32 and int(q12.max()) <= 4095
    out = Q.fake_quantize(x, 4)
    assert out.dtype == torch.float32 and out.shape == x.shape


# ------------------------------------------------------------------ PyTorch answer keys
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_integers_as_torch_quantize_per_tensor(seed):
    x = _randn(3000, seed=seed) * 0.7 + 0.2
    q, s, z = Q.quantize_uniform(x, 8)
    tq = torch.quantize_per_tensor(x, s, z, torch.quint8)
    assert torch.equal(tq.int_repr(), q)
    torch.testing.assert_close(Q.dequantize(q, s, z), tq.dequantize(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1])
def test_same_integers_as_torch_quantize_per_channel(axis):
    W = _randn(16, 24, seed=3) * torch.linspace(0.05, 3.0, 16)[:, None]
    q, s, z = Q.quantize_uniform(W, 8, per_channel_axis=axis)
    tq = torch.quantize_per_channel(W, s.ravel(), z.ravel(), axis, torch.quint8)
    assert torch.equal(tq.int_repr(), q)
    torch.testing.assert_close(Q.dequantize(q, s, z), tq.dequantize(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("symmetric", [False, True])
def test_scale_and_zero_point_match_minmax_observer(symmetric):
    scheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    for seed in range(5):
        x = _randn(500, seed=seed) * (seed + 1) + (seed - 2)
        obs = MinMaxObserver(dtype=torch.quint8, qscheme=scheme)
        obs(x)
        ts, tz = obs.calculate_qparams()
        _, s, z = Q.quantize_uniform(x, 8, symmetric=symmetric)
        assert s == pytest.approx(ts.item(), rel=1e-6)
        assert z == tz.item()


def test_per_channel_parameters_match_per_channel_observer():
    W = _randn(12, 30, seed=4) * torch.linspace(0.1, 4.0, 12)[:, None] + 0.3
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine)
    obs(W)
    ts, tz = obs.calculate_qparams()
    _, s, z = Q.quantize_uniform(W, 8, per_channel_axis=0)
    torch.testing.assert_close(s.ravel().float(), ts, rtol=1e-6, atol=0)
    assert torch.equal(z.ravel(), tz.long())


def _trained_like_mlp():
    torch.manual_seed(0)
    return MLP(hidden=(128,)).eval()


def test_static_int8_weights_are_our_symmetric_per_channel_integers():
    model = _trained_like_mlp()
    X = torch.rand(200, 8, 8, generator=torch.Generator().manual_seed(0))
    qm = Q.quantize_static_int8(model, X)
    qlin = qm.module.net[2]  # the last Linear, int8 per-channel symmetric weights
    w = model.net[2].weight.detach()
    q, s, z = Q.quantize_uniform(w, 8, symmetric=True, per_channel_axis=0)
    tw = qlin.weight()
    # PyTorch stores signed int8 with zero_point 0; ours is unsigned with zero_point 128. The
    # channel's largest |w| lands on a rounding tie (+-127.5), decided by float32 vs float64 arithmetic.
    diff = tw.int_repr().int() - (q.int() - 128)
    tie = w.abs() == w.abs().amax(dim=1, keepdim=True)
    assert not diff[~tie].any() and diff[tie].abs().max() <= 1
    torch.testing.assert_close(tw.q_per_channel_scales().float(), s.ravel().float(), rtol=1e-6, atol=0)
    # the int8 model computes nearly what the float model computes, and is smaller on disk
    with torch.no_grad():
        torch.testing.assert_close(qm(X), model(X), atol=0.05, rtol=0)
    assert state_dict_bytes(qm) < state_dict_bytes(model) / 2


def test_dynamic_int8_close_to_float_and_smaller():
    model = _trained_like_mlp()
    X = torch.rand(100, 8, 8, generator=torch.Generator().manual_seed(1))
    dm = Q.quantize_dynamic_int8(model)
    with torch.no_grad():
        torch.testing.assert_close(dm(X), model(X), atol=0.05, rtol=0)
    assert state_dict_bytes(dm) < state_dict_bytes(model) / 2
    assert isinstance(model.net[0], nn.Linear)  # the original is untouched


@pytest.mark.skipif(
    not {"qnnpack", "x86"} <= set(torch.backends.quantized.supported_engines),
    reason="needs the x86 and qnnpack engines",
)
def test_int8_conversions_leave_the_global_engine_alone():
    model = _trained_like_mlp()
    X = torch.rand(64, 8, 8, generator=torch.Generator().manual_seed(2))
    old = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "qnnpack"  # the caller's engine
        sm = Q.quantize_static_int8(model, X, backend="x86")
        assert torch.backends.quantized.engine == "qnnpack"
        dm = Q.quantize_dynamic_int8(model, backend="x86")
        assert torch.backends.quantized.engine == "qnnpack"
        with pytest.raises(ValueError, match="calibration_X"):
            Q.quantize_static_int8(model, X[:0], backend="x86")
        assert torch.backends.quantized.engine == "qnnpack"
        with torch.no_grad():  # the converted models run with their own kernels under any engine
            got_s, got_d = sm(X), dm(X)
            torch.backends.quantized.engine = "x86"
            torch.testing.assert_close(sm(X), got_s, atol=0, rtol=0)
            torch.testing.assert_close(dm(X), got_d, atol=0, rtol=0)
    finally:
        torch.backends.quantized.engine = old


# ------------------------------------------------------------------ XNOR-Net alpha
def test_xnor_alpha_hand_worked_and_lecture_example():
    w = np.array([[0.1, 0.1, 0.1, 0.1], [-2.0, 1.0, 0.0, -1.0]])
    b, alpha = Q.xnor_binarize(w)
    np.testing.assert_array_equal(b, [[1, 1, 1, 1], [-1, 1, 1, -1]])  # sign(0) = +1
    np.testing.assert_allclose(alpha.ravel(), [0.1, 1.0])
    # sign alone turns [0.1]*4 into [1]*4; alpha * sign recovers it exactly
    assert Q.quantization_error(w[0], b[0]) == pytest.approx(81.0)
    assert Q.quantization_error(w[0], (alpha * b)[0]) == pytest.approx(0.0, abs=1e-12)
    _, a_all = Q.xnor_binarize(w, axis=None)
    assert a_all.shape == (1, 1) and a_all.item() == pytest.approx(np.abs(w).mean())


def test_xnor_alpha_is_the_least_squares_optimum():
    W = _randn(6, 50, seed=5).numpy()
    b, alpha = Q.xnor_binarize(W, axis=0)
    for i in range(W.shape[0]):
        res = minimize_scalar(
            lambda a: np.sum((W[i] - a * b[i]) ** 2), bounds=(0, 5), method="bounded", options={"xatol": 1e-10}
        )
        assert alpha[i, 0] == pytest.approx(res.x, rel=1e-5)
    assert Q.quantization_error(W, alpha * b) < Q.quantization_error(W, b)


def test_xnor_conv_weight_one_alpha_per_output_channel():
    w = _randn(4, 3, 3, 3, seed=6)
    b, alpha = Q.xnor_binarize(w)
    assert alpha.shape == (4, 1, 1, 1)
    torch.testing.assert_close(alpha.ravel(), w.abs().mean(dim=(1, 2, 3)))


# ------------------------------------------------------------------ models
@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quantize_weights_levels(per_channel):
    model = _trained_like_mlp()
    before = [p.clone() for p in model.parameters()]
    qm = Q.fake_quantize_weights(model, 2, per_channel=per_channel)
    for p, p0 in zip(model.parameters(), before):
        assert torch.equal(p, p0)
    for name, m in Q.weight_layers(qm).items():
        w = m.weight.detach()
        rows = w if per_channel else w.reshape(1, -1)
        assert max(len(torch.unique(r)) for r in rows) <= 4
        torch.testing.assert_close(m.bias, dict(model.named_modules())[name].bias)


def test_fake_quantize_weights_sign_and_xnor():
    model = _trained_like_mlp()
    s = Q.fake_quantize_weights(model, 1, method="sign")
    x = Q.fake_quantize_weights(model, 1, method="xnor", per_channel=True)
    w = model.net[0].weight.detach()
    assert set(s.net[0].weight.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(x.net[0].weight, w.abs().mean(1, keepdim=True) * torch.where(w >= 0, 1.0, -1.0))


def test_eight_bit_weights_keep_predictions():
    model = _trained_like_mlp()
    X = torch.rand(300, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(X).argmax(1)
        q8 = Q.fake_quantize_weights(model, 8, per_channel=True)(X).argmax(1)
    assert (ref == q8).float().mean() > 0.97


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("n_bits, exc", [(0, ValueError), (17, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_bits(n_bits, exc):
    with pytest.raises(exc, match="n_bits"):
        Q.quantize_uniform(np.ones(3), n_bits)


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        Q.quantize_uniform(np.array([1.0, np.nan]), 8)
    with pytest.raises(ValueError, match="empty"):
        Q.quantize_uniform(np.array([]), 8)
    with pytest.raises(TypeError, match="NumPy array or a torch tensor"):
        Q.quantize_uniform("abc", 8)
    with pytest.raises(ValueError, match="out of range"):
        Q.quantize_uniform(np.ones((2, 3)), 8, per_channel_axis=2)
    with pytest.raises(TypeError, match="integers"):
        Q.dequantize(np.array([0.5]), 1.0, 0)
    with pytest.raises(ValueError, match="axis"):
        Q.dequantize(np.zeros((3, 3), np.uint8), np.ones(3), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="method"):
        Q.fake_quantize_weights(_trained_like_mlp(), 1, method="ternary")
    with pytest.raises(ValueError, match="1-bit"):
        Q.fake_quantize_weights(_trained_like_mlp(), 4, method="xnor")
    with pytest.raises(ValueError, match="backend"):
        Q.quantize_dynamic_int8(_trained_like_mlp(), backend="tpu")
    with pytest.raises(ValueError, match="shape"):
        Q.quantization_error(np.ones(3), np.ones(4))


# ------------------------------------------------------------------ explorer
@pytest.mark.parametrize("n_bits, per_channel, symmetric", [(8, False, False), (2, True, False), (1, False, True)])
def test_explorer_draws(n_bits, per_channel, symmetric):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = Q.quantization_explorer(n_bits=n_bits, per_channel=per_channel, symmetric=symmetric)
    assert len(fig.axes) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="2-D"):
        Q.quantization_explorer(weight=np.ones(4))


def test_fake_quantize_weights_sign_of_zero_is_plus_one():
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, -0.0, 1.5], [-1.0, 0.0, 2.0]]))
    out = Q.fake_quantize_weights(lin, 1, method="sign")
    assert torch.equal(out.weight, torch.tensor([[1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]]))  # sign(0) = +1
