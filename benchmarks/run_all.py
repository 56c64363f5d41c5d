"""Run every benchmark on this machine, one after the other, each within its own time budget.

    python3 benchmarks/run_all.py --out benchmarks/results/run_<label> [--only a,b] [--upstream FOLDER]

Each benchmark is a separate process (its own compile caches and peak memory); a benchmark that
fails or overruns its budget is recorded in ``summary.json`` and the run goes on. Every JSON carries
the device name, library versions, git commit and command.

MD benchmarks check their own physics (``benchmarks/validity.py``). The headline benchmark
(``md_boxes``: periodic water at 1k, 10k and 100k atoms, exact and compressed, ``auto`` and each
implementation, Langevin-equilibrated then timed in NVE) must produce valid rows: if any of its
rows is invalid (overflow during timing, a tripped guard, a temperature above twice the start, or
no physics recorded), the summary says so and this script exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# the upstream checkpoints and reference outputs vendored with the tests
VENDORED_UPSTREAM = os.path.join(os.path.dirname(HERE), "tests", "data", "upstream")
HEADLINE = ("md_boxes",)  # benchmarks whose figures the README quotes: an invalid row fails the run


def plan(upstream: str, out: str) -> dict[str, tuple[list[str], int]]:
    ck = lambda name: os.path.join(upstream, "checkpoints", f"{name}.model.pt")  # noqa: E731
    py = [sys.executable]
    return {
        # one molecule per host call: PyTorch eager / torch.compile, XLA autodiff / analytic, both kernels, one jitted call
        "single_molecule": (py + [f"{HERE}/bench_single_molecule.py", "--checkpoint", ck("tiny-77k"), "--reference",
                                  os.path.join(upstream, "reference", "tiny-77k.npz"), "--kernels", "pallas,triton",
                                  "--out", f"{out}/single_molecule.json"], 260),
        "forces": (py + [f"{HERE}/bench_forces.py", "--checkpoint", ck("student-427k"), "--out", f"{out}/forces.json"], 170),
        # compiled MD of benzene, 60- and 192-atom clusters through each implementation
        "md": (py + [f"{HERE}/bench_md.py", "--checkpoint", ck("tiny-77k"), "--implementations", "xla,pallas,triton", "--repeats", "5",
                     "--out", f"{out}/md.json"], 200),
        # compiled MD of periodic water boxes (427K model): Langevin-equilibrated (100 steps, 50 fs), then NVE
        # timed (1 + 3 calls of 10 steps), compressed then exact filters, auto and each implementation; rows are
        # written as they come, so a run cut by the budget keeps what it measured (and fails the headline)
        "md_boxes": (py + [f"{HERE}/bench_md.py", "--checkpoint", ck("student-427k"), "--systems", "benzene_12", "--steps", "100", "--repeats", "3",
                           "--boxes", "1000,10000,100000", "--box-modes", "compressed,exact", "--box-implementations", "auto,xla,pallas,triton",
                           "--box-steps", "10", "--equilibrate-steps", "100", "--out", f"{out}/md_boxes.json"], 570),
        # 1,024 molecules per call (XLA analytic / autodiff, kernels exact / compressed) and periodic water
        "throughput": (py + [f"{HERE}/bench_throughput.py", "--checkpoint-small", ck("tiny-77k"), "--checkpoint-large", ck("student-427k"),
                             "--batched-implementations", "auto,pallas,triton", "--out", f"{out}/throughput.json"], 300),
        "neighbors": (py + [f"{HERE}/bench_neighbors.py", "--repeats", "10", "--timeout", "60", "--out", f"{out}/neighbors.json"], 150),
        # the public API's implementations side by side (input of benchmarks/make_kernels_choice.py)
        "api": (py + [f"{HERE}/bench_message_passing.py", "--api", "--implementations", "xla,pallas,triton", "--budget-s", "330",
                      "--out", f"{out}/bench_api.json"], 390),
        # writes benchmarks/results/bench_message_passing_<device>_<time>.json itself
        "message_passing": (py + [f"{HERE}/bench_message_passing.py", "--precisions", "highest", "--repeats", "5"], 150),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", default=VENDORED_UPSTREAM, help="folder with checkpoints/ and reference/ of the upstream models (default: tests/data/upstream)")
    p.add_argument("--out", required=True, help="folder for the JSON results")
    p.add_argument("--only", default=None, help="comma-separated subset of: " + ", ".join(plan(".", ".")))
    p.add_argument("--box-sizes", default=None, help="override md_boxes' atom counts (e.g. 96 for a quick CPU check)")
    p.add_argument("--checkpoint", default=None, help="override md_boxes' checkpoint (e.g. a condensed-phase model)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    jobs = plan(args.upstream, args.out)
    cmd, budget = jobs["md_boxes"]
    if args.box_sizes:
        cmd = [args.box_sizes if previous == "--boxes" else a for previous, a in zip([None] + cmd, cmd)]
    if args.checkpoint:
        cmd = [args.checkpoint if previous == "--checkpoint" else a for previous, a in zip([None] + cmd, cmd)]
    jobs["md_boxes"] = (cmd, budget)
    chosen = args.only.split(",") if args.only else list(jobs)
    summary = {}
    for name in chosen:
        cmd, budget = jobs[name]
        t0 = time.time()
        print(f"=== {name} (budget {budget} s): {' '.join(cmd)}", flush=True)
        try:
            env = dict(os.environ, MLFF_JAX_UPSTREAM=os.path.abspath(args.upstream))
            proc = subprocess.run(cmd, timeout=budget, capture_output=True, text=True, env=env)
            status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
            log = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            status = f"timeout after {budget} s"
            log = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
        with open(os.path.join(args.out, f"{name}.log"), "w") as f:
            f.write(log)
        summary[name] = {"status": status, "seconds": round(time.time() - t0, 1), "command": " ".join(cmd)}
        if name in HEADLINE:
            summary[name]["invalid_rows"] = headline_invalid_rows(os.path.join(args.out, f"{name}.json"))
            if status != "ok":  # a headline that did not finish measured nothing quotable
                summary[name]["invalid_rows"].append(("(run)", [f"{name} did not finish: {status}"]))
        print(f"--- {name}: {status} in {summary[name]['seconds']} s", flush=True)
        print("\n".join(log.strip().splitlines()[-6:]), flush=True)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    failed = {name: s["invalid_rows"] for name, s in summary.items() if s.get("invalid_rows")}
    for name, rows in failed.items():
        print(f"INVALID headline rows in {name} (not quotable):", flush=True)
        for system, reasons in rows:
            print(f"  {system}: {'; '.join(reasons)}", flush=True)
    return 1 if failed else 0


def headline_invalid_rows(path: str) -> list:
    """(system, reasons) of the invalid MD rows of a headline JSON; a missing JSON is itself invalid."""
    sys.path.insert(0, HERE)
    from validity import invalid_rows

    if not os.path.exists(path):
        return [("(no results)", [f"{os.path.basename(path)} was not written"])]
    return invalid_rows(path)


if __name__ == "__main__":
    sys.exit(main())
