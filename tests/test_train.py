"""Training CLI, checkpoints, evaluation and their error paths (small budgets: 2 CPU cores)."""

import json

import pytest
import torch

from conftest import run_cli
from s4op_micro.models.checkpoint import load_model
from s4op_micro.cli import main
from s4op_micro.train import augment, parse_augment




@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "digits"
    code = main(["train", "--dataset", "digits", "--out", str(out), "--epochs", "15", "--d-model", "16",
                 "--d-state", "8", "--n-layers", "1", "--max-train", "600", "--batch-size", "16", "--quiet", "--json"])
    assert code == 0
    return out / "model.pt"


def test_train_writes_checkpoint_with_all_keys(digits_model):
    ckpt = torch.load(digits_model, weights_only=True)
    for key in ("config", "state_dict", "active_operators", "normalization", "dataset", "metrics", "format"):
        assert key in ckpt
    assert ckpt["active_operators"] == [list(range(16))]
    assert len(ckpt["normalization"]["mean"]) == 1
    # This 1-layer H=16 model on 480 training digits reaches ~0.78 (chance: 0.1); the full defaults
    # reach >= 0.95 (benchmarks/). 0.6 leaves room for platform noise and still catches a broken trainer.
    assert ckpt["metrics"]["test_accuracy"] > 0.6


def test_eval_and_info_json(digits_model, capsys):
    code, out, _ = run_cli(capsys, "eval", str(digits_model), "--json")
    assert code == 0
    res = json.loads(out)
    ckpt = torch.load(digits_model, weights_only=True)
    assert abs(res["accuracy"] - ckpt["metrics"]["test_accuracy"]) < 1e-9  # same model, same test set
    assert sum(t for _, t in res["per_class"]) == res["n"]
    code, out, _ = run_cli(capsys, "info", str(digits_model), "--json")
    info = json.loads(out)
    assert info["operators_kept"] == [16] and info["params"] > 0


def test_training_is_deterministic(tmp_path):
    args = ["--dataset", "gunpoint", "--epochs", "2", "--d-model", "8", "--d-state", "4", "--n-layers", "1", "--quiet"]
    assert main(["train", *args, "--out", str(tmp_path / "a")]) == 0
    assert main(["train", *args, "--out", str(tmp_path / "b")]) == 0
    a, _ = load_model(tmp_path / "a" / "model.pt")
    b, _ = load_model(tmp_path / "b" / "model.pt")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_augmentation_perturbs_reproducibly_and_only_when_asked():
    x = torch.randn(4, 50, 2)
    a = augment(x, ("scale", "jitter"), torch.Generator().manual_seed(1))
    b = augment(x, ("scale", "jitter"), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)
    scaled = augment(x, ("scale",), torch.Generator().manual_seed(1))
    ratio = scaled / x  # one factor per (sequence, channel), within [0.8, 1.2]
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)
    assert ratio.min() >= 0.8 - 1e-6 and ratio.max() <= 1.2 + 1e-6
    jittered = augment(x, ("jitter",), torch.Generator().manual_seed(1)) - x
    assert 0.03 < float(jittered.std()) < 0.07  # 0.05 noise
    assert parse_augment("none") == () and parse_augment("scale, jitter") == ("scale", "jitter")


def test_no_validation_split_keeps_the_last_epoch(tmp_path, capsys):
    args = ["--dataset", "gunpoint", "--epochs", "3", "--d-model", "8", "--d-state", "4", "--n-layers", "1", "--quiet"]
    code, out, _ = run_cli(capsys, "train", *args, "--val-fraction", "0", "--augment", "scale,jitter",
                           "--out", str(tmp_path / "a"), "--json")
    assert code == 0
    res = json.loads(out)
    assert res["val_accuracy"] is None
    ckpt = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    assert ckpt["metrics"]["best_epoch"] == 2  # the last of 3
    assert ckpt["metrics"]["hyperparameters"]["augment"] == "scale,jitter"
    code, _, err = run_cli(capsys, "train", *args, "--augment", "warp", "--out", str(tmp_path / "b"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "warp" in err and not (tmp_path / "b").exists()


def test_unknown_dataset_is_one_line_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--dataset", "nope", "--out", str(tmp_path / "x"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nope" in err
    assert not (tmp_path / "x").exists()


def test_existing_output_needs_force(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    code, _, err = run_cli(capsys, "train", "--dataset", "digits", "--out", str(tmp_path / "x"))
    assert code == 2 and "--force" in err


def test_corrupt_and_foreign_checkpoints(tmp_path, capsys, digits_model):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    code, _, err = run_cli(capsys, "eval", str(bad))
    assert code == 2 and "corrupt" in err and len(err.strip().splitlines()) == 1
    other = tmp_path / "other.pt"
    ckpt = torch.load(digits_model, weights_only=True)
    torch.save({**ckpt, "format": "someone-else/9"}, other)
    code, _, err = run_cli(capsys, "info", str(other))
    assert code == 2 and "format" in err
    untrained = tmp_path / "untrained.pt"
    torch.save({**ckpt, "metrics": {}}, untrained)
    code, _, err = run_cli(capsys, "eval", str(untrained))
    assert code == 2 and "untrained" in err
    code, _, err = run_cli(capsys, "info", str(tmp_path / "missing.pt"))
    assert code == 2 and "not found" in err


def test_wrong_number_of_channels(digits_model, capsys):
    code, _, err = run_cli(capsys, "eval", str(digits_model), "--dataset", "basicmotions")
    assert code == 2 and "channels" in err


def test_every_subcommand_has_help(capsys):
    from s4op_micro.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        assert main([name, "--help"]) == 0, name
    capsys.readouterr()
