"""inject / fuse / unfuse / trainable_parameters / save_adapters / load_adapters."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from adaptir_kernels.adapters import (
    AdapterLoadError,
    adapter_modules,
    adapter_state_dict,
    fuse,
    inject,
    load_adapters,
    save_adapters,
    trainable_parameters,
    unfuse,
)
from adaptir_kernels.backbones import EDT, IPT
from adaptir_kernels.reference import AdaptIR as ReferenceAdaptIR

try:
    from adaptir_kernels.module import AdaptIR as FusedAdaptIR
except ImportError as _err:  # the fused module is built in parallel with these helpers
    FusedAdaptIR = None
    _FUSED_REASON = f"adaptir_kernels.module is not available: {_err}"
else:
    _FUSED_REASON = ""

needs_fused = pytest.mark.skipif(FusedAdaptIR is None, reason=_FUSED_REASON or "fused module missing")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run tiny ops on a shared machine: one intra-op thread avoids
    oversubscription stalls; the previous setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_ipt(task="sr_2", **kw):
    cfg = dict(n_feats=8, patch_size=12, num_heads=2, num_layers=2)
    cfg.update(kw)
    return IPT(task, **cfg)


def tiny_edt(task="sr_2", **kw):
    cfg = dict(embed_dim=56, depths=(2, 2), num_heads=(2, 2), window_size=(2, 4), num_feat=8, img_size=8,
               drop_path_rate=0.0)
    cfg.update(kw)
    return EDT(task, **cfg)


@torch.no_grad()
def randomize_adapters(model, seed=0, std=0.3):
    """Adapters start as an exact zero function (tail and gates at zero): draw every
    adapter parameter and BN statistic at random so comparisons mean something."""
    gen = torch.Generator().manual_seed(seed)
    for m in adapter_modules(model).values():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
        m.BN.running_mean.copy_(torch.randn(m.hidden, generator=gen) * 0.2)
        m.BN.running_var.copy_(torch.rand(m.hidden, generator=gen) + 0.5)
    return model


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


# -- injection positions and freezing -------------------------------------------------


def test_inject_ipt_positions_and_layout():
    torch.manual_seed(0)
    m = inject(tiny_ipt(), backend="reference", hidden=8)
    ads = adapter_modules(m)
    expect = [f"body.{part}.layers.{i}.adaptir" for part in ("encoder", "decoder") for i in range(2)]
    assert sorted(ads) == sorted(expect)
    for a in ads.values():
        assert type(a) is ReferenceAdaptIR
        assert (a.layout, a.d_model, a.hidden, a.preset) == ("lnc", 72, 8, "ipt")
    assert all(p.requires_grad == (".adaptir." in n) for n, p in m.named_parameters())


def test_inject_edt_positions_and_layout():
    m = inject(tiny_edt(), backend="reference")
    ads = adapter_modules(m)
    expect = [f"body.layers.{s}.residual_group.blocks.{b}.adaptir" for s in range(2) for b in range(2)]
    assert sorted(ads) == sorted(expect)
    for a in ads.values():
        assert (a.layout, a.d_model, a.hidden, a.rank, a.ci_hidden, a.preset) == ("nhwc", 56, 4, 2, 1, "edt")
    rep = trainable_parameters(m)
    assert rep.trainable == rep.adapter_parameters == 4 * rep.per_adapter and rep.other_trainable == []
    assert int(rep) == rep.trainable and "4 x" in str(rep)


def test_inject_options_and_errors():
    m = inject(tiny_edt(), backend="reference", train_task_head_tail=True)
    rep = trainable_parameters(m)
    assert rep.other_trainable and all(n.startswith(("head_sr_x2", "tail_sr_x2")) for n in rep.other_trainable)
    with pytest.raises(ValueError, match="already has an adapter"):
        inject(m, backend="reference")
    with pytest.raises(ValueError, match="no transformer blocks"):
        inject(nn.Sequential(nn.Linear(4, 4)))
    m2 = inject(tiny_edt(), backend="reference", freeze=False)
    assert all(p.requires_grad for p in m2.parameters())


def _capture(module, store, key):
    return module.register_forward_hook(lambda mod, args, out: store.__setitem__(key, out.detach().clone()))


@pytest.mark.parametrize("which", ["ipt_encoder", "ipt_decoder", "edt"])
def test_adapter_sits_beside_the_ffn(which):
    """Block output with adapter - without = adaptir(norm_ffn(x)), the norm before the FFN
    (norm2 in IPT encoder and EDT blocks, norm3 in IPT decoder layers)."""
    torch.manual_seed(0)
    if which.startswith("ipt"):
        model = randomize_adapters(inject(tiny_ipt(), backend="reference", hidden=8)).eval()
        enc = which == "ipt_encoder"
        block = model.body.encoder.layers[1] if enc else model.body.decoder.layers[0]
        norm = block.norm2 if enc else block.norm3
        x = torch.rand(2, 3, 12, 12)
    else:
        model = randomize_adapters(inject(tiny_edt(), backend="reference")).eval()
        block = model.body.layers[1].residual_group.blocks[1]
        norm = block.norm2
        x = torch.rand(2, 3, 8, 12)
    model.double()  # float64: the block output is large next to the adapter's share
    x = x.double()
    store = {}
    hooks = [_capture(norm, store, "y"), _capture(block, store, "with")]
    hooks.append(block.register_forward_pre_hook(
        lambda mod, args, kwargs: store.__setitem__("args", (args, kwargs)), with_kwargs=True))
    with torch.no_grad():
        model(x)
        for h in hooks:
            h.remove()
        adapter = block.adaptir
        block.adaptir = None
        without = block(*store["args"][0], **store["args"][1])
        block.adaptir = adapter
        if which.startswith("ipt"):
            expect = adapter(store["y"], hw=(4, 4))
        else:
            expect = adapter(store["y"]).reshape(without.shape)
    for h in hooks:
        h.remove()
    assert rel(store["with"] - without, expect) < 1e-9
    assert expect.abs().max() > 1e-3  # the adapter contributes something


# -- the generic (hook) form -------------------------------------------------------------


class SwinLikeBlock(nn.Module):
    """A SwinIR-style block: (B, L, C) tokens with x_size passed to forward."""

    def __init__(self, dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, x_size):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SwinLike(nn.Module):
    def __init__(self, dim=56, n=2):
        super().__init__()
        self.blocks = nn.ModuleList([SwinLikeBlock(dim) for _ in range(n)])
        self.out = nn.Linear(dim, dim)

    def forward(self, x, x_size):
        for b in self.blocks:
            x = b(x, x_size)
        return self.out(x)


class NHWCBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU())

    def forward(self, x):
        return x + self.ffn(self.ln(x))


def test_generic_inject_swinir_style():
    torch.manual_seed(0)
    model = SwinLike()
    plain = copy.deepcopy(model)
    inject(model, block_type=SwinLikeBlock, ffn_attr="mlp", norm_attr="norm2", layout="nlc", backend="reference")
    names = [n for n, _ in model.named_parameters() if n.startswith("blocks.0.adaptir.")]
    assert "blocks.0.adaptir.head.weight" in names and "blocks.1.adaptir.tail.weight" in dict(model.named_parameters())
    assert not model.out.weight.requires_grad
    randomize_adapters(model).eval()
    H, W, C = 3, 5, 56
    x = torch.randn(2, H * W, C)
    with torch.no_grad():
        got = model(x, (H, W))
        t = x
        for pb, mb in zip(plain.blocks, model.blocks):
            t = t + pb.attn(pb.norm1(t))
            y = pb.norm2(t)
            t = t + pb.mlp(y) + mb.adaptir(y.view(2, H, W, C)).view(2, H * W, C)
        expect = plain.out(t)
    assert rel(got, expect) < 1e-6
    # gradients reach the adapters through the hook
    model.train()
    model(x, (H, W)).square().sum().backward()
    assert all(p.grad is not None for p in model.blocks[0].adaptir.parameters())


def test_generic_inject_nhwc_and_lnc():
    torch.manual_seed(0)
    seq = nn.Sequential(NHWCBlock(56), NHWCBlock(56))
    inject(seq, block_type=NHWCBlock, ffn_attr="ffn", norm_attr="ln", layout="nhwc", backend="reference")
    randomize_adapters(seq).eval()
    x = torch.randn(2, 4, 6, 56)
    with torch.no_grad():
        t = x
        for b in seq:
            y = b.ln(t)
            t = t + b.ffn[1](b.ffn[0](y)) + b.adaptir(y)
        assert rel(seq(x), t) < 1e-6
    # (L, N, C) tokens of a square grid: H = W inferred
    seq2 = nn.Sequential(NHWCBlock(56))
    inject(seq2, block_type=NHWCBlock, ffn_attr="ffn", norm_attr="ln", layout="lnc", backend="reference")
    assert seq2(torch.randn(16, 2, 56)).shape == (16, 2, 56)
    with pytest.raises(ValueError, match="cannot infer"):
        seq2(torch.randn(15, 2, 56))
    with pytest.raises(AttributeError, match="ffn_attr"):
        inject(nn.Sequential(NHWCBlock(56)), block_type=NHWCBlock, ffn_attr="mlp")


# -- fused vs reference, end to end ----------------------------------------------------


def _fwd_bwd(model, x, seed=3):
    out = model(x)
    g = torch.Generator().manual_seed(seed)
    out.backward(torch.randn(out.shape, generator=g))
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out.detach(), grads


def _assert_grads_close(g_fused, g_ref, tol):
    assert set(g_fused) == set(g_ref)
    scale = torch.cat([g.flatten() for g in g_ref.values()]).double().norm().item()
    for n in g_ref:
        a, b = g_fused[n].double(), g_ref[n].double()
        # compress.bias has an exactly-zero true gradient (softmax is shift invariant):
        # compare to the overall gradient scale rather than to its own rounding noise.
        err = (a - b).norm().item()
        assert err <= tol * b.norm().item() + 1e-6 * scale, f"{n}: |diff| {err:.3e}, |ref| {b.norm().item():.3e}"


@needs_fused
@pytest.mark.parametrize("arch", ["ipt", "edt_sr", "edt_dn"])
@pytest.mark.parametrize("train", [True, False])
def test_fused_matches_reference_end_to_end(arch, train):
    torch.manual_seed(0)
    if arch == "ipt":
        ref, x = inject(tiny_ipt(num_layers=1), backend="reference", hidden=8), torch.rand(2, 3, 12, 12)
    elif arch == "edt_sr":
        ref, x = inject(tiny_edt("sr_2"), backend="reference"), torch.rand(2, 3, 8, 12)
    else:
        ref, x = inject(tiny_edt("denoise_30", depths=(2,), num_heads=(2,)), backend="reference"), torch.rand(1, 3, 16, 32)
    randomize_adapters(ref)
    fused = fuse(copy.deepcopy(ref))
    assert all(isinstance(a, FusedAdaptIR) for a in adapter_modules(fused).values())
    ref.train(train)
    fused.train(train)
    out_r, g_r = _fwd_bwd(ref, x)
    out_f, g_f = _fwd_bwd(fused, x)
    assert rel(out_f, out_r) < 1e-5
    _assert_grads_close(g_f, g_r, 1e-3)
    for (n, b_r), (_, b_f) in zip(ref.named_buffers(), fused.named_buffers()):
        assert rel(b_f, b_r) < 1e-5 or torch.equal(b_f, b_r), n


@needs_fused
def test_inject_backends():
    m = inject(tiny_edt(), backend="auto")
    assert all(type(a) is FusedAdaptIR and a.backend == "auto" for a in adapter_modules(m).values())
    m = inject(tiny_edt(), backend="torch")
    assert all(a.backend == "torch" for a in adapter_modules(m).values())


@needs_fused
def test_fuse_unfuse_round_trip():
    torch.manual_seed(0)
    m = randomize_adapters(inject(tiny_edt(), backend="reference"))
    params_before = {n: p for n, p in m.named_parameters()}
    sd_before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.rand(2, 3, 8, 8)
    m.eval()
    with torch.no_grad():
        y_ref = m(x)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)

    fuse(m, backend="torch")
    ads = adapter_modules(m)
    assert len(ads) == 4 and all(type(a) is FusedAdaptIR and a.backend == "torch" for a in ads.values())
    assert all(p is params_before[n] for n, p in m.named_parameters())  # same Parameter objects
    assert all(torch.equal(v, sd_before[k]) for k, v in m.state_dict().items())
    assert not next(iter(ads.values())).training
    with torch.no_grad():
        assert rel(m(x), y_ref) < 1e-5
    # an optimizer built before fusing keeps training the live parameters
    m.train()
    m(x).mean().backward()
    opt.step()
    assert not torch.equal(m.state_dict()[next(k for k in sd_before if k.endswith("adaptir.tail.weight"))],
                           sd_before[next(k for k in sd_before if k.endswith("adaptir.tail.weight"))])

    sd_fused = {k: v.clone() for k, v in m.state_dict().items()}
    unfuse(m)
    assert all(type(a) is ReferenceAdaptIR for a in adapter_modules(m).values())
    assert all(p is params_before[n] for n, p in m.named_parameters())
    assert all(torch.equal(v, sd_fused[k]) for k, v in m.state_dict().items())
    fuse(fuse(m), backend="torch")  # idempotent; re-targets the backend
    assert all(a.backend == "torch" for a in adapter_modules(m).values())


@needs_fused
def test_fuse_unfuse_keep_submodule_modes_and_bn_settings():
    # Adapters trained with frozen BN statistics (BN in eval mode inside a training model),
    # a cumulative-average momentum and another eps: swapping keeps all of it.
    torch.manual_seed(0)
    m = randomize_adapters(inject(tiny_edt(), backend="reference")).train()
    for a in adapter_modules(m).values():
        a.BN.eval()
        a.BN.momentum, a.BN.eps = None, 1e-3
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        y_ref = m(x)
    stats = {k: v.clone() for k, v in m.state_dict().items() if "running" in k or "num_batches" in k}
    for swap in (lambda: fuse(m, backend="torch"), lambda: unfuse(m), lambda: fuse(m, backend="torch")):
        swap()
        for a in adapter_modules(m).values():
            assert a.training and not a.BN.training
            assert a.BN.momentum is None and a.BN.eps == 1e-3
        with torch.no_grad():
            assert rel(m(x), y_ref) < 1e-5  # eval-mode BN with eps 1e-3, as before the swap
        assert all(torch.equal(m.state_dict()[k], v) for k, v in stats.items())  # statistics frozen


# -- full-size counts: asserted with the published key sets in test_backbones.py
# (IPT 24 x 29,069 = 697,656; EDT-B 36 x 4,817 = 173,412).


# -- save / load ------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    a = randomize_adapters(inject(tiny_edt(), backend="reference"), seed=1)
    path = tmp_path / "sub" / "adapters.safetensors"
    written = save_adapters(a, path, metadata={"task": "sr_2"})
    assert all(".adaptir." in k for k in written) and len(written) == 4 * 27
    assert sorted(os.listdir(path.parent)) == ["adapters.safetensors"]  # no temp file left

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(written)
        assert f.metadata()["task"] == "sr_2" and f.metadata()["format"] == "adaptir-adapters"

    torch.manual_seed(5)
    b = inject(tiny_edt(), backend="reference")
    with torch.no_grad():  # same frozen backbone, different (fresh) adapters
        for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
            if ".adaptir." not in n:
                q.copy_(p)
    res = load_adapters(b, path)
    assert len(res["loaded"]) == len(written) and not res["missing"] and not res["unexpected"]
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    a.eval()
    b.eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))

    # overwrite in place (atomic replace), then load into a fused model: same key names
    save_adapters(a, path)
    if FusedAdaptIR is not None:
        c = fuse(inject(tiny_edt(), backend="reference"))
        load_adapters(c, path)
        for k, v in a.state_dict().items():
            if ".adaptir." in k:
                assert torch.equal(v, c.state_dict()[k])


def test_save_include_trainable(tmp_path):
    m = randomize_adapters(inject(tiny_edt(), backend="reference", train_task_head_tail=True))
    written = save_adapters(m, tmp_path / "a.safetensors", include_trainable=True)
    assert any(k.startswith("head_sr_x2") for k in written)
    m2 = inject(tiny_edt(), backend="reference")
    load_adapters(m2, tmp_path / "a.safetensors")
    assert torch.equal(m2.head_sr_x2[0].weight, m.head_sr_x2[0].weight)


def test_save_adapters_of_a_wrapped_model(tmp_path):
    # torch.compile's and DDP's wrappers prefix the keys; the file has the model's own.
    torch.manual_seed(0)
    m = randomize_adapters(inject(tiny_edt(), backend="reference"))
    path = tmp_path / "a.safetensors"
    written = save_adapters(torch.compile(m), path)
    assert set(written) == set(adapter_state_dict(m))
    fresh = inject(tiny_edt(), backend="reference")
    load_adapters(torch.nn.DataParallel(fresh), path)  # and loads into a wrapped model
    assert all(torch.equal(v, adapter_state_dict(m)[k]) for k, v in adapter_state_dict(fresh).items())


def test_load_adapters_errors(tmp_path):
    torch.manual_seed(0)
    m = inject(tiny_edt(), backend="reference")
    path = tmp_path / "a.safetensors"
    save_adapters(m, path)

    with pytest.raises(FileNotFoundError, match="not found"):
        load_adapters(m, tmp_path / "missing.safetensors")
    with pytest.raises(AdapterLoadError, match="shape mismatch"):
        load_adapters(inject(tiny_edt(), backend="reference", hidden=6), path)
    with pytest.raises(AdapterLoadError, match="unexpected"):
        load_adapters(inject(tiny_edt(depths=(2,), num_heads=(2,)), backend="reference"), path)
    with pytest.raises(AdapterLoadError, match="missing from the file"):
        load_adapters(inject(tiny_edt(depths=(2, 2, 2), num_heads=(2, 2, 2)), backend="reference"), path)
    with pytest.raises(AdapterLoadError, match="no adapters"):
        load_adapters(tiny_edt(), path)
    with pytest.raises(AdapterLoadError, match="different module prefix"):
        load_adapters(inject(tiny_edt(), backend="reference").body, path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterLoadError, match="not a readable"):
        load_adapters(m, bad)
    with pytest.raises(ValueError, match="no adapters to save"):
        save_adapters(tiny_edt(), tmp_path / "x.safetensors")
    # adapters of another task: the same keys and shapes, refused unless asked for
    other = inject(tiny_edt("denoise_30"), backend="reference")
    with pytest.raises(AdapterLoadError, match="built for task 'sr_2'.*built for 'denoise_30'"):
        load_adapters(other, path)
    assert load_adapters(other, path, check_task=False)["loaded"]
    ipt_path = tmp_path / "ipt.safetensors"
    save_adapters(inject(tiny_ipt(num_layers=1), backend="reference", hidden=8), ipt_path)
    with pytest.raises(AdapterLoadError, match="saved from a IPT"):
        load_adapters(m, ipt_path)
    # non-strict: loads what fits, still refuses shape mismatches
    small = inject(tiny_edt(depths=(2,), num_heads=(2,)), backend="reference")
    res = load_adapters(small, path, strict=False)
    assert res["unexpected"] and not res["missing"]
