"""Host cost of one GPU launch on this machine: a small ATen op, an empty Triton kernel, and
the fused adapter's forward+backward at edt-train with and without a synchronisation.

The fused adapter is a chain of small kernels, so on a GPU its wall time is often the
host's time to issue them rather than the GPU's time to run them. These numbers say how
much each issued kernel costs here, to read the benchmark table against.

    python benchmarks/gpu_launch_cost.py [--out DIR]     (writes DIR/launch_cost.json)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # reported in main(): no GPU check runs without triton
    triton = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def per_call_us(fn, calls: int) -> float:
    """Host microseconds per call, the GPU queue drained before and after."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    host = time.perf_counter() - t0
    torch.cuda.synchronize()
    return 1e6 * host / calls


if triton is not None:

    @triton.jit
    def _empty(a, b, c, d, e, f, g, h, n0, n1, n2, n3, BLOCK: tl.constexpr):
        pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="folder for launch_cost.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_launch_cost: no CUDA device is visible to torch; nothing was measured.")
        return 2
    if triton is None:
        print("gpu_launch_cost: triton is not installed; nothing was measured.")
        return 2
    small = torch.zeros(16, device="cuda")
    bufs = [torch.zeros(16, device="cuda") for _ in range(8)]
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    res["aten add_ (16 floats), us"] = per_call_us(lambda: small.add_(1.0), 2000)
    res["triton empty kernel, 8 pointers + 4 ints, us"] = per_call_us(
        lambda: _empty[(1,)](*bufs, 3, 5, 7, 9, BLOCK=128), 2000)

    from adaptir_kernels.module import AdaptIR
    from adaptir_kernels.testing import randomize

    mod = randomize(AdaptIR(180, preset="edt", backend="triton"), seed=1).cuda().train()
    x = torch.randn(16, 48, 48, 180, device="cuda", requires_grad=True)
    grad = torch.randn(16, 48, 48, 180, device="cuda")

    def step():
        mod(x).backward(grad)

    res["fused adapter fwd+bwd, edt-train, host us per step"] = per_call_us(step, 50)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(50):
        step()
        torch.cuda.synchronize()
    res["fused adapter fwd+bwd, edt-train, us per synchronised step"] = 1e6 * (time.perf_counter() - t0) / 50
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        res["fused adapter fwd+bwd, edt-train, GPU kernels per step"] = len(kernels)
    except Exception as err:  # noqa: BLE001 - the timings above still count
        res["fused adapter fwd+bwd, edt-train, GPU kernels per step"] = f"{type(err).__name__}: {err}"
    for k, v in res.items():
        print(f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "launch_cost.json"), "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
