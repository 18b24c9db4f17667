"""Training and evaluation: `s4op-micro train`, `eval`, `info`.

AdamW with the SSM parameters in their own group (lower lr, no weight decay, as s4d.py), a cosine
schedule, best-on-validation checkpointing, and determinism for a fixed seed on CPU. `fit` is
also what the pruning controller's fine-tunes call, with their recipe's options (per-epoch warm-up
and cosine, gradient clipping, S4oP's early-stopping rule: prune/recipe.py); `forward_fn` is the hook
for quantization-aware fine-tuning (a callable (model, x) -> logits that runs the fake-quantized model).
"""

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import load_model, save_checkpoint
from .data import load_dataset
from .errors import UserError
from .models import SequenceClassifier
from .models.layer import KERNELS
from .outdir import atomic_output_dir

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
        warmup_epochs=0, lr_step="batch", grad_clip=None, stop_rule="patience", epoch_ties="val_loss"):
    """Train in place; keep the weights of the best validation epoch, or the last epoch's when the
    dataset has no validation split (val_accuracy and val_loss are then None).

    Returns {"best_epoch", "val_accuracy", "val_loss", "epochs_run", "seconds"}.
    The defaults are the training's; the pruning fine-tunes set the rest (prune/recipe.py):
    patience, stop_rule, epoch_ties: early stopping and which epoch is best (BestEpoch);
    augment_with: names from AUGMENTATIONS applied to every training batch (float inputs only);
    ssm_lr, ssm_weight_decay: the SSM group (make_optimizer); warmup_epochs, lr_step: LRSchedule;
    grad_clip: the largest total gradient norm (None: no clipping).
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
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in bar:
        loss = train_epoch(model, opt, schedule, batches(x, y, batch_size, gen), forward_fn,
                           lambda xb: augment(xb, augment_with, gen) if augment_with else xb, grad_clip)
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


def train_epoch(model, opt, schedule, batch_iter, forward_fn, perturb, grad_clip=None):
    """One pass over the training batches; returns the last batch's loss."""
    model.train()
    loss = torch.tensor(float("nan"))
    for xb, yb in batch_iter:
        if len(xb) < 2 and model.config["norm"] == "batch":
            continue  # BatchNorm cannot train on a single sample
        loss = F.cross_entropy(forward_fn(model, perturb(xb)), yb)
        opt.zero_grad()
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        schedule.batch_done()
    return loss.item()


# --- dataset <-> checkpoint -------------------------------------------------------------------

def dataset_record(data, args):
    """What a checkpoint keeps about its dataset: how to reload it and its shape facts."""
    return {
        "name": None if getattr(args, "data", None) else data.name,
        "data": str(Path(args.data).resolve()) if getattr(args, "data", None) else None,
        "root": getattr(args, "root", None),
        "n_channels": data.n_channels, "seq_len": data.seq_len, "n_classes": data.n_classes,
        "vocab_size": data.vocab_size, "class_names": list(data.class_names), "source": data.source,
    }


def load_data_for(ckpt, args):
    """The dataset named on the command line, else the checkpoint's; checked against the model and
    put through the checkpoint's normalization. Always with the default validation split: pruning
    and fine-tuning select on it (if the model trained with --val-fraction 0, it has seen those)."""
    rec = ckpt["dataset"]
    name, path = getattr(args, "dataset", None), getattr(args, "data", None)
    if not name and not path:
        name, path = rec.get("name"), rec.get("data")
    data = load_dataset(name=name, data=path, root=getattr(args, "root", None) or rec.get("root"),
                        max_train=getattr(args, "max_train", None))
    cfg = ckpt["config"]
    if not cfg.get("vocab_size") and data.n_channels != cfg["d_input"]:
        raise UserError(f"data has {data.n_channels} input channels but the model expects {cfg['d_input']}; pass the dataset it was trained on")
    if data.n_classes > cfg["n_classes"]:
        raise UserError(f"data has {data.n_classes} classes but the model has {cfg['n_classes']}; pass the dataset it was trained on")
    renormalize(data, data.normalization, ckpt["normalization"])
    return data


def renormalize(data, current, wanted):
    """Re-express normalized inputs under another (the checkpoint's) normalization, in place."""
    if not current or not wanted or current == wanted:
        return
    m0, s0 = np.asarray(current["mean"], np.float32), np.asarray(current["std"], np.float32)
    m1, s1 = np.asarray(wanted["mean"], np.float32), np.asarray(wanted["std"], np.float32)
    for split in ("x_train", "x_val", "x_test"):
        x = getattr(data, split)
        setattr(data, split, (((x * s0 + m0) - m1) / s1).astype(np.float32))


# --- commands ---------------------------------------------------------------------------------

def add_data_args(p, required=True):
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--dataset", help="a shipped dataset (see `s4op-micro datasets`)")
    g.add_argument("--data", help="your own .npz with x_train, y_train, x_test, y_test")
    p.add_argument("--root", help="directory with the standard files of smnist / listops")
    p.add_argument("--max-train", type=int, help="use at most this many training sequences")


def cmd_train(args):
    from .cli import emit

    hp = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in defaults_for(args.dataset).items()}
    augment_with = parse_augment(hp["augment"])
    hp["augment"] = ",".join(augment_with)
    data = load_dataset(name=args.dataset, data=args.data, root=args.root, max_train=args.max_train, seed=args.seed,
                        val_fraction=hp["val_fraction"])
    set_seed(args.seed)
    model = SequenceClassifier(
        data.n_channels, data.n_classes, d_model=hp["d_model"], d_state=hp["d_state"], n_layers=hp["n_layers"],
        ssm=args.ssm, norm=args.norm, prenorm=args.prenorm, dropout=args.dropout, init=args.init,
        disc=args.disc or ("bilinear" if args.ssm == "s4" else "zoh"), vocab_size=data.vocab_size,
    )
    with atomic_output_dir(args.out, force=args.force) as tmp:
        history = fit(model, data, hp["epochs"], hp["lr"], hp["batch_size"], seed=args.seed,
                      progress=not args.quiet, desc=f"train {data.name}", augment_with=augment_with)
        test = evaluate(model, data.x_test, data.y_test)
        metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "val_accuracy": history["val_accuracy"],
                   "train_seconds": history["seconds"], "best_epoch": history["best_epoch"], "hyperparameters": hp,
                   "seed": args.seed}
        save_checkpoint(tmp / "model.pt", model, data.normalization, dataset_record(data, args), metrics)
    result = {"model": str(Path(args.out) / "model.pt"), "dataset": data.name, "accuracy": test["accuracy"],
              "val_accuracy": history["val_accuracy"], "params": n_params(model), "train_seconds": history["seconds"]}
    emit(args, result, lambda r: (
        f"trained {r['dataset']}: test accuracy {r['accuracy']:.4f} "
        + (f"(val {r['val_accuracy']:.4f}), " if r["val_accuracy"] is not None else "(no validation split, last epoch), ")
        + f"{r['params']} parameters, {r['train_seconds']:.1f} s -> {r['model']}"))
    return 0


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def cmd_eval(args):
    from .cli import emit

    model, ckpt = load_model(args.model)
    data = load_data_for(ckpt, args)
    res = evaluate(model, data.x_test, data.y_test)
    res.pop("predictions")
    res["dataset"] = data.name
    emit(args, res, lambda r: (
        f"{r['dataset']}: test accuracy {r['accuracy']:.4f} ({r['n']} sequences), loss {r['loss']:.4f}\n"
        + "per class [correct/total]: " + ", ".join(f"{c}/{t}" for c, t in r["per_class"])))
    return 0


def cmd_info(args):
    from .cli import emit

    model, ckpt = load_model(args.model)
    H = model.config["d_model"]
    result = {
        "config": model.config, "params": n_params(model), "dataset": ckpt["dataset"], "metrics": ckpt["metrics"],
        "active_operators": model.active_operators, "removed_operators": model.removed_operators,
        "operators_kept": [len(a) for a in model.active_operators], "operators_total": H * len(model.layers),
        "pruning": ckpt.get("pruning"),
    }

    def human(r):
        lines = [f"model {args.model}: {r['config']['ssm']} x{r['config']['n_layers']}, H={H}, N={r['config']['d_state']}, "
                 f"{r['params']} parameters, dataset {r['dataset'].get('name') or r['dataset'].get('data')}"]
        for i, (act, rem) in enumerate(zip(r["active_operators"], r["removed_operators"])):
            lines.append(f"  layer {i}: {len(act)}/{H} operators active, {len(rem)} removed, {H - len(act) - len(rem)} bypassed"
                         + (f"  active={act}" if len(act) < H else ""))
        acc = r["metrics"].get("test_accuracy")
        if acc is not None:
            lines.append(f"  test accuracy {acc:.4f}")
        return "\n".join(lines)

    emit(args, result, human)
    return 0


def register(sub):
    p = sub.add_parser("train", help="train an S4D/S4 classifier", description="Train an S4D/S4 sequence classifier; writes DIR/model.pt.")
    add_data_args(p)
    p.add_argument("--out", required=True, help="output directory (gets model.pt)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    for name, typ in [("epochs", int), ("d-model", int), ("d-state", int), ("n-layers", int), ("lr", float), ("batch-size", int)]:
        p.add_argument(f"--{name}", type=typ, help="default: per dataset")
    p.add_argument("--val-fraction", type=float, help=f"training sequences held out to pick the best epoch (default "
                   f"{VAL_FRACTION}, per dataset); 0: train on all of them and keep the last epoch")
    p.add_argument("--augment", help=f"comma list of {', '.join(AUGMENTATIONS)}, or none (default: per dataset)")
    p.add_argument("--ssm", choices=sorted(KERNELS), default="s4d")
    p.add_argument("--norm", choices=["batch", "layer"], default="batch")
    p.add_argument("--prenorm", action="store_true", help="pre-norm blocks (default post-norm)")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--init", choices=["lin", "inv", "real"], default="lin", help="S4D initialization")
    p.add_argument("--disc", choices=["zoh", "bilinear"], help="discretization (default zoh for s4d, bilinear for s4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test accuracy of a checkpoint")
    p.add_argument("model", help="checkpoint (model.pt)")
    add_data_args(p, required=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="configuration, parameters and active operators of a checkpoint")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
