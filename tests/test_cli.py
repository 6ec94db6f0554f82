"""The command line: help, clear errors for bad arguments, and a real kill -9 followed by --resume."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from adaptir_kernels import cli
from adaptir_kernels.train import build_parser, finetune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--backbone-config", json.dumps(dict(embed_dim=12, depths=[1], num_heads=[2], window_size=[4, 8],
                                             num_feat=4, depth=1, img_size=16)),
        "--adapter-config", json.dumps(dict(hidden=4, ci_hidden=1)),
        "--patch-size", "8", "--batch-size", "2", "--workers", "0", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(root / f"x{i}.png")
    return root


def _run(argv, capsys):
    rc = cli.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("command", ["finetune", "eval", "restore"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert "--backbone" in capsys.readouterr().out


def test_finetune_missing_weights_file(tmp_path, images, capsys):
    rc, _, err = _run(["finetune", "--backbone", "ipt", "--task", "sr_2", "--weights", str(tmp_path / "nope.pt"),
                       "--data", str(images), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and f"weights file not found: {tmp_path / 'nope.pt'}" in err


def test_finetune_unknown_task(tmp_path, images, capsys):
    rc, _, err = _run(["finetune", "--task", "deblur", "--data", str(images), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "unknown task 'deblur'" in err and "sr_2" in err


def test_finetune_empty_folder_and_unreadable_image(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = _run(["finetune", "--data", str(empty), "--out", str(tmp_path / "o"), *TINY], capsys)
    assert rc == 2 and "no images" in err and str(empty) in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "photo.png").write_bytes(b"definitely not a png")
    rc, _, err = _run(["finetune", "--data", str(bad), "--out", str(tmp_path / "o2"), "--iters", "1", "--quiet",
                       *TINY], capsys)
    assert rc == 2 and "cannot read image" in err and "photo.png" in err


def test_missing_data_folder_and_paired_task(tmp_path, images, capsys):
    rc, _, err = _run(["finetune", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *TINY], capsys)
    assert rc == 2 and "data not found" in err and "missing" in err
    rc, _, err = _run(["finetune", "--task", "low_light", "--data", str(images), "--out", str(tmp_path / "o"),
                       "--quiet", *TINY], capsys)
    assert rc == 2 and "low_light" in err and "paired" in err


def test_bad_numbers_and_choices_are_argparse_errors(capsys):
    for argv in (["finetune", "--batch-size", "0"], ["finetune", "--backbone", "swin"], ["eval", "--tile", "x"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
    assert "invalid" in capsys.readouterr().err


def test_eval_and_restore_errors(tmp_path, images, capsys):
    rc, _, err = _run(["eval", "--backbone", "edt", "--task", "sr_2", "--adapters", str(tmp_path / "a.safetensors"),
                       "--data", str(images)], capsys)
    assert rc == 2 and "adapter file not found" in err
    rc, _, err = _run(["eval", "--run", str(tmp_path / "norun"), "--data", str(images)], capsys)
    assert rc == 2 and "run.json not found" in err
    rc, _, err = _run(["eval", "--data", str(images)], capsys)
    assert rc == 2 and "--backbone and --task" in err
    rc, _, err = _run(["restore", "--backbone", "edt", "--task", "sr_2", str(tmp_path / "in.png"),
                       str(tmp_path / "out.png")], capsys)
    assert rc == 2 and "input not found" in err


@pytest.mark.slow
def test_kill_minus_9_then_resume_matches_an_uninterrupted_run(tmp_path, images):
    """A real process killed at an arbitrary moment, resumed by a fresh process."""
    common = ["--backbone", "edt", "--task", "sr_2", "--data", str(images), "--iters", "8", "--ckpt-every", "2",
              "--progress", "log", "--log-every", "1", *TINY]
    ref = finetune(build_parser(argparse.ArgumentParser()).parse_args(common + ["--out", str(tmp_path / "ref"),
                                                                               "--quiet"]))
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "adaptir_kernels.cli", "finetune", *common, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    try:
        for line in proc.stdout:  # kill once step 3 is done (checkpoint at step 2 exists)
            if line.startswith("step 3/8"):
                break
            assert time.time() < deadline, "training did not reach step 3"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "adapters.safetensors").exists()
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from" in done.stdout
    from safetensors.torch import load_file

    a, b = load_file(ref["adapters"]), load_file(str(out / "adapters.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
