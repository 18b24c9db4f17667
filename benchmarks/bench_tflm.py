"""Our generated C vs TensorFlow Lite Micro on the same quantized model, same input stream.

    .venv/bin/python benchmarks/bench_tflm.py      -> benchmarks/results/tflm.json, tflm.md

Instructions per timestep, both on this x86 host, both counted exactly with valgrind --tool=callgrind:
  - our C: the host driver (templates/host, -O2, scalar path) streaming N and 2N steps, scores every
    step; per step = (I(2N) - I(N)) / N, so start-up and I/O cancel out;
  - TFLM: the tflite-micro package's interpreter (reference kernels) inside a small Python driver,
    counting only inside MicroInterpreter::Invoke (callgrind --toggle-collect), N and 2N steps as
    above. The interpreter's fixed cost is measured apart: a one-op model (cost of one Invoke) and a
    chain of 64 one-element ops (cost per operator dispatched). Two TFLM models: ours, written
    directly as a flatbuffer from the integer model (bit-exact), and the one a user gets from the
    standard converter: the same float streaming step written in TensorFlow (state, pooled sum and
    step count as explicit inputs/outputs; GELU as x*sigmoid(1.702x), this TFLM having no GELU
    kernel; the mean's division folded out, 16x8 having no DIV kernel: the scores are count x the
    mean's, the same argmax), tf.lite.TFLiteConverter with 16x8 quantization (int16 activations,
    int8 weights), its state requantized from each output's scale to its input's between steps.
Memory: ours = flash and RAM of s4op_model.c + s4op_weights.c compiled -Os for cortex-m4
(arm-none-eabi-gcc, what report.json says; the estimate from shapes without it); TFLM = the
.tflite's bytes (flash) + the arena measured in the runtime with our stated margin (RAM). TFLM's own
code (interpreter + kernels) is not counted: it only adds to TFLM's side.
Models: untrained but calibrated (instruction counts and sizes do not depend on the weights), the
model size of `train --dataset digits` and the S4D block measured in DESIGN.md section 4.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import write_results  # noqa: E402
from s4op_micro.core.boards import get_board  # noqa: E402
from s4op_micro.quant.quantize import quantize_model  # noqa: E402
from s4op_micro.quant.reference import IntegerReference  # noqa: E402
from s4op_micro.codegen import tflm  # noqa: E402
from s4op_micro.measure import tflm_runtime as rt  # noqa: E402
from s4op_micro.codegen.c import render_c  # noqa: E402
from s4op_micro.quant.cost import cost_report  # noqa: E402
from s4op_micro.toolchain.build import model_sizes  # noqa: E402
from s4op_micro.toolchain.hostrun import compile_host  # noqa: E402
from s4op_micro.codegen.tflm_graph import Graph  # noqa: E402
from s4op_micro.models import SequenceClassifier  # noqa: E402
from benchmarks.tflm_converter import converter_model, converter_per_step  # noqa: E402

CONFIGS = [  # name, model config
    ("digits-size (H=32, N=32, 2 layers)", dict(d_model=32, d_state=32, n_layers=2)),
    ("DESIGN block (H=64, N=64, 1 layer)", dict(d_model=64, d_state=64, n_layers=1)),
]
N_C, N_TFLM = 400, 20           # steps of the shorter run (the longer one has twice as many)
INVOKE = "*MicroInterpreter::Invoke*"
DRIVER = """
import sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
model, arena, xs, n, out = open(sys.argv[1], "rb").read(), int(sys.argv[2]), np.load(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
it = runtime.Interpreter.from_bytes(model, arena_size=arena)
scores = []
for t in range(n):
    it.set_input(xs[t % len(xs)][None], 0)
    it.invoke()
    scores.append(it.get_output(0)[0].copy())
np.save(out, np.array(scores))
"""


def callgrind(cmd, stdin=None, toggle=None):
    """Instructions executed by cmd (only inside functions matching `toggle` when given)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "callgrind.out"
        args = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        args += [f"--toggle-collect={toggle}"] if toggle else []
        env = {**os.environ, "PYTHONHASHSEED": "0"}      # the same Python start-up in both runs
        subprocess.run(args + [str(c) for c in cmd], input=stdin, capture_output=True, check=True, env=env)
        for line in out.read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise RuntimeError("no callgrind totals")


def model_for(cfg, seed=0):
    """(float model, its calibration inputs, int8 model, the int8 input stream, the float stream)."""
    torch.manual_seed(seed)
    m = SequenceClassifier(1, 10, **cfg)
    with torch.no_grad():
        for bn in m.norms:
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2)
    m.eval()
    rng = np.random.default_rng(seed)
    calib = rng.normal(size=(32, 64, 1)).astype(np.float32)
    q = quantize_model(m, calib, coeff_bits=8)
    xs = rng.normal(size=(1, 2 * max(N_C, N_TFLM), 1))
    return m, calib, q, q.quantize_input(xs)[0], xs[0].astype(np.float32)


def c_per_step(q, xs, work):
    render_c(q, work / "c")
    exe = compile_host(work / "c", work / "build", debug=False)

    def run(n):
        payload = np.array([1, n, 1], "<i4").tobytes() + xs[:n].tobytes()
        return callgrind([exe], stdin=payload)

    res = subprocess.run([exe], input=np.array([1, N_C, 1], "<i4").tobytes() + xs[:N_C].tobytes(), capture_output=True)
    scores = np.frombuffer(res.stdout, np.int8).reshape(N_C, -1)
    return (run(2 * N_C) - run(N_C)) / N_C, scores


def tflm_runs(model_bytes, arena, xs, n, work, toggle=INVOKE):
    (work / "model.tflite").write_bytes(model_bytes)
    np.save(work / "xs.npy", xs)
    (work / "driver.py").write_text(DRIVER)
    cmd = [sys.executable, work / "driver.py", work / "model.tflite", arena, work / "xs.npy", n, work / "out.npy"]
    return callgrind(cmd, toggle=toggle), np.load(work / "out.npy")


def tflm_per_step(model_bytes, arena, xs, work, toggle=INVOKE):
    i1, scores = tflm_runs(model_bytes, arena, xs, N_TFLM, work, toggle)
    i2, _ = tflm_runs(model_bytes, arena, xs, 2 * N_TFLM, work, toggle)
    return (i2 - i1) / N_TFLM, scores


def trivial_model(n_ops):
    """x int32 (1,) -> n_ops chained one-element ADDs: the interpreter's cost per Invoke and per op."""
    g = Graph("trivial")
    x = g.tensor("x", "int32", [1])
    y = x
    for _ in range(n_ops):
        y = g.binary("ADD", y, np.int32([1]), "y")
    return g.serialize([x], [y])


def interpreter_overhead(work):
    costs = {}
    for n in (1, 65):
        mb = trivial_model(n)
        w = work / f"trivial{n}"
        w.mkdir()
        (w / "model.tflite").write_bytes(mb)
        np.save(w / "xs.npy", np.zeros((1, 1), np.int32))
        (w / "driver.py").write_text(DRIVER.replace("xs[t % len(xs)][None]", "xs[t % len(xs)]"))
        cmd = [sys.executable, w / "driver.py", w / "model.tflite", 65536, w / "xs.npy"]
        i1 = callgrind(cmd + [N_TFLM, w / "out.npy"], toggle=INVOKE)
        i2 = callgrind(cmd + [2 * N_TFLM, w / "out.npy"], toggle=INVOKE)
        costs[n] = (i2 - i1) / N_TFLM
    return costs[1], (costs[65] - costs[1]) / 64


def main():
    if not shutil.which("valgrind"):
        sys.exit("valgrind is needed (apt-get install valgrind)")
    board = get_board("cortex-m4")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        per_invoke, per_op = interpreter_overhead(tmp)
        for name, cfg in CONFIGS:
            work = tmp / f"m{len(rows)}"
            work.mkdir()
            m, calib, q, xs, xs_float = model_for(cfg)
            want = IntegerReference(q).run_steps(xs[None])[0]
            c_insn, c_scores = c_per_step(q, xs, work)
            model_bytes, info = tflm.build_tflite(q)
            arena = rt.measure_arena(model_bytes)
            size = rt.arena_size(arena["needed"])
            t_insn, t_scores = tflm_per_step(model_bytes, size, xs, work)
            t_all, _ = tflm_per_step(model_bytes, size, xs, work, toggle=None)
            conv_bytes, conv_io = converter_model(m, calib)
            conv_arena = rt.arena_size(rt.measure_arena(conv_bytes)["needed"])
            conv_insn = converter_per_step(conv_bytes, conv_io, conv_arena, xs_float, work, callgrind, INVOKE, N_TFLM)
            assert (c_scores == want[:N_C]).all() and (t_scores == want[:N_TFLM]).all(), "outputs differ"
            sizes = model_sizes(work / "c", board) or cost_report(q)
            ours_mem = sizes["flash_bytes"] + sizes["ram_bytes"]
            tflm_mem = len(model_bytes) + size
            dispatch = per_invoke + per_op * (info["n_operators"] - 1)
            rows.append({
                "model": name, "modes": int(sum(l.ssm.n_modes for l in q.layers)),
                "c_insn_per_step": round(c_insn), "tflm_insn_per_step": round(t_insn),
                "insn_ratio": round(t_insn / c_insn, 1),
                "tflm_operators": info["n_operators"], "tflm_dispatch_insn": round(dispatch),
                "tflm_dispatch_share": round(dispatch / t_insn, 3),
                "tflm_insn_per_step_with_python": round(t_all),
                "c_flash_bytes": sizes["flash_bytes"], "c_ram_bytes": sizes["ram_bytes"],
                "tflm_model_bytes": len(model_bytes), "tflm_arena_bytes": size,
                "tflm_arena_needed_bytes": arena["needed"], "memory_ratio": round(ours_mem / tflm_mem, 3),
                "bit_exact_steps": N_TFLM,
                "converter_insn_per_step": round(conv_insn), "converter_ratio": round(conv_insn / c_insn, 1),
                "converter_model_bytes": len(conv_bytes), "converter_arena_bytes": conv_arena,
            })
            print(rows[-1], flush=True)
    publish(rows, per_invoke, per_op)


def publish(rows, per_invoke, per_op):
    worst_insn, worst_mem = min(r["insn_ratio"] for r in rows), max(r["memory_ratio"] for r in rows)
    notes = [
        f"Targets: >= 5x fewer instructions per step: {'met' if worst_insn >= 5 else 'NOT met'} (worst {worst_insn}x); "
        f"<= 50% of TFLM's memory: {'met' if worst_mem <= 0.5 else 'NOT met'} (worst {worst_mem:.0%}).",
        "Instructions: x86-64 host, valgrind --tool=callgrind, per step = (I(2N) - I(N)) / N with N = "
        f"{N_C} (C) and {N_TFLM} (TFLM); TFLM counted inside MicroInterpreter::Invoke only "
        "(tflm_insn_per_step_with_python adds the Python driver's set_input/invoke/get_output).",
        f"TFLM fixed cost: {per_invoke:.0f} instructions per Invoke of a one-op model, {per_op:.0f} per extra "
        "operator dispatched; tflm_dispatch_insn = that cost for the model's operator count.",
        "c_flash/c_ram: s4op_model.c + s4op_weights.c, arm-none-eabi-gcc -Os -mcpu=cortex-m4 (report.json's "
        "figures); TFLM: .tflite bytes + measured arena (+10% + 1 KiB); TFLM's interpreter and kernel code "
        "is not counted (it would add to TFLM's side). memory_ratio = ours / TFLM.",
        "Both outputs equal the integer reference at every compared step (the TFLM graph is bit-exact).",
        "The TFLM graph is the exact one of s4op_micro/codegen/tflm.py (16x16 BATCH_MATMUL state update, "
        "int32 readout); its largest cost is BATCH_MATMUL's per-mode batch loop (one 2 x C product per mode, C = 3-4).",
        "Models are untrained but calibrated; costs and sizes depend on shapes only.",
    ]
    notes.append("converter_*: the standard tf.lite.TFLiteConverter model of the same float step (16x8), in the same "
                 "TFLM runtime, counted the same way; converter_ratio = its instructions per step / our C's.")
    write_results("tflm", rows, ["model", "modes", "c_insn_per_step", "tflm_insn_per_step", "insn_ratio",
                                 "converter_insn_per_step", "converter_ratio", "converter_model_bytes",
                                 "converter_arena_bytes",
                                 "tflm_operators", "tflm_dispatch_share", "c_flash_bytes", "c_ram_bytes",
                                 "tflm_model_bytes", "tflm_arena_bytes", "memory_ratio"],
                  "Generated C vs TensorFlow Lite Micro (same quantized model, same input)", notes)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
