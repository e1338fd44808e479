"""Tests for courselib.measure, the cost model: hand-counted parameters, MACs and bytes, torch's own
BatchNorm fusion and ``torch.save`` as answer keys, and the latency helpers' bookkeeping (no timing
assertions)."""

from __future__ import annotations

import copy
import io
import os

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from courselib import _timing
from courselib import measure as M
from courselib import pruning as P
from courselib import quantization as Q
from courselib.binaryconnect import BinaryLinear, pack_binary_weights
from courselib.models import MLP, CourseCNN


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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


def _torch_save_bytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(buf.getvalue())


# ---------------------------------------------------------------- parameters and MACs


def test_count_macs_hand_counted():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.Flatten(), nn.Linear(6 * 6 * 6, 10)
    )
    # conv a: batch 2 x 4 maps x 8x8 outputs x (1 in x 3x3) = 4608
    # conv b: 2 x 6 x 6x6 x (4 x 3x3) = 15552
    # linear: 2 rows x 10 outputs x 216 inputs = 4320
    assert M.count_macs(model, (2, 1, 8, 8)) == 4608 + 15552 + 4320


def test_count_macs_coursecnn_and_after_removal():
    model = CourseCNN(channels=(16, 32), image_size=28)
    # conv1 28x28x16x9, conv2 14x14x32x(16x9), fc 10x(32x7x7)
    full = 28 * 28 * 16 * 9 + 14 * 14 * 32 * 16 * 9 + 10 * 32 * 7 * 7
    assert M.count_macs(model, (1, 1, 28, 28)) == full
    P.remove_filters(model, "conv1", list(range(8)))
    assert M.count_macs(model, (1, 1, 28, 28)) == 28 * 28 * 8 * 9 + 14 * 14 * 32 * 8 * 9 + 10 * 32 * 7 * 7
    with pytest.raises(ValueError, match="input_shape"):
        M.count_macs(model, (28, -1))


def test_count_parameters_nonzero():
    lin = nn.Linear(4, 5)
    assert M.count_parameters(lin) == 25
    P.magnitude_prune(lin, 0.25)
    assert M.count_parameters(lin) == 25
    assert M.count_parameters(lin, nonzero=True) == 25 - 5


# ---------------------------------------------------------------- bytes


def test_parameter_bytes_hand_counted():
    lin = torch.nn.Linear(64, 10)  # 640 weights + 10 biases
    assert M.parameter_bytes(lin, 32) == 2600
    assert M.parameter_bytes(lin, 1) == 80 + 2
    with pytest.raises(ValueError):
        M.parameter_bytes(lin, 0)


def test_state_dict_bytes_is_torch_save_in_memory():
    torch.manual_seed(0)
    model = MLP(64, (32,))
    assert M.state_dict_bytes(model) == _torch_save_bytes(model.state_dict())
    n_float = 4 * M.count_parameters(model)
    assert n_float < M.state_dict_bytes(model) < n_float + 8192  # the values plus the zip container
    packed = pack_binary_weights(BinaryLinear(100, 3))
    assert M.state_dict_bytes(packed) == _torch_save_bytes(packed)  # a dict is saved as it is
    with pytest.raises(TypeError):
        M.state_dict_bytes([1, 2, 3])


@pytest.mark.filterwarnings("error")
def test_state_dict_bytes_quantized_model_is_smaller_and_silent():
    torch.manual_seed(0)
    model = MLP(64, (256,)).eval()
    int8 = Q.quantize_dynamic_int8(model)
    assert M.state_dict_bytes(int8) < M.state_dict_bytes(model) / 2  # int8 weights: one byte each


def test_file_bytes_is_the_written_file(tmp_path):
    torch.manual_seed(0)
    model = MLP(64, (32,))
    path = tmp_path / "model.pt"  # the same file name: torch.save records it in the archive
    torch.save(model.state_dict(), path)
    assert M.file_bytes(model) == os.path.getsize(path)
    seen = []

    def saver(m, p):  # any format: here 1000 raw bytes
        seen.append(os.path.basename(p))
        with open(p, "wb") as fh:
            fh.write(bytes(1000))

    assert M.file_bytes(model, saver) == 1000 and seen == ["model.pt"]
    assert not os.path.exists(seen[0])  # the temporary folder is gone


# ---------------------------------------------------------------- deployment form and latency


class _FakeClock:
    """A clock that advances only when the timed function says so: durations known in advance."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_time_call_protocol_with_a_fake_clock(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setitem(_timing._CLOCKS, "wall", clock)
    durations = iter([9.0, 9.0, 3.0, 1.0, 2.0, 5.0, 4.0])  # two warm-up calls, then five timed ones
    calls = []

    def fn():
        calls.append(1)
        clock.now += next(durations)

    every = M.time_call(fn, repeats=5, warmup=2, statistic="all")
    assert len(calls) == 7 and every == [3.0, 1.0, 2.0, 5.0, 4.0]  # the warm-up calls are not timed
    for statistic, want in [("median", 3.0), ("min", 1.0)]:
        durations = iter([9.0, 3.0, 1.0, 2.0, 5.0, 4.0])
        assert M.time_call(fn, repeats=5, warmup=1, statistic=statistic) == want


def test_every_timer_reads_the_same_clocks(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setitem(_timing._CLOCKS, "thread", clock)

    class Slow(nn.Module):
        def __init__(self, cost):
            super().__init__()
            self.cost = cost

        def forward(self, x):
            clock.now += self.cost
            return x

    x = torch.zeros(1)
    assert M.measure_latency(Slow(0.25), x, repeats=3) == 0.25
    res = M.compare_latency({"a": Slow(1.0), "b": Slow(2.0)}, x, rounds=2, repeats=2, statistic="all")
    assert res == {"a": [1.0] * 4, "b": [2.0] * 4}
    assert M.time_call(lambda: Slow(0.5)(x), clock="thread", repeats=2) == 0.5


def test_time_call_sets_and_restores_torch_threads_and_is_the_utils_timer():
    from courselib import utils

    assert utils.time_call is M.time_call  # the deprecated name is the same function
    seen = []
    before = torch.get_num_threads()
    M.time_call(lambda: seen.append(torch.get_num_threads()), repeats=2, warmup=1, num_threads=2)
    assert seen == [2, 2, 2] and torch.get_num_threads() == before
    M.time_call(lambda: seen.append(torch.get_num_threads()), repeats=1, warmup=0)
    assert seen[-1] == before  # num_threads=None leaves torch's threads alone


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"clock": "cpu"}, ValueError),
        ({"statistic": "mean"}, ValueError),
        ({"repeats": 0}, ValueError),
        ({"warmup": -1}, ValueError),
        ({"repeats": 2.5}, TypeError),
        ({"clock": "thread", "num_threads": 2}, ValueError),
        ({"num_threads": 0}, ValueError),
    ],
)
def test_time_call_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        M.time_call(lambda: None, **kwargs)


def test_time_call_needs_a_callable():
    with pytest.raises(TypeError, match="callable"):
        M.time_call(3)


def test_measure_latency_restores_state():
    model = CourseCNN(channels=(2, 2), image_size=8).train()
    before = torch.get_num_threads()
    t = M.measure_latency(model, torch.rand(2, 8, 8), repeats=3, warmup=1, num_threads=1)
    assert isinstance(t, float) and t > 0
    assert torch.get_num_threads() == before and model.training
    with pytest.raises(ValueError):
        M.measure_latency(model, torch.rand(2, 8, 8), repeats=0)


def test_fold_batchnorm_matches_original_and_torch_fusion():
    torch.manual_seed(0)
    model = _randomize_bn(CourseCNN(channels=(6, 4), image_size=8)).eval()
    x = torch.rand(5, 8, 8)
    folded = M.fold_batchnorm(model)
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.bn2, nn.Identity)
    assert isinstance(model.bn1, nn.BatchNorm2d)  # the original is untouched
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
        ref = fuse_conv_bn_eval(copy.deepcopy(model.conv1), copy.deepcopy(model.bn1))
        torch.testing.assert_close(folded.conv1.weight, ref.weight)
        torch.testing.assert_close(folded.conv1.bias, ref.bias)
        # hand-worked: W * gamma / sqrt(var + eps)
        scale = model.bn2.weight / torch.sqrt(model.bn2.running_var + model.bn2.eps)
        torch.testing.assert_close(folded.conv2.weight, model.conv2.weight * scale[:, None, None, None])
        deployed = M.inference_copy(model)
        assert deployed.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        xcl = x.unsqueeze(1).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(deployed(xcl), model(x), atol=1e-5, rtol=1e-5)


def test_fold_batchnorm_after_filter_removal():
    torch.manual_seed(1)
    model = _randomize_bn(CourseCNN(channels=(6, 4), image_size=8)).eval()
    P.remove_filters(model, "conv1", [0, 3])
    x = torch.rand(3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(M.fold_batchnorm(model)(x), model(x), atol=1e-5, rtol=1e-5)


def test_compare_latency_and_layer_times():
    model = CourseCNN(channels=(2, 2), image_size=8).train()
    other = CourseCNN(channels=(1, 1), image_size=8).eval()
    x = torch.rand(2, 8, 8)
    before = torch.get_num_threads()
    for deploy in (False, True):
        res = M.compare_latency({"a": model, "b": other}, x, rounds=2, repeats=2, warmup=1, deploy=deploy)
        assert set(res) == {"a", "b"} and all(isinstance(v, float) and v >= 0 for v in res.values())
    res = M.compare_latency({"a": model}, x, rounds=2, repeats=2, clock="wall", num_threads=2, statistic="min")
    assert res["a"] > 0
    every = M.compare_latency({"a": model, "b": other}, x, rounds=3, repeats=2, statistic="all")
    assert [len(v) for v in every.values()] == [6, 6]
    assert torch.get_num_threads() == before and model.training and not other.training
    parts = M.layer_times(model, x, repeats=2, warmup=1)
    assert list(parts) == ["conv1", "bn1", "relu#1", "pool#1", "conv2", "bn2", "relu#2", "pool#2", "fc"]
    assert list(M.layer_times(model, x, repeats=2, warmup=1, deploy=True)) == [
        "conv1",
        "relu#1",
        "pool#1",
        "conv2",
        "relu#2",
        "pool#2",
        "fc",
    ]
    assert model.training and isinstance(model.bn1, nn.BatchNorm2d)


@pytest.mark.parametrize(
    "kwargs",
    [{"clock": "cpu"}, {"clock": "thread", "num_threads": 2}, {"rounds": 0}, {"statistic": "mean"}, {"repeats": 0}],
)
def test_compare_latency_bad_arguments(kwargs):
    model = CourseCNN(channels=(2, 2), image_size=8)
    with pytest.raises(ValueError):
        M.compare_latency({"a": model}, torch.rand(2, 8, 8), **kwargs)
    with pytest.raises(ValueError):
        M.compare_latency({}, torch.rand(2, 8, 8))


# /proc/cpuinfo excerpts of three machines: the AMD EPYC of issue 23 (AVX2 and FMA only), an Intel Xeon with
# AVX-512 VNNI and AMX, an ARM Neoverse with the dot-product instructions.
CPUINFO = {
    "epyc": (
        "x86_64",
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
        "flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 popcnt avx f16c avx2 bmi2\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_vnni\n",
    ),
    "xeon": (
        "x86_64",
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\n"
        "flags\t\t: fpu avx avx2 fma avx512f avx512bw avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8\n",
    ),
    "neoverse": (
        "aarch64",
        "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
        "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\n",
    ),
}


@pytest.mark.parametrize(
    "name, model, present, dot",
    [
        ("epyc", "AMD EPYC", {"avx2", "fma"}, False),
        (
            "xeon",
            "Intel(R) Xeon(R) Platinum 8488C",
            {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"},
            True,
        ),
        ("neoverse", "", {"asimd", "asimddp"}, True),
    ],
)
def test_machine_reads_the_cpu_and_its_int8_features(name, model, present, dot):
    arch, text = CPUINFO[name]
    cpu, features = M._cpu_info(text, arch)
    # the first processor's line decides (the EPYC excerpt's second block would add AVX-512 VNNI)
    assert cpu == model and {f for f, ok in features.items() if ok} == present
    assert set(features) == set(M.CPU_FEATURES[arch])
    m = M.Machine(cpu or "?", arch, features, 2, 1, "AVX2", {"torch": "2.13.0"})
    assert m.int8_dot_product is dot
    line = m.describe()
    for f in features:
        assert (f"no {f}" in line) is (f not in present), (f, line)
    assert "1 thread of 2 cores" in line and "torch 2.13.0" in line and str(m).startswith("Measured on: ")
    assert m._repr_markdown_().startswith("*Measured on:*")


def test_machine_on_this_machine():
    m = M.machine(num_threads=3, libraries=("torch", "no-such-distribution"))
    assert m.threads == 3 and m.versions == {"torch": torch.__version__}
    assert m.torch_kernels == torch.backends.cpu.get_cpu_capability() and m.cores == os.cpu_count()
    assert M.machine().threads == torch.get_num_threads()
    with pytest.raises(ValueError):
        M.machine(num_threads=0)


def test_compare_speed_words():
    assert M.compare_speed(3.0, 1.0) == "3.0 times faster than"
    assert M.compare_speed(1.0, 3.0) == "3.0 times slower than"
    assert M.compare_speed(1.0, 1.049) == "about as fast as" and M.compare_speed(1.06, 1.0) == "1.1 times faster than"
    assert M.compare_speed(1.0, 1.2, tolerance=0.25) == "about as fast as"
    for bad in [(0.0, 1.0), (1.0, -1.0), (float("nan"), 1.0)]:
        with pytest.raises(ValueError):
            M.compare_speed(*bad)
