"""Plots for docs/performance.md from committed results (no GPU needed).

    python3 benchmarks/plot_performance.py   # writes docs/performance.png
"""

from __future__ import annotations

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main():
    fig, (left, right, boxes) = plt.subplots(1, 3, figsize=(16, 4.4))
    nbrs = json.loads((RESULTS / "neighbors_h100.json").read_text())
    for method in ("ours-pallas", "ours-xla", "jax-md"):
        rows = sorted((r for r in nbrs["results"] if r.get("method") == method and "median_ms" in r), key=lambda r: r["atoms"])
        left.loglog([r["atoms"] for r in rows], [r["median_ms"] for r in rows], "o-", label=method)
    for label, ref in nbrs["published_reference_ms"].items():
        left.loglog([int(k) for k in ref], list(ref.values()), "k*", ms=10, label=f"{label} (published)")
    left.set(xlabel="atoms (water, 5 Å cutoff)", ylabel="neighbour-list build (ms)", title="Neighbour lists, H100")
    left.legend()

    forces = json.loads((RESULTS / "forces_h100.json").read_text())
    for variant in ("autodiff", "analytic"):
        pts = [(s["atoms"], next(r for r in s["rows"] if r["variant"] == variant)["loop"]["median_us_per_step"]) for s in forces["systems"]]
        right.loglog(*zip(*pts), "o-", label=f"{variant} (compiled loop)")
    # MD steps are left out: the committed MD timings (md_h100.json) come from runs whose physics was
    # not checked, and benchmarks/validity.py's rule quotes no such run.
    right.set(xlabel="atoms (molecule / cluster)", ylabel="µs per energy+forces", title="Energy + forces, 427K model, H100")
    right.legend()

    # Periodic water, 427K, through the public API: one side-by-side run of every implementation.
    api = json.loads((RESULTS / "bench_api_h100_all.json").read_text())
    for implementation in ("xla", "pallas", "triton"):
        for compressed, style in ((False, "o-"), (True, "s--")):
            rows = sorted((r for r in api["rows"] if r.get("implementation") == implementation and r.get("compressed") == compressed and "median_s" in r),
                          key=lambda r: r["atoms"])
            if rows:
                label = f"{implementation}, {'compressed' if compressed else 'exact'}"
                boxes.loglog([r["atoms"] for r in rows], [1e3 * r["median_s"] for r in rows], style, label=label)
    boxes.set(xlabel="atoms (periodic water)", ylabel="ms per energy+forces", title="Periodic water, 427K model, H100 (API)")
    boxes.legend()
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "performance.png", dpi=110)
    print("wrote docs/performance.png")


if __name__ == "__main__":
    main()
