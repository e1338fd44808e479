"""Tests for courselib.distillation: answer keys from torch.nn.functional and hand-worked tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from courselib.distillation import (
    UNLABELLED,
    Ensemble,
    FeatureRecorder,
    HintRegressor,
    SeparableCNN,
    distill,
    distillation_loss,
    explore_soft_targets,
    feature_matching_loss,
    soft_target_loss,
    softmax_with_temperature,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _logits(seed, n=6, k=5, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, k, generator=g)


# ----------------------------------------------------------------------------- softmax with T
def test_softmax_with_temperature_matches_scipy():
    z = _logits(0)
    for T in (0.5, 1.0, 4.0):
        expected = scipy.special.softmax(z.numpy() / T, axis=1)
        np.testing.assert_allclose(softmax_with_temperature(z, T).numpy(), expected, rtol=1e-5, atol=1e-7)


def test_higher_temperature_gives_higher_entropy():
    z = _logits(1)
    ent = [
        float(scipy.stats.entropy(softmax_with_temperature(z, T).numpy(), axis=1).mean()) for T in (1.0, 2.0, 5.0, 50.0)
    ]
    assert all(a < b for a, b in zip(ent, ent[1:]))
    assert ent[-1] == pytest.approx(math.log(5), abs=0.01)


# ----------------------------------------------------------------------------- soft-target loss
def test_soft_target_loss_hand_worked():
    # teacher logits (ln 3, 0), student (0, 0): p_t = (3/4, 1/4), p_s = (1/2, 1/2) at T = 1.
    t = torch.tensor([[math.log(3.0), 0.0]])
    s = torch.zeros(1, 2)
    kl1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(soft_target_loss(s, t, 1.0)) == pytest.approx(kl1, rel=1e-6)
    # T = 2: p_t = (sqrt3, 1) / (1 + sqrt3); the loss is multiplied by T^2 = 4.
    r3 = math.sqrt(3.0)
    p = (r3 / (1 + r3), 1 / (1 + r3))
    kl2 = p[0] * math.log(p[0] / 0.5) + p[1] * math.log(p[1] / 0.5)
    assert float(soft_target_loss(s, t, 2.0)) == pytest.approx(4 * kl2, rel=1e-6)


@pytest.mark.parametrize("T", [1.0, 2.5, 8.0])
def test_soft_target_loss_matches_torch_kl_div(T):
    s, t = _logits(2), _logits(3)
    expected = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="batchmean") * T * T
    assert float(soft_target_loss(s, t, T)) == pytest.approx(float(expected), rel=1e-5)


def test_soft_loss_is_soft_cross_entropy_minus_teacher_entropy():
    s, t, T = _logits(4), _logits(5), 3.0
    p_t = F.softmax(t / T, dim=1)
    soft_ce = -(p_t * F.log_softmax(s / T, dim=1)).sum(1).mean()
    # torch >= 1.10 cross_entropy accepts probabilities as targets: an independent answer key.
    assert float(soft_ce) == pytest.approx(float(F.cross_entropy(s / T, p_t)), rel=1e-6)
    entropy = float(scipy.stats.entropy(p_t.numpy(), axis=1).mean())
    assert float(soft_target_loss(s, t, T)) == pytest.approx(T * T * (float(soft_ce) - entropy), rel=1e-5)


def test_soft_loss_zero_iff_student_matches_teacher():
    t = _logits(6)
    assert float(soft_target_loss(t.clone(), t, 4.0)) == pytest.approx(0.0, abs=1e-6)
    # adding a constant per row does not change the softmax
    assert float(soft_target_loss(t + 7.0, t, 4.0)) == pytest.approx(0.0, abs=1e-5)
    assert float(soft_target_loss(_logits(7), t, 4.0)) > 0.01


def test_soft_loss_gradient_formula():
    # d/dz_s [T^2 KL(p_t^T || p_s^T)] averaged over N rows = T (p_s^T - p_t^T) / N
    s, t, T = _logits(8).requires_grad_(True), _logits(9), 3.0
    soft_target_loss(s, t, T).backward()
    expected = T * (F.softmax(s.detach() / T, 1) - F.softmax(t / T, 1)) / s.shape[0]
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-7)


def test_t_squared_keeps_gradient_scale_comparable_across_temperatures():
    s = _logits(10, n=32, k=10, scale=2.0)
    t = _logits(11, n=32, k=10, scale=2.0)

    def grad_norm(T, scaled):
        z = s.clone().requires_grad_(True)
        loss = soft_target_loss(z, t, T)
        if not scaled:
            loss = loss / (T * T)
        loss.backward()
        return float(z.grad.norm())

    temps = [4.0, 8.0, 16.0, 32.0]
    scaled = np.array([grad_norm(T, True) for T in temps])
    raw = np.array([grad_norm(T, False) for T in temps])
    # With T^2 the gradient varies by less than 25% over an 8x range of T ...
    assert scaled.max() / scaled.min() < 1.25
    # ... without it the gradient falls like 1/T^2 (ratio close to 8^2 = 64).
    assert raw[0] / raw[-1] == pytest.approx(64, rel=0.25)
    # High-temperature limit (Hinton et al. Sec. 2.1): T^2 * grad -> (z_s - z_t) / (K N) for zero-mean logits.
    zs, zt = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    limit = float(((zs - zt) / (10 * 32)).norm())
    assert scaled[-1] == pytest.approx(limit, rel=0.05)


# ----------------------------------------------------------------------------- combined loss
def test_distillation_loss_mixes_soft_and_hard():
    s, t = _logits(12), _logits(13)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    T, alpha = 4.0, 0.7
    expected = alpha * T * T * F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") + (
        1 - alpha
    ) * F.cross_entropy(s, y)
    assert float(distillation_loss(s, t, y, T, alpha)) == pytest.approx(float(expected), rel=1e-5)
    assert float(distillation_loss(s, t, y, T, 0.0)) == pytest.approx(float(F.cross_entropy(s, y)), rel=1e-6)
    assert float(distillation_loss(s, t, y, T, 1.0)) == pytest.approx(float(soft_target_loss(s, t, T)), rel=1e-6)


@pytest.mark.parametrize("bad_T", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_raises(bad_T):
    s = _logits(0)
    with pytest.raises(ValueError, match="temperature"):
        soft_target_loss(s, s, bad_T)
    with pytest.raises(ValueError, match="temperature"):
        softmax_with_temperature(s, bad_T)


@pytest.mark.parametrize("bad_alpha", [-0.1, 1.5])
def test_bad_alpha_raises(bad_alpha):
    s = _logits(0)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(s, s, torch.zeros(6, dtype=torch.long), 2.0, bad_alpha)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        soft_target_loss(torch.zeros(4, 10), torch.zeros(4, 9), 2.0)
    with pytest.raises(ValueError, match="2-D"):
        soft_target_loss(torch.zeros(10), torch.zeros(10), 2.0)
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(torch.zeros(4, 10), torch.zeros(4, 10), torch.zeros(3, dtype=torch.long), 2.0, 0.5)
    with pytest.raises(TypeError, match="integer"):
        distillation_loss(torch.zeros(4, 10), torch.zeros(4, 10), torch.zeros(4), 2.0, 0.5)


# ----------------------------------------------------------------------------- feature matching
def test_feature_matching_loss_hand_worked():
    a_t = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    a_s = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    # row 1: 0 + 4 + 4 = 8; row 2: 1 + 1 + 1 = 3; mean over the batch 5.5
    assert float(feature_matching_loss(a_t, a_s)) == pytest.approx(5.5)
    # f and g transform before comparing: f = 2x, g = x + 1
    f = lambda a: 2 * a  # noqa: E731
    g = lambda a: a + 1  # noqa: E731
    expected = ((2 * a_t - (a_s + 1)) ** 2).sum(1).mean()
    assert float(feature_matching_loss(a_t, a_s, f=f, g=g)) == pytest.approx(float(expected))


def test_feature_matching_loss_matches_mse_on_conv_maps():
    g = torch.Generator().manual_seed(0)
    a_t, a_s = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    per_element = F.mse_loss(a_s, a_t, reduction="mean")
    assert float(feature_matching_loss(a_t, a_s)) == pytest.approx(float(per_element) * 3 * 4 * 4, rel=1e-5)


def test_feature_matching_shape_mismatch_suggests_regressor():
    with pytest.raises(ValueError, match="HintRegressor"):
        feature_matching_loss(torch.zeros(2, 8, 4, 4), torch.zeros(2, 4, 4, 4))


def test_hint_regressor_maps_student_width_to_teacher_width():
    torch.manual_seed(0)
    a_s, a_t = torch.randn(3, 4, 5, 5), torch.randn(3, 8, 5, 5)
    reg = HintRegressor(4, 8)
    assert reg(a_s).shape == a_t.shape
    # a 1x1 convolution is the same linear map applied at every position
    w, b = reg.proj.weight[:, :, 0, 0], reg.proj.bias
    manual = torch.einsum("oc,nchw->nohw", w, a_s) + b[None, :, None, None]
    torch.testing.assert_close(reg(a_s), manual, rtol=1e-5, atol=1e-6)
    loss = feature_matching_loss(a_t, a_s, g=reg)
    loss.backward()
    assert reg.proj.weight.grad is not None and float(reg.proj.weight.grad.abs().sum()) > 0
    lin = HintRegressor(4, 8, conv=False)
    assert lin(torch.randn(3, 4)).shape == (3, 8)
    with pytest.raises(ValueError, match="channels"):
        reg(torch.randn(3, 5, 5, 5))
    with pytest.raises(ValueError, match="positive integer"):
        HintRegressor(0, 8)


def test_hint_regressor_can_fit_a_linear_relation():
    # the regressor is learnable: gradient descent on the feature loss recovers a_t = W a_s
    torch.manual_seed(0)
    W = torch.randn(6, 3)
    a_s = torch.randn(64, 3)
    a_t = a_s @ W.T
    reg = HintRegressor(3, 6, conv=False)
    opt = torch.optim.Adam(reg.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        loss = feature_matching_loss(a_t, a_s, g=reg)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 1e-3
    torch.testing.assert_close(reg.proj.weight.detach(), W, atol=0.02, rtol=0.02)


# ----------------------------------------------------------------------------- ensemble
def _tiny_members(n=3):
    torch.manual_seed(0)
    return [nn.Linear(4, 5) for _ in range(n)]


def test_ensemble_averages_probabilities():
    members = _tiny_members(3)
    ens = Ensemble(members)
    x = torch.randn(7, 4)
    manual = sum(F.softmax(m(x), dim=1) for m in members) / 3
    torch.testing.assert_close(ens(x), manual)
    torch.testing.assert_close(ens(x).sum(1), torch.ones(7))
    # log_probs is the log of the averaged probabilities, and softmax(log p) = p
    torch.testing.assert_close(ens.log_probs(x), manual.log(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(F.softmax(ens.log_probs(x), 1), manual, rtol=1e-5, atol=1e-6)
    # tempered: softmax(log p / T) is proportional to p ** (1 / T)
    q = manual**0.25
    torch.testing.assert_close(softmax_with_temperature(ens.log_probs(x), 4.0), q / q.sum(1, keepdim=True))


def test_ensemble_log_probs_stay_finite_for_confident_members():
    m = nn.Linear(2, 3)
    with torch.no_grad():
        m.weight.zero_()
        m.bias.copy_(torch.tensor([500.0, 0.0, -500.0]))
    ens = Ensemble([m, m])
    lp = ens.log_probs(torch.zeros(1, 2))
    assert torch.isfinite(lp).all()
    assert torch.isfinite(soft_target_loss(torch.zeros(1, 3), lp, 2.0))


def test_ensemble_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([])
    with pytest.raises(TypeError, match="nn.Module"):
        Ensemble([nn.Linear(2, 2), "not a model"])


# ----------------------------------------------------------------------------- student architecture
def test_separable_cnn_parameter_count_by_hand():
    net = SeparableCNN(channels=(8, 16))
    assert net(torch.zeros(2, 8, 8)).shape == (2, 10)
    stem = 1 * 8 * 9 + 2 * 8  # 3x3 conv (no bias) + BN
    depthwise = 8 * 9 + 2 * 8  # one 3x3 filter per channel + BN
    pointwise = 8 * 16 + 2 * 16  # 1x1 conv + BN
    fc = 16 * 10 + 10
    assert sum(p.numel() for p in net.parameters()) == stem + depthwise + pointwise + fc
    dw = net.blocks[0][0]
    assert dw.groups == 8 and dw.weight.shape == (8, 1, 3, 3)


def test_separable_cnn_pooled_grid_feeds_the_classifier():
    net = SeparableCNN(channels=(8, 16), pool_size=2)
    assert net.fc.in_features == 16 * 2 * 2
    x = torch.rand(3, 16, 16)  # 16 -> 8 (stem) -> 4 (block): pooled by 2x2 means
    net.eval()
    with torch.no_grad():
        grid = F.avg_pool2d(net.blocks(net.stem(x.unsqueeze(1))), 2)
        torch.testing.assert_close(net(x), net.fc(grid.flatten(1)))
    with pytest.raises(ValueError, match="pool_size"):
        SeparableCNN(pool_size=0)


def test_separable_cnn_bad_input():
    with pytest.raises(ValueError, match="expected input"):
        SeparableCNN()(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError):
        SeparableCNN(channels=())


def test_distillation_loss_leaves_unlabelled_examples_out_of_the_hard_term():
    zs, zt = _logits(20, n=5, k=4), _logits(21, n=5, k=4)
    y = torch.tensor([2, UNLABELLED, 0, UNLABELLED, 3])
    keep = torch.tensor([0, 2, 4])
    T, a = 3.0, 0.3
    expected = a * soft_target_loss(zs, zt, T) + (1 - a) * F.cross_entropy(zs[keep], y[keep])
    torch.testing.assert_close(distillation_loss(zs, zt, y, T, a), expected)
    # a batch without any label: only the soft term remains, and it stays differentiable
    zs = zs.clone().requires_grad_(True)
    none = torch.full((5,), UNLABELLED)
    loss = distillation_loss(zs, zt, none, T, a)
    torch.testing.assert_close(loss, a * soft_target_loss(zs, zt, T))
    loss.backward()
    assert zs.grad is not None and torch.isfinite(zs.grad).all()


def test_distillation_loss_rejects_out_of_range_labels():
    zs, zt = _logits(22, n=2, k=3), _logits(23, n=2, k=3)
    for bad in ([0, 3], [-1, 0]):
        with pytest.raises(ValueError, match="labels must lie"):
            distillation_loss(zs, zt, torch.tensor(bad), 2.0, 0.5)


# ----------------------------------------------------------------------------- distill
def _toy_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, 8, 8), dtype=np.float32)
    y = (X[:, :4].mean((1, 2)) > X[:, 4:].mean((1, 2))).astype(np.int64) + 2 * (X[:, :, :4].mean((1, 2)) > 0.5)
    return X, y


def _toy_teacher():
    from courselib.models import CourseCNN

    torch.manual_seed(0)
    return CourseCNN(channels=(8, 16), n_classes=4, image_size=8)


def test_distill_leaves_teacher_unchanged_and_in_eval_mode():
    X, y = _toy_data()
    teacher = _toy_teacher()
    teacher.train()  # distill must switch it to eval (BatchNorm running stats!)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    modes = []
    teacher.register_forward_hook(lambda m, i, o: modes.append(m.training))
    torch.manual_seed(1)
    student = SeparableCNN(channels=(4, 8), n_classes=4)
    s_before = [p.detach().clone() for p in student.parameters()]
    hist = distill(student, teacher, (X, y), temperature=3.0, alpha=0.8, epochs=2, progress=False)
    assert len(hist["train_loss"]) == 2
    assert modes and not any(modes)  # every teacher forward ran in eval mode
    for k, v in teacher.state_dict().items():  # weights and BN buffers untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.requires_grad for p in teacher.parameters())
    assert teacher.training  # original mode restored
    assert any(not torch.equal(a, b) for a, b in zip(s_before, student.parameters()))


def test_distill_with_hints_trains_the_regressor():
    X, y = _toy_data()
    teacher = _toy_teacher()
    torch.manual_seed(2)
    student = SeparableCNN(channels=(4, 8), n_classes=4)
    reg = HintRegressor(8, 16)
    r_before = reg.proj.weight.detach().clone()
    # student's pointwise BN (4x4) vs the teacher's bn2 (4x4): 8 -> 16 channels through the regressor
    distill(
        student,
        teacher,
        (X, y),
        alpha=0.5,
        beta=0.01,
        student_layer="blocks.0.4",
        teacher_layer="bn2",
        regressor=reg,
        epochs=1,
        progress=False,
    )
    assert not torch.equal(r_before, reg.proj.weight)
    # hooks were removed afterwards
    assert not student.blocks[0][4]._forward_hooks and not teacher.bn2._forward_hooks


def test_distill_reduces_the_soft_loss_towards_the_teacher():
    X, y = _toy_data(128)
    teacher = _toy_teacher()
    from courselib.training import fit

    fit(teacher, (X, y), epochs=5, lr=1e-2, progress=False)
    torch.manual_seed(3)
    student = SeparableCNN(channels=(4, 8), n_classes=4)
    Xt = torch.from_numpy(X)
    teacher.eval()
    with torch.no_grad():
        zt = teacher(Xt)
        student.eval()
        before = float(soft_target_loss(student(Xt), zt, 4.0))
    distill(student, teacher, (X, y), temperature=4.0, alpha=1.0, epochs=15, lr=1e-2, progress=False)
    with torch.no_grad():
        after = float(soft_target_loss(student(Xt), zt, 4.0))
    assert after < 0.5 * before


def test_distill_from_an_ensemble_uses_log_mean_probabilities():
    X, y = _toy_data(64)
    members = [_toy_teacher() for _ in range(2)]
    ens = Ensemble(members)
    seen = []
    orig = ens.log_probs

    def spy(x):
        out = orig(x)
        seen.append(out)
        return out

    ens.log_probs = spy
    torch.manual_seed(4)
    student = SeparableCNN(channels=(4, 8), n_classes=4)
    distill(student, ens, (X, y), epochs=1, progress=False)
    assert seen and torch.all(seen[0] <= 0)  # log-probabilities were used as teacher logits


def test_distill_learns_unlabelled_examples_from_the_teacher_only():
    X, y = _toy_data(64)
    teacher = _toy_teacher()
    unlabelled = np.full_like(y, UNLABELLED)
    torch.manual_seed(5)
    student = SeparableCNN(channels=(4, 8), n_classes=4)
    before = [p.detach().clone() for p in student.parameters()]
    # alpha = 0 and no label: nothing to learn, the parameters do not move
    distill(student, teacher, (X, unlabelled), alpha=0.0, epochs=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters()))
    # alpha > 0: the teacher's soft targets on unlabelled inputs train the student
    distill(student, teacher, (X, unlabelled), alpha=0.5, epochs=1, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_distill_bad_arguments():
    X, y = _toy_data(32)
    teacher = _toy_teacher()
    student = SeparableCNN(channels=(4, 8), n_classes=4)
    with pytest.raises(ValueError, match="temperature"):
        distill(student, teacher, (X, y), temperature=0, progress=False)
    with pytest.raises(ValueError, match="alpha"):
        distill(student, teacher, (X, y), alpha=2, progress=False)
    with pytest.raises(ValueError, match="student_layer"):
        distill(student, teacher, (X, y), beta=1.0, progress=False)
    with pytest.raises(ValueError, match="no submodule"):
        distill(student, teacher, (X, y), beta=1.0, student_layer="nope", teacher_layer="bn2", progress=False)
    with pytest.raises(ValueError, match="different"):
        distill(teacher, teacher, (X, y), progress=False)


def test_feature_recorder_captures_output():
    net = SeparableCNN(channels=(4, 8))
    x = torch.randn(2, 8, 8)
    with FeatureRecorder(net, "stem") as rec:
        net(x)
    torch.testing.assert_close(rec.output, net.stem(x.unsqueeze(1)))
    assert not net.stem._forward_hooks


# ----------------------------------------------------------------------------- explorer
@pytest.mark.parametrize("T,alpha", [(1.0, 0.0), (4.0, 0.5), (10.0, 1.0)])
def test_explorer_draws_and_gradient_sums_to_zero(T, alpha):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = explore_soft_targets(T, alpha)
    assert len(fig.axes) == 2
    heights = np.array([p.get_height() for p in fig.axes[1].patches])
    assert heights.shape == (10,)
    # softmax-based losses have gradients that sum to zero over the classes
    assert abs(heights.sum()) < 1e-5 and np.abs(heights).max() > 1e-3
    probs = np.array([p.get_height() for p in fig.axes[0].patches])[10:]
    np.testing.assert_allclose(
        probs, scipy.special.softmax(np.array([1.0, -2.0, 0.5, 9.0, -3.0, 3.5, -1.0, 0.0, 4.0, 2.0]) / T), rtol=1e-5
    )
    plt.close(fig)
    with pytest.raises(ValueError, match="label"):
        explore_soft_targets(T, alpha, label=12)
