"""Where the fused module's time goes on the CPU, operator by operator, inside the module.

    python benchmarks/op_clock.py [--shape edt-train] [--threads 1,2] [--repeats 100] [--json F]

Runs forward+backward of the fused module (backend cpp unless --backend) at a SPEC
section 7 shape (`adaptir bench --full`'s shapes; `--batch` overrides N) and times every
operator call with adaptir_kernels.bench.OperatorClock: the operators run one by one from
Python (module.CPP_CHAIN off), each with the caches as the operators before it left
them, which a benchmark of one operator alone does not reproduce. Prints per operator
the median and minimum call time per step (local_branch runs twice per step: forward,
and recomputed in the backward), their sum, and the whole step, for each thread count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Dict, List

import torch

from adaptir_kernels import bench


shape_by_name = bench.training_shape


def clock(shape: bench.Shape, threads: int, repeats: int, warmup: int, backend: str = "cpp") -> dict:
    """Per-operator call times (ms per step) of `repeats` forward+backward steps."""
    if repeats < 1 or warmup < 0 or threads < 1:
        raise ValueError("repeats >= 1, warmup >= 0 and threads >= 1 are needed")
    device = torch.device("cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        module = bench.build_fused(shape, backend, device)
        module.train()
        x = bench.make_input(shape, device, requires_grad=True)
        grad = bench.make_grad(shape, device)
        forward = bench.forward_fn(module, shape)
        steps: List[float] = []
        with bench.OperatorClock() as ops:
            for i in range(warmup + repeats):
                if i == warmup:
                    for v in ops.samples.values():
                        v.clear()
                t0 = time.perf_counter()
                forward(x).backward(grad)
                steps.append(time.perf_counter() - t0)
                bench.clear_grads(x, module.parameters())
        steps = steps[warmup:]
    finally:
        torch.set_num_threads(before)
    per_step: Dict[str, dict] = {}
    for name, v in ops.samples.items():
        if not v:
            continue
        calls = len(v) / repeats
        per_step[name] = {"calls_per_step": calls, "median_ms": 1e3 * statistics.median(v) * calls,
                          "min_ms": 1e3 * min(v) * calls}
    return {"shape": shape.name, "x_shape": list(shape.x_shape), "threads": threads, "repeats": repeats,
            "operators": per_step, "sum_of_medians_ms": sum(o["median_ms"] for o in per_step.values()),
            "step_median_ms": 1e3 * statistics.median(steps), "step_min_ms": 1e3 * min(steps)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="edt-train")
    ap.add_argument("--batch", type=int, default=None, help="batch size N instead of the SPEC one")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--backend", default="cpp")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args(argv)
    shape = shape_by_name(args.shape, args.batch)
    runs = []
    for threads in (int(t) for t in args.threads.split(",")):
        res = clock(shape, threads, args.repeats, args.warmup, args.backend)
        runs.append(res)
        print(f"{shape.name} x {tuple(shape.x_shape)}, backend {args.backend}, {threads} thread(s), "
              f"{args.repeats} steps (ms per step: median, min)")
        for name, o in res["operators"].items():
            print(f"  {name:<24} {o['median_ms']:8.3f} {o['min_ms']:8.3f}   ({o['calls_per_step']:g} call(s))")
        print(f"  {'sum of the medians':<24} {res['sum_of_medians_ms']:8.3f}")
        print(f"  {'whole step':<24} {res['step_median_ms']:8.3f} {res['step_min_ms']:8.3f}")
    if args.json:
        bench.write_script_json(args.json, "op_clock.py", argv, {"runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
