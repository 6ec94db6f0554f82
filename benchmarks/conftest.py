"""pytest-benchmark suite: each fused operator per backend, the whole module, and the
end-to-end fine-tune step. Not part of the test suite (pytest.ini collects tests/ only);
see benchmarks/README.md for how to run it.

Options (or environment variables):
    --bench-full       ADAPTIR_BENCH_FULL=1      the SPEC section 7 shapes as written and
                                                 more rounds (default: batch 2, few rounds)
    --bench-device     ADAPTIR_BENCH_DEVICE      auto (default), cpu or cuda
    --bench-backends   ADAPTIR_BENCH_BACKENDS    comma-separated subset of the fused backends
    --bench-rounds     ADAPTIR_BENCH_ROUNDS      timed rounds per benchmark
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Dict, Tuple

import pytest
import torch

from adaptir_kernels import bench as B
from adaptir_kernels.ops.global_branch import global_branch
from adaptir_kernels.ops.local_branch import local_branch
from adaptir_kernels.ops.project_in import project_in
from adaptir_kernels.ops.router import router

DEFAULT_ROUNDS = 5
FULL_ROUNDS = 20


def pytest_addoption(parser):
    g = parser.getgroup("adaptir benchmarks")
    g.addoption("--bench-full", action="store_true", default=os.environ.get("ADAPTIR_BENCH_FULL", "") == "1",
                help="SPEC section 7 shapes as written (default: batch 2 for the training shapes)")
    g.addoption("--bench-device", default=os.environ.get("ADAPTIR_BENCH_DEVICE", "auto"),
                choices=("auto", "cpu", "cuda"))
    g.addoption("--bench-backends", default=os.environ.get("ADAPTIR_BENCH_BACKENDS"),
                help="comma-separated fused backends (default: every one the device has)")
    g.addoption("--bench-rounds", type=int, default=int(os.environ.get("ADAPTIR_BENCH_ROUNDS", "0")) or None)


def bench_device(config) -> torch.device:
    return B.resolve_device(config.getoption("--bench-device"))


def bench_shapes(config):
    return B.profile_shapes("full" if config.getoption("--bench-full") else "quick")


def bench_backends(config):
    requested = config.getoption("--bench-backends")
    chosen, _ = B.fused_backends(bench_device(config), requested.split(",") if requested else None)
    return chosen


def pytest_configure(config):
    config.addinivalue_line("markers", "train_only: a backward benchmark, not run at forward-only shapes")


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "backend" in metafunc.fixturenames:
        only = getattr(metafunc.module, "OP_BACKENDS", None)
        backends = [b for b in bench_backends(config) if only is None or b in only]
        metafunc.parametrize("backend", backends)
    if "impl" in metafunc.fixturenames:
        impls = ["reference"] + [f"fused:{b}" for b in bench_backends(config)]
        metafunc.parametrize("impl", impls)
    if "shape" in metafunc.fixturenames:
        shapes = bench_shapes(config)
        if metafunc.definition.get_closest_marker("train_only"):
            shapes = [s for s in shapes if s.train]
        metafunc.parametrize("shape", shapes, ids=[s.name for s in shapes])


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    return bench_device(pytestconfig)


@pytest.fixture(scope="session")
def rounds(pytestconfig) -> Tuple[int, int]:
    """(timed rounds, warmup rounds)."""
    n = pytestconfig.getoption("--bench-rounds")
    if n is None:
        n = FULL_ROUNDS if pytestconfig.getoption("--bench-full") else DEFAULT_ROUNDS
    return n, 1


@pytest.fixture
def timed(benchmark, device, rounds):
    """timed(fn, group) -> fn's last result: benchmarks fn with a device sync after each call."""

    def run(fn, group: str, setup=None):
        benchmark.group = group
        n, warm = rounds

        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out

        kwargs = dict(rounds=n, iterations=1, warmup_rounds=warm)
        if setup is not None:
            kwargs["setup"] = setup
        return benchmark.pedantic(call, **kwargs)

    return run


def op_params(module) -> Dict[str, torch.Tensor]:
    """The module's parameters as the fused operators take them (see module.py)."""
    h, C, q = module.hidden, module.d_model, module.ci_hidden
    bn = module.BN
    d = lambda t: t.detach()  # noqa: E731
    return {
        "head_w": d(module.head.weight).reshape(h, C), "head_b": d(module.head.bias),
        "bn_w": d(bn.weight), "bn_b": d(bn.bias), "running_mean": bn.running_mean, "running_var": bn.running_var,
        "conv_A": d(module.conv_weight_A), "conv_B": d(module.conv_weight_B), "conv_bias": d(module.conv_bias),
        "si_w": d(module.spatial_interaction.weight).reshape(h), "si_b": d(module.spatial_interaction.bias),
        "amp_w": d(module.amp_fuse.weight).reshape(h), "amp_b": d(module.amp_fuse.bias),
        "pha_w": d(module.pha_fuse.weight).reshape(h), "pha_b": d(module.pha_fuse.bias),
        "compress_w": d(module.compress.weight).reshape(h), "compress_b": d(module.compress.bias),
        "proj0_w": d(module.proj[0].weight), "proj0_b": d(module.proj[0].bias),
        "proj2_w": d(module.proj[2].weight), "proj2_b": d(module.proj[2].bias),
        "ci1_w": d(module.channel_interaction[1].weight).reshape(q, h), "ci1_b": d(module.channel_interaction[1].bias),
        "ci3_w": d(module.channel_interaction[3].weight).reshape(h, q), "ci3_b": d(module.channel_interaction[3].bias),
        "tail_w": d(module.tail.weight).reshape(C, h),
    }


@lru_cache(maxsize=8)
def _chain_state(shape: B.Shape, device_str: str, training: bool) -> Dict:
    """Inputs and intermediates of every operator at `shape`, from the "torch" backend's
    forward chain, plus random upstream gradients for the backward operators."""
    device = torch.device(device_str)
    module = B.build_reference(shape, device)
    p = op_params(module)
    x = B.make_input(shape, device)
    gen = torch.Generator().manual_seed(7)
    rand = lambda *s: torch.randn(s, generator=gen).to(device)  # noqa: E731
    with torch.no_grad():
        u, xhat, mean, var = project_in(x, p["head_w"], p["head_b"], p["bn_w"], p["bn_b"], p["running_mean"],
                                        p["running_var"], training, 1e-5, shape.layout, shape.H, shape.W, "torch")
        loc, sg = local_branch(u, p["conv_A"], p["conv_B"], p["conv_bias"], p["si_w"], p["si_b"], "torch")
        g, gmean, _ = global_branch(u, p["amp_w"], p["amp_b"], p["pha_w"], p["pha_b"], "torch")
        cs, cg = router(u, p["compress_w"], p["compress_b"], p["proj0_w"], p["proj0_b"], p["proj2_w"],
                        p["proj2_b"], gmean, p["ci1_w"], p["ci1_b"], p["ci3_w"], p["ci3_b"], "torch")
    N, h, H, W = u.shape
    return {
        "shape": shape, "params": p, "training": training, "eps": 1e-5,
        "x": x, "u": u, "xhat": xhat, "mean": mean, "var": var, "loc": loc, "sg": sg, "g": g, "gmean": gmean,
        "cs": cs, "cg": cg,
        "grad_out": rand(*shape.x_shape), "grad_u": rand(N, h, H, W), "grad_l": rand(N, h, H, W),
        "grad_sg": rand(N, H, W), "grad_g": rand(N, h, H, W), "grad_gmean": rand(N, h),
        "grad_cs": rand(N, h), "grad_cg": rand(N, h),
    }


@pytest.fixture
def state(shape, device):
    """Operator inputs at `shape`: train-mode BN for training shapes, eval mode otherwise."""
    return _chain_state(shape, str(device), shape.train)
