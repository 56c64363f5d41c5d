"""One molecule, energy + forces, one call from Python: PyTorch baseline vs mlff-jax paths.

    python3 benchmarks/bench_single_molecule.py --checkpoint PATH --reference NPZ --out results/x.json

Side by side in one run: our PyTorch implementation of the student (eager, and torch.compile when it
works) and each available mlff-jax method. Also checks float32 forces against the upstream float64
reference on this device (the TF32 trap: see docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, jax_sync, time_fn, write_json  # noqa: E402
from systems import water_cluster  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--reference", required=True, help="upstream reference .npz of the same model")
    p.add_argument("--out", required=True)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--kernels", default="", help="comma list of kernel implementations to add (pallas,triton): the host call through them")
    args = p.parse_args(argv)

    import jax

    import mlff_jax

    ref = np.load(args.reference)
    names = ["005_H2", "000_CH3CHO", "022_C6H6", "062_water10", "063_water30"]
    systems = {n: (ref[n + "__R"], ref[n + "__Z"]) for n in names}
    systems["water64_192atoms"] = water_cluster(64)
    results = {"environment": environment(), "checkpoint": os.path.basename(args.checkpoint), "rows": []}

    parity = {}
    for precision in ("highest", "default"):
        model = mlff_jax.load(args.checkpoint, dtype="float32", precision=precision)
        worst = 0.0
        for n in sorted({k.split("__")[0] for k in ref.files} - {"batch"}):
            _, f = model.energy_and_forces(ref[n + "__R"], ref[n + "__Z"])
            worst = max(worst, float(np.abs(np.asarray(f) - ref[n + "__F_f64"]).max()))
        parity[precision] = worst
    results["float32_max_force_error_vs_upstream_f64"] = parity
    print("float32 max |F - F_ref(f64)| by matmul precision:", parity)

    methods = {}
    model = mlff_jax.load(args.checkpoint, dtype="float32")
    import inspect

    available = ["autodiff"]
    if "method" in inspect.signature(model.energy_and_forces).parameters:
        available = ["autodiff", "analytic"]
    for method in available:
        kwargs = {} if method == "autodiff" and len(available) == 1 else {"method": method}
        methods[f"jax-{method}"] = lambda pos, z, kw=kwargs: jax_sync(model.energy_and_forces(pos, z, **kw))

    for implementation in [k for k in args.kernels.split(",") if k]:
        try:
            kernel_model = model.with_implementation(implementation)
            methods[f"jax-{implementation}"] = lambda pos, z, m=kernel_model: jax_sync(m.energy_and_forces(pos, z))
        except ValueError as exc:  # e.g. jax-triton not installed
            results[f"jax-{implementation}_error"] = str(exc)

    if not args.no_torch:
        try:
            import torch

            from torch_student import TorchPaiNN, energy_and_forces

            device = "cuda" if torch.cuda.is_available() else "cpu"
            tmodel = TorchPaiNN.from_checkpoint(args.checkpoint).to(device)

            def torch_call(m):
                def run(pos, z):
                    e, f = energy_and_forces(m, torch.as_tensor(pos, dtype=torch.float32, device=device), torch.as_tensor(z, device=device))
                    if device == "cuda":
                        torch.cuda.synchronize()
                    return e, f

                return run

            methods["torch-eager"] = torch_call(tmodel)
            # parity of our PyTorch baseline with the upstream reference (it must be the same model)
            e, f = methods["torch-eager"](ref["000_CH3CHO__R"], ref["000_CH3CHO__Z"])
            results["torch_baseline_max_force_error"] = float(np.abs(f.cpu().numpy() - ref["000_CH3CHO__F_f64"]).max())
            print("torch baseline |F - F_ref|:", results["torch_baseline_max_force_error"])
            try:
                compiled = torch.compile(tmodel, dynamic=True)
                methods["torch-compile"] = torch_call(compiled)
                methods["torch-compile"](ref["000_CH3CHO__R"], ref["000_CH3CHO__Z"])
            except Exception as exc:  # report, don't hide
                methods.pop("torch-compile", None)
                results["torch_compile_error"] = f"{type(exc).__name__}: {exc}"[:500]
        except ImportError as exc:
            results["torch_error"] = str(exc)

    for name, (pos, z) in systems.items():
        row = {"system": name, "atoms": int(len(z))}
        # The same evaluation as one jitted call on device-resident positions (the jax.jit-compatible
        # API: no validation, padding or host transfer), forces copied back: what a compiled driver sees.
        z_device = jax.numpy.asarray(z)
        jitted = jax.jit(lambda r, _z=z_device: model.energy_and_forces(r, _z))
        pos_device = jax.device_put(np.asarray(pos, np.float32))
        methods["jax-jit-device-inputs"] = lambda _p, _z, f=jitted, r=pos_device: jax.block_until_ready(f(r))
        for method, fn in methods.items():
            try:
                row[method] = time_fn(lambda: fn(pos, z), sync=lambda r: r, repeats=args.repeats)["median_us"]
            except Exception as exc:
                row[method] = None
                row[method + "_error"] = f"{type(exc).__name__}: {exc}"[:300]
        results["rows"].append(row)
        print(row)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
