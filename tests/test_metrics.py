"""PSNR / SSIM against scikit-image on the same arrays, and the 8-bit / Y / crop conventions."""

import numpy as np
import pytest
import torch

skimage_metrics = pytest.importorskip("skimage.metrics")
skimage_color = pytest.importorskip("skimage.color")

from adaptir_kernels import metrics as M  # noqa: E402


def _pair(shape=(41, 53, 3), seed=0, noise=12.0):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 256, shape).astype(np.uint8)
    gt = np.clip(gt.astype(float) * 0.3 + 90 + 40 * np.sin(np.arange(shape[1]) / 5.0)[None, :, None], 0, 255)
    gt = gt.astype(np.uint8)
    out = np.clip(np.round(gt + rng.normal(0, noise, shape)), 0, 255).astype(np.uint8)
    return out, gt


def _sk_ssim(a, b, channel_axis):
    return skimage_metrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
        channel_axis=channel_axis)


def test_rgb_psnr_ssim_match_skimage():
    a, b = _pair()
    assert M.calculate_psnr(a, b) == pytest.approx(skimage_metrics.peak_signal_noise_ratio(b, a, data_range=255), abs=1e-10)
    assert M.calculate_ssim(a, b) == pytest.approx(_sk_ssim(a.astype(float), b.astype(float), -1), abs=1e-10)


def test_y_channel_with_border_crop_matches_skimage():
    a, b = _pair(seed=1)
    ya, yb = M.rgb_to_y(a), M.rgb_to_y(b)
    # MATLAB / BT.601 luma as scikit-image defines it (no rounding)
    np.testing.assert_allclose(ya, skimage_color.rgb2ycbcr(a)[..., 0], atol=1e-9)
    c = 4
    want_psnr = skimage_metrics.peak_signal_noise_ratio(yb[c:-c, c:-c], ya[c:-c, c:-c], data_range=255)
    want_ssim = _sk_ssim(ya[c:-c, c:-c], yb[c:-c, c:-c], None)
    assert M.calculate_psnr(a, b, crop_border=c, y_channel=True) == pytest.approx(want_psnr, abs=1e-10)
    assert M.calculate_ssim(a, b, crop_border=c, y_channel=True) == pytest.approx(want_ssim, abs=1e-10)


def test_float_images_are_clipped_and_rounded_to_8_bits():
    a, b = _pair(seed=2)
    # a float tensor in [0, 1] with sub-quantum offsets and out-of-range values
    t = torch.from_numpy(a.transpose(2, 0, 1)).double() / 255.0 + 0.3 / 255.0
    t[:, 0, 0] = 1.7
    t[:, 0, 1] = -0.4
    q = a.copy()
    q[0, 0], q[0, 1] = 255, 0
    assert M.calculate_psnr(t, b) == pytest.approx(M.calculate_psnr(q, b), abs=1e-12)
    assert M.calculate_ssim(t[None], b) == pytest.approx(M.calculate_ssim(q, b), abs=1e-12)
    np.testing.assert_array_equal(M.to_uint8(t), q)


def test_identical_and_score_conventions():
    a, b = _pair(seed=3)
    assert M.calculate_psnr(a, a) == float("inf")
    assert M.calculate_ssim(a, a) == pytest.approx(1.0)
    p, s = M.score(a, b, "sr_4")
    assert p == pytest.approx(M.calculate_psnr(a, b, 4, True)) and s == pytest.approx(M.calculate_ssim(a, b, 4, True))
    p, s = M.score(a, b, "denoise_30")
    assert p == pytest.approx(M.calculate_psnr(a, b)) and s == pytest.approx(M.calculate_ssim(a, b))
    with pytest.raises(ValueError, match="shapes differ"):
        M.calculate_psnr(a, b[:-1])
