"""`fit(...)`: choose the model's width (d_model), state size (d_state) and depth (n_layers) for the
data and the board's budget, train it with a small-data recipe, and write DIR/model.pt (a normal
checkpoint), DIR/fit.json (every searched point) and DIR/fit.png (the Pareto front).

  1. Price every shape of the grid (D_MODELS x D_STATES x N_LAYERS) from its shapes alone:
     quant.cost.cost_report (flash, RAM, MACs per step) and prune.latency.AnalyticOracle (cycles per
     step, calibrated against QEMU instruction counts x the core's CPI). The budget is the board's
     flash and RAM and whatever --max-* adds; a shape over any of them is not trained.
  2. Cross-validate the largest feasible shapes (no feasible shape is larger in all three
     dimensions; at most `candidates`, spread over the width): K stratified folds of the training
     set only (the test set is not even handed to the workers), `seeds` seeds per fold, the
     normalization refitted on each fold's training part. Tasks run on prune.parallel.Executor
     (one torch thread each, seeded per task: the results do not depend on the worker count).
  3. On the winner (highest mean CV accuracy; ties: fewer cycles) cross-validate two alternatives
     in the same way: the same shape with augmentation (scale,jitter), and a shape of about twice
     its cycles trained and then taken down to the winner's cycles by guided pruning
     (prune.api.prune, strategy guided, target_cycles). The best mean CV accuracy is deployed
     (ties: the plain winner).
  4. Train the chosen recipe on all training data (`seeds` seeds, each keeping its last epoch of a
     cosine schedule; the seed with the lowest training loss is kept), prune it if the pruned path
     won, check it against the budget, evaluate it on the test set once (reported, chooses nothing)
     and, with measure=True, export it and run it in QEMU (deploy): firmware accuracy and measured
     instructions/cycles per step.

Recipe: AdamW (train.fit), lr 0.01, cosine over all batches, batches of n/10 sequences (8 to 32),
about UPDATES updates (epochs clamped to [MIN_EPOCHS, MAX_EPOCHS]), the last epoch kept. Seed
ensembles are not folded into one model (no distillation): `seeds` buys a lower-variance choice.
"""

import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import deploy
from .core.boards import get_board
from .core.errors import UserError
from .core.outdir import atomic_output_dir, check_output_path
from .data import load_dataset
from .data.core import fit_normalization, normalize
from .models import SequenceClassifier
from .models.checkpoint import load_model, save_checkpoint
from .prune.api import PruneOptions, prune
from .prune.controller import GRANULARITIES
from .prune.latency import AnalyticOracle
from .prune.parallel import Executor, one_thread
from .quant.cost import cost_report
from .train import dataset_record, evaluate, fit as train_fit, parse_augment, set_seed

D_MODELS = (8, 12, 16, 24, 32, 48, 64)
D_STATES = (4, 8, 16, 32, 64)
N_LAYERS = (1, 2, 3, 4)
LR = 0.01
UPDATES = 400
MIN_EPOCHS, MAX_EPOCHS = 30, 100
AUGMENT = "scale,jitter"
PRUNE_FACTOR = 2.0          # the pruned path trains a shape of about this many times the winner's cycles
PRUNE_FINETUNE_EPOCHS = 5


@dataclass
class FitOptions:
    dataset: str = None
    data: str = None
    root: str = None
    board: str = "cortex-m7"
    max_latency_us: float = None       # per step (one decision), from the analytic cycles and the board's clock
    max_flash: int = None              # bytes, the model's code + weights (cost_report); None: the board's
    max_ram: int = None                # bytes, the model's state and buffers; None: the board's
    max_macs_per_step: int = None
    workers: int = 1
    folds: int = 3
    seeds: int = 1                     # seeds per fold, and final models (lowest training loss kept)
    epochs: int = None                 # None: about UPDATES gradient updates
    candidates: int = 4                # shapes cross-validated in step 2
    d_models: tuple = D_MODELS
    d_states: tuple = D_STATES
    n_layers: tuple = N_LAYERS
    augment: bool = True               # step 3: try augmentation on the winner
    prune: bool = True                 # step 3: try twice the cycles taken down by guided pruning
    measure: bool = True               # export the chosen model and run it in QEMU
    seed: int = 0


@dataclass
class FitResult:
    out: str
    model: str                 # DIR/model.pt
    dataset: str
    chosen: dict               # the deployed point (fit.json's entry), with its final figures
    points: list               # every cross-validated point
    firmware: dict = None      # the QEMU run of the deployed model (measure=True)
    seconds: float = 0.0
    budget: dict = field(default_factory=dict)

    def to_dict(self):
        return asdict(self)


def budget_of(o, board):
    """The limits every deployed model must meet: flash/RAM bytes, MACs and cycles per step."""
    for name, v in (("max-latency-us", o.max_latency_us), ("max-flash", o.max_flash), ("max-ram", o.max_ram),
                    ("max-macs-per-step", o.max_macs_per_step)):
        if v is not None and not v > 0:
            raise UserError(f"--{name} must be positive, not {v}")
    return {"flash_bytes": min(board.flash_bytes, o.max_flash or board.flash_bytes),
            "ram_bytes": min(board.ram_bytes, o.max_ram or board.ram_bytes),
            "macs_per_step": o.max_macs_per_step,
            "cycles_per_step": None if o.max_latency_us is None else o.max_latency_us * 1e-6 * board.clock_hz}


def costs(model, oracle, board):
    r = cost_report(model)
    cycles = oracle.cycles(model, None)
    return {"flash_bytes": r["flash_bytes"], "ram_bytes": r["ram_bytes"], "macs_per_step": r["macs_per_step"],
            "cycles_per_step": round(cycles, 1), "latency_us": round(cycles / board.clock_hz * 1e6, 2),
            "params": sum(p.numel() for p in model.parameters())}


def over_budget(c, budget):
    """The budget items cost figures c exceed (empty: it fits)."""
    return [k for k in ("flash_bytes", "ram_bytes", "macs_per_step", "cycles_per_step")
            if budget.get(k) is not None and c[k] > budget[k]]


def make_model(data, shape, seed=0):
    set_seed(seed)
    return SequenceClassifier(data["n_channels"], data["n_classes"], d_model=shape["d_model"], d_state=shape["d_state"],
                              n_layers=shape["n_layers"])


def price_grid(o, data, budget, oracle, board):
    grid = []
    with torch.no_grad():
        for H in sorted(set(o.d_models)):
            for N in sorted(set(o.d_states)):
                for n in sorted(set(o.n_layers)):
                    shape = {"d_model": H, "d_state": N, "n_layers": n}
                    c = costs(make_model(data, shape), oracle, board)
                    grid.append({**shape, **c, "over": over_budget(c, budget)})
    return grid


def largest(feasible, k):
    """The feasible shapes no other feasible shape dominates in (H, N, layers); at most k, spread over the width."""
    keys = ("d_model", "d_state", "n_layers")
    top = [p for p in feasible if not any(q is not p and all(q[a] >= p[a] for a in keys) for q in feasible)]
    top.sort(key=lambda p: tuple(p[a] for a in keys))
    if len(top) > k:
        top = [top[i] for i in sorted({round(x) for x in np.linspace(0, len(top) - 1, k)})]
    return top


def check_options(o):
    if (o.dataset is None) == (o.data is None):
        raise UserError("pass exactly one of --dataset NAME or --data FILE.npz")
    for name, v, low in (("workers", o.workers, 1), ("folds", o.folds, 2), ("seeds", o.seeds, 1),
                         ("candidates", o.candidates, 1), ("epochs", o.epochs or 1, 1)):
        if v < low:
            raise UserError(f"--{name} must be at least {low}, not {v}")
    for name, vals, low in (("d-model", o.d_models, 1), ("d-state", o.d_states, 2), ("n-layers", o.n_layers, 1)):
        if not vals or any(v < low for v in vals):
            raise UserError(f"the {name} search values must be at least {low}: {list(vals)}")
    if any(v % 2 for v in o.d_states):
        raise UserError(f"d_state values must be even (conjugate mode pairs): {list(o.d_states)}")


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


def recipe_for(n, epochs=None):
    batch = max(8, min(32, n // 10))
    if epochs is None:
        epochs = int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(UPDATES / math.ceil(n / batch)))))
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


def train_one(data, shape, x, y, recipe, augment, seed):
    model = make_model(data, shape, seed)
    train_fit(model, _Split(x, y), recipe["epochs"], recipe["lr"], recipe["batch_size"], seed=seed, progress=False,
              augment_with=parse_augment(augment))
    return model


def cv_task(task, shared):
    """One (point, fold, seed): train on the fold's training part, score its held-out part."""
    start = time.time()
    tr, va = shared["folds"][task["fold"]]
    x_tr, x_va = _normalized(shared["x"][tr], shared["x"][va])
    y_tr, y_va = shared["y"][tr], shared["y"][va]
    recipe = recipe_for(len(tr), shared["epochs"])
    shape = {k: task[k] for k in ("d_model", "d_state", "n_layers")}
    model = train_one(shared, shape, x_tr, y_tr, recipe, task["augment"], task["seed"])
    out = {}
    if task.get("prune_to"):
        model, out = _pruned(model, shared, x_tr, y_tr, x_va, y_va, recipe, task)
    res = evaluate(model, x_va, y_va)
    return {**out, "accuracy": res["accuracy"], "loss": res["loss"], "seconds": time.time() - start}


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
    model, _ = load_model(pick["path"])
    board = get_board(board)
    return pick["path"], {"pruned_fraction": pick["pruned_fraction"],
                          "pruned_costs": costs(model, AnalyticOracle(board), board)}


def cross_validate(points, shared, o, executor, log):
    """Every point's CV accuracy (mean over folds x seeds), filled into the point; a line per point."""
    tasks = [{**{k: p[k] for k in ("d_model", "d_state", "n_layers")}, "augment": p["augment"],
              "prune_to": p.get("prune_to"), "fold": f, "seed": o.seed + s, "point": i}
             for i, p in enumerate(points) for f in range(o.folds) for s in range(o.seeds)]
    per = [[] for _ in points]
    started = time.time()

    def arrived(j, r):
        i = tasks[j]["point"]
        per[i].append(r)
        if len(per[i]) == o.folds * o.seeds:
            p, accs = points[i], [x["accuracy"] for x in per[i]]
            if p.get("prune_to"):   # the pruned models' cost, not the trained one's
                p = {**p, **{k: round(np.mean([x["pruned_costs"][k] for x in per[i]])) for k in per[i][0]["pruned_costs"]}}
            log(f"fit: {p['label']}: CV accuracy {np.mean(accs):.4f} (+-{np.std(accs):.3f}, {o.folds} folds x {o.seeds} "
                f"seed{'s' * (o.seeds > 1)}), {p['macs_per_step']:,} MACs/step, {p['cycles_per_step']:,.0f} cycles/step, "
                f"{p['flash_bytes']:,} B flash [{time.time() - started:.0f} s]")

    executor.map(cv_task, tasks, on_result=arrived)
    for p, rs in zip(points, per):
        accs = [r["accuracy"] for r in rs]
        p.update(cv_accuracy=float(np.mean(accs)), cv_std=float(np.std(accs)), cv_accuracies=accs,
                 cv_loss=float(np.mean([r["loss"] for r in rs])), cv_seconds=round(sum(r["seconds"] for r in rs), 1))
        if p.get("prune_to"):   # priced as the pruned models are (mean over the folds), checked against the budget
            p.update({k: round(float(np.mean([r["pruned_costs"][k] for r in rs])), 1) for k in rs[0]["pruned_costs"]})
            p["cv_pruned_fractions"] = [r["pruned_fraction"] for r in rs]
    return points


def point(shape, costs_, kind, augment="", **extra):
    label = f"{kind} H={shape['d_model']} N={shape['d_state']} x{shape['n_layers']}" + (f" +{augment}" if augment else "")
    return {**{k: shape[k] for k in ("d_model", "d_state", "n_layers")}, "kind": kind, "augment": augment, "label": label,
            **{k: costs_[k] for k in ("flash_bytes", "ram_bytes", "macs_per_step", "cycles_per_step", "latency_us",
                                      "params")}, **extra}


def best_of(points):
    """Within the budget, the highest mean CV accuracy; ties: fewer cycles, then the earlier point."""
    return max(range(len(points)), key=lambda i: (not points[i].get("over"), round(points[i]["cv_accuracy"], 9),
                                                  -points[i]["cycles_per_step"], -i))


def twice(winner, grid, board_budget):
    """A shape of about PRUNE_FACTOR x the winner's cycles, no narrower, shallower or smaller-state,
    within the board (it is pruned to the budget later); None if the grid has none."""
    keys = ("d_model", "d_state", "n_layers")
    ups = [g for g in grid if all(g[k] >= winner[k] for k in keys) and g["cycles_per_step"] > 1.3 * winner["cycles_per_step"]
           and not over_budget(g, board_budget)]
    return min(ups, key=lambda g: (abs(math.log(g["cycles_per_step"] / (PRUNE_FACTOR * winner["cycles_per_step"]))),
                                   g["n_layers"] != winner["n_layers"])) if ups else None


class MissedBudget(Exception):
    """The final pruned model is over the budget (its folds' models were not)."""


def fit(*, out, options=None, force=False, quiet=False) -> FitResult:
    """Search, cross-validate, train and (measure=True) measure; writes OUT/model.pt, fit.json, fit.png."""
    o = options or FitOptions()
    started = time.time()
    log = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    check_options(o)
    board = get_board(o.board)
    budget = budget_of(o, board)
    check_output_path(out, force)
    if o.measure and not board.qemu_machine:
        raise UserError(f"board {board.name} has no QEMU machine to measure the chosen model on; pass --no-measure")
    oracle = AnalyticOracle(board)
    loaded = load_dataset(name=o.dataset, data=o.data, root=o.root, val_fraction=0.0, seed=o.seed)
    if loaded.vocab_size:
        raise UserError("fit searches models for real-valued sequences; token data (e.g. listops) is not supported")
    meta = {"n_channels": loaded.n_channels, "n_classes": loaded.n_classes, "seq_len": loaded.seq_len}
    grid = price_grid(o, meta, budget, oracle, board)
    feasible = [g for g in grid if not g["over"]]
    if not feasible:
        s = min(grid, key=lambda g: g["cycles_per_step"])
        raise UserError(f"no model in the search space meets the budget: the smallest (H={s['d_model']} N={s['d_state']} "
                        f"x{s['n_layers']}) needs {s['flash_bytes']:,} B flash, {s['ram_bytes']:,} B RAM, "
                        f"{s['macs_per_step']:,} MACs and {s['latency_us']:.1f} us per step on {board.name}; "
                        "raise the --max-* limits")
    # the training set only: the workers never see the test set
    shared = {**meta, "x": loaded.x_train, "y": loaded.y_train, "folds": cv_splits(loaded.y_train, o.folds, o.seed),
              "epochs": o.epochs, "board": board.name}
    recipe = recipe_for(len(loaded.y_train), o.epochs)
    log(f"fit: {len(grid)} shapes priced, {len(feasible)} within the budget; cross-validating the largest "
        f"({o.folds} folds x {o.seeds} seed{'s' * (o.seeds > 1)}, {recipe['epochs']} epochs, batches of "
        f"{recipe['batch_size']}, {o.workers} worker{'s' * (o.workers > 1)})")
    with atomic_output_dir(out, force=force) as tmp, Executor(shared, workers=o.workers) as executor:
        points = cross_validate([point(p, p, "direct") for p in largest(feasible, o.candidates)], shared, o, executor, log)
        winner = points[best_of(points)]
        more = []
        if o.augment:
            more.append(point(winner, winner, "direct", AUGMENT))
        big = twice(winner, grid, {**budget_of(FitOptions(), board)}) if o.prune else None
        if big is not None:
            more.append(point(big, big, "pruned", prune_to=winner["cycles_per_step"], trained=dict(
                {k: big[k] for k in ("macs_per_step", "cycles_per_step", "flash_bytes")})))
        if more:
            points += cross_validate(more, shared, o, executor, log)
        for p in points:
            p["over"] = over_budget(p, budget)
        chosen = points[best_of(points)]
        log(f"fit: chosen {chosen['label']} (CV accuracy {chosen['cv_accuracy']:.4f}); training it on all "
            f"{len(loaded.y_train)} training sequences")
        try:
            model, final = final_model(chosen, loaded, meta, recipe, o, board, tmp, budget, oracle, log)
        except MissedBudget as e:   # the pruned path's final model missed it: deploy the best direct point
            chosen["final_missed_budget"] = str(e)
            log(f"fit: the pruned model misses the budget ({e}); deploying the best direct point instead")
            chosen = points[best_of([p if p["kind"] == "direct" else {**p, "over": ["pruned"]} for p in points])]
            model, final = final_model(chosen, loaded, meta, recipe, o, board, tmp, budget, oracle, log)
        test = evaluate(model, loaded.x_test, loaded.y_test)
        final.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
        chosen["chosen"] = True
        hp = {**{k: chosen[k] for k in ("d_model", "d_state", "n_layers")}, **recipe, "augment": chosen["augment"],
              "val_fraction": 0.0}
        metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "val_accuracy": None,
                   "cv_accuracy": chosen["cv_accuracy"], "hyperparameters": hp, "seed": final["seed"],
                   "fit": {"kind": chosen["kind"], "board": board.name, "budget": budget}}
        extra = {"pruning": final.pop("pruning")} if final.get("pruning") else {}
        save_checkpoint(tmp / "model.pt", model, loaded.normalization, dataset_record(loaded, o.data, o.root), metrics,
                        **extra)
        firmware = measure(tmp, out, o, board, budget, log) if o.measure else None
        mark_front(points)
        doc = {"format": "s4op-micro/fit-1", "dataset": loaded.name, "board": board.name, "budget": budget,
               "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(o).items()},
               "recipe": {**recipe, "folds": o.folds, "seeds": o.seeds, "updates": UPDATES,
                          "selection": "highest mean CV accuracy, ties: fewer cycles",
                          "final": "all training data, last epoch; of the seeds the lowest training loss",
                          "ensemble": "not folded (independent SSMs cannot be weight-averaged; no distillation)"},
               "train_sequences": int(len(loaded.y_train)), "test_sequences": int(len(loaded.y_test)),
               "points": points, "chosen": {**chosen, **final}, "firmware": firmware,
               "grid": [{k: g[k] for k in ("d_model", "d_state", "n_layers", "flash_bytes", "ram_bytes", "macs_per_step",
                                           "cycles_per_step", "latency_us", "over")} for g in grid],
               "cycles_source": oracle.source + " (prune.latency.AnalyticOracle)",
               "seconds": round(time.time() - started, 1)}
        (tmp / "fit.json").write_text(json.dumps(doc, indent=1))
        plot(points, {**chosen, **final}, firmware, budget, board, tmp / "fit.png")
    log(f"fit: deployed {chosen['label']}: CV {chosen['cv_accuracy']:.4f}, test (float) {test['accuracy']:.4f}"
        + (f", firmware {firmware['accuracy']:.4f}, {firmware['instructions_per_step']:,.0f} instructions/step measured"
           if firmware else "") + f" [{time.time() - started:.0f} s]")
    return FitResult(out=str(out), model=str(Path(out) / "model.pt"), dataset=loaded.name, chosen={**chosen, **final},
                     points=points, firmware=firmware, seconds=round(time.time() - started, 1), budget=budget)


def final_model(chosen, loaded, meta, recipe, o, board, tmp, budget, oracle, log):
    """The chosen recipe trained on all training data: of `seeds` seeds the lowest training loss; pruned
    to the budget if the pruned path won. (model, figures)."""
    x, y = loaded.x_train, loaded.y_train
    runs = []
    for s in range(o.seeds):
        with one_thread():
            m = train_one(meta, chosen, x, y, recipe, chosen["augment"], o.seed + s)
        runs.append((evaluate(m, x, y)["loss"], s, m))
    loss, s, model = min(runs, key=lambda r: (r[0], r[1]))
    final = {"seed": o.seed + s, "train_loss": loss, "train_losses": [r[0] for r in runs], "pruning": None}
    if chosen["kind"] == "pruned":
        work = tmp / "work"
        work.mkdir()
        hp = {**recipe, "augment": chosen["augment"], "val_fraction": 0.0}
        save_checkpoint(work / "big.pt", model, loaded.normalization, dataset_record(loaded, o.data, o.root),
                        {"hyperparameters": hp, "seed": o.seed + s})
        src = {"dataset": o.dataset} if o.dataset else {"data": o.data}
        path, info = prune_to(work / "big.pt", work / "prune", chosen["prune_to"], board.name, o.seed + s,
                              {**src, "root": o.root} if o.root else src)
        model, ckpt = load_model(path)
        final.update(info, pruning=ckpt.get("pruning"))
        shutil.rmtree(work)
    c = costs(model, oracle, board)
    final.update({f"final_{k}": v for k, v in c.items()})
    over = over_budget(c, budget)
    if over:  # only a pruned model can land here (a direct one was priced before training)
        raise MissedBudget(", ".join(f"{k} {c[k]:,.0f} > {budget[k]:,.0f}" for k in over))
    return model, final


def measure(tmp, out, o, board, budget, log):
    """Export OUT/model.pt (C) and run it on the whole test set in QEMU: firmware figures."""
    log(f"fit: exporting the chosen model and running it in QEMU ({board.name})")
    src = {"dataset": o.dataset, "data": o.data, "root": o.root}
    export = deploy.export(str(tmp / "model.pt"), board=board.name, out=tmp / "export", formats="c", **src)
    res = deploy.run(tmp / "export", target="qemu", board=board.name, **src)
    fw = {k: res.get(k) for k in ("accuracy", "float_accuracy", "reference_accuracy", "mismatches", "n_sequences",
                                  "steps", "instructions_per_step", "cycles_per_step", "cycles_source")}
    fw.update(flash_bytes=export.report["flash_bytes"], ram_bytes=export.report["ram_bytes"],
              macs_per_step=export.report["macs_per_step"], export=str(Path(out) / "export"))
    if budget["cycles_per_step"] is not None and fw["cycles_per_step"] and fw["cycles_per_step"] > budget["cycles_per_step"]:
        log(f"fit: warning: the measured {fw['cycles_per_step']:,.0f} cycles/step exceed the latency budget's "
            f"{budget['cycles_per_step']:,.0f} (the analytic estimate met it)")
        fw["latency_budget_met"] = False
    elif budget["cycles_per_step"] is not None:
        fw["latency_budget_met"] = True
    return fw


def mark_front(points):
    """pareto: no other point is at least as accurate (CV) and at most as costly in cycles and flash, better in one."""
    for p in points:
        p["pareto"] = not any(
            q is not p and q["cv_accuracy"] >= p["cv_accuracy"] and q["cycles_per_step"] <= p["cycles_per_step"]
            and q["flash_bytes"] <= p["flash_bytes"] and (q["cv_accuracy"], -q["cycles_per_step"], -q["flash_bytes"])
            != (p["cv_accuracy"], -p["cycles_per_step"], -p["flash_bytes"]) for q in points)


def plot(points, chosen, firmware, budget, board, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label, limit in ((axes[0], "cycles_per_step", "cycles per step (analytic)", budget["cycles_per_step"]),
                                  (axes[1], "flash_bytes", "flash bytes (model, estimated)", budget["flash_bytes"])):
        for kind, marker in (("direct", "o"), ("pruned", "v")):
            ps = [p for p in points if p["kind"] == kind]
            ax.errorbar([p[key] for p in ps], [p["cv_accuracy"] for p in ps], yerr=[p["cv_std"] for p in ps],
                        linestyle="none", marker=marker, capsize=2, label=f"{kind} (CV mean +- std)", alpha=0.8)
            for p in ps:
                ax.annotate(p["label"].split(" ", 1)[1], (p[key], p["cv_accuracy"]), fontsize=6,
                            textcoords="offset points", xytext=(4, -9))
        front = sorted((p for p in points if p["pareto"]), key=lambda p: p[key])
        ax.step([p[key] for p in front], [p["cv_accuracy"] for p in front], where="post", color="gray", lw=0.8,
                label="Pareto front")
        ax.plot([chosen[key]], [chosen["cv_accuracy"]], marker="*", markersize=16, color="red", linestyle="none",
                label=f"deployed (test {chosen['test_accuracy']:.3f}" + (f", firmware {firmware['accuracy']:.3f})"
                                                                         if firmware else ")"))
        if limit is not None and limit < 10 * max(p[key] for p in points):
            ax.axvline(limit, color="red", lw=0.8, ls="--", label="budget")
        ax.set_xlabel(label)
        ax.set_ylabel("cross-validation accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"fit on {board.name}: searched points", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
