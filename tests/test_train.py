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
    # milestones at 3, 5, 5, 6: the schedule matters; a log row at 6 averages steps 4-6,
    # across the resumption
    common = ["--iters", "6", "--ckpt-every", "2", "--log-every", "3"]
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
    # and the same training rows as the uninterrupted run (throughput aside)
    def losses(run):
        import csv

        with open(tmp_path / run / "log.csv", newline="") as f:
            return [(r["step"], r["loss"], r["lr"]) for r in csv.DictReader(f) if r["loss"]]

    assert losses("part") == losses("full") and len(losses("full")) == 2


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


# -- resuming and restarting: what the command line means --------------------------------


def _cli(argv, capsys=None):
    from adaptir_kernels import cli

    return cli.main(["finetune", *argv])


def _tiny_argv(extra=(), backbone_config=TINY_EDT):
    return ["--backbone", "edt", "--task", "sr_2", "--backbone-config", backbone_config,
            "--adapter-config", TINY_ADAPTER, "--patch-size", "8", "--batch-size", "2", "--workers", "0",
            "--quiet", "--lr", "1e-3", *extra]


def test_resume_the_same_command_with_relative_paths(tmp_path, data_dir, monkeypatch, capsys):
    data, _ = data_dir
    monkeypatch.chdir(tmp_path)
    assert _cli(_tiny_argv(["--data", data, "--out", "first", "--iters", "1"])) == 0
    # a run on that backbone, named relatively, stopped and resumed by repeating the command
    cmd = _tiny_argv(["--weights", "first/backbone.pt", "--data", os.path.relpath(data), "--out", "second",
                      "--iters", "4", "--ckpt-every", "2", "--seed", "3"])
    assert _cli(cmd + ["--stop-after", "2"]) == 0
    assert _cli(cmd + ["--resume"]) == 0, capsys.readouterr().err
    assert load_checkpoint("second/checkpoint.pt")["step"] == 4
    # an option given explicitly counts even at its default value: --seed 0 is not the run's 3
    assert _cli(_tiny_argv(["--out", "second", "--resume", "--seed", "0"])) == 2
    assert "--seed: 3 -> 0" in capsys.readouterr().err
    # the backbone file moved (another machine): the same bytes under another path are accepted
    os.makedirs("elsewhere")
    os.replace("first/backbone.pt", "elsewhere/bb.pt")
    assert _cli(_tiny_argv(["--out", "second", "--resume"])) == 2
    assert "moved? give --weights NEW_PATH" in capsys.readouterr().err
    assert _cli(_tiny_argv(["--out", "second", "--resume", "--weights", "elsewhere/bb.pt"])) == 0
    sd = torch.load("elsewhere/bb.pt")
    sd[next(iter(sd))] = sd[next(iter(sd))] + 1
    torch.save(sd, "elsewhere/other.pt")
    assert _cli(_tiny_argv(["--out", "second", "--resume", "--weights", "elsewhere/other.pt"])) == 2
    assert "--weights:" in capsys.readouterr().err


def test_resume_without_out_finds_the_default_folder(tmp_path, data_dir, monkeypatch):
    data, _ = data_dir
    monkeypatch.chdir(tmp_path)
    assert _cli(_tiny_argv(["--data", data, "--iters", "2", "--ckpt-every", "1", "--stop-after", "1"])) == 0
    assert os.path.isfile("runs/edt_sr_2/checkpoint.pt")
    assert _cli(_tiny_argv(["--data", data, "--iters", "2", "--ckpt-every", "1", "--resume"])) == 0
    assert load_checkpoint("runs/edt_sr_2/checkpoint.pt")["step"] == 2


def test_overwrite_leaves_nothing_of_the_old_run_to_resume(tmp_path, data_dir):
    data, _ = data_dir
    out = tmp_path / "ow"
    finetune(tiny_args(out, data, extra=["--iters", "2", "--ckpt-every", "1", "--keep-checkpoints"]))
    assert (out / "adapters.safetensors").exists() and (out / "checkpoint_00000001.pt").exists()
    # started over, then stopped before its first checkpoint
    s = finetune(tiny_args(out, data, extra=["--iters", "4", "--ckpt-every", "4", "--seed", "1", "--overwrite",
                                             "--stop-after", "1"]))
    assert s["stopped"]
    assert set(os.listdir(out)) <= {"backbone.pt", "log.csv", "run.json"}  # no checkpoint, no adapters
    with pytest.raises(UsageError, match="checkpoint not found"):
        finetune(tiny_args(out, data, extra=["--resume"]))


def test_resume_keeps_the_run_length_and_backend(tmp_path, data_dir):
    data, _ = data_dir
    grow = tmp_path / "grow"
    grow.mkdir()
    for n in os.listdir(data):
        (grow / n).write_bytes((tmp_path / data / n).read_bytes())
    out = tmp_path / "ep"
    # 3 images, batch 2: 2 steps per epoch, 4 in all
    s = finetune(tiny_args(out, str(grow), extra=["--epochs", "2", "--ckpt-every", "1", "--stop-after", "1",
                                                  "--backend", "reference"]))
    assert s["total_steps"] == 4
    for i in (3, 4):  # the folder gains images: 3 steps per epoch now
        (grow / f"img{i}.png").write_bytes((grow / "img0.png").read_bytes())
    (out / "checkpoint.pt.x1y2z3_4.tmp").write_bytes(b"a save killed midway")
    resumed = finetune(build_parser(argparse.ArgumentParser()).parse_args(
        ["--out", str(out), "--resume", "--quiet", "--workers", "0"]))
    assert resumed["total_steps"] == 4 and resumed["step"] == 4
    assert not (out / "checkpoint.pt.x1y2z3_4.tmp").exists()
    assert load_checkpoint(str(out / "checkpoint.pt"))["scheduler"]["milestones"] == {2: 1, 3: 1, 4: 2}
    from adaptir_kernels.adapters import adapter_modules
    from adaptir_kernels.reference import AdaptIR as ReferenceAdaptIR

    assert all(type(a) is ReferenceAdaptIR for a in adapter_modules(resumed["model"]).values())


def test_bad_resume_and_device_arguments_are_usage_errors(tmp_path, data_dir):
    data, _ = data_dir
    out = tmp_path / "bad"
    finetune(tiny_args(out, data, extra=["--iters", "1"]))
    raw = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(raw[:3000])
    with pytest.raises(UsageError, match="cannot read checkpoint"):
        finetune(tiny_args(out, data, extra=["--resume"]))
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(UsageError, match="not an `adaptir finetune` checkpoint"):
        finetune(tiny_args(out, data, extra=["--resume", str(tmp_path / "tensor.pt")]))
    with pytest.raises(UsageError, match="--device 'gpu' is not a device"):
        finetune(tiny_args(tmp_path / "dev", data, extra=["--iters", "1", "--device", "gpu"]))
    with pytest.raises(UsageError, match="give --data too"):
        finetune(build_parser(argparse.ArgumentParser()).parse_args(["--lq", data, "--out", str(tmp_path / "x")]))
    with pytest.raises(UsageError, match="give --val-data too"):
        finetune(tiny_args(tmp_path / "y", data, extra=["--val-lq", data]))


def test_milestones_of_short_runs_keep_every_decay():
    from adaptir_kernels.train import PAPER_MILESTONES, _resolve_milestones

    assert _resolve_milestones(PAPER_MILESTONES, 10) == [5, 8, 9, 10]
    assert _resolve_milestones(PAPER_MILESTONES, 6) == [3, 5, 5, 6]
    assert _resolve_milestones(PAPER_MILESTONES, 1) == [1, 1, 1, 1]  # never before the first step
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, _resolve_milestones(PAPER_MILESTONES, 6), gamma=0.5)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.125]
    assert opt.param_groups[0]["lr"] == 1.0 / 16  # all four halvings happened
