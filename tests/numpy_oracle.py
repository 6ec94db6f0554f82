"""An independent float64 statement of SPEC section 4 in NumPy.

No torch.fft: the transforms are explicit DFT sums (SPEC 4.1), BatchNorm is written out
with its running-buffer update. Used on small shapes only.
"""

from __future__ import annotations

import math

import numpy as np


def _erf(x):
    return np.vectorize(math.erf)(x)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def rfft2_ortho(u):
    """(..., H, W) real -> (..., H, W//2+1) complex: sum_p u[p] exp(-2 pi i (kh y/H + kw x/W)) / sqrt(HW)."""
    H, W = u.shape[-2:]
    Wf = W // 2 + 1
    y = np.arange(H)
    x = np.arange(W)
    Fh = np.exp(-2j * np.pi * np.outer(np.arange(H), y) / H)  # (kh, y)
    Fw = np.exp(-2j * np.pi * np.outer(np.arange(Wf), x) / W)  # (kw, x)
    U = np.einsum("ky,...yx,wx->...kw", Fh, u, Fw) / math.sqrt(H * W)
    # Bins equal to their own conjugate partner are exactly real for real input; FFT
    # libraries return +0 there, and angle() of a negative real must be +pi, not -pi.
    for kh in {0, H // 2} if H % 2 == 0 else {0}:
        for kw in {0, W // 2} if W % 2 == 0 else {0}:
            U[..., kh, kw] = U[..., kh, kw].real + 0j
    return U


def irfft2_ortho(Y, H, W):
    """SPEC 4.1: out[y, x] = Re(sum_kh sum_kw c[kw] Y[kh, kw] e^{2 pi i (kh y/H + kw x/W)}) / sqrt(HW)."""
    Wf = W // 2 + 1
    c = np.full(Wf, 2.0)
    c[0] = 1.0
    if W % 2 == 0:
        c[W // 2] = 1.0
    Gh = np.exp(2j * np.pi * np.outer(np.arange(H), np.arange(H)) / H)  # (y, kh)
    Gw = np.exp(2j * np.pi * np.outer(np.arange(W), np.arange(Wf)) / W)  # (x, kw)
    return np.real(np.einsum("yk,...kw,w,xw->...yx", Gh, Y, c, Gw)) / math.sqrt(H * W)


def depthwise3x3(u, K, bias):
    N, h, H, W = u.shape
    pad = np.zeros((N, h, H + 2, W + 2))
    pad[:, :, 1:-1, 1:-1] = u
    out = np.zeros_like(u)
    for dy in range(3):
        for dx in range(3):
            out += K[None, :, dy, dx, None, None] * pad[:, :, dy:dy + H, dx:dx + W]
    return out + bias[None, :, None, None]


def adaptir_forward(params: dict, buffers: dict, x_nchw: np.ndarray, training: bool, momentum=0.1, eps=1e-5):
    """Returns (out (N, C, H, W), new_buffers). params/buffers: numpy arrays keyed by state_dict names."""
    P = params
    N, C, H, W = x_nchw.shape
    h = P["head.bias"].shape[0]
    z = np.einsum("oc,nchw->nohw", P["head.weight"].reshape(h, C), x_nchw) + P["head.bias"][None, :, None, None]
    new_buffers = dict(buffers)
    if training:
        m = N * H * W
        mean = z.mean(axis=(0, 2, 3))
        var = ((z - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
        new_buffers["BN.running_mean"] = (1 - momentum) * buffers["BN.running_mean"] + momentum * mean
        new_buffers["BN.running_var"] = (1 - momentum) * buffers["BN.running_var"] + momentum * var * m / (m - 1)
        new_buffers["BN.num_batches_tracked"] = buffers["BN.num_batches_tracked"] + 1
    else:
        mean, var = buffers["BN.running_mean"], buffers["BN.running_var"]
    u = (z - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps)
    u = u * P["BN.weight"][None, :, None, None] + P["BN.bias"][None, :, None, None]

    # global branch
    U = rfft2_ortho(u)
    A = np.abs(U)
    Ph = np.arctan2(U.imag, U.real)
    ch = lambda k: P[k].reshape(h)[None, :, None, None]  # noqa: E731
    A2 = ch("amp_fuse.weight") * A + ch("amp_fuse.bias")
    P2 = ch("pha_fuse.weight") * Ph + ch("pha_fuse.bias")
    g = np.abs(irfft2_ortho(A2 * np.exp(1j * P2), H, W))

    # local branch
    K = (P["conv_weight_A"] @ P["conv_weight_B"]).reshape(h, 3, 3)
    loc = depthwise3x3(u, K, P["conv_bias"])

    # router
    s = np.einsum("c,nchw->nhw", P["compress.weight"].reshape(h), u).reshape(N, -1) + P["compress.bias"][0]
    a = np.exp(s - s.max(axis=1, keepdims=True))
    a = a / a.sum(axis=1, keepdims=True)
    pooled = np.einsum("np,ncp->nc", a, u.reshape(N, h, -1))
    cs = gelu(pooled @ P["proj.0.weight"].T + P["proj.0.bias"]) @ P["proj.2.weight"].T + P["proj.2.bias"]
    gm = g.mean(axis=(2, 3))
    ci = P["channel_interaction.1.bias"].shape[0]
    t = gelu(gm @ P["channel_interaction.1.weight"].reshape(ci, h).T + P["channel_interaction.1.bias"])
    cg = sigmoid(t @ P["channel_interaction.3.weight"].reshape(h, ci).T + P["channel_interaction.3.bias"])
    sg = sigmoid(np.einsum("c,nchw->nhw", P["spatial_interaction.weight"].reshape(h), loc)
                 + P["spatial_interaction.bias"][0])
    v = cs[:, :, None, None] * (cg[:, :, None, None] * loc + sg[:, None] * g)
    out = np.einsum("oc,nchw->nohw", P["tail.weight"].reshape(C, h), v)
    return out, new_buffers
