"""Degradations: MATLAB bicubic against its definition, noise, JPEG, hybrids, task table."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from adaptir_kernels.data import degradations as D


# -- an independent, slow statement of MATLAB's imresize(x, 1/f, 'bicubic') ----------------
def keys_cubic(t: float) -> float:
    a = -0.5
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def reflect(j: int, n: int) -> int:
    """Symmetric padding with the edge sample repeated: ... x1 x0 | x0 x1 ... x[n-1] | x[n-1] ..."""
    period = 2 * n
    j %= period
    return j if j < n else period - 1 - j


def weights_1d(n_in: int, n_out: int, scale: float):
    """Per output sample: [(input index, weight)] from the definition (0-based coordinates)."""
    stretch = min(scale, 1.0)  # downscaling widens the kernel by 1/scale
    rows = []
    for i in range(n_out):
        centre = (i + 0.5) / scale - 0.5
        reach = 2.0 / stretch
        taps = range(math.floor(centre - reach), math.ceil(centre + reach) + 1)
        w = [keys_cubic((centre - j) * stretch) for j in taps]
        total = sum(w)
        rows.append([(reflect(j, n_in), wj / total) for j, wj in zip(taps, w)])
    return rows


def slow_resize_dim(x: np.ndarray, axis: int, n_out: int, scale: float) -> np.ndarray:
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    out = np.zeros((n_out,) + x.shape[1:])
    for i, taps in enumerate(weights_1d(x.shape[0], n_out, scale)):
        for j, w in taps:
            out[i] += w * x[j]
    return np.moveaxis(out, 0, axis)


def matlab_uint8(y: np.ndarray) -> np.ndarray:
    """MATLAB's conversion to uint8: saturate, round halves away from zero."""
    return np.floor(np.clip(y, 0, 255) + 0.5)


def slow_imresize(x: np.ndarray, factor: int, round_each_pass: bool = False, rounding=matlab_uint8) -> np.ndarray:
    h, w = x.shape[:2]
    oh, ow = math.ceil(h / factor), math.ceil(w / factor)
    y = slow_resize_dim(x, 0, oh, 1.0 / factor)
    if round_each_pass:
        y = rounding(y)
    y = slow_resize_dim(y, 1, ow, 1.0 / factor)
    if round_each_pass:
        y = rounding(y)
    return y


@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("shape", [(24, 36, 3), (25, 19), (13, 29, 3)])
def test_bicubic_matches_definition_float(factor, shape):
    rng = np.random.default_rng(factor * 100 + shape[0])
    img = rng.random(shape) * 255.0
    got = D.bicubic_downscale(img, factor)
    want = slow_imresize(img, factor)
    assert got.shape == want.shape
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_bicubic_uint8_rounds_after_each_pass(factor):
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (30, 26, 3), dtype=np.uint8)
    got = D.bicubic_downscale(img, factor)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, slow_imresize(img, factor, round_each_pass=True).astype(np.uint8))
    # a gradient: at x2 and x4 most values fall exactly on a half, which MATLAB rounds up
    yy, xx = np.mgrid[0:48, 0:36]
    grad = np.stack([xx * 7 % 256, yy * 5 % 256, (xx + yy) * 3 % 256], -1).astype(np.uint8)
    got = D.bicubic_downscale(grad, factor)
    np.testing.assert_array_equal(got, slow_imresize(grad, factor, round_each_pass=True).astype(np.uint8))
    if factor != 3:
        to_even = slow_imresize(grad, factor, round_each_pass=True, rounding=lambda y: np.clip(np.round(y), 0, 255))
        assert (got != to_even).any()  # the test tells the two roundings apart


def test_bicubic_upscale_matches_definition():
    rng = np.random.default_rng(3)
    img = rng.random((7, 9)) * 255
    got = D.imresize(img, scale=2.0)
    want = slow_resize_dim(slow_resize_dim(img, 0, 14, 2.0), 1, 18, 2.0)
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_bicubic_preserves_constants_and_sizes():
    img = np.full((40, 28, 3), 77, np.uint8)
    for f in (2, 3, 4):
        out = D.bicubic_downscale(img, f)
        assert out.shape == (math.ceil(40 / f), math.ceil(28 / f), 3)
        assert (out == 77).all()
    with pytest.raises(ValueError):
        D.bicubic_downscale(img, 0)


def test_noise_is_seeded_clipped_and_quantised():
    img = np.full((64, 64, 3), 128, np.uint8)
    a = D.add_gaussian_noise(img, 30, D.rng_for(1, "x"))
    b = D.add_gaussian_noise(img, 30, D.rng_for(1, "x"))
    c = D.add_gaussian_noise(img, 30, D.rng_for(2, "x"))
    assert a.dtype == np.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert abs(a.astype(float).std() - 30) < 1.5
    # the noise itself: round(x + sigma * z) clipped, with z from the same generator
    z = D.rng_for(1, "x").standard_normal(img.shape)
    np.testing.assert_array_equal(a, np.clip(np.round(128 + 30 * z), 0, 255))
    white = D.add_gaussian_noise(np.full((8, 8, 3), 250, np.uint8), 50, D.rng_for(0))
    assert white.max() == 255  # clipped, not wrapped
    with pytest.raises(TypeError):
        D.add_gaussian_noise(img.astype(np.float32), 30, D.rng_for(0))
    # AdaptIR's protocol: clip, then numpy's cast to uint8 (truncation), or kept in float
    clipped = np.clip(128 + 30 * z, 0, 255)
    t = D.add_gaussian_noise(img, 30, D.rng_for(1, "x"), quantize="truncate")
    assert t.dtype == np.uint8
    np.testing.assert_array_equal(t, np.floor(clipped))
    f = D.add_gaussian_noise(img, 30, D.rng_for(1, "x"), quantize="none")
    assert f.dtype == np.float32  # float images are in [0, 1]
    np.testing.assert_array_equal(f, (clipped / 255).astype(np.float32))
    assert f.min() >= 0 and f.max() <= 1 and (f * 255 - np.round(f * 255) > 1e-3).any()
    # truncation lowers the image by half a level on average
    assert 0.4 < (a.astype(float) - t).mean() < 0.6
    with pytest.raises(ValueError, match="quantize must be one of"):
        D.add_gaussian_noise(img, 30, D.rng_for(0), quantize="floor")


def test_noise_tasks_follow_adaptir_protocol():
    """AdaptIR truncates noisy training patches and lr4_noise30's test images to uint8,
    and keeps its denoising test images in float."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (32, 24, 3), dtype=np.uint8)
    for name in ("denoise_30", "denoise_50", "denoise_17"):
        task = D.get_task(name)
        sigma = task.noise_sigma
        np.testing.assert_array_equal(task.synthesize(img, D.rng_for(4), stage="train"),
                                      D.add_gaussian_noise(img, sigma, D.rng_for(4), quantize="truncate"))
        ev = D.degrade(img, name, D.rng_for(4))
        assert ev.dtype == np.float32
        np.testing.assert_array_equal(ev, D.add_gaussian_noise(img, sigma, D.rng_for(4), quantize="none"))
    lr = D.bicubic_downscale(img, 4)
    for stage in ("train", "eval"):
        np.testing.assert_array_equal(D.degrade(img, "lr4_noise30", D.rng_for(5), stage=stage),
                                      D.add_gaussian_noise(lr, 30, D.rng_for(5), quantize="truncate"))
    # tasks without noise do not depend on the stage
    for name in ("sr_2", "lr4_jpeg30", "jpeg_20"):
        np.testing.assert_array_equal(D.degrade(img[:32, :24], name, D.rng_for(1), stage="train"),
                                      D.degrade(img[:32, :24], name, D.rng_for(1)))
    with pytest.raises(ValueError, match="stage must be 'train' or 'eval'"):
        D.degrade(img, "denoise_30", D.rng_for(0), stage="test")
    with pytest.raises(ValueError, match="noise_eval must be one of"):
        D.Task("mine", noise_sigma=10, noise_eval="floor")


def test_jpeg_is_pillow_and_quality_ordered():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:80]
    img = np.stack([(xx * 3) % 256, (yy * 4) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    out = D.jpeg_compress(img, 30)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=30)
    np.testing.assert_array_equal(out, np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    err = {q: np.abs(D.jpeg_compress(img, q).astype(float) - img).mean() for q in (10, 30, 90)}
    assert err[10] > err[30] > err[90] > 0
    np.testing.assert_array_equal(D.jpeg_compress(img, 30), out)


def test_hybrids_compose_bicubic_then_noise_or_jpeg():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    lr = D.bicubic_downscale(img, 4)
    np.testing.assert_array_equal(
        D.degrade(img, "lr4_noise30", D.rng_for(5)), D.add_gaussian_noise(lr, 30, D.rng_for(5), quantize="truncate"))
    np.testing.assert_array_equal(D.lr4_noise30(img, D.rng_for(5)), D.degrade(img, "lr4_noise30", D.rng_for(5)))
    # AdaptIR's JPEG stage: OpenCV's encoder given an RGB array, i.e. the JPEG of the B, G, R image
    lq = D.degrade(img, "lr4_jpeg30")
    np.testing.assert_array_equal(lq, D.jpeg_compress(np.ascontiguousarray(lr[..., ::-1]), 30)[..., ::-1])
    np.testing.assert_array_equal(lq, D.jpeg_compress(lr, 30, reverse_channels=True))
    np.testing.assert_array_equal(lq, D.lr4_jpeg30(img))
    assert (lq != D.jpeg_compress(lr, 30)).any()
    assert lq.shape == (16, 12, 3)
    # jpeg_<q> tasks compress the RGB image itself
    np.testing.assert_array_equal(D.degrade(lr, "jpeg_30"), D.jpeg_compress(lr, 30))


def test_task_table():
    assert D.get_task("sr_3").scale == 3 and D.get_task("sr_3").crop_border == 3
    assert D.get_task("sr_3").y_channel
    assert not D.get_task("denoise_50").y_channel and D.get_task("denoise_50").crop_border == 0
    assert D.get_task("lr4_noise30").scale == 4 and D.get_task("lr4_noise30").crop_border == 4
    assert not D.get_task("low_light").y_channel
    assert D.get_task("jpeg_25").jpeg_quality == 25
    with pytest.raises(ValueError, match="unknown task 'deblur'"):
        D.get_task("deblur")
    img = np.zeros((16, 16, 3), np.uint8)
    for name in ("low_light", "derainH"):
        with pytest.raises(ValueError, match="paired"):
            D.degrade(img, name)
    with pytest.raises(ValueError, match="multiple of the task scale"):
        D.degrade(np.zeros((15, 16, 3), np.uint8), "sr_2")
    with pytest.raises(ValueError, match="Generator"):
        D.degrade(img, "denoise_30")
