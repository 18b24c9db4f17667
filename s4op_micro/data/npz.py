"""The user's own data: an .npz with x_train, y_train, x_test, y_test (x (n, L) or (n, L, C), integer labels)."""

from pathlib import Path

import numpy as np

from ..core.errors import UserError
from .core import Raw

KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {path} not found; pass an existing .npz with keys {', '.join(KEYS)}")
    hint = f"save it with np.savez(path, {', '.join(f'{k}=...' for k in KEYS)})"
    try:
        f = np.load(path, allow_pickle=False)  # no pickles: an .npz must not run code
    except Exception as e:  # noqa: BLE001 - any failure here means the file is not a usable archive
        raise UserError(f"{path} is not an .npz archive or is corrupt ({type(e).__name__}); {hint}")
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise UserError(f"{path} is a single .npy array, not an .npz archive; {hint}")
    with f:
        missing = [k for k in KEYS if k not in f.files]
        if missing:
            raise UserError(f"{path} lacks {', '.join(missing)}; {hint}")
        try:
            arrays = {k: f[k] for k in KEYS}
        except Exception as e:  # noqa: BLE001 - corrupt member, or an object array (needs pickle)
            raise UserError(f"{path} is corrupt or holds non-numeric arrays ({type(e).__name__}); {hint} using numeric arrays")
    xs = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim not in (2, 3) or x.dtype.kind not in "biuf":
            raise UserError(f"x_{split} has shape {x.shape} and dtype {x.dtype}; pass numbers shaped (n, L) or (n, L, C)")
        if x.size == 0:
            raise UserError(f"x_{split} has shape {x.shape}, which is empty; pass at least one sequence of length >= 1")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise UserError(f"x_{split} contains NaN or inf; fill or drop those values before saving")
        if y.ndim != 1 or len(y) != len(x):
            raise UserError(f"y_{split} has shape {y.shape} but x_{split} has {len(x)} sequences; pass one label per sequence")
        if not (y.dtype.kind in "iu" or (y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all())):
            raise UserError(f"y_{split} has dtype {y.dtype} with non-integer labels; pass integer class labels (y.astype(int))")
        if (y < 0).any():
            raise UserError(f"y_{split} has negative labels (min {int(y.min())}); pass class labels 0, 1, 2, ...")
        xs[split] = (x.reshape(*x.shape[:2], -1).astype(np.float32), y.astype(np.int64))
    (x_tr, y_tr), (x_te, y_te) = xs["train"], xs["test"]
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise UserError(f"train sequences are (L, C) = {x_tr.shape[1:]} but test ones are {x_te.shape[1:]}; pass equal lengths and channels")
    unseen = sorted(set(y_te.tolist()) - set(y_tr.tolist()))
    if unseen:
        raise UserError(f"test labels {unseen[:5]} never occur in y_train; every class needs training examples")
    return Raw(x_tr, y_tr, x_te, y_te)
