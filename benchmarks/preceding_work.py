"""What the work before a training step costs it on the CPU: the eager reference's and the
fused module's step, each timed right after one of several preceding workloads.

    python benchmarks/preceding_work.py [--shape ipt-train] [--threads 2] [--repeats 30] [--json F]

`adaptir bench` samples its implementations round-robin, so every fused step it times
follows the reference's step (and the reference's follows the other fused backends').
Inside a model the adapter likewise runs between the backbone's own large operators. A
step that follows other work starts with its code, its data and the allocator's state
out of the caches; how much that costs depends on what ran before. This script times a
training step (train mode: forward, then backward; `fwd` and `fwd+bwd`) of both
implementations after each of:

- `itself`: its own previous step (untimed): everything as warm as it gets;
- `flush`: a 64 MiB buffer read and written: the data caches cold, nothing else touched;
- `matmul`: a 1024 x 1024 x 1024 float32 torch.mm (MKL on the CPU builds of torch),
  about 2 GFLOP, as a backbone's feed-forward product would run before the adapter;
- `other`: the other implementation's step, what `adaptir bench` measures.

Rounds go mode by mode and, within a mode, reference then fused, so a burst of foreign
load hits every cell. Prints the minimum and the median of each cell and the ratio
reference / fused of the minima per mode (the statistic `adaptir bench` reports on the
CPU). `--operators` also clocks each fused operator inside the fused steps, which then
run operator by operator from Python (module.CPP_CHAIN off), as in op_clock.py.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from typing import Callable, Dict, List

import torch

from adaptir_kernels import bench

MODES = ("itself", "flush", "matmul", "other")
SUBJECTS = ("reference", "fused")
COLUMNS = ("fwd", "fwd+bwd")


shape_by_name = bench.training_shape


class _Step:
    """One implementation's training step on its own input and gradient."""

    def __init__(self, module: torch.nn.Module, shape: bench.Shape, device: torch.device):
        module.train()
        self.module = module
        self.device = device
        self.x = bench.make_input(shape, device, requires_grad=True)
        self.grad = bench.make_grad(shape, device)
        self.forward = bench.forward_fn(module, shape)
        self.clock = bench.Clock(device)

    def run(self) -> tuple:
        """(forward ms, forward+backward ms) of one step (bench.time_train)."""
        s = bench.time_train(self.forward, self.x, self.grad, list(self.module.parameters()), self.device,
                             warmup=0, repeats=1, clock=self.clock)
        return s["fwd"][0], s["fwd+bwd"][0]


def measure(shape: bench.Shape, threads: int, repeats: int, warmup: int, backend: str = "cpp",
            modes=MODES, operators: bool = False) -> dict:
    """Minimum and median (ms) of fwd and fwd+bwd per (mode, subject), and the ratios.

    operators=True also clocks each fused operator inside the fused steps
    (bench.OperatorClock: the operators run one by one from Python, module.CPP_CHAIN off)
    and adds, per mode, each operator's median time per step."""
    if repeats < 1 or warmup < 0 or threads < 1:
        raise ValueError("repeats >= 1, warmup >= 0 and threads >= 1 are needed")
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    device = torch.device("cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        reference, fused = bench.build_pair(shape, backend, device)
        steps = {"reference": _Step(reference, shape, device), "fused": _Step(fused, shape, device)}
        flush = torch.zeros(16 * 2**20)  # 64 MiB of float32
        a = torch.randn(1024, 1024)
        b = torch.randn(1024, 1024)
        c = torch.empty(1024, 1024)
        preceding: Dict[str, Dict[str, Callable[[], object]]] = {
            "itself": {s: steps[s].run for s in SUBJECTS},
            "flush": {s: (lambda: flush.add_(1.0)) for s in SUBJECTS},
            "matmul": {s: (lambda: torch.mm(a, b, out=c)) for s in SUBJECTS},
            "other": {"reference": steps["fused"].run, "fused": steps["reference"].run},
        }
        samples = {m: {s: {c_: [] for c_ in COLUMNS} for s in SUBJECTS} for m in modes}
        op_samples: Dict[str, Dict[str, List[float]]] = {m: {} for m in modes}
        with (bench.OperatorClock() if operators else contextlib.nullcontext()) as ops:
            for i in range(warmup + repeats):
                for mode in modes:
                    for subject in SUBJECTS:
                        preceding[mode][subject]()
                        if ops is not None:
                            for v in ops.samples.values():
                                v.clear()
                        fwd, both = steps[subject].run()
                        if i >= warmup:
                            samples[mode][subject]["fwd"].append(fwd)
                            samples[mode][subject]["fwd+bwd"].append(both)
                            if ops is not None and subject == "fused":
                                for name, v in ops.samples.items():
                                    op_samples[mode].setdefault(name, []).append(sum(v))
    finally:
        torch.set_num_threads(before)
    cells = {}
    for mode in modes:
        cells[mode] = {}
        for subject in SUBJECTS:
            cells[mode][subject] = {
                col: {"min_ms": min(v), "median_ms": statistics.median(v), "samples_ms": list(v)}
                for col, v in samples[mode][subject].items()}
        cells[mode]["ratio_of_minima"] = {
            col: cells[mode]["reference"][col]["min_ms"] / cells[mode]["fused"][col]["min_ms"]
            for col in COLUMNS}
        if operators:
            cells[mode]["fused_operators_median_ms"] = {
                name: 1e3 * statistics.median(v) for name, v in op_samples[mode].items()}
    return {"shape": shape.name, "x_shape": list(shape.x_shape), "threads": threads, "repeats": repeats,
            "warmup": warmup, "backend": backend, "operators": operators, "modes": cells}


def table(res: dict) -> List[str]:
    lines = [f"{res['shape']} x {tuple(res['x_shape'])}, fused backend {res['backend']}, "
             f"{res['threads']} thread(s), {res['repeats']} rounds (ms: min / median)",
             f"  {'before the step':<16}" + "".join(f"{s + ' ' + c:>22}" for s in SUBJECTS for c in COLUMNS)
             + "".join(f"{'ref/fused ' + c:>18}" for c in COLUMNS)]
    for mode, cell in res["modes"].items():
        row = f"  {mode:<16}"
        for s in SUBJECTS:
            for c in COLUMNS:
                row += f"{cell[s][c]['min_ms']:>13.3f} / {cell[s][c]['median_ms']:<6.2f}"
        row += "".join(f"{cell['ratio_of_minima'][c]:>18.2f}" for c in COLUMNS)
        lines.append(row)
    if res.get("operators"):
        modes = list(res["modes"])
        names = list(res["modes"][modes[0]]["fused_operators_median_ms"])
        lines.append("  fused operators, median ms per step (called one by one from Python), by what ran before:")
        lines.append(f"  {'':<24}" + "".join(f"{m:>10}" for m in modes))
        for n in names:
            lines.append(f"  {n:<24}" + "".join(
                f"{res['modes'][m]['fused_operators_median_ms'].get(n, 0.0):>10.3f}" for m in modes))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="ipt-train")
    ap.add_argument("--batch", type=int, default=None, help="batch size N instead of the SPEC one")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--backend", default="cpp")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, from " + ", ".join(MODES))
    ap.add_argument("--operators", action="store_true",
                    help="also clock each fused operator (operators called one by one from Python)")
    ap.add_argument("--json", default=None, help="write the results (every sample) to this file")
    args = ap.parse_args(argv)
    shape = shape_by_name(args.shape, args.batch)
    res = measure(shape, args.threads, args.repeats, args.warmup, args.backend,
                  tuple(m for m in args.modes.split(",") if m), args.operators)
    print("\n".join(table(res)))
    if args.json:
        bench.write_script_json(args.json, "preceding_work.py", argv, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
