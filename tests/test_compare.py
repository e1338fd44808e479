"""courselib.compare: sizes on disk, evaluation, Pareto front, recipes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.nn.utils import prune

from courselib import compare
from courselib.binaryconnect import make_binary_cnn
from courselib.data import load_dataset
from courselib.measure import file_bytes
from courselib.models import MLP, CourseCNN
from courselib.training import fit, predict


@pytest.fixture(scope="module")
def small():
    torch.set_num_threads(1)
    X, y = load_dataset("digits", "train", image_size=28)
    Xte, yte = load_dataset("digits", "test", image_size=28)
    return (X[:300], y[:300]), (Xte[:120], yte[:120])


def _sparse_mlp(density, seed=0):
    torch.manual_seed(seed)
    m = MLP(in_features=784, hidden=(64,))
    with torch.no_grad():
        for layer in (m.net[0], m.net[2]):
            mask = torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(seed)) < density
            layer.weight.mul_(mask)
    return m


def test_file_bytes_is_the_written_file(tmp_path):
    m = CourseCNN()
    path = tmp_path / "model.pt"
    compare.save_dense(m, path)
    assert file_bytes(m, compare.save_dense) == os.path.getsize(path)
    n_float = sum(v.numel() * v.element_size() for v in m.state_dict().values())
    assert n_float < file_bytes(m, compare.save_dense) < n_float + 8192  # values plus the container's overhead


def test_save_sparse_size_follows_csr_formula_and_round_trips(tmp_path):
    dense_m, sparse_m = _sparse_mlp(1.0), _sparse_mlp(0.1)
    assert file_bytes(sparse_m, compare.save_sparse) < file_bytes(sparse_m, compare.save_dense) / 3
    # at full density CSR costs more than dense: 8 bytes per value instead of 4
    assert file_bytes(dense_m, compare.save_sparse) > file_bytes(dense_m, compare.save_dense)
    from courselib.pruning import storage_bytes

    w = sparse_m.net[0].weight.detach()
    csr_payload = storage_bytes(w, "csr", value_bytes=4, index_bytes=4)
    diff = file_bytes(_sparse_mlp(1.0), compare.save_sparse) - file_bytes(sparse_m, compare.save_sparse)
    nnz_diff = int(
        (_sparse_mlp(1.0).net[0].weight != 0).sum()
        + (_sparse_mlp(1.0).net[2].weight != 0).sum()
        - (w != 0).sum()
        - (sparse_m.net[2].weight != 0).sum()
    )
    assert abs(diff - 8 * nnz_diff) < 2048 and csr_payload < w.numel() * 4
    compare.save_sparse(sparse_m, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    w_back = state["net.0.weight"].to_dense().reshape(tuple(state["net.0.weight.shape"].tolist()))
    assert torch.equal(w_back, w) and state["net.0.weight"].col_indices().dtype == torch.int32


def test_save_sparse_refuses_masks():
    m = _sparse_mlp(0.5)
    prune.l1_unstructured(m.net[0], "weight", 0.5)
    with pytest.raises(ValueError, match="prune.remove"):
        file_bytes(m, compare.save_sparse)


def test_packed_binary_is_about_32x_smaller():
    m = make_binary_cnn("det", channels=(16, 32), image_size=28)
    n_bin = sum(mod.weight.numel() for mod in m.modules() if hasattr(mod, "eval_weights"))
    saved = file_bytes(m, compare.save_dense) - file_bytes(m, compare.save_packed_binary)
    assert saved > 0.9 * (4 * n_bin - n_bin / 8)


def test_evaluate_compressed(small):
    (X, y), (Xte, yte) = small
    m = CourseCNN()
    out = compare.evaluate_compressed(m, Xte, yte, torch.as_tensor(Xte[:8]), repeats=2)
    assert set(out) == {"accuracy", "size_bytes", "latency_ms"}
    assert out["accuracy"] == pytest.approx(np.mean(predict(m, Xte).argmax(1) == yte))
    assert out["size_bytes"] == file_bytes(m, compare.save_dense) and out["latency_ms"] > 0
    with pytest.raises(TypeError):
        compare.evaluate_compressed(m, Xte, yte, Xte[:8])


def test_pareto_front_hand_worked_and_brute_force():
    pts = [(10, 0.9), (5, 0.8), (20, 0.95), (12, 0.85), (5, 0.7), (20, 0.95), (1, 0.5)]
    assert compare.pareto_front(pts) == [6, 1, 0, 2, 5]
    rng = np.random.default_rng(0)
    P = rng.integers(0, 6, size=(40, 2)).astype(float)
    front = set(compare.pareto_front(P))
    for i in range(len(P)):
        dom = any((P[j][0] <= P[i][0]) and (P[j][1] >= P[i][1]) and tuple(P[j]) != tuple(P[i]) for j in range(len(P)))
        assert (i in front) == (not dom)
    with pytest.raises(ValueError, match="pairs"):
        compare.pareto_front([1, 2, 3])
    with pytest.raises(ValueError, match="finite"):
        compare.pareto_front([(1, np.nan)])


def test_plot_pareto_and_table():
    import matplotlib

    matplotlib.use("Agg")
    rows = [
        {"name": "a", "accuracy": 0.9, "size_bytes": 4096, "latency_ms": 2.0},
        {"name": "b", "accuracy": 0.8, "size_bytes": 1024, "latency_ms": 4.0},
    ]
    fig = compare.plot_pareto(rows, "latency_ms")
    assert fig.axes[0].get_xlabel().startswith("latency")
    table = compare.markdown_table(rows)
    assert "| b | 80.0 | 1,024 | 4.0x | 4.00 | 0.5x |" in table
    with pytest.raises(ValueError, match="cost"):
        compare.plot_pareto(rows, "accuracy")


def test_recipes_shrink_the_model(small):
    (X, y), _ = small
    ref = CourseCNN(channels=(8, 16))
    fit(ref, (X, y), epochs=1, progress=False)
    obd = compare.obd_prune(ref, (X, y), 0.7, n_hessian=32, finetune_epochs=0)
    w = torch.cat([obd.conv1.weight.flatten(), obd.conv2.weight.flatten(), obd.fc.weight.flatten()])
    assert float((w == 0).float().mean()) == pytest.approx(0.7, abs=0.01)
    assert not any(k.endswith("_mask") for k in obd.state_dict())
    fp = compare.filter_prune(ref, (X, y), 0.5, finetune_epochs=0)
    assert (fp.conv1.out_channels, fp.conv2.out_channels) == (4, 8)
    assert ref.conv1.out_channels == 8  # the reference is untouched
    student = compare.distill_student(ref, (X, y), channels=(4, 8), epochs=1)
    q = compare.combined_pipeline(student, ref, (X, y), X[:32], amount=0.5, finetune_epochs=0)
    assert predict(q, X[:4]).shape == (4, 10)
    convs = [m for m in q.modules() if type(m).__name__ == "Conv2d" or "Conv" in type(m).__name__]
    assert convs[-1].weight().shape[0] == 4  # the last pointwise conv lost half its filters, and is int8
    assert convs[-1].weight().dtype == torch.qint8
    with pytest.raises(ValueError, match="unknown settings"):
        compare.trade_off_study((X, y), (X, y), settings={"epochs": 3})


def test_prune_student_is_the_float_part_of_the_pipeline(small):
    (X, y), _ = small
    X, y = X[:128], y[:128]
    ref = compare.train_reference(seed=0, epochs=1, train=(X, y))
    student = compare.distill_student(ref, (X, y), channels=(4, 8), epochs=1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    p0 = compare.prune_student(student, ref, (X, y), amount=0.5, finetune_epochs=0)
    p1 = compare.prune_student(student, ref, (X, y), amount=0.5, finetune_epochs=1)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())  # the student is untouched
    last0 = [m for m in p0.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1][-1]
    last1 = [m for m in p1.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1][-1]
    assert last0.out_channels == last1.out_channels == 4 and not p0.training
    assert not torch.equal(last0.weight, last1.weight)  # finetune_epochs=0 skips the distillation, 1 runs it
    # the pipeline is prune_student, then static int8: the same model, whatever finetune_epochs (0 included)
    for epochs, pruned in [(0, p0), (1, p1)]:
        q = compare.combined_pipeline(student, ref, (X, y), X[:32], amount=0.5, finetune_epochs=epochs)
        want = compare.quantize_static_int8(pruned, X[:32])
        np.testing.assert_array_equal(predict(q, X[:16]), predict(want, X[:16]))
    with pytest.raises(ValueError, match="finetune_epochs"):
        compare.prune_student(student, ref, (X, y), finetune_epochs=-1)


def test_trade_off_study_passes_the_study_settings_as_they_are(small, monkeypatch):
    (X, y), test = small
    assert {"finetune_epochs", "pipeline_epochs"} <= set(compare.STUDY)
    calls = {}
    ref = CourseCNN(channels=(2, 2))

    def recorder(name):
        def recipe(*args, **kwargs):
            calls[name] = kwargs
            return ref

        return recipe

    for name in ("train_binary", "obd_prune", "filter_prune", "distill_student", "combined_pipeline"):
        monkeypatch.setattr(compare, name, recorder(name))
    monkeypatch.setattr(compare, "quantize_dynamic_int8", lambda m: m)
    monkeypatch.setattr(compare, "quantize_static_int8", lambda m, X: m)
    monkeypatch.setattr(
        compare, "evaluate_compressed", lambda *a, **k: {"accuracy": 1.0, "size_bytes": 1, "latency_ms": 1.0}
    )
    for settings in ({"finetune_epochs": 0, "pipeline_epochs": 0}, {"finetune_epochs": 3, "pipeline_epochs": 1}):
        rows, _ = compare.trade_off_study((X, y), test, settings=settings, reference=ref)
        assert len(rows) == 8
        assert (
            calls["obd_prune"]["finetune_epochs"]
            == calls["filter_prune"]["finetune_epochs"]
            == settings["finetune_epochs"]
        )
        assert calls["combined_pipeline"]["finetune_epochs"] == settings["pipeline_epochs"]  # 0 stays 0


def test_recipes_keep_the_callers_random_stream(small):
    (X, y), _ = small
    X, y = X[:64], y[:64]
    results = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)
        before = torch.get_rng_state()
        ref = compare.train_reference(seed=0, epochs=1, train=(X, y))
        student = compare.distill_student(ref, (X, y), channels=(4, 8), epochs=1)
        binary = compare.train_binary((X, y), channels=(4, 8), epochs=1)
        filters = compare.filter_prune(ref, (X, y), 0.5, finetune_epochs=1)
        pruned = compare.prune_student(student, ref, (X, y), finetune_epochs=1)
        obd = compare.obd_prune(ref, (X, y), 0.5, n_hessian=16, finetune_epochs=1)
        assert torch.equal(torch.get_rng_state(), before)
        results.append([predict(m, X[:8]) for m in (ref, student, binary, filters, pruned, obd)])
    for a, b in zip(*results):  # the seed alone decides, whatever the caller's stream
        np.testing.assert_array_equal(a, b)
