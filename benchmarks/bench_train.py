"""Training benchmark: the default configuration of every shipped dataset, test accuracy and
training time (wall clock on this machine; shared 2-core machines make it indicative only).

    python benchmarks/bench_train.py [--datasets gunpoint,digits]
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from s4op_micro.pipeline import run_command  # noqa: E402
from s4op_micro.train import DATASET_DEFAULTS  # noqa: E402

TARGETS = {"gunpoint": 0.95, "arrowhead": 0.80, "basicmotions": 0.95, "digits": 0.95}


def run(datasets):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in datasets:
            out = Path(tmp) / name
            r = run_command(["train", "--dataset", name, "--out", str(out), "--quiet"])
            hp = DATASET_DEFAULTS[name]
            rows.append({"dataset": name, "accuracy": r["accuracy"], "target": TARGETS[name],
                         "met": "yes" if r["accuracy"] >= TARGETS[name] else "NO",
                         "params": r["params"], "train_seconds": round(r["train_seconds"], 1),
                         "config": f"H={hp['d_model']} N={hp['d_state']} layers={hp['n_layers']} epochs={hp['epochs']}"})
            print(f"{name}: {r['accuracy']:.4f}", file=sys.stderr)
    write_results("train", rows, ["dataset", "accuracy", "target", "met", "params", "train_seconds", "config"],
                  "Training: default configurations (test accuracy, seed 0)",
                  ["train_seconds: wall clock on a shared 2-core machine, indicative only."])
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default=",".join(TARGETS))
    run(ap.parse_args().datasets.split(","))
