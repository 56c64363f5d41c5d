"""The ``mlff-jax`` command: eval, md, bench, convert, data, train.

Every subcommand explains itself with ``--help``. Bad input (a missing file, an unknown model, an
unsupported element, a bad number) prints one line, ``mlff-jax <command>: error: ...``, to stderr
and exits with status 2, without a traceback (set ``MLFF_JAX_DEBUG=1`` to see the traceback).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pathlib
import sys
import time

from mlff_jax._cli_common import (  # noqa: F401  (re-exported: the CLI's public helpers)
    EXIT_BAD_INPUT,
    UserError,
    check_structure,
    enable_dtype,
    has_periodic_support,
    Parser,
    load_model,
    non_negative_float,
    positive_float,
    positive_int,
    read_structure,
)


def _energy_and_forces(model, atoms):
    """Host evaluation of one structure: periodic images when ``atoms.pbc`` says so."""
    if np.any(atoms.pbc):
        return model.energy_and_forces(atoms.positions, atoms.numbers, cell=atoms.cell.array, pbc=atoms.pbc)
    return model.energy_and_forces(atoms.positions, atoms.numbers)


def _formula(atoms) -> str:
    return atoms.get_chemical_formula(mode="hill")


# ----------------------------------------------------------------------------- eval
def cmd_eval(args) -> int:
    model = load_model(args.model, args.dtype, args.allow_untrained_elements)
    frames = read_structure(args.structure, index=":")
    for k, atoms in enumerate(frames):
        check_structure(model, atoms)
        start = time.perf_counter()
        energy, forces = _energy_and_forces(model, atoms)
        forces = np.asarray(forces)
        first_s = time.perf_counter() - start
        header = f"frame {k}: " if len(frames) > 1 else ""
        print(f"{header}{args.structure}: {len(atoms)} atoms ({_formula(atoms)}), model {args.model} ({model.dtype})")
        print(f"energy: {float(energy):.6f} eV")
        print("forces (eV/Å):")
        print(f"{'atom':>6} {'el':>3} {'Fx':>12} {'Fy':>12} {'Fz':>12}")
        for i, (symbol, f) in enumerate(zip(atoms.get_chemical_symbols(), forces)):
            print(f"{i:>6} {symbol:>3} {f[0]:>12.6f} {f[1]:>12.6f} {f[2]:>12.6f}")
        print(f"max |F|: {np.linalg.norm(forces, axis=1).max():.6f} eV/Å")
        if args.repeats and k == 0:
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                energy, forces = _energy_and_forces(model, atoms)
                np.asarray(forces)
                times.append(time.perf_counter() - start)
            print(f"time: first call {first_s * 1e3:.1f} ms (compiles), then {np.median(times) * 1e6:.0f} µs per call (median of {args.repeats})")
    return 0


# ----------------------------------------------------------------------------- convert
def cmd_convert(args) -> int:
    import mlff_jax

    if not os.path.exists(args.src):
        raise UserError(f"checkpoint not found: {args.src}")
    dst = pathlib.Path(args.dst)
    if dst.suffix != ".safetensors":
        raise UserError(f"the output is safetensors: name it *.safetensors, got {args.dst}")
    if dst.exists() and not args.overwrite:  # checked before the (slow) load; save checks again
        raise UserError(f"{args.dst} exists: pass --overwrite to replace it")
    model = load_model(args.src, args.dtype, elements=args.elements)
    mlff_jax.save(model, dst, overwrite=args.overwrite)
    print(f"wrote {dst}: {model!r}")
    return 0


# ----------------------------------------------------------------------------- md, bench
def cmd_md(args) -> int:
    from mlff_jax import _cli_md

    return _cli_md.run_md(args)


def cmd_bench(args) -> int:
    from mlff_jax import _cli_md

    return _cli_md.run_bench(args)


# ----------------------------------------------------------------------------- data, train
def _delegate(module_name: str, what: str, argv) -> int:
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (error.name == module_name or module_name.startswith(error.name + ".")):
            raise UserError(f"'{what}' is not available in this installation ({module_name} is missing)") from None
        raise UserError(f"'{what}' needs a package that is not installed: {error.name} (pip install 'mlff-jax[train]')") from None
    result = module.main(list(argv))
    return int(result or 0)


def cmd_data(args) -> int:
    return _delegate("mlff_jax.train.data", "data", args.rest)


def cmd_train(args) -> int:
    return _delegate("mlff_jax.train", "train", args.rest)


# ----------------------------------------------------------------------------- parser
def _model_args(p) -> None:
    p.add_argument("--model", default="default", help="checkpoint path (any upstream layout, ONNX, or ours) or a bundled model name (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="floating-point precision (default: %(default)s)")
    p.add_argument("--allow-untrained-elements", action="store_true",
                   help="evaluate elements the model was not trained on (refused by default: their results are meaningless)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mlff-jax",
        allow_abbrev=False,
        description="PaiNN student force fields in JAX: evaluate, run MD, benchmark, convert, train.",
        epilog="examples:\n  mlff-jax eval ethanol --model student.safetensors\n  mlff-jax md water10 --model student.safetensors --steps 10000 --output run.xyz\n\n'mlff-jax COMMAND --help' explains each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)  # Parser: allow_abbrev=False on every subparser too

    p = sub.add_parser("eval", help="energy and forces of a structure", description="Prints the energy (eV) and forces (eV/Å) of every frame of STRUCTURE, and the time per call.")
    p.add_argument("structure", metavar="STRUCTURE", help="any file ASE reads (xyz, extxyz, pdb, cif, traj, ...) or a bundled example (ethanol, benzene, water10)")
    _model_args(p)
    p.add_argument("--repeats", type=int, default=10, help="timed calls after the first (0: no timing; default: %(default)s)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "md",
        help="molecular dynamics, compiled",
        description=(
            "Runs MD with the whole loop compiled (many steps per call, no host round trip per step). "
            "First relaxes the structure (FIRE, to --relax-fmax), draws velocities at --temperature and "
            "equilibrates with Langevin for --equilibrate fs; then runs --steps steps with Langevin (BAOAB, "
            "the default) or velocity Verlet (NVE, --thermostat none). Guards stop a run that explodes "
            "(non-finite values, temperature, NVE energy change, atoms closer than 0.5 Å) with one line. "
            "Shows a progress bar with steps/s and ns/day, and a summary with the temperature and the "
            "total-energy drift; writes an extended-XYZ trajectory (positions, velocities, energy, "
            "forces) and a CSV energy log. Units: fs, K, 1/fs, eV/Å."
        ),
    )
    p.add_argument("structure", metavar="STRUCTURE", help="starting structure: any file ASE reads, or a bundled example")
    _model_args(p)
    p.add_argument("--steps", type=positive_int, required=True, help="number of steps")
    p.add_argument("--timestep", type=positive_float, default=0.5, help="timestep in fs (default: %(default)s)")
    p.add_argument("--temperature", type=non_negative_float, default=300.0, help="K: initial Maxwell-Boltzmann velocities and the thermostat's target (default: %(default)s)")
    p.add_argument("--thermostat", choices=("none", "langevin"), default="langevin", help="langevin (NVT) or none (NVE) for the recorded run (default: %(default)s)")
    p.add_argument("--friction", type=non_negative_float, default=0.01, help="Langevin friction in 1/fs (default: %(default)s)")
    p.add_argument("--output", required=True, metavar="TRAJ", help="trajectory file (extended XYZ)")
    p.add_argument("--log", metavar="CSV", help="energy log (default: TRAJ with the suffix .csv)")
    p.add_argument("--frame-interval", type=positive_int, default=10, help="steps between recorded frames (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed for velocities and the thermostat (default: %(default)s)")
    p.add_argument("--relax-fmax", type=non_negative_float, default=0.05, metavar="EV_PER_A", help="relax the structure with FIRE to this largest force (eV/Å) before drawing velocities; 0: no relaxation (default: %(default)s)")
    p.add_argument("--equilibrate", type=non_negative_float, default=500.0, metavar="FS", help="fs of Langevin at --temperature before the recorded run, which then starts at step 0; 0: none (default: %(default)s)")
    p.add_argument("--keep-velocities", action="store_true", help="run STRUCTURE as given: its stored velocities, no relaxation, no equilibration")
    p.add_argument("--no-guards", action="store_true", help="do not stop when the simulation explodes (see docs/md.md for the guards and their bounds)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_md)

    p = sub.add_parser("bench", help="quick speed check", description="Times energy+forces of one call from Python, and steps per second of the compiled MD loop (NVE at 0.5 fs from 300 K, after a FIRE relaxation) on a bundled molecule, with the temperature and energy drift of the timed steps: a speed from a run that heated up is marked INVALID.")
    _model_args(p)
    p.add_argument("--molecule", default="benzene", help="bundled example (ethanol, benzene, water10) or a structure file (default: %(default)s)")
    p.add_argument("--repeats", type=positive_int, default=50, help="timed energy+forces calls (default: %(default)s)")
    p.add_argument("--md-steps", type=positive_int, default=1000, help="MD steps per timed compiled call (default: %(default)s)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("convert", help="convert a checkpoint to our safetensors format", description="Reads any checkpoint mlff_jax.load reads (upstream .pt layouts, ONNX initializers, ours) and writes our format: safetensors with the config in its metadata.")
    p.add_argument("src", metavar="SRC", help="checkpoint to read")
    p.add_argument("dst", metavar="DST", help="output path, *.safetensors")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="precision of the written weights (default: %(default)s; upstream weights are float32)")
    p.add_argument("--overwrite", "--force", dest="overwrite", action="store_true", help="replace DST if it exists (refused by default)")
    p.add_argument("--elements", metavar="LIST", help="elements the model was trained on, e.g. H,C,N,O (default: what SRC records, else H,C,N,O,F,S,Cl)")
    p.set_defaults(func=cmd_convert)

    for name, target, text in (("data", "mlff_jax.train.data", "build a training data set"), ("train", "mlff_jax.train", "train a student")):
        p = sub.add_parser(name, help=text, add_help=False, description=f"{text}: arguments go to {target}.main (try: mlff-jax {name} --help)")
        p.add_argument("rest", nargs=argparse.REMAINDER, help=f"arguments for {target}")
        p.set_defaults(func=cmd_data if name == "data" else cmd_train)
    return parser


def _version() -> str:
    from mlff_jax import __version__

    return f"mlff-jax {__version__}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv and argv[0] in ("data", "train"):  # everything after the command, --help included, is the delegate's
        args = argparse.Namespace(command=argv[0], rest=argv[1:], func=cmd_data if argv[0] == "data" else cmd_train)
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"mlff-jax {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # every failure is one line; MLFF_JAX_DEBUG=1 shows the traceback
        if os.environ.get("MLFF_JAX_DEBUG") == "1":
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        if not isinstance(error, (UserError, ValueError, FileNotFoundError)):
            message = f"{type(error).__name__}: {message}"
        print(f"mlff-jax {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # python -m mlff_jax.cli: run the package's module, so that its UserError is the one raised
    from mlff_jax.cli import main as package_main

    sys.exit(package_main())
