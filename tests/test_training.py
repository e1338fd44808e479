"""courselib.training and courselib.models: seeded, hookable loops that really learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from courselib.data import load_dataset
from courselib.models import MLP, CourseCNN
from courselib.training import evaluate, fit, make_loader, predict


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


def test_fit_learns_digits_and_history(digits):
    (X, y), (Xt, yt) = digits
    model = MLP()
    before = evaluate(model, (Xt, yt))["accuracy"]
    hist = fit(model, (X, y), epochs=8, val_data=(Xt, yt), seed=0, progress=False)
    assert set(hist) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 8 for v in hist.values())
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    assert hist["val_accuracy"][-1] > 0.9 > before
    assert hist["val_accuracy"][-1] == pytest.approx(evaluate(model, (Xt, yt))["accuracy"])


def test_fit_is_reproducible(digits):
    (X, y), _ = digits
    outs = []
    for _ in range(2):
        torch.manual_seed(123)  # same initial weights
        m = MLP()
        fit(m, (X, y), epochs=2, seed=7, progress=False)
        outs.append(predict(m, X[:20]))
    np.testing.assert_array_equal(outs[0], outs[1])


def _dropout_net(seed=123):
    """A small net whose training draws from torch's global generator (dropout), its weights from ``seed``.

    (Building it draws from the global generator too, as every ``nn.Linear`` does: build it before taking
    the caller's state.)"""
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(32, 10)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return net


def test_fit_seed_alone_decides_and_the_callers_stream_is_untouched(digits):
    (X, y), _ = digits
    X, y = X[:256], y[:256]
    outs = []
    for caller_seed, draws in [(1, 3), (999, 1000), (1, 3)]:
        m = _dropout_net()
        torch.manual_seed(caller_seed)  # the caller's stream, perturbed differently between runs
        torch.rand(draws)
        before = torch.get_rng_state()
        expected_next = torch.rand(4, generator=torch.Generator().set_state(before))
        fit(m, (X, y), epochs=2, seed=7, progress=False)
        assert torch.equal(torch.get_rng_state(), before), "fit changed the caller's random stream"
        assert torch.equal(torch.rand(4), expected_next)
        outs.append(predict(m, X[:20]))
    np.testing.assert_array_equal(outs[0], outs[1])  # seed alone decides, whatever the caller's stream
    np.testing.assert_array_equal(outs[0], outs[2])
    other = _dropout_net()
    fit(other, (X, y), epochs=2, seed=8, progress=False)  # and the seed does matter (shuffling, dropout)
    assert not np.array_equal(predict(other, X[:20]), outs[0])


def test_fit_with_a_dataloader_also_keeps_the_callers_stream(digits):
    (X, y), _ = digits
    loader = make_loader((X[:128], y[:128]), batch_size=32, shuffle=True, seed=3)
    net = _dropout_net()
    torch.manual_seed(5)
    before = torch.get_rng_state()
    fit(net, loader, epochs=1, seed=0, progress=False)
    assert torch.equal(torch.get_rng_state(), before)


def test_hooks_after_step_and_compute_loss(digits):
    (X, y), _ = digits
    model = MLP()
    calls = {"after": 0, "loss": 0}

    def after_step(m):
        calls["after"] += 1
        with torch.no_grad():
            for p in m.parameters():
                p.clamp_(-0.05, 0.05)

    def compute_loss(m, xb, yb):
        calls["loss"] += 1
        return torch.nn.functional.cross_entropy(m(xb), yb)

    fit(
        model,
        (X[:256], y[:256]),
        epochs=2,
        batch_size=64,
        after_step=after_step,
        compute_loss=compute_loss,
        progress=False,
    )
    assert calls["after"] == calls["loss"] == 2 * 4
    assert max(p.abs().max().item() for p in model.parameters()) <= 0.05 + 1e-7


def test_evaluate_restores_mode_and_matches_manual(digits):
    _, (Xt, yt) = digits
    model = MLP()
    model.train()
    res = evaluate(model, (Xt, yt))
    assert model.training
    logits = predict(model, Xt)
    assert res["accuracy"] == pytest.approx((logits.argmax(1) == yt).mean())
    assert res["loss"] == pytest.approx(
        float(torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(yt))), rel=1e-5
    )


def test_course_cnn_shapes():
    m = CourseCNN()
    assert m(torch.zeros(2, 28, 28)).shape == (2, 10)
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    m8 = CourseCNN(image_size=8, channels=(4, 8))
    assert m8(torch.zeros(3, 8, 8)).shape == (3, 10)
    assert [n for n, _ in m.named_children()][:5] == ["conv1", "bn1", "conv2", "bn2", "fc"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epochs=-1), "epochs"),
        (dict(lr=0), "lr"),
        (dict(optimizer="rmsprop"), "optimizer"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_fit_bad_arguments(digits, kwargs, match):
    (X, y), _ = digits
    with pytest.raises(ValueError, match=match):
        fit(MLP(), (X, y), progress=False, **kwargs)


def test_bad_data():
    with pytest.raises(ValueError, match="different lengths"):
        make_loader((np.zeros((3, 4)), np.zeros(2)))
    with pytest.raises(TypeError, match=r"\(X, y\) pair"):
        make_loader(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="empty"):
        make_loader((np.zeros((0, 4)), np.zeros(0)))
