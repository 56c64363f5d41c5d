"""Frames of the model's own MD of liquids, for the teacher to label (``condensed --from-frames``).

    python3 -m mlff_jax.train.sample_md --model runs/liquids/best.safetensors --liquids water,methanol \\
        --molecules 64 --temperature 300 --steps 20000 --frame-every 200 --timestep 0.5 --out md/frames.npz
    OMP_NUM_THREADS=1 python3 -m mlff_jax.train.condensed --from-frames md/frames_water.npz md/frames_methanol.npz \\
        --clusters-per-frame 4 --workers 15 --budget-minutes 10 --out visited.npz

Per liquid: a periodic box (:func:`mlff_jax.train.condensed_run.build_box`: packed, compressed and
relaxed, seeded), then the model's compiled Langevin MD (:func:`mlff_jax.md.langevin`, BAOAB) with a
periodic :mod:`mlff_jax.neighbors` list updated inside the compiled loop, guards off (a run that
goes wrong is what we want to see), a frame every ``frame_every`` steps. The run stops at the first
frame that is non-finite or has two atoms of different molecules closer than ``min_pair`` (0.7 Å),
or when the neighbour list still overflows after reallocations (the liquid collapsing); the frames
before that point are kept (they are the frames the model gets wrong) and the status says so.

Output, one file per liquid (``OUT`` itself for one liquid, ``OUT_STEM_LIQUID.npz`` for several):
positions [F, N, 3] Å (unwrapped), numbers [N], cell [3, 3] Å, molecule [N], liquid, temperature K,
step [F], timestep fs, status (text), blew_up (bool), model.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

MIN_PAIR = 0.7  # Å: two atoms of different molecules this close end the run (the liquid has collapsed)


def closest_intermolecular(positions: np.ndarray, cell: np.ndarray, molecule: np.ndarray, within: float) -> float:
    """Å, the closest pair of atoms of different molecules (minimum image), or ``inf`` if none is
    within ``within`` Å. positions [N, 3], cell [3, 3], molecule [N]."""
    from mlff_jax.neighbors import neighbor_pairs

    i, j, shifts = neighbor_pairs(positions, within, cell, (True, True, True))
    other = molecule[i] != molecule[j]
    if not np.any(other):
        return float("inf")
    d = positions[j[other]] - positions[i[other]] + shifts[other] @ cell
    return float(np.min(np.linalg.norm(d, axis=1)))


def sample_liquid(model, liquid: str, molecules: int, temperature: float, steps: int, frame_every: int, timestep: float = 0.5,
                  friction: float = 0.01, seed: int = 0, frames_per_chunk: int = 10, min_pair: float = MIN_PAIR,
                  skin: float = 0.5, log=print) -> dict:
    """Langevin MD of ``model`` in a box of ``molecules`` molecules of ``liquid``; returns the arrays
    of a frames file (see the module docstring). Raises ValueError for bad settings."""
    import jax
    import jax.numpy as jnp

    from mlff_jax import md, neighbors
    from mlff_jax.train.condensed_run import BoxSpec, Settings, build_box

    if steps < 1 or frame_every < 1 or frames_per_chunk < 1:
        raise ValueError(f"steps, frame_every and frames_per_chunk must be >= 1, got {steps}, {frame_every}, {frames_per_chunk}")
    if molecules < 1:
        raise ValueError(f"molecules must be >= 1, got {molecules}")
    box = build_box(BoxSpec(liquid, molecules, 0), Settings(seed=seed))
    cell = np.asarray(box.cell.array)
    molecule = np.asarray(box.arrays["molecule"])
    dtype = jnp.float64 if model.dtype == "float64" else jnp.float32
    neighbor_fn = neighbors.neighbor_list_fn(model.config.cutoff, skin=skin, cell=cell, pbc=(True, True, True))
    positions = jnp.asarray(box.positions, dtype)
    nbrs = neighbor_fn.allocate(positions)
    init_fn, step_fn = md.langevin(md.model_potential(model, box.numbers), timestep, temperature, friction)
    state = init_fn(positions, box.get_masses(), key=jax.random.key(seed), temperature=temperature, neighbor=nbrs)
    frames_per_chunk = min(frames_per_chunk, max(1, steps // frame_every))
    chunk = md.trajectory_chunk(step_fn, frame_every, frames_per_chunk, neighbor_update=neighbor_fn.update, guards=None)
    kept, kept_steps, status, blew_up = [], [], "completed", False
    num_chunks = -(-steps // (frame_every * frames_per_chunk))
    for c in range(num_chunks):
        for attempt in range(3):  # a liquid that keeps overflowing its list is collapsing
            new_state, new_nbrs, frames, overflow = chunk(state, nbrs)
            frames, overflow = jax.device_get((frames, overflow))
            if not bool(overflow):
                break
            nbrs = md.reallocate_after_overflow(neighbor_fn, state.positions, new_state.positions, nbrs, attempt)
        else:
            status, blew_up = f"neighbour list still overflowing after 2 reallocations in the chunk after step {int(state.step)}", True
            break
        for f in range(frames_per_chunk):
            r = np.asarray(frames.positions[f], np.float64)
            step = int(frames.step[f])
            if not (np.all(np.isfinite(r)) and np.all(np.isfinite(np.asarray(frames.forces[f])))):
                status, blew_up = f"non-finite positions or forces at step {step}", True
                break
            closest = closest_intermolecular(r, cell, molecule, min_pair)
            if closest < min_pair:
                status, blew_up = f"atoms of different molecules {closest:.2f} Å apart at step {step}", True
                break
            if step <= steps:
                kept.append(r)
                kept_steps.append(step)
        if blew_up:
            break
        state, nbrs = new_state, new_nbrs
        log(f"[sample_md] {liquid}: step {int(state.step)} of {steps}, {len(kept)} frames", flush=True)
    if blew_up:
        status += f"; kept the {len(kept)} frames before it"
    log(f"[sample_md] {liquid}: {status}", flush=True)
    return {
        "positions": np.asarray(kept, np.float64).reshape(len(kept), len(box), 3),
        "numbers": box.numbers.astype(np.int32),
        "cell": cell,
        "molecule": molecule.astype(np.int64),
        "liquid": np.asarray(liquid),
        "temperature": np.asarray(float(temperature)),
        "step": np.asarray(kept_steps, np.int64),
        "timestep": np.asarray(float(timestep)),
        "status": np.asarray(status),
        "blew_up": np.asarray(blew_up),
    }


def output_paths(out, liquids: list[str]) -> dict[str, pathlib.Path]:
    """OUT for one liquid; OUT_STEM_LIQUID.npz (next to OUT) for several."""
    out = pathlib.Path(out)
    if len(liquids) == 1:
        return {liquids[0]: out}
    return {liquid: out.with_name(f"{out.stem}_{liquid}.npz") for liquid in liquids}


def main(argv: list[str] | None = None) -> int:
    """``python3 -m mlff_jax.train.sample_md``: frames of the model's MD of liquids."""
    import mlff_jax
    from mlff_jax.train.condensed import LIQUIDS

    parser = argparse.ArgumentParser(prog="python3 -m mlff_jax.train.sample_md", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint path or a bundled model's name")
    parser.add_argument("--liquids", default="water", help=f"comma-separated, of {', '.join(sorted(LIQUIDS))}")
    parser.add_argument("--molecules", type=int, default=64, help="molecules per box")
    parser.add_argument("--temperature", type=float, default=300.0, help="K (Langevin thermostat)")
    parser.add_argument("--friction", type=float, default=0.01, help="1/fs")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--frame-every", type=int, default=200, help="steps between saved frames")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--frames-per-chunk", type=int, default=10, help="frames per compiled call")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="frames .npz (one liquid) or the stem of one file per liquid")
    args = parser.parse_args(argv)
    liquids = [s.strip() for s in args.liquids.split(",") if s.strip()]
    unknown = sorted(set(liquids) - set(LIQUIDS))
    if unknown or not liquids:
        parser.error(f"unknown liquids {unknown}: choose from {sorted(LIQUIDS)}")
    if args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    model = mlff_jax.load(args.model, dtype=args.dtype)
    report = {}
    for liquid, path in output_paths(args.out, liquids).items():
        arrays = sample_liquid(model, liquid, args.molecules, args.temperature, args.steps, args.frame_every, args.timestep,
                               args.friction, args.seed, args.frames_per_chunk)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays, model=np.asarray(str(args.model)))
        report[liquid] = {"file": str(path), "frames": int(len(arrays["step"])), "atoms": int(len(arrays["numbers"])),
                          "status": str(arrays["status"]), "blew_up": bool(arrays["blew_up"])}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
