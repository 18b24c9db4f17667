"""The one comparison every run of an exported model ends with: its int8 scores against the
integer reference's, and three accuracies on the same sequences (the run's, the reference's, the
float model's)."""

from dataclasses import dataclass

import numpy as np


@dataclass
class TestSet:
    """The sequences a run streams: int8 inputs, labels, the reference's final scores and the float
    model's predictions (all for the same n sequences)."""
    x_int8: np.ndarray            # (n, L, C) int8
    y: np.ndarray                 # (n,) labels
    x_float: np.ndarray           # (n, L, C) the float inputs x_int8 quantizes
    reference_scores: np.ndarray  # (n, classes) int64: IntegerReference.run
    float_pred: np.ndarray        # (n,) argmax of the float model


def compare(scores, test, target):
    """{"target", "n_sequences", "mismatches" (sequences with any score != the reference),
    "mismatched_scores", "accuracy", "reference_accuracy", "float_accuracy"}."""
    scores = np.asarray(scores, dtype=np.int64)
    ref = np.asarray(test.reference_scores, dtype=np.int64)
    y = np.asarray(test.y)
    differ = scores != ref
    return {"target": target, "n_sequences": int(len(y)),
            "mismatches": int(differ.any(axis=-1).sum()), "mismatched_scores": int(differ.sum()),
            "accuracy": float((scores.argmax(-1) == y).mean()),
            "reference_accuracy": float((ref.argmax(-1) == y).mean()),
            "float_accuracy": float((np.asarray(test.float_pred) == y).mean())}


def first_mismatch(scores, test):
    """{"sequence", "firmware", "reference"} of the first sequence whose scores differ, or None."""
    scores, ref = np.asarray(scores, dtype=np.int64), np.asarray(test.reference_scores, dtype=np.int64)
    bad = np.nonzero((scores != ref).any(axis=-1))[0]
    if not len(bad):
        return None
    i = int(bad[0])
    return {"sequence": i, "firmware": scores[i].tolist(), "reference": ref[i].tolist()}
