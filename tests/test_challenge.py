"""courselib.challenge: safe submission format, published score, hostile files, leaderboard."""

from __future__ import annotations

import copy
import csv
import json
import os
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch

from courselib import challenge as C
from courselib import deploy
from courselib._challenge_format import MAX_JSON_BYTES
from courselib.binaryconnect import make_binary_cnn
from courselib.data import load_dataset
from courselib.distillation import SeparableCNN
from courselib.grading import leaderboard, private_set
from courselib.grading.course import GradingError
from courselib.models import CourseCNN
from courselib.pruning import prune_filters
from courselib.training import evaluate, predict

REF_KW = {"channels": [16, 32]}


@pytest.fixture(scope="module")
def data():
    X, y = load_dataset("digits", "test", image_size=28)
    return X[:200], y[:200]


@pytest.fixture(scope="module")
def reference():
    torch.set_num_threads(1)
    return C.train_reference(seed=0, epochs=1)


@pytest.fixture(scope="module")
def ref_stats(reference, data):
    return C.reference_stats(reference, *data, C.LATENCY_BATCH, 5)


def _random_cnn(channels=(16, 32), seed=0):
    torch.manual_seed(seed)
    m = CourseCNN(channels=channels).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return m


def test_challenge_data_split():
    d = C.challenge_data()
    assert sorted(d) == ["train", "val"], "the students' data has no test split (the graded set is private)"
    assert [len(d[k][0]) for k in ("train", "val")] == [1000, 257]
    assert d["train"][0].shape[1:] == (28, 28)
    assert np.array_equal(
        np.bincount(d["train"][1]) + np.bincount(d["val"][1]), np.bincount(load_dataset("digits", "train")[1])
    )


# ------------------------------------------------------------------ the private test set (instructor side)
def _course(tmp_path, settings: str = ""):
    course = tmp_path / "course"
    (course / "source").mkdir(parents=True, exist_ok=True)
    (course / "nbgrader_config.py").write_text("c = get_config()\n")
    (course / "course.toml").write_text(settings)
    return course


def test_private_set_is_disjoint_from_everything_students_can_load(tmp_path):
    course = _course(tmp_path, "[labs.lab06_challenge]\ntest_seed = 20261201\n")
    X, y = private_set.private_test_set("lab06_challenge", course)
    assert X.shape == (540, 28, 28) and X.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= X.min() and X.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(y), np.bincount(load_dataset("digits", "test")[1]))
    d = C.challenge_data()
    student = np.concatenate([d["train"][0], d["val"][0]]).reshape(1257, -1)
    public_test = load_dataset("digits", "test", image_size=28)[0].reshape(540, -1)
    flat = X.reshape(len(X), -1)
    # the base images are the digits test split: not one of them is an image of the students' splits
    base8 = load_dataset("digits", "test")[0].reshape(540, -1)
    train8 = load_dataset("digits", "train")[0].reshape(1257, -1)
    assert not {r.tobytes() for r in base8} & {r.tobytes() for r in train8}
    # and no graded image is any image a notebook can load: neither a student image nor a public test image
    for other, what in ((student, "a training/validation image"), (public_test, "a public digits test image")):
        d2 = (flat**2).sum(1)[:, None] - 2 * flat @ other.T + (other**2).sum(1)[None, :]
        nearest = np.sqrt(np.maximum(d2, 0)).min(axis=1)
        assert nearest.min() > 0.5, f"a private image is (almost) {what}: distance {nearest.min():.3f}"


def test_private_set_needs_the_secret(tmp_path):
    X1, y1 = private_set.perturbed_digits(20261201)
    X2, y2 = private_set.perturbed_digits(20261201)
    X3, y3 = private_set.perturbed_digits(20261202)
    assert np.array_equal(X1, X2) and np.array_equal(y1, y2)  # the instructor regenerates it exactly
    assert not np.array_equal(y1, y3) and np.abs(X1 - X3).max() > 0.5  # another seed: other images, other order


def test_reference_scores_on_the_private_set_as_on_public_digits():
    """The perturbations keep the set a fair test: the reference loses a few points, no more."""
    ref = C.train_reference(seed=0)
    X, y = private_set.perturbed_digits(7)
    public = evaluate(ref, load_dataset("digits", "test", image_size=28))["accuracy"]
    private = evaluate(ref, (X, y))["accuracy"]
    assert public - 0.06 <= private <= public, (public, private)


def test_grading_refuses_without_the_instructors_setting(tmp_path, ref_stats):
    course = _course(tmp_path, '[labs.lab06_challenge]\nafter_grading = "courselib.grading.leaderboard:lab_hook"\n')
    with pytest.raises(GradingError, match="no private test set for lab06_challenge.*test_seed"):
        leaderboard.grade_challenge(tmp_path / "subs", tmp_path / "grades", reference=ref_stats, course_dir=course)
    with pytest.raises(GradingError, match="no private test set"):
        leaderboard.lab_hook(lab="lab06_challenge", course=course, submissions={}, scratch=tmp_path / "s")
    course = _course(tmp_path, '[labs.lab06_challenge]\ntest_seed = "abc"\n')
    with pytest.raises(GradingError, match="integer"):
        private_set.private_test_set("lab06_challenge", course)


def test_private_set_from_an_instructor_file(tmp_path):
    X, y = private_set.perturbed_digits(3)
    course = _course(tmp_path, '[labs.lab06_challenge]\ntest_set = "private/test.npz"\n')
    (course / "private").mkdir()
    np.savez(course / "private" / "test.npz", X=X[:50], y=y[:50])
    Xg, yg = private_set.private_test_set("lab06_challenge", course)
    assert np.array_equal(Xg, X[:50]) and np.array_equal(yg, y[:50])
    (course / "source" / "lab06_challenge").mkdir()
    np.savez(course / "source" / "lab06_challenge" / "test.npz", X=X[:50], y=y[:50])
    (course / "course.toml").write_text('[labs.lab06_challenge]\ntest_set = "source/lab06_challenge/test.npz"\n')
    with pytest.raises(GradingError, match="gives to students"):
        private_set.private_test_set("lab06_challenge", course)
    np.savez(course / "private" / "bad.npz", X=X[:5, :8, :8], y=y[:5])
    (course / "course.toml").write_text('[labs.lab06_challenge]\ntest_set = "private/bad.npz"\n')
    with pytest.raises(GradingError, match="shape"):
        private_set.private_test_set("lab06_challenge", course)
    (course / "course.toml").write_text('[labs.lab06_challenge]\ntest_set = "private/none.npz"\n')
    with pytest.raises(GradingError, match="does not exist"):
        private_set.private_test_set("lab06_challenge", course)


# ------------------------------------------------------------------ encodings and score
def test_encode_int8_hand_worked():
    w = torch.tensor([[1.27, -0.635, 0.0], [0.0, 0.0, 0.0], [-2.54, 0.01, 1.0]])
    q, s = C.encode_int8(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    assert torch.allclose(s, torch.tensor([0.01, 0.0, 0.02]))
    assert q.tolist() == [[127, -64, 0], [0, 0, 0], [-127, 0, 50]]  # -63.5 rounds to even (-64)


def test_encode_int8_matches_torch_quantize_per_channel():
    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    q, s = C.encode_int8(w)
    with warnings.catch_warnings():  # quantized tensor creation is deprecated (still the answer key)
        warnings.simplefilter("ignore")
        tq = torch.quantize_per_channel(w, s.double(), torch.zeros(6, dtype=torch.long), 0, torch.qint8)
    assert torch.equal(tq.int_repr(), q)
    assert torch.allclose(tq.dequantize(), q.float() * s[:, None, None, None])


def test_encode_int8_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        C.encode_int8(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="non-empty"):
        C.encode_int8(torch.zeros(0))


def test_challenge_score_formula():
    assert C.challenge_score(0.97, 100, 2.0, 0.98, 400, 8.0, 0.02) == pytest.approx(4.0)
    assert C.challenge_score(0.98, 400, 8.0, 0.98, 400, 8.0) == pytest.approx(1.0)
    assert C.challenge_score(0.959, 1, 1e-6, 0.98, 400, 8.0, 0.02) == 0.0  # below the margin
    assert C.challenge_score(0.96, 200, 8.0, 0.98, 400, 8.0, 0.02) == pytest.approx(np.sqrt(2))
    with pytest.raises(ValueError, match="size_bytes"):
        C.challenge_score(0.9, 0, 1.0, 0.9, 1, 1.0)
    with pytest.raises(ValueError, match="accuracy"):
        C.challenge_score(1.5, 1, 1.0, 0.9, 1, 1.0)
    with pytest.raises(ValueError, match="finite"):
        C.challenge_score(float("nan"), 1, 1.0, 0.9, 1, 1.0)


# ------------------------------------------------------------------ save / load round trips
@pytest.mark.parametrize("bits", [32, 16, 8])
def test_round_trip_predictions(tmp_path, data, bits):
    m = _random_cnn()
    C.save_submission(m, tmp_path, "CourseCNN", REF_KW, weight_bits=bits)
    loaded, meta = C.load_submission(tmp_path)
    assert meta["arch"] == "CourseCNN" and meta["runtime"] == "float32"
    assert meta["n_parameters"] == sum(p.numel() for p in m.parameters())
    X = data[0][:32]
    want = m
    if bits == 8:  # the loaded weights are exactly scale * q
        want = copy.deepcopy(m)
        with torch.no_grad():
            for layer in (want.conv1, want.conv2, want.fc):
                q, s = C.encode_int8(layer.weight)
                layer.weight.copy_(q.float() * s.reshape(-1, *[1] * (q.dim() - 1)))
    tol = 1e-2 if bits == 16 else 1e-5
    np.testing.assert_allclose(predict(loaded, X), predict(want, X), atol=tol, rtol=tol)


def test_loading_a_submission_leaves_the_callers_random_stream(tmp_path):
    C.save_submission(_random_cnn(), tmp_path, "CourseCNN", REF_KW)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    C.load_submission(tmp_path)  # builds the model (weight initialisation) before loading its weights
    assert torch.equal(torch.get_rng_state(), before)


def test_sizes_shrink_with_bits(tmp_path):
    m = _random_cnn()
    sizes = {}
    for bits in (32, 16, 8, 1):
        C.save_submission(m, tmp_path / str(bits), "CourseCNN", REF_KW, weight_bits=bits)
        sizes[bits] = C.submission_nbytes(tmp_path / str(bits))
        assert sizes[bits] == sum(
            os.path.getsize(tmp_path / str(bits) / n) for n in ("model.json", "model.safetensors")
        )
    assert sizes[32] > sizes[16] > sizes[8] > sizes[1]
    n_weights = sum(layer.weight.numel() for layer in (m.conv1, m.conv2, m.fc))
    assert sizes[32] - sizes[8] >= 3 * n_weights - 1024  # 4 bytes -> 1 byte per weight (+ scales)


def test_binary_round_trip_exact_and_xnor_alpha(tmp_path, data):
    torch.manual_seed(0)
    b = make_binary_cnn("det", channels=(8, 16), image_size=28, float_first_conv=True).eval()
    kw = {"mode": "det", "channels": [8, 16], "image_size": 28, "float_first_conv": True}
    C.save_submission(b, tmp_path / "b", "BinaryCNN", kw, weight_bits=1)
    loaded, _ = C.load_submission(tmp_path / "b")
    X = data[0][:16]
    # binary layers keep sign(w) exactly (alpha = 1); the float first conv becomes alpha * sign(w)
    ref = copy.deepcopy(b)
    with torch.no_grad():
        w = ref[1].weight
        ref[1].weight.copy_(torch.where(w >= 0, 1.0, -1.0) * w.abs().mean(dim=(1, 2, 3), keepdim=True))
    np.testing.assert_allclose(predict(loaded, X), predict(ref, X), atol=1e-4)


def test_int8_runtime_builds_quantized_model(tmp_path, data):
    m = _random_cnn()
    C.save_submission(m, tmp_path, "CourseCNN", REF_KW, weight_bits=8, runtime="int8")
    loaded, meta = C.load_submission(tmp_path)
    assert meta["runtime"] == "int8"
    assert any("quantized" in type(mod).__module__ for mod in loaded.modules())
    assert predict(loaded, data[0][:8]).shape == (8, 10)


def test_save_submission_rejects_mismatch_and_bad_args(tmp_path):
    m = _random_cnn()
    with pytest.raises(ValueError, match="shape"):
        C.save_submission(m, tmp_path, "CourseCNN", {"channels": [8, 32]})
    with pytest.raises(ValueError, match="state_dict does not match"):
        C.save_submission(m, tmp_path, "SeparableCNN", {"channels": [16, 32]})
    with pytest.raises(ValueError, match="weight_bits"):
        C.save_submission(m, tmp_path, "CourseCNN", REF_KW, weight_bits=4)
    with pytest.raises(ValueError, match="runtime"):
        C.save_submission(m, tmp_path, "CourseCNN", REF_KW, runtime="fp8")
    with pytest.raises(ValueError, match="arch must be one of"):
        C.save_submission(m, tmp_path, "ResNet", REF_KW)
    with pytest.raises(ValueError, match="JSON"):
        C.save_submission(m, tmp_path, "CourseCNN", {"channels": {1, 2}})
    with pytest.raises(TypeError):
        C.save_submission("model", tmp_path, "CourseCNN", REF_KW)


# ------------------------------------------------------------------ scoring
def test_reference_solution_gets_a_valid_score(tmp_path, reference, ref_stats, data):
    m = copy.deepcopy(reference)
    prune_filters(m, "conv2", 0.25)
    C.save_submission(m, tmp_path, "CourseCNN", {"channels": [16, 24]}, weight_bits=8)
    res = C.score_submission(tmp_path, *data, ref_stats, margin=1.0, repeats=3)
    assert res["status"] == "scored", res["note"]
    assert res["score"] > 0 and res["size_bytes"] < ref_stats["size_bytes"] / 3
    assert 0 <= res["accuracy"] <= 1 and res["latency_ms"] > 0
    expected = C.challenge_score(
        res["accuracy"],
        res["size_bytes"],
        res["latency_ms"] / 1e3,
        ref_stats["accuracy"],
        ref_stats["size_bytes"],
        ref_stats["latency_s"],
        1.0,
    )
    assert res["score"] == pytest.approx(expected)


def test_reference_module_is_measured_like_a_submission(tmp_path, reference, data):
    C.save_submission(reference, tmp_path, "CourseCNN", REF_KW)
    res = C.score_submission(tmp_path, *data, reference, repeats=3)
    assert res["status"] == "scored"
    assert res["accuracy"] == pytest.approx(res["reference"]["accuracy"])
    assert res["size_bytes"] == res["reference"]["size_bytes"]


def test_below_margin_scores_zero(tmp_path, ref_stats, data):
    torch.manual_seed(3)
    C.save_submission(SeparableCNN(channels=(4, 8)), tmp_path, "SeparableCNN", {"channels": [4, 8]})
    res = C.score_submission(tmp_path, *data, ref_stats, repeats=3)
    assert res["status"] == "below-margin" and res["score"] == 0.0 and res["accuracy"] < 0.5


def test_blank_submission_gets_no_score(tmp_path, ref_stats, data):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "absent"):
        res = C.score_submission(folder, *data, ref_stats)
        assert res["status"] == "missing" and res["score"] is None and res["accuracy"] is None


# ------------------------------------------------------------------ hostile and broken files
def _valid(tmp_path, name="sub"):
    folder = tmp_path / name
    C.save_submission(_random_cnn(), folder, "CourseCNN", REF_KW, weight_bits=8)
    return folder


def _refused(folder, status, match):
    with pytest.raises(C.ChallengeError, match=match) as info:
        C.load_submission(folder)
    assert info.value.status == status
    return info.value


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_execute_code_is_refused_unexecuted(tmp_path, ref_stats, data):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps({"conv1.weight": _Evil(marker)})
    folder = _valid(tmp_path)
    (folder / "model.safetensors").write_bytes(payload)
    _refused(folder, "invalid-model", "safetensors")
    torch.save({"x": _Evil(marker)}, folder / "model.safetensors")  # a torch zip-pickle
    _refused(folder, "invalid-model", "safetensors")
    res = C.score_submission(folder, *data, ref_stats)
    assert res["status"] == "invalid-model" and res["score"] is None
    assert not marker.exists()


def test_truncated_file_is_refused(tmp_path):
    folder = _valid(tmp_path)
    raw = (folder / "model.safetensors").read_bytes()
    for cut in (4, 20, len(raw) - 10):
        (folder / "model.safetensors").write_bytes(raw[:cut])
        _refused(folder, "invalid-model", "truncated")


def test_wrong_shapes_are_refused(tmp_path):
    folder = _valid(tmp_path)
    meta = json.loads((folder / "model.json").read_text())
    meta["arch_kwargs"] = {"channels": [8, 16]}
    (folder / "model.json").write_text(json.dumps(meta))
    _refused(folder, "invalid-model", "shape")


def test_non_allow_listed_arch_is_refused(tmp_path):
    folder = _valid(tmp_path)
    for arch in ("os.system", "torch.nn.Module", "__import__", 42):
        (folder / "model.json").write_text(json.dumps({"arch": arch, "arch_kwargs": {}}))
        _refused(folder, "invalid-model", "arch must be one of")
    (folder / "model.json").write_text(
        json.dumps({"arch": "CourseCNN", "arch_kwargs": {"channels": [16, 32], "__class__": "x"}})
    )
    _refused(folder, "invalid-model", "does not take")
    (folder / "model.json").write_text(json.dumps({"arch": "CourseCNN", "arch_kwargs": {"image_size": 8}}))
    _refused(folder, "invalid-model", "fixed")
    (folder / "model.json").write_text("{not json")
    _refused(folder, "invalid-model", "not valid JSON")
    (folder / "model.json").write_text(json.dumps({"arch": "CourseCNN", "code": "print(1)"}))
    _refused(folder, "invalid-model", "keys")


def test_huge_declared_sizes_are_refused(tmp_path):
    folder = _valid(tmp_path)
    (folder / "model.json").write_text(json.dumps({"arch": "CourseCNN", "arch_kwargs": {"channels": [100000, 1]}}))
    _refused(folder, "too-large", "limit")
    (folder / "model.json").write_text(json.dumps({"arch": "CourseCNN", "arch_kwargs": {"channels": [512, 512]}}))
    _refused(folder, "too-large", "parameters")  # counted on the meta device, never allocated
    (folder / "model.json").write_text(json.dumps({"arch": "CourseCNN", "arch_kwargs": REF_KW}))
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    _refused(folder, "invalid-model", "declared header")
    header = json.dumps(
        {"conv1.weight": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}
    ).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    _refused(folder, "too-large", "declared shape")
    (folder / "model.json").write_text(" " * (MAX_JSON_BYTES + 1))
    _refused(folder, "too-large", "limit")


def test_other_broken_files(tmp_path):
    folder = _valid(tmp_path)
    os.remove(folder / "model.safetensors")
    _refused(folder, "missing", "weights file")
    os.symlink("/etc/passwd", folder / "model.safetensors")
    _refused(folder, "invalid-model", "regular file")
    os.remove(folder / "model.safetensors")
    # NaN weights, an extra tensor, a wrong dtype
    from safetensors.torch import save_file

    state = {k: v.float() if v.is_floating_point() else v for k, v in _random_cnn().state_dict().items()}
    bad = dict(state, **{"fc.weight": torch.full_like(state["fc.weight"], float("nan"))})
    save_file(bad, str(folder / "model.safetensors"))
    (folder / "model.json").write_text(json.dumps({"arch": "CourseCNN", "arch_kwargs": REF_KW}))
    _refused(folder, "invalid-model", "NaN")
    save_file(dict(state, extra=torch.zeros(3)), str(folder / "model.safetensors"))
    _refused(folder, "invalid-model", "unexpected")
    save_file(dict(state, **{"fc.weight": state["fc.weight"].double()}), str(folder / "model.safetensors"))
    _refused(folder, "invalid-model", "dtype")
    (folder / "model.json").write_text(json.dumps({"arch": "CourseCNN", "arch_kwargs": REF_KW, "runtime": "gpu"}))
    _refused(folder, "invalid-model", "runtime")


# ------------------------------------------------------------------ leaderboard
def test_write_leaderboard_ranks_and_escapes(tmp_path):
    rows = [
        {
            "student_id": "bob",
            "status": "scored",
            "score": 2.0,
            "accuracy": 0.97,
            "size_bytes": 100,
            "latency_ms": 1.0,
            "note": "",
        },
        {
            "student_id": "<script>alert(1)</script>",
            "status": "invalid-model",
            "score": None,
            "accuracy": None,
            "size_bytes": None,
            "latency_ms": None,
            "note": "a & b",
        },
        {
            "student_id": "ann",
            "status": "scored",
            "score": 3.5,
            "accuracy": 0.98,
            "size_bytes": 50,
            "latency_ms": 0.5,
            "note": "",
        },
    ]
    csv_path, html_path = leaderboard.write_leaderboard(
        rows,
        tmp_path / "lb.csv",
        tmp_path / "lb.html",
        reference={"accuracy": 0.98, "size_bytes": 400, "latency_s": 0.004},
    )
    got = list(csv.DictReader(csv_path.open()))
    assert [r["student_id"] for r in got] == ["ann", "bob", "<script>alert(1)</script>"]
    assert [r["rank"] for r in got] == ["1", "2", ""]
    page = html_path.read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &amp; b" in page
    assert "src=" not in page and "href=" not in page  # self-contained: no external assets
    with pytest.raises(ValueError, match="student_id"):
        leaderboard.write_leaderboard([{"score": 1}], tmp_path / "x.csv", tmp_path / "x.html")


def test_grade_challenge_writes_leaderboard(tmp_path, reference, ref_stats, data):
    subs = tmp_path / "subs"
    C.save_submission(reference, subs / "ref" / "lab06_challenge" / "submission", "CourseCNN", REF_KW, weight_bits=8)
    (subs / "blank" / "lab06_challenge").mkdir(parents=True)
    evil = subs / "evil" / "lab06_challenge" / "submission"
    evil.mkdir(parents=True)
    (evil / "model.json").write_text(json.dumps({"arch": "os.system", "arch_kwargs": {}}))
    rows = leaderboard.grade_challenge(
        subs, tmp_path / "grades", X_test=data[0], y_test=data[1], reference=reference, repeats=3
    )
    by = {r["student_id"]: r for r in rows}
    # measured in the runtime: the 8-bit weights file does not matter, the float32 program is the reference's
    assert by["ref"]["status"] == "scored"
    assert by["ref"]["size_bytes"] == by["ref"]["reference"]["size_bytes"]
    assert 0.5 < by["ref"]["score"] < 2
    assert by["blank"]["status"] == "missing" and by["blank"]["score"] is None
    assert by["evil"]["status"] == "invalid-model"
    assert (tmp_path / "grades" / "lab06_challenge_leaderboard.csv").exists()
    assert "ref" in (tmp_path / "grades" / "lab06_challenge_leaderboard.html").read_text()


def test_grading_writes_the_challenge_leaderboard(tmp_path):
    """`courselib grade lab06_challenge` scores the model folder beside each notebook into a leaderboard."""
    import csv

    from courselib import challenge

    ref = challenge.train_reference()
    root = tmp_path / "subs"
    subs = {}
    for student in ("alice", "bob"):
        d = root / student / "lab06_challenge"
        d.mkdir(parents=True)
        (d / "lab06_challenge.ipynb").write_text("{}")
        subs[student] = d / "lab06_challenge.ipynb"
    challenge.save_submission(
        ref, root / "alice" / "lab06_challenge" / "submission", "CourseCNN", {"channels": [16, 32]}
    )  # bob hands in a notebook but no model
    course = _course(tmp_path, "[labs.lab06_challenge]\ntest_seed = 5\n")  # the instructor's secret
    (course / "grades").mkdir(parents=True)
    html_path = leaderboard.lab_hook(
        lab="lab06_challenge", course=course, submissions=subs, scratch=tmp_path / "scratch"
    )
    assert html_path.exists() and "<script src=" not in html_path.read_text()
    rows = {r["student_id"]: r for r in csv.DictReader((course / "grades" / "lab06_challenge_leaderboard.csv").open())}
    assert set(rows) == {"alice", "bob"}
    assert rows["bob"]["status"] == "missing"
    assert float(rows["alice"]["score"]) > 0


def test_leaderboard_measures_the_program_the_grader_builds(tmp_path, reference, data):
    """Size and latency are those of the ExecuTorch program built from the safe submission, int8 smaller."""
    fp = tmp_path / "fp"
    C.save_submission(reference, fp, "CourseCNN", REF_KW)
    (fp / "model.pte").write_bytes(b"not a program: the grader must never load this")
    q8 = tmp_path / "q8"
    C.save_submission(reference, q8, "CourseCNN", REF_KW, runtime="int8")
    X, y = data
    ref = leaderboard.runtime_stats(reference, X, y, repeats=2)
    res_fp = leaderboard.score_in_runtime(fp, X, y, ref, margin=1.0, repeats=2)
    res_q8 = leaderboard.score_in_runtime(q8, X, y, ref, margin=1.0, repeats=2)
    assert res_fp["status"] == res_q8["status"] == "scored", (res_fp["note"], res_q8["note"])
    want = deploy.program_bytes(
        deploy.export_executorch(reference, torch.as_tensor(X[: C.LATENCY_BATCH]), tmp_path / "r.pte")
    )
    assert res_fp["size_bytes"] == ref["size_bytes"] == want
    assert res_fp["accuracy"] == pytest.approx(evaluate(reference, (X, y))["accuracy"], abs=1 / len(y))
    assert res_q8["size_bytes"] < want / 2.5
    assert "ExecuTorch" in res_q8["note"]
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "model.pte").write_bytes((tmp_path / "r.pte").read_bytes())  # a program alone is not a submission
    assert leaderboard.score_in_runtime(evil, X, y, ref, repeats=2)["status"] == "missing"
