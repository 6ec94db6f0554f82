"""Draw the benchmark plots from the JSON files `adaptir bench --json` wrote into
benchmarks/results/.

    python benchmarks/plot.py [--results benchmarks/results] [--out benchmarks/results]

times.png    time per implementation per SPEC shape (forward+backward for the training
             shapes, eval-mode forward for edt-infer), one panel per device, from the
             latest --full run of that device (else its latest run), with the SPEC 5.1
             floor drawn as a black bar and, on CUDA, the time of the same work
             replayed as a CUDA graph (no launch overhead) as a hatched inner bar.
scaling.png  forward+backward time against N*H*W, against d_model and against the
             batch N (runs before the batch sweep have two panels), per
             implementation, from the latest --scaling run of each device.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402,F401

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
MODE_RANK = {"full": 2, "quick": 1, "tiny": 0}
COLORS = {"reference": "#7f7f7f", "fused:torch": "#1f77b4", "fused:cpp": "#2ca02c", "fused:triton": "#d62728",
          "compile:fwd": "#9467bd", "compile:fwd+bwd": "#8c564b"}


def load_runs(folder: str) -> List[dict]:
    runs = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError:
                continue
        if isinstance(d, dict) and "environment" in d:
            d["_path"] = os.path.basename(path)
            runs.append(d)
    return runs


def device_label(run: dict) -> str:
    env = run["environment"]
    if env["device"] == "cuda":
        return env["device_name"]
    return f"CPU {env['device_name']}, {env['threads']} threads"


def revision_label(run: dict) -> str:
    rev = run["environment"].get("revision")
    return f"source {rev[:7]}{'+dirty' if rev.endswith('+dirty') else ''}" if rev else "source not recorded"


def latest_per_device(runs: List[dict], key: str) -> Dict[str, dict]:
    """The best run per device that has `key`: full over quick, then the newest."""
    best: Dict[str, dict] = {}
    for r in runs:
        if not r.get(key):
            continue
        label = device_label(r)
        rank = (MODE_RANK.get(r["mode"], 0), r["environment"]["date"])
        if label not in best or rank > (MODE_RANK.get(best[label]["mode"], 0), best[label]["environment"]["date"]):
            best[label] = r
    return best


def plot_times(runs: Dict[str, dict], path: str) -> None:
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 3.6 * len(runs)), squeeze=False)
    for ax, (label, run) in zip(axes[:, 0], sorted(runs.items())):
        shapes = run["shapes"]
        impls: List[str] = []
        for sd in shapes:
            for r in sd["results"]:
                if r["impl"] not in impls:
                    impls.append(r["impl"])
        width = 0.8 / (len(impls) + 1)
        for i, sd in enumerate(shapes):
            col = "fwd+bwd" if sd["train"] else "infer"
            ax.bar(i - 0.4 + width / 2, sd["floor_ms"][col], width, color="black",
                   label="SPEC 5.1 floor" if i == 0 else None)
            for j, impl in enumerate(impls, start=1):
                r = next((r for r in sd["results"] if r["impl"] == impl), None)
                x = i - 0.4 + width / 2 + j * width
                other_column = (impl == "compile:fwd") == sd["train"] if impl.startswith("compile:") else False
                if r is None or other_column:
                    continue
                t = r["times_ms"].get(col)
                if t is None:
                    ax.text(x, 0.03, f"{impl}: {'failed' if 'failed' in r['status'] else 'skipped'}",
                            transform=ax.get_xaxis_transform(), rotation=90, ha="center", va="bottom",
                            fontsize=7, color=COLORS.get(impl, "k"))
                    continue
                seen = ax.get_legend_handles_labels()[1]
                ax.bar(x, t, width, color=COLORS.get(impl), label=None if impl in seen else impl)
                tg = r.get("graph_ms", {}).get(col)
                if tg is not None:
                    label = "inner hatched bar: as a CUDA graph"
                    ax.bar(x, tg, width * 0.5, color="white", edgecolor="black", hatch="////", lw=0.5,
                           label=None if label in seen else label)
        ax.set_yscale("log")
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels([f"{sd['name']}\n{'fwd+bwd' if sd['train'] else 'infer'}, x {tuple(sd['x_shape'])}"
                            for sd in shapes], fontsize=8)
        ax.set_ylabel(f"ms ({run.get('timing', {}).get('statistic', 'median')} of the samples)")
        ax.set_title(f"{label} -- adaptir bench --{run['mode']} ({run['environment']['date'][:10]}, "
                     f"{revision_label(run)})", fontsize=9)
        ax.legend(fontsize=7, ncol=3)
        ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_scaling(runs: Dict[str, dict], path: str) -> None:
    cols = max(len(run["scaling"]) for run in runs.values())
    fig, axes = plt.subplots(len(runs), cols, figsize=(5 * cols, 3.8 * len(runs)), squeeze=False)
    for row, (label, run) in zip(axes, sorted(runs.items())):
        for ax, (sweep, d) in zip(row, run["scaling"].items()):
            xs = d["xs"]
            for impl, ys in d["fwd_bwd_ms"].items():
                pts = [(x, y) for x, y in zip(xs, ys) if y]
                if not pts:
                    continue
                k = d["exponent"].get(impl)
                base = impl.split(" [")[0]
                ax.plot(*zip(*pts), "o--" if "[graph]" in impl else "o-", color=COLORS.get(base),
                        label=f"{impl} (k={k:.2f})" if k is not None else impl)
            ref = [(x, y) for x, y in zip(xs, d["fwd_bwd_ms"]["reference"]) if y]
            if ref:
                x0, y0 = ref[0]
                ax.plot(xs, [y0 * x / x0 for x in xs], "k:", lw=1, label="linear from the first point")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(xs)
            ax.set_xticklabels([pt["name"] if sweep == "spatial" else str(x) for pt, x in zip(d["points"], xs)],
                               fontsize=7)
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            p0 = d["points"][0]
            ax.set_xlabel({"spatial": "N*H*W (log scale; ticks at H x W)",
                           "width": "d_model (hidden = d_model // 14)",
                           "batch": "batch N (log scale)"}[sweep])
            ax.set_ylabel(f"forward+backward, ms ({run.get('timing', {}).get('statistic', 'median')})")
            ax.set_title(f"{label}: " + {"spatial": f"d_model {p0['C']}, batch {p0['N']}, H = W",
                                         "width": f"batch {p0['N']} of {p0['H']}x{p0['W']}",
                                         "batch": f"d_model {p0['C']}, {p0['H']}x{p0['W']}"}[sweep], fontsize=9)
            ax.legend(fontsize=7)
            ax.grid(which="both", alpha=0.3)
        for ax in row[len(run["scaling"]):]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=RESULTS, help="folder of adaptir bench JSON files")
    ap.add_argument("--out", default=None, help="folder for the PNGs (default: --results)")
    args = ap.parse_args(argv)
    out = args.out or args.results
    os.makedirs(out, exist_ok=True)
    runs = load_runs(args.results)
    times = latest_per_device(runs, "shapes")
    scaling = latest_per_device(runs, "scaling")
    if times:
        plot_times(times, os.path.join(out, "times.png"))
        print(f"wrote {os.path.join(out, 'times.png')} from " + ", ".join(r["_path"] for r in times.values()))
    if scaling:
        plot_scaling(scaling, os.path.join(out, "scaling.png"))
        print(f"wrote {os.path.join(out, 'scaling.png')} from " + ", ".join(r["_path"] for r in scaling.values()))
    if not times and not scaling:
        print(f"no adaptir bench JSON files in {args.results}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
