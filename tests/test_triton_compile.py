"""Every Triton kernel, at every launch configuration its launcher can pick, compiles for
sm_80 and sm_90 without register spills.

Triton's interpreter (which runs the kernels in the rest of the CPU suite) accepts code
that the GPU compiler rejects, so `adaptir_kernels.triton.compile_check` builds each
kernel down to a cubin in a child process whose environment lacks TRITON_INTERPRET. No
GPU is needed. A second test records the configurations the launchers actually pick
while the fused module runs, and checks that the compile check covers each of them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TRITON_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.uint8: "u8"}

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPS = (80, 90)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = os.environ.get("ADAPTIR_COMPILE_JSON")
    out = Path(out) if out else tmp_path_factory.mktemp("compile_check") / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    jobs = max(2, min(8, os.cpu_count() or 2))
    cmd = [sys.executable, "-m", "adaptir_kernels.triton.compile_check", "--caps", *map(str, CAPS),
           "--jobs", str(jobs), "--json", str(out)]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert out.exists(), (f"compile_check wrote nothing (exit {res.returncode}):\n"
                          f"{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return json.loads(out.read_text()), res


def _specs():
    from adaptir_kernels.triton import compile_check

    return compile_check.specs()


def test_every_kernel_compiles(compiled):
    rows, res = compiled
    failed = [f"sm_{r['cap']} {r['kernel']}: {r['error'][:400]}" for r in rows if not r["ok"]]
    assert not failed, "\n".join(failed)


def test_no_register_spills(compiled):
    rows, _ = compiled
    spilled = [f"sm_{r['cap']} {r['kernel']} regs={r.get('regs')} spill bytes={r.get('spill_bytes')}"
               for r in rows if r["ok"] and r["spills"]]
    assert not spilled, "\n".join(spilled)


def test_rows_cover_every_spec_and_target(compiled):
    rows, res = compiled
    assert res.returncode == 0, res.stdout[-3000:]
    from adaptir_kernels.triton import compile_check

    names = [s[0] for s in compile_check.all_specs()]
    assert any(n.endswith("[ints=1]") for n in names) and any(n.endswith("[ints%16]") for n in names)
    assert len(names) == len(set(names))
    assert {(r["kernel"], r["cap"]) for r in rows} == {(n, c) for n in names for c in CAPS}


def test_specs_cover_the_launch_tables():
    from adaptir_kernels.triton import _common as cm

    seen = {(s[1], tuple(sorted(s[3].items())), tuple(sorted(s[4].items()))) for s in _specs()}
    from adaptir_kernels.triton import combine_out, local_branch, project_in

    wanted = []
    for BH in cm.HIDDEN_BLOCKS:
        c = cm.PROJ_FWD_CONFIGS[BH]
        wanted.append((project_in._proj_fwd_kernel, dict(BM=c["BM"], BK=c["BK"], BH=BH), cm.opts(c)))
        c = cm.PROJ_BWD_CONFIGS[BH]
        wanted.append((project_in._proj_bwd_kernel, dict(BK=c["BK"], BH=BH, RS=c["RS"]), cm.opts(c)))
        c = cm.COMB_FWD_CONFIGS[BH]
        wanted.append((combine_out._comb_fwd_kernel, dict(BM=c["BM"], BK=c["BK"], BH=BH), cm.opts(c)))
        c = cm.COMB_BWD_CONFIGS[BH]
        wanted.append((combine_out._comb_bwd_kernel, dict(BM=c["BM"], BK1=c["BK1"], BK2=c["BK2"], BH=BH, RS=c["RS"]),
                       cm.opts(c)))
        c = cm.PIXEL_CONFIGS[BH]
        wanted.append((local_branch._local_fwd_kernel, dict(BH=BH, BP=c["BP"]), cm.opts(c)))
        c = cm.PIXEL_BWD_CONFIGS[BH]
        wanted.append((local_branch._bwd_tap_kernel, dict(BH=BH, BP=c["BP"]), cm.opts(c)))
    for fn, const, opts in wanted:
        assert (fn, tuple(sorted(const.items())), tuple(sorted(opts.items()))) in seen, (fn, const, opts)


def _record_launches(monkeypatch):
    """Patch the interpreter's launch to record (kernel, constexprs, compiler options)."""
    from triton.runtime import interpreter

    launches = []
    orig = interpreter.InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        opts = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
        consts = {k: v for k, v in kwargs.items() if k not in ("num_warps", "num_stages")}
        pointers = {name: "*" + TRITON_DTYPE[a.dtype] for name, a in zip(self.arg_names, args)
                    if isinstance(a, torch.Tensor)}
        launches.append((self, consts, opts, pointers))
        return orig(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", run)
    return launches


@pytest.mark.skipif(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
                    reason="records launches through Triton's CPU interpreter")
@pytest.mark.parametrize("d_model,preset,hidden", [(56, "edt", None), (192, "ipt", 24), (96, "edt", 40)])
def test_launchers_pick_only_compiled_configurations(monkeypatch, d_model, preset, hidden):
    from adaptir_kernels.module import AdaptIR
    from adaptir_kernels.ops.spectral_gate import spectral_gate, spectral_gate_backward

    launches = _record_launches(monkeypatch)
    torch.manual_seed(0)
    for layout, training, dtype in (("nhwc", True, torch.float16), ("lnc", False, torch.float32)):
        mod = AdaptIR(d_model, preset=preset, layout=layout, hidden=hidden, ci_hidden=1, backend="triton")
        mod.train(training)
        x = torch.randn((2, 3, 5, d_model) if layout == "nhwc" else (15, 2, d_model)).to(dtype)
        mod(x.requires_grad_(True), hw=None if layout == "nhwc" else (3, 5)).float().sum().backward()
    U = torch.randn(1, 2, 3, 2, 2)
    p = [torch.randn(2) for _ in range(4)]
    spectral_gate_backward(U, U, *p, backend="triton")
    spectral_gate(U, *p, backend="triton")
    specs = {(s[1], tuple(sorted(s[3].items())), tuple(sorted(s[4].items())),
              tuple(sorted((k, v) for k, v in s[2].items() if v.startswith("*")))) for s in _specs()}
    assert launches
    for fn, consts, opts, pointers in launches:
        opts = {"num_warps": opts.get("num_warps", 4), "num_stages": opts.get("num_stages", 3)}
        key = (fn, tuple(sorted(consts.items())), tuple(sorted(opts.items())), tuple(sorted(pointers.items())))
        assert key in specs, f"launch not covered by compile_check: {fn.fn.__name__} {consts} {opts} {pointers}"
