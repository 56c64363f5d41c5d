"""Builds ``mlff_jax/kernels_choice.json`` (what ``implementation="auto"`` picks) from measurements.

    python3 benchmarks/make_kernels_choice.py                       # every benchmarks/results/bench_api_*.json
    python3 benchmarks/make_kernels_choice.py path/to/api.json ...  # or these files

Input: rows of ``bench_message_passing.py --api`` (workload "model api energy+forces"; GPU runs
only). For each device kind and workload key (``mlff_jax.implementation.workload_key``: dtype,
precision, exact or compressed, hidden width, size class) the implementations are ranked by median
time (the newest run wins where several measured the same case). A kernel is ranked before XLA only
if it is at least ``--min-speedup`` times faster than XLA (or XLA failed, e.g. out of memory) and
its forces agree with XLA's to ``--max-force-diff`` eV/Å (a wrong kernel is never chosen). Rows
marked ``"valid": false`` (benchmarks/validity.py) are ignored. XLA is
always the last resort of every ranking; workloads nobody measured are absent (they get XLA).
"""

from __future__ import annotations

import argparse
import json
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
API_WORKLOAD = "model api energy+forces"  # bench_message_passing.API_WORKLOAD


def collect(paths):
    """{(device, key): {implementation: (time_stamp, median_s, row)}} of usable rows, plus rejections."""
    best, rejected = {}, []
    for path in paths:
        data = json.loads(pathlib.Path(path).read_text())
        env = data.get("environment", {})
        if data.get("workload") != API_WORKLOAD or env.get("platform") != "gpu":
            continue
        stamp = env.get("time", "")
        for row in data["rows"]:
            if "key" not in row or "implementation" not in row:
                continue
            where = (env["device"], row["key"])
            if row.get("valid") is False:  # a row whose run failed its physics checks is never a basis for a choice
                rejected.append(f"{where} {row['implementation']}: invalid ({'; '.join(row.get('invalid_reasons', []))[:120]})")
                continue
            if "error" in row or not row.get("finite", False):
                rejected.append(f"{where} {row['implementation']}: {row.get('error', 'non-finite forces')[:120]}")
                continue
            previous = best.setdefault(where, {}).get(row["implementation"])
            if previous is None or stamp >= previous[0]:
                best[where][row["implementation"]] = (stamp, row["median_s"], row)
    return best, rejected


def rank(times: dict, min_speedup: float, max_force_diff: float, notes: list, where) -> list[str]:
    """Implementations fastest first, XLA last unless it is measured and no kernel beats it clearly."""
    xla = times.get("xla")
    kernels = []
    for name, (_, median, row) in times.items():
        if name == "xla":
            continue
        diff = row.get("max_force_diff_vs_xla_eV_A")
        if diff is not None and not diff <= max_force_diff:
            notes.append(f"{where} {name}: forces differ from XLA by {diff:.2e} eV/Å > {max_force_diff}: never chosen")
            continue
        if xla is not None and not xla[1] >= min_speedup * median:
            continue
        kernels.append((median, name))
    return [name for _, name in sorted(kernels)] + ["xla"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="bench_message_passing.py --api JSON files (default: benchmarks/results/bench_api_*.json)")
    parser.add_argument("--out", default=str(REPO / "mlff_jax" / "kernels_choice.json"))
    parser.add_argument("--min-speedup", type=float, default=1.05, help="a kernel must beat XLA by this factor to be chosen")
    parser.add_argument("--max-force-diff", type=float, default=1e-3, help="eV/Å: largest force difference to XLA a chosen kernel may have")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(str(p) for p in (REPO / "benchmarks" / "results").glob("bench_api_*.json"))
    best, rejected = collect(paths)
    choices, measurements, notes = {}, {}, list(rejected)
    for (device, key), times in sorted(best.items()):
        ranking = rank(times, args.min_speedup, args.max_force_diff, notes, (device, key))
        if ranking != ["xla"]:
            choices.setdefault(device, {})[key] = ranking
        measurements.setdefault(device, {})[key] = {name: round(1e3 * t[1], 4) for name, t in sorted(times.items())}
    table = {
        "generated_by": "python3 benchmarks/make_kernels_choice.py " + " ".join(pathlib.Path(p).name for p in paths),
        "min_speedup": args.min_speedup,
        "max_force_diff_eV_A": args.max_force_diff,
        "choices": choices,
        "measurements_ms": measurements,
        "notes": notes,
    }
    pathlib.Path(args.out).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(json.dumps(choices, indent=1))
    print(f"wrote {args.out} from {len(paths)} file(s); {len(notes)} note(s)")
    return table


if __name__ == "__main__":
    main()
