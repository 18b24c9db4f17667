"""Export speed: `export` of a 4-layer H=64 N=64 model (the generic default for --data) calibrated on
200 training sequences of 430 steps, timed per phase, for this tree and (--baseline REV) for the
code of a git revision, in the same run, with a bit-for-bit comparison of what both export.

    python benchmarks/bench_export.py [--baseline REV|none] [--quick] [--formats c,tflm] [--work DIR]

--baseline defaults to BEFORE_REV, the last revision before the whole-sequence calibration and
reference (its export takes ~4 minutes here); --quick or --baseline none times this tree only.

The data is generated (seeded): a 6-class .npz of 250 train / 100 test sequences of 430 steps, one
channel (class-dependent sinusoid + noise); export's default validation split leaves 200 training
sequences, all of which calibrate. The model is trained for --epochs epochs (default 1: trained
BatchNorm statistics and weights off their initial values; accuracy is not the point).

Each code version runs `s4op_micro.deploy.export` in its own subprocess (PYTHONPATH = the tree, or
a `git archive` of REV) with its phases timed by wrapping the functions export calls (exclusive
time: a phase nested in another is not counted twice):

  calibration      quantize.run_float (the float graph over the calibration set, ranges recorded)
  quantization     the rest of quantize_model (codes, scales, tables)
  reference        IntegerReference.run_steps (the test set; the test vectors; tflm's one sequence)
  float model      the PyTorch model's predictions on the test set
  rendering        render_c + write_build_files
  sizes            model_sizes (arm-none-eabi-gcc -Os, when installed)
  tflm             the .tflite, its C array and the TFLM runtime check (--formats with tflm)
  other            loading, checks, writing files

Identity check (with --baseline): every file of both export directories (qmodel.npz compared array
by array, report.json, model.json, C sources, .tflite), and the integer reference's outputs.
Writes benchmarks/results/export.json and .md.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

BEFORE_REV = "1d02cb3"    # main before the export speed-up (issue 16, item 4)
N_TRAIN, N_TEST, LENGTH, CLASSES = 250, 100, 430, 6
BOARD = "cortex-m7"
PHASES = ["calibration", "quantization", "reference", "float model", "rendering", "sizes", "tflm", "other"]


# --- data and model ----------------------------------------------------------------------------------

def make_data(path, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)

    def split(n):
        y = rng.integers(0, CLASSES, n)
        t = np.arange(LENGTH)
        phase = rng.uniform(0, 2 * np.pi, (n, 1))
        x = np.sin(2 * np.pi * (y[:, None] + 1) * t / LENGTH + phase) + 0.5 * rng.standard_normal((n, LENGTH))
        return x.astype(np.float32), y

    (xtr, ytr), (xte, yte) = split(N_TRAIN), split(N_TEST)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)


def make_model(work, epochs):
    from s4op_micro.train import train

    data = work / "rand6.npz"
    make_data(data)
    start = time.time()
    res = train(out=work / "train", data=str(data), epochs=epochs, force=True, progress=False, seed=0)
    print(f"trained {res.hyperparameters} in {time.time() - start:.0f} s (test accuracy {res.accuracy:.3f})",
          file=sys.stderr, flush=True)
    return Path(res.model), res


# --- one timed export (runs in a subprocess, on whichever s4op_micro is first on the path) ------------

class PhaseTimer:
    """Exclusive wall and CPU seconds per phase of functions wrapped with `wrap`."""

    def __init__(self):
        self.wall = dict.fromkeys(PHASES, 0.0)
        self.cpu = dict.fromkeys(PHASES, 0.0)
        self.stack = []          # [phase, wall start, cpu start, nested wall, nested cpu]
        self.outputs = []        # outermost IntegerReference.run_steps results

    @staticmethod
    def now():
        t = os.times()           # CPU of this process and of finished children (the compilers)
        return time.perf_counter(), t.user + t.system + t.children_user + t.children_system

    def wrap(self, owner, name, phase, keep_output=False):
        fn = getattr(owner, name, None)
        if fn is None:
            return False
        timer = self

        def timed(*args, **kwargs):
            w0, c0 = timer.now()
            timer.stack.append([phase, 0.0, 0.0])
            try:
                out = fn(*args, **kwargs)
            finally:
                _, nested_w, nested_c = timer.stack.pop()
                w1, c1 = timer.now()
                timer.wall[phase] += (w1 - w0) - nested_w
                timer.cpu[phase] += (c1 - c0) - nested_c
                if timer.stack:
                    timer.stack[-1][1] += w1 - w0
                    timer.stack[-1][2] += c1 - c0
            if keep_output:
                timer.outputs.append(out)
            return out

        setattr(owner, name, timed)
        return True


def timed_export(model, out, formats):
    """Run export with its phases timed; returns {"wall": {...}, "cpu": {...}, "total_*", "missing"}."""
    import numpy as np

    import s4op_micro.deploy as deploy
    import s4op_micro.quant.quantize as quantize
    from s4op_micro.quant.reference import IntegerReference

    timer = PhaseTimer()
    targets = [(quantize, "run_float", "calibration"), (deploy, "quantize_model", "quantization"),
               (deploy, "_float_predictions", "float model"), (deploy, "render_c", "rendering"),
               (deploy, "write_build_files", "rendering"), (deploy, "model_sizes", "sizes"),
               (deploy, "_export_tflm", "tflm")]
    missing = [f"{mod.__name__}.{name}" for mod, name, phase in targets if not timer.wrap(mod, name, phase)]
    timer.wrap(IntegerReference, "run_steps", "reference", keep_output=True)
    w0, c0 = timer.now()
    deploy.export(str(model), board=BOARD, out=str(out), formats=formats, force=True)
    w1, c1 = timer.now()
    timer.wall["other"] = (w1 - w0) - sum(timer.wall.values())
    timer.cpu["other"] = (c1 - c0) - sum(timer.cpu.values())
    np.savez(Path(out).parent / (Path(out).name + "_reference_outputs.npz"),
             **{f"out{i}": np.asarray(o) for i, o in enumerate(timer.outputs)})
    return {"wall": timer.wall, "cpu": timer.cpu, "total_wall": w1 - w0, "total_cpu": c1 - c0, "missing": missing}


def run_version(code_root, model, out, formats, label):
    """timed_export in a subprocess with code_root first on PYTHONPATH."""
    env = dict(os.environ, PYTHONPATH=str(code_root))
    res_file = Path(out).parent / f"{Path(out).name}_times.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phases-only", str(model), "--out", str(out),
           "--formats", formats, "--json", str(res_file)]
    print(f"=== {label}: export with the code of {code_root}", file=sys.stderr, flush=True)
    subprocess.run(cmd, env=env, check=True, cwd=code_root)
    res = json.loads(res_file.read_text())
    print(f"=== {label}: {res['total_wall']:.1f} s wall, {res['total_cpu']:.1f} s CPU", file=sys.stderr, flush=True)
    return res


def checkout(rev, dest):
    """The package, templates and firmware of git revision `rev`, as `git archive` writes them."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "s4op_micro", "templates", "firmware"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True, capture_output=True,
                          text=True).stdout.strip()


# --- identity of two exports ---------------------------------------------------------------------------

def compare_exports(a, b):
    """Every file of export directories a and b (qmodel.npz array by array, the rest byte by byte) and
    the reference outputs saved next to them. Returns a list of differences (empty: identical)."""
    import numpy as np

    a, b = Path(a), Path(b)
    diffs = []
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    diffs += [f"only in one export: {p}" for p in sorted(files_a ^ files_b)]
    for rel in sorted(files_a & files_b):
        if rel.suffix == ".npz":
            with np.load(a / rel) as za, np.load(b / rel) as zb:
                if set(za.files) != set(zb.files):
                    diffs.append(f"{rel}: different arrays")
                    continue
                for k in za.files:
                    x, y = za[k], zb[k]
                    if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y):
                        diffs.append(f"{rel}:{k} differs")
        elif (a / rel).read_bytes() != (b / rel).read_bytes():
            diffs.append(f"{rel} differs")
    ra, rb = (np.load(p.parent / f"{p.name}_reference_outputs.npz") for p in (a, b))
    if set(ra.files) != set(rb.files) or any(ra[k].dtype != rb[k].dtype or not np.array_equal(ra[k], rb[k])
                                             for k in ra.files):
        diffs.append("integer reference outputs differ")
    return diffs


# --- the benchmark ---------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default=BEFORE_REV,
                    help=f"git revision whose code to time as 'before' (default {BEFORE_REV}; 'none': skip)")
    ap.add_argument("--quick", action="store_true", help="this tree only (no baseline)")
    ap.add_argument("--formats", default="c", help="export formats (default c, export's default; c,tflm adds the TFLM phase)")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs of the benchmark model (default 1)")
    ap.add_argument("--work", help="where the data, model and exports go (default: a temporary directory)")
    ap.add_argument("--phases-only", metavar="MODEL", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick or (a.baseline or "").lower() == "none":
        a.baseline = None
    if a.phases_only:
        res = timed_export(a.phases_only, a.out, a.formats)
        Path(a.json).write_text(json.dumps(res))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model, trained = make_model(work, a.epochs)
        versions = []
        if a.baseline:
            try:
                rev = checkout(a.baseline, work / "baseline")
                versions.append((f"before ({a.baseline} = {rev})", work / "baseline", work / "export_before"))
            except (OSError, subprocess.CalledProcessError) as e:
                print(f"no baseline: cannot check out {a.baseline} ({e}); timing this tree only", file=sys.stderr)
                a.baseline = None
        versions.append(("after (this tree)", ROOT, work / "export_after"))
        results = {label: run_version(code, model, out, a.formats, label) for label, code, out in versions}
        diffs = compare_exports(work / "export_before", work / "export_after") if a.baseline else None
    labels = list(results)
    rows = []
    for phase in PHASES + ["total"]:
        row = {"phase": phase}
        for label in labels:
            r = results[label]
            short = label.split(" ")[0]
            row[f"{short} wall s"] = round(r["total_wall"] if phase == "total" else r["wall"][phase], 2)
            row[f"{short} CPU s"] = round(r["total_cpu"] if phase == "total" else r["cpu"][phase], 2)
        if len(labels) == 2:
            b, c = (results[l]["total_cpu"] if phase == "total" else results[l]["cpu"][phase] for l in labels)
            row["CPU speed-up"] = f"{b / c:.1f}x" if b >= 0.5 and c > 0.05 else ""   # not on noise-sized phases
        rows.append(row)
    columns = ["phase"] + [f"{l.split(' ')[0]} {k}" for l in labels for k in ("wall s", "CPU s")]
    columns += ["CPU speed-up"] if len(labels) == 2 else []
    notes = [
        f"Model: {trained.hyperparameters['n_layers']} layers, d_model {trained.hyperparameters['d_model']}, "
        f"d_state {trained.hyperparameters['d_state']} (S4D, post-norm BatchNorm), {trained.params} parameters, "
        f"trained {a.epochs} epoch(s) (seed 0) on generated data: {CLASSES} classes, {N_TRAIN} train (200 after "
        f"the validation split, all calibrate) / {N_TEST} test sequences of {LENGTH} steps, 1 channel.",
        f"export --board {BOARD} --formats {a.formats}; " + "; ".join(f"{l}" for l in labels) + ".",
        f"{os.cpu_count()} CPUs, shared with other jobs during the run: wall times vary with their load; CPU "
        "seconds (this process, its threads and finished child processes) are the steadier measure.",
        "Phases are exclusive (see the script's docstring); 'reference' is IntegerReference.run_steps "
        f"wherever export calls it ({N_TEST} test sequences, the test vectors, tflm's sequence).",
    ]
    if diffs is not None:
        notes.append("Identical results: every file of the two export directories (qmodel.npz array by array, "
                     "report.json, model.json, C sources) and the integer reference's outputs are bit for bit "
                     "the same." if not diffs else f"DIFFERENCES between the exports: {diffs}")
    missing = {m for r in results.values() for m in r["missing"]}
    if missing:
        notes.append(f"not found (counted in 'other'): {sorted(missing)}")
    from common import write_results

    write_results("export", rows, columns, "Export speed (4 layers, H=64, N=64; 200 x 430 calibration, 100 test)",
                  notes)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
