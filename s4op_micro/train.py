"""Training and evaluation: `train(...) -> TrainResult` (what `s4op-micro train` runs), `fit`,
`evaluate`, and the dataset that belongs to a checkpoint (`load_data_for`).

AdamW with the SSM parameters in their own group (lower lr, no weight decay, as s4d.py), a cosine
schedule, best-on-validation checkpointing, and determinism for a fixed seed on CPU. `fit` is
also what the pruning controller's fine-tunes call, with their recipe's options (per-epoch warm-up
and cosine, gradient clipping, S4oP's early-stopping rule: prune/recipe.py); `forward_fn` is the hook
for quantization-aware fine-tuning (a callable (model, x) -> logits that runs the fake-quantized model).
"""

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .core.errors import UserError
from .core.outdir import atomic_output_dir, check_output_path
from .core.progress import bar as progress_bar
from .data import load_dataset
from .models import SequenceClassifier
from .models.checkpoint import load_model, save_checkpoint
from .models.importers import identity_normalization, import_checkpoint

VAL_FRACTION = 0.2  # of the training sequences, carved off for checkpoint selection

# Small enough for 2 CPU cores, big enough to reach the accuracies in benchmarks/.
DATASET_DEFAULTS = {
    "gunpoint": dict(d_model=32, d_state=32, n_layers=2, epochs=60, lr=0.01, batch_size=16),
    # 36 training sequences: all of them train (a 7-sequence validation split cannot pick a checkpoint);
    # layers, epochs and augmentation chosen by 3x6-fold cross-validation on the training set.
    "arrowhead": dict(d_model=32, d_state=32, n_layers=4, epochs=100, lr=0.01, batch_size=12, augment="scale,jitter",
                      val_fraction=0.0),
    "basicmotions": dict(d_model=32, d_state=32, n_layers=2, epochs=60, lr=0.01, batch_size=8),
    "digits": dict(d_model=32, d_state=32, n_layers=2, epochs=15, lr=0.01, batch_size=32),
}
GENERIC_DEFAULTS = dict(d_model=64, d_state=64, n_layers=4, epochs=30, lr=0.01, batch_size=32, augment="",
                        val_fraction=VAL_FRACTION)
SSM_LR = 0.001
AUGMENTATIONS = ("scale", "jitter")
LR_STEPS = ("batch", "epoch")  # LRSchedule
EPOCH_TIES = ("val_loss", "earlier")  # BestEpoch
STOP_RULES = ("patience", "patience+1")  # BestEpoch
DISTILL_TEMPERATURE = 2.0  # of the soft targets when a fine-tune distills from its unpruned model


def defaults_for(dataset):
    """The training hyperparameters of a shipped dataset (by name), else the generic ones."""
    return {**GENERIC_DEFAULTS, **DATASET_DEFAULTS.get((dataset or "").lower(), {})}


def set_seed(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)


def make_optimizer(model, lr, weight_decay=0.01, ssm_lr=SSM_LR, ssm_weight_decay=0.0):
    """AdamW; the SSM parameters in their own group at `ssm_weight_decay`, their lr capped at `ssm_lr`
    (None: the same lr as the rest, as S4oP's fine-tune)."""
    ssm = {id(p) for p in model.ssm_parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ssm], "lr": lr, "weight_decay": weight_decay}]
    ssm_params = [p for p in model.parameters() if id(p) in ssm]
    if ssm_params:
        groups.append({"params": ssm_params, "lr": lr if ssm_lr is None else min(lr, ssm_lr),
                       "weight_decay": ssm_weight_decay})
    return torch.optim.AdamW(groups)


def warmup_cosine(epoch, epochs, warmup_epochs):
    """The lr factor of `epoch` (0-based) under S4oP's schedule: linear from 0.01 to 1 over
    `warmup_epochs`, then a cosine from 1 towards 0 over the remaining max(1, epochs - warmup) epochs."""
    if epoch < warmup_epochs:
        return 0.01 + 0.99 * epoch / warmup_epochs
    return 0.5 * (1 + math.cos(math.pi * (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)))


class LRSchedule:
    """step="batch": a cosine over all batches, no warm-up (training's). step="epoch": warmup_cosine,
    stepped after every epoch (S4oP's fine-tune)."""

    def __init__(self, opt, epochs, batches_per_epoch, warmup_epochs=0, step="batch"):
        if step not in LR_STEPS:
            raise ValueError(f"lr schedule step {step!r}: one of {LR_STEPS}")
        if step == "batch" and warmup_epochs:
            raise ValueError("warm-up needs the per-epoch schedule")
        self.per = step
        if step == "batch":
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * batches_per_epoch))
        else:
            self.sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: warmup_cosine(e, epochs, warmup_epochs))

    def batch_done(self):
        if self.per == "batch":
            self.sched.step()

    def epoch_done(self):
        if self.per == "epoch":
            self.sched.step()


class BestEpoch:
    """The best validation epoch so far, its weights, and when to stop.

    ties="val_loss": an equal accuracy at a lower loss is better; "earlier": only a strictly better
    accuracy is (the earlier epoch stays). stop_rule="patience": stop after `patience` epochs in a row
    without a better one; "patience+1": after patience + 1 (S4oP's counter must exceed the patience).
    """

    def __init__(self, model, ties="val_loss", patience=None, stop_rule="patience"):
        if ties not in EPOCH_TIES:
            raise ValueError(f"epoch ties {ties!r}: one of {EPOCH_TIES}")
        if stop_rule not in STOP_RULES:
            raise ValueError(f"stop rule {stop_rule!r}: one of {STOP_RULES}")
        self.ties, self.patience, self.stop_rule = ties, patience, stop_rule
        self.accuracy, self.loss = -1.0, float("inf")
        self.state, self.epoch, self.since = copy.deepcopy(model.state_dict()), 0, 0

    def offer(self, val, epoch, model):
        better = val["accuracy"] > self.accuracy or (
            self.ties == "val_loss" and val["accuracy"] == self.accuracy and val["loss"] < self.loss)
        if better:
            self.accuracy, self.loss, self.epoch, self.since = val["accuracy"], val["loss"], epoch, 0
            self.state = copy.deepcopy(model.state_dict())
        else:
            self.since += 1

    @property
    def stop(self):
        return self.patience is not None and self.since >= self.patience + (self.stop_rule == "patience+1")


def batches(x, y, batch_size, generator=None):
    order = torch.randperm(len(x), generator=generator) if generator is not None else torch.arange(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


def parse_augment(text):
    """'scale,jitter' -> ('scale', 'jitter'); '' or 'none' -> ()."""
    kinds = tuple(k.strip() for k in (text or "").split(",") if k.strip() and k.strip() != "none")
    unknown = [k for k in kinds if k not in AUGMENTATIONS]
    if unknown:
        raise UserError(f"unknown augmentation {unknown[0]!r}; pass a comma list of {', '.join(AUGMENTATIONS)} or none")
    return kinds


def augment(xb, kinds, generator):
    """Label-preserving perturbations of a normalized float batch (B, L, C), drawn from `generator`:
    'scale' multiplies each sequence's channel by a factor in [0.8, 1.2], 'jitter' adds Gaussian noise
    of 0.05 (inputs have unit std). A few dozen training sequences (arrowhead: 36) are otherwise
    memorized within a few epochs."""
    if "scale" in kinds:
        xb = xb * (0.8 + 0.4 * torch.rand(xb.shape[0], 1, xb.shape[2], generator=generator))
    if "jitter" in kinds:
        xb = xb + 0.05 * torch.randn(xb.shape, generator=generator)
    return xb


def as_tensors(x, y):
    x = torch.as_tensor(x)
    return (x.long() if not x.is_floating_point() else x.float()), torch.as_tensor(y).long()


@torch.no_grad()
def evaluate(model, x, y, batch_size=256, forward_fn=None):
    """accuracy (fraction), mean loss, per-class [correct, total] and predictions."""
    forward_fn = forward_fn or (lambda m, xb: m(xb))
    model.eval()
    x, y = as_tensors(x, y)
    logits = torch.cat([forward_fn(model, xb) for xb, _ in batches(x, y, batch_size)]) if len(x) else torch.zeros(0, 1)
    pred = logits.argmax(-1)
    n_classes = model.config["n_classes"]
    per_class = [[int(((pred == c) & (y == c)).sum()), int((y == c).sum())] for c in range(n_classes)]
    return {
        "accuracy": float((pred == y).float().mean()) if len(y) else 0.0,
        "loss": float(F.cross_entropy(logits, y)) if len(y) else 0.0,
        "per_class": per_class,
        "n": int(len(y)),
        "predictions": pred.tolist(),
    }


def fit(model, data, epochs, lr, batch_size=32, weight_decay=0.01, seed=0, patience=None,
        progress=True, desc="train", forward_fn=None, augment_with=(), ssm_lr=SSM_LR, ssm_weight_decay=0.0,
        warmup_epochs=0, lr_step="batch", grad_clip=None, stop_rule="patience", epoch_ties="val_loss",
        teacher=None, distill=0.0):
    """Train in place; keep the weights of the best validation epoch, or the last epoch's when the
    dataset has no validation split (val_accuracy and val_loss are then None).

    Returns {"best_epoch", "val_accuracy", "val_loss", "epochs_run", "seconds"}.
    The defaults are the training's; the pruning fine-tunes set the rest (prune/recipe.py):
    patience, stop_rule, epoch_ties: early stopping and which epoch is best (BestEpoch);
    augment_with: names from AUGMENTATIONS applied to every training batch (float inputs only);
    ssm_lr, ssm_weight_decay: the SSM group (make_optimizer); warmup_epochs, lr_step: LRSchedule;
    grad_clip: the largest total gradient norm (None: no clipping);
    teacher, distill: knowledge distillation (distillation_loss) from `teacher`'s logits on the same
    (augmented) batch, weighted `distill` against the labels' cross-entropy.
    """
    set_seed(seed)
    forward_fn = forward_fn or (lambda m, xb: m(xb))
    x, y = as_tensors(data.x_train, data.y_train)
    augment_with = augment_with if x.is_floating_point() else ()
    opt = make_optimizer(model, lr, weight_decay, ssm_lr, ssm_weight_decay)
    schedule = LRSchedule(opt, epochs, (len(x) + batch_size - 1) // batch_size, warmup_epochs, lr_step)
    gen = torch.Generator().manual_seed(seed)
    best = BestEpoch(model, epoch_ties, patience, stop_rule)
    start, epoch = time.time(), 0
    bar = progress_bar(range(epochs), desc, enabled=progress)
    for epoch in bar:
        loss = train_epoch(model, opt, schedule, batches(x, y, batch_size, gen), forward_fn,
                           lambda xb: augment(xb, augment_with, gen) if augment_with else xb, grad_clip,
                           teacher, distill)
        schedule.epoch_done()
        if not len(data.y_val):
            best.epoch = epoch
            bar.set_postfix(loss=f"{loss:.3f}")
            continue
        val = evaluate(model, data.x_val, data.y_val, forward_fn=forward_fn)
        best.offer(val, epoch, model)
        bar.set_postfix(loss=f"{loss:.3f}", val_acc=f"{val['accuracy']:.3f}", best=f"{best.accuracy:.3f}")
        if best.stop:
            break
    bar.close()
    history = {"best_epoch": best.epoch, "val_accuracy": None, "val_loss": None, "epochs_run": epoch + 1}
    if len(data.y_val):
        model.load_state_dict(best.state)
        history.update(val_accuracy=best.accuracy, val_loss=best.loss)
    model.eval()
    return {**history, "seconds": time.time() - start}


def distillation_loss(logits, labels, teacher_logits, weight, temperature=DISTILL_TEMPERATURE):
    """(1 - weight) x cross-entropy on the labels + weight x T^2 x KL(teacher || student) at
    temperature T (Hinton et al. 2015; T^2 keeps the soft term's gradients the size of the hard one's)."""
    hard = F.cross_entropy(logits, labels)
    if teacher_logits is None or not weight:
        return hard
    soft = F.kl_div(F.log_softmax(logits / temperature, -1), F.log_softmax(teacher_logits / temperature, -1),
                    reduction="batchmean", log_target=True)
    return (1 - weight) * hard + weight * temperature**2 * soft


def train_epoch(model, opt, schedule, batch_iter, forward_fn, perturb, grad_clip=None, teacher=None, distill=0.0):
    """One pass over the training batches; returns the last batch's loss."""
    model.train()
    loss = torch.tensor(float("nan"))
    for xb, yb in batch_iter:
        if len(xb) < 2 and model.config["norm"] == "batch":
            continue  # BatchNorm cannot train on a single sample
        xb = perturb(xb)
        with torch.no_grad():
            soft = teacher.eval()(xb) if teacher is not None and distill else None
        loss = distillation_loss(forward_fn(model, xb), yb, soft, distill)
        opt.zero_grad()
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        schedule.batch_done()
    return loss.item()


def renormalize(data, current, wanted):
    """Re-express normalized inputs under another (the checkpoint's) normalization, in place; afterwards
    data.normalization is `wanted`. An imported model records the identity (mean 0, std 1): it gets
    the raw inputs, as its original code fed it."""
    if not current or not wanted or current == wanted:
        return
    m0, s0 = np.asarray(current["mean"], np.float64), np.asarray(current["std"], np.float64)
    m1, s1 = np.asarray(wanted["mean"], np.float64), np.asarray(wanted["std"], np.float64)
    for split in ("x_train", "x_val", "x_test"):
        x = getattr(data, split).astype(np.float64)  # float64: the raw values come back to float32 rounding
        setattr(data, split, (((x * s0 + m0) - m1) / s1).astype(np.float32))
    data.normalization = wanted


# --- dataset <-> checkpoint -------------------------------------------------------------------

def dataset_record(data, data_path=None, root=None):
    """What a checkpoint keeps about its dataset: how to reload it and its shape facts."""
    return {
        "name": None if data_path else data.name,
        "data": str(Path(data_path).resolve()) if data_path else None,
        "root": root,
        "n_channels": data.n_channels, "seq_len": data.seq_len, "n_classes": data.n_classes,
        "vocab_size": data.vocab_size, "class_names": list(data.class_names), "source": data.source,
    }


def load_data_for(ckpt, dataset=None, data=None, root=None, max_train=None):
    """The dataset named (dataset= a shipped name, data= a .npz), else the checkpoint's; checked
    against the model and put through the checkpoint's normalization. Always with the default
    validation split: pruning and fine-tuning select on it (if the model trained with
    --val-fraction 0, it has seen those)."""
    rec = ckpt["dataset"]
    if not dataset and not data:
        dataset, data = rec.get("name"), rec.get("data")
    loaded = load_dataset(name=dataset, data=data, root=root or rec.get("root"), max_train=max_train)
    return fit_data_to(ckpt, loaded)


def fit_data_to(ckpt, data):
    """Check that `data` fits the checkpoint's model and put it through the checkpoint's normalization."""
    cfg = ckpt["config"]
    if bool(cfg.get("vocab_size")) != bool(data.vocab_size):
        kinds = ("tokens", "real-valued sequences")
        raise UserError(f"the model takes {kinds[not cfg.get('vocab_size')]} but the data holds {kinds[not data.vocab_size]}; "
                        "pass the dataset it was trained on")
    if cfg.get("vocab_size") and data.vocab_size > cfg["vocab_size"]:
        raise UserError(f"data has a vocabulary of {data.vocab_size} tokens but the model's embedding has {cfg['vocab_size']}; "
                        "pass the dataset it was trained on")
    if not cfg.get("vocab_size") and data.n_channels != cfg["d_input"]:
        raise UserError(f"data has {data.n_channels} input channels but the model expects {cfg['d_input']}; pass the dataset it was trained on")
    if data.n_classes > cfg["n_classes"]:
        raise UserError(f"data has {data.n_classes} classes but the model has {cfg['n_classes']}; pass the dataset it was trained on")
    if cfg.get("pooling") == "causal_half" and data.seq_len != cfg.get("seq_len"):
        raise UserError(f"data has sequences of length {data.seq_len} but the model's causal_half pooling starts at "
                        f"step {cfg.get('seq_len')}//2 of length {cfg.get('seq_len')}; pass the dataset it was trained on")
    renormalize(data, data.normalization, ckpt["normalization"])
    return data


# --- the stage --------------------------------------------------------------------------------

@dataclass
class TrainResult:
    model: str                 # path of the checkpoint written (DIR/model.pt)
    dataset: str
    accuracy: float            # test accuracy
    val_accuracy: float        # None without a validation split (last epoch kept)
    params: int
    train_seconds: float
    hyperparameters: dict

    def to_dict(self):
        return asdict(self)


def check_hyperparameters(hp, dropout=0.0):
    """UserError naming the first out-of-range training option (the CLI's types check them too)."""
    for name in ("epochs", "d_model", "n_layers", "batch_size"):
        if not hp[name] >= 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {hp[name]}")
    if not (hp["d_state"] >= 2 and hp["d_state"] % 2 == 0):
        raise UserError(f"--d-state must be even and at least 2 (N/2 complex conjugate modes), not {hp['d_state']}")
    if not hp["lr"] > 0:
        raise UserError(f"--lr must be positive, not {hp['lr']}")
    if not 0 <= hp["val_fraction"] < 1:
        raise UserError(f"--val-fraction must be in [0, 1), not {hp['val_fraction']}")
    if not 0 <= dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), not {dropout}")


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def train(*, out, dataset=None, data=None, root=None, max_train=None, epochs=None, d_model=None, d_state=None,
          n_layers=None, lr=None, batch_size=None, val_fraction=None, augment=None, ssm="s4d", norm="batch",
          prenorm=False, dropout=0.0, init="lin", disc=None, seed=0, force=False, progress=True) -> TrainResult:
    """Train an S4D/S4 classifier on a shipped dataset (dataset=) or a .npz (data=) and write
    OUT/model.pt. Hyperparameters left None take the dataset's defaults (defaults_for)."""
    given = dict(epochs=epochs, d_model=d_model, d_state=d_state, n_layers=n_layers, lr=lr, batch_size=batch_size,
                 val_fraction=val_fraction, augment=augment)
    hp = {k: (given[k] if given.get(k) is not None else v) for k, v in defaults_for(dataset).items()}
    check_hyperparameters(hp, dropout)
    check_output_path(out, force)
    augment_with = parse_augment(hp["augment"])
    hp["augment"] = ",".join(augment_with)
    loaded = load_dataset(name=dataset, data=data, root=root, max_train=max_train, seed=seed,
                          val_fraction=hp["val_fraction"])
    set_seed(seed)
    model = SequenceClassifier(
        loaded.n_channels, loaded.n_classes, d_model=hp["d_model"], d_state=hp["d_state"], n_layers=hp["n_layers"],
        ssm=ssm, norm=norm, prenorm=prenorm, dropout=dropout, init=init,
        disc=disc or ("bilinear" if ssm == "s4" else "zoh"), vocab_size=loaded.vocab_size,
    )
    with atomic_output_dir(out, force=force) as tmp:
        history = fit(model, loaded, hp["epochs"], hp["lr"], hp["batch_size"], seed=seed,
                      progress=progress, desc=f"train {loaded.name}", augment_with=augment_with)
        test = evaluate(model, loaded.x_test, loaded.y_test)
        metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "val_accuracy": history["val_accuracy"],
                   "train_seconds": history["seconds"], "best_epoch": history["best_epoch"], "hyperparameters": hp,
                   "seed": seed}
        save_checkpoint(tmp / "model.pt", model, loaded.normalization, dataset_record(loaded, data, root), metrics)
    return TrainResult(model=str(Path(out) / "model.pt"), dataset=loaded.name, accuracy=test["accuracy"],
                       val_accuracy=history["val_accuracy"], params=n_params(model), train_seconds=history["seconds"],
                       hyperparameters=hp)


def evaluate_checkpoint(model, *, dataset=None, data=None, root=None, max_train=None):
    """Test accuracy, loss and per-class counts of the checkpoint `model` on its dataset (or another)."""
    float_model, ckpt = load_model(model)
    loaded = load_data_for(ckpt, dataset=dataset, data=data, root=root, max_train=max_train)
    res = evaluate(float_model, loaded.x_test, loaded.y_test)
    res.pop("predictions")
    res["dataset"] = loaded.name
    return res


def checkpoint_info(model):
    """Configuration, parameters, dataset, metrics and operators (active, removed) of a checkpoint."""
    float_model, ckpt = load_model(model)
    H = float_model.config["d_model"]
    return {"config": float_model.config, "params": n_params(float_model), "dataset": ckpt["dataset"],
            "metrics": ckpt["metrics"], "active_operators": float_model.active_operators,
            "removed_operators": float_model.removed_operators,
            "operators_kept": [len(a) for a in float_model.active_operators],
            "operators_total": H * len(float_model.layers), "pruning": ckpt.get("pruning")}


# --- models from other code bases ------------------------------------------------------------

def import_model(checkpoint, *, fmt, out, prenorm=False, pooling="mean", dropout=None, seq_len=None, force=False,
                 dataset=None, data=None, root=None, max_train=None):
    """A checkpoint of state-spaces/s4 example.py or PARCO-LAB/S4oP (fmt "s4-example" | "s4op") ->
    OUT/model.pt, a normal s4op-micro checkpoint. The conversion is models.importers (pure); here
    the data side: the dataset named (if any) is recorded, checked against the model and scored.
    The recorded normalization is the identity: the original code fed the model raw inputs, and so
    does the data pipeline for this checkpoint (renormalize undoes the dataset's own normalization)."""
    check_output_path(out, force)
    if seq_len is not None and seq_len < 2:
        raise UserError(f"--seq-len {seq_len} is too short; pass the fixed sequence length (>= 2)")
    loaded = None
    if dataset or data:
        loaded = load_dataset(name=dataset, data=data, root=root, max_train=max_train)
        if seq_len is not None and seq_len != loaded.seq_len:
            raise UserError(f"--seq-len {seq_len} disagrees with the data's sequence length {loaded.seq_len}; drop --seq-len")
        seq_len = loaded.seq_len
    model, meta = import_checkpoint(checkpoint, fmt, prenorm=prenorm, pooling=pooling, dropout=dropout, seq_len=seq_len)
    cfg = model.config
    if loaded is not None:
        record = dataset_record(loaded, data, root)
    else:
        record = {"name": None, "data": None, "root": None, "n_channels": cfg["d_input"], "seq_len": seq_len,
                  "n_classes": cfg["n_classes"], "vocab_size": cfg["vocab_size"], "class_names": [],
                  "source": "none recorded: pass --dataset/--data to eval, prune, finetune and export"}
    ckpt = {"config": cfg, "normalization": identity_normalization(model), "dataset": record}
    metrics = {"imported": meta}
    if loaded is not None:
        fit_data_to(ckpt, loaded)  # raises on a mismatch; then the data is raw, as the original saw it
        test = evaluate(model, loaded.x_test, loaded.y_test)
        metrics.update(test_accuracy=test["accuracy"], test_loss=test["loss"], val_accuracy=None)
    with atomic_output_dir(out, force=force) as tmp:
        save_checkpoint(tmp / "model.pt", model, ckpt["normalization"], record, metrics)
    return {"model": str(Path(out) / "model.pt"), "format": fmt, "config": cfg, "params": n_params(model),
            "operators_active": [len(a) for a in model.active_operators], "operators_total": cfg["d_model"] * cfg["n_layers"],
            "dataset": loaded.name if loaded is not None else None, "accuracy": metrics.get("test_accuracy")}
