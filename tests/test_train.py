"""Fine-tuning: a short run with checkpoints, exact resume after a stop, DDP on two CPU processes."""

import argparse
import json
import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from adaptir_kernels.adapters import load_adapters
from adaptir_kernels.checkpoint import load_checkpoint
from adaptir_kernels.train import UsageError, build_model, build_parser, finetune, trainable_state

TINY_EDT = json.dumps(dict(embed_dim=12, depths=[1], num_heads=[2], window_size=[4, 8], num_feat=4, depth=1,
                           img_size=16))
TINY_IPT = json.dumps(dict(n_feats=4, num_heads=2, num_layers=1, ffn_dim=16, patch_dim=2))
TINY_ADAPTER = json.dumps(dict(hidden=4, ci_hidden=1))


def _image(h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 90 * np.sin(xx / 4.0 + seed), 128 + 90 * np.cos(yy / 3.0), (xx * 7 + yy * 3) % 256], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for i in range(3):
        Image.fromarray(_image(40 + 4 * i, 48, i)).save(root / f"img{i}.png")
    val = tmp_path_factory.mktemp("val")
    Image.fromarray(_image(32, 32, 9)).save(val / "v0.png")
    return str(root), str(val)


def tiny_args(out, data, val=None, backbone="edt", task="sr_2", extra=()):
    argv = ["--backbone", backbone, "--task", task, "--data", data, "--out", str(out),
            "--backbone-config", TINY_EDT if backbone == "edt" else TINY_IPT, "--adapter-config", TINY_ADAPTER,
            "--patch-size", "8", "--batch-size", "2", "--workers", "0", "--quiet", "--lr", "1e-3"]
    if val:
        argv += ["--val-data", val]
    return build_parser(argparse.ArgumentParser()).parse_args(argv + list(extra))


def _adapters(path):
    from safetensors.torch import load_file

    return load_file(path)


def test_two_step_finetune_writes_checkpoint_adapters_and_log(tmp_path, data_dir):
    data, val = data_dir
    out = tmp_path / "run"
    s = finetune(tiny_args(out, data, val, extra=["--iters", "2", "--ckpt-every", "1", "--log-every", "1"]))
    assert s["step"] == 2 and not s["stopped"]
    assert np.isfinite(s["psnr_before"]) and np.isfinite(s["psnr_after"])
    ckpt = load_checkpoint(str(out / "checkpoint.pt"))
    assert ckpt["step"] == 2 and len(ckpt["rng"]) == 1
    model = s["model"]
    # only adapter tensors are trained and stored
    assert all(".adaptir." in k for k in ckpt["trainable"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} <= set(ckpt["trainable"])
    saved = _adapters(str(out / "adapters.safetensors"))
    assert set(saved) == set(ckpt["trainable"])
    for k, v in saved.items():
        assert torch.equal(v, ckpt["trainable"][k])
    # the adapters moved away from their zero-output initialisation
    assert any(v.abs().sum() > 0 for k, v in saved.items() if k.endswith("tail.weight"))
    # the run folder rebuilds the same model
    run = json.load(open(out / "run.json"))
    assert run["model"]["weights"] == "backbone.pt" and run["total_steps"] == 2
    log = (out / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and len(log) == 1 + 1 + 2 + 1  # header, val@0, 2 steps, val@2
    # a second run into the same folder must not silently overwrite it
    with pytest.raises(UsageError, match="pass --resume"):
        finetune(tiny_args(out, data, extra=["--iters", "2"]))


def test_stop_and_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, data_dir):
    data, _ = data_dir
    common = ["--iters", "6", "--ckpt-every", "2"]  # milestones at 3, 5, 6: the schedule matters
    full = finetune(tiny_args(tmp_path / "full", data, extra=common))
    # "killed" after step 5: the last checkpoint is step 4, step 5's work is lost
    part = finetune(tiny_args(tmp_path / "part", data, extra=common + ["--stop-after", "5"]))
    assert part["stopped"] and load_checkpoint(str(tmp_path / "part" / "checkpoint.pt"))["step"] == 4
    # scramble every global RNG: resume must restore them
    torch.manual_seed(1234)
    np.random.seed(99)
    # a fresh run that names only the folder: every other setting comes from the checkpoint
    resumed = finetune(build_parser(argparse.ArgumentParser()).parse_args(
        ["--out", str(tmp_path / "part"), "--resume", "--quiet", "--workers", "0"]))
    assert resumed["start_step"] == 4 and resumed["step"] == 6
    a = _adapters(str(tmp_path / "full" / "adapters.safetensors"))
    b = _adapters(str(tmp_path / "part" / "adapters.safetensors"))
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ca = load_checkpoint(str(tmp_path / "full" / "checkpoint.pt"))
    cb = load_checkpoint(str(tmp_path / "part" / "checkpoint.pt"))
    assert ca["scheduler"] == cb["scheduler"]
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the log has no rows from the lost step 5 twice
    steps = [line.split(",")[0] for line in (tmp_path / "part" / "log.csv").read_text().splitlines()[1:]]
    assert steps == sorted(steps, key=int) and len(steps) == len(set(steps))


def test_resume_refuses_different_settings(tmp_path, data_dir):
    data, _ = data_dir
    finetune(tiny_args(tmp_path / "r", data, extra=["--iters", "1"]))
    with pytest.raises(UsageError, match="--batch-size: 2 -> 4"):
        finetune(tiny_args(tmp_path / "r", data, extra=["--iters", "1", "--resume", "--batch-size", "4"]))
    with pytest.raises(UsageError, match="checkpoint not found"):
        finetune(tiny_args(tmp_path / "none", data, extra=["--iters", "1", "--resume"]))


def test_ipt_denoising_with_mixed_precision(tmp_path, data_dir):
    data, val = data_dir
    s = finetune(tiny_args(tmp_path / "ipt", data, val, backbone="ipt", task="denoise_30",
                           extra=["--iters", "1", "--amp"]))
    assert s["step"] == 1 and np.isfinite(s["loss"])
    spec = json.load(open(tmp_path / "ipt" / "run.json"))["model"]
    assert spec["backbone_kwargs"]["patch_size"] == 8 and spec["head"] == "denoise_30"
    from adaptir_kernels.train import ModelSpec

    spec["weights"] = str(tmp_path / "ipt" / "backbone.pt")
    rebuilt = build_model(ModelSpec(**spec))
    load_adapters(rebuilt, str(tmp_path / "ipt" / "adapters.safetensors"))
    for k, v in trainable_state(rebuilt).items():
        assert torch.equal(v, trainable_state(s["model"])[k])
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), s["model"].state_dict().values()))


# -- DistributedDataParallel on two CPU processes (gloo, loopback only) ---------------------
def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, argv, dump):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    args = build_parser(argparse.ArgumentParser()).parse_args(argv)
    s = finetune(args)
    torch.save({"state": trainable_state(s["model"]), "stopped": s["stopped"]}, f"{dump}.rank{rank}.pt")


def _run_ddp(argv, dump, world=2):
    import torch.multiprocessing as mp

    mp.start_processes(_ddp_worker, args=(world, _free_port(), argv, dump), nprocs=world, join=True,
                       start_method="spawn")
    return [torch.load(f"{dump}.rank{r}.pt", weights_only=True) for r in range(world)]


def _argv(out, data, extra):
    return ["--backbone", "edt", "--task", "sr_2", "--data", data, "--out", str(out),
            "--backbone-config", TINY_EDT, "--adapter-config", TINY_ADAPTER, "--patch-size", "8",
            "--batch-size", "2", "--workers", "0", "--quiet", "--lr", "1e-3", "--device", "cpu"] + extra


@pytest.mark.slow
def test_ddp_two_gloo_processes_agree_and_resume(tmp_path, data_dir):
    data, _ = data_dir
    full = _run_ddp(_argv(tmp_path / "full", data, ["--iters", "4", "--ckpt-every", "2", "--keep-checkpoints"]),
                    str(tmp_path / "full"))
    for k, v in full[0]["state"].items():
        assert torch.equal(v, full[1]["state"][k]), k  # both ranks end with identical adapters
    saved = _adapters(str(tmp_path / "full" / "adapters.safetensors"))
    assert all(torch.equal(saved[k], full[0]["state"][k]) for k in saved)
    mid = tmp_path / "full" / "checkpoint_00000002.pt"
    assert len(load_checkpoint(str(mid))["rng"]) == 2
    # resume from the step-2 checkpoint in a fresh pair of processes: same end state on both ranks
    resumed = _run_ddp(_argv(tmp_path / "resumed", data, ["--iters", "4", "--ckpt-every", "2", "--resume", str(mid)]),
                       str(tmp_path / "resumed"))
    for r in range(2):
        for k, v in full[r]["state"].items():
            assert torch.equal(v, resumed[r]["state"][k]), (r, k)
