"""What one fused adapter forward+backward issues: ATen calls (views apart) and Triton
launches, by name.

On a GPU most of the fused adapter's wall time is the host issuing kernels
(`gpu_launch_cost.py` prices one launch), so the number of calls is a cost in itself. The
count does not depend on the device, only on the code path, so it runs on the CPU too:
there the Triton kernels run in Triton's interpreter (set here), and the calls the
interpreter itself makes while it runs a kernel are not counted. Gradients are taken with
torch.autograd.grad, so the count holds the adapter's own calls, not the accumulation into
.grad.

    python benchmarks/count_calls.py [--backend triton] [--device cpu|cuda] [--json FILE]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Calls that make no kernel: views and metadata.
VIEWS = frozenset({
    "_reshape_alias", "_unsafe_view", "alias", "as_strided", "detach", "expand", "permute", "reshape", "select",
    "slice", "split", "squeeze", "t", "transpose", "unbind", "unsqueeze", "view", "view_as_complex",
    "view_as_real", "_conj", "_neg_view",
})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="triton", choices=("triton", "torch", "cpp"))
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--shape", default="2,6,8,180", help="N,H,W,C of an EDT-preset NHWC input (default 2,6,8,180)")
    ap.add_argument("--json", default=None, help="write the counts here")
    args = ap.parse_args(argv)

    if args.backend == "triton" and args.device in (None, "cpu"):
        os.environ.setdefault("TRITON_INTERPRET", "1")  # used on CPU tensors only; set before triton loads
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from adaptir_kernels import AdaptIR
    from adaptir_kernels.bench import environment

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.backend == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("count_calls: Triton on the CPU needs TRITON_INTERPRET=1 (unset it or set it to 1)", file=sys.stderr)
        return 2
    try:
        N, H, W, C = (int(v) for v in args.shape.split(","))
    except ValueError:
        print(f"count_calls: --shape must be N,H,W,C, got {args.shape!r}", file=sys.stderr)
        return 2

    launches = collections.Counter()
    inside = [0]
    if args.backend == "triton":
        from triton.runtime.jit import KernelInterface

        original = KernelInterface.__getitem__

        def counted(self, grid):
            launch = original(self, grid)

            def run(*a, **k):
                launches[self.fn.__name__] += 1
                inside[0] += 1
                try:
                    return launch(*a, **k)
                finally:
                    inside[0] -= 1
            return run

        KernelInterface.__getitem__ = counted

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not inside[0]:
                self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    mod = AdaptIR(C, preset="edt", layout="nhwc", backend=args.backend).to(device)
    with torch.no_grad():
        for p in mod.parameters():
            p.normal_(0.0, 0.2)  # tail and gates start at zero: randomise all
    x = torch.randn(N, H, W, C, device=device, requires_grad=True)
    leaves = [x, *(p for p in mod.parameters() if p.requires_grad)]

    def step():
        out = mod(x)
        return torch.autograd.grad(out, leaves, torch.ones_like(out))

    step()  # first call: kernel compilation, caches
    launches.clear()
    with Count() as counter:
        step()
    aten = {k: v for k, v in sorted(counter.ops.items()) if k not in VIEWS}
    views = {k: v for k, v in sorted(counter.ops.items()) if k in VIEWS}
    res = {
        "backend": args.backend, "device": device.type, "shape": [N, H, W, C],
        "aten_calls": sum(aten.values()), "view_calls": sum(views.values()),
        "triton_launches": sum(launches.values()),
        "aten": aten, "views": views, "triton": dict(sorted(launches.items())),
        "environment": environment(device),
    }
    print(f"{args.backend} on {device.type}, x {tuple(res['shape'])}, one forward+backward: "
          f"{res['aten_calls']} ATen calls (+ {res['view_calls']} views), {res['triton_launches']} Triton launches")
    print("  ATen:   " + ", ".join(f"{k} {v}" for k, v in aten.items()))
    if launches:
        print("  Triton: " + ", ".join(f"{k} {v}" for k, v in res["triton"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
