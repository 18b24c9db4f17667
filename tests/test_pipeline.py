"""The main job end to end on a shipped dataset (reduced budget), and its resumability."""

import json

from s4op_micro.cli import main

ARGS = ["pipeline", "--dataset", "gunpoint", "--epochs", "5", "--rates", "0.5", "--guided-rates", "0.5", "--seeds", "1",
        "--finetune-epochs", "1", "--limit", "6", "--max-drop", "100"]


def test_pipeline_end_to_end_and_resumable(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*ARGS, "--out", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = result["rows"]
    base, pruned = rows
    assert result["chosen"]["within_budget"] and result["chosen"]["strategy"] == "guided"
    for row in rows:
        assert row["mismatches"] == 0 and row["tflm max LSB"] == 0  # firmware and TFLM == integer reference
        assert row["cycles_source"].startswith("emulator instruction count")
    assert sum(pruned["operators"]) < sum(base["operators"])
    assert pruned["instructions/step"] < base["instructions/step"]  # pruned operators are really gone
    assert (run / "results.md").exists() and (run / "layers.png").exists() and (run / "prune" / "pareto.png").exists()
    # results.md says that --max-drop could not bind exactly when the selection set scored every model alike
    assert ("the budget could not bind" in (run / "results.md").read_text()) == result["chosen"]["selection_blind"]
    stages = json.loads((run / "stages.json").read_text())["results"]

    # A second run redoes nothing: every stage keeps its recorded result.
    assert main([*ARGS, "--out", str(run), "--json"]) == 0
    err = capsys.readouterr().err
    assert err.count("done before") == len(stages)
    assert json.loads((run / "stages.json").read_text())["results"] == stages

    # --redo emulate redoes emulate and what follows, nothing before it.
    assert main([*ARGS, "--out", str(run), "--redo", "emulate", "--json"]) == 0
    err = capsys.readouterr().err
    assert "[1/7 train] done before" in err and "[6/7 emulate] running" in err and "[7/7 tflm] running" in err
    assert err.count("done before") == 5

    # A changed input redoes its stage and every later one, and says which input changed.
    assert main([*ARGS[:-2], "--max-drop", "50", "--out", str(run), "--json"]) == 0
    err = capsys.readouterr().err
    assert err.count("done before") == 3 and "[4/7 export] inputs changed (max_drop: 100.0 -> 50.0)" in err
    assert "[5/7 build] inputs changed (an earlier stage was redone)" in err


def test_exports_use_the_coefficient_width_fit_chose(tmp_path):
    """`pipeline --fit`: fit records the width its int8 CV chose; pruning and both exports use it."""
    from s4op_micro.models import SequenceClassifier
    from s4op_micro.models.checkpoint import save_checkpoint
    from s4op_micro.pipeline import coeff_bits_of

    model = SequenceClassifier(d_input=1, n_classes=2, d_model=4, d_state=4, n_layers=1)
    norm = {"mean": [0.0], "std": [1.0]}
    save_checkpoint(tmp_path / "fit.pt", model, norm, {"name": "gunpoint"}, {"fit": {"coeff_bits": 16}})
    save_checkpoint(tmp_path / "train.pt", model, norm, {"name": "gunpoint"}, {"test_accuracy": 0.5})
    assert (coeff_bits_of(tmp_path / "fit.pt"), coeff_bits_of(tmp_path / "train.pt")) == (16, 8)


def test_guided_milestones_start_past_an_already_pruned_model(tmp_path, monkeypatch):
    """An imported S4oP model may be pruned already: the guided stage keeps the milestones above it."""
    from s4op_micro import pipeline as pl
    from s4op_micro.models import SequenceClassifier
    from s4op_micro.models.checkpoint import save_checkpoint

    model = SequenceClassifier(d_input=1, n_classes=2, d_model=4, d_state=4, n_layers=1)
    save_checkpoint(tmp_path / "m.pt", model, {"mean": [0.0], "std": [1.0]}, {"name": "gunpoint"}, {"test_accuracy": 0.5})
    assert pl.milestones_after("0.1,0.3,0.5,0.7", tmp_path / "m.pt") == "0.1,0.3,0.5,0.7"
    monkeypatch.setattr(pl, "pruned_fraction", lambda model, lineage: 0.469)
    assert pl.milestones_after("0.1,0.3,0.5,0.7", tmp_path / "m.pt") == "0.5,0.7"
    monkeypatch.setattr(pl, "pruned_fraction", lambda model, lineage: 0.8)
    assert pl.milestones_after("0.1,0.3,0.5,0.7", tmp_path / "m.pt") == "0.9000"
