"""One GPU run tells what works: every message-passing kernel compiled for real (no interpret mode),
values and gradients against the XLA reference at several sizes, precisions and launch settings,
then the full model against the upstream reference set. Prints a PASS/FAIL table and, below it, the
error text of every failure; writes JSON to benchmarks/results/.

    python benchmarks/gpu_check_kernels.py                  # on the GPU machine (~2-4 min)
    python benchmarks/gpu_check_kernels.py --models-only    # only float32 exact and compressed models vs
                                                            # upstream float64 (kernel model and public API)
    python benchmarks/gpu_check_kernels.py --compile-only   # anywhere: lower every kernel to Triton
                                                            # IR, and to PTX if jax's CUDA plugin imports

PTX without a GPU (checks that Triton compiles the kernels and that they fit in shared memory):
    python3 -m venv --system-site-packages /tmp/venvcuda
    /tmp/venvcuda/bin/pip install --no-deps jax-cuda13-plugin==$JAXV jax-cuda13-pjrt==$JAXV   # $JAXV = jax version
    /tmp/venvcuda/bin/pip install jax-triton==0.3.1 triton==3.6.0                               # optional
    JAX_PLATFORMS=cpu /tmp/venvcuda/bin/python benchmarks/gpu_check_kernels.py --compile-only
    JAX_PLATFORMS=cpu /tmp/venvcuda/bin/python benchmarks/gpu_check_kernels.py --triton-interpret   # runs the
                                                            # Triton kernels in Triton's CPU interpreter

Reference values come from the XLA reference in float64 on the same device; the error of the XLA
reference itself in float32 is printed next to the kernel's, so the table shows whether a kernel
sits at the float32 floor. Error = max |kernel - reference| / max |reference|, per array.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
import time
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the working tree's mlff_jax
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import kernel_systems as ks  # noqa: E402
from mlff_jax.kernels.message_passing import layout, message_block  # noqa: E402
from mlff_jax.kernels.message_passing.model import energy_and_forces_kernel  # noqa: E402

# Pass bounds (relative error, see module docstring). float32 "highest"/"tf32x3": float32 round-off of
# sums of ~60 slots; "tf32"/"bf16": 10-/8-bit mantissas in the filter network.
BOUNDS = {("float64", "highest"): 1e-10, ("float32", "highest"): 2e-5, ("float32", "tf32x3"): 2e-5, ("float32", "tf32"): 2e-2, ("float32", "bf16"): 1e-1}
PARITY_F32_FORCES = 1e-4  # eV/Å, tests/tolerances.py
PARITY_F32_ENERGY_PER_ATOM = 1e-5


def block_inputs(kind: str, hidden: int, num_rbf: int, seed: int = 0, compressed: bool = False):
    """Geometry of a real system in the dense layout plus random features and filter weights (float64);
    ``compressed``: the block also carries the filter's Hermite table (spacing 0.01 Å, float64)."""
    rng = np.random.default_rng(seed)
    if kind == "benzene":
        pos, _ = ks.molecule("C6H6", seed)
        nbr, shifts = layout.all_pairs_dense(pos, 5.0)
    elif kind == "odd":  # nothing a power of two; 3 padding atoms; extra empty slots; pairs beyond rc
        pos = rng.uniform(0.0, 7.0, (37, 3))
        mask = np.arange(37) < 34
        nbr, shifts = layout.all_pairs_dense(pos, 5.7, atom_mask=mask)
        nbr = np.pad(nbr, ((0, 0), (0, 3)), constant_values=37)
        shifts = np.pad(shifts, ((0, 0), (0, 3), (0, 0)))
    else:  # "water-1k": periodic
        pos, _, cell = ks.water_box(7, seed)
        nbr, shifts = layout.periodic_dense(pos, cell, 5.0)
    d, u, _ = layout.slot_geometry(jnp.asarray(pos), jnp.asarray(nbr), jnp.asarray(shifts))
    n = len(pos)
    block = {
        "filter_in": {"kernel": rng.normal(size=(num_rbf, hidden)) / np.sqrt(num_rbf), "bias": 0.1 * rng.normal(size=hidden)},
        "filter_out": {"kernel": rng.normal(size=(hidden, 3 * hidden)) / np.sqrt(hidden), "bias": 0.1 * rng.normal(size=3 * hidden)},
    }
    args = dict(
        s=rng.normal(size=(n, hidden)),
        v=rng.normal(size=(n, 3, hidden)),
        distances=np.asarray(d),
        directions=np.asarray(u),
        block=block,
        centers=np.linspace(0.0, 5.0, num_rbf),
        widths=np.full(num_rbf, 5.0 / num_rbf),
    )
    if compressed:
        from mlff_jax.compress import build_filter_table

        table = build_filter_table(cast(block, jnp.float64), cast({"centers": args["centers"], "widths": args["widths"]}, jnp.float64), 5.0, 0.01)
        args["block"] = dict(block, filter_table=jax.tree.map(np.asarray, table))
    cotangents = (rng.normal(size=(n, hidden)), rng.normal(size=(n, 3, hidden)))
    return jnp.asarray(nbr), args, cotangents


def cast(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def value_and_vjp(implementation, nbr, args, cotangents, precision="highest", **options):
    """Jitted (ds, dv) and the VJP w.r.t. s, v, distances, directions and the filter parameters."""

    def f(s, v, d, u, block):
        return message_block(s, v, nbr, d, u, block, args["centers"], args["widths"], cutoff=5.0,
                             implementation=implementation, precision=precision, **options)  # fmt: skip

    @jax.jit
    def run(a, ct):
        out, pullback = jax.vjp(f, a["s"], a["v"], a["distances"], a["directions"], a["block"])
        return out, pullback(ct)

    return run


def relative_errors(actual, desired) -> float:
    worst = 0.0
    for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired)):
        a, d = np.asarray(a, np.float64), np.asarray(d, np.float64)
        if not np.all(np.isfinite(a)):
            return float("inf")
        worst = max(worst, float(np.abs(a - d).max() / max(np.abs(d).max(), 1e-30)))
    return worst


INTERPRET = False  # --interpret: smoke-test this script on CPU (Pallas interpret mode)


def check_blocks(implementations, rows, failures, quick=False):
    sizes = [("benzene", 64, 12), ("odd", 32, 10)] + ([] if INTERPRET else [("water-1k", 128, 20)])
    launches = [dict()] + ([] if quick else [dict(block_atoms=16, num_warps=4), dict(block_atoms=32), dict(block_atoms=64), dict(k_chunk=32), dict(slot_splits=1)])
    variants = [(size, "network") for size in sizes] + [(size, "compressed") for size in sizes] + [(size, "envelope") for size in sizes]
    for (kind, hidden, num_rbf), variant in variants:
        compressed = variant == "compressed"
        model_options = dict(envelope="polynomial") if variant == "envelope" else {}  # the filter envelope (docs/model.md)
        nbr, args64, ct64 = block_inputs(kind, hidden, num_rbf, compressed=compressed)
        ref_out, ref_grads = value_and_vjp("xla", nbr, args64, ct64, **model_options)(args64, ct64)
        args32, ct32 = cast(args64, jnp.float32), cast(ct64, jnp.float32)
        xla32 = value_and_vjp("xla", nbr, args32, ct32, **model_options)(args32, ct32)
        floor = (relative_errors(xla32[0], ref_out), relative_errors(xla32[1], ref_grads))
        for impl in implementations:
            cases = [("float64", "highest", {})]
            cases += [("float32", p, launch) for p in ("highest", "tf32x3", "tf32", "bf16") for launch in (launches if kind == "water-1k" and p == "highest" else [{}])]
            if compressed:  # the table kernels have no matmul: precision modes and k_chunk do not apply
                cases = [("float64", "highest", {}), ("float32", "highest", {}), ("float32", "highest", dict(slot_splits=1))]
            if model_options:  # the envelope: a few multiply-adds on top of the network kernels
                cases = [("float64", "highest", {}), ("float32", "highest", {}), ("float32", "tf32x3", {})]
            for dtype, precision, launch in cases:
                args, ct = (args64, ct64) if dtype == "float64" else (args32, ct32)
                row = dict(check="block", system=kind, N=int(nbr.shape[0]), C=int(nbr.shape[1]), H=hidden, implementation=impl,
                           compressed=compressed, dtype=dtype, precision=precision, launch=launch or "default", **model_options)  # fmt: skip
                try:
                    run = value_and_vjp(impl, nbr, args, ct, precision, **launch, **model_options, **({"interpret": True} if INTERPRET and impl == "pallas" else {}))
                    start = time.perf_counter()
                    out, grads = jax.block_until_ready(run(args, ct))
                    row["compile_and_run_s"] = round(time.perf_counter() - start, 2)
                    start = time.perf_counter()
                    jax.block_until_ready(run(args, ct))
                    row["run_ms"] = round(1e3 * (time.perf_counter() - start), 3)
                    row["value_error"] = relative_errors(out, ref_out)
                    row["grad_error"] = relative_errors(grads, ref_grads)
                    if dtype == "float32":
                        row["xla_f32_value_error"], row["xla_f32_grad_error"] = floor
                    bound = BOUNDS[(dtype, precision)]
                    row["status"] = "PASS" if max(row["value_error"], row["grad_error"]) <= bound else "FAIL"
                    if row["status"] == "FAIL":
                        failures.append((row, f"error above bound {bound:g}"))
                except Exception as err:  # noqa: BLE001 - report every failure, keep going
                    row["status"] = "ERROR"
                    failures.append((row, "".join(traceback.format_exception(err))[-4000:]))
                rows.append(row)
                print_row(row)


def reference_batch(up: pathlib.Path, name: str):
    ref = np.load(up / "reference" / f"{name}.npz")
    names = sorted({k.split("__")[0] for k in ref.files} - {"batch"})
    R = np.concatenate([ref[n + "__R"] for n in names])
    Z = np.concatenate([ref[n + "__Z"] for n in names])
    batch = np.concatenate([np.full(len(ref[n + "__Z"]), i) for i, n in enumerate(names)])
    E = np.array([ref[n + "__E_f64"] for n in names])
    F = np.concatenate([ref[n + "__F_f64"] for n in names])
    return R, Z, batch, E, F


def check_models(implementations, rows, failures):
    """Float32 kernel model on every upstream reference structure (one batch), each precision mode,
    exact and compressed (default table, ``model.compress()``): the force error of the fast modes and
    of the tables is the number users need. Then the compressed model through the public API as a
    user runs it (:func:`check_compressed_api`)."""
    from mlff_jax.compress import compress_params

    up = ks.upstream_dir()
    if up is None:
        print("SKIP model checks: upstream checkpoints not found (set MLFF_JAX_UPSTREAM)")
        return
    for name in ("tiny-77k",) if INTERPRET else ("tiny-77k", "student-427k"):
        config, params, _ = ks.load_params(name, "float32")
        tables = cast(compress_params(params, config), "float32")  # built in float64, cast: what compress() gives
        R, Z, batch, E, F = reference_batch(up, name)
        nbr, shifts = layout.all_pairs_dense(R, config.cutoff, batch=batch)
        sizes = np.bincount(batch)
        for impl in ["xla"] + list(implementations):
            # tables have no matmul: the precision modes do not apply to them
            cases = [(False, p) for p in ("highest", "tf32x3", "tf32", "bf16")] + [(True, "highest")]
            for compressed, precision in cases:
                row = dict(check="model", system=f"{name} reference set", N=len(Z), C=int(nbr.shape[1]), H=config.hidden_dim,
                           implementation=impl, compressed=compressed, dtype="float32", precision=precision, launch="default")  # fmt: skip

                def errors():
                    f = jax.jit(functools.partial(energy_and_forces_kernel, config=config, num_structures=len(E), implementation=impl,
                                                  precision=precision, interpret=INTERPRET and impl == "pallas"))  # fmt: skip
                    energies, forces = jax.block_until_ready(f(
                        tables if compressed else params, positions=jnp.asarray(R, jnp.float32), atomic_numbers=jnp.asarray(Z),
                        neighbors_idx=jnp.asarray(nbr), shifts=jnp.asarray(shifts, jnp.float32), atom_mask=jnp.ones(len(Z), bool),
                        batch=jnp.asarray(batch)))  # fmt: skip
                    return (float(np.abs(np.asarray(forces, np.float64) - F).max()),
                            float((np.abs(np.asarray(energies, np.float64) - E) / sizes).max()))

                # TF32 and bf16 are reported, not required (they are opt-in modes with a documented error)
                parity_row(row, errors, rows, failures, required=precision in ("highest", "tf32x3"))
    check_compressed_api(up, implementations, rows, failures)


def check_compressed_api(up, implementations, rows, failures):
    """``mlff_jax.load(..., dtype="float32").compress()`` with JAX's 64-bit mode OFF (as a GPU user
    runs it; tables are still built in float64), one ``energy_and_forces`` call per reference
    structure, exact and compressed, each implementation: the worst force error vs upstream float64."""
    import mlff_jax

    for name in ("tiny-77k",) if INTERPRET else ("tiny-77k", "student-427k"):
        ref = np.load(up / "reference" / f"{name}.npz")
        structures = sorted({k.split("__")[0] for k in ref.files} - {"batch"})
        for impl in ["xla"] + list(implementations):
            for compressed in (False, True):
                row = dict(check="api", system=f"{name} reference set, per structure", implementation=impl, compressed=compressed,
                           dtype="float32", precision="highest", launch="default")  # fmt: skip

                def errors():
                    with jax.enable_x64(False):
                        model = mlff_jax.load(up / "checkpoints" / f"{name}.model.pt", dtype="float32", implementation=impl,
                                              interpret=INTERPRET and impl == "pallas")  # fmt: skip
                        model = model.compress() if compressed else model
                        worst_f = worst_e = 0.0
                        for s in structures:
                            energy, forces = model.energy_and_forces(ref[s + "__R"], ref[s + "__Z"])
                            worst_f = max(worst_f, float(np.abs(np.asarray(forces, np.float64) - ref[s + "__F_f64"]).max()))
                            worst_e = max(worst_e, abs(float(energy) - float(ref[s + "__E_f64"])) / len(ref[s + "__Z"]))
                    return worst_f, worst_e

                parity_row(row, errors, rows, failures, required=True)


def parity_row(row, errors, rows, failures, required: bool):
    """Finishes a float32-parity row: ``errors()`` gives (worst force error eV/Å, worst energy error
    eV/atom) against upstream float64; the row is PASS within the float32 parity tolerances, else FAIL
    (``required``) or INFO, or ERROR with the traceback recorded; appended to ``rows`` and printed."""
    try:
        row["force_error_eV_A"], row["energy_error_eV_per_atom"] = errors()
        ok = row["force_error_eV_A"] <= PARITY_F32_FORCES and row["energy_error_eV_per_atom"] <= PARITY_F32_ENERGY_PER_ATOM
        row["status"] = "PASS" if ok else ("FAIL" if required else "INFO")
        if row["status"] == "FAIL":
            failures.append((row, "float32 parity with upstream float64 not reached"))
    except Exception as err:  # noqa: BLE001
        row["status"] = "ERROR"
        failures.append((row, "".join(traceback.format_exception(err))[-4000:]))
    rows.append(row)
    print_row(row)


COLUMNS = ("status", "check", "system", "implementation", "compressed", "envelope", "dtype", "precision", "launch", "value_error", "grad_error",
           "xla_f32_value_error", "force_error_eV_A", "energy_error_eV_per_atom", "run_ms")  # fmt: skip


_SAVE = {}


def save(rows, failures):
    """(Re)writes the results file: a run cut off by a time limit keeps what it measured."""
    if _SAVE:
        _SAVE["path"].write_text(json.dumps({"environment": _SAVE["env"], "rows": rows, "failures": [(r, t) for r, t in failures]}, indent=1, default=str))


def print_row(row):
    if _SAVE:
        save(_SAVE["rows"], _SAVE["failures"])
    cells = []
    for key in COLUMNS:
        value = row.get(key, "")
        if isinstance(value, float):
            value = f"{value:.2e}"
        elif isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        cells.append(f"{key}={value}" if key not in ("status",) else f"{value:5s}")
    print(" | ".join(c for c in cells if not c.endswith("=")), flush=True)


def available_implementations():
    impls = ["pallas"]
    try:
        import jax_triton  # noqa: F401
        import triton  # noqa: F401

        impls.append("triton")
    except ImportError as err:
        print(f"SKIP implementation 'triton': {err}")
    return impls


# ----------------------------------------------------------------------------- compile-only mode
def ptx_compiler():
    """compile(module_bytes, cfg) -> result with ``.asm`` (PTX) and ``.smem_bytes``, from jax's CUDA
    plugin (jax-cuda13-plugin + jax-cuda13-pjrt, installed with --no-deps in a venv), or None.
    Call before anything initialises JAX backends. Uses JAX internals: a developer aid, not an API."""
    try:
        import jax_cuda13_plugin.cuda_plugin_extension as ext
        import jax_plugins.xla_cuda13 as xla_cuda
        from jax._src.lib import xla_client

        c_api = xla_client.load_pjrt_plugin_dynamically("cuda", str(pathlib.Path(xla_cuda.__file__).parent / "xla_cuda_plugin.so"))
    except Exception as err:  # noqa: BLE001
        print(f"(no PTX compilation: {err.__class__.__name__}: {str(err)[:200]})")
        return None
    return lambda module, cfg: ext.compile_triton_to_asm(c_api, module, "9.0", cfg.num_warps, 1, cfg.num_stages)


SPILL_LIMIT_BYTES = 2048  # per thread, per kernel: above it a default launch is reported as FAIL


def ptxas_report(ptx: str) -> dict:
    """Registers and spills of a PTX kernel for sm_90a, from the ptxas shipped with the triton wheel
    (or on PATH); {} without one. PTX newer than that ptxas knows is relabelled (a developer aid)."""
    import re
    import shutil
    import subprocess
    import tempfile

    ptxas = shutil.which("ptxas")
    try:
        import triton

        bundled = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
        ptxas = str(bundled) if bundled.exists() else ptxas
    except ImportError:
        pass
    if ptxas is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        for text in (ptx, re.sub(r"^\.version \d+\.\d+", ".version 8.7", ptx, flags=re.M)):
            path = pathlib.Path(tmp) / "k.ptx"
            path.write_text(text)
            info = subprocess.run([ptxas, "-arch=sm_90a", "-v", str(path), "-o", str(path.with_suffix(".cubin"))], capture_output=True, text=True).stderr
            registers = re.findall(r"Used (\d+) registers", info)
            if registers:
                spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
                return dict(registers=int(registers[0]), spill_stores=int(spills[0][0]) if spills else 0, spill_loads=int(spills[0][1]) if spills else 0)
    return {"ptxas_error": info[-300:]}


def _judge(row, failures, default):
    """FAIL a default launch whose kernels exceed shared memory or spill more than SPILL_LIMIT_BYTES."""
    from mlff_jax.kernels.message_passing import pallas as kp

    kernels = row.get("kernels", [])
    too_big = any(k.get("smem_bytes", 0) > kp.SMEM_LIMIT_BYTES for k in kernels)
    spills = any(k.get("spill_stores", 0) > SPILL_LIMIT_BYTES for k in kernels)
    if too_big or spills:
        row["status"] = "FAIL" if default else "INFO"
        if default:
            failures.append((row, f"shared memory above {kp.SMEM_LIMIT_BYTES} B or spills above {SPILL_LIMIT_BYTES} B: {kernels}"))


COMPILE_LAUNCHES = (dict(), dict(block_atoms=32), dict(block_atoms=64), dict(k_chunk=128))  # default first


def compile_only(rows, failures, compile_ptx, exact=True):
    """Lowers every kernel to Triton IR for sm_90 without a GPU and, with ``compile_ptx``, to PTX;
    reports shared memory, and registers and spills when a ptxas is at hand."""
    import io

    from jax._src.pallas.triton import lowering as triton_lowering
    from jax._src.pallas.triton import pallas_call_registration as registration

    from mlff_jax.kernels.message_passing import pallas as kp

    try:  # jax >= 0.11 asks the device for its compute capability: pretend an H100
        from jax._src.pallas.triton import gpu_info

        gpu_info.get_gpu_info = lambda: gpu_info.get_gpu_info_from_version(gpu_info.GpuVersion.H100)
    except ImportError:
        pass
    captured = []
    original = triton_lowering.lower_jaxpr_to_triton_module

    def capture(*args, **kwargs):
        result = original(*args, **kwargs)
        buf = io.BytesIO()
        result.module.operation.write_bytecode(buf)
        captured.append(buf.getvalue())
        return result

    registration.lowering.lower_jaxpr_to_triton_module = capture
    for hidden, num_rbf in ((64, 12), (128, 20)) if exact else ():
        nbr, args64, ct64 = block_inputs("water-1k", hidden, num_rbf)
        n = nbr.shape[0]
        for dtype in ("float32", "float64"):
            for precision in ("highest", "tf32x3", "tf32", "bf16") if dtype == "float32" else ("highest",):
                for launch in COMPILE_LAUNCHES if hidden == 128 else COMPILE_LAUNCHES[:1]:
                    args, ct = cast(args64, dtype), cast(ct64, dtype)
                    block = launch.get("block_atoms", kp.default_block_atoms(n, dtype, precision))
                    cfg = kp.KernelConfig(num_atoms=n, cutoff=5.0, precision=precision, block_atoms=block, num_warps=kp.default_num_warps(block),
                                          k_chunk=launch.get("k_chunk", kp.default_k_chunk(dtype, precision, hidden)))  # fmt: skip
                    row = dict(check="compile", system="water-1k", H=hidden, implementation="pallas", dtype=dtype, precision=precision,
                               launch=dict(block_atoms=block, num_warps=cfg.num_warps, k_chunk=cfg.k_chunk), default=not launch)  # fmt: skip
                    captured.clear()
                    try:
                        value_and_vjp("pallas", nbr, args, ct, precision, **launch).trace(args, ct).lower(lowering_platforms=("cuda",))
                        row["triton_ir_modules"] = len(captured)
                        row["status"] = "PASS"
                        if compile_ptx is not None:
                            row["kernels"] = []
                            for module in captured:
                                result = compile_ptx(module, cfg)
                                row["kernels"].append(dict(smem_bytes=result.smem_bytes, **ptxas_report(result.asm)))
                            _judge(row, failures, not launch)
                    except Exception as err:  # noqa: BLE001
                        row["status"] = "ERROR"
                        failures.append((row, "".join(traceback.format_exception(err))[-4000:]))
                    rows.append(row)
                    print(f"{row['status']:5s} | pallas H={hidden} {dtype} {precision} {row['launch']}{' (default)' if not launch else ''} | "
                          f"fwd, bwd: {row.get('kernels')}", flush=True)  # fmt: skip
    compile_only_compressed(rows, failures, compile_ptx, captured)
    compile_only_triton(rows, failures, exact)


def compile_only_compressed(rows, failures, compile_ptx, captured, implementations=("pallas",)):
    """The table kernels of compressed blocks (H = 128, default launch), lowered and compiled like
    :func:`compile_only` (``captured`` collects the Triton modules of the patched lowering)."""
    from mlff_jax.kernels.message_passing import pallas as kp

    nbr, args64, ct64 = block_inputs("water-1k", 128, 20, compressed=True)
    n = nbr.shape[0]
    for dtype in ("float32", "float64"):
        args, ct = cast(args64, dtype), cast(ct64, dtype)
        block = kp.default_block_atoms(n, dtype, "highest")
        cfg = kp.KernelConfig(num_atoms=n, cutoff=5.0, block_atoms=block, num_warps=kp.default_num_warps(block),
                              table_intervals=args["block"]["filter_table"]["coefficients"].shape[0])  # fmt: skip
        row = dict(check="compile", system="water-1k", H=128, implementation="pallas", compressed=True, dtype=dtype, precision="highest",
                   launch=dict(block_atoms=block, num_warps=cfg.num_warps), default=True)  # fmt: skip
        captured.clear()
        try:
            value_and_vjp("pallas", nbr, args, ct).trace(args, ct).lower(lowering_platforms=("cuda",))
            row["triton_ir_modules"] = len(captured)
            row["status"] = "PASS"
            if compile_ptx is not None:
                row["kernels"] = [dict(smem_bytes=r.smem_bytes, **ptxas_report(r.asm)) for r in (compile_ptx(m, cfg) for m in captured)]
                _judge(row, failures, True)
        except Exception as err:  # noqa: BLE001
            row["status"] = "ERROR"
            failures.append((row, "".join(traceback.format_exception(err))[-4000:]))
        rows.append(row)
        print(f"{row['status']:5s} | pallas compressed H=128 {dtype} {row['launch']} | fwd, bwd: {row.get('kernels')}", flush=True)


def compile_only_triton(rows, failures, exact=True):
    """The jax-triton kernels compiled to PTX by Triton itself, if it imports."""
    try:
        import jax_triton.triton_lib as triton_lib
    except ImportError as err:
        print(f"SKIP implementation 'triton': {err}")
        return
    from mlff_jax.kernels.message_passing import pallas as kp

    triton_lib.triton_kernel_call_lib.get_compute_capability = lambda device: 90  # no device: target sm_90
    kernels = []
    original = triton_lib.compile_ttir_inplace

    def capture(*args, **kwargs):
        result = original(*args, **kwargs)
        kernels.append(dict(smem_bytes=result.shared_mem_bytes, **ptxas_report(result.binary)))
        return result

    triton_lib.compile_ttir_inplace = capture
    for compressed in (False, True) if exact else (True,):
        _compile_triton_cases(rows, failures, kernels, compressed)


def _compile_triton_cases(rows, failures, kernels, compressed):
    from mlff_jax.kernels.message_passing import pallas as kp

    nbr, args64, ct64 = block_inputs("water-1k", 128, 20, compressed=compressed)
    for dtype in ("float32", "float64"):
        for precision in ("highest", "tf32x3", "tf32", "bf16") if dtype == "float32" and not compressed else ("highest",):
            args, ct = cast(args64, dtype), cast(ct64, dtype)
            block = kp.default_block_atoms(nbr.shape[0], dtype, precision)
            row = dict(check="compile", system="water-1k", H=128, implementation="triton", compressed=compressed, dtype=dtype, precision=precision,
                       launch=dict(block_atoms=block, num_warps=kp.default_num_warps(block), k_chunk=kp.default_k_chunk(dtype, precision, 128)), default=True)  # fmt: skip
            kernels.clear()
            try:
                value_and_vjp("triton", nbr, args, ct, precision).trace(args, ct).lower(lowering_platforms=("cuda",))
                row["kernels"] = list(kernels)
                row["status"] = "PASS" if len(kernels) == 2 else "FAIL"
                _judge(row, failures, True)
            except Exception as err:  # noqa: BLE001
                row["status"] = "ERROR"
                failures.append((row, "".join(traceback.format_exception(err))[-4000:]))
            rows.append(row)
            print(f"{row['status']:5s} | triton{' compressed' if compressed else ''} H=128 {dtype} {precision} {row['launch']} | fwd, bwd: {row.get('kernels')}", flush=True)


# ----------------------------------------------------------------------------- Triton interpreter mode
class _HostBuffer:
    """A numpy array dressed as the torch tensor Triton's CPU interpreter expects (it reads and writes
    memory through ``data_ptr``). Relies on Triton internals: a developer aid."""

    def __init__(self, array):
        self.array = np.ascontiguousarray(np.asarray(array))
        self.dtype = {"float32": "fp32", "float64": "fp64", "int32": "i32"}[str(self.array.dtype)]

    def data_ptr(self):
        return self.array.ctypes.data

    def untyped_storage(self):
        return self

    def cpu(self):
        return self

    def new_empty(self, *args, **kwargs):
        return self

    def set_(self, *args):
        return self

    def storage_offset(self):
        return 0

    def size(self):
        return self.array.shape

    def stride(self):
        return tuple(s // self.array.itemsize for s in self.array.strides)

    def copy_(self, other):
        pass


def triton_interpret(rows, failures):
    """The jax-triton kernels run by Triton's CPU interpreter (TRITON_INTERPRET=1, set by main) on
    kernel-layout inputs, against the XLA reference: checks the Triton code itself without a GPU.
    bf16 is not checked (the interpreter mishandles bf16 dots); TF32 modes run as IEEE."""
    from mlff_jax.kernels.message_passing import pallas as kp
    from mlff_jax.kernels.message_passing import triton as kt

    for kind, hidden, num_rbf, compressed in (("odd", 32, 10, False), ("benzene", 64, 12, False), ("odd", 32, 10, True), ("benzene", 64, 12, True)):
        nbr, args64, ct64 = block_inputs(kind, hidden, num_rbf, compressed=compressed)
        ref_out, ref_grads = value_and_vjp("xla", nbr, args64, ct64)(args64, ct64)
        for dtype, bound in (("float64", BOUNDS[("float64", "highest")]), ("float32", BOUNDS[("float32", "highest")])):
            a, ct = cast(args64, dtype), cast(ct64, dtype)
            n, c = nbr.shape
            row = dict(check="triton-interpret", system=kind, N=int(n), C=int(c), H=hidden, implementation="triton", dtype=dtype, precision="highest",
                       compressed=compressed)  # fmt: skip
            try:
                table = a["block"]["filter_table"]["coefficients"].shape[0] if compressed else 0
                cfg = kp.KernelConfig(num_atoms=n, cutoff=5.0, block_atoms=16, k_chunk=16, slot_splits=3, table_intervals=table)
                p = kp.pack(nbr, a["distances"], a["directions"], a["block"], a["centers"], a["widths"], cfg)
                n_pad, h_pad, _ = kp.padded_sizes(n, hidden, num_rbf, 16)
                s_pad, v_pad = kp.pack_features(a["s"], a["v"], n_pad, h_pad)
                gs_pad, gv_pad = kp.pack_features(ct[0], ct[1], n_pad, h_pad)
                consts = kt._constants(p, s_pad, cfg)
                grid = (n_pad // 16, cfg.slot_splits)
                zeros = lambda shape: _HostBuffer(np.zeros(shape, s_pad.dtype))
                ds, dv = zeros((3, *s_pad.shape)), zeros((3, *v_pad.shape))
                filter_args = (p.table_coefficients,) if compressed else (p.w1, p.b1, p.w2, p.b2, p.centers, p.widths)
                inputs = (p.neighbors, p.distances, p.directions, s_pad, v_pad, *filter_args)
                (kt._forward_table_kernel if compressed else kt._forward_kernel)[grid](*map(_HostBuffer, inputs), ds, dv, **consts)
                outs = [zeros((3, *s_pad.shape)), zeros((3, *v_pad.shape)), zeros(p.distances.shape), zeros(p.directions.shape)]
                if compressed:
                    inputs = (p.neighbors, p.distances, p.directions, s_pad, v_pad, gs_pad, gv_pad, p.table_coefficients)
                else:
                    inputs = (p.neighbors, p.distances, p.directions, s_pad, v_pad, gs_pad, gv_pad, p.w1, p.b1, p.w2, p.b2,
                              jnp.transpose(p.w2, (0, 2, 1)), p.centers, p.widths)  # fmt: skip
                (kt._backward_table_kernel if compressed else kt._backward_kernel)[grid](*map(_HostBuffer, inputs), *outs, **consts)
                g_s, g_v, g_d, g_u = (o.array for o in outs)
                g_s, g_v, ds, dv = g_s.sum(0), g_v.sum(0), ds.array.sum(0), dv.array.sum(0)
                out = (ds[:n, :hidden], dv[:, :n, :hidden].transpose(1, 0, 2))
                grads = (g_s[:n, :hidden], g_v[:, :n, :hidden].transpose(1, 0, 2), g_d[:c, :n].T, g_u[:, :c, :n].transpose(2, 1, 0))
                row["value_error"] = relative_errors(out, ref_out)
                row["grad_error"] = relative_errors(grads, ref_grads[:4])
                row["status"] = "PASS" if max(row["value_error"], row["grad_error"]) <= bound else "FAIL"
                if row["status"] == "FAIL":
                    failures.append((row, f"error above bound {bound:g}"))
            except Exception as err:  # noqa: BLE001
                row["status"] = "ERROR"
                failures.append((row, "".join(traceback.format_exception(err))[-4000:]))
            rows.append(row)
            print_row(row)

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile-only", action="store_true", help="no GPU: lower (and compile to PTX if possible) only")
    parser.add_argument("--compressed-only", action="store_true", help="--compile-only: the table kernels of compressed blocks only")
    parser.add_argument("--triton-interpret", action="store_true", help="no GPU: run the jax-triton kernels in Triton's CPU interpreter")
    parser.add_argument("--quick", action="store_true", help="default launch settings only")
    parser.add_argument("--interpret", action="store_true", help="smoke-test this script on CPU (Pallas interpret mode, small systems)")
    parser.add_argument("--skip-models", action="store_true", help="kernel blocks only")
    parser.add_argument("--models-only", action="store_true", help="the model checks only: float32 exact and compressed vs upstream float64")
    parser.add_argument("--implementations", default=None, help="kernel implementations to check (default: pallas, and triton if jax-triton imports)")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/gpu_check_kernels_<tag>_<time>.json)")
    args = parser.parse_args()
    if args.triton_interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton decorates our kernels
    compile_ptx = ptx_compiler() if args.compile_only else None  # before JAX initialises its backends
    env = ks.environment()
    print(json.dumps(env))
    rows, failures = [], []
    ks.RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "compile" if args.compile_only else "triton_interpret" if args.triton_interpret else env["device"].replace(" ", "_")
    out = pathlib.Path(args.out) if args.out else ks.RESULTS / f"gpu_check_kernels_{tag}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    _SAVE.update(path=out, env=env, rows=rows, failures=failures)
    if args.compile_only:
        compile_only(rows, failures, compile_ptx, exact=not args.compressed_only)
    elif args.triton_interpret:
        triton_interpret(rows, failures)
    else:
        global INTERPRET
        INTERPRET = args.interpret
        if jax.default_backend() != "gpu" and not INTERPRET:
            sys.exit("no GPU: run with --compile-only, --triton-interpret or --interpret, or on the GPU machine")
        impls = args.implementations.split(",") if args.implementations else available_implementations()
        if not args.models_only:
            check_blocks(impls, rows, failures, quick=args.quick)
        if not args.skip_models:
            check_models(impls, rows, failures)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("PASS", "FAIL", "ERROR", "INFO")}
    print("\nSUMMARY", counts)
    for row, text in failures:
        print("\n" + "=" * 100 + f"\n{row['status']}: {json.dumps({k: v for k, v in row.items() if k != 'status'}, default=str)}\n{text}")
    save(rows, failures)
    print(f"\nwrote {out}")
    sys.exit(1 if counts["FAIL"] or counts["ERROR"] else 0)


if __name__ == "__main__":
    main()
