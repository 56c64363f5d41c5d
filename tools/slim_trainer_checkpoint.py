"""Writes a trainer-layout checkpoint without its optimizer state (a small test fixture).

    python tools/slim_trainer_checkpoint.py SOURCE.pt DEST.pt

Needs PyTorch (the package itself never imports it). The source is an upstream MLFF-Distiller trainer
checkpoint (``epoch``, ``global_step``, ``model_state_dict``, ``best_val_loss``, ``config``,
``training_history``, ``optimizer_state_dict``). Everything but ``optimizer_state_dict`` (the AdamW
moments: two thirds of the file) is kept as it was, so the result still exercises the restricted
unpickler exactly as a real trainer checkpoint does: ``pathlib`` paths and tuples in ``config``,
the training history, the epoch counters. It then checks with mlff_jax's own reader that the weights
are bit-identical to the source's.
"""

from __future__ import annotations

import argparse
import pathlib
import sys


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=pathlib.Path)
    p.add_argument("dest", type=pathlib.Path)
    args = p.parse_args(argv)

    import torch

    checkpoint = torch.load(args.source, map_location="cpu", weights_only=False)  # a trusted upstream file
    if "optimizer_state_dict" not in checkpoint or "model_state_dict" not in checkpoint:
        raise SystemExit(f"{args.source}: not a trainer checkpoint (keys: {sorted(checkpoint)})")
    del checkpoint["optimizer_state_dict"]
    torch.save(checkpoint, args.dest)
    print(f"wrote {args.dest}: {args.dest.stat().st_size} bytes (source {args.source.stat().st_size}); kept {sorted(checkpoint)}")

    try:  # the check needs mlff_jax importable (PYTHONPATH=the checkout); skipped when this interpreter has no jax
        import numpy as np

        from mlff_jax.io import read_checkpoint
    except ImportError as error:
        print(f"not checked with mlff_jax here ({error}); run tests/test_loading.py", file=sys.stderr)
        return
    config_a, params_a = read_checkpoint(args.source)
    config_b, params_b = read_checkpoint(args.dest)
    assert config_a == config_b and params_a.keys() == params_b.keys()
    for key in params_a:
        np.testing.assert_array_equal(np.asarray(params_a[key]), np.asarray(params_b[key]), err_msg=key)
    print("checked with mlff_jax.io.read_checkpoint: same config, bit-identical weights")


if __name__ == "__main__":
    main()
