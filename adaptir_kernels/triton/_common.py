"""Pieces every Triton operator file shares: math helpers, dtype maps, launch tables and the
fixed-order column reduction that turns per-block partial sums into gradients.

Math helpers use only basic arithmetic, exp/sqrt and cos/sin, so that Triton's CPU
interpreter runs them too (it lacks libdevice functions such as atan2).

Every launcher picks its block sizes from the small explicit tables here, keyed by the
padded hidden width BH; `compile_check.py` compiles every entry for sm_80 and sm_90.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import _alloc
from ..backends import TRITON_MAX_HIDDEN

# Padded hidden widths a kernel can be built for (tl.dot needs every dimension >= 16).
HIDDEN_BLOCKS = (16, 32, 64)
MAX_HIDDEN = HIDDEN_BLOCKS[-1]
assert MAX_HIDDEN == TRITON_MAX_HIDDEN

# x / out / grad dtypes the C-wide kernels are compiled for.
IO_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TRITON_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

# Launch tables, keyed by BH. Block sizes keep every tl.dot's reduction dimension at 16 to
# 32 (fp32 dots run on FMA units, and a long reduction dimension costs registers); the
# choices below compile without spills for sm_80 and sm_90 (compile_check.py).
#   project_in forward: BM backbone rows per program, C read in chunks of BK columns.
PROJ_FWD_CONFIGS = {
    16: dict(BM=64, BK=32, num_warps=8),
    32: dict(BM=64, BK=16, num_warps=8),
    64: dict(BM=32, BK=16, num_warps=8),
}
#   project_in backward: a program owns a group of rows (a runtime size) and one chunk of
#   BK columns of C, and walks its rows RS at a time.
PROJ_BWD_CONFIGS = {
    16: dict(BK=32, RS=16, num_warps=4),
    32: dict(BK=32, RS=16, num_warps=8),
    64: dict(BK=16, RS=16, num_warps=8),
}
#   combine_out forward: BM pixels of one sample per program, C written in chunks of BK.
COMB_FWD_CONFIGS = {
    16: dict(BM=64, BK=32, num_warps=8),
    32: dict(BM=32, BK=64, num_warps=8),
    64: dict(BM=32, BK=32, num_warps=8),
}
#   combine_out backward: BM pixels per program; grad_v from chunks of BK1 columns, then the
#   tail-weight partial from chunks of BK2 columns, RS pixels at a time (the second walk
#   over the block's grad_out rows hits the cache). Software pipelining only costs
#   registers here.
COMB_BWD_CONFIGS = {
    16: dict(BM=64, BK1=16, BK2=64, RS=16, num_warps=8, num_stages=1),
    32: dict(BM=32, BK1=16, BK2=64, RS=16, num_warps=8, num_stages=1),
    64: dict(BM=32, BK1=16, BK2=32, RS=16, num_warps=8, num_stages=1),
}
# Hidden-width row kernels (BN statistics): BM rows of h channels.
HROW_CONFIGS = {
    16: dict(BM=128, num_warps=4),
    32: dict(BM=64, num_warps=4),
    64: dict(BM=32, num_warps=4),
}
# Per-pixel kernels on (N, h, H, W) planes (local branch): a tile of BH channels x BP
# pixels, 8 values per thread (nine shifted loads of the tile are in flight at once);
# the backward tap kernel, which also keeps grad_lt and the partial sums, 2 to 4 per thread.
PIXEL_CONFIGS = {
    16: dict(BP=64, num_warps=4),
    32: dict(BP=32, num_warps=4),
    64: dict(BP=16, num_warps=4),
}
PIXEL_BWD_CONFIGS = {
    16: dict(BP=32, num_warps=8),
    32: dict(BP=16, num_warps=4),
    64: dict(BP=8, num_warps=4),
}
# Router (one program per sample): tiles of BH channels x BP pixels, one stage (no
# software pipelining of its loops over u).
ROUTER_CONFIGS = {
    16: dict(BP=128, num_warps=4, num_stages=1),
    32: dict(BP=64, num_warps=4, num_stages=1),
    64: dict(BP=32, num_warps=4, num_stages=1),
}
# Flat elementwise kernels (spectral gate, abs/mean, sign step).
FLAT_CONFIG = dict(BLOCK=512, num_warps=4)
# The spectral gate's backward: two elements per thread (it evaluates the gate's adjoint
# twice in the columns it makes Hermitian, which spills registers at four).
GATE_BWD_CONFIG = dict(BLOCK=512, num_warps=8)
# Column reduction of partial sums.
COLSUM_CONFIG = dict(BR=128, BK=32, num_warps=4)
COLSUM_SEGMENTS = 5


def opts(cfg: dict) -> dict:
    """The compiler options of a launch-table entry."""
    return dict(num_warps=cfg["num_warps"], num_stages=cfg.get("num_stages", 3))


def hidden_block(h: int) -> int:
    for bh in HIDDEN_BLOCKS:
        if h <= bh:
            return bh
    raise ValueError(
        f"the Triton kernels support a hidden width up to {MAX_HIDDEN}, got {h}; "
        "use backend 'torch' (on the CPU also 'cpp') for wider adapters")


def f32(t: torch.Tensor, name: str) -> torch.Tensor:
    """A hidden-width tensor or parameter at the boundary: float32 and contiguous."""
    if t.dtype != torch.float32:
        raise TypeError(f"backend 'triton' computes in float32; {name} is {t.dtype}")
    return t.contiguous()


def io(t: torch.Tensor, name: str) -> torch.Tensor:
    """A C-wide tensor at the boundary: one of IO_DTYPES, contiguous."""
    if t.dtype not in TRITON_DTYPE:
        raise TypeError(f"backend 'triton' reads {name} as float32, float16 or bfloat16, got {t.dtype}")
    return t.contiguous()


def check(op: str, ref: torch.Tensor, **named) -> None:
    """Shapes and devices at a launcher's boundary: the kernels trust the geometry they are
    given, so a mismatch would read or write out of bounds instead of raising. Each
    keyword is name=(tensor, expected): a shape tuple (None entries: any size), or an int
    for a number of elements. Every tensor must be on ref's device."""
    for name, (t, want) in named.items():
        if t.device != ref.device:
            raise RuntimeError(f"{op}: {name} is on {t.device}, the operator's inputs on {ref.device}")
        if isinstance(want, int):
            if t.numel() != want:
                raise ValueError(f"{op}: {name} must have {want} element(s), got shape {tuple(t.shape)}")
        elif t.dim() != len(want) or any(w is not None and s != w for s, w in zip(t.shape, want)):
            shown = "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"
            raise ValueError(f"{op}: {name} must have shape {shown}, got {tuple(t.shape)}")


def hidden_input(op: str, u: torch.Tensor, name: str = "u"):
    """(N, h, H, W) of a hidden-width tensor, which must be 4-D with at least one position."""
    if u.dim() != 4 or u.shape[2] * u.shape[3] < 1:
        raise ValueError(f"{op}: {name} must have shape (N, h, H, W) with H, W >= 1, got {tuple(u.shape)}")
    return tuple(u.shape)


def device_guard(t: torch.Tensor):
    """Run a launch on t's CUDA device (Triton launches on the current one)."""
    if t.device.type == "cuda" and t.device.index is not None and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return _NullGuard()


class _NullGuard:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ---- math helpers -----------------------------------------------------------------

# k * pi / 4 = _Qk_HI + _Qk_LO, _Qk_HI the nearest float32.
_Q1_HI = tl.constexpr(0.7853981852531433)
_Q1_LO = tl.constexpr(-2.1855695031547384e-08)
_Q2_HI = tl.constexpr(1.5707963705062866)
_Q2_LO = tl.constexpr(-4.371139006309477e-08)
_Q3_HI = tl.constexpr(2.356194496154785)
_Q3_LO = tl.constexpr(-5.962440319251527e-09)
_Q4_HI = tl.constexpr(3.1415927410125732)
_Q4_LO = tl.constexpr(-8.742278012618954e-08)
# atan(t) = t + t * s * P(s), s = t * t, |t| <= 1/2: least-squares fit on Chebyshev nodes,
# absolute error 1.7e-9 with the coefficients rounded to float32.
_A0 = tl.constexpr(-0.3333332080234455)
_A1 = tl.constexpr(0.1999920933410583)
_A2 = tl.constexpr(-0.14267583079910195)
_A3 = tl.constexpr(0.10908245697732902)
_A4 = tl.constexpr(-0.07873146974821538)
_A5 = tl.constexpr(0.0373023092403439)


@triton.jit
def atan2(y, x):
    """atan2 for finite float32 inputs with IEEE signed-zero conventions (atan2(+-0, -0) =
    +-pi, atan2(+-0, +0) = +-0), from correctly rounded divisions and a polynomial.
    Absolute error (tests/test_triton_ops.py): below 1e-7 where |result| < 1, below 1.7e-7
    (0.7 float32 ulp) near +-pi."""
    ax = tl.abs(x)
    ay = tl.abs(y)
    mx = tl.maximum(ax, ay)
    mn = tl.minimum(ax, ay)
    # a = mn / mx in [0, 1]; for a > 1/2, atan(a) = pi/4 + atan(t) with
    # t = (a - 1) / (a + 1) = (mn - mx) / (mn + mx) in [-1/3, 0] (mn - mx is exact there).
    big = mn > 0.5 * mx
    t = tl.where(big, tl.div_rn(mn - mx, tl.where(big, mn + mx, 1.0)), tl.div_rn(mn, tl.where(mx == 0.0, 1.0, mx)))
    s = t * t
    p = _A5
    p = p * s + _A4
    p = p * s + _A3
    p = p * s + _A2
    p = p * s + _A1
    p = p * s + _A0
    r = t + t * (s * p)  # atan(t), |t| <= 1/2
    # The result is m * pi / 4 + sgn * atan(t) with m in 0..4; adding the float32 head of
    # m * pi / 4 last keeps the error near half an ulp of the result.
    m = tl.where(big, 1, 0)
    sgn = tl.where(ay > ax, -1.0, 1.0)
    m = tl.where(ay > ax, 2 - m, m)
    xneg = x.to(tl.int32, bitcast=True) < 0  # x < 0 or x = -0
    m = tl.where(xneg, 4 - m, m)
    sgn = tl.where(xneg, -sgn, sgn)
    hi = tl.where(m == 1, _Q1_HI, tl.where(m == 2, _Q2_HI, tl.where(m == 3, _Q3_HI, _Q4_HI)))
    lo = tl.where(m == 1, _Q1_LO, tl.where(m == 2, _Q2_LO, tl.where(m == 3, _Q3_LO, _Q4_LO)))
    res = tl.where(m == 0, sgn * r, hi + (lo + sgn * r))
    # res * -1.0, not -res: Triton 3.6 lowers float negation to 0 - res, losing the sign of zero.
    return tl.where(y.to(tl.int32, bitcast=True) < 0, res * -1.0, res)


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


# ---- fixed-order reduction of partial sums ------------------------------------------


@triton.jit
def _colsum_kernel(part_ptr, M, K, LD,
                   out0, out1, out2, out3, out4,
                   end0, end1, end2, end3,
                   BR: tl.constexpr, BK: tl.constexpr):
    """out = part.sum(0) for an (M, K) float32 matrix of partial sums (rows LD apart),
    rows summed in a fixed order (deterministic), columns split into up to five output
    tensors: column k goes to out_s[k - end_{s-1}] for end_{s-1} <= k < end_s (end_4 = K)."""
    pid = tl.program_id(0).to(tl.int64)
    cols = pid * BK + tl.arange(0, BK)
    cmask = cols < K
    rows = tl.arange(0, BR).to(tl.int64)
    acc = tl.zeros((BR, BK), dtype=tl.float32)
    for r0 in range(0, M, BR):
        rr = r0 + rows
        acc += tl.load(part_ptr + rr[:, None] * LD + cols[None, :],
                       mask=(rr[:, None] < M) & cmask[None, :], other=0.0)
    tot = tl.sum(acc, axis=0)
    tl.store(out0 + cols, tot, mask=cols < end0)
    tl.store(out1 + (cols - end0), tot, mask=(cols >= end0) & (cols < end1))
    tl.store(out2 + (cols - end1), tot, mask=(cols >= end1) & (cols < end2))
    tl.store(out3 + (cols - end2), tot, mask=(cols >= end2) & (cols < end3))
    tl.store(out4 + (cols - end3), tot, mask=(cols >= end3) & cmask)


def colsum(part: torch.Tensor, outs, start: int = 0) -> None:
    """Sum the rows of `part` (M, ld) into the tensors `outs` (float32, contiguous, in
    column order), which take the columns from `start` on, as many as they hold."""
    M, ld = part.shape
    assert part.stride(1) == 1 and part.stride(0) == ld
    outs = list(outs)
    K = sum(o.numel() for o in outs)
    assert 1 <= len(outs) <= COLSUM_SEGMENTS and start + K <= ld
    part = part[:, start:] if start else part
    ends = []
    acc = 0
    for o in outs:
        acc += o.numel()
        ends.append(acc)
    while len(outs) < COLSUM_SEGMENTS:
        outs.append(outs[-1])
        ends.append(K)
    cfg = COLSUM_CONFIG
    grid = (triton.cdiv(K, cfg["BK"]),)
    _colsum_kernel[grid](part, M, K, ld, *outs, *ends[:4], BR=cfg["BR"], BK=cfg["BK"], **opts(cfg))


def colsum_compile_specs():
    sig = {"part_ptr": "*fp32", "M": "i32", "K": "i32", "LD": "i32"}
    sig.update({f"out{i}": "*fp32" for i in range(COLSUM_SEGMENTS)})
    sig.update({f"end{i}": "i32" for i in range(COLSUM_SEGMENTS - 1)})
    cfg = COLSUM_CONFIG
    yield ("_common._colsum_kernel", _colsum_kernel, sig, dict(BR=cfg["BR"], BK=cfg["BK"]), opts(cfg))


_SM_COUNT = {}


def sm_count(device: torch.device) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def chunks(count: int, length: int, block: int, device: torch.device, min_iters: int, chunk_iters: int,
           max_chunks: Optional[int] = None):
    """How to cut each of `count` rows of `length` elements, walked in blocks of `block`,
    over several programs: (chunks per row, elements per chunk, a multiple of block).
    A row of at most `min_iters` blocks stays one program's, (1, length); longer rows get
    chunks of about `chunk_iters` blocks, at most max_chunks per row and about two programs
    per SM in all (four under the CPU interpreter). No chunk is empty."""
    iters = cdiv(length, block)
    if iters <= min_iters:
        return 1, length
    target = 2 * sm_count(device) if device.type == "cuda" else 4
    n = max(1, min(cdiv(iters, chunk_iters), cdiv(target, count), max_chunks or iters))
    size = cdiv(iters, n) * block
    n = cdiv(length, size)
    return (1, length) if n == 1 else (n, size)


def row_groups(R: int, nchunks: int, RS: int, device: torch.device):
    """Rows per group (a multiple of RS) and the number of groups for kernels whose
    programs own a group of rows and one column chunk: about eight programs per SM on a
    GPU (few enough that the per-group partial sums stay small), four programs in all
    under the CPU interpreter (where every program costs milliseconds)."""
    target = 8 * sm_count(device) if device.type == "cuda" else 4
    groups = max(1, min(cdiv(target, nchunks), cdiv(R, RS)))
    G = cdiv(cdiv(R, groups), RS) * RS
    return G, cdiv(R, G)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def new(shape, device, dtype=torch.float32) -> torch.Tensor:
    return _alloc.empty(shape, dtype=dtype, device=device)

