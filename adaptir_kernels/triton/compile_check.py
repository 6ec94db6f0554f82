"""Compile every Triton kernel at every launch configuration its launcher can pick, for
real GPU targets, without a GPU.

Triton's interpreter accepts code that the GPU compiler rejects, so the CPU test suite
also builds each kernel down to a cubin with `triton.compile(ASTSource(...),
target=GPUTarget("cuda", cap, 32))` and reads the resource usage of the result
(registers, stack, local memory: spilled registers show up as local memory). Each kernel
is also built once with its integer arguments equal to 1 and once with them divisible by
16, as the JIT specialises them.

Run it in a process whose environment lacks TRITON_INTERPRET (the interpreter replaces
@triton.jit functions with Python ones):

    python -m adaptir_kernels.triton.compile_check [--caps 80 90] [--jobs 2] [--json FILE]

Exit status 0 when every kernel compiled for every target without spilling.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor


def specs():
    """(name, jit function, signature, constexprs, compiler options) for every kernel and every
    configuration its launcher can pick (the tables in _common.py)."""
    from . import _common, combine_out, global_branch, local_branch, project_in, router, spectral_gate

    out = []
    for mod in (project_in, local_branch, spectral_gate, global_branch, router, combine_out):
        out.extend(mod.compile_specs())
    out.extend(_common.colsum_compile_specs())
    return out


def ones_specs():
    """Each kernel once more with every integer scalar argument equal to 1. The JIT compiles
    a call whose integer argument is 1 with that argument as the constant 1 (a Python int
    inside the kernel, as for N = 1 or H = W = 1), so code that treats it as a tensor,
    such as `HW.to(tl.float32)`, fails only then."""
    seen, out = set(), []
    for name, fn, signature, constexprs, options in specs():
        ints = [k for k, v in signature.items() if v in ("i32", "i64")]
        if fn in seen or not ints:
            continue
        seen.add(fn)
        sig = {k: v for k, v in signature.items() if k not in ints}
        out.append((name.split("[")[0] + "[ints=1]", fn, sig, {**constexprs, **{k: 1 for k in ints}}, options))
    return out


def div16_specs():
    """Each kernel's last table entry (its largest block sizes) with every integer argument
    marked divisible by 16, as the JIT marks such values (H * W = 2304, say): the compiler
    may then vectorise loads and stores, with other register needs."""
    last = {}
    for spec in specs():
        if any(v in ("i32", "i64") for v in spec[2].values()):
            last[spec[1]] = spec
    return [(name.split("[")[0] + "[ints%16]", fn, signature, constexprs, options)
            for name, fn, signature, constexprs, options in last.values()]


def all_specs():
    return specs() + ones_specs() + div16_specs()


def _cuobjdump():
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if os.path.exists(path):
        return path
    return shutil.which("cuobjdump")


def _resource_usage(cubin: bytes):
    tool = _cuobjdump()
    if tool is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True)
    if res.returncode != 0:
        return None
    usage = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        m = re.search(rf"\b{key}:(\d+)", res.stdout)
        if m:
            usage[key] = int(m.group(1))
    return usage


def _ptxas_spills(ptx: str, cap: int):
    """Spill store + load bytes reported by `ptxas -v`, or None when it cannot run. A stack
    frame alone is not a spill: libdevice's sin/cos keep a small local array for their
    large-argument path."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        try:
            tool = get_ptxas(cap).path
        except TypeError:
            tool = get_ptxas().path
    except Exception:  # noqa: BLE001
        return None
    arch = f"sm_{cap}a" if cap >= 90 else f"sm_{cap}"
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run([tool, "-v", f"--gpu-name={arch}", src, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True)
    text = res.stdout + res.stderr
    found = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if res.returncode != 0 or not found:
        return None
    return sum(int(a) + int(b) for a, b in found)


def _pointer_attrs(fn, signature, target, ints=False):
    """Mark pointer arguments 16-byte aligned, as the launcher sees torch's allocations
    (and, with ints, integer arguments divisible by 16)."""
    try:
        from triton.compiler.compiler import make_backend

        backend = make_backend(target)
        names = list(fn.arg_names)
        return {(names.index(k),): backend.parse_attr("D") for k, v in signature.items()
                if v.startswith("*") or (ints and v in ("i32", "i64"))}
    except Exception:  # noqa: BLE001 - attribute format differs between Triton releases
        return None


def compile_one(index: int, cap: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, fn, signature, constexprs, options = all_specs()[index]
    sig = dict(signature)
    for k in constexprs:
        sig[k] = "constexpr"
    target = GPUTarget("cuda", cap, 32)
    t0 = time.time()
    row = {"kernel": name, "cap": cap, "options": dict(options), "constexprs": dict(constexprs)}
    try:
        attrs = _pointer_attrs(fn, signature, target, ints=name.endswith("[ints%16]"))
        src = ASTSource(fn, sig, dict(constexprs), attrs) if attrs is not None else ASTSource(fn, sig, dict(constexprs))
        compiled = triton.compile(src, target=target, options=dict(options))
    except Exception as err:  # noqa: BLE001 - reported, not raised
        row.update(ok=False, error=f"{type(err).__name__}: {err}"[:2000], seconds=round(time.time() - t0, 2))
        return row
    usage = _resource_usage(compiled.asm["cubin"]) if "cubin" in compiled.asm else None
    ptx = compiled.asm.get("ptx", "")
    row.update(ok=True, seconds=round(time.time() - t0, 2), ptx_local=".local" in ptx)
    if usage is not None:
        row.update(regs=usage.get("REG"), stack=usage.get("STACK"), local=usage.get("LOCAL"),
                   shared=usage.get("SHARED"))
        suspicious = bool(usage.get("LOCAL", 0) or usage.get("STACK", 0))
    else:
        suspicious = True
    spill_bytes = _ptxas_spills(ptx, cap) if suspicious else 0
    row["spill_bytes"] = spill_bytes
    row["spills"] = bool(spill_bytes) if spill_bytes is not None else suspicious
    row["seconds"] = round(time.time() - t0, 2)
    return row


def run(caps=(80, 90), jobs=2):
    n = len(all_specs())
    tasks = [(i, cap) for cap in caps for i in range(n)]
    if jobs <= 1:
        return [compile_one(i, cap) for i, cap in tasks]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(compile_one, *zip(*tasks)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--caps", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile_check: unset TRITON_INTERPRET (the interpreter replaces the kernels)", file=sys.stderr)
        return 2
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    t0 = time.time()
    rows = run(tuple(args.caps), args.jobs)
    bad = [r for r in rows if not r["ok"] or r["spills"]]
    for r in rows:
        status = "ok" if r["ok"] and not r["spills"] else ("SPILLS" if r["ok"] else "FAILED")
        o = r["options"]
        print(f"sm_{r['cap']} {r['kernel']:48s} w={o['num_warps']} s={o['num_stages']} regs={r.get('regs')} "
              f"stack={r.get('stack')} spill_bytes={r.get('spill_bytes')} {r['seconds']:6.2f}s {status}")
        if not r["ok"]:
            print("    " + r["error"].replace("\n", "\n    "))
    print(f"{len(rows)} compilations, {len(bad)} failed or spilled, {time.time() - t0:.1f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
