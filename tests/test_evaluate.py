"""`adaptir eval` and `adaptir restore` on a tiny folder with a tiny fine-tuned model."""

import argparse
import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from adaptir_kernels import cli
from adaptir_kernels.data.degradations import bicubic_downscale
from adaptir_kernels.metrics import calculate_psnr, calculate_ssim
from adaptir_kernels.train import build_parser, finetune

TINY_EDT = json.dumps(dict(embed_dim=12, depths=[1], num_heads=[2], window_size=[4, 8], num_feat=4, depth=1,
                           img_size=16))
TINY_ADAPTER = json.dumps(dict(hidden=4, ci_hidden=1))


def _image(h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 90 * np.sin(xx / 4.0 + seed), 128 + 90 * np.cos(yy / 3.0), (xx * 5 + yy) % 256], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    gt = root / "gt"
    gt.mkdir()
    for i, (h, w) in enumerate([(34, 40), (32, 29)]):  # odd sizes: mod-crop to the scale
        Image.fromarray(_image(h, w, i)).save(gt / f"im{i}.png")
    args = build_parser(argparse.ArgumentParser()).parse_args([
        "--backbone", "edt", "--task", "sr_2", "--data", str(gt), "--out", str(root / "run"),
        "--backbone-config", TINY_EDT, "--adapter-config", TINY_ADAPTER, "--patch-size", "8",
        "--batch-size", "2", "--workers", "0", "--iters", "2", "--lr", "1e-3", "--quiet"])
    finetune(args)
    return root


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_eval_on_a_tiny_folder(tiny_run, capsys):
    root = tiny_run
    out_csv, saved = root / "scores.csv", root / "restored"
    rc = cli.main(["eval", "--run", str(root / "run"), "--data", str(root / "gt"), "--csv", str(out_csv),
                   "--save-images", str(saved)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "mean" in printed and "Y channel" in printed and "border 2 px" in printed
    rows = _read_csv(out_csv)
    assert [r["name"] for r in rows] == ["im0", "im1"]
    assert (int(rows[1]["height"]), int(rows[1]["width"])) == (32, 28)
    for r in rows:
        restored = np.asarray(Image.open(saved / f"{r['name']}.png"))
        gt = np.asarray(Image.open(root / "gt" / f"{r['name']}.png"))[: restored.shape[0], : restored.shape[1]]
        assert float(r["psnr"]) == pytest.approx(calculate_psnr(restored, gt, 2, True), abs=1e-5)
        assert float(r["ssim"]) == pytest.approx(calculate_ssim(restored, gt, 2, True), abs=1e-5)
        assert np.isfinite(float(r["input_psnr"]))


def test_eval_with_explicit_model_flags_on_paired_folders(tiny_run):
    root = tiny_run
    paired = root / "paired"
    (paired / "lq").mkdir(parents=True, exist_ok=True)
    (paired / "gt").mkdir(exist_ok=True)
    for name in ("im0", "im1"):
        gt = np.asarray(Image.open(root / "gt" / f"{name}.png"))
        gt = gt[: gt.shape[0] // 2 * 2, : gt.shape[1] // 2 * 2]
        Image.fromarray(gt).save(paired / "gt" / f"{name}.png")
        Image.fromarray(bicubic_downscale(gt, 2)).save(paired / "lq" / f"{name}x2.png")
    run = root / "run"
    rc = cli.main(["eval", "--backbone", "edt", "--task", "sr_2", "--weights", str(run / "backbone.pt"),
                   "--adapters", str(run / "adapters.safetensors"), "--backbone-config", TINY_EDT,
                   "--adapter-config", TINY_ADAPTER, "--data", str(paired), "--csv", str(root / "paired.csv"),
                   "--quiet"])
    assert rc == 0
    if not (root / "scores.csv").exists():
        cli.main(["eval", "--run", str(run), "--data", str(root / "gt"), "--csv", str(root / "scores.csv"), "--quiet"])
    synthesised = _read_csv(root / "scores.csv")
    for a, b in zip(_read_csv(root / "paired.csv"), synthesised):
        assert a["name"] == b["name"] and a["psnr"] == b["psnr"] and a["ssim"] == b["ssim"]


def test_eval_refuses_other_tasks_adapters_and_no_images(tiny_run, capsys):
    run = tiny_run / "run"
    # the run's sr_2 adapters into an EDT built for sr_3: same keys and shapes, refused
    rc = cli.main(["eval", "--backbone", "edt", "--task", "sr_3", "--adapters", str(run / "adapters.safetensors"),
                   "--backbone-config", TINY_EDT, "--adapter-config", TINY_ADAPTER, "--data", str(tiny_run / "gt"),
                   "--quiet"])
    assert rc == 2 and "built for task 'sr_2'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["eval", "--run", str(run), "--max-images", "0"])
    assert "--max-images" in capsys.readouterr().err


def test_restore_file_and_folder(tiny_run, tmp_path):
    root = tiny_run
    lq = bicubic_downscale(np.asarray(Image.open(root / "gt" / "im0.png")), 2)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(lq).save(src / "a.png")
    Image.fromarray(lq[:, :15]).save(src / "b.jpg")
    run = str(root / "run")
    assert cli.main(["restore", "--run", run, str(src / "a.png"), str(tmp_path / "a_x2.png"), "--quiet"]) == 0
    single = np.asarray(Image.open(tmp_path / "a_x2.png"))
    assert single.shape == (lq.shape[0] * 2, lq.shape[1] * 2, 3)
    assert cli.main(["restore", "--run", run, str(src), str(tmp_path / "outdir"), "--quiet"]) == 0
    assert sorted(os.listdir(tmp_path / "outdir")) == ["a.png", "b.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "outdir" / "a.png")), single)
    assert np.asarray(Image.open(tmp_path / "outdir" / "b.png")).shape == (lq.shape[0] * 2, 30, 3)


class _Identity(torch.nn.Module):
    scale = 1

    def forward(self, x):
        return x


def test_denoising_eval_feeds_the_float_lq_and_scores_its_rounding(tmp_path):
    """A denoising task's evaluation LQ stays in float (AdaptIR's test protocol): the model
    sees the unquantised values, and the input's scores are those of its rounding to uint8
    levels."""
    from adaptir_kernels.data.datasets import EvalImages, Record
    from adaptir_kernels.data.degradations import add_gaussian_noise, rng_for
    from adaptir_kernels.evaluate import evaluate_dataset

    gt = _image(24, 20, 3)
    ds = EvalImages([Record("a", gt)], "denoise_50", seed=2)
    lq = add_gaussian_noise(gt, 50, rng_for(2, "a"), quantize="none")
    np.testing.assert_array_equal(ds[0]["lq"], lq)
    seen = []

    class Spy(_Identity):
        def forward(self, x):
            seen.append(x.clone())
            return x

    (row,) = evaluate_dataset(Spy(), ds, torch.device("cpu"), tile=32)
    levels = torch.cat([t.flatten() for t in seen]).double() * 255
    assert ((levels - levels.round()).abs() > 1e-3).any()  # not uint8 levels: the float LQ itself
    rounded = np.round(lq * 255).astype(np.uint8)
    assert row["input_psnr"] == pytest.approx(calculate_psnr(rounded, gt, crop_border=0, y_channel=False))
    assert row["psnr"] == pytest.approx(row["input_psnr"])  # the identity's output, rounded the same way
    assert 10 < row["psnr"] < 20
