"""`s4op-micro fit`: the search respects the budget, cross-validates on the training set only (repeated
with fresh splits for the finalists), gives the same results on 1 and 2 workers, records every searched
point, deploys the coefficient width whose int8 CV accuracy is best, and distillation or QAT only where
it raises the int8 CV accuracy of the same fold models, gives way to the next point when a model misses
the budget once compiled, and writes a checkpoint that exports and runs bit-exactly on the host. Tiny
search spaces and 1-2 epochs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from s4op_micro import deploy, fit as fit_module
from s4op_micro.fit import FitOptions, cv_splits, fit
from s4op_micro.fit.cv import summarize
from s4op_micro.models.checkpoint import load_model
from s4op_micro.quant import reference
from s4op_micro.quant.cost import cost_report

from conftest import assert_clean_error, run_cli_json

TINY = dict(dataset="gunpoint", d_models=(4, 8), d_states=(4,), n_layers=(1, 2), candidates=2, folds=2, epochs=1,
            augment=False, long=False, prune=False, qat=False, measure=False)


def test_fit_end_to_end_writes_a_checkpoint_that_runs_bit_exactly(tmp_path, capsys):
    out = tmp_path / "fit"
    code, res, err = run_cli_json(capsys, "fit", "--dataset", "gunpoint", "--out", out, "--d-models", "4,8",
                                  "--d-states", "4", "--n-layers", "1,2", "--candidates", "2", "--folds", "2",
                                  "--epochs", "1", "--max-macs-per-step", "400", "--distill", "--json")
    assert code == 0, err
    doc = json.loads((out / "fit.json").read_text())
    # every searched point is recorded: the candidates, the winner with augmentation, trained longer and
    # both, the pruned path, the best finalist distilled from an ensemble, and the better of those two QAT
    # fine-tuned
    kinds = [(p["kind"], p["augment"], bool(p.get("long")), bool(p.get("qat"))) for p in doc["points"]]
    assert kinds[:6] == [("direct", "", False, False), ("direct", "", False, False), ("direct", "scale,jitter", False, False),
                         ("direct", "", True, False), ("direct", "scale,jitter", True, False), ("pruned", "", False, False)]
    assert doc["points"][6]["teachers"] == 3 and not kinds[6][3] and kinds[7][3] and len(kinds) == 8
    long = doc["points"][3]
    assert long["label"].endswith(" +long") and long["cv_runs"][0]["seed"] == doc["points"][2]["cv_runs"][0]["seed"]
    # the 4 finalists, the distilled and the QAT point: 3 repetitions of the 2 folds; the others: one
    assert [len(p["cv_accuracies"]) for p in doc["points"]] == [
        6 if p.get("finalist") or p.get("qat") or p.get("teachers") else 2 for p in doc["points"]]
    assert sum(bool(p.get("finalist")) for p in doc["points"]) == 4
    # both coefficient widths scored and priced on every point (a QAT point: its own); the deployed one is the point's
    assert all([w["coeff_bits"] for w in p["widths"]] == ([p["qat"]] if p.get("qat") else [8, 16]) for p in doc["points"])
    assert fw_bits_of(doc) == doc["chosen"]["coeff_bits"]
    assert sum(bool(p.get("chosen")) for p in doc["points"]) == 1
    assert len(doc["grid"]) == 4 and all(g["macs_per_step"] <= 400 for g in doc["grid"] if not g["over"])
    assert "fit: direct H=8 N=4 x1: CV accuracy" in err           # a progress line per candidate
    assert (out / "fit.png").stat().st_size > 0
    fw = res["firmware"]
    assert fw["mismatches"] == 0 and fw["n_sequences"] == 150 and fw["cycles_source"].startswith("emulator")
    assert res["chosen"]["final_macs_per_step"] <= 400
    # a normal checkpoint: other commands take it; its export runs bit-exactly on the host
    model, ckpt = load_model(out / "model.pt")
    assert ckpt["metrics"]["hyperparameters"]["d_model"] == model.config["d_model"]
    host = deploy.run(out / "export", target="host", limit=20)
    assert host["mismatches"] == 0 and host["n_sequences"] == 20


def test_fit_respects_the_budget_and_refuses_an_impossible_one(tmp_path, capsys):
    budget = dict(max_macs_per_step=300, max_flash=9000, max_ram=400)
    res = fit(out=tmp_path / "a", options=FitOptions(**TINY, **budget), quiet=True)
    doc = json.loads((tmp_path / "a" / "fit.json").read_text())
    assert any(g["over"] for g in doc["grid"])                     # the budget binds
    for p in res.points:
        assert p["macs_per_step"] <= 300 and p["flash_bytes"] <= 9000 and p["ram_bytes"] <= 400
    model, ckpt = load_model(res.model)
    report = cost_report(model, ckpt["metrics"]["fit"]["coeff_bits"])   # priced at the deployed width
    assert report["macs_per_step"] <= 300 and report["flash_bytes"] <= 9000 and report["ram_bytes"] <= 400
    out = tmp_path / "none"
    assert_clean_error(capsys, out, "fit", "--dataset", "gunpoint", "--out", out, "--max-macs-per-step", "10",
                       match="no model in the search space meets the budget")
    assert_clean_error(capsys, out, "fit", "--dataset", "gunpoint", "--out", out, "--folds", "51",
                       match="--folds 51 is more than the 50 training sequences")
    assert_clean_error(capsys, out, "fit", "--dataset", "gunpoint", "--out", out, "--d-states", "5",
                       match="d_state values must be even")


def test_cv_uses_the_training_set_only_and_not_the_worker_count(tmp_path, monkeypatch):
    real = fit_module.load_dataset
    a = fit(out=tmp_path / "a", options=FitOptions(**TINY, workers=1), quiet=True)
    b = fit(out=tmp_path / "b", options=FitOptions(**TINY, workers=2), quiet=True)

    def scrambled(**kw):   # the same training set, a test set of noise with shuffled labels
        d = real(**kw)
        rng = np.random.default_rng(1)
        d.x_test = rng.normal(size=d.x_test.shape).astype(np.float32)
        d.y_test = rng.permutation(d.y_test)
        return d

    monkeypatch.setattr(fit_module, "load_dataset", scrambled)
    c = fit(out=tmp_path / "c", options=FitOptions(**TINY, workers=1), quiet=True)
    cv = [[[{k: v for k, v in run.items() if k != "seconds"} for run in p["cv_runs"]] for p in r.points]
          for r in (a, b, c)]
    assert cv[0] == cv[1] == cv[2]                 # float and int8 scores at both widths, every repetition
    assert [p["coeff_bits"] for p in a.points] == [p["coeff_bits"] for p in b.points]
    sd = [load_model(r.model)[0].state_dict() for r in (a, b, c)]
    assert all(torch.equal(sd[0][k], sd[i][k]) for i in (1, 2) for k in sd[0])
    # the folds partition the training set: each sequence is held out exactly once
    y = real(name="gunpoint", val_fraction=0.0).y_train
    folds = cv_splits(y, 3, 0)
    held = np.concatenate([va for _, va in folds])
    assert sorted(held.tolist()) == list(range(len(y)))
    assert all(not set(tr) & set(va) for tr, va in folds)


def test_pipeline_fit_options_are_checked(tmp_path, capsys):
    out = tmp_path / "run"
    assert_clean_error(capsys, out, "pipeline", "--dataset", "gunpoint", "--out", out, "--max-macs-per-step", "900",
                       match="add --fit")
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    assert_clean_error(capsys, out, "pipeline", "--dataset", "gunpoint", "--out", out, "--fit", "--model", model,
                       match="drop --model or --fit")


def fw_bits_of(doc):
    """The coefficient width the firmware was exported with (its export report)."""
    return json.loads((Path(doc["firmware"]["export"]) / "report.json").read_text())["coeff_bits"]


def test_finalists_are_cross_validated_on_fresh_splits_and_seeds(tmp_path):
    # two candidates (H=4 N=8 and H=8 N=4: neither is larger in all dimensions) and the winner augmented
    opts = {**TINY, "d_states": (4, 8), "n_layers": (1,), "augment": True, "max_macs_per_step": 300}
    res = fit(out=tmp_path / "a", options=FitOptions(**opts, repeats=3, finalists=2), quiet=True)
    finalists = [p for p in res.points if p.get("finalist")]
    assert len(finalists) == 2 and len(res.points) == 3
    for p in res.points:
        runs = p["cv_runs"]
        repeats = 3 if p.get("finalist") else 1
        assert sorted((r["repeat"], r["fold"]) for r in runs) == [(r, f) for r in range(repeats) for f in range(2)]
        assert len({r["seed"] for r in runs}) == repeats         # a fresh seed per repetition
        assert p["cv_accuracy"] == np.mean([r["accuracy"] for r in runs]) and p["cv_evaluations"] == 2 * repeats
    # the deployed point is the best finalist by int8 CV accuracy
    best = max(finalists, key=lambda p: p["int8_cv_accuracy"])
    assert res.chosen["label"] in [p["label"] for p in finalists]
    assert res.chosen["int8_cv_accuracy"] == best["int8_cv_accuracy"]
    # every repetition holds each training sequence out once, and the repetitions' splits differ
    y = fit_module.load_dataset(name="gunpoint", val_fraction=0.0).y_train
    splits = [cv_splits(y, 2, r) for r in range(3)]
    assert all(sorted(np.concatenate([va for _, va in s]).tolist()) == list(range(len(y))) for s in splits)
    assert not np.array_equal(splits[0][0][1], splits[1][0][1]) and not np.array_equal(splits[1][0][1], splits[2][0][1])


def _runs(acc8, acc16, flash8=5000, flash16=4000):
    return [{"accuracy": 0.9, "loss": 0.3, "seconds": 1.0, "repeat": 0, "fold": f, "seed": 0, "pruned_fraction": None,
             "widths": [{"coeff_bits": 8, "accuracy": acc8, "flash_bytes": flash8, "ram_bytes": 500, "macs_per_step": 900,
                         "cycles_per_step": 3000.0, "latency_us": 14.0, "params": 700},
                        {"coeff_bits": 16, "accuracy": acc16, "flash_bytes": flash16, "ram_bytes": 500,
                         "macs_per_step": 900, "cycles_per_step": 3000.0, "latency_us": 14.0, "params": 700}]}
            for f in range(3)]


def test_a_point_takes_the_width_with_the_best_int8_cv_accuracy_within_the_budget():
    budget = {"flash_bytes": 6000, "ram_bytes": 10_000, "macs_per_step": None, "cycles_per_step": None}
    pick = lambda runs, b=budget: summarize({"cv_runs": runs}, b)   # noqa: E731
    assert pick(_runs(0.70, 0.90))["coeff_bits"] == 16
    assert pick(_runs(0.90, 0.70))["coeff_bits"] == 8
    assert pick(_runs(0.80, 0.80))["coeff_bits"] == 16                     # a tie: less flash
    assert pick(_runs(0.80, 0.80, flash8=3000))["coeff_bits"] == 8
    p = pick(_runs(0.70, 0.90, flash16=6500))                              # 16-bit over the flash budget
    assert p["coeff_bits"] == 8 and p["int8_cv_accuracy"] == pytest.approx(0.70) and p["over"] == []
    assert [w["over"] for w in p["widths"]] == [[], ["flash_bytes"]]
    assert p["flash_bytes"] == 5000 and p["cv_accuracy"] == 0.9


def test_fit_deploys_16_bit_coefficients_where_8_bits_lose(tmp_path, monkeypatch):
    """8 bits made to lose (every 8-bit model's decoder negated, so it ranks the classes the wrong way round:
    on 2 classes its int8 CV accuracy is about 1 - the 16-bit one): fit deploys 16-bit coefficients, and its
    firmware is built with them."""
    real = reference.quantize_model  # as int8_accuracy, which the CV scores with, calls it

    def lossy(model, calib_x, coeff_bits=8):
        q = real(model, calib_x, coeff_bits=coeff_bits)
        if coeff_bits == 8:
            q.dec.w = -np.maximum(q.dec.w, -127)
            q.dec.bias_eff = -q.dec.bias_eff
        return q

    monkeypatch.setattr(reference, "quantize_model", lossy)
    opts = {**TINY, "d_models": (12,), "d_states": (16,), "n_layers": (2,), "epochs": 30, "measure": True, "repeats": 1}
    res = fit(out=tmp_path / "a", options=FitOptions(**opts), quiet=True)
    doc = json.loads((tmp_path / "a" / "fit.json").read_text())
    (p,) = doc["points"]
    acc8, acc16 = (w["int8_cv_accuracy"] for w in p["widths"])
    assert acc16 > 0.6 and acc16 > acc8 + 0.2, p["widths"]
    assert res.chosen["coeff_bits"] == 16 and fw_bits_of(doc) == 16
    assert load_model(res.model)[1]["metrics"]["fit"]["coeff_bits"] == 16
    assert res.firmware["mismatches"] == 0
    # the test-set int8 figure of the deployed width is the firmware's (calibrated as export calibrates)
    assert res.chosen["test_int8"][1]["accuracy"] == res.firmware["accuracy"]


def _qat_fit(tmp_path, **extra):
    opts = {**TINY, "d_models": (4,), "n_layers": (1,), "repeats": 2, "qat": True, "epochs": 20, **extra}
    res = fit(out=tmp_path / "a", options=FitOptions(**opts), quiet=True)
    return res, json.loads((tmp_path / "a" / "fit.json").read_text())


def test_qat_is_tried_on_the_winners_own_fold_models_and_kept_only_if_its_int8_cv_is_higher(tmp_path, monkeypatch):
    """A real QAT fine-tune of the winner's fold models (the same splits and seeds: a paired comparison),
    then one made harmful (the decoder negated after QAT): the harmful one is recorded but not deployed."""
    from s4op_micro.fit import cv

    res, doc = _qat_fit(tmp_path)
    winner, qat = doc["points"]
    assert qat["qat"] == winner["coeff_bits"] and qat["label"] == winner["label"] + f" +qat{winner['coeff_bits']}"
    assert [(r["repeat"], r["fold"], r["seed"]) for r in qat["cv_runs"]] == \
        [(r["repeat"], r["fold"], r["seed"]) for r in winner["cv_runs"]]
    assert [r["accuracy"] for r in qat["cv_runs"]] != [r["accuracy"] for r in winner["cv_runs"]] or \
        [r["loss"] for r in qat["cv_runs"]] != [r["loss"] for r in winner["cv_runs"]]       # QAT changed the models
    with_qat = qat["int8_cv_accuracy"] > winner["int8_cv_accuracy"]
    assert bool(res.chosen.get("qat")) == with_qat and doc["recipe"]["qat"]["tried"]
    assert load_model(res.model)[1]["metrics"]["fit"]["qat"] == (qat["qat"] if with_qat else None)

    real = cv.qat_tune

    def harmful(model, *a, **kw):
        real(model, *a, **kw)
        with torch.no_grad():
            model.decoder.weight.neg_()
            model.decoder.bias.neg_()
        return model

    monkeypatch.setattr(cv, "qat_tune", harmful)
    res, doc = _qat_fit(tmp_path / "harmful")
    winner, qat = doc["points"]
    assert qat["int8_cv_accuracy"] < winner["int8_cv_accuracy"]
    assert not res.chosen.get("qat") and res.chosen["label"] == winner["label"]


def lossy_unless(mark):
    """reference.quantize_model with the decoder negated (int8 loses) for every model without the attribute `mark`."""
    real = reference.quantize_model

    def lossy(model, calib_x, coeff_bits=8):
        q = real(model, calib_x, coeff_bits=coeff_bits)
        if not getattr(model, mark, False):
            q.dec.w = -np.maximum(q.dec.w, -127)
            q.dec.bias_eff = -q.dec.bias_eff
        return q
    return lossy


def test_a_qat_point_that_wins_the_cv_is_deployed_with_a_qat_fine_tune(tmp_path, monkeypatch):
    """int8 made to lose for every model that was not QAT fine-tuned (its decoder negated by the
    reference's quantizer): the QAT point wins the CV, and the final model is QAT fine-tuned too."""
    from s4op_micro import fit as fit_pkg
    from s4op_micro.fit import cv

    tuned = []

    def marking(model, x, y, recipe, coeff_bits, seed):
        model.qat_tuned = True
        tuned.append(len(y))
        return model

    monkeypatch.setattr(cv, "qat_tune", marking)
    monkeypatch.setattr(fit_pkg, "qat_tune", marking)
    monkeypatch.setattr(reference, "quantize_model", lossy_unless("qat_tuned"))
    res, doc = _qat_fit(tmp_path)
    winner, qat = doc["points"]
    assert qat["int8_cv_accuracy"] > winner["int8_cv_accuracy"]
    assert res.chosen["qat"] == winner["coeff_bits"] and res.chosen["label"] == qat["label"]
    n_train = len(fit_module.load_dataset(name="gunpoint", val_fraction=0.0).y_train)
    assert tuned[-1] == n_train and len(tuned) == 2 * 2 + 1     # 2 repeats x 2 folds, then the final model


def test_a_distilled_student_differs_from_its_undistilled_twin_only_by_its_teachers(monkeypatch):
    """The paired comparison of step 5: the first teacher is the undistilled model of the student's own
    seed, and with the soft targets weighted 0 the student is that very model, bit for bit (training the
    teachers first does not move its weights or batches); weighted as fit weighs them, it is not."""
    from s4op_micro.fit import cv

    d = fit_module.load_dataset(name="gunpoint", val_fraction=0.0)
    meta = {"n_channels": d.n_channels, "n_classes": d.n_classes, "seq_len": d.seq_len}
    shape, recipe = {"d_model": 4, "d_state": 4, "n_layers": 1}, {"lr": 0.01, "batch_size": 8, "epochs": 2}
    x, y = d.x_train[:24], d.y_train[:24]
    plain = cv.train_one(meta, shape, x, y, recipe, "", 5).state_dict()
    assert cv.teacher_seeds(5, 3)[0] == 5 and len(set(cv.teacher_seeds(5, 3))) == 3
    distilled = cv.train_one(meta, shape, x, y, recipe, "", 5, teachers=3).state_dict()
    assert any(not torch.equal(plain[k], distilled[k]) for k in plain)
    monkeypatch.setattr(cv, "DISTILL_WEIGHT", 0.0)
    twin = cv.train_one(meta, shape, x, y, recipe, "", 5, teachers=3).state_dict()
    assert all(torch.equal(plain[k], twin[k]) for k in plain)
    # the teacher is the ensemble's mean logits
    members = [cv.train_one(meta, shape, x, y, recipe, "", s) for s in (1, 2)]
    xb = torch.as_tensor(x[:4])
    assert torch.allclose(cv.MeanLogits(members).eval()(xb), (members[0](xb) + members[1](xb)) / 2)


def _distill_fit(tmp_path, **extra):
    opts = {**TINY, "d_models": (4,), "n_layers": (1,), "repeats": 2, "distill": True, "epochs": 20, **extra}
    res = fit(out=tmp_path / "a", options=FitOptions(**opts), quiet=True)
    return res, json.loads((tmp_path / "a" / "fit.json").read_text())


def test_distillation_is_deployed_only_where_it_raises_the_int8_cv_of_the_same_fold_models(tmp_path, monkeypatch):
    """A real distillation of the winner's fold models (same splits and seeds), then one whose teachers
    teach the wrong classes (their logits negated, the labels' weight 0), which is recorded but not
    deployed; then one made to win (int8 made to lose for every model trained without teachers): it is
    deployed, and the final model is trained on all the training data with its own teachers."""
    from s4op_micro import fit as fit_pkg
    from s4op_micro.fit import cv

    res, doc = _distill_fit(tmp_path)
    winner, distilled = doc["points"]
    assert distilled["teachers"] == 3 and distilled["label"] == winner["label"] + " +distill3"
    assert [(r["repeat"], r["fold"], r["seed"]) for r in distilled["cv_runs"]] == \
        [(r["repeat"], r["fold"], r["seed"]) for r in winner["cv_runs"]]
    with_distill = distilled["int8_cv_accuracy"] > winner["int8_cv_accuracy"]
    assert load_model(res.model)[1]["metrics"]["fit"]["teachers"] == (3 if with_distill else None)
    assert doc["recipe"]["distill"]["tried"] and doc["recipe"]["distill"]["teachers"] == 3

    monkeypatch.setattr(cv, "DISTILL_WEIGHT", 1.0)
    monkeypatch.setattr(cv.MeanLogits, "forward", lambda self, x: -torch.stack([m(x) for m in self.members]).mean(0))
    res, doc = _distill_fit(tmp_path / "wrong")
    winner, distilled = doc["points"]
    assert winner["int8_cv_accuracy"] > 0.5 and distilled["int8_cv_accuracy"] < winner["int8_cv_accuracy"]
    assert not res.chosen.get("teachers") and res.chosen["label"] == winner["label"]
    monkeypatch.undo()

    taught = []
    real_fit = cv.train_fit

    def marking(model, data, *a, teacher=None, **kw):
        model.taught = teacher is not None
        if teacher is not None:
            taught.append(len(data.y_train))
        return real_fit(model, data, *a, teacher=teacher, **kw)

    monkeypatch.setattr(cv, "train_fit", marking)
    monkeypatch.setattr(reference, "quantize_model", lossy_unless("taught"))
    res, doc = _distill_fit(tmp_path / "wins")
    winner, distilled = doc["points"]
    assert distilled["int8_cv_accuracy"] > winner["int8_cv_accuracy"]
    assert res.chosen["teachers"] == 3 and res.chosen["label"] == distilled["label"]
    assert load_model(res.model)[1]["metrics"]["fit"]["teachers"] == 3
    n_train = len(fit_module.load_dataset(name="gunpoint", val_fraction=0.0).y_train)
    assert taught[-1] == n_train and len(taught) == 2 * 2 + 1     # 2 repeats x 2 folds, then the final model
    assert fit_pkg.train_one is cv.train_one


def test_a_model_that_misses_the_flash_budget_once_compiled_gives_way_to_the_next_point(tmp_path, monkeypatch):
    """The compiled size is the last word: the deployed model's export is checked against the flash
    budget (here made smaller than the compiled model of the first point) and the next point is deployed."""
    compiled = []
    real_export = fit_module.deploy.export

    def export(*a, **kw):
        r = real_export(*a, **kw)
        compiled.append(r.report["sizes_measured"]["flash_bytes"])
        if len(compiled) == 1:          # the first point's real size, over a budget 1 byte smaller
            r.report["sizes_measured"]["flash_bytes"] = 10 ** 9
        return r

    monkeypatch.setattr(fit_module.deploy, "export", export)
    opts = {**TINY, "d_states": (4, 8), "n_layers": (1,), "max_macs_per_step": 300, "measure": True, "repeats": 1}
    res = fit(out=tmp_path / "a", options=FitOptions(**opts), quiet=True)
    doc = json.loads((tmp_path / "a" / "fit.json").read_text())
    first = [p for p in doc["points"] if p.get("final_missed_budget")]
    assert len(first) == 1 and "compiled flash 1,000,000,000 B" in first[0]["final_missed_budget"]
    assert res.chosen["label"] != first[0]["label"] and len(compiled) == 2
    assert res.firmware["mismatches"] == 0 and fw_bits_of(doc) == res.chosen["coeff_bits"]


def test_a_long_point_trains_about_four_times_the_updates():
    from s4op_micro.fit.cv import LONG, MIN_EPOCHS, recipe_for

    assert recipe_for(33) == {"lr": 0.01, "batch_size": 8, "epochs": 80}               # a gunpoint fold: 400 updates
    assert recipe_for(33, long=True)["epochs"] == LONG * 80
    assert recipe_for(958)["epochs"] == MIN_EPOCHS and recipe_for(958, long=True)["epochs"] == 53   # 1,600 updates
    assert recipe_for(33, epochs=3, long=True)["epochs"] == 3 * LONG


def test_the_variants_of_a_shape_that_wins_the_repetitions_are_tried_too(monkeypatch):
    """Step 3 varies the first repetition's winner (A); when the repetitions crown another shape (B), B's
    own variants (augmented, long, both) are cross-validated on every repetition and may win. Scores
    are scripted (a fake cross_validate); the search's logic is real."""
    calls = []

    def scripted(scores):
        def cross_validate(points, shared, o, executor, budget, log, repeats=(0,)):
            calls.append(([p["label"] for p in points], list(repeats)))
            for p in points:
                p.update(int8_cv_accuracy=scores[p["label"]][0 if list(repeats) == [0] else -1], over=[], coeff_bits=8)
            return points
        return cross_validate

    def costs(cycles):
        return {"flash_bytes": 5000, "ram_bytes": 500, "macs_per_step": 900, "cycles_per_step": cycles,
                "latency_us": 1.0, "params": 100}
    feasible = [{"d_model": 8, "d_state": 4, "n_layers": 1, **costs(3000.0)},
                {"d_model": 4, "d_state": 8, "n_layers": 1, **costs(2900.0)}]
    o = FitOptions(dataset="gunpoint", augment=True, long=True, prune=False, qat=False, repeats=3, finalists=2)
    a, b = "direct H=8 N=4 x1", "direct H=4 N=8 x1"
    scores = {a: (0.90, 0.85), b: (0.87, 0.95), a + " +scale,jitter": (0.86,), a + " +long": (0.84,),
              a + " +scale,jitter +long": (0.83,), b + " +scale,jitter": (0.97,), b + " +long": (0.93,),
              b + " +scale,jitter +long": (0.96,)}
    monkeypatch.setattr(fit_module, "cross_validate", scripted(scores))
    points, best = fit_module.search(o, {}, feasible, feasible, {}, None, None, lambda msg: None)
    assert calls[0][1] == [0] and calls[1] == ([a + " +scale,jitter", a + " +long", a + " +scale,jitter +long"], [0])
    assert calls[2] == ([a, b], [1, 2])                                    # A and B are the finalists; B wins them
    assert calls[3] == ([b + " +scale,jitter", b + " +long", b + " +scale,jitter +long"], [0, 1, 2])
    assert best["label"] == b + " +scale,jitter" and best["finalist"] and len(points) == 8

    # the repetitions keep step 3's winner: no late variants
    calls.clear()
    monkeypatch.setattr(fit_module, "cross_validate", scripted({**scores, b: (0.87, 0.84)}))
    points, best = fit_module.search(o, {}, feasible, feasible, {}, None, None, lambda msg: None)
    assert len(calls) == 3 and len(points) == 5 and best["label"] == a
