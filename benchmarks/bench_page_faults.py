"""Page faults of the adapter's forward+backward on the CPU, with glibc's default allocator
settings and with large freed buffers kept (glibc tunables), in alternating processes.

    python benchmarks/bench_page_faults.py [--shape edt-train] [--impls reference,cpp,torch]
                                           [--pairs 3] [--iters 5] [--json out.json]

glibc hands a freed buffer above its mmap threshold back to the kernel, or trims the heap
top, and the next buffer of that size is faulted in again page by page on first touch.
Each process times `--iters` forward+backward calls of one implementation (after three
warm-up calls), with the minor page faults they cost (getrusage), once as is and once under

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=68719476736

(freed memory stays in the heap and is reused). Linux with glibc only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=68719476736"


def child(impl: str, shape_name: str, iters: int) -> dict:
    import torch

    from adaptir_kernels.bench import SPEC_SHAPES
    from adaptir_kernels.module import AdaptIR
    from adaptir_kernels.reference import AdaptIR as ReferenceAdaptIR
    from adaptir_kernels.testing import randomize

    shape = next(s for s in SPEC_SHAPES if s.name == shape_name)
    dims = (shape.N, shape.H, shape.W, shape.C) if shape.layout == "nhwc" else (shape.H * shape.W, shape.N, shape.C)
    hw = None if shape.layout == "nhwc" else (shape.H, shape.W)
    if impl == "reference":
        module = ReferenceAdaptIR(shape.C, preset=shape.preset, layout=shape.layout)
    else:
        module = AdaptIR(shape.C, preset=shape.preset, layout=shape.layout, backend=impl)
    randomize(module, 0)
    x = torch.randn(dims, requires_grad=True)
    grad = torch.randn(dims)

    def step():
        module(x, hw=hw).backward(grad)
        x.grad = None
        module.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    times, faults = [], []
    for _ in range(iters):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {"impl": impl, "shape": shape_name, "tunables": "GLIBC_TUNABLES" in os.environ,
            "min_ms": min(times) * 1e3, "times_ms": [t * 1e3 for t in times], "faults": faults}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="edt-train", help="a SPEC section 7 shape name")
    p.add_argument("--impls", default="reference,cpp,torch")
    p.add_argument("--pairs", type=int, default=3, help="process pairs (as is, tunables) per implementation")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.shape, args.iters)))
        return 0

    base_env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    runs = []
    for _ in range(args.pairs):
        for impl in args.impls.split(","):
            for tuned in (False, True):
                env = dict(base_env, GLIBC_TUNABLES=TUNABLES) if tuned else base_env
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", impl, "--shape", args.shape,
                                      "--iters", str(args.iters)], env=env, capture_output=True, text=True, check=True)
                run = json.loads(out.stdout.strip().splitlines()[-1])
                runs.append(run)
                print(f"{impl:10s} {'tunables' if tuned else 'as is   '}  min {run['min_ms']:7.1f} ms  "
                      f"minor faults per fwd+bwd {min(run['faults']):6d}-{max(run['faults']):6d}", flush=True)
    if args.json:
        from adaptir_kernels.bench import environment

        with open(args.json, "w") as f:
            json.dump({"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
                       "environment": environment("cpu"), "tunables": TUNABLES, "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
