"""`s4op-micro fit`: the search respects the budget, cross-validates on the training set only, gives
the same results on 1 and 2 workers, records every searched point, and writes a checkpoint that
exports and runs bit-exactly on the host. Tiny search spaces and 1-2 epochs."""

import json

import numpy as np
import torch

from s4op_micro import deploy, fit as fit_module
from s4op_micro.fit import FitOptions, cv_splits, fit
from s4op_micro.models.checkpoint import load_model
from s4op_micro.quant.cost import cost_report

from conftest import assert_clean_error, run_cli_json

TINY = dict(dataset="gunpoint", d_models=(4, 8), d_states=(4,), n_layers=(1, 2), candidates=2, folds=2, epochs=1,
            augment=False, prune=False, measure=False)


def test_fit_end_to_end_writes_a_checkpoint_that_runs_bit_exactly(tmp_path, capsys):
    out = tmp_path / "fit"
    code, res, err = run_cli_json(capsys, "fit", "--dataset", "gunpoint", "--out", out, "--d-models", "4,8",
                                  "--d-states", "4", "--n-layers", "1,2", "--candidates", "2", "--folds", "2",
                                  "--epochs", "1", "--max-macs-per-step", "400", "--json")
    assert code == 0, err
    doc = json.loads((out / "fit.json").read_text())
    # every searched point is recorded: the candidates, the winner with augmentation, the pruned path
    kinds = [(p["kind"], p["augment"]) for p in doc["points"]]
    assert kinds == [("direct", ""), ("direct", ""), ("direct", "scale,jitter"), ("pruned", "")]
    assert all(len(p["cv_accuracies"]) == 2 for p in doc["points"])
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
    model, _ = load_model(res.model)
    report = cost_report(model)
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
    cv = [[p["cv_accuracies"] for p in r.points] for r in (a, b, c)]
    assert cv[0] == cv[1] == cv[2]
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
