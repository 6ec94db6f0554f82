"""The CPU speed and memory targets, read from runs of `adaptir bench --full --json`.

    python benchmarks/targets.py FILE [FILE ...] [--impl fused:cpp]

For each target (benchmarks/RESULTS.md lists them with the numbers these print) and each
run, the value the run gives and whether it meets the target:

- forward+backward at least 4x the eager reference (edt-train, ipt-train);
- forward at least 5x: train mode (autograd recording) at edt-train and ipt-train, and
  eval mode at edt-infer;
- forward at least 2x torch.compile of the reference: the fused module's infer speed-up
  over the compiled one's, each against the reference timed beside it (runs with the
  compile rows only);
- at most 3 hidden-width tensors saved for backward beyond x.

Every ratio is within one run: runs on a noisy machine are never mixed. The last
column says in how many of the runs that have the value the target is met.

Under each speed target against the reference, the line "at the floor" gives what an
implementation running exactly at the run's SPEC 5.1 floor would reach: the reference's
time over the floor's (its five C-wide passes at the measured copy bandwidth plus the
skinny products at the measured matmul rate, paid one after the other). Where that
line misses the target, meeting it takes overlapping the memory traffic with the
arithmetic, which the floor does not assume. Two more lines give the times behind each
speed-up, the reference's and the implementation's, in ms: a ratio that moves between
runs shows which of the two moved (the reference's own time has doubled for a while on
a shared machine).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Dict, List, Optional, Tuple

# (label, shape, value from the shape's rows, threshold, True where the value must be
# at least the threshold, False where at most, the timing column whose floor bounds the
# value or None)
Rows = Dict[str, dict]
TARGETS: List[Tuple[str, str, Callable[[Rows, str], Optional[float]], float, bool, Optional[str]]] = []


def _column(rows: Rows, impl: str, field: str, column: str) -> Optional[float]:
    """rows[impl][field][column] where impl's row ran ("ok"), else None."""
    r = rows.get(impl)
    if r is None or r.get("status") != "ok":
        return None
    return (r.get(field) or {}).get(column)


def _speedup(column: str) -> Callable[[Rows, str], Optional[float]]:
    return lambda rows, impl: _column(rows, impl, "speedup", column)


def _floor_speedup(rows: Rows, column: str) -> Optional[float]:
    """The reference's time over the floor's: the speed-up of an implementation at the floor."""
    fraction = _column(rows, "reference", "floor_fraction", column)
    return 1.0 / fraction if fraction else None


def _time_ms(rows: Rows, impl: str, column: str) -> Optional[float]:
    return _column(rows, impl, "times_ms", column)


def _over_compile(rows: Rows, impl: str) -> Optional[float]:
    fused = _speedup("infer")(rows, impl)
    compiled = _speedup("infer")(rows, "compile:fwd")
    return fused / compiled if fused and compiled else None


def _saved(rows: Rows, impl: str) -> Optional[float]:
    r = rows.get(impl)
    return None if r is None or r.get("status") != "ok" else r.get("saved_hidden_units")


for _shape in ("ipt-train", "edt-train"):
    TARGETS.append(("fwd+bwd >= 4x the reference", _shape, _speedup("fwd+bwd"), 4.0, True, "fwd+bwd"))
for _shape in ("ipt-train", "edt-train"):
    TARGETS.append(("fwd (train mode) >= 5x", _shape, _speedup("fwd"), 5.0, True, "fwd"))
TARGETS.append(("fwd (eval mode) >= 5x", "edt-infer", _speedup("infer"), 5.0, True, "infer"))
for _shape in ("ipt-train", "edt-train", "edt-infer"):
    TARGETS.append(("fwd >= 2x torch.compile (ratio of speed-ups)", _shape, _over_compile, 2.0, True, None))
for _shape in ("ipt-train", "edt-train"):
    TARGETS.append(("<= 3 hidden-width tensors saved", _shape, _saved, 3.0, False, None))


def load_rows(path: str) -> Dict[str, Rows]:
    """shape name -> implementation -> its result row, for one `adaptir bench --json` file."""
    with open(path) as f:
        run = json.load(f)
    if "shapes" not in run:
        raise ValueError(f"{path}: not an `adaptir bench --json` file (no 'shapes')")
    return {s["name"]: {r["impl"]: r for r in s.get("results", [])} for s in run["shapes"]}


def _count(values: List[Optional[float]], threshold: float, at_least: bool) -> Tuple[int, int]:
    have = [v for v in values if v is not None]
    met = sum(1 for v in have if (v >= threshold if at_least else v <= threshold))
    return met, len(have)


def evaluate(runs: List[Dict[str, Rows]], impl: str) -> List[dict]:
    """One row per target: its values per run (None where the run lacks them) and how
    many of the runs with a value meet it; for speed targets against the reference also
    the speed-up at the floor per run ("floor_values") and in how many runs that meets
    the target ("floor_met", "floor_runs"), and the two times behind the speed-up
    ("reference_ms", "impl_ms")."""
    out = []
    for label, shape, get, threshold, at_least, floor_column in TARGETS:
        values = [get(run[shape], impl) if shape in run else None for run in runs]
        met, have = _count(values, threshold, at_least)
        row = {"target": label, "shape": shape, "values": values, "met": met, "runs": have}
        if floor_column is not None:
            floor = [_floor_speedup(run[shape], floor_column) if shape in run else None for run in runs]
            row["floor_values"] = floor
            row["floor_met"], row["floor_runs"] = _count(floor, threshold, at_least)
            for key, name in (("reference_ms", "reference"), ("impl_ms", impl)):
                row[key] = [_time_ms(run[shape], name, floor_column) if shape in run else None for run in runs]
        out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="`adaptir bench --full --json` files, one run each")
    ap.add_argument("--impl", default="fused:cpp", help="the implementation to hold to the targets")
    args = ap.parse_args(argv)
    try:
        runs = [load_rows(p) for p in args.files]
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        print(f"targets: {e}", file=sys.stderr)
        return 2
    rows = evaluate(runs, args.impl)
    if not any(r["runs"] for r in rows):
        print(f"targets: no run has results for {args.impl!r}", file=sys.stderr)
        return 2
    print(f"{args.impl}, {len(runs)} run(s); values in file order")
    print(f"{'target':46} {'shape':10} {'values':40} met")
    def line(label, shape, values, met=None, have=None):
        vals = ", ".join("-" if v is None else f"{v:.2f}" for v in values)
        count = "" if have is None else (f"{met} of {have}" if have else "no data")
        print(f"{label:46} {shape:10} {vals:40} {count}".rstrip())

    for r in rows:
        line(r["target"], r["shape"], r["values"], r["met"], r["runs"])
        if r.get("floor_runs"):
            line("  at the floor", "", r["floor_values"], r["floor_met"], r["floor_runs"])
        for key, name in (("reference_ms", "reference"), ("impl_ms", args.impl)):
            if any(v is not None for v in r.get(key, [])):
                line(f"  {name}, ms", "", r[key])
    return 0


if __name__ == "__main__":
    sys.exit(main())
