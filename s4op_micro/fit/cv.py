"""fit's cross-validation: K stratified folds of the training set (repeated with fresh splits for the
finalists), one task per (point, repeat, fold, seed) on prune.parallel.Executor. A task trains on the
fold's training part (a distilled point: from the labels and an ensemble of teachers trained there
first; pruned to a cycle target on the pruned path; on a QAT point then fine-tuned through the
fake-quantized integer model at the point's width) and scores its held-out part twice:
the float model, and the numpy integer reference (the firmware's exact arithmetic) at each coefficient
width (a QAT point: its own), calibrated on the fold's training part as export calibrates on the
training set."""

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..core.boards import get_board
from ..core.errors import UserError
from ..data.core import fit_normalization, normalize
from ..models.checkpoint import load_model, save_checkpoint
from ..prune.api import PruneOptions, prune
from ..prune.controller import GRANULARITIES
from ..quant.qat import make_qat_forward
from ..quant.reference import CALIB_SAMPLES, int8_accuracy
from ..train import evaluate, fit as train_fit, parse_augment
from .space import COEFF_BITS, COST_KEYS, costs, make_model, over_budget

LR = 0.01
UPDATES = 400
MIN_EPOCHS, MAX_EPOCHS = 30, 100
LONG = 4                    # a "long" point trains this many times the updates (and epochs)
PRUNE_FINETUNE_EPOCHS = 5
QAT_EPOCHS = 5              # the QAT fine-tune: a tenth of the training's learning rate, its batches, last epoch
QAT_LR = LR / 10
# An ensemble folded into one model: the student learns from the labels and from the mean logits of
# TEACHERS models of its own recipe and shape (seeds teacher_seeds), weighted as the pruning fine-tunes
# weigh their teacher (train.distillation_loss at its temperature).
TEACHERS = 3
DISTILL_WEIGHT = 0.5
TEACHER_SEED_STRIDE = 10_007  # teachers' extra seeds: far from every task's own seed (seed + r x seeds + s)


def cv_splits(y, folds, seed):
    """[(train indices, held-out indices)] of stratified K folds over the training labels y."""
    from sklearn.model_selection import KFold, StratifiedKFold
    y = np.asarray(y)
    if folds > len(y):
        raise UserError(f"--folds {folds} is more than the {len(y)} training sequences")
    counts = np.bincount(y)
    strat = counts[counts > 0].min() >= folds
    kf = (StratifiedKFold if strat else KFold)(n_splits=folds, shuffle=True, random_state=seed)
    return [(np.sort(a), np.sort(b)) for a, b in kf.split(np.zeros(len(y)), y if strat else None)]


def recipe_for(n, epochs=None, long=False):
    """Batches of n/10 sequences (8 to 32) and about UPDATES updates (LONG x as many for a long point),
    in MIN_EPOCHS to MAX_EPOCHS epochs (LONG x MAX_EPOCHS)."""
    batch = max(8, min(32, n // 10))
    k = LONG if long else 1
    if epochs is None:
        epochs = int(min(k * MAX_EPOCHS, max(MIN_EPOCHS, round(k * UPDATES / math.ceil(n / batch)))))
    else:
        epochs *= k
    return {"lr": LR, "batch_size": batch, "epochs": epochs}


class _Split:
    """What train.fit reads: training arrays and an empty validation split (the last epoch is kept)."""

    def __init__(self, x, y):
        self.x_train, self.y_train = x, y
        self.x_val, self.y_val = x[:0], y[:0]


def _normalized(x_train, *others):
    """Refit the per-channel normalization on x_train (a fold's training part) and apply it to all."""
    norm = fit_normalization(x_train)
    return [normalize(a, norm) for a in (x_train, *others)]


class MeanLogits(torch.nn.Module):
    """An ensemble as one teacher: the mean of its members' logits."""

    def __init__(self, members):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x):
        return torch.stack([m(x) for m in self.members]).mean(0)


def teacher_seeds(seed, teachers):
    """The first teacher is the undistilled model of this very seed; the others are fresh seeds."""
    return [seed] + [seed + TEACHER_SEED_STRIDE * k for k in range(1, teachers)]


def train_one(data, shape, x, y, recipe, augment, seed, teachers=0):
    """A model of `shape` trained on (x, y); teachers=K: with distillation from K models of the same recipe
    (the student starts from the same weights and batches as the undistilled model: a paired comparison)."""
    teacher = MeanLogits([train_one(data, shape, x, y, recipe, augment, s) for s in teacher_seeds(seed, teachers)]) \
        if teachers else None
    model = make_model(data, shape, seed)
    train_fit(model, _Split(x, y), recipe["epochs"], recipe["lr"], recipe["batch_size"], seed=seed, progress=False,
              augment_with=parse_augment(augment), teacher=teacher, distill=DISTILL_WEIGHT if teachers else 0.0)
    return model


def qat_tune(model, x, y, recipe, coeff_bits, seed):
    """Fine-tune `model` in place through the fake-quantized integer model at coeff_bits, calibrated on
    x as export calibrates (its first CALIB_SAMPLES sequences)."""
    forward = make_qat_forward(model, x[:CALIB_SAMPLES], coeff_bits)
    train_fit(model, _Split(x, y), QAT_EPOCHS, QAT_LR, recipe["batch_size"], seed=seed, progress=False,
              forward_fn=forward)
    return model


def int8_scores(model, x_calib, x, y, board, widths=COEFF_BITS):
    """Per coefficient width: the integer reference's accuracy on (x, y) and the model's costs at that width."""
    model.eval()
    out = []
    for bits in widths:
        out.append({"coeff_bits": bits, "accuracy": int8_accuracy(model, x_calib, x, y, bits),
                    **costs(model, board, bits)})
    return out


def cv_task(task, shared):
    """One (point, repeat, fold, seed): train on the fold's training part, score its held-out part."""
    start = time.time()
    tr, va = shared["folds"][task["repeat"]][task["fold"]]
    x_tr, x_va = _normalized(shared["x"][tr], shared["x"][va])
    y_tr, y_va = shared["y"][tr], shared["y"][va]
    recipe = recipe_for(len(tr), shared["epochs"], task.get("long"))
    shape = {k: task[k] for k in ("d_model", "d_state", "n_layers")}
    model = train_one(shared, shape, x_tr, y_tr, recipe, task["augment"], task["seed"], task.get("teachers") or 0)
    out = {}
    if task.get("prune_to"):
        model, out = _pruned(model, shared, x_tr, y_tr, x_va, y_va, recipe, task)
    if task.get("qat"):
        qat_tune(model, x_tr, y_tr, recipe, task["qat"], task["seed"])
    res = evaluate(model, x_va, y_va)
    widths = int8_scores(model, x_tr, x_va, y_va, get_board(shared["board"]), (task["qat"],) if task.get("qat")
                         else COEFF_BITS)
    return {**{k: task[k] for k in ("repeat", "fold", "seed")}, "pruned_fraction": out.get("pruned_fraction"),
            "accuracy": res["accuracy"], "loss": res["loss"], "widths": widths, "seconds": round(time.time() - start, 1)}


def _pruned(model, shared, x_tr, y_tr, x_va, y_va, recipe, task):
    """Guided pruning of a fold's model down to task["prune_to"] cycles per step, on that fold's data
    (a .npz whose 'test' part is the held-out fold: prune selects on a split of the training part)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "fold.npz", x_train=x_tr, y_train=y_tr, x_test=x_va, y_test=y_va)
        record = {"name": None, "data": str(tmp / "fold.npz"), "root": None, "n_channels": shared["n_channels"],
                  "seq_len": shared["seq_len"], "n_classes": shared["n_classes"], "vocab_size": None,
                  "class_names": [], "source": "a cross-validation fold"}
        c = shared["n_channels"]
        hp = {**recipe, "augment": task["augment"], "val_fraction": 0.0}
        save_checkpoint(tmp / "big.pt", model, {"mean": [0.0] * c, "std": [1.0] * c}, record,
                        {"hyperparameters": hp, "seed": task["seed"]})
        path, info = prune_to(tmp / "big.pt", tmp / "prune", task["prune_to"], shared["board"], task["seed"],
                              {"data": str(tmp / "fold.npz")})
        pruned, _ = load_model(path)
    return pruned, info


def prune_to(model_path, out, target_cycles, board, seed, data_source):
    """Guided pruning to target_cycles; (the kept checkpoint that meets it or the last kept, figures)."""
    res = prune(model_path, out, PruneOptions(strategy="guided", target_cycles=target_cycles, board=board, seed=seed,
                                              granularity=",".join(GRANULARITIES),
                                              finetune_epochs=PRUNE_FINETUNE_EPOCHS, seeds="1", data_source=data_source),
                quiet=True, force=True)
    kept = [m for m in res.models if m["strategy"] == "guided"] or res.models
    pick = next((m for m in kept if m["cycles_per_step"] <= target_cycles), kept[-1])
    return pick["path"], {"pruned_fraction": pick["pruned_fraction"]}


def _mean(values, digits=2):
    v = float(np.mean(values))
    return int(v) if v == int(v) else round(v, digits)


def summarize(p, budget):
    """Fill point p's figures from its runs (p["cv_runs"]): float CV accuracy, and per coefficient width the
    int8 CV accuracy and the fold models' mean costs; the point takes the width with the best int8 CV
    accuracy within the budget (ties: fewer cycles, less flash, the narrower width). A QAT point was
    scored at its own width only."""
    rs = p["cv_runs"]
    accs = [r["accuracy"] for r in rs]
    p.update(cv_accuracy=float(np.mean(accs)), cv_std=float(np.std(accs)), cv_accuracies=accs,
             cv_loss=float(np.mean([r["loss"] for r in rs])), cv_seconds=round(sum(r["seconds"] for r in rs), 1),
             cv_evaluations=len(rs))
    widths = []
    for j, bits in enumerate(w["coeff_bits"] for w in rs[0]["widths"]):
        ws = [r["widths"][j] for r in rs]
        a = [w["accuracy"] for w in ws]
        c = {k: _mean([w[k] for w in ws]) for k in COST_KEYS}
        widths.append({"coeff_bits": bits, "int8_cv_accuracy": float(np.mean(a)), "int8_cv_std": float(np.std(a)),
                       "int8_cv_accuracies": a, **c, "over": over_budget(c, budget)})
    best = max(widths, key=lambda w: (not w["over"], round(w["int8_cv_accuracy"], 9), -w["cycles_per_step"],
                                      -w["flash_bytes"], -w["coeff_bits"]))
    p.update({k: best[k] for k in (*COST_KEYS, "coeff_bits", "int8_cv_accuracy", "int8_cv_std", "over")}, widths=widths)
    if p.get("prune_to"):
        p["cv_pruned_fractions"] = [r["pruned_fraction"] for r in rs]
    return p


def cross_validate(points, shared, o, executor, budget, log, repeats=(0,)):
    """Add the runs of `repeats` (K folds x o.seeds seeds each) to every point, then summarize it; a line per point."""
    tasks = [{**{k: p[k] for k in ("d_model", "d_state", "n_layers")}, "augment": p["augment"],
              "prune_to": p.get("prune_to"), "qat": p.get("qat"), "long": p.get("long"),
              "teachers": p.get("teachers"), "repeat": r, "fold": f, "seed": o.seed + r * o.seeds + s, "point": i}
             for i, p in enumerate(points) for r in repeats for f in range(o.folds) for s in range(o.seeds)]
    waiting = [len(tasks) // len(points)] * len(points)
    started = time.time()

    def arrived(j, res):
        i = tasks[j]["point"]
        p = points[i]
        p.setdefault("cv_runs", []).append(res)
        waiting[i] -= 1
        if not waiting[i]:
            summarize(p, budget)
            log(f"fit: {p['label']}: CV accuracy {p['cv_accuracy']:.4f} (+-{p['cv_std']:.3f}, {len(p['cv_runs'])} "
                f"fold models), int8 " + ", ".join(f"{w['coeff_bits']}-bit {w['int8_cv_accuracy']:.4f}" for w in p["widths"])
                + f"; {p['macs_per_step']:,} MACs/step, {p['cycles_per_step']:,.0f} cycles/step, "
                f"{p['flash_bytes']:,} B flash ({p['coeff_bits']}-bit) [{time.time() - started:.0f} s]")

    executor.map(cv_task, tasks, on_result=arrived)
    for p in points:   # in task order: the runs' order does not depend on which worker finished first
        p["cv_runs"].sort(key=lambda r: (r["repeat"], r["fold"], r["seed"]))
        summarize(p, budget)
    return points
