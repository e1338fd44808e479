"""courselib.deploy: ExecuTorch and ONNX Runtime programs against eager PyTorch and the book's int8 equations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from courselib import deploy
from courselib.binaryconnect import make_binary_cnn
from courselib.measure import count_parameters, fold_batchnorm
from courselib.models import CourseCNN
from courselib.quantization import quantize_uniform

FP32_TOL = 1e-5  # float32 programs: same arithmetic up to summation order
INT8_REL_TOL = 0.05  # int8 programs: within 5% of the largest logit of the float model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = CourseCNN(channels=(8, 16))
    with torch.no_grad():  # BatchNorm with non-trivial statistics, so that folding matters
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
    return m.eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    calib = torch.rand(128, 1, 28, 28, generator=g)
    fresh = torch.rand(40, 1, 28, 28, generator=g)
    return calib, fresh


def eager(m, x):
    with torch.no_grad():
        return m(x).numpy()


def test_fp32_executorch_matches_eager(model, data, tmp_path):
    _, x = data
    path = deploy.export_executorch(model, x[:8], tmp_path / "m.pte")
    prog = deploy.load_program(path)
    assert prog.runtime == "executorch" and prog.batch_size == 8
    for b in (8, 1, 5):  # any batch up to the example's
        out = prog(x[:b])
        assert out.shape == (b, 10)
        np.testing.assert_allclose(out, eager(model, x[:b]), atol=FP32_TOL, rtol=0)
    # every batch of the 40 images (the last one shorter) gives the eager logits
    np.testing.assert_allclose(deploy.program_outputs(prog, x), eager(model, x), atol=FP32_TOL, rtol=0)
    with pytest.raises(ValueError, match=r"b <= 8 \(fixed at export\)"):
        prog(x[:9])
    with pytest.raises(ValueError, match=r"fixed at export"):
        prog(x[:2, :, :20])
    one = deploy.load_program(deploy.export_executorch(model, x[:1], tmp_path / "one.pte"))
    assert one.batch_size == 1
    np.testing.assert_allclose(one(x[:1]), eager(model, x[:1]), atol=FP32_TOL, rtol=0)


def test_fp32_onnxruntime_matches_eager(model, data, tmp_path):
    _, x = data
    prog = deploy.load_program(deploy.export_onnx(model, x[:1], tmp_path / "m.onnx"))
    assert prog.runtime == "onnxruntime" and prog.batch_size is None
    for b in (1, 7, 40):  # dynamic batch axis
        np.testing.assert_allclose(prog(x[:b]), eager(model, x[:b]), atol=FP32_TOL, rtol=0)


def test_int8_programs_close_to_eager_and_equal_to_the_simulated_graph(model, data, tmp_path):
    calib, x = data
    ref = eager(model, x)
    tol = INT8_REL_TOL * np.abs(ref).max()
    converted = deploy.quantize_pt2e(model, calib)
    et = deploy.load_program(deploy.export_executorch(model, x, tmp_path / "q.pte", converted=converted))
    out = et(x)
    assert np.abs(out - ref).max() <= tol, (np.abs(out - ref).max(), tol)
    assert np.abs(out - ref).max() > FP32_TOL  # it really is int8
    with torch.no_grad():  # the XNNPACK int8 kernels compute what the quantize-dequantize graph simulates,
        simulated = converted(x).numpy()  # up to a rounding tie of the output: at most one output step
    step = [p for p in deploy.quantization_parameters(converted) if p["kind"] == "activation"][-1]["scale"]
    assert np.abs(out - simulated).max() <= 1.01 * step
    assert (np.abs(out - simulated) < 1e-6).mean() >= 0.95
    fp = deploy.export_onnx(model, x[:1], tmp_path / "f.onnx")
    ox = deploy.load_program(deploy.quantize_onnx(fp, tmp_path / "q.onnx", calibration_X=calib))
    assert np.abs(ox(x) - ref).max() <= tol
    # predictions agree with eager on (almost) every image
    assert (ox(x).argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9


def _relu1_range(model, calib):
    """min/max of conv1 -> bn1 -> relu over the calibration images (the first activation after the input)."""
    with torch.no_grad():
        a = model.relu(model.bn1(model.conv1(calib)))
    return a.numpy()


def test_executorch_int8_parameters_follow_the_book(model, data):
    calib, _ = data
    params = deploy.quantization_parameters(deploy.quantize_pt2e(model, calib))
    acts = [p for p in params if p["kind"] == "activation"]
    weights = [p for p in params if p["kind"] == "weight" and p["axis"] is not None]
    # input: min-max range of the calibration images, book Eqs. quant-scale / quant-zero-point; signed zp = z - 128
    _, s, z = quantize_uniform(calib.numpy(), 8)
    assert acts[0]["scale"] == pytest.approx(s, rel=1e-6)
    assert acts[0]["zero_point"] == z - 128
    assert (acts[0]["qmin"], acts[0]["qmax"]) == (-128, 127)
    # the ReLU output after conv1 (range [0, max]): s = max / 255, z = 0 -> -128
    _, s1, z1 = quantize_uniform(_relu1_range(model, calib), 8)
    assert any(a["scale"] == pytest.approx(s1, rel=1e-5) and a["zero_point"] == z1 - 128 for a in acts), (s1, acts)
    # weights: BatchNorm folded first, then symmetric per output channel, book Eq. quant-symmetric
    folded = fold_batchnorm(model)
    assert len(weights) == 3
    for p, layer in zip(weights, (folded.conv1, folded.conv2, folded.fc)):
        w = layer.weight.detach().numpy()
        q, s, z = quantize_uniform(w, 8, symmetric=True, per_channel_axis=0)
        np.testing.assert_allclose(p["scale"].numpy(), s.ravel(), rtol=1e-5)
        assert p["axis"] == 0 and (p["zero_point"] == 0).all()
        assert p["q"].dtype == torch.int8
        # the stored integers are the book's q shifted by 2^(b-1); float32 rounding may move a value that
        # sits on a rounding tie (w/s = k + 1/2) by one step, nothing else
        diff = p["q"].numpy().astype(int) - (q.astype(int) - 128)
        ratio = w.astype(np.float64) / s
        near_tie = np.abs(ratio - np.floor(ratio) - 0.5) < 1e-4
        assert np.abs(diff).max() <= 1 and np.all(near_tie[diff != 0]), (diff[diff != 0], ratio[diff != 0])


def test_onnxruntime_int8_parameters_follow_the_book(model, data, tmp_path):
    calib, _ = data
    fp = deploy.export_onnx(model, calib[:1], tmp_path / "f.onnx")
    params = deploy.onnx_quantization_parameters(deploy.quantize_onnx(fp, tmp_path / "q.onnx", calibration_X=calib))
    acts = [p for p in params if p["kind"] == "activation"]
    weights = [p for p in params if p["kind"] == "weight" and p["axis"] is not None and p["dtype"] == "int8"]
    # uint8 activations: exactly the book's s and z
    _, s, z = quantize_uniform(calib.numpy(), 8)
    assert acts[0]["dtype"] == "uint8"
    assert acts[0]["scale"] == pytest.approx(s, rel=1e-6) and acts[0]["zero_point"] == z
    _, s1, z1 = quantize_uniform(_relu1_range(model, calib), 8)
    assert any(a["scale"] == pytest.approx(s1, rel=1e-5) and a["zero_point"] == z1 for a in acts)
    # int8 weights, narrow symmetric grid -127..127: s = max|w| / 127 = the book's symmetric s * 127.5 / 127
    folded = fold_batchnorm(model)
    scales = sorted(tuple(np.round(p["scale"], 12)) for p in weights)
    for layer in (folded.conv1, folded.conv2, folded.fc):
        _, s, _ = quantize_uniform(layer.weight.detach().numpy(), 8, symmetric=True, per_channel_axis=0)
        want = s.ravel() * 127.5 / 127
        assert any(len(c) == len(want) and np.allclose(c, want, rtol=1e-5) for c in scales), layer


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # a Python branch on tensor values
            return self.fc(x)
        return -self.fc(x)


@pytest.mark.parametrize("runtime", deploy.RUNTIMES)
def test_data_dependent_branch_gives_a_clear_error(runtime, tmp_path):
    x = torch.ones(1, 4)
    with pytest.raises(deploy.DeployError, match=r"Branchy.*data-dependent control flow.*torch\.where") as info:
        if runtime == "executorch":
            deploy.export_executorch(Branchy(), x, tmp_path / "b.pte")
        else:
            deploy.export_onnx(Branchy(), x, tmp_path / "b.onnx")
    assert "if x.sum() > 0" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not (tmp_path / "b.pte").exists()


def test_size_on_disk_is_the_real_file(model, data, tmp_path):
    calib, x = data
    fp = deploy.export_executorch(model, x[:1], tmp_path / "f.pte")
    q8 = deploy.export_executorch(model, x[:1], tmp_path / "q.pte", quantize="static", calibration_X=calib)
    assert deploy.program_bytes(fp) == len(fp.read_bytes()) > 0
    assert deploy.program_bytes(q8) == len(q8.read_bytes())
    n = count_parameters(fold_batchnorm(model))
    # fp32 holds 4 bytes per (folded) parameter plus the program; int8 about 1 byte per weight
    assert deploy.program_bytes(fp) >= 4 * n
    assert n <= deploy.program_bytes(q8) < deploy.program_bytes(fp) / 2


def test_binary_layers_deploy_as_plus_minus_one_weights(data, tmp_path):
    torch.manual_seed(0)
    bnet = make_binary_cnn("det", channels=(4, 8), image_size=28, float_first_conv=True).eval()
    _, x = data
    copy_ = deploy.deployable_copy(bnet)
    binary = [m for m in copy_.modules() if isinstance(m, nn.Conv2d | nn.Linear)][1:]
    assert binary and all(set(torch.unique(m.weight).tolist()) <= {-1.0, 1.0} for m in binary)
    prog = deploy.load_program(deploy.export_executorch(bnet, x[:4], tmp_path / "b.pte"))
    np.testing.assert_allclose(prog(x[:4]), eager(bnet, x[:4]), atol=1e-4, rtol=1e-5)


def test_deploy_model_reports_runtime_numbers(model, data, tmp_path):
    calib, x = data
    y = eager(model, x).argmax(1)
    y[:5] = (y[:5] + 1) % 10  # 5 of 40 labels wrong on purpose: accuracy 35/40 for an exact program
    for runtime in deploy.RUNTIMES:
        r = deploy.deploy_model(model, x, y, runtime=runtime, batch_sizes=(1, 8), folder=tmp_path / runtime, repeats=3)
        assert r["accuracy"] == pytest.approx(35 / 40)
        assert set(r["latency_ms"]) == {1, 8} and all(v > 0 for v in r["latency_ms"].values())
        assert r["size_bytes"] == deploy.program_bytes(r["path"])
    with pytest.raises(ValueError, match="batch_sizes"):
        deploy.deploy_model(model, x, y, batch_sizes=(64,))
    with pytest.raises(ValueError, match="quantize"):
        deploy.deploy_model(model, x, y, quantize="int4")


def test_program_latency_checks_its_arguments(model, data, tmp_path):
    _, x = data
    prog = deploy.load_program(deploy.export_onnx(model, x[:1], tmp_path / "m.onnx"))
    assert deploy.program_latency(prog, x[:2], repeats=2, warmup=0) > 0
    with pytest.raises(ValueError, match="repeats"):
        deploy.program_latency(prog, x[:2], repeats=0)
    with pytest.raises(TypeError, match="Program"):
        deploy.program_latency(model, x[:2])
    with pytest.raises(ValueError, match=r"\.pte or an \.onnx"):
        (tmp_path / "m.bin").write_bytes(b"x")
        deploy.load_program(tmp_path / "m.bin")
