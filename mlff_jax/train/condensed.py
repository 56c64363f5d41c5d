"""Condensed-phase training data from molecular teachers: liquid boxes, and clusters carved from them.

Why carve: a periodic GFN2-xTB calculation is not the molecular GFN2-xTB of the rest of the data
(tblite 0.8.0: 0.18 eV offset for a 32-water cluster in 30 Å of vacuum; forces in a water box differ
from those at the centre of 9-12 Å liquid spheres by 112 meV/Å), and mixing both would teach two
potentials. So a liquid is learned from clusters cut out of a periodic box and labelled in vacuum:
whole molecules within ``radius`` of a centre are kept, and only the atoms within ``inner_radius``
have their forces fitted (force weight 1); the buffer shell around them (weight 0) gives those atoms
a liquid-like environment of at least ``radius - inner_radius`` (4 Å by default) and is not fitted.

Why radius 8 Å and inner_radius 4 Å: measured with GFN2-xTB (tblite, one core), carved water clusters
of radius 6/7/8/9/11 Å have 123/165/246/339/620 atoms and cost 0.8/1.7/4.1/9.6/66 s per label, and the
forces on the central molecule do not converge with the radius: against the 11 Å cluster they differ
by a mean of 37/37/31/34 meV/Å (one centre) and 89/59/34/30 meV/Å (another) at 6/7/8/9 Å (GFN2's
long-range electrostatics). Beyond ~6 Å of buffer nothing improves at 10-60x the cost. Every label is
the exact molecular GFN2-xTB of the cluster the model is given (buffer included), so a fitted atom
4 Å from the surface is a correct label of a cluster, just a less bulk-like one; 4 Å keeps ~80 fitted
atoms per ~4 s label instead of ~4.

    python3 -m mlff_jax.train.condensed --out carved_water.npz --liquid water --molecules 64 --clusters 3
    python3 -m mlff_jax.train.condensed --recipe default --workers 15 --budget-minutes 5 --out liquids.npz
    python3 -m mlff_jax.train.condensed --from-frames frames.npz --clusters-per-frame 4 --out visited.npz

The building blocks (boxes, carving, labelling) are in :mod:`mlff_jax.train.liquid_boxes`; the last two
commands (a seeded, interleaved list of tasks run by a process pool under a time budget, and clusters
carved from frames of the model's own MD) in :mod:`mlff_jax.train.condensed_run`. This module is the
command line, and re-exports the building blocks.

Steps: :func:`liquid_box` packs molecules at random (random orientations, a minimum distance
between atoms of different molecules) into a cubic periodic box of the given density;
:func:`carve_cluster` cuts a cluster around a centre (periodic images of the box are separate
molecules, so a cluster may be larger than the box); :func:`label_clusters` labels the clusters with
a teacher (any ASE calculator, see :func:`mlff_jax.train.data.teacher_factory`) and returns a
:class:`Dataset` with per-atom force weights. Every random choice is seeded.

Boxes are not sampled by teacher MD (not affordable for boxes labelled by carving); a randomly packed
box is pushed apart by :func:`relax_box` (rigid molecules moved until intermolecular atom pairs are
no closer than a per-element-pair distance), which is cheap but leaves it rougher than a liquid.
The model's own MD, with the teacher labelling clusters carved from the frames it visits, is the
other source (``--from-frames``).
"""


from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from mlff_jax.train.liquid_boxes import (  # noqa: F401  (re-exported: the public names of this module)
    LIQUIDS,
    POLAR,
    carve_cluster,
    carved_liquid,
    compress_box,
    contact_distance,
    label_clusters,
    liquid_box,
    monomer,
    relax_box,
)


def main(argv: list[str] | None = None) -> int:
    """``python3 -m mlff_jax.train.condensed``: carved, labelled liquid clusters: a few from one box
    (``--liquid``), a recipe's task list (``--recipe``), or frames of an MD run (``--from-frames``)."""
    import os

    parser = argparse.ArgumentParser(prog="python3 -m mlff_jax.train.condensed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output dataset .npz")
    parser.add_argument("--liquid", default="water", choices=sorted(LIQUIDS))
    parser.add_argument("--molecules", type=int, default=64, help="molecules in the periodic box")
    parser.add_argument("--solute", default=None, metavar="SMILES", help="one solute molecule in each box; clusters centred on it")
    parser.add_argument("--clusters", type=int, default=3, help="clusters carved and labelled")
    parser.add_argument("--radius", type=float, default=8.0, help="Å: whole molecules with an atom this close to the centre")
    parser.add_argument("--inner-radius", type=float, default=4.0, help="Å: atoms whose forces are fitted (weight 1)")
    parser.add_argument("--min-distance", type=float, default=1.6, help="Å between atoms of different molecules in the box")
    parser.add_argument("--teacher", default="gfn2", help="as for mlff-jax data: gfn2 (default), gfn1, emt, or package.module:factory")
    parser.add_argument("--seed", type=int, default=0)
    scale = parser.add_argument_group("at scale (mlff_jax.train.condensed_run)")
    scale.add_argument("--recipe", default=None, choices=["default"], help="label the recipe's interleaved task list")
    scale.add_argument("--boxes", type=int, default=8, help="recipe: boxes per liquid")
    scale.add_argument("--clusters-per-box", type=int, default=24, help="recipe: clusters per box")
    scale.add_argument("--from-frames", nargs="+", default=None, metavar="FRAMES.npz",
                       help="periodic MD frames (positions [F,N,3], numbers [N], cell, molecule [N]); one system per file")
    scale.add_argument("--clusters-per-frame", type=int, default=4)
    scale.add_argument("--workers", type=int, default=1, help="teacher processes (each single-threaded)")
    scale.add_argument("--budget-minutes", type=float, default=None, help="stop at this wall time; keep the completed prefix")
    scale.add_argument("--partial-seconds", type=float, default=60.0, help="write OUT.partial.npz this often")
    scale.add_argument("--no-relax", action="store_true", help="recipe: keep the randomly packed boxes as they are")
    scale.add_argument("--contact-scale", type=float, default=1.0,
                       help="recipe: relax boxes to this fraction of the contact distances (e.g. 0.85: closer contacts, data on "
                            "the repulsive wall; give another --seed than a run at 1.0, or the box names collide when merged)")
    scale.add_argument("--split", default="hash", choices=["hash", "train", "validation", "test"],
                       help="split of every system of this run: by name hash (default) or all in one split (e.g. the "
                       "frames of held-out liquids' MD all in test)")
    scale.add_argument("--float32-out", default=None, help="also write a copy with float32 positions and forces")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.recipe and args.from_frames:
        parser.error("--recipe and --from-frames are two different runs: give one")
    if args.recipe or args.from_frames:
        from mlff_jax.train.condensed_run import cli

        return cli(args)
    from mlff_jax.train.data import teacher_factory

    dataset = carved_liquid(args.liquid, args.molecules, args.clusters, teacher_factory(args.teacher), args.seed,
                            args.radius, args.inner_radius, args.min_distance, teacher=args.teacher, solute=args.solute)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    dataset.save(args.out)
    fitted = int(np.sum(dataset.force_weight > 0))
    print(f"[condensed] wrote {args.out}: {json.dumps(dataset.summary())}; {fitted} of {len(dataset.numbers)} atoms fitted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
