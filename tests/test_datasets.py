"""Data sources, training patches, evaluation images and the resumable sharded sampler."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from adaptir_kernels.data import degradations as D
from adaptir_kernels.data.datasets import (
    DataError,
    EvalImages,
    Record,
    ShardedStream,
    TrainPatches,
    list_images,
    read_image,
    resolve_records,
    synthesize_patch,
)


def _photo(h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(xx / 7.0), 128 + 100 * np.cos(yy / 5.0), (xx * yy) % 256], -1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def _write(folder, name, img):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    Image.fromarray(img).save(path)
    return path


def test_folder_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(DataError, match="data folder not found: .*nope"):
        list_images(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=f"no images .* in folder {empty}"):
        resolve_records(str(empty))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        read_image(str(bad / "broken.png"))
    recs = resolve_records(str(bad))
    with pytest.raises(DataError, match="broken.png"):
        TrainPatches(recs, "denoise_30", patch_size=8)[0]


def test_pairs_and_list_file(tmp_path):
    gt = _photo(32, 40, 0)
    lq = D.bicubic_downscale(gt, 2)
    _write(tmp_path / "GT", "0001.png", gt)
    _write(tmp_path / "LQ", "0001x2.png", lq)
    recs = resolve_records(str(tmp_path))  # lq/ and gt/ subfolders are detected
    assert len(recs) == 1 and recs[0].lq.endswith("0001x2.png") and recs[0].gt.endswith("0001.png")
    assert resolve_records(str(tmp_path / "GT"), lq=str(tmp_path / "LQ"))[0].name == "0001"
    _write(tmp_path / "LQ", "0002.png", lq)
    with pytest.raises(DataError, match="no GT image .*0002.png"):
        resolve_records(str(tmp_path / "GT"), lq=str(tmp_path / "LQ"))

    lst = tmp_path / "pairs.txt"
    lst.write_text("# lq gt\nLQ/0001x2.png GT/0001.png\n\n")
    recs = resolve_records(str(lst))
    item = EvalImages(recs, "sr_2")[0]
    np.testing.assert_array_equal(item["lq"], lq)
    np.testing.assert_array_equal(item["gt"], gt)
    (tmp_path / "bad.txt").write_text("GT/missing.png\n")
    with pytest.raises(DataError, match=r"bad.txt:1: image not found: .*missing.png"):
        resolve_records(str(tmp_path / "bad.txt"))
    item = EvalImages([Record("x", gt, D.bicubic_downscale(gt, 4))], "sr_2")
    with pytest.raises(DataError, match="expected 16x20 for scale 2"):
        item[0]


def test_paired_task_needs_pairs(tmp_path):
    recs = [Record("a", _photo(32, 32, 1))]
    with pytest.raises(DataError, match="low_light.*paired"):
        TrainPatches(recs, "low_light")


@pytest.mark.parametrize("task", ["sr_4", "lr4_jpeg30", "sr_3", "jpeg_20"])
def test_patch_equals_crop_of_whole_degraded_image(task):
    t = D.get_task(task)
    gt = D.mod_crop(_photo(150, 230, 2), t.scale)
    whole = t.synthesize(gt)
    hl, wl = gt.shape[0] // t.scale, gt.shape[1] // t.scale
    for y, x in [(0, 0), (hl - 16, wl - 16), (7, 13), (hl // 2 - 3, 5)]:
        patch = synthesize_patch(gt, t, y, x, 16, None)
        np.testing.assert_array_equal(patch, whole[y:y + 16, x:x + 16])


def test_noise_is_quantised_per_stage():
    """Training patches of a denoising task are truncated to uint8 levels (AdaptIR's
    training data); its evaluation images keep the noisy values in float32."""
    gt = _photo(40, 44, 8)
    recs = [Record("a", gt)]
    ds = TrainPatches(recs, "denoise_30", patch_size=16, seed=2, augment=False)
    lq, clean = ds[0]
    assert lq.dtype == torch.float32 and torch.equal(lq, (lq * 255).round() / 255)  # on uint8 levels
    assert not torch.equal(lq, clean)
    patch = synthesize_patch(gt, D.get_task("denoise_30"), 3, 5, 16, D.rng_for(9))
    expect = D.add_gaussian_noise(np.ascontiguousarray(gt[3:19, 5:21]), 30, D.rng_for(9), quantize="truncate")
    assert patch.dtype == np.uint8
    np.testing.assert_array_equal(patch, expect)
    item = EvalImages(recs, "denoise_30", seed=1)[0]
    lq = item["lq"]
    assert lq.dtype == np.float32 and item["gt"].dtype == np.uint8
    assert lq.min() >= 0 and lq.max() <= 1 and (np.abs(lq * 255 - np.round(lq * 255)) > 1e-3).any()


def test_train_patches_shapes_determinism_and_augmentation():
    recs = [Record("a", _photo(100, 120, 3)), Record("b", _photo(90, 96, 4))]
    ds = TrainPatches(recs, "sr_2", patch_size=12, seed=5)
    lq, gt = ds[(1, 0, 3)]
    assert lq.shape == (3, 12, 12) and gt.shape == (3, 24, 24)
    assert 0 <= float(lq.min()) and float(lq.max()) <= 1
    lq2, gt2 = ds[(1, 0, 3)]
    assert (lq == lq2).all() and (gt == gt2).all()
    lq3, _ = ds[(1, 1, 3)]
    assert not (lq == lq3).all()
    # LQ is the bicubic x2 of GT; both got the same flips/rotation (a transpose changes
    # which pass rounds first, hence the tolerance of one grey level)
    for key in [(0, 0, 0), (0, 2, 1), (1, 4, 7)]:
        lq, gt = ds[key]
        g = (gt.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
        want = D.bicubic_downscale(g, 2)[2:-2, 2:-2]
        got = (lq.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)[2:-2, 2:-2]
        assert np.abs(got.astype(int) - want).max() <= 1
    # too small for a patch: found when the dataset is built, not when a worker draws it
    with pytest.raises(DataError, match=r"1 image\(s\) give an LQ image smaller than the 12-pixel patch: tiny \(10x10"):
        TrainPatches(recs + [Record("tiny", _photo(20, 20, 5))], "sr_2", patch_size=12)


def test_small_images_are_found_from_the_file_headers(tmp_path):
    for i, (h, w) in enumerate([(40, 40), (40, 22), (22, 50)]):
        _write(tmp_path / "gt", f"{i}.png", _photo(h, w, i))
    with pytest.raises(DataError, match=r"2 image\(s\) .* 12-pixel patch: .*1.png \(20x11 LQ\), .*2.png \(11x25 LQ\)"):
        TrainPatches(resolve_records(str(tmp_path / "gt")), "sr_2", patch_size=12)
    lq = tmp_path / "lq"
    _write(lq, "0.png", _photo(20, 20, 0))
    _write(lq, "1.png", _photo(20, 11, 1))
    _write(lq, "2.png", _photo(11, 25, 2))
    with pytest.raises(DataError, match=r"2 image\(s\)"):  # paired: the LQ files' own sizes
        TrainPatches(resolve_records(str(tmp_path / "gt"), lq=str(lq)), "sr_2", patch_size=12)
    assert len(TrainPatches(resolve_records(str(tmp_path / "gt")), "sr_2", patch_size=11)) == 3


def test_list_file_names_with_spaces_and_hashes(tmp_path):
    gt, lq = _photo(32, 40, 0), D.bicubic_downscale(_photo(32, 40, 0), 2)
    _write(tmp_path, "my photo.png", gt)
    _write(tmp_path, "shot#2.png", gt)
    _write(tmp_path, "low res.png", lq)
    (tmp_path / "gt.txt").write_text("# photos\nmy photo.png\nshot#2.png\n")
    assert [r.name for r in resolve_records(str(tmp_path / "gt.txt"))] == ["my photo", "shot#2"]
    (tmp_path / "pairs.txt").write_text("low res.png, my photo.png  # commas separate names with spaces\n")
    rec = resolve_records(str(tmp_path / "pairs.txt"))[0]
    assert rec.lq.endswith("low res.png") and rec.gt.endswith("my photo.png")


def test_eval_images_are_seeded_by_name():
    recs = [Record("a", _photo(33, 35, 6)), Record("b", _photo(40, 40, 7))]
    one = EvalImages(recs, "denoise_30", seed=1)
    two = EvalImages(recs[::-1], "denoise_30", seed=1)
    np.testing.assert_array_equal(one[0]["lq"], two[1]["lq"])
    sr = EvalImages(recs, "sr_4")[0]
    assert sr["gt"].shape == (32, 32, 3) and sr["lq"].shape == (8, 8, 3)


def test_sharded_stream_covers_epochs_and_resumes():
    n, world = 7, 2
    streams = [ShardedStream(n, seed=3, rank=r, world_size=world) for r in range(world)]
    per_rank = 4  # ceil(7 / 2)
    epoch0 = [s.key(i) for s in streams for i in range(per_rank)]
    assert {k[0] for k in epoch0} == set(range(n))  # every image, one padded duplicate
    assert len({k[2] for k in epoch0}) == per_rank * world  # slots unique
    assert [k[1] for k in epoch0] == [0] * 8
    it = iter(streams[1])
    first = [next(it) for _ in range(11)]
    resumed = iter(ShardedStream(n, seed=3, rank=1, world_size=world, start=5))
    assert [next(resumed) for _ in range(6)] == first[5:]
    assert streams[0].key(per_rank)[1] == 1  # next epoch
    other = ShardedStream(n, seed=4)
    assert [other.key(i)[0] for i in range(n)] != [ShardedStream(n, seed=3).key(i)[0] for i in range(n)]
