"""Quantization benchmark: every shipped dataset's default configuration, trained once per norm
(BatchNorm, folded at export; LayerNorm, integer mean/variance/isqrt in the export), exported with 8-
and 16-bit recurrence coefficients and run in QEMU (cortex-m7) on the test set.

    python benchmarks/bench_quant.py [--datasets gunpoint,digits] [--norms batch,layer] [--limit N] [--digits-limit N]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from s4op_micro.deploy import export, run  # noqa: E402
from s4op_micro.train import train  # noqa: E402
from s4op_micro.train import DATASET_DEFAULTS  # noqa: E402

BOARD = "cortex-m7"
COLUMNS = ["dataset", "norm", "coeff_bits", "n_test", "float", "int8 ref", "firmware", "mismatches", "flash_bytes",
           "ram_bytes", "instructions/step", "cycles/step", "MAC-bound cycles/step", "x MAC bound"]


def bench(datasets, norms, limit, digits_limit, work):
    rows, sources = [], set()
    for name, norm in ((name, norm) for name in datasets for norm in norms):
        d = Path(work) / name / norm
        start = time.time()
        train(dataset=name, out=d / "train", force=True, progress=False, norm=norm)
        print(f"{name} ({norm} norm): trained in {time.time() - start:.0f} s", file=sys.stderr, flush=True)
        n = digits_limit if name == "digits" and digits_limit else limit
        for bits in (8, 16):
            out = d / f"c{bits}"
            exp = export(d / "train" / "model.pt", board=BOARD, out=out, coeff_bits=bits, formats="c", force=True,
                         dataset=name).report
            start = time.time()
            res = run(out, target="qemu", dataset=name, limit=n or None)
            sources.add(res.get("cycles_source"))
            rows.append({"dataset": name, "norm": norm, "coeff_bits": bits, "n_test": res["n_sequences"],
                         "float": res["float_accuracy"], "int8 ref": res["reference_accuracy"],
                         "firmware": res["accuracy"], "mismatches": res["mismatches"],
                         "flash_bytes": res.get("flash_bytes", exp.get("flash_bytes")),
                         "ram_bytes": res.get("ram_bytes", exp.get("ram_bytes")),
                         "instructions/step": int(round(res["instructions_per_step"])),
                         "cycles/step": int(round(res["cycles_per_step"])),
                         "export_int_accuracy": exp.get("int_accuracy"), "macs_per_step": exp.get("macs_per_step"),
                         # Cortex-M7 limit: two 16-bit MACs per cycle (SMLAD), nothing else counted
                         "MAC-bound cycles/step": exp["macs_per_step"] // 2,
                         "x MAC bound": round(res["cycles_per_step"] / (exp["macs_per_step"] / 2), 1)})
            print(f"{name} {norm} norm {bits}-bit: {rows[-1]} ({time.time() - start:.0f} s in QEMU)", file=sys.stderr, flush=True)
    return rows, sources


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASET_DEFAULTS))
    ap.add_argument("--norms", default="batch,layer", help="comma list of batch, layer (--norm of train)")
    ap.add_argument("--limit", type=int, help="test sequences per dataset (default: all)")
    ap.add_argument("--digits-limit", type=int, help="test sequences for digits only (default: all)")
    ap.add_argument("--quick", action="store_true", help="at most 100 test sequences per dataset")
    ap.add_argument("--work", help="where models go (default: a temporary directory)")
    a = ap.parse_args(argv)
    limit = a.limit or (100 if a.quick else None)
    with tempfile.TemporaryDirectory() as tmp:
        rows, sources = bench(a.datasets.split(","), a.norms.split(","), limit, a.digits_limit, a.work or tmp)
    partial = [f"{r['dataset']} ({r['n_test']})" for r in rows if r["dataset"] == "digits" and a.digits_limit]
    notes = [
        f"Board {BOARD}; default configurations of s4op_micro.train.DATASET_DEFAULTS, seed 0, trained once per "
        "dataset and norm (`train --norm batch|layer`, post-norm); the same checkpoint is exported with 8- and "
        "16-bit recurrence coefficients (activations int8), without QAT.",
        "float = PyTorch model, int8 ref = numpy integer reference of the exported model, firmware = the "
        "generated C built for the board and run in QEMU; mismatches = test sequences whose firmware scores "
        "differ from the integer reference.",
        "instructions/step: QEMU instruction count (per time step); cycles/step: estimated from the instruction "
        f"count with the board's CPI ({'; '.join(sorted(s for s in sources if s))}), not measured on hardware.",
        "flash/RAM: as reported by `run`/`export` (arm-none-eabi-gcc sizes of the model sources).",
        "MAC-bound cycles/step: macs_per_step / 2 (a Cortex-M7 retiring two 16-bit MACs per cycle and nothing "
        "else); x MAC bound = estimated cycles / that bound: how far the step is from pure multiply-accumulate.",
        "Test set: " + (f"first {limit} sequences per dataset" if limit else "full test set")
        + (f"; digits limited to {a.digits_limit} sequences ({', '.join(partial)}) for time" if partial else "") + ".",
    ]
    write_results("quant", rows, COLUMNS, "Quantization: BatchNorm and LayerNorm models, 8- vs 16-bit recurrence "
                  "coefficients, firmware in QEMU (cortex-m7)",
                  notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
