#!/usr/bin/env bash
# The GPU call that trained and validated the second molecules+liquids candidate (benchmarks/results/
# train_liquid_77k_r1_h100.{json,log}, liquid_md_validation_liquid_77k_r1_h100.json), as it ran on one H100:
#   TRAIN_MIN=4.6 LIMIT=585 bash tools/gpu_train_validate_candidate.sh   (repo root, writes under $OUT)
# Carried (git-ignored): .device/r1/merged32.npz (`dataset merge mol.npz cond.npz visited.npz --float32-out ...`)
# and .device/wd/ (the ase and jax-triton wheels for CPython 3.12).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wd/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 MLFF_JAX_COMMIT=$(git rev-parse HEAD)
nvidia-smi --query-gpu=name --format=csv,noheader
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
cp .device/r1/merged32.npz /tmp/merged32.npz
TRAIN_MIN=${TRAIN_MIN:-4.6}
timeout 360 python3 -m mlff_jax.train mlff_jax/train/configs/liquid_77k.toml \
   --set data.path=/tmp/merged32.npz --set training.max_minutes=$TRAIN_MIN --set output.dir=/tmp/r77k > /tmp/train_77k.log 2>&1
echo "training rc $? done at $(el) s"; grep -v "^\[train\] step" /tmp/train_77k.log | tail -14
cp /tmp/r77k/best.safetensors $OUT/liquid_77k_r1.safetensors; cp /tmp/r77k/log.json $OUT/train_liquid_77k_r1_h100.json
LEFT=$(( ${LIMIT:-585} - $(el) )); echo "validation limit $LEFT s"
timeout $LEFT python3 benchmarks/liquid_md_validation.py --model /tmp/r77k/best.safetensors --compress \
   --out $OUT/liquid_md_validation_liquid_77k_r1_h100.json > /tmp/val.log 2>&1; echo "validation rc $? at $(el) s" >> /tmp/val.log
tail -22 /tmp/val.log; cp /tmp/val.log $OUT/liquid_md_validation_liquid_77k_r1_h100.log; cp /tmp/train_77k.log $OUT/train_liquid_77k_r1_h100.log
ls -la $OUT
