"""Model selection by cross-validation on the training set only: how the arrowhead defaults in
s4op_micro.train.DATASET_DEFAULTS were chosen (its 36 training sequences leave a 7-sequence
validation split, which saturates at 1.0 and cannot rank configurations).

Each candidate (the dataset's defaults with some overrides) is trained on k-1 folds for its fixed
number of epochs, keeping the last epoch (as `train --val-fraction 0` does), and scored on the
held-out fold; repeated with other fold splits and seeds. The test set is never looked at.

    python benchmarks/bench_select.py [--dataset arrowhead] [--folds 6] [--repeats 3] [--quick]
"""

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
from sklearn.model_selection import StratifiedKFold

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from s4op_micro.data import load_dataset  # noqa: E402
from s4op_micro.models import SequenceClassifier  # noqa: E402
from s4op_micro.train import defaults_for, evaluate, fit, parse_augment, set_seed  # noqa: E402

CANDIDATES = [  # overrides of the dataset's defaults
    dict(n_layers=2, epochs=80, augment=""),
    dict(n_layers=2, epochs=80, augment="scale,jitter"),
    dict(n_layers=4, epochs=100, augment="scale,jitter"),
    dict(d_model=64, d_state=64, n_layers=2, epochs=100, augment="scale,jitter"),
]


def cv_accuracy(data, hp, folds, repeats):
    """Mean held-out accuracy over `repeats` x `folds` trainings (normalization: the whole training
    set's per-channel mean/std, a negligible leak for per-series z-normalized UCR data)."""
    scores = []
    for seed in range(repeats):
        kfold = StratifiedKFold(folds, shuffle=True, random_state=seed)
        for train_idx, held_idx in kfold.split(data.x_train, data.y_train):
            part = dataclasses.replace(data, x_train=data.x_train[train_idx], y_train=data.y_train[train_idx],
                                       x_val=data.x_train[:0], y_val=data.y_train[:0])
            set_seed(seed)
            model = SequenceClassifier(data.n_channels, data.n_classes, d_model=hp["d_model"], d_state=hp["d_state"],
                                       n_layers=hp["n_layers"])
            fit(model, part, hp["epochs"], hp["lr"], hp["batch_size"], seed=seed, progress=False,
                augment_with=parse_augment(hp["augment"]))
            scores.append(evaluate(model, data.x_train[held_idx], data.y_train[held_idx])["accuracy"])
    return scores


def run(dataset, folds, repeats):
    torch.set_num_threads(1)
    data = load_dataset(dataset, val_fraction=0)
    base = defaults_for(dataset)
    rows = []
    for overrides in CANDIDATES:
        hp = {**base, **overrides}
        start = time.time()
        scores = cv_accuracy(data, hp, folds, repeats)
        rows.append({"candidate": ", ".join(f"{k}={v or 'none'}" for k, v in overrides.items()),
                     "cv_accuracy": statistics.fmean(scores), "cv_std": statistics.pstdev(scores),
                     "trainings": len(scores), "seconds": round(time.time() - start), "scores": scores,
                     "is_default": all(base.get(k) == v for k, v in overrides.items())})
        print(f"{rows[-1]['candidate']}: {rows[-1]['cv_accuracy']:.4f}", file=sys.stderr)
    write_results(f"select_{dataset}", rows, ["candidate", "cv_accuracy", "cv_std", "trainings", "seconds", "is_default"],
                  f"Model selection on {dataset}: {repeats}x{folds}-fold cross-validation on the training set",
                  ["cv_accuracy: mean held-out-fold accuracy; cv_std: over folds and repeats (a fold of "
                   f"{len(data.y_train) // folds} sequences moves by 1/{len(data.y_train) // folds} per sequence).",
                   "is_default: the configuration `s4op-micro train` uses; the test set is not used here.",
                   "seconds: wall clock on a shared 2-core machine, indicative only."])
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="arrowhead")
    ap.add_argument("--folds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="3 folds, 1 repeat")
    a = ap.parse_args()
    run(a.dataset, 3 if a.quick else a.folds, 1 if a.quick else a.repeats)
