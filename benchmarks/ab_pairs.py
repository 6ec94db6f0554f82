"""Compare two variants timed in alternating runs of `adaptir bench --json`, pair by pair.

    python benchmarks/ab_pairs.py DIR A B [--impl fused:cpp]

pairs DIR/A-<k>.json with DIR/B-<k>.json (the same <k>: runs taken back to back) and
prints, per shape and column, the median and quartiles of the per-pair ratio
time(B) / time(A), how many pairs B won, and each variant's median time. On a noisy
machine a pair's ratio is steadier than the two variants' separate statistics: both
runs of a pair see about the same foreign load. Runs of `adaptir bench --scaling` pair
the same way, point by point: shape "<sweep> <point>" (for example "batch N1"), column
fwd+bwd.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
from typing import Dict, List, Tuple

COLUMNS = ("infer", "fwd", "bwd", "fwd+bwd")


def load_times(path: str, impl: str) -> Dict[Tuple[str, str], float]:
    """(shape, column) -> time in ms of `impl` in one `adaptir bench --json` file, in the
    file's order: the shape table's, then the scaling sweeps' points."""
    with open(path) as f:
        run = json.load(f)
    out = {}
    for shape in run.get("shapes", []):
        for res in shape.get("results", []):
            if res.get("impl") != impl or res.get("status") != "ok":
                continue
            for col in COLUMNS:
                t = (res.get("times_ms") or {}).get(col)
                if t:
                    out[(shape["name"], col)] = float(t)
    for sweep, d in (run.get("scaling") or {}).items():
        for point, t in zip(d.get("points", []), (d.get("fwd_bwd_ms") or {}).get(impl, [])):
            if t:
                out[(f"{sweep} {point['name']}", "fwd+bwd")] = float(t)
    return out


def pair_files(folder: str, a: str, b: str) -> List[Tuple[str, str]]:
    """(A file, B file) for every run suffix present for both variants."""
    def by_suffix(name: str) -> Dict[str, str]:
        prefix = os.path.join(folder, name + "-")
        return {p[len(prefix):-len(".json")]: p for p in glob.glob(glob.escape(prefix) + "*.json")}

    fa, fb = by_suffix(a), by_suffix(b)
    return [(fa[k], fb[k]) for k in sorted(set(fa) & set(fb))]


def quartiles(values: List[float]) -> Tuple[float, float]:
    s = sorted(values)
    return s[len(s) // 4], s[(3 * len(s)) // 4]


def summarise(pairs: List[Tuple[str, str]], impl: str) -> List[dict]:
    ratios: Dict[Tuple[str, str], List[float]] = {}
    times: Dict[Tuple[str, str], Tuple[List[float], List[float]]] = {}
    for pa, pb in pairs:
        ta, tb = load_times(pa, impl), load_times(pb, impl)
        for key in (k for k in ta if k in tb):
            ratios.setdefault(key, []).append(tb[key] / ta[key])
            times.setdefault(key, ([], []))
            times[key][0].append(ta[key])
            times[key][1].append(tb[key])
    rows = []
    for key in ratios:  # the first pair's order
        r = ratios[key]
        lo, hi = quartiles(r)
        rows.append({"shape": key[0], "column": key[1], "pairs": len(r), "median_ratio": statistics.median(r),
                     "q1": lo, "q3": hi, "b_faster": sum(x < 1.0 for x in r),
                     "a_median_ms": statistics.median(times[key][0]),
                     "b_median_ms": statistics.median(times[key][1])})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("a", help="file name prefix of variant A (the baseline)")
    ap.add_argument("b", help="file name prefix of variant B")
    ap.add_argument("--impl", default="fused:cpp", help="the implementation row to compare (default fused:cpp)")
    args = ap.parse_args(argv)
    pairs = pair_files(args.folder, args.a, args.b)
    if not pairs:
        print(f"no pairs: need {args.a}-<k>.json and {args.b}-<k>.json in {args.folder}", file=sys.stderr)
        return 1
    rows = summarise(pairs, args.impl)
    if not rows:
        print(f"no '{args.impl}' times common to the pairs", file=sys.stderr)
        return 1
    print(f"{args.impl}: {args.b} / {args.a}, {len(pairs)} pairs of runs from {args.folder}")
    width = max([11] + [len(r["shape"]) for r in rows])
    print(f"{'shape':<{width}} {'column':<8} {'pairs':>5} {'median':>7} {'quartiles':>13} {args.b + ' won':>10}"
          f" {'median ms ' + args.a:>18} {'median ms ' + args.b:>18}")
    for r in rows:
        print(f"{r['shape']:<{width}} {r['column']:<8} {r['pairs']:>5} {r['median_ratio']:>7.3f} "
              f"{r['q1']:>6.3f}-{r['q3']:<6.3f} {r['b_faster']:>10} {r['a_median_ms']:>18.2f} "
              f"{r['b_median_ms']:>18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
