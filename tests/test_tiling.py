"""Tiled inference: coverage, exact agreement with whole-image inference for models whose
receptive field fits in the tile margin, memory bounds and the backbone helpers."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from torch import nn

from adaptir_kernels.backbones import EDT, IPT
from adaptir_kernels.tiling import restore, tile_starts, tiled_forward


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run tiny ops on a shared machine: one intra-op thread avoids
    oversubscription stalls; the previous setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Pointwise(nn.Module):
    """Per-pixel colour mix, then nearest upsampling: tiles must reproduce it exactly."""

    def __init__(self, scale=2):
        super().__init__()
        self.mix = nn.Conv2d(3, 3, 1)
        self.up = nn.Upsample(scale_factor=scale, mode="nearest") if scale > 1 else nn.Identity()
        self.scale = scale

    def forward(self, x):
        return self.up(self.mix(x))


class LocalConv(nn.Module):
    """Two 3x3 convs (receptive-field radius 2) and a pixel-shuffle x2."""

    radius = 2

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 12, 3, padding=1))
        self.up = nn.PixelShuffle(2)
        self.scale = 2

    def forward(self, x):
        return self.up(self.body(x))


@pytest.mark.parametrize("length,tile,stride", [(10, 4, 2), (48, 48, 12), (49, 48, 12), (100, 48, 12), (7, 10, 3)])
def test_tile_starts_cover(length, tile, stride):
    starts = tile_starts(length, tile, stride)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert starts[-1] + min(tile, length) == length
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("shape", [(1, 3, 20, 20), (2, 3, 17, 29), (1, 3, 5, 9)])
def test_pointwise_model_tiles_exactly(shape):
    torch.manual_seed(0)
    m = Pointwise(2)
    x = torch.rand(*shape)
    with torch.no_grad():
        whole = m(x)
        for margin, stride in [(0, None), (2, 3), (3, 1)]:
            got = tiled_forward(m, x, tile=8, margin=margin, stride=stride, scale=2, batch_size=5, progress=False)
            torch.testing.assert_close(got, whole, rtol=1e-6, atol=1e-6)


def test_receptive_field_limited_model_tiles_exactly():
    torch.manual_seed(0)
    m = LocalConv()
    x = torch.rand(2, 3, 37, 30)
    with torch.no_grad():
        whole = m(x)
        for tile, stride in [(12, None), (16, 5), ((10, 14), (6, 4))]:
            got = tiled_forward(m, x, tile=tile, margin=m.radius, stride=stride, scale=2, batch_size=3)
            torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-6)
        # a margin below the receptive field leaves seams: the test can tell the difference
        bad = tiled_forward(m, x, tile=12, margin=0, scale=2)
        assert (bad - whole).abs().max() > 1e-3


def test_memory_bound_and_batches():
    seen = []

    def fn(t):
        seen.append(t.shape[0])
        return t.clone()

    x = torch.rand(2, 3, 40, 33)
    y = tiled_forward(fn, x, tile=8, margin=1, batch_size=6, progress=False)
    assert torch.equal(y, x)
    assert max(seen) <= 6 and all(s % 2 == 0 for s in seen)  # whole images of the batch per tile
    n_tiles = len(tile_starts(40, 8, 6)) * len(tile_starts(33, 8, 6))
    assert sum(seen) == 2 * n_tiles


def test_argument_checks():
    x = torch.rand(1, 3, 20, 20)
    with pytest.raises(ValueError, match="stride"):
        tiled_forward(lambda t: t, x, tile=8, margin=2, stride=5)
    with pytest.raises(ValueError, match="margin"):
        tiled_forward(lambda t: t, x, tile=8, margin=4)
    with pytest.raises(ValueError, match="expected"):
        tiled_forward(lambda t: t, x, tile=8, scale=2)


def test_progress_bar():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        tiled_forward(lambda t: t, torch.rand(1, 3, 16, 16), tile=4, progress=True, desc="unit-test")
    assert "unit-test" in err.getvalue()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        tiled_forward(lambda t: t, torch.rand(1, 3, 16, 16), tile=4, progress=None)  # 16 tiles: quiet
    assert err.getvalue() == ""


def test_restore_ipt_chops_like_forward():
    torch.manual_seed(0)
    m = IPT("sr_2", n_feats=8, patch_size=12, num_heads=2, num_layers=1).train()
    x = torch.rand(1, 3, 20, 27)
    y = restore(m, x)
    assert m.training  # mode restored
    assert y.shape == (1, 3, 40, 54)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(y, m(x))
        # one tile exactly: the chop is the patch forward
        p = torch.rand(2, 3, 12, 12)
        torch.testing.assert_close(restore(m, p), m.forward_patch(p))
    with pytest.raises(ValueError, match="tiles only"):
        restore(m, x, tile=16)
    # a wider margin alone: the stride shrinks to what the margin leaves (12 - 2*5 = 2)
    with torch.no_grad():
        torch.testing.assert_close(restore(m, x, margin=5),
                                   tiled_forward(m.forward_patch, x, tile=12, margin=5, stride=2, scale=2))


def test_restore_edt_whole_and_tiled():
    torch.manual_seed(0)
    m = EDT("sr_2", embed_dim=56, depths=(2,), num_heads=(2,), window_size=(2, 4), num_feat=8, img_size=8,
            drop_path_rate=0.0)
    x = torch.rand(1, 3, 21, 18)
    whole = restore(m, x)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(whole, m(x))
    tiled = restore(m, x, tile=12, margin=4)
    assert tiled.shape == whole.shape == (1, 3, 42, 36)
    assert torch.isfinite(tiled).all()
    # an image within one tile: exactly the whole-image result (not padded to the tile)
    for h, w in ((3, 3), (6, 7), (12, 5)):
        small = torch.rand(1, 3, h, w)
        torch.testing.assert_close(restore(m, small, tile=12, margin=2), restore(m, small), rtol=0, atol=0)
    with pytest.raises(ValueError, match="tile= is required"):
        restore(Pointwise(), x)
    pw = Pointwise()
    with torch.no_grad():
        torch.testing.assert_close(restore(pw, x, tile=8, margin=1), pw(x))
