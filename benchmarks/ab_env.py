"""A/B of one build against itself with a switch: training steps of the fused module in
one process, the environment variable VAR unset and set in turns, step by step.

    python benchmarks/ab_env.py VAR [--value 1] [--shape ipt-train] [--batch N]
                                [--pairs 300] [--warmup 10] [--threads 2] [--backend cpp]

For a change that can be switched at run time (a throw-away build whose kernels read
`std::getenv(VAR)` on every call, for example), this takes both sides from the same
process: the same allocator state, the same oneDNN and OpenMP state, and the same minute
of a noisy machine, which alternating processes (`ab_pairs.py`) cannot give. Prints, per
column (fwd, bwd, step), the minimum and the median of each side and the ratios on / off.
The variable and torch's thread count are restored when the run ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Callable, Dict, Iterator, List, Optional, Tuple

COLUMNS = ("fwd", "bwd", "step")
SIDES = ("off", "on")


@contextlib.contextmanager
def restored(var: str) -> Iterator[None]:
    """Puts VAR back as it was (or removes it) on exit."""
    before = os.environ.get(var)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = before


def alternate(step: Callable[[], Tuple[float, float]], pairs: int, var: str, value: str = "1",
              warmup: int = 10) -> Dict[str, Dict[str, List[float]]]:
    """Runs `step` (returning forward and backward ms) 2 * pairs + warmup times, VAR
    unset on even calls and set to `value` on odd ones; the first `warmup` calls are not
    kept. Returns samples in ms: side -> column -> list."""
    if pairs < 1 or warmup < 0:
        raise ValueError("pairs >= 1 and warmup >= 0 are needed")
    if not var:
        raise ValueError("the environment variable's name is empty")
    out = {s: {c: [] for c in COLUMNS} for s in SIDES}
    with restored(var):
        for i in range(warmup + 2 * pairs):
            side = SIDES[i % 2]
            if side == "on":
                os.environ[var] = value
            else:
                os.environ.pop(var, None)
            fwd, bwd = step()
            if i >= warmup:
                for col, t in zip(COLUMNS, (fwd, bwd, fwd + bwd)):
                    out[side][col].append(t)
    return out


def summary(samples: Dict[str, Dict[str, List[float]]]) -> List[str]:
    lines = []
    for col in COLUMNS:
        a, b = sorted(samples["off"][col]), sorted(samples["on"][col])
        ma, mb = a[len(a) // 2], b[len(b) // 2]
        lines.append(f"{col:<5} off min {a[0]:.3f} med {ma:.3f} | on min {b[0]:.3f} med {mb:.3f} | "
                     f"on/off min {b[0] / a[0]:.3f} med {mb / ma:.3f}")
    return lines


def training_step(shape_name: str, batch: Optional[int], backend: str) -> Callable[[], Tuple[float, float]]:
    """One forward+backward of the fused module at a training shape, timed by
    bench.time_train: (forward ms, backward ms)."""
    from adaptir_kernels import bench

    shape = bench.training_shape(shape_name, batch)
    module = bench.build_fused(shape, backend, "cpu")
    module.train()
    x = bench.make_input(shape, "cpu", requires_grad=True)
    grad = bench.make_grad(shape, "cpu")
    forward = bench.forward_fn(module, shape)
    params = list(module.parameters())
    clock = bench.Clock("cpu")

    def step() -> Tuple[float, float]:
        s = bench.time_train(forward, x, grad, params, "cpu", warmup=0, repeats=1, clock=clock)
        return s["fwd"][0], s["bwd"][0]

    return step


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("var", help="the environment variable the build reads")
    p.add_argument("--value", default="1", help="its value on the 'on' side (default 1)")
    p.add_argument("--shape", default="ipt-train", help="ipt-train or edt-train")
    p.add_argument("--batch", type=int, default=None, help="override the shape's batch N")
    p.add_argument("--pairs", type=int, default=300)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backend", default="cpp")
    args = p.parse_args(argv)
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        step = training_step(args.shape, args.batch, args.backend)
        samples = alternate(step, args.pairs, args.var, args.value, args.warmup)
    finally:
        torch.set_num_threads(threads_before)
    print(f"{args.shape}, {args.var}={args.value} against unset, {args.pairs} pairs, "
          f"{args.threads} thread(s), ms")
    for line in summary(samples):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
