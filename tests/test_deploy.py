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


def test_the_program_cache_reuses_a_lowering_only_for_the_same_graph_and_weights(model, data, tmp_path, monkeypatch):
    """With ``COURSELIB_PROGRAM_CACHE`` set, a second export of the same model and batch reads the lowered
    program back (no second lowering) and it runs as the first; another weight, batch, or int8 graph is
    lowered anew. Without the variable nothing is kept."""
    import copy

    from courselib import _deploy_export

    calib, x = data
    lowerings = []
    real = _deploy_export.to_edge_transform_and_lower

    def counting(*a, **k):
        lowerings.append(1)
        return real(*a, **k)

    monkeypatch.setattr(_deploy_export, "to_edge_transform_and_lower", counting)
    monkeypatch.delenv(deploy.PROGRAM_CACHE_ENV, raising=False)  # the suite's own (conftest)
    deploy.export_executorch(model, x[:8], tmp_path / "plain.pte")
    assert len(lowerings) == 1
    cache = tmp_path / "cache"
    monkeypatch.setenv(deploy.PROGRAM_CACHE_ENV, str(cache))
    first = deploy.export_executorch(model, x[:8], tmp_path / "a.pte")
    again = deploy.export_executorch(copy.deepcopy(model), x[8:16], tmp_path / "b.pte")  # same weights, other values
    assert len(lowerings) == 2 and len(list(cache.glob("*.pte"))) == 1
    assert first.read_bytes() == again.read_bytes() == (tmp_path / "plain.pte").read_bytes()
    np.testing.assert_allclose(deploy.load_program(again)(x[:8]), eager(model, x[:8]), atol=FP32_TOL, rtol=0)
    nudged = copy.deepcopy(model)
    with torch.no_grad():
        nudged.conv1.weight[0, 0, 0, 0] += 1e-3
    deploy.export_executorch(nudged, x[:8], tmp_path / "c.pte")
    deploy.export_executorch(model, x[:4], tmp_path / "d.pte")
    converted = deploy.quantize_pt2e(model, calib)
    deploy.export_executorch(model, x[:8], tmp_path / "e.pte", converted=converted)
    assert len(lowerings) == 5 and len(list(cache.glob("*.pte"))) == 4
    np.testing.assert_allclose(deploy.load_program(tmp_path / "c.pte")(x[:8]), eager(nudged, x[:8]), atol=FP32_TOL)
    deploy.export_executorch(model, x[:8], tmp_path / "f.pte", converted=converted)
    assert len(lowerings) == 5 and (tmp_path / "f.pte").read_bytes() == (tmp_path / "e.pte").read_bytes()


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


@pytest.mark.parametrize("reduce_range, top", [(True, 64), (False, 127)])
def test_onnxruntime_int8_parameters_follow_the_book(model, data, tmp_path, reduce_range, top):
    calib, _ = data
    fp = deploy.export_onnx(model, calib[:1], tmp_path / "f.onnx")
    q = deploy.quantize_onnx(fp, tmp_path / "q.onnx", calibration_X=calib, reduce_range=reduce_range)
    params = deploy.onnx_quantization_parameters(q)
    acts = [p for p in params if p["kind"] == "activation"]
    weights = [p for p in params if p["kind"] == "weight" and p["axis"] is not None and p["dtype"] == "int8"]
    # uint8 activations: exactly the book's s and z (reduce_range narrows the weights only)
    _, s, z = quantize_uniform(calib.numpy(), 8)
    assert acts[0]["dtype"] == "uint8"
    assert acts[0]["scale"] == pytest.approx(s, rel=1e-6) and acts[0]["zero_point"] == z
    _, s1, z1 = quantize_uniform(_relu1_range(model, calib), 8)
    assert any(a["scale"] == pytest.approx(s1, rel=1e-5) and a["zero_point"] == z1 for a in acts)
    # int8 weights on a symmetric grid -top..top: s = max|w| / top, i.e. the book's symmetric s (8 bits,
    # max|w| / 127.5) * 127.5 / top; top = 64 with reduce_range (7 bits), 127 without
    folded = fold_batchnorm(model)
    scales = sorted(tuple(np.round(p["scale"], 12)) for p in weights)
    assert len(scales) == 3
    for layer in (folded.conv1, folded.conv2, folded.fc):
        _, s, _ = quantize_uniform(layer.weight.detach().numpy(), 8, symmetric=True, per_channel_axis=0)
        want = s.ravel() * 127.5 / top
        assert any(len(c) == len(want) and np.allclose(c, want, rtol=1e-5) for c in scales), (layer, top)


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


# --------------------------------------------------------------------------------------------------
# what a reader sees when a program gets an input it cannot take (the mistakes of lab 7's mutant bank)
# --------------------------------------------------------------------------------------------------
def _fixed_shape_pte(model, example, path):
    """A program as lab 7's export_fp32 writes it: torch.export without dynamic_shapes (fixed batch)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    ep = torch.export.export(model.eval(), (example,))
    path.write_bytes(to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    return path


def test_inputs_a_program_cannot_take_say_what_it_takes_and_which_export_step_to_revisit(model, data, tmp_path):
    """The mistakes of labs/mutants/lab07_deploy.yml that reach a runtime (export-batch-of-one, run-without-batching,
    run-hardcoded-batch), a fixed-batch program's last, shorter batch, a missing channel axis and a float64 program:
    each message says what the program takes, what came, and the export step to revisit."""
    _, x = data
    # export-batch-of-one: a program exported on one image, called on the example's 16
    one = deploy.load_program(_fixed_shape_pte(model, x[:1], tmp_path / "one.pte"))
    assert one.dynamic_batch() is False and one.batch_size == 1
    with pytest.raises(ValueError, match=r"exactly 1 image per call.*exported on an example of batch 1") as info:
        one(x[:16])
    assert "got a batch of 16" in str(info.value)
    # run-without-batching: the whole data set at once, larger than the program's largest batch
    dyn = deploy.load_program(deploy.export_executorch(model, x[:8], tmp_path / "dyn.pte"))
    assert dyn.dynamic_batch() is True
    with pytest.raises(ValueError, match=r"at most 8 images per call.*got a batch of 40.*X\[i : i \+ 8\]"):
        dyn(x)
    # run-hardcoded-batch: slices of 32 (another program's max_batch) for a program of at most 8
    with pytest.raises(ValueError, match=r"at most 8 images per call.*got a batch of 32"):
        dyn(x[:32])
    # a fixed batch of 8 and a last, shorter batch (12 = 8 + 4): the fix is a dynamic batch axis
    fixed = deploy.load_program(_fixed_shape_pte(model, x[:8], tmp_path / "fixed.pte"))
    np.testing.assert_allclose(fixed(x[:8]), eager(model, x[:8]), atol=FP32_TOL, rtol=0)
    with pytest.raises(ValueError, match=r"exactly 8 images per call.*got a batch of 4.*dynamic_shapes"):
        deploy.program_outputs(fixed, x[:12])
    with pytest.raises(ValueError, match=r"exactly 8 images per call"):
        deploy.program_latency(fixed, x[:4], repeats=1)
    # images without their channel axis
    with pytest.raises(ValueError, match=r"\(b, 1, 28, 28\).*got \(4, 28, 28\).*x\.unsqueeze\(1\)"):
        dyn(x[:4, 0])
    # a program exported on a float64 example takes float64 only
    lin = nn.Linear(4, 2).double().eval()
    p64 = deploy.load_program(_fixed_shape_pte(lin, torch.ones(3, 4, dtype=torch.float64), tmp_path / "f64.pte"))
    assert p64.input_dtype == torch.float64
    with pytest.raises(ValueError, match=r"takes float64 inputs.*got float32.*example\.float\(\)"):
        p64(torch.ones(3, 4))
    np.testing.assert_allclose(
        p64(torch.ones(3, 4, dtype=torch.float64)), lin(torch.ones(3, 4, dtype=torch.float64)).detach()
    )


def test_a_runtime_failure_quotes_the_runtime_instead_of_its_error_code(model, data, tmp_path):
    _, x = data
    fixed = deploy.load_program(_fixed_shape_pte(model, x[:8], tmp_path / "fixed.pte"))
    fixed._dynamic, fixed._looked_up = None, True  # as if its flatbuffer could not be read: the runtime refuses
    with pytest.raises(RuntimeError, match=r"failed on an input of shape \(4, 1, 28, 28\)") as info:
        fixed(x[:4])
    text = str(info.value)
    assert "Its batch is fixed at 8" in text and "Attempted to resize a static tensor" in text, text
    assert "cpuinfo" not in text and "threadpool" not in text
    # bytes that are not a program, and a program cut short
    (tmp_path / "junk.pte").write_bytes(b"not a program at all")
    with pytest.raises(deploy.DeployError, match=r"not an ExecuTorch program.*\.to_executorch\(\)\.buffer"):
        deploy.load_program(tmp_path / "junk.pte")
    (tmp_path / "cut.pte").write_bytes((tmp_path / "fixed.pte").read_bytes()[:1000])
    with pytest.raises(
        deploy.DeployError, match=r"(?s)could not load cut\.pte.*the runtime says: File size is too small"
    ):
        deploy.load_program(tmp_path / "cut.pte")


_NOISE_SCRIPT = r"""
import os, sys
calls = []
real_dup2 = os.dup2
os.dup2 = lambda *a, **k: (calls.append(a), real_dup2(*a, **k))[1]
import courselib.deploy as deploy
os.dup2 = real_dup2
print("dup2 at import:", len(calls), flush=True)
import torch
deploy.set_runtime_threads(1)  # the first contact with the runtime: cpuinfo probes the CPU
deploy.set_runtime_threads(2)
deploy.set_runtime_threads(1)
prog = deploy.load_program(sys.argv[1])
print("outputs:", prog(torch.zeros(2, 1, 28, 28)).shape, flush=True)
try:
    prog(torch.zeros(9, 1, 28, 28))
except ValueError:
    print("refused", flush=True)
os.write(2, b"stderr still works\n")
"""


def test_runtime_noise_is_silenced_and_no_file_descriptor_moves_at_import(model, data, tmp_path):
    import subprocess
    import sys

    _, x = data
    path = deploy.export_executorch(model, x[:8], tmp_path / "m.pte")
    proc = subprocess.run(
        [sys.executable, "-c", _NOISE_SCRIPT, str(path)], capture_output=True, text=True, timeout=300, check=True
    )
    assert "dup2 at import: 0" in proc.stdout
    assert "outputs: (2, 10)" in proc.stdout and "refused" in proc.stdout
    for noise in ("cpuinfo", "midr", "Resetting threadpool", "threadpool.cpp"):
        assert noise not in proc.stderr, proc.stderr
    assert "stderr still works" in proc.stderr  # restored after every call


_MISSING_SCRIPT = r"""
import sys
sys.modules[sys.argv[1]] = None  # as if the deploy extra were not installed
try:
    import courselib.deploy
except ImportError as err:
    print("ImportError:", err, flush=True)
else:
    print("imported", flush=True)
import courselib.compare  # the book's other modules do not need the extra
print("compare imported", flush=True)
"""


@pytest.mark.parametrize("missing", ["onnxruntime", "executorch"])
def test_without_the_deploy_extra_the_import_error_names_it(missing):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _MISSING_SCRIPT, missing], capture_output=True, text=True, timeout=300, check=True
    )
    assert "ImportError:" in proc.stdout, proc.stdout + proc.stderr
    assert "pip install 'ondevice-ml-courselib[deploy]'" in proc.stdout and missing in proc.stdout
    assert "compare imported" in proc.stdout
