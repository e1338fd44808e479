"""Timing: the one protocol every timer of courselib uses, and the machine a time holds for.

Private to :mod:`courselib.measure`, which is the public home of these names (``measure.time_call``,
``measure.machine`` ...): :func:`time_call` and :func:`time_calls` (warm-up, timed calls, a summary, one
clock), :func:`compare_speed` (two times in words, for a chapter to glue), and :func:`machine` (the CPU, its
instruction-set features, the threads and the library versions a time is quoted with).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import platform
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

# (documented where it is re-exported)
LATENCY_CLOCKS = ("thread", "wall")
# (documented where it is re-exported)
LATENCY_STATISTICS = ("median", "min", "all")


_CLOCKS = {"thread": time.thread_time, "wall": time.perf_counter}


def _clock(clock: str):
    if clock not in LATENCY_CLOCKS:
        raise ValueError(f"clock must be one of {LATENCY_CLOCKS}, got {clock!r}")
    return _CLOCKS[clock]


def _check_timing_args(repeats, warmup, num_threads, clock, statistic="median"):
    for name, value in (("repeats", repeats), ("warmup", warmup)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    _clock(clock)
    if clock == "thread" and num_threads is not None and num_threads != 1:
        raise ValueError(
            "clock='thread' measures the CPU time of the calling thread only, which is the whole "
            f"cost only with num_threads=1 (got {num_threads}); use clock='wall' for more threads"
        )
    if statistic not in LATENCY_STATISTICS:
        raise ValueError(f"statistic must be one of {LATENCY_STATISTICS}, got {statistic!r}")


@contextlib.contextmanager
def _torch_threads(num_threads: int | None):
    """torch's intra-op threads set to ``num_threads`` inside the block (``None``: left alone), restored after."""
    if num_threads is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _timed_rounds(fns: dict, *, rounds: int, repeats: int, warmup: int, clock: str) -> dict:
    """The book's timing loop, shared by every timer: ``warmup`` untimed calls of each function, then
    ``rounds`` rounds that time each function ``repeats`` times in turn. Returns ``{name: [seconds, ...]}``."""
    tick = _clock(clock)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(repeats):
                t0 = tick()
                fn()
                times[k].append(tick() - t0)
    return times


def _summary(times: list, statistic: str):
    if statistic == "all":
        return list(times)
    return float(np.median(times) if statistic == "median" else np.min(times))


def time_call(
    fn: Callable[[], object],
    *,
    repeats: int = 7,
    warmup: int = 1,
    clock: str = "wall",
    statistic: str = "median",
    num_threads: int | None = None,
):
    """Seconds of one call of ``fn()``: the book's timing protocol, which every timer of courselib uses.

    ``warmup`` untimed calls (caches, lazy initialisation, the allocator), then ``repeats`` timed ones,
    summarised by ``statistic``. :func:`time_calls` times several functions side by side with the same
    loop, :func:`measure_latency` and :func:`compare_latency` time a model's forward pass with it, and
    :func:`courselib.deploy.program_latency` an exported program.

    Parameters
    ----------
    fn : callable
        Called without arguments; its result is discarded.
    repeats, warmup : int, default 7 and 1
        Timed calls (``>= 1``) and untimed calls before them (``>= 0``).
    clock : {"wall", "thread"}, default "wall"
        ``"wall"``: :func:`time.perf_counter`, right for any ``fn``, including one that runs on several
        threads (BLAS, numba, a runtime's thread pool) or waits. ``"thread"``: CPU time of the calling
        thread (:func:`time.thread_time`): the cost of ``fn`` on a core of its own, without the time the
        operating system gives the core to other processes; it is the whole cost only when all of the
        work runs on the calling thread (one torch thread, a runtime loaded with one thread), which is
        for the caller to ensure.
    statistic : {"median", "min", "all"}, default "median"
        The median of the timed calls, the least disturbed one (an estimate of the cost on an idle
        machine), or the list of every call's seconds.
    num_threads : int, optional
        torch intra-op threads while timing, restored afterwards (default: left as they are). With
        ``clock="thread"`` it must be 1.

    Returns
    -------
    float or list of float
        Seconds (``statistic="all"``: one entry per timed call).

    Examples
    --------
    >>> t = time_call(lambda: sum(range(1000)), repeats=3)
    >>> t > 0, len(time_call(lambda: None, repeats=4, warmup=0, clock="thread", statistic="all"))
    (True, 4)
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    return time_calls(
        {"fn": fn},
        rounds=1,
        repeats=repeats,
        warmup=warmup,
        clock=clock,
        statistic=statistic,
        num_threads=num_threads,
    )["fn"]


def time_calls(
    fns: dict,
    *,
    rounds: int = 7,
    repeats: int = 1,
    warmup: int = 1,
    clock: str = "wall",
    statistic: str = "median",
    num_threads: int | None = None,
) -> dict:
    """Seconds of one call of each of several functions, timed side by side: the protocol of :func:`time_call`
    in ``rounds`` rounds, each calling every function ``repeats`` times in turn.

    Interleaving makes a slow spell of a shared machine hit every function alike, so their ratio is fair
    (what the book quotes as a speed-up). ``warmup`` untimed calls of each function come first.

    Parameters
    ----------
    fns : dict
        ``{name: callable taking no arguments}``, non-empty.
    rounds : int, default 7
        Rounds over all functions (``>= 1``).
    repeats, warmup, clock, statistic, num_threads
        As in :func:`time_call` (``repeats`` timed calls per function and round, default 1).

    Returns
    -------
    dict
        ``{name: statistic of the seconds over all rounds * repeats calls}``.

    Examples
    --------
    >>> t = time_calls({"sum": lambda: sum(range(1000)), "none": lambda: None}, rounds=3)
    >>> sorted(t), t["sum"] > 0
    (['none', 'sum'], True)
    """
    if not isinstance(fns, dict) or not fns:
        got = "an empty dict" if isinstance(fns, dict) else type(fns).__name__
        raise ValueError(f"fns must be a non-empty dict {{name: callable}}, got {got}")
    bad = [k for k, fn in fns.items() if not callable(fn)]
    if bad:
        raise TypeError(f"every value of fns must be a callable taking no arguments; not callable: {bad}")
    _check_timing_args(repeats, warmup, num_threads, clock, statistic)
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    with _torch_threads(num_threads):
        times = _timed_rounds(fns, rounds=rounds, repeats=repeats, warmup=warmup, clock=clock)
    return {k: _summary(v, statistic) for k, v in times.items()}


def compare_speed(reference_s: float, other_s: float, *, tolerance: float = 0.05) -> str:
    """How ``other`` compares with ``reference`` in speed, in words: what a chapter glues, never asserts.

    Parameters
    ----------
    reference_s, other_s : float
        Two times measured side by side on one machine (seconds, or any common unit), both > 0.
    tolerance : float, default 0.05
        Ratios within ``1 +/- tolerance`` read "about as fast as".

    Returns
    -------
    str
        ``"2.1 times faster than"``, ``"about as fast as"`` or ``"1.3 times slower than"``, to be followed
        by the reference's name.

    Examples
    --------
    >>> compare_speed(4.0, 2.0), compare_speed(1.0, 1.02), compare_speed(1.0, 1.3)
    ('2.0 times faster than', 'about as fast as', '1.3 times slower than')
    """
    if not (reference_s > 0 and other_s > 0):
        raise ValueError(f"times must be > 0, got {reference_s!r} and {other_s!r}")
    ratio = reference_s / other_s
    if abs(ratio - 1) <= tolerance:
        return "about as fast as"
    return f"{ratio:.1f} times faster than" if ratio > 1 else f"{1 / ratio:.1f} times slower than"


# --------------------------------------------------------------------------------------------------
# the machine a time holds for
# --------------------------------------------------------------------------------------------------

# (documented where it is re-exported)
CPU_FEATURES = {
    "x86_64": ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"),
    "aarch64": ("asimd", "asimddp", "i8mm", "sve"),
}
_INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")


@dataclasses.dataclass(frozen=True)
class Machine:
    """The conditions a measured time holds for (returned by :func:`machine`).

    Attributes
    ----------
    cpu : str
        The CPU's model name (``/proc/cpuinfo``), or what ``platform.processor()`` says elsewhere.
    arch : str
        ``platform.machine()``: ``"x86_64"``, ``"aarch64"``, ...
    features : dict
        ``{feature: present}`` for the features of :data:`CPU_FEATURES` of this architecture.
    cores : int
        Logical CPUs the operating system reports.
    threads : int
        The threads the measurement used.
    torch_kernels : str
        The instruction set PyTorch's CPU kernels dispatch to (``torch.backends.cpu.get_cpu_capability()``;
        ``"DEFAULT"`` under ``ATEN_CPU_CAPABILITY=default``).
    versions : dict
        ``{distribution: version}`` of the libraries that ran the measurement.
    """

    cpu: str
    arch: str
    features: dict
    cores: int
    threads: int
    torch_kernels: str
    versions: dict

    @property
    def int8_dot_product(self) -> bool:
        """True when the CPU has an 8-bit dot-product instruction (x86 VNNI or AMX, ARM ``asimddp``).

        Without one, x86 int8 kernels multiply bytes with ``vpmaddubsw``, which adds pairs of products
        into 16 bits and saturates there: int8 buys less speed, and a runtime that feeds it full-range
        8-bit weights can lose accuracy (:func:`courselib.deploy.quantize_onnx`).
        """
        return any(self.features.get(f, False) for f in _INT8_DOT)

    def describe(self) -> str:
        """One line: CPU, the features present and absent, threads, PyTorch's kernels, library versions."""
        have = [f for f, ok in self.features.items() if ok]
        lack = [f for f, ok in self.features.items() if not ok]
        feats = ", ".join(have) or "none of " + "/".join(self.features)
        if lack:
            feats += "; no " + ", no ".join(lack)
        libs = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''} of {self.cores} cores"
        return f"{self.cpu} ({self.arch}: {feats}); {threads}; PyTorch kernels {self.torch_kernels}; {libs}"

    def _repr_markdown_(self) -> str:
        return f"*Measured on:* {self.describe()}."

    def __str__(self) -> str:
        return "Measured on: " + self.describe()


def _cpu_info(text: str, arch: str) -> tuple[str, dict]:
    """CPU model name and the :data:`CPU_FEATURES` flags of one ``/proc/cpuinfo`` text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    name = fields.get("model name") or fields.get("Model") or fields.get("Hardware") or ""
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return name, {f: f in flags for f in CPU_FEATURES.get(arch, ())}


def machine(*, num_threads: int | None = None, libraries: Sequence[str] = ("torch", "numpy")) -> Machine:
    """The machine a measurement runs on: what every latency the book prints is quoted with.

    A time, a speed-up or the order of two kernels holds for one CPU, one thread count and one set of
    library versions; sizes, counts and accuracies do not depend on them. Chapters display this under
    every latency table (its Markdown form reads *Measured on: ...*), benchmarks print it beside their
    tables.

    Parameters
    ----------
    num_threads : int, optional
        The threads the measurement used (default: ``torch.get_num_threads()``).
    libraries : sequence of str, default ("torch", "numpy")
        Distributions whose installed versions to report (those not installed are left out).

    Returns
    -------
    Machine

    Examples
    --------
    >>> m = machine(num_threads=1)
    >>> m.threads, "torch" in m.versions
    (1, True)
    """
    arch = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name, features = _cpu_info(f.read(), arch)
    except OSError:
        name, features = "", {f: False for f in CPU_FEATURES.get(arch, ())}
    versions = {}
    for lib in libraries:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            pass
    threads = torch.get_num_threads() if num_threads is None else int(num_threads)
    if threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return Machine(
        cpu=name or platform.processor() or "unknown CPU",
        arch=arch,
        features=features,
        cores=os.cpu_count() or 1,
        threads=threads,
        torch_kernels=torch.backends.cpu.get_cpu_capability(),
        versions=versions,
    )
