"""Tests for courselib.binaryconnect (BinaryConnect layers, STE, packing, XNOR-popcount kernels)."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from courselib import binaryconnect as bc
from courselib.binary_codes import pack_codes

torch.set_num_threads(1)


# ------------------------------------------------------------------ binarization
def test_hard_sigmoid_hand_values_and_numpy():
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 4.0])
    expected = torch.tensor([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert torch.equal(bc.hard_sigmoid(x), expected)
    np.testing.assert_array_equal(bc.hard_sigmoid(x.numpy()), expected.numpy())
    # the formula max(0, min(1, (x + 1) / 2)) on random values
    r = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3
    assert torch.equal(bc.hard_sigmoid(r), torch.maximum(torch.zeros(()), torch.minimum(torch.ones(()), (r + 1) / 2)))


def test_deterministic_binarize_lecture_example_and_sign_zero():
    assert torch.equal(bc.binarize(torch.tensor([0.1, 0.1, 0.1, 0.1])), torch.ones(4))
    out = bc.binarize(torch.tensor([-2.0, -1e-8, 0.0, -0.0, 1e-8, 0.7]))
    assert torch.equal(out, torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]))
    assert out.dtype == torch.float32


def test_stochastic_binarize_mean_within_bound():
    n = 20000
    w = torch.tensor([-1.0, -0.6, -0.1, 0.0, 0.1, 0.45, 1.0])
    gen = torch.Generator().manual_seed(0)
    samples = bc.binarize(w.expand(n, -1).contiguous(), stochastic=True, generator=gen)
    assert set(samples.unique().tolist()) <= {-1.0, 1.0}
    mean = samples.mean(0)
    # Var(w_b) = 1 - w^2 <= 1: 5 standard errors of the mean
    bound = 5 * torch.sqrt((1 - w**2).clamp_min(1e-12) / n)
    assert torch.all((mean - w).abs() <= bound + 1e-12)
    # beyond [-1, 1] the sample is deterministic
    far = bc.binarize(torch.tensor([-5.0, 5.0]).repeat(100), stochastic=True, generator=gen)
    assert torch.equal(far, torch.tensor([-1.0, 1.0]).repeat(100))


def test_stochastic_binarize_seeded_generator_reproducible():
    w = torch.linspace(-1, 1, 50)
    a = bc.binarize(w, stochastic=True, generator=torch.Generator().manual_seed(3))
    b = bc.binarize(w, stochastic=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_binarize_bad_input():
    with pytest.raises(TypeError):
        bc.binarize(np.zeros(3))
    with pytest.raises(TypeError):
        bc.binarize(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError):
        bc.binarize(torch.zeros(3), stochastic="yes")
    with pytest.raises(TypeError):
        bc.binarize(torch.zeros(3), stochastic=True, generator=1)


# ------------------------------------------------------------------ STE
def test_ste_gradient_equals_upstream_gradient():
    w = torch.tensor([0.3, -0.2, 0.0, -0.9], requires_grad=True)
    wb = bc.binarize_ste(w)
    assert torch.equal(wb.detach(), torch.tensor([1.0, -1.0, 1.0, -1.0]))
    upstream = torch.tensor([0.5, -2.0, 3.0, 0.25])
    wb.backward(upstream)
    assert torch.equal(w.grad, upstream)


def test_ste_hand_checked_linear_layer_gradient():
    # y = x . w_b, loss = y: dL/dw_b = x, and the STE hands that to w unchanged.
    layer = bc.BinaryLinear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.2, -0.7, 0.0]]))
    x = torch.tensor([[1.0, 2.0, -3.0]])
    y = layer(x)
    assert torch.equal(y, torch.tensor([[1.0 - 2.0 - 3.0]]))
    y.sum().backward()
    assert torch.equal(layer.weight.grad, x)


def test_stochastic_ste_gradient_identity():
    w = torch.full((5,), 0.1, requires_grad=True)
    out = bc.binarize_ste(w, True, torch.Generator().manual_seed(0))
    g = torch.arange(5.0)
    out.backward(g)
    assert torch.equal(w.grad, g)


# ------------------------------------------------------------------ layers
def test_binary_linear_equals_f_linear_with_sign_weights():
    torch.manual_seed(0)
    layer = bc.BinaryLinear(7, 4)
    assert isinstance(layer, nn.Linear) and isinstance(layer.weight, nn.Parameter)
    x = torch.randn(5, 7)
    expected = F.linear(x, torch.where(layer.weight >= 0, 1.0, -1.0), layer.bias)
    assert torch.allclose(layer(x), expected, atol=0, rtol=0)
    layer.eval()
    assert torch.equal(layer(x), expected)


def test_binary_conv2d_equals_f_conv2d_with_sign_weights():
    torch.manual_seed(1)
    conv = bc.BinaryConv2d(3, 5, 3, padding=1, stride=2)
    assert isinstance(conv, nn.Conv2d)
    x = torch.randn(2, 3, 9, 9)
    wb = torch.where(conv.weight >= 0, 1.0, -1.0)
    expected = F.conv2d(x, wb, conv.bias, stride=2, padding=1)
    assert torch.equal(conv(x), expected)
    conv.eval()
    assert torch.equal(conv(x), expected)


def test_eval_weights_real_and_stochastic_training():
    torch.manual_seed(2)
    layer = bc.BinaryLinear(6, 3, stochastic=True, eval_weights="real")
    x = torch.randn(4, 6)
    layer.eval()
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.train()
    layer.generator = torch.Generator().manual_seed(0)
    y1 = layer(x)
    wb = bc.binarize(layer.weight.detach(), True, torch.Generator().manual_seed(0))
    assert torch.equal(y1, F.linear(x, wb, layer.bias))
    with pytest.raises(ValueError):
        bc.BinaryLinear(2, 2, eval_weights="mean")
    with pytest.raises(TypeError):
        bc.BinaryConv2d(1, 1, 3, stochastic=1)


def test_clip_latent_weights_keeps_range_after_training():
    torch.manual_seed(0)
    model = bc.make_binary_mlp("det", in_features=6, hidden=(8,), n_classes=3)
    with torch.no_grad():
        for m in bc.binary_layers(model).values():
            m.weight.mul_(50)
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        assert bc.clip_latent_weights_(model) is model
        for m in bc.binary_layers(model).values():
            assert m.weight.abs().max() <= 1.0
    # values inside the range are untouched
    layer = bc.BinaryLinear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -3.0]]))
    bc.clip_latent_weights_(layer)
    assert torch.equal(layer.weight.detach(), torch.tensor([[0.5, -1.0]]))
    with pytest.raises(ValueError):
        bc.clip_latent_weights_(nn.Linear(2, 2))


def test_training_reaches_good_accuracy_on_digits():
    from courselib.data import load_dataset
    from courselib.training import evaluate

    Xtr, ytr = load_dataset("digits", "train")
    Xte, yte = load_dataset("digits", "test")
    torch.manual_seed(0)
    model = bc.make_binary_mlp("det", hidden=(128,))
    bc.init_latent_weights_(model, seed=0)
    bc.fit_binaryconnect(model, (Xtr, ytr), epochs=8, seed=0)
    for m in bc.binary_layers(model).values():
        assert m.weight.abs().max() <= 1.0
    assert evaluate(model, (Xte, yte))["accuracy"] >= 0.9


# ------------------------------------------------------------------ packing
def _trained_like_model(mode="det"):
    torch.manual_seed(0)
    model = bc.make_binary_cnn(mode, channels=(4, 6), image_size=8)
    bc.init_latent_weights_(model, seed=0)
    x = torch.randn(32, 1, 8, 8)
    model.train()
    with torch.no_grad():
        for _ in range(3):  # populate BatchNorm running statistics
            model(x)
        for name, p in model.named_parameters():
            if not name.endswith("weight") or p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval(), x


def test_pack_load_round_trip_identical_outputs():
    model, x = _trained_like_model()
    packed = bc.pack_binary_weights(model)
    buf = io.BytesIO()
    torch.save(packed, buf)
    buf.seek(0)
    packed2 = torch.load(buf, weights_only=True)
    torch.manual_seed(123)
    fresh = bc.make_binary_cnn("det", channels=(4, 6), image_size=8).eval()  # different weights
    assert not torch.equal(fresh(x), model(x))
    assert bc.load_packed_weights(fresh, packed2) is fresh
    assert torch.equal(fresh(x), model(x))
    for (k, v), (k2, v2) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert k == k2
        if k.endswith("weight") and k.rsplit(".", 1)[0] in bc.binary_layers(model):
            assert torch.equal(v2, torch.where(v >= 0, 1.0, -1.0))
        else:
            assert torch.equal(v, v2)


def test_packed_codes_match_pack_codes_and_size():
    layer = bc.BinaryLinear(100, 3)
    packed = bc.pack_binary_weights(layer)
    codes = packed["binary"][""]["codes"].numpy()
    bits = (layer.weight.detach().reshape(1, -1) >= 0).numpy().astype(np.uint8)
    np.testing.assert_array_equal(codes, pack_codes(bits))
    sizes = bc.binary_weight_bytes(layer)
    assert sizes == {"binary_float32": 1200, "binary_packed": 38, "other": 12}
    assert sizes["binary_float32"] / sizes["binary_packed"] >= 31


def test_pack_binary_weights_zero_weight_is_bit_one():
    layer = bc.BinaryLinear(5, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, -0.0, -1.0, 0.3, -0.2], [0.0, 1.0, -1e-9, 0.0, -0.0]]))
    codes = bc.pack_binary_weights(layer)["binary"][""]["codes"].numpy()
    # bits 1,1,0,1,0, 1,1,0 | 1,1 (little-endian within each byte): sign(0) = +1
    np.testing.assert_array_equal(codes, [[0b01101011, 0b00000011]])
    fresh = bc.load_packed_weights(bc.BinaryLinear(5, 2, bias=False), bc.pack_binary_weights(layer))
    assert torch.equal(fresh.weight, torch.tensor([[1.0, 1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, 1.0, 1.0]]))


def test_pack_load_bad_input():
    with pytest.raises(ValueError):
        bc.pack_binary_weights(nn.Linear(3, 3))
    with pytest.raises(ValueError):
        bc.pack_binary_weights(bc.BinaryLinear(3, 3, eval_weights="real"))
    packed = bc.pack_binary_weights(bc.BinaryLinear(3, 3))
    with pytest.raises(ValueError):
        bc.load_packed_weights(bc.BinaryLinear(4, 3), packed)
    with pytest.raises(ValueError):
        bc.load_packed_weights(bc.BinaryLinear(3, 3), {"binary": {}})


# ------------------------------------------------------------------ XNOR-popcount
@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("n_bits", [1, 7, 63, 64, 100, 128, 200, 512])
def test_xnor_matmul_equals_float_pm1_matmul(n_bits, backend):
    rng = np.random.default_rng(n_bits)
    a = rng.integers(0, 2, size=(9, n_bits)).astype(np.uint8)
    b = rng.integers(0, 2, size=(5, n_bits)).astype(np.uint8)
    got = bc.xnor_popcount_matmul(pack_codes(a), pack_codes(b), n_bits, backend=backend)
    expected = (2.0 * a - 1) @ (2.0 * b - 1).T
    assert got.shape == (9, 5)
    np.testing.assert_array_equal(got, expected.astype(np.int64))


def test_xnor_matmul_ignores_dirty_padding_bits():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, size=(4, 13)).astype(np.uint8)
    b = rng.integers(0, 2, size=(3, 13)).astype(np.uint8)
    ac, bc_ = pack_codes(a), pack_codes(b)
    ac[:, -1] |= 0b11100000  # garbage above bit 13
    got = bc.xnor_popcount_matmul(ac, bc_, 13)
    np.testing.assert_array_equal(got, ((2.0 * a - 1) @ (2.0 * b - 1).T).astype(np.int64))


def test_xnor_matmul_bad_input():
    c = pack_codes(np.ones((2, 16), dtype=np.uint8))
    with pytest.raises(ValueError):
        bc.xnor_popcount_matmul(c, c, 17)
    with pytest.raises(ValueError):
        bc.xnor_popcount_matmul(c.astype(np.int32), c, 16)
    with pytest.raises(ValueError):
        bc.xnor_popcount_matmul(c, c, 0)
    with pytest.raises(ValueError):
        bc.xnor_popcount_matmul(c, c, 16, backend="gpu")


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize(
    "cfg",
    [
        dict(c=3, o=4, k=3, stride=1, padding=0, hw=7),
        dict(c=3, o=4, k=3, stride=1, padding=1, hw=7),
        dict(c=8, o=5, k=3, stride=2, padding=1, hw=9),
        dict(c=16, o=6, k=1, stride=1, padding=0, hw=5),
        dict(c=2, o=3, k=5, stride=1, padding=2, hw=6),
    ],
)
def test_binary_conv2d_equals_f_conv2d(cfg, backend):
    gen = torch.Generator().manual_seed(cfg["c"] * 10 + cfg["k"])
    x = bc.binarize(torch.randn(2, cfg["c"], cfg["hw"], cfg["hw"], generator=gen))
    w = bc.binarize(torch.randn(cfg["o"], cfg["c"], cfg["k"], cfg["k"], generator=gen))
    got = bc.binary_conv2d(x, w, stride=cfg["stride"], padding=cfg["padding"], backend=backend)
    expected = F.conv2d(x, w, stride=cfg["stride"], padding=cfg["padding"])
    assert got.shape == expected.shape
    assert torch.equal(got, expected)


def test_binary_conv2d_bad_input():
    x = torch.ones(1, 2, 5, 5)
    w = torch.ones(3, 2, 3, 3)
    with pytest.raises(ValueError):
        bc.binary_conv2d(x * 0.5, w)
    with pytest.raises(ValueError):
        bc.binary_conv2d(x, torch.ones(3, 4, 3, 3))
    with pytest.raises(ValueError):
        bc.binary_conv2d(x, w, padding=-1)
    with pytest.raises(ValueError):
        bc.binary_conv2d(torch.ones(2, 5, 5), w)
    with pytest.raises(TypeError):
        bc.binary_conv2d([[1]], w)


# ------------------------------------------------------------------ models, recipe, explorer
@pytest.mark.parametrize("mode", bc.MODES)
def test_model_builders(mode):
    mlp = bc.make_binary_mlp(mode, in_features=64, hidden=(16,))
    cnn = bc.make_binary_cnn(mode, channels=(4, 8), image_size=8)
    assert mlp(torch.rand(3, 8, 8)).shape == (3, 10)
    assert cnn(torch.rand(3, 8, 8)).shape == (3, 10)
    n_bin = len(bc.binary_layers(cnn))
    assert n_bin == (0 if mode == "float" else 3)
    if mode == "stoch":
        assert all(m.stochastic for m in bc.binary_layers(mlp).values())
    with pytest.raises(ValueError):
        bc.make_binary_mlp("ternary")


def test_optimizer_glorot_scale_and_init():
    layer = bc.BinaryLinear(100, 50)
    opt = bc.binaryconnect_optimizer(layer, lr=1e-3)
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[1] == pytest.approx(1e-3 / np.sqrt(1.5 / 150))
    bc.init_latent_weights_(layer, seed=0)
    assert layer.weight.abs().max() <= 1 and layer.weight.abs().max() > 0.9
    with pytest.raises(ValueError):
        bc.binaryconnect_optimizer(layer, lr=0)


@pytest.mark.parametrize("mode, w", [("stochastic", 0.1), ("deterministic", 0.1), ("stochastic", -0.8)])
def test_binarization_explorer_draws_the_samples_and_their_expectation(mode, w):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = bc.binarization_explorer(mode=mode, w=w, n_samples=50, seed=3)
    left, right = fig.axes
    samples = bc.binarize(
        torch.full((50,), w), stochastic=mode == "stochastic", generator=torch.Generator().manual_seed(3)
    )
    running = np.cumsum(samples.numpy()) / np.arange(1, 51)
    mean_line, w_line = left.lines
    np.testing.assert_array_equal(mean_line.get_xdata(), np.arange(1, 51))
    np.testing.assert_allclose(mean_line.get_ydata(), running)
    np.testing.assert_allclose(w_line.get_ydata(), [w, w])
    assert left.get_title() == f"{mode}: first samples " + " ".join(f"{int(v):+d}" for v in samples[:6])
    if mode == "deterministic":
        assert np.all(mean_line.get_ydata() == (1.0 if w >= 0 else -1.0))
    sign_curve, expectation, point = right.lines
    grid = sign_curve.get_xdata()
    np.testing.assert_array_equal(sign_curve.get_ydata(), np.where(grid >= 0, 1.0, -1.0))
    np.testing.assert_allclose(expectation.get_ydata(), np.clip(grid, -1, 1))  # 2 sigma(w) - 1 = clip(w)
    np.testing.assert_allclose(np.r_[point.get_xdata(), point.get_ydata()], [w, running[-1]])
    plt.close(fig)


def test_binarization_explorer_bad_input():
    with pytest.raises(ValueError):
        bc.binarization_explorer(mode="sign")
    with pytest.raises(ValueError, match="n_samples must be an integer >= 1, got 0"):
        bc.binarization_explorer(n_samples=0)


def test_packed_codes_have_one_validator():
    """binary_codes and binaryconnect reject the same bad codes with the same message (courselib._bits)."""
    from courselib.binary_codes import hamming_distances

    good = pack_codes(np.ones((2, 16), dtype=np.uint8))
    for bad in (good.astype(np.int32), good[:0], good[0]):
        with pytest.raises(ValueError) as ours:
            bc.xnor_popcount_matmul(bad, good, 16)
        with pytest.raises(ValueError) as theirs:
            hamming_distances(bad, good)
        assert str(ours.value).replace("a_codes", "codes") == str(theirs.value).replace("query_codes", "codes")


@pytest.mark.parametrize(
    "cfg",
    [
        dict(c=64, o=5, k=3, stride=1, padding=1, hw=6),
        dict(c=70, o=3, k=3, stride=2, padding=1, hw=7),
        dict(c=130, o=4, k=1, stride=1, padding=0, hw=4),
        dict(c=5, o=2, k=5, stride=1, padding=2, hw=5),
    ],
)
def test_binary_conv2d_packed_equals_f_conv2d(cfg):
    # multi-word channel packing (C > 64, C not a multiple of 64) and padding taps
    gen = torch.Generator().manual_seed(cfg["c"] + cfg["k"])
    x = bc.binarize(torch.randn(2, cfg["c"], cfg["hw"], cfg["hw"], generator=gen))
    w = bc.binarize(torch.randn(cfg["o"], cfg["c"], cfg["k"], cfg["k"], generator=gen))
    xp, wp = bc.pack_channels(x), bc.pack_channels(w)
    assert xp.dtype == np.uint64 and xp.shape == (2, cfg["hw"], cfg["hw"], -(-cfg["c"] // 64))
    expected = F.conv2d(x, w, stride=cfg["stride"], padding=cfg["padding"])
    got = bc.binary_conv2d_packed(xp, wp, cfg["c"], stride=cfg["stride"], padding=cfg["padding"])
    assert torch.equal(got, expected)
    assert torch.equal(bc.binary_conv2d(x, w, stride=cfg["stride"], padding=cfg["padding"]), expected)


def test_pack_channels_bit_layout_and_bad_input():
    x = -torch.ones(1, 66, 1, 1)
    x[0, [0, 3, 65], 0, 0] = 1.0
    p = bc.pack_channels(x)
    assert p.shape == (1, 1, 1, 2)
    assert int(p[0, 0, 0, 0]) == (1 << 0) | (1 << 3) and int(p[0, 0, 0, 1]) == 1 << 1
    with pytest.raises(ValueError):
        bc.pack_channels(torch.zeros(1, 2, 3, 3))
    xp = bc.pack_channels(torch.ones(1, 3, 4, 4))
    wp = bc.pack_channels(torch.ones(2, 3, 3, 3))
    with pytest.raises(ValueError):
        bc.binary_conv2d_packed(xp, wp, 65)
    with pytest.raises(ValueError):
        bc.binary_conv2d_packed(xp.astype(np.int64), wp, 3)
    with pytest.raises(ValueError):
        bc.binary_conv2d_packed(xp, wp, 3, padding=-1)


def test_float_first_conv_and_train_and_evaluate():
    cnn = bc.make_binary_cnn("stoch", channels=(4, 8), image_size=8, float_first_conv=True)
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert type(convs[0]) is nn.Conv2d and isinstance(convs[1], bc.BinaryConv2d)
    assert len(bc.binary_layers(cnn)) == 2
    with pytest.raises(ValueError):
        bc.make_binary_cnn("det", channels=(4, 8, 8), image_size=4)
    with pytest.raises(TypeError):
        bc.make_binary_cnn("det", float_first_conv="yes")
    rng = np.random.default_rng(0)
    X = rng.random((64, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    model, hist, errs = bc.train_and_evaluate(
        "CNN", "stoch", (X, y), (X, y), seed=0, epochs=1, track=True, arch_kwargs={"channels": (4, 8)}
    )
    assert len(hist["val_accuracy"]) == 1 and set(errs) == {"sign", "real"}
    assert not model.training
    assert all(m.eval_weights == "sign" for m in bc.binary_layers(model).values())
    # the reported sign-weight error is the model's own error in eval mode
    from courselib.training import evaluate

    assert errs["sign"] == pytest.approx(100 * (1 - evaluate(model, (X, y))["accuracy"]))
    with pytest.raises(ValueError):
        bc.train_and_evaluate("RNN", "det", (X, y), (X, y))
