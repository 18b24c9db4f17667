"""Training CLI, checkpoints, evaluation and their error paths (small budgets: 2 CPU cores)."""

import copy
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from conftest import run_cli
from s4op_micro import train
from s4op_micro.models.checkpoint import load_model
from s4op_micro.cli import main
from s4op_micro.data import load_dataset
from s4op_micro.models import SequenceClassifier
from s4op_micro.prune.recipe import FinetuneRecipe, published_warmup
from s4op_micro.train import augment, fit, parse_augment




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


# --- fit: the training's behaviour is unchanged; the fine-tune options do what they say ---------

def legacy_fit(model, data, epochs, lr, batch_size=32, weight_decay=0.01, seed=0, patience=None, augment_with=()):
    """train.fit before the fine-tune options (commit ff819ea), kept verbatim minus the progress bar:
    the reference that `train` must keep matching."""
    train.set_seed(seed)
    x, y = train.as_tensors(data.x_train, data.y_train)
    augment_with = augment_with if x.is_floating_point() else ()
    opt = train.make_optimizer(model, lr, weight_decay)
    steps = max(1, epochs * ((len(x) + batch_size - 1) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    best = (-1.0, float("inf"))
    best_state, best_epoch, since_best, epoch = copy.deepcopy(model.state_dict()), 0, 0, 0
    for epoch in range(epochs):
        model.train()
        for xb, yb in train.batches(x, y, batch_size, gen):
            if len(xb) < 2 and model.config["norm"] == "batch":
                continue
            if augment_with:
                xb = augment(xb, augment_with, gen)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if not len(data.y_val):
            best_epoch = epoch
            continue
        val = train.evaluate(model, data.x_val, data.y_val)
        score = (val["accuracy"], val["loss"])
        if score[0] > best[0] or (score[0] == best[0] and score[1] < best[1]):
            best, best_state, best_epoch, since_best = score, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            since_best += 1
        if patience is not None and since_best >= patience:
            break
    if len(data.y_val):
        model.load_state_dict(best_state)
    model.eval()
    return {"best_epoch": best_epoch, "val_accuracy": best[0] if len(data.y_val) else None, "epochs_run": epoch + 1}


def gunpoint_model(data, seed=0, d_model=8):
    train.set_seed(seed)
    return SequenceClassifier(data.n_channels, data.n_classes, d_model=d_model, d_state=4, n_layers=1)


def test_train_command_trains_exactly_as_before(tmp_path):
    """`s4op-micro train` against the old training loop, run here on the same seed."""
    args = ["--dataset", "gunpoint", "--epochs", "4", "--d-model", "8", "--d-state", "4", "--n-layers", "1",
            "--augment", "scale,jitter", "--seed", "3", "--quiet"]
    assert main(["train", *args, "--out", str(tmp_path / "new")]) == 0
    new, ckpt = load_model(tmp_path / "new" / "model.pt")
    data = load_dataset(name="gunpoint", seed=3)
    old = gunpoint_model(data, seed=3)
    history = legacy_fit(old, data, 4, 0.01, 16, seed=3, augment_with=("scale", "jitter"))
    for (k, va), vb in zip(old.state_dict().items(), new.state_dict().values()):
        assert torch.equal(va, vb), k
    assert ckpt["metrics"]["test_accuracy"] == train.evaluate(old, data.x_test, data.y_test)["accuracy"]
    assert (ckpt["metrics"]["best_epoch"], ckpt["metrics"]["val_accuracy"]) == (history["best_epoch"], history["val_accuracy"])


def test_fit_defaults_with_patience_are_the_old_fine_tune():
    """guided keeps its fine-tune: fit's defaults with early stopping equal the old loop's."""
    data = small_gunpoint()
    old, new = gunpoint_model(data), gunpoint_model(data)
    a = legacy_fit(old, data, 6, 0.02, 8, seed=1, patience=1)
    b = fit(new, data, 6, 0.02, 8, seed=1, patience=1, progress=False)
    assert (a["best_epoch"], a["val_accuracy"], a["epochs_run"]) == (b["best_epoch"], b["val_accuracy"], b["epochs_run"])
    assert all(torch.equal(va, vb) for va, vb in zip(old.state_dict().values(), new.state_dict().values()))


def small_gunpoint(n_train=16, n_val=6):
    full = load_dataset(name="gunpoint")
    return dataclasses.replace(full, x_train=full.x_train[:n_train], y_train=full.y_train[:n_train],
                               x_val=full.x_val[:n_val], y_val=full.y_val[:n_val])


@pytest.fixture
def optimizer_steps():
    """Every optimizer step's param groups (lr, weight decay) and total gradient norm, seen by a
    global pre-step hook."""
    steps = []

    def hook(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        steps.append({"lr": [g["lr"] for g in opt.param_groups], "wd": [g["weight_decay"] for g in opt.param_groups],
                      "norm": float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
                      if grads else 0.0})

    handle = register_optimizer_step_pre_hook(hook)
    yield steps
    handle.remove()


def test_published_lr_schedule_warms_up_then_cosine_per_epoch(optimizer_steps):
    data = small_gunpoint(n_train=16)  # batch size 8: two steps per epoch
    recipe = dataclasses.replace(FinetuneRecipe.published_s4op("gunpoint", batch_size=8), patience=None)
    assert (recipe.epochs, recipe.warmup_epochs, recipe.lr) == (20, 2, 1e-4)
    fit(gunpoint_model(data), data, seed=0, progress=False, **recipe.fit_options())
    assert len(optimizer_steps) == 2 * 20
    lr, E, W = 1e-4, 20, 2
    expected = [lr * (0.01 + 0.99 * e / W) if e < W else lr * 0.5 * (1 + math.cos(math.pi * (e - W) / (E - W)))
                for e in range(E)]
    for e in range(E):
        for step in optimizer_steps[2 * e : 2 * e + 2]:  # constant within the epoch, same for the SSM group
            assert step["lr"] == pytest.approx([expected[e]] * 2, rel=1e-12)
            assert step["wd"] == [1e-5, 0.0]
    # the reference's construction (LinearLR from 0.01, then cosine over E - W, stepped per epoch)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=W),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=E - W)], milestones=[W])
    for e in range(E):
        assert opt.param_groups[0]["lr"] == pytest.approx(expected[e], rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()
    assert [published_warmup(e) for e in (4, 5, 20, 39, 60, 100)] == [1, 1, 2, 3, 5, 5]


def test_gradient_norm_is_clipped(optimizer_steps):
    data = small_gunpoint()
    for clip in (None, 1.0):
        model = gunpoint_model(data)
        with torch.no_grad():
            model.decoder.weight.mul_(50)  # large logits: large gradients
        fit(model, data, 2, 1e-3, 8, progress=False, grad_clip=clip)
    unclipped, clipped = optimizer_steps[:4], optimizer_steps[4:]
    assert max(s["norm"] for s in unclipped) > 2.0  # clipping has work to do
    assert len(clipped) == 4 and all(s["norm"] <= 1.0 + 1e-5 for s in clipped)


def scripted_validation(monkeypatch, accuracies, losses=None):
    """fit sees these validation accuracies (and losses) epoch by epoch; returns the weights it had
    at each evaluation."""
    seen = []

    def evaluate(model, x, y, batch_size=256, forward_fn=None):
        epoch = len(seen)
        seen.append(copy.deepcopy(model.state_dict()))
        return {"accuracy": accuracies[epoch], "loss": (losses or [1.0] * len(accuracies))[epoch]}

    monkeypatch.setattr(train, "evaluate", evaluate)
    return seen


def test_published_early_stopping_and_best_epoch_reloaded(monkeypatch):
    data = small_gunpoint()
    # epochs 0, 1 improve; 2 ties (not better), 3, 4 worse: patience 2 -> stop after 2 + 1 = 3 of them
    accuracies, losses = [0.5, 0.8, 0.8, 0.7, 0.8, 0.9, 1.0], [1.0, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9]
    seen = scripted_validation(monkeypatch, accuracies, losses)
    model = gunpoint_model(data)
    h = fit(model, data, 7, 1e-3, 8, progress=False, patience=2, stop_rule="patience+1", epoch_ties="earlier")
    assert (h["epochs_run"], h["best_epoch"], h["val_accuracy"]) == (5, 1, 0.8) and len(seen) == 5
    assert all(torch.equal(v, seen[1][k]) for k, v in model.state_dict().items())  # the best epoch's weights
    assert not all(torch.equal(v, seen[4][k]) for k, v in model.state_dict().items())
    # the training's rule on the same sequence: the tie at a lower loss is better, stop after 2 epochs
    seen = scripted_validation(monkeypatch, accuracies, losses)
    model = gunpoint_model(data)
    h = fit(model, data, 7, 1e-3, 8, progress=False, patience=2)
    assert (h["epochs_run"], h["best_epoch"]) == (5, 2)
    assert all(torch.equal(v, seen[2][k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError):
        fit(model, data, 1, 1e-3, 8, progress=False, stop_rule="whenever")
