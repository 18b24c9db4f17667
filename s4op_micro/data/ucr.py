"""UCR/UEA sets from the .ts files bundled inside the sktime package (official train/test splits).

The files are read by full path with `load_from_tsfile`, never through `load_UCR_UEA_dataset`,
which falls back to downloading when a name is not found locally.
"""

import importlib.util
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from .core import Raw


def bundled_dir(problem):
    """sktime/datasets/data/<problem>, located without importing sktime (slow); None if sktime is missing."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / problem


def available(problem):
    d = bundled_dir(problem)
    return d is not None and all((d / f"{problem}_{s}.ts").is_file() for s in ("TRAIN", "TEST"))


def load_ucr(problem):
    if not available(problem):
        raise UserError(f"the {problem} files are not bundled with the installed sktime; reinstall it with `pip install --force-reinstall sktime`")
    from sktime.datasets import load_from_tsfile

    d = bundled_dir(problem)
    parts = []
    for s in ("TRAIN", "TEST"):
        x, y = load_from_tsfile(str(d / f"{problem}_{s}.ts"), return_data_type="numpy3D")
        parts += [np.ascontiguousarray(np.transpose(x, (0, 2, 1)), dtype=np.float32), np.asarray(y).astype(str)]
    return Raw(*parts)  # x: sktime's (n, C, L) -> (n, L, C)
