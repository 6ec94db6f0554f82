"""IPT / EDT backbones: published key sets and shapes, any-size inference, attention
semantics, and strict pre-trained weight loading."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from adaptir_kernels.adapters import inject, trainable_parameters
from adaptir_kernels.backbones import EDT, IPT, IPT_TASK_MAP, CheckpointMismatchError, load_pretrained
from adaptir_kernels.backbones.common import pad_symmetric
from adaptir_kernels.backbones.edt import CSwinTransformerBlock, _cached_mask, shifted_window_mask

DATA = os.path.join(os.path.dirname(__file__), "data")
EDT_JSON_TASKS = sorted(f[4:-5] for f in os.listdir(DATA) if f.startswith("edt_") and f.endswith(".json"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run tiny ops on a shared machine: one intra-op thread avoids
    oversubscription stalls; the previous setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def published(name):
    with open(os.path.join(DATA, name)) as f:
        return json.load(f)


def key_shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def diff_report(ours, ref):
    missing = sorted(set(ref) - set(ours))
    extra = sorted(set(ours) - set(ref))
    shapes = [(k, ours[k], ref[k]) for k in ref if k in ours and ours[k] != ref[k]]
    return f"missing {missing[:5]} ({len(missing)}), unexpected {extra[:5]} ({len(extra)}), shapes {shapes[:5]}"


def tiny_ipt(task="sr_2", **kw):
    cfg = dict(n_feats=8, patch_size=12, num_heads=2, num_layers=2)
    cfg.update(kw)
    return IPT(task, **cfg)


def tiny_edt(task="sr_2", **kw):
    cfg = dict(embed_dim=56, depths=(2,), num_heads=(2,), window_size=(2, 4), num_feat=8, img_size=8,
               drop_path_rate=0.0)
    cfg.update(kw)
    return EDT(task, **cfg)


# -- published layouts ----------------------------------------------------------------


@pytest.fixture(scope="module")
def ipt_published():
    return published("ipt.json")


@pytest.mark.parametrize("task", ["sr_2", "low_light"])  # the key set does not depend on the task
def test_ipt_keys_shapes_and_counts_match_published(task, ipt_published):
    with torch.device("meta"):
        model = inject(IPT(task), backend="reference")
    ours, ref = key_shapes(model), ipt_published["keys"]
    assert ours == ref, diff_report(ours, ref)
    assert len(ours) == ipt_published["num_keys"]
    rep = trainable_parameters(model)
    assert rep.adapter_parameters == ipt_published["adapter_parameters"] == 697_656
    assert (rep.num_adapters, rep.per_adapter, rep.trainable) == (24, 29_069, 697_656)


@pytest.mark.parametrize("task", EDT_JSON_TASKS)
def test_edt_keys_shapes_and_counts_match_published(task):
    ref = published(f"edt_{task}.json")
    with torch.device("meta"):
        model = inject(EDT(task), backend="reference")
    ours = key_shapes(model)
    assert ours == ref["keys"], diff_report(ours, ref["keys"])
    assert len(ours) == ref["num_keys"]
    rep = trainable_parameters(model)
    assert rep.adapter_parameters == ref["adapter_parameters"] == 173_412
    assert (rep.num_adapters, rep.per_adapter, rep.trainable) == (36, 4_817, 173_412)


def test_backbones_without_adapters_match_pretrained_layout(ipt_published):
    """Without adapters the key sets are those of IPT_pretrain.pt / the EDT checkpoints
    (published AdaptIR keys minus the adapters), buffers included."""
    with torch.device("meta"):
        ipt, edt = IPT("sr_2"), EDT("sr_2")
    base = {k: v for k, v in ipt_published["keys"].items() if ".adaptir." not in k}
    assert key_shapes(ipt) == base
    assert "body.position_encoding.position_ids" in base
    ref = {k: v for k, v in published("edt_sr_2.json")["keys"].items() if ".adaptir." not in k}
    assert key_shapes(edt) == ref
    masks = [k for k in ref if k.endswith("attn_mask_h")]
    assert len(masks) == 18 and all(ref[k] == [16, 144, 144] for k in masks)


def test_edt_multitask_heads():
    with torch.device("meta"):
        m = EDT("sr_2", extra_tasks=("sr_3", "sr_4"))
    keys = key_shapes(m)
    for s in (2, 3, 4):
        assert f"head_sr_x{s}.0.weight" in keys and f"tail_sr_x{s}.3.weight" in keys
    with torch.device("meta"):
        assert "head_dr_H.0.weight" in key_shapes(EDT("derainL"))
    with pytest.raises(ValueError):
        EDT("low_light")


# -- forward on any size --------------------------------------------------------------


@pytest.mark.parametrize("task,scale", [("sr_2", 2), ("sr_3", 3), ("denoise_30", 1)])
def test_ipt_any_size_eval(task, scale):
    torch.manual_seed(0)
    m = tiny_ipt(task).eval()
    with torch.no_grad():
        for h, w in [(12, 12), (30, 17), (5, 7), (12, 25)]:
            y = m(torch.rand(2, 3, h, w))
            assert y.shape == (2, 3, h * scale, w * scale)
            assert torch.isfinite(y).all()
        x = torch.rand(1, 3, 12, 12)
        assert torch.equal(m(x), m.forward_patch(x))


def test_ipt_training_needs_patches():
    m = tiny_ipt().train()
    assert m(torch.rand(2, 3, 12, 12)).shape == (2, 3, 24, 24)
    with pytest.raises(ValueError, match="patches"):
        m(torch.rand(2, 3, 13, 12))


def test_ipt_task_map():
    m = tiny_ipt("lr4_jpeg30")
    assert (m.task_idx, m.scale) == (2, 4)
    for task, idx in IPT_TASK_MAP.items():
        m.set_task(task)
        assert m.task_idx == idx
    with pytest.raises(ValueError):
        m.set_task("sr_8")


@pytest.mark.parametrize("task,scale", [("sr_2", 2), ("sr_3", 3), ("sr_4", 4), ("denoise_50", 1), ("derainH", 1)])
def test_edt_any_size(task, scale):
    torch.manual_seed(0)
    m = tiny_edt(task)
    for train, sizes in ((True, [(13, 7)]), (False, [(8, 8), (1, 5), (17, 9)])):
        m.train(train)
        with torch.set_grad_enabled(train):
            for h, w in sizes:
                y = m(torch.rand(1, 3, h, w))
                assert y.shape == (1, 3, h * scale, w * scale)
                assert torch.isfinite(y).all()


def test_edt_pads_by_mirroring():
    torch.manual_seed(0)
    m = tiny_edt("sr_2").eval()
    x = torch.rand(1, 3, 6, 7)
    xp = pad_symmetric(x, 8, 8)
    # mirrored with the edge repeated, as concatenating the flipped image does
    assert torch.equal(xp[..., 6:, :7], x.flip(-2)[..., :2, :])
    assert torch.equal(xp[..., :6, 7:], x.flip(-1)[..., :, :1])
    with torch.no_grad():
        assert torch.equal(m(x), m.forward_core(xp)[..., :12, :14])
    # padding larger than the image repeats the mirror pattern
    assert pad_symmetric(torch.arange(3.0).view(1, 1, 1, 3), 1, 8).flatten().tolist() == [0, 1, 2, 2, 1, 0, 0, 1]


def test_edt_masks_stored_and_recomputed():
    torch.manual_seed(0)
    m = tiny_edt()
    blocks = [b for b in m.modules() if isinstance(b, CSwinTransformerBlock)]
    assert blocks[0].attn_mask_h is None and blocks[1].attn_mask_h is not None
    b = blocks[1]
    for i, buf in enumerate((b.attn_mask_h, b.attn_mask_v)):
        assert torch.equal(buf, _cached_mask(8, 8, b.window_size, b.shift_size, i, buf.device))
    mk = shifted_window_mask(8, 12, (2, 4), (1, 2), 0)
    assert mk.shape == (12, 8, 8) and set(mk.unique().tolist()) <= {0.0, -100.0}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_edt_half_precision_at_other_sizes(dtype):
    # A model converted with .to(dtype) at sizes other than its own: the recomputed shifted
    # window masks must be in the model's dtype, as the stored ones are.
    if dtype == torch.float16 and not _cpu_half_matmul():
        pytest.skip("this torch build has no float16 matmul on the CPU")
    torch.manual_seed(0)
    ref = tiny_edt("sr_2").eval()
    m = tiny_edt("sr_2").eval()
    m.load_state_dict(ref.state_dict())
    m.to(dtype)
    b = [b for b in m.modules() if isinstance(b, CSwinTransformerBlock)][1]
    assert b.attn_mask_h.dtype == dtype
    for h, w in ((8, 8), (16, 12), (5, 9)):
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            y = m(x.to(dtype))
            y32 = ref(x)
        assert y.dtype == dtype and y.shape == (1, 3, 2 * h, 2 * w)
        assert ((y.float() - y32).norm() / y32.norm()).item() < 5e-2
    assert _cached_mask(16, 12, b.window_size, b.shift_size, 0, b.attn_mask_h.device, dtype).dtype == dtype


def test_edt_mask_cache_is_bounded(monkeypatch):
    from adaptir_kernels.backbones import edt

    monkeypatch.setattr(edt, "_MASK_CACHE", type(edt._MASK_CACHE)())
    one = edt._cached_mask(8, 8, (2, 4), (1, 2), 0, "cpu")
    monkeypatch.setattr(edt, "_MASK_CACHE_BYTES", 3 * one.numel() * one.element_size())
    edt._cached_mask(8, 8, (2, 4), (1, 2), 1, "cpu")
    assert edt._cached_mask(8, 8, (2, 4), (1, 2), 0, "cpu") is one  # a hit, now the newest
    edt._cached_mask(8, 8, (2, 4), (1, 2), 0, "cpu", torch.float64)  # over the budget: the oldest goes
    keys = list(edt._MASK_CACHE)
    assert len(keys) == 2 and keys[0][4] == 0 and keys[0][6] == torch.float32 and keys[1][6] == torch.float64
    big = edt._cached_mask(16, 16, (2, 4), (1, 2), 0, "cpu")  # larger than the budget alone: kept alone
    assert list(edt._MASK_CACHE.values()) == [big]


def _cpu_half_matmul() -> bool:
    try:
        torch.ones(2, 2, dtype=torch.float16) @ torch.ones(2, 2, dtype=torch.float16)
        return True
    except RuntimeError:
        return False


def test_edt_window_attention_semantics():
    """With one window covering the whole (square) image and no shift, each channel half
    is plain multi-head attention over all positions plus a depthwise 3x3 conv of v."""
    torch.manual_seed(0)
    C, heads, S = 8, 2, 4
    blk = CSwinTransformerBlock(C, (S, S), heads, (S, S), None, mlp_ratio=2.0)
    x = torch.randn(2, S * S, C)
    with torch.no_grad():
        out = blk(x, (S, S))
        t = x.view(2, S, S, C)
        qkv = blk.qkv(blk.norm1(t))
        q, k, v = qkv.split(C, dim=-1)
        halves = []
        for i in range(2):
            sl = slice(i * C // 2, (i + 1) * C // 2)
            d = C // 2 // heads
            qh = q[..., sl].reshape(2, S * S, heads, d).transpose(1, 2)
            kh = k[..., sl].reshape(2, S * S, heads, d).transpose(1, 2)
            vi = v[..., sl]
            vh = vi.reshape(2, S * S, heads, d).transpose(1, 2)
            att = torch.softmax(qh @ kh.transpose(-1, -2) * d ** -0.5, dim=-1) @ vh
            att = att.transpose(1, 2).reshape(2, S, S, C // 2)
            lepe = F.conv2d(vi.permute(0, 3, 1, 2), blk.attns[i].lepe.weight, blk.attns[i].lepe.bias,
                            padding=1, groups=C // 2).permute(0, 2, 3, 1)
            halves.append(att + lepe)
        t = t + blk.proj(torch.cat(halves, dim=-1))
        expect = t + blk.mlp(blk.norm2(t))
    torch.testing.assert_close(out.view(2, S, S, C), expect, rtol=1e-5, atol=1e-5)


# -- loading published-style checkpoints ------------------------------------------------


def test_load_pretrained_edt_multitask_checkpoint(tmp_path):
    torch.manual_seed(0)
    src = tiny_edt("sr_2", extra_tasks=("sr_3", "sr_4"))
    path = tmp_path / "SRx2x3x4_tiny.pth"
    torch.save(src.state_dict(), path)

    # the model holding every head loads it with no exception at all
    full = tiny_edt("sr_2", extra_tasks=("sr_3", "sr_4"))
    assert load_pretrained(full, path) == {"skipped": [], "missing_adapters": []}
    full.load_state_dict(torch.load(path), strict=True)

    # a single-task model skips only the other tasks' heads/tails, checks everything else
    one = inject(tiny_edt("sr_3"), backend="reference")
    res = load_pretrained(one, path)
    assert res["skipped"] and all(k.startswith(("head_sr_x2", "tail_sr_x2", "head_sr_x4", "tail_sr_x4"))
                                  for k in res["skipped"])
    assert len(res["missing_adapters"]) == 2 * 27
    for k, v in one.state_dict().items():
        if ".adaptir." not in k:
            assert torch.equal(v, src.state_dict()[k]), k
    with pytest.raises(CheckpointMismatchError, match="missing"):
        load_pretrained(one, path, allow_missing_adapters=False)


def test_load_pretrained_reports_mismatches(tmp_path):
    torch.manual_seed(0)
    sd = tiny_ipt().state_dict()
    model = tiny_ipt()
    assert load_pretrained(model, {"state_dict": {"module." + k: v for k, v in sd.items()}})["skipped"] == []
    bad = dict(sd)
    bad["body.linear_encoding.bias"] = torch.zeros(3)
    bad["body.bogus"] = torch.zeros(1)
    del bad["tail.0.1.bias"]
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained(model, bad)
    msg = str(err.value)
    assert "tail.0.1.bias" in msg and "body.bogus" in msg and "body.linear_encoding.bias" in msg
    with pytest.raises(FileNotFoundError):
        load_pretrained(model, tmp_path / "nope.pt")
