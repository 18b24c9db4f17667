"""Latency calibration: the analytic oracle of `prune` against emulator measurements, per core and width.

    python benchmarks/bench_latency.py [--quick] [--cores cortex-m4,cortex-m7] [--no-fit]

For each emulated core, model shape (d_model, d_state, n_layers) and width (operators kept in every
layer: 0, H/4, H/2, 3H/4, H bypassed-to-width, and H/2 with the rest *removed*), the model is
exported (quantized on gunpoint's training sequences; the weights are the seed-0 initialization:
instruction counts depend on the shapes, not on training), built for the core and run in QEMU on 2
gunpoint test sequences (150 steps). Measured = emulator instructions per step x the core's assumed
CPI (s4op_micro.core.boards.CORE_CPI), i.e. the estimated cycles `run --emulator qemu` reports.

The analytic oracle (s4op_micro.prune.latency: counts from the shapes x CORE_COSTS per cpu) is compared
with the measurement before and after fitting its per-core constants (each constant times the count
it multiplies: MACs, loads, layers, 1) by non-negative least squares on the relative error. The fitted constants
are printed as a CORE_COSTS dict (pasted into latency.py) and saved with the table in
benchmarks/results/latency_calibration.{json,md}.
"""

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import nnls  # noqa: E402

from benchmarks.common import RESULTS, write_results  # noqa: E402
from s4op_micro.core.progress import quiet  # noqa: E402
from s4op_micro.measure import emulator  # noqa: E402  # noqa: E402
from s4op_micro.core.boards import BOARDS, core_cpi, get_board  # noqa: E402
from s4op_micro.data import load_dataset  # noqa: E402
from s4op_micro.models import SequenceClassifier  # noqa: E402
from s4op_micro.prune import latency  # noqa: E402
from s4op_micro.prune.operators import Decision, Lineage, apply  # noqa: E402

SHAPES = [(8, 8, 2), (16, 16, 1), (16, 16, 3), (32, 32, 2)]   # (d_model, d_state, n_layers); 32/32/2: gunpoint's default
QUICK_SHAPES = [(8, 8, 2), (16, 16, 1), (32, 32, 2)]


def variants(model):
    H, n = model.config["d_model"], model.config["n_layers"]
    out = []
    for w in sorted({0, H // 4, H // 2, (3 * H) // 4, H}):
        out.append((f"{w}/{H}", apply(model, Decision(bypass={j: list(range(w, H)) for j in range(n)}))))
    out.append((f"{H // 2}/{H} rest removed", apply(model, Decision(remove={j: list(range(H // 2, H)) for j in range(n)}))))
    return out


COUNT_OF = {"mac": "macs_per_step", "load": "loads_per_step", "elementwise": "elementwise_per_step"}


def features(model, cpu, base):
    """One column per constant of CORE_COSTS[cpu] (whatever latency.analytic_cycles uses): the count it
    multiplies (MACs, loads, ... per step; layers; 1 for the per-step constant)."""
    r = latency.cost_report(model)
    cols = {}
    for key in base[cpu]:
        if key in COUNT_OF:
            cols[key] = float(r[COUNT_OF[key]])
        elif key == "layer":
            cols[key] = float(len(r["layers"]))
        elif key == "step":
            cols[key] = 1.0
        else:
            raise SystemExit(f"CORE_COSTS has a constant {key!r} this benchmark does not know how to fit")
    return cols


def fit(rows, cpu, base):
    """Non-negative least squares of the constants on the relative error; the previous constants are
    the prior's scale (each column is fitted as a multiple of its old value, so that the fit is
    well-conditioned), rounded."""
    sel = [r for r in rows if r["cpu"] == cpu]
    keys = list(base[cpu])
    X = np.array([[r["_features"][k] * (base[cpu][k] or 1.0) for k in keys] for r in sel])
    y = np.array([r["measured_cycles"] for r in sel])
    w = 1.0 / y
    coef, _ = nnls(X * w[:, None], y * w)
    return {k: round(float(c * (base[cpu][k] or 1.0)), 3 if k in COUNT_OF else 0) for k, c in zip(keys, coef)}


def predict(feat, consts):
    return sum(feat[k] * consts[k] for k in consts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="three shapes")
    ap.add_argument("--cores", help="comma-separated emulated cores (default: all)")
    ap.add_argument("--no-fit", action="store_true", help="only compare, do not fit constants")
    args = ap.parse_args()
    cores = args.cores.split(",") if args.cores else [b for b, v in BOARDS.items() if v.emulated]
    shapes = QUICK_SHAPES if args.quick else SHAPES
    data = load_dataset(name="gunpoint")
    base = {cpu: dict(v) for cpu, v in latency.CORE_COSTS.items()}
    jobs = []
    for (H, N, L) in shapes:
        torch.manual_seed(0)
        model = SequenceClassifier(data.n_channels, data.n_classes, d_model=H, d_state=N, n_layers=L).eval()
        for label, m in variants(model):
            for core in cores:
                jobs.append((H, N, L, label, m, get_board(core)))

    def measure(job):
        H, N, L, label, m, board = job
        res = emulator.measure_model(m, board, data)
        lineage = Lineage(L, H, N // 2, list(range(L)))
        analytic = latency.AnalyticOracle(board).cycles(m, lineage)
        print(f"{board.name} H={H} N={N} layers={L} width {label}: {res['instructions_per_step']:.1f} insn/step, "
              f"analytic {analytic:.0f}", file=sys.stderr, flush=True)
        return {"core": board.name, "cpu": board.cpu, "d_model": H, "d_state": N, "n_layers": L, "width": label,
                "measured_instructions": round(res["instructions_per_step"]), "cpi": res["cpi"],
                "measured_cycles": round(res["cycles_per_step"]), "analytic_cycles": round(analytic),
                "error_pct": round(100 * (analytic - res["cycles_per_step"]) / res["cycles_per_step"], 1),
                "_features": features(m, board.cpu, base)}

    start = time.time()
    with quiet(), ThreadPoolExecutor(max_workers=2) as pool:
        rows = list(pool.map(measure, jobs))
    notes = [f"measured: emulator instructions per step (QEMU -icount, exact) x the core's CPI "
             f"({', '.join(f'{c} {core_cpi(c)[0]:g}' for c in cores)}; s4op_micro.core.boards.CORE_CPI); 2 gunpoint test "
             "sequences of 150 steps; seed-0 initialized models quantized on gunpoint",
             "width w/H: w operators kept (active) in every layer, the others bypassed (y = u) or removed (y = 0, "
             "the mixer column dropped)",
             f"error = (analytic - measured) / measured; {len(rows)} measurements in {time.time() - start:.0f} s"]
    fitted = {}
    if not args.no_fit:
        cpus = sorted({r["cpu"] for r in rows})
        for cpu in cpus:
            fitted[cpu] = fit(rows, cpu, base)
        for r in rows:
            pred = predict(r["_features"], fitted[r["cpu"]])
            r["fitted_cycles"] = round(pred)
            r["fitted_error_pct"] = round(100 * (pred - r["measured_cycles"]) / r["measured_cycles"], 1)
        for cpu in cpus:
            errs = [abs(r["error_pct"]) for r in rows if r["cpu"] == cpu]
            ferrs = [abs(r["fitted_error_pct"]) for r in rows if r["cpu"] == cpu]
            notes.append(f"{cpu}: analytic off by {np.mean(errs):.0f}% on average (max {max(errs):.0f}%) before the fit, "
                         f"{np.mean(ferrs):.1f}% (max {max(ferrs):.1f}%) after; constants {base[cpu]} -> {fitted[cpu]}")
    for r in rows:
        r.pop("_features")
    columns = ["core", "d_model", "d_state", "n_layers", "width", "measured_instructions", "measured_cycles",
               "analytic_cycles", "error_pct"] + ([] if args.no_fit else ["fitted_cycles", "fitted_error_pct"])
    write_results("latency_calibration", rows, columns,
                  "Analytic latency oracle vs emulator measurement (cycles per step)", notes)
    if fitted:
        data_out = json.loads((RESULTS / "latency_calibration.json").read_text())
        data_out["fitted_core_costs"] = fitted
        data_out["previous_core_costs"] = {c: base[c] for c in fitted}
        (RESULTS / "latency_calibration.json").write_text(json.dumps(data_out, indent=1))
        print("\nCORE_COSTS = {")
        for cpu, c in fitted.items():
            print(f'    "{cpu}": dict(' + ", ".join(f"{k}={v:g}" for k, v in c.items()) + "),")
        print("}")

if __name__ == "__main__":
    main()
