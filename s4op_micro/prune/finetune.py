"""The work a candidate needs, as tasks a worker can run: fine-tune it, or measure its damage.

A task carries the model as a checkpoint-like dict (`pack`) and everything else it needs, so it
runs the same in this process, in a spawned worker or on a Ray node. Fine-tunes are `train.fit`;
`forward_fn` adds the device and, with --qat, the fake-quantized forward of quant.qat.
"""

import math

import numpy as np
import torch

from ..models.checkpoint import model_from_checkpoint
from ..core.errors import UserError
from ..quant import qat
from ..train import evaluate, fit

SELECTION_TRAIN = 256  # training sequences added to the validation split to measure damage
CALIBRATION = 256  # training sequences that re-estimate BatchNorm statistics


def pack(model):
    return {"config": dict(model.config), "active_operators": model.active_operators,
            "removed_operators": model.removed_operators,
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}


def unpack(spec, device="cpu"):
    return model_from_checkpoint(spec).to(device)


def forward_fn(device="cpu", inner=None):
    """None for the plain CPU forward; else `inner` (e.g. fake-quantized) and/or a forward on
    `device` that hands the logits back on the CPU, where fit/evaluate keep the labels."""
    if str(device) == "cpu":
        return inner
    run = inner or (lambda model, x: model(x))
    return lambda model, x: run(model, x.to(device)).cpu()


def check_device(device):
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device here; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")
    return device


def finetune_task(task, data):
    """Fine-tune one candidate as its recipe says (recipe.FinetuneRecipe); returns the packed model
    and fit's history. bn_stats "re-estimated" (guided): BatchNorm statistics are re-estimated first,
    as a pruned model's are stale and the few batches of a fine-tune on a small dataset would not fix
    them (momentum 0.1); "carried" (S4oP): the parent's statistics go into the fine-tune as they are."""
    recipe = task["recipe"]
    model = unpack(task["model"], task["device"])
    calibration = data.x_train[:CALIBRATION]
    if recipe.bn_stats == "re-estimated":
        recalibrate_norms(model, calibration, forward_fn(task["device"]))
    quantized = qat.make_qat_forward(model, calibration, task["coeff_bits"]) if task["qat"] else None
    teacher = unpack(task["teacher"]) if recipe.distill and task.get("teacher") else None
    history = fit(model, data, seed=task["seed"], progress=task["progress"], desc=task["desc"],
                  forward_fn=forward_fn(task["device"], quantized), teacher=teacher, **recipe.fit_options())
    return {"model": pack(model), "history": history}


def damage_task(task, data):
    """Loss and accuracy of a candidate on the selection set, after re-estimating BatchNorm
    statistics (which a fine-tune would fix at once) and without any weight update."""
    model = unpack(task["model"], task["device"])
    recalibrate_norms(model, data.x_train[:CALIBRATION], forward_fn(task["device"]))
    x, y = selection_set(data)
    res = evaluate(model, x, y, forward_fn=forward_fn(task["device"]))
    return {"loss": res["loss"], "accuracy": res["accuracy"]}


def selection_set(data):
    """Validation plus the first training sequences: what damage, --max-drop and the pipeline's choice
    are measured on. The UCR validation splits are ~10 sequences, where one sequence is 10 points:
    too few to rank candidates by their loss or to resolve a 1-point drop. A drop on the training
    sequences is damage the fine-tune did not repair, one on validation lost generalization."""
    n = SELECTION_TRAIN
    return np.concatenate([data.x_val, data.x_train[:n]]), np.concatenate([data.y_val, data.y_train[:n]])


def tolerated_drop(max_drop, n):
    """The points of selection accuracy --max-drop lets a pruned model lose on n selection sequences:
    max_drop rounded up to whole sequences. On a small set a 1-point budget would otherwise mean "not
    one sequence" (gunpoint: 50 sequences, one is 2 points), stricter than asked; 0 stays 0."""
    return math.ceil(max_drop * n / 100 - 1e-9) * 100 / n if n else max_drop


def within_drop(base, accuracy, max_drop, n):
    """Whether a selection accuracy (fraction) is within --max-drop points of the base's on n sequences."""
    return 100 * (base - accuracy) <= tolerated_drop(max_drop, n) + 1e-9


@torch.no_grad()
def recalibrate_norms(model, x, forward=None):
    norms = [m for m in model.norms if isinstance(m, torch.nn.BatchNorm1d)]
    if not norms:
        return
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
        m.train()
    x = torch.as_tensor(x)
    x = x.float() if x.is_floating_point() else x.long()
    for i in range(0, len(x), 64):
        xb = x[i : i + 64]
        if len(xb) > 1:
            (forward or (lambda m_, xb_: m_(xb_)))(model, xb)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()
