"""`adaptir bench`: check every installed AdaptIR implementation against the eager
reference, then time it at the SPEC section 7 shapes.

    adaptir bench                    # = --quick: batch 2 instead of 16, few repeats,
                                     #   torch.compile attempts within a time budget
    adaptir bench --full             # the SPEC shapes as written, compile attempts unbounded
    adaptir bench --scaling          # forward+backward time against N*H*W, d_model and the batch
    adaptir bench --full --device cuda --json bench.json --markdown bench.md

Rows of the table: the eager reference, the fused module on every backend the device
has (`available_backends`; Triton on the CPU only runs in its interpreter, far too slow
to time, so it is left out), and torch.compile of the reference, once forward-only
(eval mode under no_grad) and once forward+backward (train mode). A failure to compile
is a result ("compile failed: <reason>"), never a crash.

Columns: infer (eval mode, no_grad), fwd (train mode, autograd recording), bwd,
fwd+bwd; each with its ratio to the reference measured in the same run, implementations
sampled round-robin (the minimum of the samples is reported on the CPU, the median on
CUDA). Also bytes saved for backward (saved_tensors_hooks, unique storages counted
once), peak memory and CUDA-graph replay times on CUDA, and the SPEC 5.1 floor: the five
C-wide passes at the measured copy bandwidth plus the skinny matrix products at the
measured fp32 matmul rate.

The pieces (Shape, build_pair, Subject, measure_round_robin, time_train, time_infer,
saved_bytes, graphed_times, measure_floor, floor_ms, check_backend, compile_task) are
reused by benchmarks/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .backends import available_backends, cpp_available, triton_importable
from .config import adapter_widths
from .module import AdaptIR as FusedAdaptIR
from .reference import AdaptIR as ReferenceAdaptIR

OUT_TOL = 1e-5
GRAD_TOL = 1e-4
TRAIN_COLUMNS = ("fwd", "bwd", "fwd+bwd")
COLUMNS = ("infer",) + TRAIN_COLUMNS

# SPEC 5.1: C-wide passes (reads or writes of an (N*H*W, C) float tensor) and skinny
# (N*H*W, C) x (C, h) matrix products per column. Forward: read x, write out; the head and
# tail products. Backward: read grad_out, read x, write grad_x; grad_v, grad_tail_w,
# grad_head_w and grad_x products.
FLOOR_PASSES = {"infer": (2, 2), "fwd": (2, 2), "bwd": (3, 4), "fwd+bwd": (5, 6)}


# ---------------------------------------------------------------------------------------
# shapes

@dataclass(frozen=True)
class Shape:
    """One benchmark input: x is (N, H, W, C) for layout "nhwc", (H*W, N, C) for "lnc"."""

    name: str
    layout: str
    N: int
    H: int
    W: int
    C: int
    preset: str
    train: bool = True
    hidden: Optional[int] = None
    spec_N: Optional[int] = None  # the SPEC batch when this shape was scaled down

    @property
    def x_shape(self) -> Tuple[int, ...]:
        if self.layout == "nhwc":
            return (self.N, self.H, self.W, self.C)
        return (self.H * self.W, self.N, self.C)

    @property
    def rows(self) -> int:
        return self.N * self.H * self.W

    @property
    def h(self) -> int:
        return adapter_widths(self.C, self.preset, self.hidden).hidden

    def with_batch(self, N: int) -> "Shape":
        if N == self.N:
            return self
        return replace(self, N=N, spec_N=self.spec_N or self.N)

    def describe(self) -> str:
        text = (f"x {self.x_shape} {self.layout}, H={self.H} W={self.W}, hidden {self.h}"
                f"{'' if self.train else ', forward only'}")
        if self.spec_N is not None:
            text += f" (batch {self.N} instead of {self.spec_N})"
        return text

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(x_shape=list(self.x_shape), hidden=self.h, rows=self.rows)
        return d


SPEC_SHAPES = (
    Shape("ipt-train", "lnc", 16, 16, 16, 576, "ipt"),
    Shape("edt-train", "nhwc", 16, 48, 48, 180, "edt"),
    Shape("edt-infer", "nhwc", 1, 256, 256, 180, "edt", train=False),
)
QUICK_BATCH = 2
QUICK_COMPILE_BUDGET = 90.0
TINY_SHAPES = (
    Shape("tiny-lnc", "lnc", 2, 4, 5, 48, "ipt", hidden=8),
    Shape("tiny-nhwc", "nhwc", 2, 6, 5, 56, "edt"),
    Shape("tiny-infer", "nhwc", 1, 8, 7, 56, "edt", train=False),
)
# Parity check shapes: odd and unequal H, W, both layouts.
CHECK_SHAPES = (
    Shape("check-nhwc", "nhwc", 2, 5, 7, 56, "edt"),
    Shape("check-lnc", "lnc", 3, 6, 4, 48, "ipt", hidden=8),
    # H = 18 has an odd factor: the FFT's exactly real bins (9, 0) and (9, 12) come out
    # with rounding-level imaginary parts, which every implementation must snap to +0
    # (adaptir_kernels.spectrum) to agree on the phase there.
    Shape("check-fft", "nhwc", 2, 18, 24, 168, "edt"),
)


def profile_shapes(mode: str) -> Tuple[Shape, ...]:
    if mode == "tiny":
        return TINY_SHAPES
    if mode == "quick":
        return tuple(s.with_batch(QUICK_BATCH) if s.train else s for s in SPEC_SHAPES)
    return SPEC_SHAPES


# ---------------------------------------------------------------------------------------
# modules and inputs

from .testing import randomize  # noqa: E402  (re-exported for bench users)


def build_reference(shape: Shape, device, seed: int = 0) -> ReferenceAdaptIR:
    m = ReferenceAdaptIR(shape.C, preset=shape.preset, layout=shape.layout, hidden=shape.hidden)
    return randomize(m, seed).to(device)


def build_fused(shape: Shape, backend: str, device, seed: int = 0) -> FusedAdaptIR:
    ref = build_reference(shape, "cpu", seed)
    m = FusedAdaptIR(shape.C, preset=shape.preset, layout=shape.layout, hidden=shape.hidden, backend=backend)
    m.load_state_dict(ref.state_dict(), strict=True)
    return m.to(device)


def build_pair(shape: Shape, backend: str, device, seed: int = 0):
    """A randomised reference and a fused module on `backend` sharing its state."""
    return build_reference(shape, device, seed), build_fused(shape, backend, device, seed)


def make_input(shape: Shape, device, seed: int = 1, requires_grad: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape.x_shape, generator=gen).to(device)
    return x.requires_grad_(requires_grad)


def make_grad(shape: Shape, device, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape.x_shape, generator=gen).to(device)


def forward_fn(module: torch.nn.Module, shape: Shape) -> Callable[[torch.Tensor], torch.Tensor]:
    hw = (shape.H, shape.W)
    return lambda x: module(x, hw=hw)


# ---------------------------------------------------------------------------------------
# timing

class Clock:
    """Wall clock on the CPU; CUDA events (plus an L2 flush before each sample) on CUDA."""

    def __init__(self, device, flush_l2: bool = True):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._flush = None
        if self.cuda and flush_l2:
            self._flush = torch.empty(256 * 2**20, dtype=torch.int8, device=self.device)

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, a, b) -> float:
        if self.cuda:
            return a.elapsed_time(b)
        return (b - a) * 1e3

    def prepare(self) -> None:
        if self._flush is not None:
            self._flush.zero_()
        self.sync()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


class OperatorClock:
    """Host time of every fused-operator call (CPU only), by wrapping the fused module's
    operator entry points (`adaptir_kernels.module.<op>` and `<op>_backward`) while
    active. Meaningful with one fused variant in the run: every fused adapter shares the
    entry points."""

    NAMES = ("project_in", "local_branch", "global_branch", "router", "combine_out")

    def __init__(self):
        self.samples: Dict[str, List[float]] = {}
        self._saved: Dict[str, Callable] = {}

    def __enter__(self) -> "OperatorClock":
        from . import module as fused

        # The C++ chain runs every operator inside one call: go operator by operator.
        self._cpp_chain = fused.CPP_CHAIN
        fused.CPP_CHAIN = False
        for base in self.NAMES:
            for name in (base, base + "_backward"):
                fn = self._saved[name] = getattr(fused, name)
                setattr(fused, name, self._timed(fn, self.samples.setdefault(name, [])))
        return self

    @staticmethod
    def _timed(fn: Callable, out: List[float]) -> Callable:
        def call(*args):
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                out.append(time.perf_counter() - t0)

        return call

    def __exit__(self, *exc) -> bool:
        from . import module as fused

        for name, fn in self._saved.items():
            setattr(fused, name, fn)
        fused.CPP_CHAIN = self._cpp_chain
        return False

    def per_adapter_call_ms(self) -> Dict[str, float]:
        """Median call time times calls per adapter call (local_branch runs twice: forward
        and recomputed in the backward), in ms."""
        calls = len(self.samples.get("project_in", []))
        return {name: 1e3 * statistics.median(v) * len(v) / calls
                for name, v in self.samples.items() if v and calls}


def clear_grads(x: torch.Tensor, params: Iterable[torch.Tensor]) -> None:
    """Drops the gradients of x and params (set to None) between timed steps."""
    x.grad = None
    for p in params:
        p.grad = None


def time_train(forward: Callable, x: torch.Tensor, grad: torch.Tensor, params: Sequence[torch.Tensor],
               device, warmup: int = 1, repeats: int = 3, clock: Optional[Clock] = None) -> Dict[str, List[float]]:
    """Samples (ms) of forward, backward and both, from the same iterations: each sample
    marks the clock before the forward, between forward and backward, and after."""
    clock = clock or Clock(device)
    samples: Dict[str, List[float]] = {k: [] for k in TRAIN_COLUMNS}
    for i in range(warmup + repeats):
        clear_grads(x, params)
        clock.prepare()
        t0 = clock.mark()
        y = forward(x)
        t1 = clock.mark()
        y.backward(grad)
        t2 = clock.mark()
        clock.sync()
        del y
        if i >= warmup:
            samples["fwd"].append(clock.ms(t0, t1))
            samples["bwd"].append(clock.ms(t1, t2))
            samples["fwd+bwd"].append(clock.ms(t0, t2))
    clear_grads(x, params)
    return samples


def time_infer(forward: Callable, x: torch.Tensor, device, warmup: int = 1, repeats: int = 3,
               clock: Optional[Clock] = None) -> List[float]:
    """Samples (ms) of a forward under no_grad."""
    clock = clock or Clock(device)
    out = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            clock.prepare()
            t0 = clock.mark()
            y = forward(x)
            t1 = clock.mark()
            clock.sync()
            del y
            if i >= warmup:
                out.append(clock.ms(t0, t1))
    return out


def peak_memory(fn: Callable[[], None], device) -> Optional[int]:
    """Bytes allocated by fn above what was allocated before it (CUDA only)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def _storage_key(t: torch.Tensor):
    s = t.untyped_storage()
    return (t.device.type, t.device.index, s.data_ptr()), s.nbytes()


def saved_bytes(forward: Callable, x: torch.Tensor, exclude: Iterable[torch.Tensor] = ()) -> Tuple[int, int]:
    """Bytes the autograd graph of one forward keeps for backward, each storage counted
    once: (all of them, those not shared with `exclude` -- the input and the parameters)."""
    seen: Dict[tuple, int] = {}

    def pack(t):
        try:
            key, nbytes = _storage_key(t)
        except (RuntimeError, NotImplementedError):
            return t
        seen[key] = max(seen.get(key, 0), nbytes)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = forward(x)
    del y
    skip = set()
    for t in exclude:
        try:
            skip.add(_storage_key(t)[0])
        except (RuntimeError, NotImplementedError):
            pass
    total = sum(seen.values())
    own = sum(n for k, n in seen.items() if k not in skip)
    return int(total), int(own)


# ---------------------------------------------------------------------------------------
# the SPEC 5.1 floor

def measure_floor(device, size: str = "large", repeats: int = 5) -> dict:
    """Copy bandwidth (bytes read + written per second, preallocated destination) and the
    fp32 matmul rate of a square product on `device`; best of `repeats`."""
    device = torch.device(device)
    clock = Clock(device, flush_l2=False)
    if size == "small":
        n_copy, n_mm = 4 * 2**20, 256
    elif device.type == "cuda":
        n_copy, n_mm = 128 * 2**20, 4096
    else:
        n_copy, n_mm = 32 * 2**20, 1024
    src = torch.randn(n_copy, device=device)
    dst = torch.empty_like(src)
    a = torch.randn(n_mm, n_mm, device=device)
    b = torch.randn(n_mm, n_mm, device=device)
    copy_ms, mm_ms = [], []
    for i in range(repeats + 1):
        clock.sync()
        t0 = clock.mark()
        dst.copy_(src)
        t1 = clock.mark()
        torch.mm(a, b)
        t2 = clock.mark()
        clock.sync()
        if i:
            copy_ms.append(clock.ms(t0, t1))
            mm_ms.append(clock.ms(t1, t2))
    copy_bytes = 2 * src.numel() * src.element_size()
    return {
        "copy_bytes": copy_bytes,
        "copy_GBps": copy_bytes / (min(copy_ms) * 1e-3) / 1e9,
        "matmul_n": n_mm,
        "matmul_GFLOPs": 2 * n_mm**3 / (min(mm_ms) * 1e-3) / 1e9,
        "tf32": bool(device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32),
    }


def floor_ms(shape: Shape, floor: dict) -> Dict[str, float]:
    """SPEC 5.1 floor per column: C-wide passes at the copy bandwidth plus the skinny
    products at the matmul rate."""
    pass_bytes = shape.rows * shape.C * 4
    gemm_flops = 2 * shape.rows * shape.C * shape.h
    out = {}
    for col, (passes, gemms) in FLOOR_PASSES.items():
        if col in TRAIN_COLUMNS and not shape.train:
            continue
        sec = passes * pass_bytes / (floor["copy_GBps"] * 1e9) + gemms * gemm_flops / (floor["matmul_GFLOPs"] * 1e9)
        out[col] = sec * 1e3
    return out


# ---------------------------------------------------------------------------------------
# correctness

def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    """||a - b|| / max(||b||, floor); NaN anywhere gives NaN (which never passes)."""
    a = a.detach().double().cpu()
    b = b.detach().double().cpu()
    denom = max(b.norm().item(), floor)
    diff = (a - b).norm().item()
    return diff / denom if denom > 0 else diff


def _fwd_bwd(module, shape: Shape, x: torch.Tensor, grad: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = forward_fn(module, shape)(x)
    out.backward(grad)
    grads = {"x": x.grad.detach()}
    for name, p in module.named_parameters():
        grads[name] = p.grad.detach() if p.grad is not None else torch.zeros_like(p)
    return out.detach(), grads


@dataclass
class CheckResult:
    backend: str
    shape: str
    out_err: float = float("nan")
    eval_out_err: float = float("nan")
    grad_errs: Dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None

    @property
    def max_grad(self) -> Tuple[str, float]:
        if not self.grad_errs:
            return ("-", float("nan"))
        name = max(self.grad_errs, key=lambda k: (math.isnan(self.grad_errs[k]), self.grad_errs[k]))
        return name, self.grad_errs[name]

    @property
    def passed(self) -> bool:
        if self.error is not None:
            return False
        return (self.out_err < OUT_TOL and self.eval_out_err < OUT_TOL
                and all(e < GRAD_TOL for e in self.grad_errs.values()))

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        if self.error is not None:
            return f"{verdict}  {self.backend:<7} {self.shape:<11} error: {self.error}"
        name, worst = self.max_grad
        return (f"{verdict}  {self.backend:<7} {self.shape:<11} out {self.out_err:.1e} (eval {self.eval_out_err:.1e}), "
                f"grads max {worst:.1e} ({name}), x {self.grad_errs.get('x', float('nan')):.1e}"
                f"   [tol {OUT_TOL:.0e} / {GRAD_TOL:.0e}]")

    def to_json(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def check_backend(backend: str, device, shapes: Sequence[Shape] = CHECK_SHAPES, seed: int = 3) -> List[CheckResult]:
    """The fused module on `backend` against the eager reference (randomised parameters,
    random input and upstream gradient): train-mode output and every gradient, and the
    eval-mode output."""
    results = []
    for shape in shapes:
        res = CheckResult(backend, shape.name)
        try:
            ref, fused = build_pair(shape, backend, device, seed)
            x = make_input(shape, device, seed + 1)
            grad = make_grad(shape, device, seed + 2)
            out_r, g_r = _fwd_bwd(ref, shape, x, grad)
            out_f, g_f = _fwd_bwd(fused, shape, x, grad)
            res.out_err = rel_err(out_f, out_r)
            floor = 1e-2 * g_r["x"].double().norm().item()
            res.grad_errs = {k: rel_err(g_f[k], g_r[k], floor) for k in g_r}
            ref.eval()
            fused.eval()
            with torch.no_grad():
                res.eval_out_err = rel_err(forward_fn(fused, shape)(x), forward_fn(ref, shape)(x))
        except Exception as err:  # a crashing backend is a failed check, not a crashed bench
            res.error = f"{type(err).__name__}: {_first_line(err)}"
        results.append(res)
    return results


# ---------------------------------------------------------------------------------------
# measuring one implementation

def _first_line(err: BaseException, limit: int = 160) -> str:
    text = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {_first_line(err)}"


def _summary(samples: List[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "samples": samples}


class Subject:
    """One implementation at one shape, with its inputs, sampled one iteration at a time
    so that several implementations can be timed round-robin: on a shared machine a
    burst of foreign load then hits all of them, not one."""

    def __init__(self, module: torch.nn.Module, shape: Shape, device, clock: Clock, stat: str = "median"):
        self.module, self.shape, self.device, self.clock, self.stat = module, shape, device, clock, stat
        self.forward = forward_fn(module, shape)
        self.params = list(module.parameters())
        self.x = make_input(shape, device)
        self.x_train = make_input(shape, device, requires_grad=True) if shape.train else None
        self.grad = make_grad(shape, device) if shape.train else None
        self.samples: Dict[str, List[float]] = {}

    def sample_infer(self, keep: bool) -> None:
        self.module.eval()
        s = time_infer(self.forward, self.x, self.device, 0, 1, self.clock)
        if keep:
            self.samples.setdefault("infer", []).extend(s)

    def sample_train(self, keep: bool) -> None:
        self.module.train()
        s = time_train(self.forward, self.x_train, self.grad, self.params, self.device, 0, 1, self.clock)
        if keep:
            for col, v in s.items():
                self.samples.setdefault(col, []).extend(v)

    def finish(self, count_saved: bool = True) -> dict:
        """Medians and samples, CUDA peak memory, and the bytes saved for backward."""
        res: dict = {"stats_ms": {k: _summary(v) for k, v in self.samples.items()}, "peak_mem_bytes": {}}
        res["times_ms"] = {k: v[self.stat] for k, v in res["stats_ms"].items()}
        if "infer" in self.samples:
            self.module.eval()
            with torch.no_grad():
                res["peak_mem_bytes"]["infer"] = peak_memory(lambda: self.forward(self.x), self.device)
        if "fwd+bwd" in self.samples:
            self.module.train()
            res["peak_mem_bytes"]["fwd+bwd"] = peak_memory(
                lambda: self.forward(self.x_train).backward(self.grad), self.device)
            clear_grads(self.x_train, self.params)
            if count_saved:
                total, own = saved_bytes(self.forward, self.x_train,
                                         exclude=[self.x_train] + self.params + list(self.module.buffers()))
                res["saved_bytes"] = total
                res["saved_activation_bytes"] = own
                res["saved_hidden_units"] = own / (self.shape.rows * self.shape.h * 4)
        return res


def measure_round_robin(subjects: Sequence[Optional[Subject]], warmup: int, repeats: int, infer: bool = True,
                        train: bool = True, on_error: Optional[Callable[[int, BaseException], None]] = None) -> None:
    """Sample every subject once per round (infer, then training step), `warmup` rounds
    untimed. A subject that raises is reported to on_error and dropped (set to None)."""
    subjects = list(subjects)
    for i in range(warmup + repeats):
        for kind in ("infer", "train"):
            if (kind == "infer" and not infer) or (kind == "train" and not train):
                continue
            for j, sub in enumerate(subjects):
                if sub is None or (kind == "train" and not sub.shape.train):
                    continue
                try:
                    (sub.sample_infer if kind == "infer" else sub.sample_train)(i >= warmup)
                except Exception as err:
                    subjects[j] = None
                    if on_error is None:
                        raise
                    on_error(j, err)


def measure_module(module: torch.nn.Module, shape: Shape, device, warmup: int, repeats: int,
                   infer: bool = True, train: bool = True, count_saved: bool = True, stat: str = "median") -> dict:
    """Times (ms, the `stat` of the samples), per-column samples, saved bytes and CUDA peak memory."""
    sub = Subject(module, shape, device, Clock(device), stat)
    measure_round_robin([sub], warmup, repeats, infer, train)
    return sub.finish(count_saved)


def _replay_ms(graph, clock: Clock, repeats: int) -> List[float]:
    out = []
    for i in range(repeats + 1):
        clock.prepare()
        t0 = clock.mark()
        graph.replay()
        t1 = clock.mark()
        clock.sync()
        if i:
            out.append(clock.ms(t0, t1))
    return out


def graphed_times(module: torch.nn.Module, shape: Shape, device, repeats: int) -> Dict[str, float]:
    """CUDA only: median time of one replay of a CUDA graph of the eval-mode forward
    (no_grad) and, for training shapes, of the train-mode forward+backward. Replays
    launch nothing from the CPU, so this is the GPU's own time, free of the Python and
    launch overhead that dominates an eager call at these sizes."""
    device = torch.device(device)
    clock = Clock(device)
    forward = forward_fn(module, shape)
    out: Dict[str, float] = {}
    side = torch.cuda.Stream(device)

    module.eval()
    x = make_input(shape, device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):
            forward(x)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        y = forward(x)
    out["infer"] = statistics.median(_replay_ms(graph, clock, repeats))
    del graph, y

    if shape.train:
        module.train()
        params = list(module.parameters())
        xt = make_input(shape, device, requires_grad=True)
        grad = make_grad(shape, device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                clear_grads(xt, params)
                forward(xt).backward(grad)
        torch.cuda.current_stream(device).wait_stream(side)
        clear_grads(xt, params)  # the captured backward allocates the .grad tensors in the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            forward(xt).backward(grad)
        out["fwd+bwd"] = statistics.median(_replay_ms(graph, clock, repeats))
        clear_grads(xt, params)
        del graph
    torch.cuda.synchronize(device)
    return out


@contextlib.contextmanager
def _quiet_compile():
    """torch.compile's failures print long tracebacks through logging and warn about
    complex ops; the bench records the reason itself."""
    names = ("torch._dynamo", "torch._inductor", "torch._subclasses.fake_tensor", "torch.fx.experimental")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _stop_compile_workers() -> None:
    """Inductor keeps a pool of compile-worker processes (started in the background,
    each importing torch); on a few cores they steal the CPU from whatever is timed next."""
    with contextlib.suppress(Exception):
        from torch._inductor.async_compile import shutdown_compile_workers

        shutdown_compile_workers()


def compile_task(shape: Shape, mode: str, device, warmup: int, repeats: int, seed: int = 0,
                 stat: str = "median") -> dict:
    """torch.compile of the reference: mode "fwd" compiles the eval-mode module and times
    it under no_grad; mode "fwd+bwd" compiles the train-mode module and times training
    steps. The eager reference is sampled round-robin with it ("reference_times_ms"), so
    the ratio holds even when this runs apart from the main table (a child process).
    A failure anywhere is returned as status "compile failed: <reason>"."""
    res = {"impl": f"compile:{mode}", "kind": "compile", "backend": None, "status": "ok",
           "times_ms": {}, "stats_ms": {}, "peak_mem_bytes": {}}
    torch._dynamo.reset()
    try:
        with _quiet_compile():
            module = build_reference(shape, device, seed)
            compiled = torch.compile(module, dynamic=False)
            t0 = time.perf_counter()
            if mode == "fwd":
                module.eval()
                with torch.no_grad():
                    forward_fn(compiled, shape)(make_input(shape, device))
            else:
                module.train()
                x = make_input(shape, device, requires_grad=True)
                forward_fn(compiled, shape)(x).backward(make_grad(shape, device))
                del x
            res["compile_s"] = time.perf_counter() - t0
            _stop_compile_workers()
            clock = Clock(device)
            subjects = [Subject(compiled, shape, device, clock, stat),
                        Subject(build_reference(shape, device, seed), shape, device, clock, stat)]
            measure_round_robin(subjects, warmup, repeats, infer=mode == "fwd", train=mode != "fwd")
            m = subjects[0].finish(count_saved=False)
            res.update({k: m[k] for k in ("times_ms", "stats_ms", "peak_mem_bytes")})
            res["reference_times_ms"] = subjects[1].finish(count_saved=False)["times_ms"]
    except Exception as err:
        res["status"] = "compile failed: " + short_reason(err)
    finally:
        torch._dynamo.reset()
    return res


# ---------------------------------------------------------------------------------------
# torch.compile within a time budget: a child process that can be stopped

def _compile_child_main() -> int:
    spec = json.loads(sys.stdin.read())
    torch.set_num_threads(spec["threads"])
    _set_tf32(False)
    for shape_d, mode in spec["tasks"]:
        shape = Shape(**shape_d)
        res = compile_task(shape, mode, spec["device"], spec["warmup"], spec["repeats"], spec["seed"], spec["stat"])
        res["shape"] = shape.name
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()
    return 0


def _run_compile_tasks_budgeted(tasks: List[Tuple[Shape, str]], device, warmup: int, repeats: int, seed: int,
                                budget_s: float, log: Callable[[str], None],
                                stat: str = "median") -> Dict[Tuple[str, str], dict]:
    """Runs the compile tasks, in order, in a child process; stops it when `budget_s` is
    spent. Tasks that did not finish in time come back as "skipped: ..."."""
    results: Dict[Tuple[str, str], dict] = {}
    if budget_s <= 0 or not tasks:
        reason = f"skipped: compile time budget {budget_s:g} s"
        return {(s.name, m): _skipped(m, reason) for s, m in tasks}
    spec = {"tasks": [[asdict(s), m] for s, m in tasks], "device": str(device), "warmup": warmup,
            "repeats": repeats, "seed": seed, "threads": torch.get_num_threads(), "stat": stat}
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    stderr = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-m", "adaptir_kernels.bench", "--compile-child"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                            start_new_session=True)
    lines: "queue.Queue[Optional[str]]" = queue.Queue()

    def reader():
        for ln in proc.stdout:
            lines.put(ln)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(json.dumps(spec))
        proc.stdin.close()
    deadline = time.monotonic() + budget_s
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        try:
            ln = lines.get(timeout=left)
        except queue.Empty:
            timed_out = True
            break
        if ln is None:
            break
        try:
            r = json.loads(ln)
        except json.JSONDecodeError:
            continue
        name, mode = r.pop("shape"), r["impl"].split(":", 1)[1]
        results[(name, mode)] = r
        log(f"  {name:<10} compile:{mode:<8} {_status_text(r)}")
    if timed_out:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stderr.seek(0)
    tail = [ln.strip() for ln in stderr.read().splitlines() if ln.strip()]
    stderr.close()
    for s, m in tasks:
        if (s.name, m) in results:
            continue
        if timed_out:
            reason = f"skipped: compile time budget {budget_s:g} s spent (--compile-budget)"
        else:
            reason = "compile failed: child process exited " + str(proc.returncode) + (
                f" ({tail[-1][:120]})" if tail else "")
        results[(s.name, m)] = _skipped(m, reason)
    return results


def _skipped(mode: str, reason: str) -> dict:
    return {"impl": f"compile:{mode}", "kind": "compile", "backend": None, "status": reason,
            "times_ms": {}, "stats_ms": {}, "peak_mem_bytes": {}}


def _status_text(r: dict) -> str:
    if r["status"] != "ok":
        return r["status"]
    t = ", ".join(f"{k} {fmt_ms(v)}" for k, v in r["times_ms"].items())
    return f"{t} (compiled in {r.get('compile_s', float('nan')):.0f} s)"


# ---------------------------------------------------------------------------------------
# environment

def _set_tf32(enabled) -> Tuple[bool, bool]:
    """Set (or, given a pair, restore) TF32 for matmuls and cuDNN convolutions; returns
    the previous pair. The bench runs everything in full fp32 (SPEC 6)."""
    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    mm, conv = enabled if isinstance(enabled, tuple) else (enabled, enabled)
    torch.backends.cuda.matmul.allow_tf32 = mm
    torch.backends.cudnn.allow_tf32 = conv
    return prev


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    name = ln.split(":", 1)[1].strip()
                    break
    return name


def source_revision(root: Optional[str] = None) -> Optional[str]:
    """The git commit of the package's checkout (or of the checkout at `root`), with
    "+dirty" when the sources that decide the results (the package, csrc/, the build
    files) have uncommitted changes; None outside a git checkout or without git. Result
    files written into the checkout (benchmarks/results/) do not count. A worktree's .git
    is a file, a clone's a folder: both count."""
    if root is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--",
                                "adaptir_kernels", "csrc", "setup.py", "CMakeLists.txt"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def cpu_isa() -> Optional[str]:
    """Which build of the C++ extension's vector kernels runs ('avx512': the skinny
    products in AVX-512 and the rest in AVX2; 'avx2'; or 'baseline'; ADAPTIR_CPU_AVX512=0
    and ADAPTIR_CPU_AVX2=0 select the latter two, ADAPTIR_CPU_AVX512=1 the first where the
    CPU has it), or None without the extension."""
    if not cpp_available():
        return None
    from . import _ext

    return _ext.require().cpu_isa()


def environment(device) -> dict:
    device = torch.device(device)
    triton_version = None
    if triton_importable():
        with contextlib.suppress(Exception):
            import triton

            triton_version = triton.__version__
    return {
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_isa": cpu_isa(),
        "cpu_count": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "revision": source_revision(),
    }


def training_shape(name: str, batch: Optional[int] = None) -> Shape:
    """The SPEC section 7 training shape `name` (as `--full` runs it), with batch size
    `batch` instead of the SPEC one if given."""
    shapes = {s.name: s for s in profile_shapes("full") if s.train}
    if name not in shapes:
        raise ValueError(f"unknown training shape {name!r}; one of {sorted(shapes)}")
    return shapes[name] if batch is None else shapes[name].with_batch(batch)


def write_script_json(path: str, script: str, argv: Optional[Sequence[str]], payload: dict) -> None:
    """A benchmark script's JSON file: the command that made it, the CPU environment
    (environment("cpu")) and the payload's fields; says where it wrote."""
    args = list(argv) if argv is not None else sys.argv[1:]
    out = {"command": f"python benchmarks/{script} " + " ".join(args),
           "environment": environment(torch.device("cpu")), **payload}
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path}")


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("adaptir bench: --device cuda, but torch sees no CUDA device")
    return torch.device(requested)


def fused_backends(device, requested: Optional[Sequence[str]] = None) -> Tuple[List[str], List[str]]:
    """(the backends to time, notes on those left out and why)."""
    device = torch.device(device)
    avail = available_backends(device)
    notes = []
    if device.type == "cpu":
        if triton_importable():
            notes.append("fused:triton: on the CPU Triton runs only in its interpreter "
                         "(TRITON_INTERPRET=1), far too slow to time; left out")
        if not cpp_available():
            notes.append("fused:cpp: the C++ extension is not built or lacks operators "
                         "(pip install --no-build-isolation -e .)")
    chosen = [b for b in avail if not (b == "triton" and device.type == "cpu")]
    if requested:
        missing = [b for b in requested if b not in chosen]
        for b in missing:
            notes.append(f"fused:{b}: asked for with --backends but not available on {device.type}")
        chosen = [b for b in chosen if b in requested]
    return chosen, notes


# ---------------------------------------------------------------------------------------
# formatting

def fmt_ms(t: Optional[float]) -> str:
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return "-"
    if t >= 100:
        return f"{t:.0f} ms"
    if t >= 10:
        return f"{t:.1f} ms"
    if t >= 1:
        return f"{t:.2f} ms"
    return f"{t:.3f} ms"


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def main_column(shape_d: dict) -> str:
    return "fwd+bwd" if shape_d["train"] else "infer"


def _optional_columns(shape_d: dict) -> Tuple[bool, bool]:
    """(any row has CUDA-graph times, any row has peak memory) at this shape."""
    main = main_column(shape_d)
    rows = shape_d["results"]
    return (any(r.get("graph_ms", {}).get(main) is not None for r in rows),
            any(r.get("peak_mem_bytes", {}).get(main) is not None for r in rows))


def _cells(row: dict, shape_d: dict) -> List[str]:
    cols = [c for c in COLUMNS if shape_d["train"] or c == "infer"]
    graphs, peaks = _optional_columns(shape_d)
    n_extra = 2 + graphs + peaks
    if row["status"] != "ok" and not row["times_ms"]:
        return [row["status"]] + [""] * (len(cols) + n_extra - 1)
    cells = []
    for c in cols:
        t = row["times_ms"].get(c)
        r = row.get("speedup", {}).get(c)
        cells.append("-" if t is None else (fmt_ms(t) + (f" ({r:.2f}x)" if r is not None else "")))
    main = main_column(shape_d)
    frac = row.get("floor_fraction", {}).get(main)
    cells.append("-" if frac is None else f"{100 * frac:.1f}%")
    if graphs:
        g = row.get("graph_ms", {}).get(main)
        gf = row.get("graph_floor_fraction", {}).get(main)
        cells.append("-" if g is None else fmt_ms(g) + ("" if gf is None else f" ({100 * gf:.0f}%)"))
    if row.get("saved_activation_bytes") is not None:
        cells.append(f"{fmt_bytes(row['saved_activation_bytes'])} ({row['saved_hidden_units']:.1f} h)")
    else:
        cells.append("-")
    if peaks:
        cells.append(fmt_bytes(row.get("peak_mem_bytes", {}).get(main)))
    return cells


def _headers(shape_d: dict) -> List[str]:
    cols = [c for c in COLUMNS if shape_d["train"] or c == "infer"]
    main = main_column(shape_d)
    graphs, peaks = _optional_columns(shape_d)
    out = ["implementation"] + cols + [f"floor/{main}"]
    if graphs:
        out.append(f"{main} as CUDA graph (floor/it)")
    out.append("saved for bwd (h-units)")
    if peaks:
        out.append(f"peak mem {main}")
    return out


def _shape_header(sd: dict) -> str:
    text = (f"{sd['name']}: x {tuple(sd['x_shape'])} {sd['layout']}, H={sd['H']} W={sd['W']}, "
            f"hidden {sd['hidden']}{'' if sd['train'] else ', forward only'}")
    if sd.get("spec_N"):
        text += f" -- batch {sd['N']} instead of {sd['spec_N']} (--quick)"
    return text


def _floor_line(sd: dict) -> str:
    return "SPEC 5.1 floor: " + ", ".join(f"{k} {fmt_ms(v)}" for k, v in sd["floor_ms"].items())


def format_text(results: dict) -> str:
    out = ["", f"Times are the {results['timing']['statistic']} of the samples; (Nx) = speed-up over the eager reference in the same run (compile rows: over "
           "the reference timed alongside them); floor/... = SPEC 5.1 floor / time; h-units = saved bytes / "
           "(N*H*W*hidden*4)."]
    for sd in results["shapes"]:
        out.append("")
        out.append(_shape_header(sd))
        out.append("  " + _floor_line(sd))
        headers = _headers(sd)
        rows = [([r["impl"]] + _cells(r, sd), r["status"] == "ok" or bool(r["times_ms"])) for r in sd["results"]]
        widths = [max([len(headers[i])] + [len(cells[i]) for cells, timed in rows if timed or i == 0])
                  for i in range(len(headers))]
        out.append("  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
        for cells, timed in rows:
            if timed:
                out.append("  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
            else:
                out.append("  " + cells[0].ljust(widths[0]) + "  " + cells[1])
    return "\n".join(out)


def format_markdown(results: dict) -> str:
    env = results["environment"]
    fl = results["floor"]
    lines = [
        f"# adaptir bench ({results['mode']}): {env['device_name']}",
        "",
        f"torch {env['torch']}, triton {env['triton']}, {env['threads']} threads"
        + (f", C++ vector kernels: {env['cpu_isa']}" if env.get("cpu_isa") else "")
        + f", {env['date']}"
        + (f", source {env['revision']}" if env.get("revision") else "")
        + f"; command: `{results['command']}`",
        "",
        f"Copy bandwidth {fl['copy_GBps']:.1f} GB/s (read + written), fp32 matmul {fl['matmul_GFLOPs']:.0f} GFLOP/s "
        f"({fl['matmul_n']}^3); the floor is SPEC 5.1's five C-wide passes at that bandwidth plus the "
        f"skinny products at that rate. Times are the {results['timing']['statistic']} of "
        f"{results['timing']['repeats']} samples after {results['timing']['warmup']} warm-up rounds, "
        f"implementations interleaved round-robin; (Nx) is the speed-up over the eager reference "
        f"in the same run (for compile rows: over the reference timed alongside them); "
        f"h-units = bytes / (N*H*W*hidden*4).",
        "",
        "Correctness (fused vs reference, train-mode output and all gradients, eval output):",
        "",
    ]
    for c in results["check"]:
        lines.append(f"- {'PASS' if c['passed'] else 'FAIL'} {c['backend']} {c['shape']}: "
                     + (f"error {c['error']}" if c["error"] else
                        f"out {c['out_err']:.1e}, eval out {c['eval_out_err']:.1e}, "
                        f"worst grad {max(c['grad_errs'].values()):.1e}"))
    for sd in results["shapes"]:
        lines += ["", f"## {_shape_header(sd)}", "", _floor_line(sd), ""]
        headers = _headers(sd)
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "---|" * len(headers))
        for r in sd["results"]:
            cells = _cells(r, sd)
            lines.append("| " + " | ".join([r["impl"]] + cells) + " |")
    if results["skipped"]:
        lines += ["", "Left out:", ""] + [f"- {s}" for s in results["skipped"]]
    if results.get("scaling"):
        lines += ["", format_scaling(results["scaling"], markdown=True)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# the run

@dataclass
class BenchOptions:
    device: torch.device
    mode: str = "quick"  # quick | full | tiny
    backends: Optional[List[str]] = None
    warmup: Optional[int] = None
    repeats: Optional[int] = None
    compile: bool = True
    compile_budget: Optional[float] = None  # None: in-process and unbounded
    only: Optional[List[str]] = None
    scaling: bool = False
    graphs: bool = True  # CUDA only
    stat: str = "median"  # which statistic of the samples the tables report: "median" or "min"
    seed: int = 0
    command: str = "adaptir bench"


_DEFAULT_REPEATS = {"tiny": (1, 2), "quick": (2, 3), "full": (2, 10)}


def _add_ratios(shape: Shape, rows: List[dict], floor: Dict[str, float]) -> None:
    ref = next((r for r in rows if r["impl"] == "reference"), None)
    for r in rows:
        r["speedup"] = {}
        r["floor_fraction"] = {}
        # compile rows carry the reference timed alongside them
        base = r.get("reference_times_ms") or (ref["times_ms"] if ref is not None else {})
        for col, t in r["times_ms"].items():
            if col in base and t > 0:
                r["speedup"][col] = base[col] / t
            if col in floor and t > 0:
                r["floor_fraction"][col] = floor[col] / t
        if r.get("graph_ms"):
            r["graph_floor_fraction"] = {c: floor[c] / t for c, t in r["graph_ms"].items() if c in floor and t > 0}


def _build(shape: Shape, backend: Optional[str], device, seed: int) -> torch.nn.Module:
    return build_reference(shape, device, seed) if backend is None else build_fused(shape, backend, device, seed)


def _time_shape(shape: Shape, backends: Sequence[str], device, warmup: int, repeats: int, seed: int,
                log: Callable[[str], None], stat: str = "median") -> List[dict]:
    """Rows for the reference and each fused backend at one shape, sampled round-robin."""
    impls = [("reference", "eager", None)] + [(f"fused:{b}", "fused", b) for b in backends]
    rows = [{"impl": name, "kind": kind, "backend": backend, "status": "ok",
             "times_ms": {}, "stats_ms": {}, "peak_mem_bytes": {}} for name, kind, backend in impls]
    clock = Clock(device)
    subjects: List[Optional[Subject]] = []
    for row in rows:
        try:
            subjects.append(Subject(_build(shape, row["backend"], device, seed), shape, device, clock, stat))
        except Exception as err:
            row["status"] = f"failed: {short_reason(err)}"
            subjects.append(None)

    def on_error(j, err):
        rows[j]["status"] = f"failed: {short_reason(err)}"

    measure_round_robin(subjects, warmup, repeats, on_error=on_error)
    for row, sub in zip(rows, subjects):
        if sub is not None and row["status"] == "ok":
            try:
                row.update(sub.finish())
            except Exception as err:
                row["status"] = f"failed: {short_reason(err)}"
        log(f"  {shape.name:<10} {row['impl']:<14} " + (", ".join(
            f"{k} {fmt_ms(v)}" for k, v in row["times_ms"].items()) if row["status"] == "ok" else row["status"]))
    return rows


def _graph_rows(shapes: Sequence[Shape], shape_rows: Dict[str, List[dict]], device, repeats: int, seed: int,
                log: Callable[[str], None]) -> None:
    """Adds CUDA-graph times to the eager and fused rows. Runs after every other
    measurement: a failed capture can leave the device in a bad state."""
    log("")
    log("CUDA graphs (the GPU's own time, without Python and launch overhead):")
    for shape in shapes:
        for row in shape_rows[shape.name]:
            if row["kind"] == "compile" or row["status"] != "ok":
                continue
            try:
                row["graph_ms"] = graphed_times(_build(shape, row["backend"], device, seed), shape, device, repeats)
                row["graph_status"] = "ok"
            except Exception as err:
                row["graph_ms"] = {}
                row["graph_status"] = "capture failed: " + short_reason(err)
            log(f"  {shape.name:<10} {row['impl']:<14} " + (", ".join(
                f"{k} {fmt_ms(v)}" for k, v in row["graph_ms"].items()) or row["graph_status"]))


def _compile_rows(shapes: Sequence[Shape], opts: "BenchOptions", device, warmup: int, repeats: int,
                  log: Callable[[str], None]) -> Dict[Tuple[str, str], dict]:
    """compile:fwd at every shape and compile:fwd+bwd at every training shape; the first
    forward+backward attempt goes first, since a time budget may not cover them all."""
    train_shapes = [s for s in shapes if s.train]
    tasks = [(train_shapes[0], "fwd+bwd")] if train_shapes else []
    tasks += [(s, "fwd") for s in shapes] + [(s, "fwd+bwd") for s in train_shapes[1:]]
    if not tasks:
        return {}
    log("")
    if opts.compile_budget is not None:
        log(f"torch.compile of the reference (child process, time budget {opts.compile_budget:g} s; "
            f"order: {', '.join(f'{s.name} {m}' for s, m in tasks)}):")
        return _run_compile_tasks_budgeted(tasks, device, warmup, repeats, opts.seed, opts.compile_budget, log,
                                           opts.stat)
    log("torch.compile of the reference (in this process, no time limit):")
    out = {}
    for s, m in tasks:
        out[(s.name, m)] = r = compile_task(s, m, device, warmup, repeats, opts.seed, opts.stat)
        log(f"  {s.name:<10} compile:{m:<8} {_status_text(r)}")
    return out


def run(opts: BenchOptions, log: Callable[[str], None] = print) -> Tuple[dict, int]:
    """The whole bench: returns (results as a JSON-ready dict, exit status)."""
    device = opts.device
    warmup, repeats = _DEFAULT_REPEATS[opts.mode]
    warmup = opts.warmup if opts.warmup is not None else warmup
    repeats = opts.repeats if opts.repeats is not None else repeats
    prev_tf32 = _set_tf32(False)
    try:
        return _run(opts, device, warmup, repeats, log)
    finally:
        _set_tf32(prev_tf32)


def _run(opts: BenchOptions, device, warmup: int, repeats: int, log) -> Tuple[dict, int]:
    started = time.monotonic()
    env = environment(device)
    log(f"adaptir bench --{opts.mode} on {device.type}: {env['device_name']}; torch {env['torch']}, "
        f"triton {env['triton']}, {env['threads']} threads; warmup {warmup}, repeats {repeats} "
        f"(reported: the {opts.stat} of the samples)")
    load = env.get("loadavg")
    if device.type == "cpu" and load and load[0] > 0.5 * (os.cpu_count() or 1):
        log(f"note: load average {load[0]:.1f} on {os.cpu_count()} cores before starting; other processes "
            "compete for the CPU and the times will be noisy")
    backends, skipped = fused_backends(device, opts.backends)

    # 1. correctness
    log("")
    log("Correctness: fused module vs the eager reference, randomised parameters "
        f"(output < {OUT_TOL:.0e}, every gradient < {GRAD_TOL:.0e}):")
    checks: List[CheckResult] = []
    failed = set()
    for b in backends:
        for c in check_backend(b, device):
            checks.append(c)
            log("  " + c.line())
            if not c.passed:
                failed.add(b)
    if not backends:
        log("  (no fused backend available)")
    for b in sorted(failed):
        skipped.append(f"fused:{b}: not timed, it failed the correctness check")
    timed_backends = [b for b in backends if b not in failed]

    # 2. the floor
    floor = measure_floor(device, "small" if opts.mode == "tiny" else "large")
    log("")
    log(f"Device: copy {floor['copy_GBps']:.1f} GB/s (read + written), fp32 matmul {floor['matmul_GFLOPs']:.0f} "
        f"GFLOP/s ({floor['matmul_n']}^3)")

    # 3. eager and fused rows
    shapes = list(profile_shapes(opts.mode))
    if opts.only:
        unknown = [n for n in opts.only if n not in {s.name for s in shapes}]
        if unknown:
            raise SystemExit(f"adaptir bench: unknown shape(s) {unknown}; have {[s.name for s in shapes]}")
        shapes = [s for s in shapes if s.name in opts.only]
    shape_rows: Dict[str, List[dict]] = {}
    results_shapes = []
    if not opts.scaling:
        log("")
        log("Timing (progress):")
        for shape in shapes:
            shape_rows[shape.name] = _time_shape(shape, timed_backends, device, warmup, repeats, opts.seed, log,
                                                 opts.stat)

        # 4. torch.compile of the reference
        if opts.compile:
            for (name, mode), r in _compile_rows(shapes, opts, device, warmup, repeats, log).items():
                if r["status"].startswith("skipped"):
                    skipped.append(f"compile:{mode} at {name}: {r['status'][len('skipped: '):]}")
                shape_rows[name].append(r)
        else:
            skipped.append("torch.compile: not attempted (--no-compile)")
        if opts.graphs and device.type == "cuda":
            _graph_rows(shapes, shape_rows, device, repeats, opts.seed, log)
        for shape in shapes:
            rows = shape_rows[shape.name]
            rows.sort(key=lambda r: (("eager", "fused", "compile").index(r["kind"]), r["impl"] == "compile:fwd+bwd"))
            fl = floor_ms(shape, floor)
            _add_ratios(shape, rows, fl)
            results_shapes.append({**shape.to_json(), "floor_ms": fl, "results": rows})

    results = {
        "schema": 1,
        "mode": opts.mode,
        "command": opts.command,
        "environment": env,
        "floor": floor,
        "tolerances": {"out": OUT_TOL, "grad": GRAD_TOL},
        "timing": {"warmup": warmup, "repeats": repeats, "statistic": opts.stat,
                   "clock": "cuda events, L2 flushed before each sample" if device.type == "cuda" else "perf_counter"},
        "check": [c.to_json() for c in checks],
        "shapes": results_shapes,
        "skipped": skipped,
    }
    if opts.scaling:
        results["scaling"] = run_scaling(device, timed_backends, opts.mode, warmup, repeats, opts.seed, log,
                                         graphs=opts.graphs, stat=opts.stat)

    if results_shapes:
        log(format_text(results))
    if results.get("scaling"):
        log("")
        log(format_scaling(results["scaling"]))
    if skipped:
        log("")
        log("Left out:")
        for s in skipped:
            log(f"  - {s}")
    n_fail = sum(not c.passed for c in checks)
    log("")
    elapsed = time.monotonic() - started
    results["elapsed_s"] = elapsed
    if hasattr(os, "getloadavg"):
        results["environment"]["loadavg_end"] = list(os.getloadavg())
    if n_fail:
        log(f"FAIL: {n_fail} correctness check(s) failed ({', '.join(sorted(failed))}); {elapsed:.0f} s")
        return results, 1
    log(f"All correctness checks passed ({len(checks)}); {elapsed:.0f} s")
    return results, 0


# ---------------------------------------------------------------------------------------
# scaling

SCALING_SPATIAL = {"full": (48, 96, 128, 192, 256), "quick": (48, 96, 160, 256), "tiny": (4, 8)}
SCALING_WIDTH = {"full": (90, 180, 360, 576, 720), "quick": (90, 180, 360, 720), "tiny": (28, 56)}
SCALING_BATCH = {"full": (1, 2, 4, 8, 16), "quick": (1, 2, 4, 8), "tiny": (1, 2)}
# What each sweep varies: the x of its points, and how that x is named in tables and plots.
SCALING_X = {"spatial": "N*H*W", "width": "d_model", "batch": "N"}


def scaling_shapes(mode: str) -> Dict[str, List[Shape]]:
    C = 180 if mode != "tiny" else 56
    spatial = [Shape(f"{s}x{s}", "nhwc", 1, s, s, C, "edt") for s in SCALING_SPATIAL[mode]]
    n, hw = (4, 48) if mode != "tiny" else (2, 5)
    width = [Shape(f"C{c}", "nhwc", n, hw, hw, c, "edt", hidden=None if c >= 56 else 4)
             for c in SCALING_WIDTH[mode]]
    # EDT-B's training patches (48x48, d_model 180) from one sample to the SPEC batch:
    # what is fixed per adapter call shows as time growing slower than N.
    batch = [Shape(f"N{b}", "nhwc", b, hw, hw, C, "edt") for b in SCALING_BATCH[mode]]
    return {"spatial": spatial, "width": width, "batch": batch}


def scaling_x(sweep: str, shape: Shape) -> int:
    return {"spatial": shape.rows, "width": shape.C, "batch": shape.N}[sweep]


def _slope(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    """Least-squares exponent k of y ~ x^k."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def run_scaling(device, backends: Sequence[str], mode: str, warmup: int, repeats: int, seed: int,
                log: Callable[[str], None] = print, graphs: bool = True, stat: str = "median") -> dict:
    """Forward+backward time of the reference and each fused backend against N*H*W
    (d_model 180, batch 1, square images), against d_model (hidden = d_model // 14,
    batch 4 of 48x48) and against the batch N (d_model 180, 48x48)."""
    out = {}
    use_graphs = graphs and torch.device(device).type == "cuda"
    failed: Optional[str] = None
    impls = [("reference", None)] + [(f"fused:{b}", b) for b in backends]
    log("")
    log("Scaling (forward+backward, train mode):")
    for sweep, shapes in scaling_shapes(mode).items():
        xs = [scaling_x(sweep, s) for s in shapes]
        series: Dict[str, List[Optional[float]]] = {name: [] for name, _ in impls}
        for shape in shapes:
            clock = Clock(device)
            subjects: List[Optional[Subject]] = [
                Subject(_build(shape, backend, device, seed), shape, device, clock, stat) for _, backend in impls]

            def on_error(j, err, shape=shape, subjects=subjects):
                log(f"  {sweep} {shape.name} {impls[j][0]}: failed: {short_reason(err)}")
                subjects[j] = None

            measure_round_robin(subjects, warmup, repeats, infer=False, on_error=on_error)
            for (name, _), sub in zip(impls, subjects):
                t = _summary(sub.samples["fwd+bwd"])[stat] if sub is not None else None
                series[name].append(t)
                log(f"  {sweep:<7} {shape.name:<8} {name:<12} {fmt_ms(t)}")
            del subjects
        if use_graphs:
            # After the eager sweep: a failed capture can leave the device unusable.
            for shape in shapes:
                for name, backend in impls:
                    tg = None
                    if failed is None:
                        try:
                            tg = graphed_times(_build(shape, backend, device, seed), shape, device, repeats)["fwd+bwd"]
                        except Exception as err:
                            failed = short_reason(err)
                            log(f"  {sweep} {shape.name} {name}: CUDA graph capture failed ({failed}); "
                                "no more graphs in this run")
                    series.setdefault(f"{name} [graph]", []).append(tg)
                    log(f"  {sweep:<7} {shape.name:<8} {name:<12} as CUDA graph {fmt_ms(tg)}")
        out[sweep] = {
            "x": SCALING_X[sweep],
            "points": [s.to_json() for s in shapes],
            "xs": xs,
            "fwd_bwd_ms": series,
            "exponent": {k: _slope(xs, v) for k, v in series.items()},
            "local_exponent": {k: [None] + [_slope(xs[i - 1:i + 1], v[i - 1:i + 1]) for i in range(1, len(xs))]
                               for k, v in series.items()},
        }
    return out


def format_scaling(scaling: dict, markdown: bool = False) -> str:
    lines = []
    for sweep, d in scaling.items():
        names = list(d["fwd_bwd_ms"])
        p0 = d["points"][0]
        title = {
            "spatial": f"forward+backward time against N*H*W (d_model {p0['C']}, batch {p0['N']}, H = W)",
            "width": (f"forward+backward time against d_model (hidden = d_model // 14, batch {p0['N']} of "
                      f"{p0['H']}x{p0['W']})"),
            "batch": f"forward+backward time against the batch N (d_model {p0['C']}, {p0['H']}x{p0['W']})",
        }[sweep]
        header = [d["x"] + " (k: time ~ x^k from the previous point)"] + names
        rows = []
        local = d.get("local_exponent", {})
        for i, pt in enumerate(d["points"]):
            label = f"{d['xs'][i]} ({pt['name']})"
            cells = []
            for n in names:
                k = local.get(n, [None] * (i + 1))[i]
                cells.append(fmt_ms(d["fwd_bwd_ms"][n][i]) + ("" if k is None else f" (k {k:.2f})"))
            rows.append([label] + cells)
        exp = ["k over the whole range"] + [("-" if d["exponent"][n] is None else f"{d['exponent'][n]:.2f}")
                                            for n in names]
        if markdown:
            lines += [f"### Scaling: {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(r) + " |" for r in rows + [exp]]
            lines.append("")
        else:
            widths = [max(len(r[i]) for r in [header] + rows + [exp]) for i in range(len(header))]
            lines.append(f"Scaling: {title}")
            for r in [header] + rows + [exp]:
                lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            lines.append("")
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------------------------------
# command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="the default: batch 2 instead of 16 for the training shapes, few repeats, "
                           "torch.compile within --compile-budget (1-2.5 minutes on 2 CPU cores)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="the SPEC section 7 shapes as written, more repeats, compile attempts unbounded")
    mode.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help=argparse.SUPPRESS)
    p.set_defaults(mode="quick")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: cuda when torch sees a GPU, else cpu")
    p.add_argument("--backends", default=None,
                   help="comma-separated fused backends to check and time (default: every available one)")
    p.add_argument("--only", default=None, help="comma-separated shape names (ipt-train, edt-train, edt-infer)")
    p.add_argument("--repeats", type=int, default=None, help="timed samples per column")
    p.add_argument("--stat", choices=("min", "median"), default=None,
                   help="statistic of the samples to report (default: min on the CPU, where foreign load only "
                        "ever adds time; median on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations before the samples")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before timing (CPU)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile of the reference")
    p.add_argument("--compile-budget", type=float, default=None, metavar="SECONDS",
                   help="run the torch.compile attempts in a child process stopped after SECONDS "
                        f"(default: {QUICK_COMPILE_BUDGET:g} in --quick, unbounded and in-process otherwise)")
    p.add_argument("--no-graphs", dest="graphs", action="store_false",
                   help="CUDA: skip the CUDA-graph replays that measure the GPU's own time")
    p.add_argument("--scaling", action="store_true",
                   help="instead of the shape table, time forward+backward against N*H*W, d_model and "
                        "the batch N")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--markdown", default=None, metavar="PATH", help="write the tables as markdown")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)


def _split(v: Optional[str]) -> Optional[List[str]]:
    return [s.strip() for s in v.split(",") if s.strip()] if v else None


def command_line(args: argparse.Namespace) -> str:
    """The options that shaped this run, as an `adaptir bench` command line."""
    parts = ["adaptir bench", f"--{args.mode}"]
    for flag, value in (("--device", args.device if args.device != "auto" else None), ("--backends", args.backends),
                        ("--only", args.only), ("--repeats", args.repeats), ("--warmup", args.warmup),
                        ("--threads", args.threads), ("--compile-budget", args.compile_budget),
                        ("--stat", args.stat),
                        ("--json", args.json), ("--markdown", args.markdown)):
        if value is not None:
            parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    if not args.compile:
        parts.append("--no-compile")
    if args.scaling:
        parts.append("--scaling")
    if not args.graphs:
        parts.append("--no-graphs")
    return " ".join(parts)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    budget = args.compile_budget
    if budget is None and args.mode == "quick":
        budget = QUICK_COMPILE_BUDGET
    command = command_line(args)
    device = resolve_device(args.device)
    stat = args.stat or ("min" if device.type == "cpu" else "median")
    return BenchOptions(device=device, stat=stat, mode=args.mode, backends=_split(args.backends),
                        warmup=args.warmup, repeats=args.repeats, compile=args.compile, compile_budget=budget,
                        only=_split(args.only), scaling=args.scaling, graphs=args.graphs, seed=args.seed,
                        command=command)


def _write(path: str, text: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.compile_child:
        return _compile_child_main()
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = options_from_args(args)
    results, status = run(opts)
    if args.json:
        _write(args.json, json.dumps(results, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")
    if args.markdown:
        _write(args.markdown, format_markdown(results))
        print(f"wrote {args.markdown}")
    return status


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="check every installed implementation against the reference, then time them",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=cmd_bench)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m adaptir_kernels.bench")
    add_arguments(p)
    return cmd_bench(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
