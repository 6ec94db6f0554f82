"""One AdaptIR fine-tuning step of EDT-B, end to end: forward, L1 loss, backward and an
AdamW step on the trainable tensors (built as `adaptir train` builds it), on a batch of
48x48 low-quality patches.

Variants, measured in the same process on the same backbone weights:
    none   no adapters. The body's entry LayerNorm (body.patch_embed.norm, 360 values)
           is the only trainable tensor, so backward traverses the same transformer body
           as with adapters (from block 0 on) and the optimizer step is ~free: this is
           the cost of the frozen backbone itself.
    eager  adapters in every block, eager reference implementation.
    fused  adapters in every block, fused implementation (backend "auto" by default).
    fused:<backend>  the same with that backend; fused:cpp-ops is the cpp backend run
           operator by operator from Python instead of as one C++ operator (the C++
           chain): the two in one run give what the C++ chain saves.
The adapters' parameters are drawn at random first (a fresh adapter is an exact zero
function with mostly vanishing gradients). The variants' steps are interleaved
round-robin, so slow drifts of the machine reach every variant alike. Reported: the
minimum (CPU: foreign load only ever adds time) or median (CUDA) step time per variant,
and the adapters' overhead over `none`.

The adapters are also clocked inside the step (`AdapterClock`): a forward
pre-hook and hook around every adapter call, and two identity autograd nodes, one on
the adapter's input and one on its output, whose backward marks when the gradient
reaches the adapter and when it has passed through (with hooks on the parameters'
gradient accumulation for an adapter whose input needs no gradient; the autograd engine runs an
adapter's backward nodes one after another: they were created together, after the
block's FFN). The sum over the 36 adapters, forward and backward, plus the optimizer
step, is the adapters' own time in the step. It does not depend on the difference of
two whole-step times, whose noise on a shared machine can exceed the whole adapter
cost. The fused/eager ratio of these overheads is given from the minima of the variants
and round by round (each round's variants ran seconds apart), with the rounds' median.
The clock's marks are host-clock readings on the CPU. On CUDA, where the host clock would
only see the launches, they are CUDA events on the current stream (the autograd engine
runs the backward on the forward's stream): an adapter's interval is then the GPU's time
from its first kernel to its last, including any wait of the GPU for the host's launches.
`--op-clock` (CPU) also times every fused-operator call inside the step, to separate the
operators' time from the rest of the adapter's (Python, small ops, autograd).

    python benchmarks/bench_finetune_step.py                     # CPU (+ CUDA when present)
    python benchmarks/bench_finetune_step.py --device cuda --batch-size 16 --repeats 10
    python benchmarks/bench_finetune_step.py --tiny              # a seconds-long smoke run

`run(...)` returns the same numbers as a dict.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from adaptir_kernels.adapters import adapter_modules, fuse, inject, trainable_parameters  # noqa: E402
from adaptir_kernels.backbones import EDT  # noqa: E402
from adaptir_kernels.bench import Clock, OperatorClock, source_revision  # noqa: E402
from adaptir_kernels.train import make_optimizer  # noqa: E402

VARIANTS = ("none", "eager", "fused")
TINY = dict(embed_dim=56, depths=(2, 2), num_heads=(2, 2), num_feat=8)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _randomize_adapters(model, seed: int, std: float = 0.1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in adapter_modules(model).values():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def _build_variant(base: EDT, variant: str, backend: str, seed: int) -> EDT:
    model = copy.deepcopy(base)
    if variant == "none":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.body.patch_embed.norm.parameters():
            p.requires_grad_(True)
        return model
    inject(model, backend="reference")
    _randomize_adapters(model, seed)
    if variant.startswith("fused"):
        chosen = variant.partition(":")[2] or backend
        fuse(model, backend="cpp" if chosen == CPP_OPS else chosen)
    return model


# Variant "fused:cpp-ops": the cpp backend run operator by operator from Python (the fused
# module's Python chain, module.CPP_CHAIN off during its steps) instead of as one C++
# operator: the two interleaved in one run measure what the C++ chain saves.
CPP_OPS = "cpp-ops"


def _operator_by_operator(step: Callable) -> Callable:
    import adaptir_kernels.module as fused

    def run():
        saved, fused.CPP_CHAIN = fused.CPP_CHAIN, False
        try:
            return step()
        finally:
            fused.CPP_CHAIN = saved

    return run


class _Mark(torch.autograd.Function):
    """Identity whose backward calls `at_backward()` when the gradient passes."""

    @staticmethod
    def forward(ctx, x, at_backward):
        ctx.at_backward = at_backward
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.at_backward()
        return grad, None


class AdapterClock:
    """Time spent inside every adapter of a model, forward and backward, per step: the host
    clock on the CPU; on CUDA, where the host clock would only see the launches, CUDA
    events on the current stream (`adaptir_kernels.bench.Clock`), so that an interval is
    the GPU's time between two points of its stream, waits for the host included.

    `start_step()` clears the step's intervals; after the step, `collect()` (on CUDA once
    the device has been synchronised) sums them: `fwd` and `bwd` then hold the step's
    sums in seconds and `calls` the number of adapter calls forward and backward."""

    def __init__(self, model: torch.nn.Module, device="cpu"):
        self.timer = Clock(device, flush_l2=False)
        self.fwd = self.bwd = 0.0
        self.calls = [0, 0]
        self.intervals: List[Tuple[int, object, object]] = []
        self.handles = []
        for m in adapter_modules(model).values():
            self._attach(m)

    def _attach(self, m: torch.nn.Module) -> None:
        # The backward ends when the last of the adapter's parameter gradients has been
        # accumulated and, if its input needs a gradient, that gradient has passed the
        # input mark: `pending` counts these events down.
        params = [p for p in m.parameters() if p.requires_grad]
        state = {"pending": 0}
        stamp = self.timer.mark

        def grad_in():  # backward reached the adapter's output
            state["b0"] = stamp()

        def one_done(*_):
            state["pending"] -= 1
            if state["pending"] == 0 and "b0" in state:
                self.intervals.append((1, state.pop("b0"), stamp()))
                self.calls[1] += 1

        def pre(_module, args, kwargs):
            x = args[0]
            state["pending"] = len(params)
            if torch.is_grad_enabled() and x.requires_grad:
                args = (_Mark.apply(x, one_done),) + tuple(args[1:])
                state["pending"] += 1
            state["f0"] = stamp()
            return args, kwargs

        def post(_module, _args, _kwargs, out):
            self.intervals.append((0, state.pop("f0"), stamp()))
            self.calls[0] += 1
            if torch.is_grad_enabled() and out.requires_grad:
                return _Mark.apply(out, grad_in)
            return out

        self.handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        self.handles.append(m.register_forward_hook(post, with_kwargs=True))
        for p in params:
            self.handles.append(p.register_post_accumulate_grad_hook(one_done))

    def start_step(self) -> None:
        self.fwd = self.bwd = 0.0
        self.calls = [0, 0]
        self.intervals.clear()

    def collect(self) -> None:
        """Sum the step's intervals into `fwd` and `bwd` (seconds)."""
        sums = [0.0, 0.0]
        for kind, start, end in self.intervals:
            sums[kind] += self.timer.ms(start, end) / 1e3
        self.fwd, self.bwd = sums
        self.intervals.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _make_step(model, x, target, clock: Optional[AdapterClock] = None, parts: Optional[Dict] = None,
               device="cpu"):
    """One training step. With `parts`, it receives the optimizer step's time (seconds, by
    the clock's timer, else `device`'s) and, with `clock`, the step's adapter forward and
    backward time."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, lr=1e-4, weight_decay=0.01)  # as `adaptir train` builds it
    model.train()
    timer = clock.timer if clock is not None else Clock(device, flush_l2=False)

    def step():
        if clock is not None:
            clock.start_step()
        opt.zero_grad(set_to_none=True)
        loss = F.l1_loss(model(x), target)
        loss.backward()
        t0 = timer.mark()
        opt.step()
        t1 = timer.mark()
        if parts is not None:
            timer.sync()  # CUDA: the events must have been reached before they are read
            parts["opt"] = timer.ms(t0, t1) / 1e3
            if clock is not None:
                clock.collect()
                parts["adapter_fwd"], parts["adapter_bwd"] = clock.fwd, clock.bwd
                parts["adapter_calls"] = list(clock.calls)

    return step


def _time_round_robin(steps: Dict[str, Callable[[], None]], warmup: int, repeats: int,
                      device: torch.device, parts: Optional[Dict[str, Dict]] = None,
                      part_samples: Optional[Dict[str, Dict[str, List[float]]]] = None,
                      ) -> Tuple[Dict[str, List[float]], Dict[str, str]]:
    """Warm every step up, then time them in turn, `repeats` rounds; a step that raises is
    dropped from the rounds with its error (a backend missing on this machine). With
    `parts` (variant -> the dict its step fills), each timed round's parts are appended
    to `part_samples[variant][part]`."""
    times: Dict[str, List[float]] = {v: [] for v in steps}
    errors: Dict[str, str] = {}
    for rnd in range(warmup + repeats):
        for v, step in steps.items():
            if v in errors:
                continue
            try:
                _sync(device)
                t0 = time.perf_counter()
                step()
                _sync(device)
            except Exception as err:
                errors[v] = f"{type(err).__name__}: {err}"
                continue
            if rnd >= warmup:
                times[v].append(time.perf_counter() - t0)
                if parts is not None and part_samples is not None and v in parts:
                    for k, val in parts[v].items():
                        if isinstance(val, float):
                            part_samples.setdefault(v, {}).setdefault(k, []).append(val)
    return times, errors


def run(
    device: str = "cpu",
    batch_size: Optional[int] = None,
    repeats: int = 3,
    warmup: int = 1,
    task: str = "sr_2",
    patch: int = 48,
    backend: str = "auto",
    variants: Sequence[str] = VARIANTS,
    tiny: bool = False,
    seed: int = 0,
    threads: Optional[int] = None,
    verbose: bool = False,
    stat: Optional[str] = None,
    adapter_clock: Optional[bool] = None,
    op_clock: bool = False,
) -> Dict:
    """Time one fine-tuning step per variant; returns a dict with per-variant step times
    (seconds), the adapters' overhead over `none` and the fused speed-up over eager.
    adapter_clock (default: on): also clock the adapters inside the step (`AdapterClock`:
    the host clock on the CPU, CUDA events on CUDA) and the optimizer step, and report the
    adapters' own time.
    op_clock (CPU): also time every fused-operator call (`OperatorClock`)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was asked for but is not available")
    if threads:
        torch.set_num_threads(int(threads))
    if batch_size is None:
        batch_size = 16 if dev.type == "cuda" else 1
    if stat is None:
        stat = "median" if dev.type == "cuda" else "min"
    if adapter_clock is None:
        adapter_clock = dev.type in ("cpu", "cuda")
    if adapter_clock and dev.type not in ("cpu", "cuda"):
        raise ValueError(f"adapter_clock needs the CPU (host clock) or CUDA (events), got device {dev}")
    if op_clock and dev.type != "cpu":
        raise ValueError("op_clock needs the CPU: on an asynchronous device the host clock sees only launches")
    if stat not in ("min", "median"):
        raise ValueError(f"stat must be 'min' or 'median', got {stat!r}")
    unknown = {v for v in variants if v not in VARIANTS and not v.startswith("fused:")}
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; expected {VARIANTS} or fused:<backend>")

    torch.manual_seed(seed)
    base = EDT(task, **(TINY if tiny else {})).to(dev)
    scale = base.scale
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(batch_size, 3, patch, patch, generator=gen).to(dev)
    target = torch.rand(batch_size, 3, patch * scale, patch * scale, generator=gen).to(dev)

    result: Dict = {
        "model": "EDT-tiny" if tiny else "EDT-B",
        "task": task,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "patch": patch,
        "repeats": repeats,
        "warmup": warmup,
        "stat": stat,
        "torch": torch.__version__,
        "revision": source_revision(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "times_s": {},
        "all_times_s": {},
        "trainable": {},
        "skipped": {},
    }
    try:
        from adaptir_kernels.backends import resolve_backend

        result["fused_backend"] = resolve_backend(backend, dev)
    except Exception as err:  # the fused module may be unavailable
        result["fused_backend"] = f"unavailable: {err}"

    steps = {}
    parts: Dict[str, Dict] = {}
    for v in variants:
        try:
            model = _build_variant(base, v, backend, seed)
        except (ImportError, RuntimeError) as err:
            result["skipped"][v] = str(err)
            continue
        result["trainable"][v] = int(trainable_parameters(model))
        if adapter_clock:
            parts[v] = {}
            steps[v] = _make_step(model, x, target, AdapterClock(model, dev) if v != "none" else None, parts[v],
                                  dev)
        else:
            steps[v] = _make_step(model, x, target)
        if v == "fused:" + CPP_OPS:
            steps[v] = _operator_by_operator(steps[v])
    if dev.type == "cuda":
        # Peak memory per variant: one step each on a clean slate.
        for v, step in steps.items():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            try:
                step()
            except Exception:
                continue
            _sync(dev)
            result.setdefault("peak_memory_mb", {})[v] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    part_samples: Dict[str, Dict[str, List[float]]] = {}
    with (OperatorClock() if op_clock else contextlib.nullcontext()) as op_times:
        times, errors = _time_round_robin(steps, warmup, repeats, dev, parts if adapter_clock else None,
                                          part_samples)
    if op_clock:
        result["operator_ms_per_adapter_call"] = op_times.per_adapter_call_ms()
    pick = min if stat == "min" else statistics.median
    for v in steps:
        if v in errors:
            result["skipped"][v] = errors[v]
            result.get("peak_memory_mb", {}).pop(v, None)
            if verbose:
                print(f"  {v:6s} failed: {errors[v]}", flush=True)
            continue
        result["all_times_s"][v] = times[v]
        result["times_s"][v] = pick(times[v])
        if verbose:
            print(f"  {v:6s} {stat} {result['times_s'][v] * 1e3:9.1f} ms  ({', '.join(f'{t * 1e3:.1f}' for t in times[v])})",
                  flush=True)

    if adapter_clock:
        result["adapter_calls"] = {v: p["adapter_calls"] for v, p in parts.items() if "adapter_calls" in p}
        for v, calls in result["adapter_calls"].items():
            if calls[0] != calls[1] and v not in result["skipped"]:
                raise RuntimeError(f"{v}: the adapter clock saw {calls[0]} adapter calls forward but "
                                   f"{calls[1]} backward")
        _adapter_times(result, part_samples, pick)

    t = result["times_s"]
    if "none" in t:
        result["overhead"] = {v: t[v] / t["none"] - 1.0 for v in t if v != "none"}
    if "eager" in t and "fused" in t and t["fused"] > 0:
        result["fused_speedup_over_eager"] = t["eager"] / t["fused"]
        if "none" in t and t["eager"] > t["none"]:
            result["adapter_time_ratio_fused_over_eager"] = (t["fused"] - t["none"]) / (t["eager"] - t["none"])
    return result


def _adapter_times(result: Dict, part_samples: Dict[str, Dict[str, List[float]]], pick) -> None:
    """Per variant, from the in-step clocks: the statistic of each part over the rounds, and
    of the adapters' own time per round (forward + backward + optimizer step); then the
    adapters' overhead (that time less the optimizer step of `none`) and its fused/eager
    ratio."""
    own: Dict[str, float] = {}
    rounds: Dict[str, List[float]] = {}
    result["step_parts_s"] = {}
    for v, ps in part_samples.items():
        if v in result["skipped"]:
            continue
        result["step_parts_s"][v] = {k: pick(vals) for k, vals in ps.items()}
        result.setdefault("step_parts_all_s", {})[v] = {k: list(vals) for k, vals in ps.items()}
        n = len(ps["opt"])
        rounds[v] = [ps.get("adapter_fwd", [0.0] * n)[i] + ps.get("adapter_bwd", [0.0] * n)[i] + ps["opt"][i]
                     for i in range(n)]
        own[v] = pick(rounds[v])
    if not own:
        return
    result["adapter_own_s"] = own
    if "none" in own:
        base = own["none"]
        direct = {v: own[v] - base for v in own if v != "none"}
        result["adapter_overhead_direct_s"] = direct
        if direct.get("eager", 0.0) > 0 and "fused" in direct:
            result["adapter_overhead_ratio_fused_over_eager"] = direct["fused"] / direct["eager"]
            # The same ratio round by round: the variants of one round ran seconds apart, so a
            # drift of the machine reaches both, where the minima may come from different rounds.
            per_round = [(f - b) / (e - b) for f, e, b in zip(rounds["fused"], rounds["eager"], rounds["none"])
                         if e > b]
            if per_round:
                result["adapter_overhead_ratio_fused_over_eager_by_round"] = per_round
                result["adapter_overhead_ratio_fused_over_eager_median_of_rounds"] = statistics.median(per_round)


def _format(res: Dict) -> str:
    lines = [
        f"{res['model']} {res['task']} fine-tuning step on {res['device_name']} ({res['device']}, "
        f"{res['threads']} threads), batch {res['batch_size']} x {res['patch']}x{res['patch']}, "
        f"{res.get('stat', 'median')} of {res['repeats']} interleaved rounds (after {res['warmup']} warm-up); fused backend: {res['fused_backend']}"
    ]
    for v, t in res["times_s"].items():
        extra = ""
        if v != "none" and "overhead" in res:
            extra = f"   overhead over none: {100 * res['overhead'][v]:+.1f}%"
        mem = f"   peak {res['peak_memory_mb'][v]:.0f} MiB" if "peak_memory_mb" in res else ""
        lines.append(f"  {v:6s} {t * 1e3:10.1f} ms   trainable {res['trainable'][v]:>9,}{extra}{mem}")
    for v, why in res["skipped"].items():
        lines.append(f"  {v:6s} skipped: {why}")
    if "fused_speedup_over_eager" in res:
        lines.append(f"  fused step is {res['fused_speedup_over_eager']:.2f}x faster than eager")
    if "adapter_time_ratio_fused_over_eager" in res:
        lines.append(f"  adapter time (step - none): fused / eager = {res['adapter_time_ratio_fused_over_eager']:.2f}")
    for v, ps in res.get("step_parts_s", {}).items():
        if "adapter_fwd" in ps:
            lines.append(f"  {v:6s} adapters inside the step: forward {ps['adapter_fwd'] * 1e3:.1f} ms, backward "
                         f"{ps['adapter_bwd'] * 1e3:.1f} ms ({res['adapter_calls'][v]} calls forward/backward); "
                         f"optimizer step {ps['opt'] * 1e3:.1f} ms")
        else:
            lines.append(f"  {v:6s} optimizer step {ps['opt'] * 1e3:.1f} ms")
    for v, d in res.get("adapter_overhead_direct_s", {}).items():
        lines.append(f"  {v:6s} adapter overhead clocked inside the step: {d * 1e3:.1f} ms")
    ops = res.get("operator_ms_per_adapter_call")
    if ops:
        lines.append("  fused operators, host ms per adapter call (median call): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in ops.items())
                     + f"; together {sum(ops.values()):.2f}")
    if "adapter_overhead_ratio_fused_over_eager" in res:
        lines.append(f"  adapter overhead clocked inside the step: fused / eager = "
                     f"{res['adapter_overhead_ratio_fused_over_eager']:.2f}")
    if "adapter_overhead_ratio_fused_over_eager_by_round" in res:
        by_round = res["adapter_overhead_ratio_fused_over_eager_by_round"]
        lines.append(f"  the same round by round: median {res['adapter_overhead_ratio_fused_over_eager_median_of_rounds']:.2f} "
                     f"({', '.join(f'{r:.2f}' for r in by_round)})")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda, or auto (cpu, then cuda when present)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 1 on CPU, 16 on CUDA")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--task", default="sr_2")
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--backend", default="auto", help="fused backend: auto, triton, cpp, torch")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated: none, eager, fused, fused:<backend> (e.g. fused:torch; "
                         "fused:cpp-ops: the cpp backend without the C++ chain)")
    ap.add_argument("--tiny", action="store_true", help="a small EDT (smoke test), not EDT-B")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stat", choices=("min", "median"), default=None,
                    help="statistic of the timed rounds (default: min on the CPU, median on CUDA)")
    ap.add_argument("--no-adapter-clock", action="store_true",
                    help="do not clock the adapters inside the step (on by default: host clock on the CPU, "
                         "CUDA events on CUDA)")
    ap.add_argument("--op-clock", action="store_true",
                    help="also time every fused-operator call inside the step (CPU)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)

    devices = [args.device] if args.device != "auto" else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for d in devices:
        print(f"[{d}]", flush=True)
        res = run(device=d, batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup, task=args.task,
                  patch=args.patch, backend=args.backend, variants=[v for v in args.variants.split(",") if v],
                  tiny=args.tiny, seed=args.seed, threads=args.threads, verbose=True,
                  stat=args.stat, adapter_clock=False if args.no_adapter_clock else None,
                  op_clock=args.op_clock and d == "cpu")
        print(_format(res), flush=True)
        results.append(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
