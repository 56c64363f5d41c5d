#!/usr/bin/env bash
# The GPU call that made the first molecules+liquids candidates (benchmarks/results/train_liquid_*_r0_h100.json,
# benchmarks/results/models/liquid_77k_r0.safetensors), as it ran on one H100 machine (16 cores):
#   LABEL_S=250 TRAIN_MIN=4.0 bash tools/gpu_train_liquid_candidate.sh      (repo root, writes under $OUT)
# Carried (git-ignored): .device/wheels/ (tblite, rdkit, ase, cffi, pycparser wheels for CPython 3.12)
# and .device/data/mol_partial.npz (molecular systems labelled beforehand on another machine by
# `python3 -m mlff_jax.train.data --out X.npz`: its partial file; reused, not recomputed).
# Steps: LABEL_S seconds of labelling on the CPUs (molecules: 10 teacher processes, continuing the partial
# file; condensed recipe: 6 processes under a budget), while the GPU runs the bundled default through
# benchmarks/liquid_md_validation.py; then the two candidates train side by side on the one GPU for
# TRAIN_MIN minutes each. The labelled sets depend only on how far the labelling got (prefixes), not on timing.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wheels/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; python3 -c "import jax; print(jax.__version__, jax.devices())"
mkdir -p /tmp/d
T0=$(date +%s)
LABEL_S=${LABEL_S:-265}
setsid python3 -m mlff_jax.train.data --out /tmp/d/mol.npz --workers 10 --partial-every 40 --reuse .device/data/mol_partial.npz > /tmp/d/mol.log 2>&1 &
MOLPID=$!
setsid python3 -m mlff_jax.train.condensed --recipe default --workers 6 --budget-minutes $(python3 -c "print(($LABEL_S-10)/60)") --partial-seconds 30 --out /tmp/d/cond.npz --float32-out /tmp/d/cond32.npz > /tmp/d/cond.log 2>&1 &
CONDPID=$!
# baseline: the current default model through the liquid-MD validation (GPU; one core)
( timeout $((LABEL_S-5)) python3 benchmarks/liquid_md_validation.py --model default --out $OUT/liquid_md_validation_default_v2.json > /tmp/d/val.log 2>&1; echo "validation rc $?" >> /tmp/d/val.log ) &
sleep $LABEL_S
kill -9 -- -$MOLPID 2>/dev/null; sleep 1
wait $CONDPID
echo "labelling done at $(( $(date +%s) - T0 )) s"; tail -2 /tmp/d/mol.log; tail -3 /tmp/d/cond.log; tail -25 /tmp/d/val.log
MOL=/tmp/d/mol.npz; [ -f $MOL ] || MOL=/tmp/d/mol.partial.npz
COND=/tmp/d/cond.npz; [ -f $COND ] || COND=/tmp/d/cond.partial.npz
python3 -m mlff_jax.train.dataset merge $MOL $COND --out /tmp/d/merged.npz --float32-out /tmp/d/merged32.npz || exit 1
python3 -m mlff_jax.train.dataset summary /tmp/d/merged.npz
TRAIN_MIN=${TRAIN_MIN:-4.2}
for shape in 77k 427k; do
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 python3 -m mlff_jax.train mlff_jax/train/configs/liquid_$shape.toml \
     --set data.path=/tmp/d/merged32.npz --set training.max_minutes=$TRAIN_MIN --set output.dir=/tmp/r$shape > /tmp/d/train_$shape.log 2>&1 &
done
wait
echo "training done at $(( $(date +%s) - T0 )) s"
for shape in 77k 427k; do cp /tmp/r$shape/best.safetensors $OUT/liquid_$shape.safetensors; cp /tmp/r$shape/log.json $OUT/liquid_${shape}_log.json; grep -v "^\[train\] step" /tmp/d/train_$shape.log | tail -30; done
cp /tmp/d/cond32.npz $OUT/cond32.npz 2>/dev/null || python3 -c "from mlff_jax.train.dataset import Dataset; Dataset.load('$COND').save('$OUT/cond32.npz', float32=True)"
python3 tools/split_dataset.py $MOL $OUT 2
ls -la $OUT
