#!/bin/bash
# One GPU training run of the default 77K config on the v2 GFN2-xTB dataset (issue 8).
#   bash tools/gpu_train_default.sh [MINUTES] [CONFIG]      (repo root, on the GPU machine; writes under $OUT)
# Data: .device/data/gfn2_xtb_v2_f32.npz (carried; float32 copy made by
#   python3 -m mlff_jax.train.data --from-dataset .device/data/gfn2_xtb_v2.npz --float32-out .device/data/gfn2_xtb_v2_f32.npz).
# If that file is absent but .device/data/gfn2_xtb_v2.partial_f32.npz and .device/wheels_gen/ (tblite, rdkit, cffi,
# pycparser, ase wheels for CPython 3.12) are carried, the generation is finished first with 16 teacher processes
# (~1.2 core-seconds per molecule), and MINUTES should leave room for it.
set -eo pipefail
export PYTHONPATH=$PWD:$PWD/.device/site PYTHONUNBUFFERED=1
MINUTES=${1:-7.0}
CONFIG=${2:-mlff_jax/train/configs/default.toml}
DATA=.device/data/gfn2_xtb_v2_f32.npz
if [ ! -f "$DATA" ]; then
  python3 -m pip install -q --no-deps --no-index --target .device/site .device/wheels_gen/*.whl 2>&1 | tail -2
  t0=$(date +%s)
  OMP_NUM_THREADS=1 python3 -m mlff_jax.train.data --out .device/data/gfn2_xtb_v2.npz \
      --reuse .device/data/gfn2_xtb_v2.partial_f32.npz --workers 16 --float32-out "$DATA" > "$OUT/generate.log" 2>&1
  echo "generation: $(( $(date +%s) - t0 )) s"; grep -v Warning "$OUT/generate.log" | grep -v Maxwell | tail -3
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -m mlff_jax.train "$CONFIG" --set data.path="$DATA" --set training.max_minutes="$MINUTES" \
    --set output.dir="$OUT/default" 2>&1 | tee "$OUT/train.log" | grep -v "^\[train\] step" | tail -12
