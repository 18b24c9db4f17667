"""Exported models measured in QEMU: `run DIR --emulator qemu`, the emulator latency oracle
(`measure_cycles`, behind `prune --latency emulator`) and the per-layer latency table
(`profile --lut`, read by `prune --latency lut:FILE`).

What is measured: the benchmark firmware (firmware/bench_main.c) streams int8 test sequences through
the generated C one timestep at a time and counts the *emulated instructions* of every s4op_step
(QEMU -icount + SysTick: exact and repeatable). QEMU is not cycle-accurate, so a cycle figure is an
estimate: instructions x the core's assumed cycles per instruction (boards.CORE_CPI, with its basis),
and every report says so (`cycles_source`).

Test vectors: the firmware embeds them as a C array (src/s4op_testdata.c). `run` re-renders them for
the sequences asked for (--dataset/--data, --limit) with the exporter's own `render_c`, in a copy of
the export directory (DIR/build/run-BOARD/), and splits them over several firmware images when they
do not fit the emulated flash at once. The test vectors are harness, not model: the board's flash
budget is checked for the image without them.
"""

import dataclasses
import json
import os
import shutil
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..codegen.c import render_c
from ..core.boards import core_cpi, get_board
from ..core.checks import check_fits, emulated_board
from ..core.errors import UserError
from ..core.progress import log, quiet
from ..quant.quantize import quantize_model
from ..quant.reference import IntegerReference
from ..toolchain import board_io, records
from ..toolchain.build import build
from ..toolchain.qemu import run_qemu
from .scores import compare, first_mismatch

HARNESS_MARGIN = 32 * 1024      # flash kept free for the harness when sizing a chunk of test vectors
MEASURE_SEQUENCES = 2           # sequences per candidate for the latency oracle and the LUT
SYNTHETIC_LENGTH = 128          # timesteps of synthetic sequences (no data at hand)


# ---------------------------------------------------------------------------------------------
# boards and the cycle estimate


def same_core_emulated(board):
    """An emulated board with the cpu of `board` (the board itself when emulated)."""
    return emulated_board(board, "measure it in the emulator")

def cycles_source(board):
    cpi, basis = core_cpi(board)
    return (f"emulator instruction count (QEMU {board.qemu_machine} -icount), cycles estimated at "
            f"CPI={cpi:g} for {board.cpu} ({basis})")


# ---------------------------------------------------------------------------------------------
# building and running one project


def testdata_bytes(n, length, d_input, n_classes):
    """Flash taken by n embedded test sequences (x, labels, reference scores, two ints; padding)."""
    return n * length * d_input + n + n * n_classes + 8 + 12


def stage_project(export_dir, stage_dir, qmodel=None, test=None):
    """A copy of export_dir's include/ and src/ in stage_dir; with test = (x int8 (n, L, C), labels,
    scores) the test vectors are re-rendered by the exporter (render_c) for those sequences."""
    export_dir, stage_dir = Path(export_dir), Path(stage_dir)
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    for sub in ("include", "src"):
        shutil.copytree(export_dir / sub, stage_dir / sub)
    if test is not None:
        with tempfile.TemporaryDirectory() as tmp:
            render_c(qmodel, tmp, test=test)
            for rel in ("include/s4op_testdata.h", "src/s4op_testdata.c"):
                shutil.copyfile(Path(tmp) / rel, stage_dir / rel)
    return stage_dir


def measure_project(project, board, out_root, layers=True, plain=True, timeout=120.0, defines=(),
                    vector_bytes=0, model_board=None):
    """Build `project` for an emulated board and run it in QEMU: the plain firmware (totals, scores)
    and, with layers, a second one built with -DS4OP_PROFILE_LAYERS (per-layer costs; its hooks add
    a few instructions, so the totals come from the plain one). Builds and runs go two at a time.

    vector_bytes: flash of the embedded test vectors, not counted against the budget of
    model_board (default `board`). Returns {"plain": summary, "layers": summary, "build": BuildResult}."""
    board = emulated_board(board)
    budget = get_board(model_board or board)
    relaxed = dataclasses.replace(board, flash_bytes=max(board.flash_bytes, board.flash_size))
    variants = ([("plain", [])] if plain else []) + ([("layers", ["S4OP_PROFILE_LAYERS"])] if layers else [])

    def one(variant):
        tag, extra = variant
        res = build(project, relaxed, out_dir=Path(out_root) / tag, defines=[*defines, *extra])
        check_fits(budget, res.flash_bytes - vector_bytes, 0, "the firmware",
                   f"model + harness, without the {vector_bytes} B of test vectors")
        run = run_qemu(res.elf, board, timeout=timeout)
        return tag, res, records.summarize(run.lines)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, variants))
    out = {tag: summary for tag, _, summary in results}
    out["build"] = results[0][1]
    return out


def _combine(summaries):
    """One report from the summaries of several images (chunks of the test sequences)."""
    keys = ("scores", "preds", "labels", "seq_costs")
    out = {k: [v for s in summaries for v in s[k]] for k in keys}
    for k in ("n_sequences", "correct", "steps", "cost_total"):
        out[k] = sum(s[k] for s in summaries)
    n_layers = len(summaries[0]["layer_costs"])
    out["layer_costs"] = [sum(s["layer_costs"][i] for s in summaries) for i in range(n_layers)]
    out["unit"] = summaries[0]["unit"]
    return out


# ---------------------------------------------------------------------------------------------
# run DIR --emulator qemu


def run_export(export_dir, board, qmodel, test, timeout=120.0):
    """Every test sequence (s4op_micro.measure.scores.TestSet) through DIR's firmware in QEMU,
    checked against the integer reference; instructions per step in total and per layer."""
    board = emulated_board(board)
    x, y = np.asarray(test.x_int8, dtype=np.int8), np.asarray(test.y)
    if x.ndim == 2:
        x = x[..., None]
    n, length, d_in = x.shape
    n_classes = qmodel.meta.n_classes
    ref_scores = np.asarray(test.reference_scores, dtype=np.int64)

    per_seq = testdata_bytes(1, length, d_in, n_classes)
    model_flash = _model_flash(export_dir)
    room = board.flash_size - model_flash - HARNESS_MARGIN
    if room < per_seq:
        raise UserError(f"one {length}-step test sequence ({per_seq} B) does not fit the {board.flash_size} B of "
                        f"{board.qemu_machine}'s flash next to the model ({model_flash} B); pick a bigger core")
    chunk = max(1, room // per_seq)
    root = Path(export_dir) / "build" / f"run-{board.name}"
    plain, layered, firmware = [], [], None
    for k, start in enumerate(range(0, n, chunk)):
        sl = slice(start, min(n, start + chunk))
        project = stage_project(export_dir, root / f"chunk{k}" / "project", qmodel,
                                (x[sl], y[sl], ref_scores[sl].astype(np.int8)))
        log(f"run {board.name}", f"building and running sequences {sl.start}-{sl.stop - 1} of {n} in "
            f"QEMU {board.qemu_machine} (plain and per-layer firmware) in {root / f'chunk{k}'}")
        with quiet():
            m = measure_project(project, board, root / f"chunk{k}", layers=True, timeout=timeout,
                                vector_bytes=testdata_bytes(sl.stop - sl.start, length, d_in, n_classes))
        if m["layers"]["scores"] != m["plain"]["scores"]:
            raise UserError("the per-layer build printed other scores than the plain build; report this as a bug")
        plain.append(m["plain"])
        layered.append(m["layers"])
        firmware = firmware or m["build"]
    s, sl_ = _combine(plain), _combine(layered)

    c_scores = np.asarray(s["scores"], dtype=np.int64)
    if c_scores.shape != ref_scores.shape or s["labels"] != [int(v) for v in y]:
        raise UserError(f"the firmware printed {c_scores.shape} scores / other labels than the {n} sequences embedded; "
                        "was the output cut short?")
    steps = s["steps"]
    ips = s["cost_total"] / steps
    cpi, basis = core_cpi(board)
    layer_ips = [c / sl_["steps"] for c in sl_["layer_costs"]]
    result = compare(c_scores, test, "qemu")
    result.update({
        "board": board.name, "machine": board.qemu_machine, "cpu": board.cpu, "steps": int(steps),
        "instructions_total": int(s["cost_total"]),
        "instructions_per_step": ips,
        "cycles_per_step": ips * cpi, "cpi": cpi, "cpi_basis": basis,
        "cycles_source": cycles_source(board),
        "us_per_step": ips * cpi / board.clock_hz * 1e6, "clock_hz": board.clock_hz,
        "layers": [{"layer": i, "instructions_per_step": v, "cycles_per_step": v * cpi,
                    "share": v / ips if ips else 0.0} for i, v in enumerate(layer_ips)],
        "outside_layers_instructions_per_step": ips - sum(layer_ips),
        "seq_instructions_per_step": [c / length for c in s["seq_costs"]],
        "scores": c_scores.tolist(), "preds": s["preds"],
        # flash_bytes: the whole firmware image (model + harness + start-up + libc), without the test vectors
        "flash_bytes": firmware.flash_bytes - testdata_bytes(min(n, chunk), length, d_in, n_classes),
        "ram_bytes": firmware.ram_bytes, "images": len(plain), "icount_shift": board.icount_shift,
    })
    mismatch = first_mismatch(c_scores, test)
    if mismatch:
        result["first_mismatch"] = mismatch
    return result

def _model_flash(export_dir):
    """The model's flash (DIR/report.json), to size the chunks of test vectors next to it."""
    path = Path(export_dir) / "report.json"
    if not path.is_file():
        raise UserError(f"{path} is missing: {export_dir} is not a complete export; re-run `s4op-micro export`")
    try:
        return int(json.loads(path.read_text())["flash_bytes"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise UserError(f"{path} is corrupt (no flash_bytes); re-run `s4op-micro export` to re-create it") from None


def _inputs(model, data, n, seed=0, calib_x=None):
    """(calibration x, test x, test y) floats: calib_x (training inputs; its first n sequences are
    streamed) or data's when given, else synthetic N(0, 1) inputs (the models see normalized
    inputs) of SYNTHETIC_LENGTH steps. Instruction counts depend on the inputs only through a few
    data-dependent branches (0.2% between gunpoint and synthetic inputs)."""
    cfg = model.config
    if calib_x is not None:
        calib_x = np.asarray(calib_x, dtype=np.float32)
        if calib_x.ndim == 2:
            calib_x = calib_x[..., None]
        return calib_x, calib_x[:n], np.zeros(min(n, len(calib_x)), dtype=np.int64)
    if data is not None:
        calib = data.x_train[:64]
        return calib, data.x_test[:n], np.asarray(data.y_test[:n])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64 + n, SYNTHETIC_LENGTH, cfg["d_input"])).astype(np.float32)
    return x[:64], x[64:], np.zeros(n, dtype=np.int64)


def export_in_memory(model, out_dir, calib_x, test_x, test_y, coeff_bits=8):
    """Quantize a model and render its C + test vectors into out_dir (the exporter's functions)."""
    q = quantize_model(model, calib_x, coeff_bits=coeff_bits)
    ref = IntegerReference(q)
    xq = ref.quantize_input(test_x)
    render_c(q, out_dir, test=(xq, test_y, ref.run(xq)))
    return q, xq


def width_signature(model):
    """What an instruction count depends on: the model's configuration and, per layer, the active
    operators, the removed ones and the kept modes of each active operator (not which channels, not
    the weights: those change the count by a few data-dependent branches only)."""
    cfg = {k: v for k, v in model.config.items()}
    layers = []
    for layer in model.layers:
        mask = getattr(layer.kernel, "mode_mask", None)
        modes = (tuple(sorted(int(v) for v in (mask > 0).sum(-1).tolist())) if mask is not None
                 else (layer.n // 2,) * len(layer.active))
        layers.append((len(layer.active), len(layer.removed), modes))
    return json.dumps(cfg, sort_keys=True, default=str), tuple(layers)


_MEASURED = {}   # (board, where, width signature, data) -> measurement: identical widths measured once


def measure_model(model, board, data=None, layers=False, plain=True, timeout=120.0, n_sequences=MEASURE_SEQUENCES,
                  work_dir=None, coeff_bits=8, calib_x=None):
    """Export an in-memory model, build it for an emulated board and run it in QEMU. Returns
    {"instructions_per_step", "cycles_per_step", "layer_instructions_per_step", ...}; with plain=False
    only the per-layer build runs and the totals are those of that build (hooks included)."""
    board = emulated_board(board)
    calib, tx, ty = _inputs(model, data, n_sequences, calib_x=calib_x)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp, quiet():
        project = Path(tmp) / "project"
        export_in_memory(model, project, calib, tx, ty, coeff_bits)
        m = measure_project(project, board, Path(tmp) / "build", layers=layers, plain=plain, timeout=timeout,
                            vector_bytes=testdata_bytes(len(tx), tx.shape[1], tx.shape[2], model.config["n_classes"]))
    s = m["plain"] if plain else m["layers"]
    cpi, _ = core_cpi(board)
    ips = s["cost_total"] / s["steps"]
    out = {"instructions_per_step": ips, "cycles_per_step": ips * cpi, "cpi": cpi, "board": board.name,
           "source": cycles_source(board), "flash_bytes": m["build"].flash_bytes, "ram_bytes": m["build"].ram_bytes}
    if layers:
        L = m["layers"]
        out["layer_instructions_per_step"] = [c / L["steps"] for c in L["layer_costs"]]
        out["layered_instructions_per_step"] = L["cost_total"] / L["steps"]
    return out


def _fingerprint(x):
    if x is None:
        return None
    x = np.ascontiguousarray(x)
    return x.shape, zlib.crc32(x.tobytes())


def measure_cycles(model, board, where="emulator", calib_x=None, coeff_bits=8, data=None):
    """The emulator/board latency oracle's measurement (s4op_micro.prune.latency.MeasuredOracle):
    {"cycles_per_step", "source", "instructions_per_step", "cached", ...} of a (pruned) model,
    quantized on calib_x (training inputs; synthetic inputs when None). The one measurement cache:
    keyed by target, width signature, coefficient width and input content, so identical widths are
    built and run once per process."""
    if where not in ("emulator", "board"):
        raise UserError(f"unknown measurement target {where!r}; choose emulator or board")
    target = same_core_emulated(board) if where == "emulator" else get_board(board)
    key = (target.name, where, width_signature(model), coeff_bits, _fingerprint(calib_x),
           _fingerprint(data.x_test) if data is not None else None)
    if key not in _MEASURED:
        measured = (measure_model(model, target, data, coeff_bits=coeff_bits, calib_x=calib_x) if where == "emulator"
                    else _measure_on_board(model, target, data, calib_x, coeff_bits))
        _MEASURED[key] = dict(measured, cached=False)
    else:
        _MEASURED[key]["cached"] = True
    return dict(_MEASURED[key])


def _measure_on_board(model, board, data, calib_x=None, coeff_bits=8):
    board = get_board(board)
    port = os.environ.get("S4OP_PORT")
    if not port:
        raise UserError("--latency board flashes each kept model and reads its DWT cycles from the board's serial "
                        "port: set S4OP_PORT=/dev/ttyACM0 (and S4OP_PROBE=<pyocd probe id> with several probes), "
                        "or use --latency emulator / lut:FILE")
    calib, tx, ty = _inputs(model, data, MEASURE_SEQUENCES, calib_x=calib_x)
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        export_in_memory(model, project, calib, tx, ty, coeff_bits)
        board_io.flash(project, board, probe=os.environ.get("S4OP_PROBE"))
        s = records.summarize(records.parse_records(board_io.read_serial(port, timeout=120.0)))
    if s["unit"] != "cycle" or not s["cost_total"]:
        raise UserError(f"{board.name} reported no cycle counts (unit {s['unit']}); is the DWT present and enabled?")
    return {"cycles_per_step": s["cost_per_step"], "source": f"board DWT cycles ({board.name})", "board": board.name}


# ---------------------------------------------------------------------------------------------
# profile --lut: per-layer cost by width (operators kept), NetAdapt-style


def default_widths(h):
    return sorted({0, 1, h // 4, h // 2, (3 * h) // 4, h})


def measure_lut(model, narrowed, board, data=None, widths=None, timeout=120.0, progress=None):
    """The latency table of s4op_micro.prune.latency (format "s4op-micro/latency-lut-1") for an
    unpruned model, measured in QEMU.

    A layer's code path depends only on its own kept operators (its loops run over its kept channels
    and their modes; the layer's input and output width is d_model whatever is pruned), so one
    firmware per width, with every layer at that width, measures each layer at that width
    (-DS4OP_PROFILE_LAYERS gives per-layer counts). One more, at half width with the other half
    *removed* instead of bypassed, gives `removed_column`. `fixed` (encoder, pooling, decoder, calls)
    is the plain full-width total minus its layers, so the table reproduces the plain total at full
    width and the hooks' constant overhead cancels at the other widths.

    narrowed(kind, w): the model with every layer's operators w..H-1 "bypassed" or "removed" (the
    pruning stage's rebuild, handed in: measuring sits below pruning).

    Costs are cycles estimated as instructions x CPI (the table keeps the instructions as well)."""
    board = same_core_emulated(board)
    cfg = model.config
    H, n_layers = cfg["d_model"], cfg["n_layers"]
    if any(len(L.active) != H or len(L.removed) for L in model.layers):
        raise UserError("profile --lut measures an unpruned model (every operator active); pass the base checkpoint, "
                        "not a pruned one")
    widths = sorted(set(default_widths(H) if widths is None else widths))
    if any(not 0 <= w <= H for w in widths) or len(widths) < 2:
        raise UserError(f"--widths must list two or more operator counts between 0 and d_model={H}")
    half = H // 2

    variants = {("width", w): narrowed("bypassed", w) for w in sorted(set(widths) | {half, H})}
    variants[("removed", half)] = narrowed("removed", half)

    def one(item):
        key, m = item
        res = measure_model(m, board, data, layers=True, plain=key == ("width", H), timeout=timeout)
        if progress:
            progress(f"{board.name}: {key[0]} {key[1]}/{H} operators: "
                     f"{res['layer_instructions_per_step']} instructions/step per layer")
        return key, res

    with ThreadPoolExecutor(max_workers=2) as pool, quiet():
        measured = dict(pool.map(one, variants.items()))
    cpi, basis = core_cpi(board)
    full = measured[("width", H)]
    fixed_insn = full["instructions_per_step"] - sum(full["layer_instructions_per_step"])
    layers = []
    for j in range(n_layers):
        insn = {str(w): measured[("width", w)]["layer_instructions_per_step"][j] for w in widths}
        removed_insn = (measured[("width", half)]["layer_instructions_per_step"][j]
                        - measured[("removed", half)]["layer_instructions_per_step"][j]) / (H - half)
        layers.append({"width": {k: v * cpi for k, v in insn.items()}, "removed_column": removed_insn * cpi,
                       "instructions": insn, "removed_column_instructions": removed_insn})
    n_seq = MEASURE_SEQUENCES
    return {
        "format": "s4op-micro/latency-lut-1", "board": board.name, "source": "emulator instruction count",
        "cycles": f"estimated: emulator instructions x CPI {cpi:g} ({board.cpu}: {basis})", "cpi": cpi,
        "model": {"d_model": H, "d_state": cfg["d_state"], "n_layers": n_layers},
        "fixed": fixed_insn * cpi, "fixed_instructions": fixed_insn,
        "full_width_instructions_per_step": full["instructions_per_step"],
        "layers": layers,
        "measured_with": {"qemu_machine": board.qemu_machine, "icount_shift": board.icount_shift,
                          "sequences": n_seq, "length": int(data.x_test.shape[1]) if data is not None else SYNTHETIC_LENGTH,
                          "inputs": data.name if data is not None else "synthetic N(0, 1)"},
    }

