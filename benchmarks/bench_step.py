"""The generated step per core, before and after, in the same run: instructions per step, cycles
priced per core (range and source), the factor over the MAC bound, flash and RAM, and the phase
table.

    .venv/bin/python benchmarks/bench_step.py [--before REF] [--cores cortex-m7,cortex-m4] [--quick]
        -> benchmarks/results/step.json, step.md

Model: the 32/32/2 gunpoint model (`train --dataset gunpoint`, seed 0), exported with 8-bit
coefficients for each core. "after" is this checkout; "before" is the generator at git REF (default
BASELINE_REF: the C before issue 13's rewrite, with the profiler's phase markers), checked out into
a temporary git worktree and run with its own command line (`export`, then `run --emulator qemu
--profile --json`) on the same checkpoint, in the same run. The profile's instructions per step are
QEMU's exact counts of the measured s4op_step calls (they add up to the firmware's own count within
a few instructions); cycles are priced per executed instruction by s4op_micro.measure.cycles (TRM
tables for M0+/M3/M4, llvm-mca for M7/M55, else the CPI with its basis: see `cycles_source`).
MAC bound: MACs per step / 2 cycles (two 16-bit MACs per cycle, the DSP cores' SMLAD), the figure
DESIGN.md section 7 uses on every core.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import write_results  # noqa: E402
from s4op_micro.deploy import export  # noqa: E402
from s4op_micro.measure.profile import profile_export  # noqa: E402
from s4op_micro.train import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASELINE_REF = "1d02cb3"      # main after the layers refactor and the profiler, before the C rewrite
CORES = ["cortex-m0plus", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55"]
PHASE_CORES = ("cortex-m7", "cortex-m4")


def per_step(profile):
    """(instructions, cycles low, cycles high, MACs) per step of a PhaseProfile dict."""
    s = profile["steps"] or 1
    macs = sum(r["macs"] for r in profile["rows"])
    return profile["step_instructions"] / s, profile["cycles_low"] / s, profile["cycles_high"] / s, macs / s


def measure_after(ckpt, core, work):
    out = Path(work) / f"after-{core}"
    report = export(ckpt, board=core, out=out, force=True).report
    return report, profile_export(out, board=core).to_dict()


# Run in the REF checkout: the same checkpoint, less the config keys that REF's model does not know
# (options added since, at their defaults: the same model).
DOWNGRADE = """
import sys, torch
from s4op_micro.models.classifier import DEFAULTS
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
ckpt["config"] = {k: v for k, v in ckpt["config"].items() if k in DEFAULTS or k in ("d_input", "n_classes")}
torch.save(ckpt, sys.argv[2])
"""


def measure_before(ckpt, core, work, tree):
    """The REF checkout's own CLI on the same checkpoint: its export and its profile."""
    out = Path(work) / f"before-{core}"
    env = dict(os.environ, PYTHONPATH=str(tree))
    old_ckpt = Path(work) / "before-model.pt"
    subprocess.run([sys.executable, "-c", DOWNGRADE, str(ckpt), str(old_ckpt)], env=env, check=True, cwd=tree)
    run = [sys.executable, "-m", "s4op_micro"]
    subprocess.run([*run, "export", str(old_ckpt), "--board", core, "--out", str(out), "--force"], env=env, check=True,
                   capture_output=True, cwd=tree)
    res = subprocess.run([*run, "run", str(out), "--emulator", "qemu", "--profile", "--json"], env=env, check=True,
                         capture_output=True, text=True, cwd=tree)
    report = json.loads((out / "report.json").read_text())
    return report, json.loads(res.stdout.strip().splitlines()[-1])


def row(core, when, report, profile):
    insn, lo, hi, macs = per_step(profile)
    bound = macs / 2
    return {"core": core, "version": when, "instructions/step": round(insn), "cycles/step (low-high)":
            f"{lo:,.0f}-{hi:,.0f}", "x MAC bound": f"{lo / bound:.1f}-{hi / bound:.1f}", "MACs/step": round(macs),
            "model flash B": report["flash_bytes"], "model RAM B": report["ram_bytes"],
            "profile - firmware (insn/step)": round(profile["difference"] / (profile["steps"] or 1), 2),
            "cycles_source": profile["cycles_source"]}


def phase_rows(core, profile):
    s = profile["steps"] or 1
    return [{"core": core, "phase": r["phase"], "layer": "all" if r["layer"] is None else r["layer"],
             "instructions/step": round(r["instructions"] / s, 1), "share": f"{100 * r['share']:.1f}%",
             "MACs/step": round(r["macs"] / s, 1),
             "insn/MAC": f"{r['instructions_per_mac']:.2f}" if r["instructions_per_mac"] else "-"}
            for r in profile["rows"]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default=BASELINE_REF, help=f"git ref of the baseline generator (default {BASELINE_REF}); "
                                                           "'none' skips it")
    ap.add_argument("--cores", default=",".join(CORES), help="comma list of cores")
    ap.add_argument("--quick", action="store_true", help="cortex-m7 and cortex-m4 only")
    args = ap.parse_args()
    cores = ["cortex-m7", "cortex-m4"] if args.quick else args.cores.split(",")
    rows, phases = [], []
    with tempfile.TemporaryDirectory() as work:
        ckpt = train(dataset="gunpoint", out=Path(work) / "train", seed=0, progress=False).model
        tree = None
        if args.before != "none":
            tree = Path(work) / "before-tree"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.before], check=True,
                           capture_output=True)
        try:
            for core in cores:
                report, prof = measure_after(ckpt, core, work)
                if tree is not None:
                    rows.append(row(core, f"before ({args.before})", *measure_before(ckpt, core, work, tree)))
                rows.append(row(core, "after", report, prof))
                if core in PHASE_CORES:
                    phases += phase_rows(core, prof)
                print(f"{core}: {rows[-1]['instructions/step']} instructions/step", file=sys.stderr, flush=True)
        finally:
            if tree is not None:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
    sources = sorted({r.pop("cycles_source") for r in rows})
    write_results("step", rows, list(rows[0]), "The generated step per core: before and after, same run",
                  notes=["Model: gunpoint 32/32/2, 8-bit coefficients, seed 0; instructions: QEMU's exact count of "
                         "the s4op_step calls of the embedded test vectors (profile; within a few instructions of "
                         "the firmware's own count, column 'profile - firmware').",
                         "MAC bound = MACs/step / 2 (two 16-bit MACs per cycle).",
                         "model flash/RAM: s4op_model.c + s4op_weights.c, arm-none-eabi-gcc -Os (export report).",
                         *[f"cycles: {s}" for s in sources]])
    write_results("step_phases", phases, list(phases[0]), "Where the step's instructions go (after), per phase")


if __name__ == "__main__":
    main()
