"""SPEC section 7 benchmark of the fused Triton adapter on an NVIDIA GPU.

    python benchmarks/gpu_bench.py --out OUTDIR [--only edt-train] [--no-compile] [--sweep]

For each SPEC 7 shape: the eager reference, the fused module with backend "triton" (and
"torch", the same operator chain with torch composites), and torch.compile of the
reference; forward, backward (retain_graph) and forward+backward medians from
triton.testing.do_bench (which clears L2 before every sample), ratios measured in the
same run, bytes saved for backward (saved_tensors_hooks, each storage once, parameters
and buffers left out), and achieved bandwidth against the SPEC 5.1 floor (the C-wide
passes: forward 2, backward 3, forward+backward 5, at the measured copy bandwidth). Also
a CUDA-graph replay of the fused forward+backward (the same work without CPU launch
gaps), the wall time of forward+backward through torch.cuda.make_graphed_callables (what
a training loop gets from CUDA graphs), per-operator times both from do_bench and from
CUDA-graph replays (the GPU's own time, which the sweep compares too), a kernel-time profile of one fused step, and with --sweep the per-operator times
of the Triton kernels at alternative launch configurations.

Writes OUTDIR/bench.md, OUTDIR/bench.json and OUTDIR/profile.txt. Without CUDA it runs
tiny shapes through the Triton interpreter (set TRITON_INTERPRET=1), for checking the
script itself; those times mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

SHAPES = {
    "edt-train": dict(x=(16, 48, 48, 180), layout="nhwc", hw=(48, 48), preset="edt", train=True),
    "ipt-train": dict(x=(256, 16, 576), layout="lnc", hw=(16, 16), preset="ipt", train=True),
    "edt-infer": dict(x=(1, 256, 256, 180), layout="nhwc", hw=(256, 256), preset="edt", train=False),
}
TINY = {
    "ipt-train": dict(x=(16, 2, 192), layout="lnc", hw=(4, 4), preset="ipt", train=True),
    "edt-train": dict(x=(2, 6, 5, 56), layout="nhwc", hw=(6, 5), preset="edt", train=True),
    "edt-infer": dict(x=(1, 8, 8, 56), layout="nhwc", hw=(8, 8), preset="edt", train=False),
}
PASSES = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}


def log(*a):
    print(*a, flush=True)


# ---- timing ----------------------------------------------------------------------------


class Timer:
    def __init__(self, device, warmup_ms=25, rep_ms=100):
        self.cuda = device.type == "cuda"
        self.warmup_ms, self.rep_ms = warmup_ms, rep_ms

    def __call__(self, fn, grad_to_none=None) -> float:
        """Median milliseconds of fn()."""
        if self.cuda:
            import triton.testing

            return float(triton.testing.do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms,
                                                 grad_to_none=grad_to_none, return_mode="median"))
        fn()
        samples = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(samples)


def copy_bandwidth(device, timer) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    n = (1 << 28) if device.type == "cuda" else (1 << 20)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / (ms * 1e-3)


# ---- modules ---------------------------------------------------------------------------


from adaptir_kernels.testing import randomize  # noqa: E402


def build(spec, device):
    from adaptir_kernels.module import AdaptIR
    from adaptir_kernels.reference import AdaptIR as Reference

    C = spec["x"][-1]
    ref = randomize(Reference(C, preset=spec["preset"], layout=spec["layout"])).to(device)
    mods = {"eager": ref}
    for backend in ("triton", "torch"):
        m = AdaptIR(C, preset=spec["preset"], layout=spec["layout"], backend=backend)
        m.load_state_dict(ref.state_dict())
        mods[f"fused-{backend}"] = m.to(device)
    for m in mods.values():
        m.train(spec["train"])
    return mods


def saved_bytes(module, x, hw):
    """Bytes the autograd graph of one forward keeps, parameters and buffers excluded;
    (total, beyond x)."""
    owned = {t.untyped_storage().data_ptr() for t in list(module.parameters()) + list(module.buffers())}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x, hw=hw)
    for p in owned:
        seen.pop(p, None)
    total = sum(seen.values())
    return total, total - seen.get(x.untyped_storage().data_ptr(), 0)


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check(mods, x, hw, grad):
    """Relative errors of the fused modules against the eager reference (output, grad x,
    worst parameter gradient)."""
    res = {}
    outs = {}
    for name, m in mods.items():
        xi = x.detach().clone().requires_grad_(True)
        m.zero_grad(set_to_none=True)
        out = m(xi, hw=hw)
        out.backward(grad)
        outs[name] = (out.detach(), xi.grad.detach(), {k: p.grad for k, p in m.named_parameters()})
    o_r, gx_r, gp_r = outs["eager"]
    floor = 1e-2 * gx_r.double().norm().item()
    for name in mods:
        if name == "eager":
            continue
        o, gx, gp = outs[name]
        worst = 0.0
        for k, g in gp_r.items():
            other = gp[k]
            if g is None or other is None:
                continue
            d = (other.double() - g.double()).norm().item() / max(g.double().norm().item(), floor)
            worst = max(worst, d)
        res[name] = dict(out=rel(o, o_r), grad_x=rel(gx, gx_r), worst_param_grad=worst)
    return res


# ---- measurements ----------------------------------------------------------------------


def time_train(module, x, hw, grad, timer):
    params = [p for p in module.parameters() if p.requires_grad]
    xg = x.detach().clone().requires_grad_(True)
    res = {}
    res["fwd"] = timer(lambda: module(xg, hw=hw))
    out = module(xg, hw=hw)
    res["bwd"] = timer(lambda: out.backward(grad, retain_graph=True), grad_to_none=[xg] + params)
    del out
    res["fwd+bwd"] = timer(lambda: module(xg, hw=hw).backward(grad), grad_to_none=[xg] + params)
    with torch.no_grad():
        res["fwd(no_grad)"] = timer(lambda: module(x, hw=hw))
    return res


def time_infer(module, x, hw, timer):
    with torch.no_grad():
        return {"fwd": timer(lambda: module(x, hw=hw))}


def graphed_fwd_bwd(module, x, hw, grad, timer):
    """Forward+backward replayed from a CUDA graph: the GPU time without launch gaps.

    A copy of the module is captured: its parameters' gradient-accumulation nodes are then
    made during warm-up, on the capture's side stream. Nodes kept alive from earlier steps
    on the default stream make accumulation sync with that stream, which capture forbids
    (PyTorch warned of this in the H200 runs where the eager capture at edt-train failed;
    whether it was the cause is not known)."""
    module = copy.deepcopy(module)
    xg = x.detach().clone().requires_grad_(True)
    return graph_ms(lambda: module(xg, hw=hw).backward(grad), timer, reps=1)


def graphed_callable_fwd_bwd(module, x, hw, grad, timer):
    """Wall time of forward+backward through torch.cuda.make_graphed_callables, which a
    training loop can use as it is: the host replays one graph each way instead of issuing
    every kernel (the parameters' gradients are still accumulated outside the graphs)."""
    if hw is not None and module.layout == "lnc" and hw[0] * hw[1] == x.shape[0] and hw[0] != hw[1]:
        raise ValueError("make_graphed_callables passes x alone; this shape needs hw")
    m = copy.deepcopy(module)
    xg = x.detach().clone().requires_grad_(True)
    graphed = torch.cuda.make_graphed_callables(m, (xg,), num_warmup_iters=3)
    params = [p for p in m.parameters() if p.requires_grad]
    return timer(lambda: graphed(xg).backward(grad), grad_to_none=[xg] + params)


def profile_step(module, x, hw, grad, train, path, title):
    from torch.profiler import ProfilerActivity, profile

    xg = x.detach().clone().requires_grad_(train)
    for _ in range(2):
        (module(xg, hw=hw).backward(grad) if train else module(xg, hw=hw))
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            if train:
                module(xg, hw=hw).backward(grad)
            else:
                with torch.no_grad():
                    module(xg, hw=hw)
        torch.cuda.synchronize()
    table = None
    for key in ("self_cuda_time_total", "self_device_time_total", "cuda_time_total"):
        try:
            table = prof.key_averages().table(sort_by=key, row_limit=40)
            break
        except Exception:  # noqa: BLE001 - the key's name differs between torch releases
            continue
    with open(path, "a") as f:
        f.write(f"\n===== {title} (3 steps) =====\n{table}\n")


def compile_rows(spec, ref, x, hw, grad, timer, budget_note):
    """torch.compile of the reference: forward only (no_grad) and forward+backward."""
    rows = {}
    try:
        torch._dynamo.reset()
        cm = torch.compile(copy.deepcopy(ref))
        with torch.no_grad():
            t0 = time.time()
            cm(x, hw=hw)
            torch.cuda.synchronize()
            compile_s = time.time() - t0
            rows["compile:fwd(no_grad)"] = dict(fwd=timer(lambda: cm(x, hw=hw)), compile_s=round(compile_s, 1))
    except Exception as err:  # noqa: BLE001
        rows["compile:fwd(no_grad)"] = dict(error=f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
    if spec["train"] and budget_note["allow_train_compile"]:
        try:
            torch._dynamo.reset()
            cm = torch.compile(copy.deepcopy(ref))
            xg = x.detach().clone().requires_grad_(True)
            t0 = time.time()
            cm(xg, hw=hw).backward(grad)
            torch.cuda.synchronize()
            compile_s = time.time() - t0
            r = time_train(cm, x, hw, grad, timer)
            r["compile_s"] = round(compile_s, 1)
            rows["compile:fwd+bwd"] = r
        except Exception as err:  # noqa: BLE001
            rows["compile:fwd+bwd"] = dict(error=f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
    return rows


# ---- per-operator sweep of launch configurations ---------------------------------------


def op_inputs(spec, device):
    """Hidden-width inputs of the Triton operators at this shape."""
    from adaptir_kernels.config import adapter_widths

    C = spec["x"][-1]
    w = adapter_widths(C, spec["preset"])
    h, r, ph, q = w.hidden, w.rank, w.proj_hidden, w.ci_hidden
    H, W = spec["hw"]
    N = spec["x"][0] if spec["layout"] == "nhwc" else spec["x"][1]
    g = torch.Generator(device="cpu").manual_seed(5)

    def rnd(*shape, s=1.0):
        return (torch.randn(shape, generator=g) * s).to(device)

    return dict(N=N, h=h, r=r, H=H, W=W, C=C,
                x=rnd(*spec["x"]), w=rnd(h, C, s=0.05), b=rnd(h), bw=rnd(h), bb=rnd(h),
                rm=rnd(h), rv=rnd(h).abs() + 0.5, u=rnd(N, h, H, W), A=rnd(h, r, s=0.3), B=rnd(r, 9, s=0.3),
                cb=rnd(h), siw=rnd(h), sib=rnd(1), l=rnd(N, h, H, W), gg=rnd(N, h, H, W).abs(),
                sg=torch.rand(N, H, W, generator=g).to(device), cg=torch.rand(N, h, generator=g).to(device),
                cs=rnd(N, h), tw=rnd(C, h, s=0.1), go=rnd(*spec["x"]),
                router=(rnd(h, s=0.3), rnd(1), rnd(ph, h, s=0.3), rnd(ph), rnd(h, ph, s=0.3), rnd(h), rnd(N, h),
                        rnd(q, h, s=0.3), rnd(q), rnd(h, q, s=0.3), rnd(h)))


def op_calls(spec, t):
    from adaptir_kernels.ops import combine_out, local_branch, project_in
    from adaptir_kernels.triton import combine_out as tco, local_branch as tlb, project_in as tpi

    lay, (H, W) = spec["layout"], spec["hw"]
    u_, xhat = None, None
    calls = {}
    for impl, pi, lb, co in (("triton", tpi, tlb, tco),
                             ("torch", project_in, local_branch, combine_out)):
        fwd_pi = pi.forward if impl == "triton" else pi.forward_torch
        bwd_pi = pi.backward if impl == "triton" else pi.backward_torch
        fwd_lb = lb.forward if impl == "triton" else lb.forward_torch
        bwd_lb = lb.backward if impl == "triton" else lb.backward_torch
        fwd_co = co.forward if impl == "triton" else co.forward_torch
        bwd_co = co.backward if impl == "triton" else co.backward_torch
        fx = (t["x"], t["w"], t["b"], t["bw"], t["bb"], t["rm"], t["rv"], True, 1e-5, lay, H, W)
        if u_ is None:
            u_, xhat, _, var = project_in.forward_torch(*fx)
        calls[f"project_in.fwd[{impl}]"] = (lambda f=fwd_pi: f(*fx))
        calls[f"project_in.bwd[{impl}]"] = (lambda f=bwd_pi: f(t["u"], t["x"], xhat, t["w"], t["bw"], var,
                                                                   True, 1e-5, lay, H, W))
        la = (t["u"], t["A"], t["B"], t["cb"], t["siw"], t["sib"])
        calls[f"local_branch.fwd[{impl}]"] = (lambda f=fwd_lb: f(*la))
        calls[f"local_branch.bwd[{impl}]"] = (lambda f=bwd_lb: f(t["l"], t["sg"], *la))
        ca = (t["l"], t["gg"], t["sg"], t["cg"], t["cs"], t["tw"])
        calls[f"combine_out.fwd[{impl}]"] = (lambda f=fwd_co: f(*ca, lay, torch.float32))
        calls[f"combine_out.bwd[{impl}]"] = (lambda f=bwd_co: f(t["go"], *ca, lay))
    from adaptir_kernels.ops import router
    from adaptir_kernels.triton import router as tro

    ra = t["router"]
    for impl, fwd_ro, bwd_ro in (("triton", tro.forward, tro.backward),
                                 ("torch", router.forward_torch, router.backward_torch)):
        calls[f"router.fwd[{impl}]"] = (lambda f=fwd_ro: f(t["u"], *ra))
        calls[f"router.bwd[{impl}]"] = (lambda f=bwd_ro: f(t["cs"], t["cg"], t["u"], *ra))
    return calls


def graph_ms(fn, timer, reps=10):
    """GPU milliseconds per call of fn: `reps` calls captured in a CUDA graph and the graph
    replayed, so the host's launch costs drop out (L2 is not cleared between the calls
    inside the graph, only before each replay)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    return timer(g.replay) / reps


SWEEP = {
    "PROJ_FWD_CONFIGS": [dict(BM=64, BK=32, num_warps=8), dict(BM=128, BK=32, num_warps=8),
                         dict(BM=64, BK=16, num_warps=4), dict(BM=32, BK=16, num_warps=4)],
    "PROJ_BWD_CONFIGS": [dict(BK=32, RS=16, num_warps=4), dict(BK=64, RS=16, num_warps=4),
                         dict(BK=32, RS=16, num_warps=8), dict(BK=64, RS=32, num_warps=8)],
    "COMB_FWD_CONFIGS": [dict(BM=64, BK=32, num_warps=8), dict(BM=32, BK=64, num_warps=8),
                         dict(BM=64, BK=64, num_warps=8), dict(BM=128, BK=32, num_warps=8)],
    "COMB_BWD_CONFIGS": [dict(BM=64, BK1=16, BK2=64, RS=16, num_warps=8, num_stages=1),
                         dict(BM=32, BK1=16, BK2=64, RS=16, num_warps=8, num_stages=1),
                         dict(BM=128, BK1=16, BK2=64, RS=16, num_warps=8, num_stages=1),
                         dict(BM=64, BK1=32, BK2=32, RS=16, num_warps=8, num_stages=1)],
    # one program per sample: larger pixel tiles mean fewer dependent loads per program
    "ROUTER_CONFIGS": [dict(BP=64, num_warps=4, num_stages=1), dict(BP=128, num_warps=4, num_stages=1),
                       dict(BP=256, num_warps=8, num_stages=1), dict(BP=512, num_warps=8, num_stages=1)],
}
SWEEP_OPS = {"PROJ_FWD_CONFIGS": "project_in.fwd[triton]", "PROJ_BWD_CONFIGS": "project_in.bwd[triton]",
             "COMB_FWD_CONFIGS": "combine_out.fwd[triton]", "COMB_BWD_CONFIGS": "combine_out.bwd[triton]",
             "ROUTER_CONFIGS": "router.bwd[triton]"}


def op_times(spec, device, timer, sweep, budget_s):
    from adaptir_kernels.triton import _common as cm

    t = op_inputs(spec, device)
    calls = op_calls(spec, t)
    res = {"ops": {}, "ops_graph": {}, "sweep": {}}
    for name, fn in calls.items():
        try:
            res["ops"][name] = timer(fn)
        except Exception as err:  # noqa: BLE001
            res["ops"][name] = f"error: {type(err).__name__}: {err}"[:200]
        if device.type == "cuda":
            try:
                res["ops_graph"][name] = graph_ms(fn, timer)
            except Exception as err:  # noqa: BLE001
                res["ops_graph"][name] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
    if not sweep:
        return res
    BH = cm.hidden_block(t["h"])
    t_end = time.time() + budget_s
    for table, cands in SWEEP.items():
        tab = getattr(cm, table)
        orig = tab[BH]
        rows = []
        for cand in cands:
            if time.time() > t_end:
                rows.append(dict(cfg=cand, ms="skipped (time budget)"))
                continue
            tab[BH] = cand
            gms = None
            try:
                ms = timer(calls[SWEEP_OPS[table]])
                if device.type == "cuda":
                    gms = graph_ms(calls[SWEEP_OPS[table]], timer)
            except Exception as err:  # noqa: BLE001
                ms = f"error: {type(err).__name__}: {str(err)[:160]}"
            finally:
                tab[BH] = orig
            rows.append(dict(cfg=cand, ms=ms, graph_ms=gms))
        res["sweep"][f"{table}[BH={BH}]"] = rows
    return res


# ---- report ------------------------------------------------------------------------------


def fmt(v, nd=3):
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return "-" if v is None else str(v)


def markdown(report):
    env = report["env"]
    lines = [f"# AdaptIR fused Triton benchmark ({env['device']})", "",
             f"torch {env['torch']}, triton {env['triton']}, {env['date']}; copy bandwidth "
             f"{env['copy_GBps']:.0f} GB/s (read + write). Times are medians of triton.testing.do_bench "
             "(L2 cleared before each sample), in ms. `x floor` = time / (SPEC 5.1 C-wide bytes at the copy "
             "bandwidth); GB/s = those bytes / time.", ""]
    for shape, sr in report["shapes"].items():
        lines += [f"## {shape}: x {tuple(sr['x'])} {sr['layout']}, H x W = {sr['hw']}, "
                  f"{'train' if sr['train'] else 'eval, no_grad'}", ""]
        cols = ["fwd", "bwd", "fwd+bwd"] if sr["train"] else ["fwd"]
        head = "| impl | " + " | ".join(f"{c} ms" for c in cols) + " | eager / impl | saved MB (beyond x) |" \
            " GB/s | x floor |"
        lines += [head, "|" + "---|" * (len(cols) + 5)]
        last = cols[-1]
        eager = sr["impls"].get("eager", {})
        for impl, r in sr["impls"].items():
            if "error" in r:
                lines.append(f"| {impl} | {r['error']} |" + " |" * (len(cols) + 3))
                continue
            times = " | ".join(fmt(r.get(c)) for c in cols)
            ratio = " / ".join(f"{eager[c] / r[c]:.1f}x" if isinstance(r.get(c), float) and isinstance(
                eager.get(c), float) else "-" for c in cols)
            sv = r.get("saved_bytes")
            saved = f"{sv[0] / 2**20:.1f} ({sv[1] / 2**20:.1f})" if sv else "-"
            gbps = fmt(r.get(f"GBps:{last}"), 0)
            xf = fmt(r.get(f"xfloor:{last}"), 2)
            lines.append(f"| {impl} | {times} | {ratio} | {saved} | {gbps} | {xf} |")
        graphs = {k.split(":", 1)[1]: v for k, v in sr.items() if k.startswith("graph_fwd+bwd:")}
        if graphs:
            lines.append("\nForward+backward replayed from a CUDA graph (GPU time without launch gaps): "
                         + ", ".join(f"{k} {fmt(v)} ms" for k, v in graphs.items()))
        graphs = {k.split(":", 1)[1]: v for k, v in sr.items() if k.startswith("graphed_callable_fwd+bwd:")}
        if graphs:
            lines.append("\nForward+backward through torch.cuda.make_graphed_callables (wall time per step): "
                         + ", ".join(f"{k} {fmt(v)} ms" for k, v in graphs.items()))
        if "fwd(no_grad)" in sr["impls"].get("fused-triton", {}):
            lines.append("\nForward under no_grad: " + ", ".join(
                f"{k} {fmt(v.get('fwd(no_grad)', v.get('fwd') if k.startswith('compile:fwd') else None))} ms"
                for k, v in sr["impls"].items() if "error" not in v))
        if "targets" in sr:
            lines.append("\nTargets: " + "; ".join(f"{k}: {v}" for k, v in sr["targets"].items()))
        if "check" in sr:
            lines.append("\nParity vs eager: " + "; ".join(
                f"{k}: out {v['out']:.1e}, grad x {v['grad_x']:.1e}, worst param {v['worst_param_grad']:.1e}"
                for k, v in sr["check"].items()))
        if sr.get("ops"):
            graph = sr["ops"].get("ops_graph", {})
            lines += ["", "| operator | ms (do_bench, host launches included) | ms (GPU, from a CUDA graph) |",
                      "|---|---|---|"]
            lines += [f"| {k} | {fmt(v)} | {fmt(graph.get(k))} |" for k, v in sr["ops"]["ops"].items()]
            for table, rows in sr["ops"].get("sweep", {}).items():
                lines += ["", f"Sweep {table} (do_bench ms; GPU ms from a CUDA graph):", ""]
                lines += [f"- {r['cfg']}: {fmt(r['ms'])}; {fmt(r.get('graph_ms'))}" for r in rows]
        lines.append("")
    return "\n".join(lines)


def save(out, report):
    with open(os.path.join(out, "bench.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(markdown(report))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="*", default=None, help="shape names (default: all)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-only", nargs="*", default=None, help="shapes to try torch.compile on (default: all)")
    ap.add_argument("--train-compile", action="store_true", help="also try torch.compile of forward+backward")
    ap.add_argument("--sweep", action="store_true", help="time alternative launch configurations")
    ap.add_argument("--sweep-budget", type=float, default=60.0)
    ap.add_argument("--no-ops", action="store_true")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    cuda = torch.cuda.is_available()
    if not cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
        log("gpu_bench: no CUDA device; set TRITON_INTERPRET=1 to dry-run tiny shapes in the interpreter")
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    shapes = SHAPES if cuda else TINY
    names = args.only or list(shapes)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    timer = Timer(device)
    import triton

    bw = copy_bandwidth(device, timer)
    env = dict(device=torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
               torch=torch.__version__, triton=triton.__version__,
               date=datetime.datetime.now().isoformat(timespec="seconds"), copy_GBps=bw / 1e9,
               argv=sys.argv)
    log(f"device {env['device']}, torch {env['torch']}, triton {env['triton']}, copy {bw / 1e9:.0f} GB/s")
    report = {"env": env, "shapes": {}}
    prof_path = os.path.join(args.out, "profile.txt")
    open(prof_path, "w").close()
    rc = 0
    for name in names:
        spec = shapes[name]
        t_shape = time.time()
        log(f"== {name}")
        sr = dict(x=spec["x"], layout=spec["layout"], hw=spec["hw"], train=spec["train"], impls={})
        report["shapes"][name] = sr
        try:
            mods = build(spec, device)
            g = torch.Generator().manual_seed(1)
            x = torch.randn(spec["x"], generator=g).to(device)
            grad = torch.randn(spec["x"], generator=g).to(device)
            hw = spec["hw"]
            R, C = x.numel() // x.shape[-1], x.shape[-1]
            if spec["train"]:
                sr["check"] = check(mods, x, hw, grad)
                log("   parity", sr["check"])
            for impl, m in mods.items():
                try:
                    r = time_train(m, x, hw, grad, timer) if spec["train"] else time_infer(m, x, hw, timer)
                    if spec["train"]:
                        r["saved_bytes"] = saved_bytes(m, x.detach().clone().requires_grad_(True), hw)
                    for mode, ms in list(r.items()):
                        if mode in PASSES:
                            nbytes = PASSES[mode] * R * C * x.element_size()
                            r[f"GBps:{mode}"] = nbytes / (ms * 1e-3) / 1e9
                            r[f"xfloor:{mode}"] = ms / (nbytes / bw * 1e3)
                    sr["impls"][impl] = r
                    log(f"   {impl:14s}", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
                except Exception as err:  # noqa: BLE001
                    sr["impls"][impl] = dict(error=f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
                    log(f"   {impl} failed:\n" + traceback.format_exc())
                    rc = 1
            save(args.out, report)
            if cuda and not args.no_compile and (args.compile_only is None or name in args.compile_only):
                comp = compile_rows(spec, mods["eager"], x, hw, grad, timer,
                                    dict(allow_train_compile=args.train_compile))
                for k, r in comp.items():
                    for mode, ms in list(r.items()):
                        if mode in PASSES and isinstance(ms, float):
                            nbytes = PASSES[mode] * R * C * x.element_size()
                            r[f"GBps:{mode}"] = nbytes / (ms * 1e-3) / 1e9
                            r[f"xfloor:{mode}"] = ms / (nbytes / bw * 1e3)
                    sr["impls"][k] = r
                    log(f"   {k:14s}", r)
            if cuda and spec["train"]:
                for impl in ("fused-triton", "eager"):
                    try:
                        sr[f"graph_fwd+bwd:{impl}"] = graphed_fwd_bwd(mods[impl], x, hw, grad, timer)
                    except Exception as err:  # noqa: BLE001
                        sr[f"graph_fwd+bwd:{impl}"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
                    log(f"   graph replay fwd+bwd {impl}", sr[f"graph_fwd+bwd:{impl}"])
                for impl in ("fused-triton", "eager"):
                    try:
                        sr[f"graphed_callable_fwd+bwd:{impl}"] = graphed_callable_fwd_bwd(mods[impl], x, hw, grad, timer)
                    except Exception as err:  # noqa: BLE001
                        sr[f"graphed_callable_fwd+bwd:{impl}"] = \
                            f"error: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
                    log(f"   make_graphed_callables fwd+bwd {impl}", sr[f"graphed_callable_fwd+bwd:{impl}"])
            if cuda:
                try:
                    profile_step(mods["fused-triton"], x, hw, grad, spec["train"], prof_path, f"{name} fused-triton")
                except Exception as err:  # noqa: BLE001
                    log(f"   profile failed: {err}")
            fused = sr["impls"].get("fused-triton", {})
            eager = sr["impls"].get("eager", {})
            comp_fwd = sr["impls"].get("compile:fwd(no_grad)", {})
            tg = {}
            last = "fwd+bwd" if spec["train"] else "fwd"
            if isinstance(fused.get(last), float) and isinstance(eager.get(last), float):
                tg[f"eager/fused {last}"] = f"{eager[last] / fused[last]:.1f}x (target >= 8x)"
            fused_fwd = fused.get("fwd(no_grad)", fused.get("fwd"))
            if isinstance(fused_fwd, float) and isinstance(comp_fwd.get("fwd"), float):
                tg["compile fwd / fused fwd (no_grad)"] = f"{comp_fwd['fwd'] / fused_fwd:.2f}x (target >= 2x)"
            ge, gf = sr.get("graph_fwd+bwd:eager"), sr.get("graph_fwd+bwd:fused-triton")
            if isinstance(ge, float) and isinstance(gf, float):
                tg["eager/fused fwd+bwd, CUDA-graph replays"] = f"{ge / gf:.1f}x"
            ge, gf = sr.get("graphed_callable_fwd+bwd:eager"), sr.get("graphed_callable_fwd+bwd:fused-triton")
            if isinstance(gf, float) and isinstance(eager.get(last), float):
                tg["eager / fused fwd+bwd through make_graphed_callables"] = f"{eager[last] / gf:.1f}x"
            if isinstance(ge, float) and isinstance(gf, float):
                tg["both through make_graphed_callables"] = f"{ge / gf:.1f}x"
            if isinstance(fused.get(f"xfloor:{last}"), float):
                tg[f"fused {last} x floor"] = f"{fused[f'xfloor:{last}']:.2f} (target <= 3)"
            sr["targets"] = tg
            if not args.no_ops and spec["train"]:
                sr["ops"] = op_times(spec, device, timer, args.sweep and cuda, args.sweep_budget)
                log("   ops", sr["ops"])
        except Exception as err:  # noqa: BLE001
            sr["error"] = f"{type(err).__name__}: {err}"
            log(traceback.format_exc())
            rc = 1
        log(f"   ({time.time() - t_shape:.0f}s)")
        save(args.out, report)
    log(markdown(report))
    return rc


if __name__ == "__main__":
    sys.exit(main())
