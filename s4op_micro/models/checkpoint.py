"""The checkpoint format: one torch.save'd dict, versioned, validated on load.

keys: format, config, state_dict, active_operators, removed_operators, normalization, dataset,
metrics (and whatever a stage adds, e.g. `pruning`). `dataset` records how to reload the data
({"name": ...} or {"data": path}) and its shape facts (n_channels, seq_len, n_classes, ...).
"""

import io
from pathlib import Path

import torch

from ..core.errors import UserError
from .classifier import SequenceClassifier
from ..core.outdir import atomic_write_bytes

FORMAT = "s4op-micro/checkpoint-1"
REQUIRED = ("config", "state_dict", "active_operators", "normalization", "dataset", "metrics")


def save_checkpoint(path, model, normalization, dataset, metrics, **extra):
    ckpt = {
        "format": FORMAT,
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "active_operators": model.active_operators,
        "removed_operators": model.removed_operators,
        "normalization": normalization,
        "dataset": dataset,
        "metrics": metrics,
        **extra,
    }
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(path, buf.getvalue())
    return ckpt


def load_checkpoint(path):
    """The checkpoint dict, or a UserError saying what is wrong with the file."""
    path = Path(path)
    if path.is_dir():
        inside = path / "model.pt"
        raise UserError(f"{path} is a directory; pass the checkpoint file" + (f" {inside}" if inside.is_file() else
                                                                             " (DIR/model.pt)"))
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; train one with `s4op-micro train --out DIR`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds on garbage
        raise UserError(f"checkpoint {path} is corrupt or not a torch file ({type(e).__name__}); re-create it with `s4op-micro train`") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"checkpoint {path} has format {found!r}, this s4op-micro reads {FORMAT!r}; re-train or convert it")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise UserError(f"checkpoint {path} lacks {', '.join(missing)}; re-create it with `s4op-micro train`")
    if not ckpt["metrics"]:
        raise UserError(f"checkpoint {path} is untrained (no metrics); train it with `s4op-micro train`")
    return ckpt


def model_from_checkpoint(ckpt):
    """Rebuild the (possibly pruned) model and load its weights."""
    model = SequenceClassifier.from_config(
        ckpt["config"], ckpt["active_operators"], ckpt.get("removed_operators")
    )
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"checkpoint weights do not match its config ({first}); re-create it with `s4op-micro train`") from None
    model.eval()
    return model


def load_model(path):
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt), ckpt
