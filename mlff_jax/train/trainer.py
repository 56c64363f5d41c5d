"""Training a PaiNN student on teacher energies and forces (JAX + optax).

    python3 -m mlff_jax.train CONFIG.toml [--set training.max_minutes=8 ...]
    python3 -m mlff_jax.train finetune --data my_data.extxyz --out runs/mine   # your own labelled structures

Steps: load the dataset and its train/validation split; build fresh weights (or load a checkpoint
to fine-tune); fit per-element reference energies by least squares on what the network does not
yet explain; then Adam on  w_E * mean((dE/N)^2) + w_F * mean(dF^2)  with forces from the model
(the force term weighted per atom when the dataset has force weights),
a linear warm-up and a cosine decay (over ``max_steps`` or the wall-clock budget, whichever ends
first), an exponential moving average (EMA) of the weights, validation every ``eval_every`` steps,
early stopping, and the best EMA weights written as our safetensors checkpoint with the reference
energies inside (``atom_reference/energies``). A JSON log holds the history and the test errors.

Batches are padded to one fixed shape, and ``steps_per_call`` steps run inside one compiled
``lax.scan``, so the whole run compiles one training program and one evaluation program.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mlff_jax import painn
from mlff_jax.config import PaiNNConfig
from mlff_jax.graph import all_pairs_edges
from mlff_jax.io import write_checkpoint
from mlff_jax.train.batching import Packer, to_batch
from mlff_jax.train.dataset import Dataset
from mlff_jax.train.evaluate import FORCE_METHODS, PRECISIONS, Predictor, energies_and_forces, error_metrics
from mlff_jax.train.progress import ProgressReporter
from mlff_jax.train.user_data import load_training_data

DEFAULT_CONFIG = pathlib.Path(__file__).with_name("configs") / "default.toml"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run (TOML sections [data], [model], [training], [output] are merged)."""

    data: str = ""  # dataset .npz (mlff_jax.train.data), or your labelled structures (mlff_jax.train.user_data)
    # for your own structures (an extxyz or any file ASE reads, or an .npz of R, Z, E, F):
    validation_fraction: float = 0.1  # of the systems, by a hash of (seed, name), unless a frame's info says its split
    test_fraction: float = 0.1
    energy_key: str = "energy"  # atoms.info key (or calculator result) holding the energy
    forces_key: str = "forces"  # atoms.arrays key (or calculator result) holding the forces
    energy_unit: str = "eV"  # of the file's energies; forces are in this unit per Å
    out_dir: str = "runs/default"
    init: str = ""  # checkpoint to fine-tune ("default" or a path); "" = fresh weights
    # model shape (ignored when fine-tuning: the checkpoint's shape is used)
    hidden_dim: int = 64
    num_interactions: int = 2
    num_rbf: int = 12
    cutoff: float = 5.0
    max_z: int = 100
    filter_envelope: str = ""  # "" (upstream: none) or "polynomial" (smooth at the cutoff; docs/model.md)
    vector_mixing: str = "cartesian"  # "cartesian" (upstream), "channels" (rotation invariant) or "none"
    # optimisation
    seed: int = 0
    batch_structures: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    final_learning_rate_fraction: float = 0.01
    max_steps: int = 100_000
    max_minutes: float = 0.0  # wall-clock budget of the whole run incl. compile and test (0: none)
    energy_weight: float = 20.0  # on (dE / N)^2, eV^2/atom^2
    force_weight: float = 1.0  # on dF^2 per component, eV^2/Å^2
    gradient_clip: float = 10.0
    weight_decay: float = 0.0  # decoupled (AdamW) decay of the weight matrices, per unit learning rate (0: Adam)
    ema_decay: float = 0.999
    eval_every: int = 500
    validation_frames: int = 0  # validate during training on a seeded subset of this many frames (0: all)
    patience: int = 0  # evaluations without improvement before stopping (0: never stop early)
    steps_per_call: int = 25
    precision: str = "highest"  # matmul precision in training; evaluation is always "highest"
    forces: str = "autodiff"  # how training gets forces: "autodiff" or "analytic" (mlff_jax.analytic)
    log_every: int = 100
    max_frames: int = 0  # use only the first N training frames (0: all; for quick tests)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        for name in ("batch_structures", "max_steps", "eval_every", "steps_per_call", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.forces not in FORCE_METHODS:
            raise ValueError(f"forces must be one of {FORCE_METHODS}, got {self.forces!r}")
        if self.weight_decay < 0 or self.validation_frames < 0:
            raise ValueError("weight_decay and validation_frames must be >= 0")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    @property
    def model_config(self) -> PaiNNConfig:
        return PaiNNConfig(self.hidden_dim, self.num_interactions, self.num_rbf, self.cutoff, self.max_z,
                           filter_envelope=self.filter_envelope or None, vector_mixing=self.vector_mixing)

    @classmethod
    def from_toml(cls, path, overrides: list[str] = ()) -> "TrainConfig":
        """Reads a TOML file; ``overrides`` are ``section.key=value`` strings (TOML values)."""
        with open(path, "rb") as f:
            doc = tomllib.load(f)
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set expects section.key=value, got {item!r}")
            *sections, leaf = key.strip().split(".")
            node = doc
            for s in sections:
                node = node.setdefault(s, {})
            try:
                node[leaf] = tomllib.loads(f"v = {value.strip()}")["v"]
            except tomllib.TOMLDecodeError:
                node[leaf] = value.strip()  # a bare string
        flat: dict[str, Any] = {}
        for section, values in doc.items():
            if not isinstance(values, dict):
                raise ValueError(f"{path}: top-level key {section!r} must be inside a [section]")
            for key, value in values.items():
                flat["out_dir" if (section, key) == ("output", "dir") else "data" if (section, key) == ("data", "path") else key] = value
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(flat) - names)
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}; known: {sorted(names)}")
        return cls(**flat)


# ----------------------------------------------------------------------------------- parameters
def fresh_params(config: PaiNNConfig, seed: int) -> dict:
    """Freshly initialised weights (PyTorch-like defaults, see painn.PaiNN), float32."""
    n = 2
    mask, batch = jnp.ones(n, bool), jnp.zeros(n, jnp.int32)
    variables = painn.PaiNN(config).init(jax.random.PRNGKey(seed), jnp.zeros((n, 3)), jnp.ones(n, jnp.int32),
                                         all_pairs_edges(mask, batch), mask, batch, 1)
    return painn.unflatten(dict(variables["params"]))


def initial_params(cfg: TrainConfig) -> tuple[PaiNNConfig, dict]:
    """(model config, network weights without reference energies) for a fresh or fine-tuned run."""
    if not cfg.init:
        return cfg.model_config, fresh_params(cfg.model_config, cfg.seed)
    import mlff_jax

    model = mlff_jax.load(cfg.init, dtype="float32")
    params = {k: v for k, v in model.params.items() if k != painn.ATOM_REFERENCE}
    return model.config, params


def fit_reference_energies(dataset: Dataset, network_energies: np.ndarray, max_z: int) -> np.ndarray:
    """Per-element energies [max_z + 1] eV minimising sum_frames (E - E_net - sum_atoms ref[Z])^2.

    Elements absent from the dataset get 0.
    """
    composition = dataset.composition(max_z)
    present = np.nonzero(composition.sum(0) > 0)[0]
    solution, *_ = np.linalg.lstsq(composition[:, present], dataset.energy - network_energies, rcond=None)
    refs = np.zeros(max_z + 1)
    refs[present] = solution
    return refs


def with_reference(params: dict, refs: np.ndarray) -> dict:
    return {**params, painn.ATOM_REFERENCE: {"energies": np.asarray(refs, np.float64)}}


# ----------------------------------------------------------------------------------- training step
def mean_squared_errors(params, config: PaiNNConfig, batch, precision, forces_method: str = "autodiff"):
    """(mean over frames of (ΔE/N)² eV²/atom², weighted mean over force components of ΔF² eV²/Å²) of one
    padded batch. Each atom's force counts with its ``batch.force_weight`` (1 normally, 0 for padding
    and for the buffer atoms of carved clusters), so ΔF² is  Σ w ΔF² / (3 Σ w)."""
    energies, forces = energies_and_forces(params, config, batch, precision, forces_method)
    n_structures = jnp.maximum(jnp.sum(batch.structure_mask), 1)
    weight = jnp.where(batch.atom_mask, batch.force_weight, 0.0)
    weight_sum = jnp.sum(weight)
    de = jnp.where(batch.structure_mask, (energies - batch.energy) / jnp.maximum(batch.num_atoms, 1), 0.0)
    df = jnp.where(batch.atom_mask[:, None], forces - batch.forces, 0.0)
    e_mse = jnp.sum(de**2) / n_structures
    # double where: a batch whose atoms all have weight 0 contributes 0, with a finite gradient
    safe_sum = jnp.where(weight_sum > 0, weight_sum, 1.0)
    f_mse = jnp.where(weight_sum > 0, jnp.sum(weight[:, None] * df**2) / (3 * safe_sum), 0.0)
    return e_mse, f_mse


def make_train_chunk(config: PaiNNConfig, cfg: TrainConfig, optimizer):
    """A jitted function running ``len(batches)`` optimisation steps inside one ``lax.scan``."""
    import optax

    precision = PRECISIONS[cfg.precision]

    def loss_fn(params, batch):
        e_mse, f_mse = mean_squared_errors(params, config, batch, precision, cfg.forces)
        return cfg.energy_weight * e_mse + cfg.force_weight * f_mse, (e_mse, f_mse)

    def step(carry, arrays):
        params, opt_state, ema, count = carry
        (loss, (e_mse, f_mse)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, to_batch(arrays))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        # EMA with a warm-up, (1 + n) / (10 + n), so that short runs are not dominated by the initial weights
        decay = jnp.minimum(cfg.ema_decay, (1.0 + count) / (10.0 + count))
        ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
        return (params, opt_state, ema, count + 1), jnp.stack([loss, e_mse, f_mse])

    @jax.jit
    def chunk(params, opt_state, ema, count, batches):
        (params, opt_state, ema, count), metrics = jax.lax.scan(step, (params, opt_state, ema, count), batches)
        return params, opt_state, ema, jnp.mean(metrics, axis=0)

    return chunk


def adam_or_adamw(cfg: TrainConfig):
    """Adam with an injectable learning rate; with ``weight_decay`` > 0, AdamW decaying the weight
    matrices only (biases, and the per-element reference energies, which are not trained, are not decayed)."""
    import optax

    if cfg.weight_decay == 0:
        return optax.inject_hyperparams(optax.adam)(learning_rate=cfg.learning_rate)
    matrices = lambda params: jax.tree_util.tree_map(lambda x: jnp.ndim(x) >= 2, params)  # noqa: E731
    # mask is static: inject_hyperparams would otherwise call it as a schedule of the step count
    return optax.inject_hyperparams(optax.adamw, static_args=("mask",))(learning_rate=cfg.learning_rate,
                                                                       weight_decay=cfg.weight_decay, mask=matrices)


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from the peak to ``final_fraction`` x peak as
    ``progress`` (the larger of step / max_steps and elapsed / budget) goes from 0 to 1."""
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    f = cfg.final_learning_rate_fraction
    return cfg.learning_rate * warm * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


# ----------------------------------------------------------------------------------- the run
def train(cfg: TrainConfig, log=print) -> dict:
    """Runs one training; returns the summary that is also written to ``out_dir/log.json``."""
    import optax

    t_start = time.perf_counter()
    budget = cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf
    out_dir = pathlib.Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_training_data(cfg.data, seed=cfg.seed, fractions=(cfg.validation_fraction, cfg.test_fraction),
                                 energy_key=cfg.energy_key, forces_key=cfg.forces_key, energy_unit=cfg.energy_unit,
                                 max_z=cfg.max_z)
    train_set, val_set, test_set = dataset.split("train"), dataset.split("validation"), dataset.split("test")
    if train_set.num_frames == 0:
        raise ValueError(f"{cfg.data}: no training frames ({dataset.summary()['systems']} systems, all in validation or test): "
                         "give more systems, lower validation_fraction / test_fraction, or set atoms.info['split']")
    if cfg.max_frames:
        train_set = train_set.select(np.arange(min(cfg.max_frames, train_set.num_frames)))
    if val_set.num_frames == 0:  # tiny datasets: validate on the training frames (said in the log)
        val_set = train_set
    full_val_set = val_set
    if 0 < cfg.validation_frames < val_set.num_frames:  # periodic checks on a fixed sample; the best weights on all
        picked = np.random.default_rng([cfg.seed, 7]).choice(val_set.num_frames, cfg.validation_frames, replace=False)
        val_set = val_set.select(np.sort(picked))
    model_config, params = initial_params(cfg)
    # The saved model refuses elements its training set lacks (mlff_jax.elements); when fine-tuning,
    # elements only the initial model saw lose their fitted reference energy, so they go too.
    model_config = dataclasses.replace(model_config, elements=tuple(train_set.elements()))
    log(f"[train] {jax.devices()[0].device_kind}: {train_set.num_frames} train / {val_set.num_frames} validation / "
        f"{test_set.num_frames} test frames (validating on {val_set.num_frames} of {full_val_set.num_frames}); model {model_config.to_dict()} ({model_config.num_parameters} parameters)"
        + (f", fine-tuning {cfg.init}" if cfg.init else ""))

    # Reference energies: least squares on what the initial network leaves unexplained.
    train_predictor = Predictor(train_set, model_config, cfg.batch_structures)
    refs = fit_reference_energies(train_set, train_predictor(params)[0], model_config.max_z)
    del train_predictor
    residual = lambda ds: dataclasses.replace(ds, energy=ds.energy - ds.composition(model_config.max_z) @ refs)  # noqa: E731
    train_res, val_res = residual(train_set), residual(val_set)
    log(f"[train] reference energies (eV): { {int(z): round(float(refs[z]), 4) for z in train_set.elements()} }; "
        f"residual energy std {np.std(train_res.energy / train_res.num_atoms) * 1000:.1f} meV/atom")

    packer = Packer(train_res, model_config.cutoff)
    shape = packer.auto_shape(cfg.batch_structures)
    val_predictor = Predictor(val_res, model_config, cfg.batch_structures)
    optimizer = optax.chain(optax.clip_by_global_norm(cfg.gradient_clip), adam_or_adamw(cfg))
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
    opt_state = optimizer.init(params)
    ema = params
    chunk = make_train_chunk(model_config, cfg, optimizer)
    rng = np.random.default_rng(cfg.seed)

    history, best = [], {"score": math.inf, "step": 0, "params": None, "metrics": None}
    step, evals_since_best, stop_reason = 0, 0, "max_steps"
    eval_every = max(cfg.steps_per_call, cfg.eval_every // cfg.steps_per_call * cfg.steps_per_call)
    eval_seconds, train_seconds = 1.0, 0.0
    progress_bar = ProgressReporter(cfg.max_steps, cfg.log_every, log)
    reserve = 30.0  # seconds kept for the final evaluations; set from the first two validations' times
    # The final evaluations (test, and all validation frames when validating on a sample) each compile
    # once and then run in proportion to their frames.
    final_frames = [n for n in (test_set.num_frames, full_val_set.num_frames if full_val_set is not val_set else 0) if n]
    first_eval_seconds = 0.0

    def evaluate_now():
        nonlocal eval_seconds, evals_since_best, reserve, first_eval_seconds
        t = time.perf_counter()
        metrics = error_metrics(val_res, *val_predictor(ema, "highest"))
        eval_seconds = time.perf_counter() - t
        ratio = [n / max(val_set.num_frames, 1) for n in final_frames]
        if not history:  # compile included: assume every final evaluation costs this much per validation's frames
            first_eval_seconds = eval_seconds
            reserve = 10.0 + 1.5 * sum(eval_seconds * max(1.0, r) for r in ratio)
        elif len(history) == 1:  # compiled: split the first time into compile and run
            compile_seconds_estimate = max(first_eval_seconds - eval_seconds, 0.0)
            reserve = 10.0 + 1.5 * sum(compile_seconds_estimate + eval_seconds * r for r in ratio)
        score = cfg.energy_weight * metrics["energy_mse_per_atom"] + cfg.force_weight * metrics["force_mse"]
        entry = {"step": step, "seconds": round(time.perf_counter() - t_start, 1), "validation": metrics, "score": score}
        history.append(entry)
        if score < best["score"]:
            best.update(score=score, step=step, params=jax.device_get(ema), metrics=metrics)
            write_checkpoint(out_dir / "best.safetensors", model_config, painn.flatten(with_reference(best["params"], refs)),
                             {"training_step": str(step)})
            evals_since_best = 0
        else:
            evals_since_best += 1
        progress_bar.note(f"val E {metrics['energy_mae_per_atom'] * 1000:.2f} meV/atom, F {metrics['force_mae'] * 1000:.1f} meV/Å")

    compile_seconds = None
    # The next epoch is shuffled and packed on a host thread while the device trains on this one.
    packing = ThreadPoolExecutor(max_workers=1)
    next_epoch = packing.submit(packer.epoch, shape, rng, cfg.steps_per_call)
    while step < cfg.max_steps and stop_reason == "max_steps":
        epoch = next_epoch.result()
        next_epoch = packing.submit(packer.epoch, shape, rng, cfg.steps_per_call)
        n_batches = epoch["positions"].shape[0]
        epoch = {k: jnp.asarray(v, jnp.float32 if v.dtype == np.float64 else None) for k, v in epoch.items()}
        for start in range(0, n_batches - cfg.steps_per_call + 1, cfg.steps_per_call):
            elapsed = time.perf_counter() - t_start
            if elapsed + eval_seconds + reserve > budget:
                stop_reason = "time budget"
                break
            progress = max(step / cfg.max_steps, (elapsed + reserve) / budget if budget < math.inf else 0.0)
            lr = learning_rate(cfg, step, progress)
            opt_state[1].hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
            batches = {k: v[start : start + cfg.steps_per_call] for k, v in epoch.items()}
            t = time.perf_counter()
            params, opt_state, ema, metrics = chunk(params, opt_state, ema, jnp.asarray(step, jnp.float32), batches)
            loss, e_mse, f_mse = (float(x) for x in metrics)
            dt = time.perf_counter() - t
            if compile_seconds is None:
                compile_seconds = dt
            else:
                train_seconds += dt
            step += cfg.steps_per_call
            if not math.isfinite(loss):
                stop_reason = "non-finite loss"
                break
            progress_bar.update(step, loss=loss, e_rmse=math.sqrt(e_mse) * 1000, f_rmse=math.sqrt(f_mse), lr=lr)
            if step % eval_every == 0 or step >= cfg.max_steps:
                evaluate_now()
                if cfg.patience and evals_since_best >= cfg.patience:
                    stop_reason = "early stopping"
                    break
            if step >= cfg.max_steps:
                break
    packing.shutdown(cancel_futures=True)
    if not history or history[-1]["step"] != step:
        evaluate_now()
    progress_bar.close()

    best_params = with_reference(best["params"], refs)
    validation_metrics = best["metrics"]
    if full_val_set is not val_set:
        validation_metrics = error_metrics(full_val_set, *Predictor(full_val_set, model_config, cfg.batch_structures)(best_params, "highest"))
    test_metrics = None
    if test_set.num_frames:
        test_metrics = error_metrics(test_set, *Predictor(test_set, model_config, cfg.batch_structures)(best_params, "highest"))
    summary = {
        "config": dataclasses.asdict(cfg),
        "model": model_config.to_dict(),
        "parameters": model_config.num_parameters,
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "dataset": {"path": str(cfg.data), **dataset.summary(), "train_frames_used": train_set.num_frames},
        "batch_shape": dataclasses.asdict(shape),
        "steps": step,
        "stop_reason": stop_reason,
        "compile_seconds": round(compile_seconds or 0.0, 1),
        "train_step_ms": round(1000 * train_seconds / max(step - cfg.steps_per_call, 1), 3),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "best_step": best["step"],
        "validation": validation_metrics,
        "validation_subset": best["metrics"] if full_val_set is not val_set else None,
        "test": test_metrics,
        "reference_energies_eV": {int(z): float(refs[z]) for z in train_set.elements()},
        "checkpoint": str(out_dir / "best.safetensors"),
        "history": history,
    }
    (out_dir / "log.json").write_text(json.dumps(summary, indent=1) + "\n")
    _print_summary(summary, log)
    return summary


def _print_summary(s: dict, log) -> None:
    log(f"[train] done: {s['steps']} steps ({s['stop_reason']}) in {s['wall_seconds']} s on {s['device']} "
        f"(compile {s['compile_seconds']} s, {s['train_step_ms']} ms/step); best step {s['best_step']}")
    for split in ("validation", "test"):
        m = s[split]
        if m:
            log(f"[train] {split}: energy MAE {m['energy_mae_per_atom'] * 1000:.2f} meV/atom, force MAE {m['force_mae'] * 1000:.1f} meV/Å "
                f"(RMSE {m['energy_rmse_per_atom'] * 1000:.2f} meV/atom, {m['force_rmse'] * 1000:.1f} meV/Å; {m['frames']} frames, {m['systems']} systems)")
            groups = m.get("groups") or {}
            for group, g in groups.items() if len(groups) > 1 else ():  # molecules, clusters, condensed, model_md
                log(f"[train]   {group}: energy MAE {g['energy_mae_per_atom'] * 1000:.2f} meV/atom, force MAE "
                    f"{g['force_mae'] * 1000:.1f} meV/Å on {g['fitted_atoms']} fitted atoms ({g['frames']} frames, {g['systems']} systems)")
    log(f"[train] checkpoint {s['checkpoint']}; log {pathlib.Path(s['checkpoint']).with_name('log.json')}")


def main(argv: list[str] | None = None) -> int:
    """``mlff-jax train CONFIG`` / ``python3 -m mlff_jax.train CONFIG``."""
    parser = argparse.ArgumentParser(prog="mlff-jax train", description="Train or fine-tune a PaiNN student (see mlff_jax.train.trainer).")
    bundled = sorted(p.stem for p in DEFAULT_CONFIG.parent.glob("*.toml"))
    parser.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG),
                        help=f"TOML file, or the name of a bundled one ({', '.join(bundled)}; default: {DEFAULT_CONFIG.stem})")
    parser.add_argument("--data", default=None, metavar="FILE", help="training data: a dataset .npz, or your labelled structures "
                        "(extxyz or any file ASE reads, with energies and forces; or an .npz of R, Z, E, F); same as --set data.path=FILE")
    parser.add_argument("--init", default=None, metavar="CHECKPOINT", help='fine-tune this checkpoint ("default" or a path); '
                        "same as --set model.init=CHECKPOINT")
    parser.add_argument("--out", default=None, metavar="DIR", help="output directory; same as --set output.dir=DIR")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a setting (repeatable)")
    args = parser.parse_args(argv)
    config_path = pathlib.Path(args.config)
    if not config_path.is_file() and args.config in bundled:
        config_path = DEFAULT_CONFIG.parent / f"{args.config}.toml"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config file {args.config} (bundled configs: {', '.join(bundled)})")
    flags = [f"{key}={json.dumps(value)}" for key, value in
             (("data.path", args.data), ("model.init", args.init), ("output.dir", args.out)) if value is not None]
    cfg = TrainConfig.from_toml(config_path, flags + args.set)
    if not cfg.data:
        raise SystemExit("no dataset: set [data] path in the config, or --data FILE")
    train(cfg, log=lambda *a, **k: print(*a, **k, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
