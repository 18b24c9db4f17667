"""`fit(...)`: choose the model's width (d_model), state size (d_state), depth (n_layers) and recurrence
coefficient width (8 or 16 bits) for the data and the board's budget, train it with a small-data recipe,
and write DIR/model.pt (a normal checkpoint), DIR/fit.json (every searched point) and DIR/fit.png.

  1. Price every shape of the grid (D_MODELS x D_STATES x N_LAYERS) from its shapes alone, at each
     coefficient width (space.py): flash, RAM, MACs and analytic cycles per step. The budget is the
     board's flash and RAM and whatever --max-* adds; a shape over it at every width is not trained.
  2. Cross-validate the largest feasible shapes (no feasible shape is larger in all three
     dimensions; at most `candidates`, spread over the width): K stratified folds of the training
     set only (the test set is not even handed to the workers), `seeds` seeds per fold, the
     normalization refitted on each fold's training part (cv.py). Each fold model is scored on its
     held-out fold as float and by the integer reference at 8 and 16 bits; a point takes the width
     with the better int8 CV accuracy within the budget, and points rank by it (ties: fewer cycles,
     less flash). Tasks run on prune.parallel.Executor (one torch thread each, seeded per task: the
     results do not depend on the worker count).
  3. On the winner cross-validate alternatives in the same way: the same shape trained LONG x longer,
     with augmentation (scale,jitter), and both; and a shape of about twice its cycles trained and then
     taken down to the winner's cycles by guided pruning (prune.api.prune, strategy guided, target_cycles).
  4. Less luck: the `finalists` best points are cross-validated `repeats` times in all, each repeat
     with a fresh stratified split and fresh seeds; the best finalist by int8 CV accuracy wins. Four by
     default: step 3's variants are scored on the very folds that picked the winner, where its score is
     biased up, so a variant as good as the winner often ranks below it on that one repetition. When
     the best finalist is another shape than step 3's winner, its own variants are cross-validated on
     every repetition too and compete with it (gunpoint seed 2: H=8 N=4 x4 won the repetitions over
     H=24 N=8 x1, whose variants step 3 had tried; its own augmented variant had never been trained).
  5. Distillation (distill=True; off by default): the winner's recipe again, each fold model now also
     learning from the mean logits of an ensemble of cv.TEACHERS models of that recipe trained on the
     same fold (the first is the winner's own fold model): an ensemble of seeds folded into one model of
     the same cost. The student starts from the winner's fold model's weights and batches (a paired
     comparison) and is deployed only if its int8 CV accuracy is strictly higher. It costs about
     TEACHERS + 1 times the winner's cross-validation and did not pay where it was measured (at the peer
     benchmark's budgets, int8 CV: gunpoint seeds 0-2 0.967 -> 0.967, 0.994 -> 0.987, 0.961 -> 0.941;
     arrowhead seed 0 0.815 -> 0.769).
  6. QAT (qat=True): the winner's fold models, the same ones (same splits and seeds), each get a
     quantization-aware fine-tune at the winner's width (cv.qat_tune: QAT_EPOCHS through the
     fake-quantized integer model) and are scored again; the QAT point is deployed only if its int8
     CV accuracy is strictly higher (a paired comparison: it helps where rounding flips decisions).
  7. Train the chosen recipe on all training data (`seeds` seeds, each keeping its last epoch of a
     cosine schedule, a distilled point each with its own teachers; the seed with the lowest training
     loss is kept), prune it if the pruned path won, QAT fine-tune it if the QAT point won, check it
     against the budget at its width, score it on the test set once (float and int8 at both widths:
     reported, chooses nothing) and, with measure=True, export it at its width (compiled: a model whose
     real flash misses the budget gives way to the next point) and run it in QEMU (deploy): firmware
     accuracy and measured cycles per step.

Recipe: AdamW (train.fit), lr 0.01, cosine over all batches, batches of n/10 sequences (8 to 32),
about UPDATES updates (epochs clamped to [MIN_EPOCHS, MAX_EPOCHS]), the last epoch kept. `seeds`
buys a lower-variance choice; an ensemble is folded into one model only by step 5's distillation.
"""

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import deploy
from ..core.boards import get_board
from ..core.errors import UserError
from ..core.outdir import atomic_output_dir, check_output_path
from ..data import load_dataset
from ..models.checkpoint import load_model, save_checkpoint
from ..prune.parallel import Executor, one_thread
from ..train import dataset_record, evaluate, load_data_for
from ..prune.latency import ANALYTIC
from .cv import (DISTILL_WEIGHT, LONG, QAT_EPOCHS, QAT_LR, TEACHERS, UPDATES, cross_validate, cv_splits, int8_scores,
                 prune_to, qat_tune, recipe_for, train_one)
from .plot import mark_front, plot
from .space import COEFF_BITS, budget_of, costs, largest, over_budget, price_grid

D_MODELS = (8, 12, 16, 24, 32, 48, 64)
D_STATES = (4, 8, 16, 32, 64)
N_LAYERS = (1, 2, 3, 4)
AUGMENT = "scale,jitter"
PRUNE_FACTOR = 2.0          # the pruned path trains a shape of about this many times the winner's cycles


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
    repeats: int = 3                   # K-fold repetitions (fresh splits and seeds) for the finalists
    finalists: int = 4                 # best points after one repetition that get the others (see search)
    epochs: int = None                 # None: about UPDATES gradient updates
    candidates: int = 6                # shapes cross-validated in step 2
    d_models: tuple = D_MODELS
    d_states: tuple = D_STATES
    n_layers: tuple = N_LAYERS
    augment: bool = True               # step 3: try augmentation on the winner
    long: bool = True                  # step 3: try LONG x the training updates on the winner
    prune: bool = True                 # step 3: try twice the cycles taken down by guided pruning
    distill: bool = False              # step 5: try folding an ensemble of the winner's recipe into it
    qat: bool = True                   # step 6: try a QAT fine-tune of the winner
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


def check_options(o):
    if (o.dataset is None) == (o.data is None):
        raise UserError("pass exactly one of --dataset NAME or --data FILE.npz")
    for name, v, low in (("workers", o.workers, 1), ("folds", o.folds, 2), ("seeds", o.seeds, 1),
                         ("repeats", o.repeats, 1), ("finalists", o.finalists, 1),
                         ("candidates", o.candidates, 1), ("epochs", o.epochs or 1, 1)):
        if v < low:
            raise UserError(f"--{name} must be at least {low}, not {v}")
    for name, vals, low in (("d-model", o.d_models, 1), ("d-state", o.d_states, 2), ("n-layers", o.n_layers, 1)):
        if not vals or any(v < low for v in vals):
            raise UserError(f"the {name} search values must be at least {low}: {list(vals)}")
    if any(v % 2 for v in o.d_states):
        raise UserError(f"d_state values must be even (conjugate mode pairs): {list(o.d_states)}")


def point(shape, costs_, kind, augment="", **extra):
    label = f"{kind} H={shape['d_model']} N={shape['d_state']} x{shape['n_layers']}" + (f" +{augment}" if augment else "") \
        + (" +long" if extra.get("long") else "") \
        + (f" +distill{extra['teachers']}" if extra.get("teachers") else "") \
        + (f" +qat{extra['qat']}" if extra.get("qat") else "")
    return {**{k: shape[k] for k in ("d_model", "d_state", "n_layers")}, "kind": kind, "augment": augment, "label": label,
            **{k: costs_[k] for k in ("flash_bytes", "ram_bytes", "macs_per_step", "cycles_per_step", "latency_us",
                                      "params")}, **extra}


def ranked(points):
    """Best first: within the budget, the highest int8 CV accuracy (at the point's width); ties: fewer
    cycles, less flash, then the earlier point (a stable sort)."""
    return sorted(points, key=lambda p: (not p.get("over"), round(p["int8_cv_accuracy"], 9), -p["cycles_per_step"],
                                         -p["flash_bytes"]), reverse=True)


def shape_of(p):
    return tuple(p[k] for k in ("d_model", "d_state", "n_layers"))


def variants(p, o):
    """Step 3's alternatives to a plain direct point: its shape trained LONG x longer, with augmentation, and both."""
    return [point(p, p, "direct", augment, long=long) for long in ((False, True) if o.long else (False,))
            for augment in (("", AUGMENT) if o.augment else ("",)) if long or augment]


def twice(winner, grid, board_budget):
    """A shape of about PRUNE_FACTOR x the winner's cycles, no narrower, shallower or smaller-state,
    within the board (it is pruned to the budget later); None if the grid has none."""
    keys = ("d_model", "d_state", "n_layers")
    ups = [g for g in grid if all(g[k] >= winner[k] for k in keys) and g["cycles_per_step"] > 1.3 * winner["cycles_per_step"]
           and not over_budget(g, board_budget)]
    return min(ups, key=lambda g: (abs(math.log(g["cycles_per_step"] / (PRUNE_FACTOR * winner["cycles_per_step"]))),
                                   g["n_layers"] != winner["n_layers"])) if ups else None


class MissedBudget(Exception):
    """The final model is over the budget: a pruned one (its folds' models were not), or once compiled."""


def search(o, shared, grid, feasible, budget, board, executor, log):
    """Steps 2-4: every cross-validated point, and the one to deploy."""
    points = cross_validate([point(p, p, "direct") for p in largest(feasible, o.candidates)], shared, o, executor,
                            budget, log)
    winner = ranked(points)[0]
    more = variants(winner, o)
    big = twice(winner, grid, budget_of(FitOptions(), board)) if o.prune else None
    if big is not None:
        more.append(point(big, big, "pruned", prune_to=winner["cycles_per_step"], trained=dict(
            {k: big[k] for k in ("macs_per_step", "cycles_per_step", "flash_bytes")})))
    if more:
        points += cross_validate(more, shared, o, executor, budget, log)
    finalists = ranked(points)[:o.finalists]
    if o.repeats > 1:
        log(f"fit: finalists {', '.join(p['label'] for p in finalists)}: {o.repeats - 1} more repetition"
            f"{'s' * (o.repeats > 2)} of the {o.folds} folds")
        cross_validate(finalists, shared, o, executor, budget, log, repeats=range(1, o.repeats))
    for p in finalists:
        p["finalist"] = True
    best = ranked(finalists)[0]
    late = variants(best, o) if best["kind"] == "direct" and shape_of(best) != shape_of(winner) else []
    if late:   # the repetitions crowned a shape step 3 did not vary: its variants, on every repetition
        log(f"fit: {best['label']} won the repetitions: its variants on all {o.repeats} of them")
        points += cross_validate(late, shared, o, executor, budget, log, repeats=range(o.repeats))
        for p in late:
            p["finalist"] = True
        best = ranked([best, *late])[0]
    # the variants below retrain the winner's fold models (bit-identical: same split, seed and one thread)
    # rather than ship trained models between workers; they are compared with it fold model by fold model
    recipe = {k: best[k] for k in ("prune_to", "trained", "long") if k in best}
    if o.distill:
        distilled = point(best, best, best["kind"], best["augment"], teachers=TEACHERS, **recipe)
        log(f"fit: {best['label']}: its {o.repeats * o.folds * o.seeds} fold models distilled from ensembles of "
            f"{TEACHERS} of their recipe")
        points += cross_validate([distilled], shared, o, executor, budget, log, repeats=range(o.repeats))
        best = ranked([best, distilled])[0]      # ties: no distillation
        recipe = {k: best[k] for k in ("prune_to", "trained", "long", "teachers") if k in best}
    if not o.qat:
        return points, best
    qat = point(best, best, best["kind"], best["augment"], qat=best["coeff_bits"], **recipe)
    log(f"fit: {best['label']}: a QAT fine-tune of its {o.repeats * o.folds * o.seeds} fold models at "
        f"{best['coeff_bits']}-bit coefficients")
    points += cross_validate([qat], shared, o, executor, budget, log, repeats=range(o.repeats))
    return points, ranked([best, qat])[0]      # ties: no QAT


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
    loaded = load_dataset(name=o.dataset, data=o.data, root=o.root, val_fraction=0.0, seed=o.seed)
    if loaded.vocab_size:
        raise UserError("fit searches models for real-valued sequences; token data (e.g. listops) is not supported")
    meta = {"n_channels": loaded.n_channels, "n_classes": loaded.n_classes, "seq_len": loaded.seq_len}
    grid = price_grid(o, meta, budget, board)
    feasible = [g for g in grid if not g["over"]]
    if not feasible:
        s = min(grid, key=lambda g: g["cycles_per_step"])
        raise UserError(f"no model in the search space meets the budget: the smallest (H={s['d_model']} N={s['d_state']} "
                        f"x{s['n_layers']}) needs {s['flash_bytes']:,} B flash, {s['ram_bytes']:,} B RAM, "
                        f"{s['macs_per_step']:,} MACs and {s['latency_us']:.1f} us per step on {board.name}; "
                        "raise the --max-* limits")
    # the training set only: the workers never see the test set
    shared = {**meta, "x": loaded.x_train, "y": loaded.y_train, "epochs": o.epochs, "board": board.name,
              "folds": [cv_splits(loaded.y_train, o.folds, o.seed + r) for r in range(o.repeats)]}
    recipe = recipe_for(len(loaded.y_train), o.epochs)
    log(f"fit: {len(grid)} shapes priced, {len(feasible)} within the budget; cross-validating the largest "
        f"({o.folds} folds x {o.seeds} seed{'s' * (o.seeds > 1)}, {o.repeats} repetitions for the {o.finalists} "
        f"finalists, {recipe['epochs']} epochs, batches of {recipe['batch_size']}, int8 at {'/'.join(map(str, COEFF_BITS))}"
        f"-bit coefficients, {o.workers} worker{'s' * (o.workers > 1)})")
    with atomic_output_dir(out, force=force) as tmp, Executor(shared, workers=o.workers) as executor:
        points, chosen = search(o, shared, grid, feasible, budget, board, executor, log)
        for candidate in deploy_order(chosen, points):
            try:
                model, test, final, firmware = deploy_point(candidate, loaded, meta, o, board, tmp, out, budget,
                                                            log)
                break
            except MissedBudget as e:   # a pruned model (estimate) or a compiled one missed it: the next point
                candidate["final_missed_budget"] = str(e)
                log(f"fit: {candidate['label']} misses the budget ({e}); deploying the next point instead")
        else:
            raise UserError("no searched point meets the budget once trained and compiled; raise the --max-* limits")
        chosen = candidate
        chosen["chosen"] = True
        mark_front(points)
        doc = {"format": "s4op-micro/fit-2", "dataset": loaded.name, "board": board.name, "budget": budget,
               "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(o).items()},
               "recipe": {**recipe, "folds": o.folds, "seeds": o.seeds, "repeats": o.repeats, "finalists": o.finalists,
                          "updates": UPDATES, "long": LONG, "coeff_bits": list(COEFF_BITS),
                          "selection": "highest mean int8 CV accuracy (integer reference on the held-out folds) of "
                                       "(shape, coefficient width) within the budget, ties: fewer cycles, less flash; "
                                       "the finalists cross-validated `repeats` times",
                          "qat": {"epochs": QAT_EPOCHS, "lr": QAT_LR, "tried": o.qat,
                                  "rule": "the winner's fold models QAT fine-tuned at its width; deployed with QAT "
                                          "only if that int8 CV accuracy is strictly higher"},
                          "final": "all training data, last epoch (a distilled point: with its own teachers); of "
                                   "the seeds the lowest training loss",
                          "distill": {"teachers": TEACHERS, "weight": DISTILL_WEIGHT, "tried": o.distill,
                                      "rule": "the winner's fold models trained again with distillation from the "
                                              "mean logits of that many models of their recipe; deployed distilled "
                                              "only if that int8 CV accuracy is strictly higher"}},
               "train_sequences": int(len(loaded.y_train)), "test_sequences": int(len(loaded.y_test)),
               "points": points, "chosen": {**chosen, **final}, "firmware": firmware,
               "grid": [{k: g[k] for k in ("d_model", "d_state", "n_layers", "coeff_bits", "flash_bytes", "ram_bytes",
                                           "macs_per_step", "cycles_per_step", "latency_us", "over")} for g in grid],
               "cycles_source": f"{ANALYTIC} (prune.latency.AnalyticOracle)",
               "seconds": round(time.time() - started, 1)}
        (tmp / "fit.json").write_text(json.dumps(doc, indent=1))
        plot(points, {**chosen, **final}, firmware, budget, board, tmp / "fit.png")
    log(f"fit: deployed {chosen['label']} at {chosen['coeff_bits']}-bit: int8 CV {chosen['int8_cv_accuracy']:.4f}, "
        f"test (float) {test['accuracy']:.4f}" + (f", firmware {firmware['accuracy']:.4f}, "
                                                 f"{firmware['instructions_per_step']:,.0f} instructions/step measured"
                                                 if firmware else "") + f" [{time.time() - started:.0f} s]")
    return FitResult(out=str(out), model=str(Path(out) / "model.pt"), dataset=loaded.name, chosen={**chosen, **final},
                     points=points, firmware=firmware, seconds=round(time.time() - started, 1), budget=budget)


def deploy_order(chosen, points):
    """The chosen point, then (should it miss the budget once trained or compiled) the direct points
    within the budget, best first."""
    return [chosen] + [p for p in ranked(points) if p is not chosen and p["kind"] == "direct" and not p.get("over")
                       and not p.get("qat")]


def deploy_point(chosen, loaded, meta, o, board, tmp, out, budget, log):
    """Train the chosen point on all training data, save OUT/model.pt, score it on the test set (reported
    only) and, with measure, export and run it: (model, test figures, final figures, firmware figures)."""
    log(f"fit: chosen {chosen['label']} at {chosen['coeff_bits']}-bit coefficients (int8 CV accuracy "
        f"{chosen['int8_cv_accuracy']:.4f}); training it on all {len(loaded.y_train)} training sequences")
    model, final = final_model(chosen, loaded, meta, o, board, tmp, budget, log)
    test = evaluate(model, loaded.x_test, loaded.y_test)
    final.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
    hp = {**{k: chosen[k] for k in ("d_model", "d_state", "n_layers")}, **final["recipe"],
          "augment": chosen["augment"], "val_fraction": 0.0}
    metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "val_accuracy": None,
               "cv_accuracy": chosen["cv_accuracy"], "int8_cv_accuracy": chosen["int8_cv_accuracy"],
               "hyperparameters": hp, "seed": final["seed"],
               "fit": {"kind": chosen["kind"], "board": board.name, "budget": budget,
                       "coeff_bits": chosen["coeff_bits"], "qat": chosen.get("qat"),
                       "teachers": chosen.get("teachers")}}
    extra = {"pruning": final.pop("pruning")} if final.get("pruning") else {}
    save_checkpoint(tmp / "model.pt", model, loaded.normalization, dataset_record(loaded, o.data, o.root), metrics,
                    **extra)
    # both widths on the test set, calibrated as export calibrates (reported: chooses nothing)
    calib = load_data_for(load_model(tmp / "model.pt")[1], dataset=o.dataset, data=o.data, root=o.root).x_train
    final["test_int8"] = [{"coeff_bits": w["coeff_bits"], "accuracy": w["accuracy"]}
                          for w in int8_scores(model, calib, loaded.x_test, loaded.y_test, board)]
    firmware = measure(tmp, out, o, board, budget, chosen["coeff_bits"], log) if o.measure else None
    return model, test, final, firmware


def final_model(chosen, loaded, meta, o, board, tmp, budget, log):
    """The chosen recipe trained on all training data: of `seeds` seeds the lowest training loss (a
    distilled point: each from its own teachers); pruned to the budget if the pruned path won, QAT
    fine-tuned if the QAT point won. (model, figures)."""
    x, y = loaded.x_train, loaded.y_train
    recipe = recipe_for(len(y), o.epochs, chosen.get("long"))
    runs = []
    for s in range(o.seeds):
        with one_thread():
            m = train_one(meta, chosen, x, y, recipe, chosen["augment"], o.seed + s, chosen.get("teachers") or 0)
        runs.append((evaluate(m, x, y)["loss"], s, m))
    loss, s, model = min(runs, key=lambda r: (r[0], r[1]))
    final = {"seed": o.seed + s, "train_loss": loss, "train_losses": [r[0] for r in runs], "pruning": None,
             "recipe": recipe}
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
    if chosen.get("qat"):
        with one_thread():
            qat_tune(model, x, y, recipe, chosen["qat"], o.seed + s)
    c = costs(model, board, chosen["coeff_bits"])
    final.update({f"final_{k}": v for k, v in c.items()})
    over = over_budget(c, budget)
    if over:  # only a pruned model can land here (a direct one was priced before training)
        raise MissedBudget(", ".join(f"{k} {c[k]:,.0f} > {budget[k]:,.0f}" for k in over))
    return model, final


def measure(tmp, out, o, board, budget, coeff_bits, log):
    """Export OUT/model.pt (C, at coeff_bits) and run it on the whole test set in QEMU: firmware figures."""
    log(f"fit: exporting the chosen model ({coeff_bits}-bit coefficients) and running it in QEMU ({board.name})")
    src = {"dataset": o.dataset, "data": o.data, "root": o.root}
    export = deploy.export(str(tmp / "model.pt"), board=board.name, out=tmp / "export", formats="c",
                           coeff_bits=coeff_bits, force=True, **src)
    compiled = (export.report["sizes_measured"] or {}).get("flash_bytes")
    if compiled is not None and compiled > budget["flash_bytes"]:
        raise MissedBudget(f"compiled flash {compiled:,} B > {budget['flash_bytes']:,} B (estimated "
                           f"{export.report['estimate']['flash_bytes']:,} B)")
    res = deploy.run(tmp / "export", target="qemu", board=board.name, **src)
    fw = {k: res.get(k) for k in ("accuracy", "float_accuracy", "reference_accuracy", "mismatches", "n_sequences",
                                  "steps", "instructions_per_step", "cycles_per_step", "cycles_source")}
    fw.update(flash_bytes=export.report["flash_bytes"], ram_bytes=export.report["ram_bytes"],
              macs_per_step=export.report["macs_per_step"], coeff_bits=coeff_bits, export=str(Path(out) / "export"))
    if budget["cycles_per_step"] is not None and fw["cycles_per_step"] and fw["cycles_per_step"] > budget["cycles_per_step"]:
        log(f"fit: warning: the measured {fw['cycles_per_step']:,.0f} cycles/step exceed the latency budget's "
            f"{budget['cycles_per_step']:,.0f} (the analytic estimate met it)")
        fw["latency_budget_met"] = False
    elif budget["cycles_per_step"] is not None:
        fw["latency_budget_met"] = True
    return fw
