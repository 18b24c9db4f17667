"""Scaling benchmark: cost and size of the generated C against model shape and sequence length.

Untrained models (random init; BatchNorm running statistics from forward passes over the random
training data, so calibration sees realistic activations) are exported for cortex-m7 from a random
`--data` .npz and run in QEMU on 2 test sequences. One factor varies at a time around
H=32, N=32, layers=2, L=256: H (d_model), N (d_state), layers, and L (sequence length).

    python benchmarks/bench_scaling.py [--quick] [--work DIR]
"""

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_results  # noqa: E402

from s4op_micro.models.checkpoint import save_checkpoint  # noqa: E402
from s4op_micro.data import load_dataset  # noqa: E402
from s4op_micro.models.classifier import SequenceClassifier  # noqa: E402
from s4op_micro.deploy import export, run  # noqa: E402
from s4op_micro.train import dataset_record  # noqa: E402

BOARD = "cortex-m7"
BASE = {"H": 32, "N": 32, "layers": 2, "L": 256}
SWEEP = {"H": [16, 32, 64], "N": [16, 32, 64], "layers": [1, 2, 4], "L": [64, 256, 1024]}
N_CLASSES, N_TRAIN, N_TEST, LIMIT = 4, 64, 2, 2
COLUMNS = ["factor", "value", "H", "N", "layers", "L", "flash_bytes", "ram_bytes", "macs/step",
           "instructions/step", "cycles/step", "instructions/sequence", "recurrent MACs/seq", "conv MACs/seq",
           "conv/recurrent"]


def make_data(path, L, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.standard_normal((N_TRAIN, L)).astype(np.float32),
             y_train=np.arange(N_TRAIN) % N_CLASSES,
             x_test=rng.standard_normal((N_TEST, L)).astype(np.float32), y_test=np.arange(N_TEST) % N_CLASSES)


def make_model(path, data_path, H, N, layers, seed=0):
    """A random-init checkpoint whose BatchNorm statistics are those of the random training data."""
    data = load_dataset(data=str(data_path))
    torch.manual_seed(seed)
    m = SequenceClassifier(data.n_channels, N_CLASSES, d_model=H, d_state=N, n_layers=layers)
    for bn in m.norms:
        bn.momentum = None  # cumulative average over the passes below
    m.train()
    with torch.no_grad():
        x = torch.as_tensor(data.x_train).float()
        for i in range(0, len(x), 16):
            m(x[i:i + 16])
    m.eval()
    save_checkpoint(path, m, data.normalization, dataset_record(data, data_path),
                    {"test_accuracy": 0.0, "note": "untrained (random init, BatchNorm statistics from random data)"})


def mixer_macs_per_step(H, layers, C=1):
    """Per-step MACs of everything but the SSM recurrence: encoder C*H, per layer the 1x1 H->2H + GLU
    (2H*H) and the D skip (H); the decoder (H*classes) runs once per sequence and is left out."""
    return C * H + layers * (2 * H * H + H)


def conv_macs_per_sequence(H, layers, L):
    """Convolution mode (FFT, kernel FFT precomputed): per layer and channel a real FFT and an inverse real
    FFT of size 2L (each ~ 2L*log2(2L) real MACs) and a complex product over L+1 bins (4 MACs each),
    plus the mixer for every step."""
    n = 2 * L
    return layers * H * (2 * n * math.log2(n) + 4 * (L + 1)) + L * mixer_macs_per_step(H, layers)


def measure(cfg, work):
    H, N, layers, L = cfg["H"], cfg["N"], cfg["layers"], cfg["L"]
    d = Path(work) / f"H{H}_N{N}_K{layers}_L{L}"
    d.mkdir(parents=True, exist_ok=True)
    data_path = d / "data.npz"
    make_data(data_path, L)
    make_model(d / "model.pt", data_path, H, N, layers)
    exp = export(d / "model.pt", board=BOARD, out=d / "c", formats="c", force=True, data=data_path,
                 calib_samples=N_TRAIN, test_vectors=2).report
    res = run(d / "c", target="qemu", data=data_path, limit=LIMIT)
    macs = exp["macs_per_step"]
    rec, conv = macs * L, conv_macs_per_sequence(H, layers, L)
    return {"H": H, "N": N, "layers": layers, "L": L,
            "flash_bytes": res.get("flash_bytes", exp.get("flash_bytes")),
            "ram_bytes": res.get("ram_bytes", exp.get("ram_bytes")), "macs/step": macs,
            "instructions/step": int(round(res["instructions_per_step"])),
            "cycles/step": int(round(res["cycles_per_step"])),
            "instructions/sequence": int(round(res["instructions_per_step"] * L)),
            "recurrent MACs/seq": int(rec), "conv MACs/seq": int(round(conv)), "conv/recurrent": round(conv / rec, 3),
            "mismatches": res["mismatches"], "cycles_source": res.get("cycles_source")}


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = list(dict.fromkeys(r["factor"] for r in rows))
    fig, axes = plt.subplots(1, len(factors), figsize=(4 * len(factors), 3.6))
    for ax, f in zip(np.atleast_1d(axes), factors):
        rs = [r for r in rows if r["factor"] == f]
        xs = [r["value"] for r in rs]
        ax.plot(xs, [r["instructions/step"] for r in rs], "o-", label="instructions/step (QEMU)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(f)
        ax.set_title(f"{f} (others at base)")
        ax.set_ylim(0, 1.25 * max(r["instructions/step"] for r in rs))
        if f == "L":
            ax2 = ax.twinx()
            ax2.plot(xs, [r["recurrent MACs/seq"] for r in rs], "s--", color="C1", label="recurrent MACs/seq")
            ax2.plot(xs, [r["conv MACs/seq"] for r in rs], "^--", color="C2", label="FFT conv MACs/seq")
            ax2.set_yscale("log")
            ax2.legend(fontsize=7, loc="upper left")
        ax.legend(fontsize=7, loc="lower right" if f != "L" else "center right")
    np.atleast_1d(axes)[0].set_ylabel("instructions per step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the extremes of each factor (no L=1024)")
    ap.add_argument("--factors", default=",".join(SWEEP), help="comma list of H,N,layers,L")
    ap.add_argument("--work", help="where models go (default: a temporary directory)")
    a = ap.parse_args(argv)
    sweep = {f: SWEEP[f] for f in a.factors.split(",")}
    if a.quick:
        sweep = {f: [v for v in vs if v != 1024] for f, vs in sweep.items()}
    cache, rows, sources = {}, [], set()
    with tempfile.TemporaryDirectory() as tmp:
        for f, values in sweep.items():
            for v in values:
                cfg = {**BASE, f: v}
                key = tuple(cfg.values())
                if key not in cache:
                    start = time.time()
                    cache[key] = measure(cfg, a.work or tmp)
                    print(f"{cfg}: {cache[key]} ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
                sources.add(cache[key]["cycles_source"])
                rows.append({"factor": f, "value": v, **cache[key]})
    notes = [
        f"Board {BOARD}; untrained S4D models (random init, seed 0; BatchNorm statistics from forward passes over "
        f"{N_TRAIN} random N(0,1) sequences, which are also the calibration set), 1 input channel, {N_CLASSES} "
        f"classes, 8-bit coefficients. One factor varies at a time around H={BASE['H']}, N={BASE['N']}, "
        f"layers={BASE['layers']}, L={BASE['L']}." + (" Reduced sweep (--quick: no L=1024)." if a.quick else ""),
        f"instructions/step: QEMU instruction count over {LIMIT} test sequences, per time step; cycles/step: "
        f"estimated from it with the board's CPI ({'; '.join(sorted(s for s in sources if s))}).",
        "flash/RAM: as reported by `run`/`export` for the model sources. instructions/sequence = instructions/step x L.",
        "The recurrent C's cost per step does not depend on L (only the test vectors/data do); its cost per "
        "sequence is linear in L: recurrent MACs/seq = report.json macs_per_step x L.",
        "conv MACs/seq (convolution mode, for comparison; not implemented here): layers x H x (2 x 2L x log2(2L) "
        "[forward + inverse real FFT of the zero-padded length 2L] + 4 x (L+1) [complex product with the "
        "precomputed kernel FFT]) + L x mixer MACs/step, mixer = C x H + layers x (2H x H + H) "
        "(encoder, 1x1 H->2H GLU, D skip). It also needs the H x L kernels (or their FFTs) in memory and the "
        "whole sequence before any output, which the recurrent form avoids.",
        "Models are untrained: costs and sizes depend on shapes only; accuracies are meaningless and not reported.",
    ]
    write_results("scaling", rows, COLUMNS, "Scaling: generated C cost against H, N, layers and L (QEMU cortex-m7)", notes)
    plot(rows, RESULTS / "scaling.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
