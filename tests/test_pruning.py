"""Tests for courselib.pruning: answer keys from torch.autograd.functional.hessian,
torch.nn.utils.prune and hand-worked tensors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from courselib import pruning as P
from courselib.measure import conv_like, count_parameters
from courselib.models import CourseCNN


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    X = torch.randn(12, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    return net, X, y


def _cat(d, names):
    return torch.cat([d[n].reshape(-1) for n in names])


# ---------------------------------------------------------------- Hessian diagonal


def test_exact_hessian_matches_autograd_hessian():
    net, X, y = _tiny_net()
    names = [n for n, _ in net.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    shapes = [p.shape for _, p in net.named_parameters()]

    def loss(v):
        d, i = {}, 0
        for n, s in zip(names, shapes):
            d[n] = v[i : i + s.numel()].reshape(s)
            i += s.numel()
        return F.cross_entropy(torch.func.functional_call(net, d, (X,)), y)

    want = torch.autograd.functional.hessian(loss, flat).diagonal()
    got = P.diagonal_hessian(net, F.cross_entropy, (X, y), method="exact")
    assert set(got) == set(names)
    for n, p in net.named_parameters():
        assert got[n].shape == p.shape and got[n].dtype == p.dtype
    torch.testing.assert_close(_cat(got, names), want, atol=1e-6, rtol=0)


def test_exact_hessian_dataloader_equals_full_batch():
    net, X, y = _tiny_net(1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=5)
    full = P.diagonal_hessian(net, F.cross_entropy, (X, y))
    batched = P.diagonal_hessian(net, F.cross_entropy, loader)
    for n in full:
        torch.testing.assert_close(batched[n], full[n], atol=1e-10, rtol=0)


def test_gauss_newton_matches_jacobian_formula():
    """GN diagonal = (1/N) sum_i diag(J_i^T (diag(p_i) - p_i p_i^T) J_i) for softmax cross-entropy."""
    net, X, y = _tiny_net(2)
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]

    def outputs(v):
        d, i = {}, 0
        for n, s in zip(names, shapes):
            d[n] = v[i : i + s.numel()].reshape(s)
            i += s.numel()
        return torch.func.functional_call(net, d, (X,))

    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    J = torch.autograd.functional.jacobian(outputs, flat)  # (N, C, P)
    p = torch.softmax(outputs(flat), dim=1)
    H_out = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    want = torch.einsum("ncp,ncd,ndp->p", J, H_out, J) / X.shape[0]
    got = P.diagonal_hessian(net, F.cross_entropy, (X, y), method="gauss-newton")
    torch.testing.assert_close(_cat(got, names), want, atol=1e-10, rtol=0)
    assert all((g >= 0).all() for g in got.values())


def test_gauss_newton_is_exact_for_a_linear_model():
    torch.manual_seed(3)
    lin = nn.Linear(4, 3).double()
    X = torch.randn(20, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    exact = P.diagonal_hessian(lin, F.cross_entropy, (X, y), method="exact")
    gn = P.diagonal_hessian(lin, F.cross_entropy, (X, y), method="gauss-newton")
    for n in exact:
        torch.testing.assert_close(gn[n], exact[n], atol=1e-10, rtol=0)


def test_empirical_fisher_is_mean_squared_per_sample_gradient():
    net, X, y = _tiny_net(4)
    want = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for i in range(X.shape[0]):
        net.zero_grad()
        F.cross_entropy(net(X[i : i + 1]), y[i : i + 1]).backward()
        for n, p in net.named_parameters():
            want[n] += p.grad**2 / X.shape[0]
    got = P.diagonal_hessian(net, F.cross_entropy, (X, y), method="empirical-fisher")
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=1e-10, rtol=0)


def test_hand_worked_mse_hessian_and_saliency():
    """E = mean_i (w.x_i - y_i)^2  =>  h_kk = mean_i 2 x_ik^2; s_k = h_kk w_k^2 / 2."""
    lin = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, -3.0]]))
    X = torch.tensor([[1.0, 2.0], [3.0, 0.0]], dtype=torch.float64)
    y = torch.zeros(2, 1, dtype=torch.float64)
    for method in ("exact", "gauss-newton"):
        h = P.diagonal_hessian(lin, F.mse_loss, (X, y), method=method)
        torch.testing.assert_close(h["weight"], torch.tensor([[10.0, 4.0]], dtype=torch.float64))
        s = P.obd_saliency(lin, F.mse_loss, (X, y), method=method)
        torch.testing.assert_close(s["weight"], torch.tensor([[20.0, 18.0]], dtype=torch.float64))


def test_obd_saliency_from_given_hessian():
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        lin.bias.copy_(torch.tensor([3.0, -1.0]))
    h = {"weight": torch.tensor([[4.0, 1.0], [8.0, 5.0]]), "bias": torch.tensor([0.0, 2.0])}
    s = P.obd_saliency(lin, hessian=h)
    torch.testing.assert_close(s["weight"], torch.tensor([[2.0, 2.0], [1.0, 0.0]]))
    torch.testing.assert_close(s["bias"], torch.tensor([0.0, 1.0]))


def test_diagonal_hessian_bad_arguments():
    net, X, y = _tiny_net()
    with pytest.raises(ValueError, match="method"):
        P.diagonal_hessian(net, F.cross_entropy, (X, y), method="newton")
    with pytest.raises(ValueError, match="unknown parameter"):
        P.diagonal_hessian(net, F.cross_entropy, (X, y), parameters=["nope.weight"])
    with pytest.raises(TypeError):
        P.diagonal_hessian(net, F.cross_entropy, 42)
    with pytest.raises(ValueError, match="hessian"):
        P.obd_saliency(net)
    cnn = CourseCNN(channels=(2, 3), image_size=8)
    cnn.train()
    with pytest.raises(ValueError, match="eval"):
        P.diagonal_hessian(
            cnn, F.cross_entropy, (torch.rand(4, 8, 8), torch.randint(0, 10, (4,))), method="gauss-newton"
        )


def test_gauss_newton_runs_on_cnn_in_eval_mode():
    torch.manual_seed(0)
    cnn = CourseCNN(channels=(2, 3), image_size=8).eval()
    X, y = torch.rand(6, 8, 8), torch.randint(0, 10, (6,))
    gn = P.diagonal_hessian(cnn, F.cross_entropy, (X, y), method="gauss-newton")
    assert gn["conv1.weight"].shape == cnn.conv1.weight.shape
    assert float(gn["fc.weight"].sum()) > 0


# ---------------------------------------------------------------- unstructured masks


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def test_layer_magnitude_prune_matches_torch_l1_unstructured():
    a, b = _mlp(), _mlp()
    P.magnitude_prune(a, 0.4, scope="layer")
    for m in (b[0], b[2]):
        prune.l1_unstructured(m, "weight", amount=0.4)
    torch.testing.assert_close(a[0].weight_mask, b[0].weight_mask)
    torch.testing.assert_close(a[2].weight_mask, b[2].weight_mask)


def test_global_magnitude_prune_matches_torch_global_unstructured():
    a, b = _mlp(1), _mlp(1)
    P.magnitude_prune(a, 0.7)
    prune.global_unstructured([(b[0], "weight"), (b[2], "weight")], pruning_method=prune.L1Unstructured, amount=0.7)
    torch.testing.assert_close(a[0].weight_mask, b[0].weight_mask)
    torch.testing.assert_close(a[2].weight_mask, b[2].weight_mask)
    assert P.sparsity(a) == pytest.approx(round(0.7 * 72) / 72)


def test_masks_survive_training_and_prune_remove():
    net = _mlp(2)
    P.magnitude_prune(net, 0.5)
    mask = net[0].weight_mask.clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 6)).sum().backward()
        opt.step()
    net(torch.randn(1, 6))
    assert torch.all(net[0].weight[mask == 0] == 0)
    prune.remove(net[0], "weight")
    prune.remove(net[2], "weight")
    assert isinstance(net[0].weight, nn.Parameter) and not hasattr(net[0], "weight_mask")
    assert torch.all(net[0].weight[mask == 0] == 0)
    assert P.sparsity(net) == pytest.approx(0.5, abs=1 / 72)


def test_saliency_prune_removes_lowest_saliency():
    lin = nn.Linear(3, 2, bias=False)
    sal = {"weight": torch.tensor([[5.0, 0.1, 3.0], [0.2, 9.0, 0.3]])}
    P.saliency_prune(lin, sal, 0.5)
    torch.testing.assert_close(lin.weight_mask, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))


def _old_global_masks(scores, old_masks, amount):
    """Answer key: the masks courselib computed before it used prune.global_unstructured -- a top-k over all
    scores at once, with the entries removed earlier set to -inf so that they stay removed."""
    flat = torch.cat([s.reshape(-1).double() for s in scores])
    old = torch.cat([m.reshape(-1) for m in old_masks])
    k = max(round(amount * flat.numel()), int((old == 0).sum()))
    mask = torch.ones_like(flat)
    if k:
        mask[torch.topk(torch.where(old == 0, -torch.inf, flat), k, largest=False).indices] = 0
    return list(mask.split([s.numel() for s in scores]))


def _two_layers(w0, w1):
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(w0))
        net[1].weight.copy_(torch.tensor(w1))
    return net


def _masks(net):
    return [net[0].weight_mask.tolist(), net[1].weight_mask.tolist()]


def test_global_masks_hand_worked_ties_go_to_the_earlier_weight():
    # |w| in order: 0.5, 0.1, 0.1, 2.0 | 0.1, 0.3 -- three weights tie at 0.1
    net = _two_layers([[0.5, -0.1], [0.1, 2.0]], [[-0.1, 0.3]])
    P.magnitude_prune(net, 1 / 3)  # 2 of 6: the first two of the tied weights
    assert _masks(net) == [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0]]]
    P.magnitude_prune(net, 0.5)  # 3 of 6: the earlier two stay removed, the third tied weight follows
    assert _masks(net) == [[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0]]]
    layer = _two_layers([[0.5, -0.1], [0.1, 2.0]], [[-0.1, 0.3]])
    P.magnitude_prune(layer, 0.25, scope="layer")  # per tensor: 1 of 4 (the earlier tie), round(0.5) = 0 of 2
    assert _masks(layer) == [[[1.0, 0.0], [1.0, 1.0]], [[1.0, 1.0]]]


def test_saliency_prune_hand_worked_negative_saliencies_go_first():
    # an exact Hessian diagonal can be negative: those weights go before the zero-saliency ones
    # (L1Unstructured on the raw scores would rank |s| and remove the three zeros instead)
    net = _two_layers([[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0]])
    sal = {"0.weight": torch.tensor([[0.0, -1.0], [0.0, 3.0]]), "1.weight": torch.tensor([[0.0, -1.0]])}
    P.saliency_prune(net, sal, 0.5)
    assert _masks(net) == [[[0.0, 0.0], [1.0, 1.0]], [[1.0, 0.0]]]


def test_global_masks_equal_the_old_top_k_without_ties():
    gen = torch.Generator().manual_seed(0)
    net = _mlp(7)
    targets = [net[0].weight, net[2].weight]
    old = [torch.ones_like(w) for w in targets]
    for amount in (0.3, 0.3, 0.65):  # prune, prune again at the same sparsity, prune further
        sal = {"0.weight": torch.randn(8, 6, generator=gen), "2.weight": torch.randn(3, 8, generator=gen)}
        want = _old_global_masks([sal["0.weight"], sal["2.weight"]], old, amount)
        P.saliency_prune(net, sal, amount)
        old = [net[0].weight_mask, net[2].weight_mask]
        torch.testing.assert_close(old[0].reshape(-1), want[0].float(), rtol=0, atol=0)
        torch.testing.assert_close(old[1].reshape(-1), want[1].float(), rtol=0, atol=0)
    assert net[0].weight_mask.dtype == net[0].weight_orig.dtype == torch.float32


def test_repruning_keeps_earlier_removals_and_accepts_orig_keys():
    net = _mlp(3)
    P.magnitude_prune(net, 0.5)
    first = [net[0].weight_mask.clone(), net[2].weight_mask.clone()]
    sal = {n: torch.rand(p.shape) for n, p in net.named_parameters()}  # keys "0.weight_orig", ...
    P.saliency_prune(net, sal, 0.8)
    assert P.sparsity(net) == pytest.approx(round(0.8 * 72) / 72)
    assert torch.all(net[0].weight_mask[first[0] == 0] == 0)
    assert torch.all(net[2].weight_mask[first[1] == 0] == 0)
    # the OBD saliency of a removed weight is zero
    s = P.obd_saliency(net, hessian={n: torch.ones_like(p) for n, p in net.named_parameters()})
    assert torch.all(s["0.weight_orig"][net[0].weight_mask == 0] == 0)


def test_random_prune_is_seeded():
    a, b, c = _mlp(), _mlp(), _mlp()
    P.random_prune(a, 0.6, seed=5)
    P.random_prune(b, 0.6, seed=5)
    P.random_prune(c, 0.6, seed=6)
    torch.testing.assert_close(a[0].weight_mask, b[0].weight_mask)
    assert not torch.equal(a[0].weight_mask, c[0].weight_mask)
    assert P.sparsity(a) == pytest.approx(round(0.6 * 72) / 72)


@pytest.mark.parametrize("amount", [-0.1, 1.5, float("nan")])
def test_amount_out_of_range(amount):
    with pytest.raises(ValueError, match="amount"):
        P.magnitude_prune(_mlp(), amount)
    with pytest.raises(ValueError, match="amount"):
        P.random_prune(_mlp(), amount)
    with pytest.raises(ValueError, match="amount"):
        P.saliency_prune(_mlp(), {"0.weight": torch.rand(8, 6), "2.weight": torch.rand(3, 8)}, amount)


def test_bad_pruning_arguments():
    with pytest.raises(TypeError):
        P.magnitude_prune(_mlp(), "half")
    with pytest.raises(ValueError, match="scope"):
        P.magnitude_prune(_mlp(), 0.5, scope="row")
    with pytest.raises(ValueError, match="no entry"):
        P.saliency_prune(_mlp(), {"0.weight": torch.rand(8, 6)}, 0.5)
    with pytest.raises(ValueError, match="unknown parameter"):
        P.magnitude_prune(_mlp(), 0.5, parameters=["5.weight"])
    with pytest.raises(ValueError, match="shape"):
        P.saliency_prune(_mlp(), {"0.weight": torch.rand(6, 8), "2.weight": torch.rand(3, 8)}, 0.5)


def test_iterative_prune_with_retraining():
    torch.manual_seed(0)
    X, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    calls = []

    def retrain(model):
        calls.append(P.sparsity(model))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        opt.zero_grad()
        F.cross_entropy(model(X), y).backward()
        opt.step()

    for method in ("magnitude", "obd", "random"):
        calls.clear()
        net = _mlp(4)
        hist = P.iterative_prune(
            net,
            [0.5, 0.8],
            method=method,
            retrain=retrain,
            evaluate=lambda m: float((m(X).argmax(1) == y).float().mean()),
            loss_fn=F.cross_entropy,
            data=(X, y),
        )
        assert [h["amount"] for h in hist] == [0.5, 0.8]
        assert [h["sparsity"] for h in hist] == pytest.approx([36 / 72, round(0.8 * 72) / 72])
        assert calls == pytest.approx([36 / 72, round(0.8 * 72) / 72])
        assert 0.0 <= hist[-1]["score"] <= 1.0
    with pytest.raises(ValueError, match="non-decreasing"):
        P.iterative_prune(_mlp(), [0.8, 0.5])
    with pytest.raises(ValueError, match="loss_fn"):
        P.iterative_prune(_mlp(), [0.5], method="obd")


def test_obd_iterative_prune_matches_manual_steps():
    torch.manual_seed(1)
    X, y = torch.randn(30, 6), torch.randint(0, 3, (30,))
    a, b = _mlp(5), _mlp(5)
    P.iterative_prune(a, [0.3, 0.6], method="obd", loss_fn=F.cross_entropy, data=(X, y))
    for amount in (0.3, 0.6):
        keys = [n for n, _ in b.named_parameters() if n.endswith("weight") or n.endswith("weight_orig")]
        P.saliency_prune(b, P.obd_saliency(b, F.cross_entropy, (X, y), parameters=keys), amount)
    torch.testing.assert_close(a[0].weight_mask, b[0].weight_mask)
    torch.testing.assert_close(a[2].weight_mask, b[2].weight_mask)


# ---------------------------------------------------------------- filter pruning


def test_l1_filter_norms_hand_worked():
    conv = nn.Conv2d(2, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.5], [-3.0, 0.0]]).reshape(3, 2, 1, 1))
    torch.testing.assert_close(P.l1_filter_norms(conv), torch.tensor([3.0, 1.0, 3.0]))
    assert P.smallest_filters(conv, 1 / 3) == [1]
    with pytest.raises(TypeError):
        P.l1_filter_norms(nn.Linear(2, 2))


def _randomize_bn(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


@pytest.mark.parametrize("layer, nxt, indices", [("conv1", "conv2", [1, 4]), ("conv2", "fc", [0, 3, 7])])
def test_remove_filters_equals_zeroed_next_layer_coursecnn(layer, nxt, indices):
    torch.manual_seed(0)
    model = CourseCNN(channels=(6, 8), image_size=12)
    _randomize_bn(model)
    model.eval()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        w = getattr(reference, nxt).weight
        if isinstance(getattr(reference, nxt), nn.Conv2d):
            w[:, indices] = 0
        else:  # fc after flatten: channel c covers H*W consecutive inputs (here 3*3)
            for c in indices:
                w[:, c * 9 : (c + 1) * 9] = 0
    X = torch.rand(5, 12, 12)
    P.remove_filters(model, layer, indices)
    conv = getattr(model, layer)
    assert conv.out_channels == {"conv1": 6, "conv2": 8}[layer] - len(indices)
    assert getattr(model, "bn" + layer[-1]).num_features == conv.out_channels
    with torch.no_grad():
        torch.testing.assert_close(model(X), reference(X), atol=1e-5, rtol=0)


def test_remove_filters_sequential_model_and_parameter_count():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 3),
    )
    _randomize_bn(model, 1)
    model.eval()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference[4].weight[:, [2]] = 0
        reference[7].weight[:, 3 * 16 : 4 * 16] = 0
    X = torch.rand(3, 1, 8, 8)
    before = count_parameters(model)
    P.remove_filters(model, "0", [2])
    P.remove_filters(model, "4", np.array([3]))
    # conv0 filter: 1*9 w + 1 b; bn: 2; conv4 inputs: 5*9; conv4 filter (3 inputs left): 3*9 w + 1 b;
    # linear columns: 16 inputs x 3 outputs
    assert count_parameters(model) == before - (9 + 1 + 2 + 45 + 27 + 1 + 48)
    with torch.no_grad():
        torch.testing.assert_close(model(X), reference(X), atol=1e-5, rtol=0)


def test_remove_filters_errors():
    model = CourseCNN(channels=(4, 4), image_size=8)
    with pytest.raises(ValueError, match="unknown layer"):
        P.remove_filters(model, "conv9", [0])
    with pytest.raises(ValueError, match="expected a Conv2d"):
        P.remove_filters(model, "bn1", [0])
    with pytest.raises(ValueError, match="at least one"):
        P.remove_filters(model, "conv1", [0, 1, 2, 3])
    with pytest.raises(ValueError, match="out of range"):
        P.remove_filters(model, "conv1", [4])
    with pytest.raises(ValueError, match="distinct"):
        P.remove_filters(model, "conv1", [1, 1])
    last = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        P.remove_filters(last, "0", [0])
    odd = nn.Sequential(nn.Conv2d(1, 2, 3), nn.LayerNorm([2, 6, 6]), nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError, match="cannot determine"):
        P.remove_filters(odd, "0", [0])
    pruned = CourseCNN(channels=(4, 4), image_size=8)
    P.magnitude_prune(pruned, 0.5)
    with pytest.raises(ValueError, match="prune.remove"):
        P.remove_filters(pruned, "conv1", [0])
    with pytest.raises(ValueError, match="amount"):
        P.prune_filters(model, "conv1", 1.2)


def test_conv_like_keeps_everything_but_the_overrides():
    conv = nn.Conv2d(4, 6, (3, 5), 2, (1, 2), 2, groups=2, bias=False, padding_mode="reflect", dtype=torch.float64)
    conv.eval()
    new = conv_like(conv, out_channels=4)
    geometry = ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
    assert type(new) is nn.Conv2d and not new.training and new.bias is None
    assert (new.in_channels, new.out_channels, new.weight.dtype) == (4, 4, torch.float64)
    assert [getattr(new, a) for a in geometry] == [getattr(conv, a) for a in geometry]
    assert conv_like(nn.Conv2d(1, 2, 3), in_channels=3).weight.shape == (2, 3, 3, 3)
    with pytest.raises(TypeError):
        conv_like(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="kernel"):
        conv_like(conv, kernel=3)


def test_prune_filters_removes_smallest_l1():
    torch.manual_seed(2)
    model = CourseCNN(channels=(8, 4), image_size=8)
    norms = P.l1_filter_norms(model.conv1)
    removed = P.prune_filters(model, "conv1", 0.25)
    assert sorted(removed) == sorted(torch.argsort(norms)[:2].tolist())
    kept = sorted(set(range(8)) - set(removed))
    torch.testing.assert_close(P.l1_filter_norms(model.conv1), norms[kept])
    assert model.conv2.in_channels == 6


def test_storage_bytes_hand_worked_and_dense_vs_csr():
    w = torch.tensor([[1.0, 0, 0, 2], [0, 0, 0, 0], [3, 4, 0, 5]])
    assert P.storage_bytes(w, "dense") == 48
    assert P.storage_bytes(w, "csr") == 5 * (4 + 4) + 4 * 4
    assert P.storage_bytes(w, "csr", index_bytes=8) == 5 * 12 + 4 * 8
    with pytest.raises(ValueError):
        P.storage_bytes(w, "coo")
    res = P.dense_vs_csr(w, torch.rand(2, 4), repeats=2)
    assert res["dense_bytes"] == 48
    assert res["csr_bytes"] == 5 * (4 + 8) + 4 * 8  # torch CSR stores int64 indices
    assert res["density"] == pytest.approx(5 / 12)


def test_plot_saliency_vs_magnitude_draws_what_each_criterion_removes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(50, generator=gen, dtype=torch.float64)
    s = torch.rand(50, generator=gen, dtype=torch.float64) * w**2
    fig = P.plot_saliency_vs_magnitude(w, s, amount=0.3)
    ax = fig.axes[0]
    groups = {c.get_label(): np.asarray(c.get_offsets()) for c in ax.collections}
    assert sorted(groups) == ["kept by both", "removed by OBD only", "removed by both", "removed by magnitude only"]
    x = {name: sorted(pts[:, 0].tolist()) for name, pts in groups.items()}  # |w|, distinct
    by_mag = sorted(w.abs().sort().values[:15].tolist())
    by_obd = sorted(w.abs()[torch.argsort(s)[:15]].tolist())
    assert sorted(x["removed by both"] + x["removed by magnitude only"]) == pytest.approx(by_mag)
    assert sorted(x["removed by both"] + x["removed by OBD only"]) == pytest.approx(by_obd)
    assert sum(len(v) for v in x.values()) == 50
    agree = len(set(by_mag) & set(by_obd))
    assert ax.get_title() == f"remove 30%: criteria agree on {agree} of 15 weights"
    plt.close(fig)


@pytest.mark.parametrize("amount", [0.0, 0.5])
def test_plot_filter_ranking_draws_the_sorted_norms(amount):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    model = CourseCNN(channels=(6, 4), image_size=8)
    norms = P.l1_filter_norms(model.conv1)
    fig = P.plot_filter_ranking(model, "conv1", amount, input_shape=(1, 1, 8, 8))
    bars = fig.axes[0].patches
    np.testing.assert_allclose([b.get_height() for b in bars], norms.sort(descending=True).values.numpy(), rtol=1e-6)
    red = [matplotlib.colors.same_color(b.get_facecolor(), "tab:red") for b in bars]
    assert red == [False] * (6 - round(amount * 6)) + [True] * round(amount * 6)  # the smallest, last
    small = copy.deepcopy(model)
    if amount:
        P.prune_filters(small, "conv1", amount)
    p0, p1 = count_parameters(model), count_parameters(small)
    assert f"params {p0}->{p1}" in fig.axes[0].get_title()
    assert model.conv1.out_channels == 6  # the callback works on a copy
    plt.close(fig)


def _two_conv_net():
    """conv1 (1->2, 1x1), ReLU, conv2 (2->2, 1x1), flatten, fc (2*2*2 -> 3), hand-set weights.

    conv1's filter 0 has the smaller L1 norm (0.5 < 2). conv2's filter 0 = (10, 0.1) outweighs filter
    1 = (1, 1) on the original weights (10.1 > 2), but without the kernel reading conv1's channel 0
    it is the smaller one (0.1 < 1): the two strategies of Li et al. remove different filters.
    """
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.Flatten(), nn.Linear(8, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([0.5, 2.0]).reshape(2, 1, 1, 1))
        net[0].bias.copy_(torch.tensor([0.1, 0.2]))
        net[2].weight.copy_(torch.tensor([[10.0, 0.1], [1.0, 1.0]]).reshape(2, 2, 1, 1))
        net[2].bias.copy_(torch.tensor([0.3, 0.4]))
        net[4].weight.copy_(torch.arange(24, dtype=torch.float32).reshape(3, 8))
        net[4].bias.zero_()
    return net


@pytest.mark.parametrize(
    "strategy, removed2, conv2_weight, fc_cols",
    [
        # ranked on the original weights: (10, 0.1) -> 10.1 stays, (1, 1) -> 2 goes
        ("independent", [1], [[0.1]], [0, 1, 2, 3]),
        # ranked after conv1's channel 0 is gone: 0.1 < 1, so filter 0 goes
        ("greedy", [0], [[1.0]], [4, 5, 6, 7]),
    ],
)
def test_prune_layers_independent_vs_greedy_hand_built(strategy, removed2, conv2_weight, fc_cols):
    net = _two_conv_net()
    original = copy.deepcopy(net)
    removed = P.prune_layers(net, {"0": 0.5, "2": 0.5}, strategy=strategy)
    assert removed == {"0": [0], "2": removed2}
    torch.testing.assert_close(net[0].weight, torch.tensor([2.0]).reshape(1, 1, 1, 1))
    torch.testing.assert_close(net[0].bias, torch.tensor([0.2]))
    torch.testing.assert_close(net[2].weight, torch.tensor(conv2_weight).reshape(1, 1, 1, 1))
    torch.testing.assert_close(net[2].bias, original[2].bias[[1 - removed2[0]]])
    torch.testing.assert_close(net[4].weight, original[4].weight[:, fc_cols])
    # the forward pass equals the original network with the removed channels' readers zeroed
    ref = copy.deepcopy(original)
    with torch.no_grad():
        ref[2].weight[:, 0] = 0
        ref[4].weight[:, [c for c in range(8) if c not in fc_cols]] = 0
        ref[2].bias[removed2[0]] = 0
    x = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(net(x), ref(x))


def test_prune_layers_strategies_on_coursecnn_match_their_definitions():
    torch.manual_seed(0)
    base = CourseCNN(channels=(8, 16), image_size=28)
    plan = {"conv1": 0.5, "conv2": 0.25}
    # independent = every layer ranked on the original weights
    ind = copy.deepcopy(base)
    expected = {n: P.smallest_filters(getattr(base, n), f) for n, f in plan.items()}
    assert P.prune_layers(ind, plan, strategy="independent") == expected
    # greedy = prune_filters one layer after the other
    greedy, manual = copy.deepcopy(base), copy.deepcopy(base)
    got = P.prune_layers(greedy, plan, strategy="greedy")
    assert got == {n: P.prune_filters(manual, n, f) for n, f in plan.items()}
    for a, b in zip(greedy.parameters(), manual.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert greedy.conv1.out_channels == ind.conv1.out_channels == 4
    assert greedy.conv2.out_channels == ind.conv2.out_channels == 12


def test_prune_layers_bad_arguments():
    net = _two_conv_net()
    with pytest.raises(ValueError, match="strategy"):
        P.prune_layers(net, {"0": 0.5}, strategy="global")
    with pytest.raises(ValueError, match="not a Conv2d"):
        P.prune_layers(net, {"4": 0.5})
