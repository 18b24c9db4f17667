"""C generation (Jinja), sizes and the `export` command.

Files written into DIR (atomically: nothing on any error):
  include/s4op_model.h, src/s4op_model.c, src/s4op_weights.c, src/s4op_internal.h   the model
  include/s4op_testdata.h, src/s4op_testdata.c     N int8 test sequences, labels, reference scores
  model.json    every tensor: shape, scale, zero point, multipliers/shifts; "board"
  report.json   flash/RAM bytes, MACs and loads per step (total and per layer), accuracies
  qmodel.npz    the QuantizedModel (IntegerReference(load_qmodel(DIR)) reproduces the C)
  model.pt      the float checkpoint exported (float accuracy in `run`)

Sizes: `cost_report` counts const data and RAM exactly from shapes (what the templates declare)
plus a code-size estimate; `export` also compiles the sources with arm-none-eabi-gcc -Os for the
board's core and reports the measured text/data/bss when that compiler is installed
(`sizes_measured`), and checks the board's flash and RAM against the measured figures if any (a
model whose shape-only estimate exceeds the board by more than 10% is refused before calibration).
"""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import UserError
from . import quantize as qz

# Code of s4op_model.c (-Os, Thumb-2), measured with arm-none-eabi-gcc 12.2 for cortex-m4: used
# when no cross compiler is at hand and by the pruning controller's analytic oracle.
CODE_BYTES = {16: 1320, 8: 2400}
LAYER_DESC_BYTES = 200        # sizeof(s4op_layer_t) on a 32-bit target
FC_DESC_BYTES = 24


# --- shapes and costs --------------------------------------------------------------------------

def _shapes_from_model(model):
    cfg = model.config
    H = cfg["d_model"]
    layers = []
    for layer in model.layers:
        removed = set(layer.removed.tolist())
        active = layer.active.tolist()
        kernel = layer.kernel
        if hasattr(kernel, "mode_mask") and cfg["ssm"] == "s4d":
            modes = [int(v) for v in (kernel.mode_mask > 0).sum(-1).tolist()]
        else:
            modes = [layer.n // 2] * len(active)
        act = dict(zip(active, modes))
        kept = [c for c in range(H) if c not in removed]
        layers.append({"modes_per_channel": [act.get(c, 0) for c in kept], "n_active": len(active),
                       "n_removed": len(removed), "has_k": bool(cfg["prenorm"])})
    return {"d_input": cfg["d_input"], "n_classes": cfg["n_classes"], "d_model": H, "prenorm": bool(cfg["prenorm"]),
            "layers": layers}


def _shapes_from_qmodel(q):
    layers = []
    for L in q.layers:
        s = L["ssm"]
        layers.append({"modes_per_channel": np.diff(s["mode_start"]).tolist(), "n_active": int(np.sum(s["active"])),
                       "n_removed": q.meta["d_model"] - len(s["channels"]), "has_k": bool(s["has_k"])})
    m = q.meta
    return {"d_input": m["d_input"], "n_classes": m["n_classes"], "d_model": m["d_model"], "prenorm": m["prenorm"],
            "layers": layers}


def _fc_bytes(n_out, n_in):
    return n_out * n_in + n_out * (4 + 4 + 1) + FC_DESC_BYTES


def cost_report(model_or_qmodel, coeff_bits=8):
    """Flash/RAM bytes, MACs and loads per step, from shapes alone (no calibration needed).

    flash_bytes = const data (exactly what s4op_weights.c declares, padding aside) + CODE_BYTES.
    ram_bytes   = the static state struct + the decoder's stack buffer.
    macs_per_step counts the multiplies of one s4op_step with scores (per mode: 4 for A x, 1 for
    the input 2^sh, 2 for the readout). loads_per_step counts 32-bit loads on the DSP path (int16
    pairs and int8 quads are one load each)."""
    if isinstance(model_or_qmodel, qz.QuantizedModel):
        sh = _shapes_from_qmodel(model_or_qmodel)
        coeff_bits = model_or_qmodel.meta["coeff_bits"]
    else:
        sh = _shapes_from_model(model_or_qmodel)
    H, C, NC = sh["d_model"], sh["d_input"], sh["n_classes"]
    enc_flash, dec_flash = _fc_bytes(H, C), _fc_bytes(NC, H)
    flash = enc_flash + dec_flash + 4
    macs = H * C + NC * H
    loads = H * ((C + 3) // 4 + 3) + NC * (H // 2 + 3) + H
    total_modes, max_kept, layers = 0, 1, []
    for i, L in enumerate(sh["layers"]):
        mpc = L["modes_per_channel"]
        K, M = len(mpc), int(sum(mpc))
        total_modes += M
        max_kept = max(max_kept, K)
        per_mode = (4 + 4) if coeff_bits == 16 else (2 + 0)
        c8 = 4 * sum((m + 1) // 2 for m in mpc)
        f = 2 * K + 2 * (K + 1) + M * per_mode + M + (4 * M if L["has_k"] else 0) + K * 13
        f += (c8 + 12 * K) if coeff_bits == 8 else 0
        f += 512 + 2 * _fc_bytes(H, K) + (0 if sh["prenorm"] else 10 * H) + LAYER_DESC_BYTES
        m_macs = 7 * M + K + 2 * H * K + H + (0 if sh["prenorm"] else H)
        c_loads = M if coeff_bits == 16 else (M + 1) // 2
        m_loads = M * (2 + 1 + (1 if L["has_k"] else 0)) + c_loads + 7 * K + 2 * H * (2 * ((K + 3) // 4) + 3) \
            + 2 * K + H * (4 + (4 if not sh["prenorm"] else 0))
        ram_l = 4 * M * (2 if coeff_bits == 8 else 1)
        layers.append({"layer": i, "operators_active": L["n_active"], "operators_bypassed": K - L["n_active"],
                       "operators_removed": L["n_removed"], "modes": M, "flash_bytes": f, "ram_bytes": ram_l,
                       "macs": m_macs, "loads": m_loads})
        flash += f
        macs += m_macs
        loads += m_loads
    ram = 4 * H + 4 + 4 * (total_modes + 1) + (4 * (total_modes + 1) + 4 if coeff_bits == 8 else 0) \
        + H + (max_kept + 4) + 2 * H
    code = CODE_BYTES[coeff_bits]
    return {"flash_bytes": flash + code, "const_bytes": flash, "code_bytes": code, "code_bytes_estimated": True,
            "ram_bytes": ram, "macs_per_step": macs, "loads_per_step": loads, "coeff_bits": coeff_bits,
            "modes": total_modes, "layers": layers}


# --- rendering ---------------------------------------------------------------------------------

def carray(values, per_line=16):
    v = [int(x) for x in np.asarray(values).ravel()] or [0]
    return "\n".join("    " + ", ".join(str(x) for x in v[i : i + per_line]) + "," for i in range(0, len(v), per_line))


def _env():
    import jinja2

    from ..resources import templates_dir

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["carray"] = carray
    env.filters["csize"] = lambda v: max(int(np.asarray(v).size), 1)
    return env


def _fc_ctx(p):
    return {"w": p["w"], "bias": p["bias_eff"], "mult": p["mult"], "shift": p["shift"], "n_out": p["w"].shape[0],
            "n_in": p["w"].shape[1], "out_zp": p["out_zp"]}


def _c_words(c_re, c_im, mode_start, bits):
    """The readout coefficients as uint32 words: 16-bit, one per mode, re | im << 16; 8-bit, one per
    pair of modes of a channel (an odd count padded with zeros), re0 | re1 << 8 | im0 << 16 | im1 << 24."""
    c_re, c_im = np.asarray(c_re, np.int64), np.asarray(c_im, np.int64)
    if bits == 16:
        return (c_re & 0xFFFF) | (c_im & 0xFFFF) << 16
    out = []
    for j in range(len(mode_start) - 1):
        s, e = mode_start[j], mode_start[j + 1]
        for m in range(s, e, 2):
            re1, im1 = (c_re[m + 1], c_im[m + 1]) if m + 1 < e else (0, 0)
            out.append((c_re[m] & 0xFF) | (re1 & 0xFF) << 8 | (c_im[m] & 0xFF) << 16 | (im1 & 0xFF) << 24)
    return np.array(out, dtype=np.int64)


def template_context(q, source="model"):
    layers, off = [], 0
    for L in q.layers:
        s = L["ssm"]
        ms = np.asarray(s["mode_start"])
        ctx = {"n_ch": len(s["channels"]), "n_modes": int(ms[-1]), "state_off": off, "ch": s["channels"], "ms": ms,
               "sh": s["sh"], "k": s["k"] if s["has_k"] else None, "d": s["d"], "bias": s["bias"], "mult": s["mult"],
               "shift": s["shift"], "in_zp": s["in_zp"], "out_zp": s["out_zp"], "gelu": L["gelu"],
               "sigmoid": L["sigmoid"], "fc_a": _fc_ctx(L["fc_a"]), "fc_b": _fc_ctx(L["fc_b"]),
               "n_active": int(np.sum(s["active"])), "n_bypassed": int(len(s["channels"]) - np.sum(s["active"])),
               "n_removed": q.meta["d_model"] - len(s["channels"])}
        if q.meta["coeff_bits"] == 16:
            ctx["a"] = np.stack([s["a_re"], s["a_im"]], 1).ravel()
        else:
            ctx["code"] = np.stack([s["rho"], s["phi"]], 1).ravel()
            ctx["code_ch"] = np.stack([s["lg_lo"], s["lg_step"], s["dth"]], 1).ravel()
        ctx["c"] = _c_words(s["c_re"], s["c_im"], ms, q.meta["coeff_bits"])
        m, a = L["mul"], L["add"]
        ctx["mul"] = [m["in1_zp"], m["in2_zp"], m["mult"], m["shift"], m["out_zp"]]
        ctx["add"] = [a["in1_zp"], a["in2_zp"], a["out_zp"], a["in1_mult"], a["in1_shift"], a["in2_mult"],
                      a["in2_shift"], a["out_mult"], a["out_shift"]]
        ctx["post"] = L.get("post")
        off += int(ms[-1])
        layers.append(ctx)
    return {"version": __version__, "source": source, "meta": q.meta, "tensors": q.tensors, "layers": layers,
            "enc": _fc_ctx(q.enc), "dec": _fc_ctx(q.dec), "coeff_bits": q.meta["coeff_bits"], "total_modes": off,
            "max_kept": max([len(L["ssm"]["channels"]) for L in q.layers] + [1]), "pool_frac": qz.POOL_FRAC,
            "pool_zp": q.tensors[f"h{len(q.layers)}"]["zero_point"]}


MODEL_FILES = ["include/s4op_model.h", "src/s4op_internal.h", "src/s4op_model.c", "src/s4op_weights.c"]


def render_c(q, out_dir, source="model", test=None):
    """Write the C sources of q into out_dir; test = (x int8 (n, L, C), labels, scores) or None."""
    env, ctx = _env(), template_context(q, source)
    out_dir = Path(out_dir)
    for rel in MODEL_FILES:
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / rel).write_text(env.get_template(rel + ".j2").render(**ctx))
    if test is not None:
        x, labels, scores = test
        tctx = {"n": int(len(x)), "length": int(x.shape[1]) if len(x) else 0, "x": np.asarray(x).ravel(),
                "labels": np.asarray(labels).ravel(), "scores": np.asarray(scores).ravel(), "split": "test"}
        for rel in ("include/s4op_testdata.h", "src/s4op_testdata.c"):
            (out_dir / rel).write_text(env.get_template(rel + ".j2").render(**tctx))
    return out_dir


# --- QuantizedModel on disk ----------------------------------------------------------------------

def _flatten(prefix, obj, arrays):
    if isinstance(obj, dict):
        return {k: _flatten(f"{prefix}{k}.", v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_flatten(f"{prefix}{i}.", v, arrays) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        arrays[prefix[:-1]] = obj
        return {"__array__": prefix[:-1]}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _unflatten(obj, arrays):
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        return {k: _unflatten(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, arrays) for v in obj]
    return obj


def save_qmodel(q, path):
    arrays = {}
    tree = _flatten("", {"meta": q.meta, "tensors": q.tensors, "enc": q.enc, "layers": q.layers, "dec": q.dec,
                         "stats": q.stats}, arrays)
    np.savez_compressed(path, __tree__=np.frombuffer(json.dumps(tree).encode(), dtype=np.uint8), **arrays)


def load_qmodel(path):
    path = Path(path)
    if path.is_dir():
        path = path / "qmodel.npz"
    if not path.is_file():
        raise UserError(f"{path} not found: not an export directory (run `s4op-micro export` first)")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "__tree__"}
        tree = json.loads(bytes(z["__tree__"]).decode())
    return qz.QuantizedModel(**_unflatten(tree, arrays))


def model_json(q, board_name):
    """Every tensor's shape, scale and zero point, and every requantization's multiplier/shift."""
    def arr(a):
        a = np.asarray(a)
        return {"shape": list(a.shape), "dtype": str(a.dtype)}

    def fc(p, x, out):
        return {"input": x, "output": out, "weight": {"shape": list(p["w"].shape), "dtype": "int8", "zero_point": 0,
                                                      "scale": p["w_scale"].tolist()},
                "bias": {"shape": list(p["bias"].shape), "dtype": "int32"},
                "multiplier": p["mult"].tolist(), "shift": p["shift"].tolist()}

    n = len(q.layers)
    layers = []
    for i, L in enumerate(q.layers):
        s = L["ssm"]
        d = {"ssm": {"input": f"h{i}", "output": f"y{i}", "channels": s["channels"].tolist(),
                     "active": s["active"].tolist(), "mode_start": s["mode_start"].tolist(),
                     "state": {"dtype": "int16", "shape": [int(s["mode_start"][-1]), 2],
                               "gain_abs": np.abs(s["state_gain"]).tolist()},
                     "A": arr(s["a_re"]), "input_shift": s["sh"].tolist(), "const_input": arr(s["k"]),
                     "C": {"shape": [len(s["c_re"]), 2], "dtype": f"int{q.meta['coeff_bits']}",
                           "scale_per_channel": s["c_scale"].tolist()},
                     "D": arr(s["d"]), "bias": arr(s["bias"]), "multiplier": s["mult"].tolist(), "shift": s["shift"].tolist()},
             "gelu_table": {"input": f"y{i}", "output": f"g{i}", "shape": [256], "dtype": "int8"},
             "fc_a": fc(L["fc_a"], f"g{i}", f"a{i}"), "fc_b": fc(L["fc_b"], f"g{i}", f"b{i}"),
             "sigmoid_table": {"input": f"b{i}", "output": "sig", "shape": [256], "dtype": "int8"},
             "mul": {"inputs": [f"a{i}", "sig"], "output": f"z{i}", **L["mul"]},
             "add": {"inputs": [f"h{i}", f"z{i}"], "output": f"r{i}", **L["add"]}}
        if q.meta["coeff_bits"] == 8:
            d["ssm"]["A_code"] = {"rho": arr(s["rho"]), "phi": arr(s["phi"]), "per_channel": ["lg_lo", "lg_step", "dth"]}
        if "post" in L:
            d["post_norm"] = {"input": f"r{i}", "output": f"h{i + 1}", **fc(L["post"], f"r{i}", f"h{i + 1}")}
            d["post_norm"]["weight"]["shape"] = [len(L["post"]["w"])]
        layers.append(d)
    return {"format": "s4op-micro/int8-model-1", "board": board_name, "meta": q.meta, "tensors": q.tensors,
            "encoder": fc(q.enc, "x", "h0"), "layers": layers, "pool": {"input": f"h{n}", "output": "pool"},
            "decoder": fc(q.dec, "pool", "logits")}


# --- cross-compiled sizes -------------------------------------------------------------------------

def measure_sizes(src_dir, board):
    """(text+data, data+bss) of s4op_model.c + s4op_weights.c compiled -Os for the board's core,
    or None when arm-none-eabi-gcc is not installed."""
    gcc, size = shutil.which("arm-none-eabi-gcc"), shutil.which("arm-none-eabi-size")
    if not gcc or not size:
        return None
    src_dir = Path(src_dir)
    with tempfile.TemporaryDirectory() as tmp:
        objs = []
        for name in ("s4op_model", "s4op_weights"):
            obj = Path(tmp) / f"{name}.o"
            cmd = [gcc, f"-mcpu={board.cpu}", *board.arch_flags, "-Os", "-std=c99", "-ffunction-sections",
                   "-fdata-sections", "-DS4OP_NO_FLOAT", "-I", str(src_dir / "include"), "-c",
                   str(src_dir / "src" / f"{name}.c"), "-o", str(obj)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                raise UserError(f"arm-none-eabi-gcc failed on the generated {name}.c: {res.stderr.strip().splitlines()[0]}")
            objs.append(str(obj))
        out = subprocess.run([size, *objs], capture_output=True, text=True, check=True).stdout.splitlines()[1:]
    text = sum(int(line.split()[0]) for line in out)
    data = sum(int(line.split()[1]) for line in out)
    bss = sum(int(line.split()[2]) for line in out)
    return {"flash_bytes": text + data, "ram_bytes": data + bss, "text": text, "data": data, "bss": bss,
            "compiler": f"arm-none-eabi-gcc -mcpu={board.cpu} -Os"}


# --- export ----------------------------------------------------------------------------------------

FORMATS = ("c", "tflm")
EVAL_LIMIT = 1000     # test sequences the export evaluates (float and integer reference accuracy)


def _tflm_writer():
    """The call site of the TFLM exporter (s4op_micro.export.tflm.write_tflm(qmodel, out_dir, ...))."""
    try:
        from .tflm import write_tflm  # noqa: F401  (provided by the TFLM stage)
    except ImportError:
        raise UserError("--formats tflm is not available yet in this version of s4op-micro (no "
                        "s4op_micro.export.tflm); export with --formats c") from None
    return write_tflm


def parse_formats(formats):
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"unknown --formats {','.join(bad) or '(empty)'}; choose from {','.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def export_model(ckpt_path, board, out_dir, calib_samples=256, coeff_bits=8, formats=("c",), force=False,
                 test_vectors=8, data_args=None, progress=None):
    """Checkpoint -> DIR with the C model (+ other formats), model.json, report.json. Returns the
    report. data_args: an argparse-like namespace with dataset/data/root overrides (default: the
    checkpoint's own dataset)."""
    import argparse

    import torch

    from ..boards import get_board
    from ..checkpoint import load_model
    from ..outdir import atomic_output_dir
    from ..train import load_data_for
    from .reference import IntegerReference

    board = get_board(board)
    formats = parse_formats(formats)
    writers = {"tflm": _tflm_writer() if "tflm" in formats else None}
    if coeff_bits not in (8, 16):
        raise UserError(f"--coeff-bits must be 8 or 16, not {coeff_bits}")
    if calib_samples is not None and calib_samples < 1:
        raise UserError("--calib-samples must be >= 1")
    if test_vectors < 0:
        raise UserError("--test-vectors must be >= 0")
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise UserError(f"output directory {out_dir} already exists; pass --force to replace it")
    model, ckpt = load_model(ckpt_path)
    from .discretize import check_supported

    check_supported(model)
    est = cost_report(model, coeff_bits)   # shapes only: refuse a clearly too big model before calibrating
    if est["flash_bytes"] > 1.1 * board.flash_bytes or est["ram_bytes"] > 1.1 * board.ram_bytes:
        raise UserError(f"the model does not fit {board.name}: needs about {est['flash_bytes']} B flash and "
                        f"{est['ram_bytes']} B RAM (estimated), the board has {board.flash_bytes} B flash and "
                        f"{board.ram_bytes} B RAM; prune it or use --coeff-bits 8")
    data = load_data_for(ckpt, data_args or argparse.Namespace())
    calib = data.x_train[:calib_samples] if calib_samples else data.x_train
    q = quantize_model(model, calib, coeff_bits=coeff_bits)
    q.meta["board"] = board.name
    ref = IntegerReference(q)
    n_eval = min(len(data.x_test), EVAL_LIMIT)
    x_test, y_test = data.x_test[:n_eval], data.y_test[:n_eval]
    xq = ref.quantize_input(x_test)
    int_pred = ref.predict(xq) if n_eval else np.zeros(0, int)
    with torch.no_grad():
        float_pred = model(torch.as_tensor(x_test).float()).argmax(-1).numpy() if n_eval else np.zeros(0, int)
    nt = min(test_vectors, len(data.x_test))
    test = (xq[:nt], y_test[:nt], ref.run(xq[:nt]) if nt else np.zeros((0, q.meta["n_classes"]), np.int8))
    cost = cost_report(q)
    with atomic_output_dir(out_dir, force=force) as tmp:
        render_c(q, tmp, source=Path(ckpt_path).name, test=test)
        from ..firmware import write_build_files  # Makefile, CMakeLists.txt, firmware/ (issue 5)

        write_build_files(tmp, board)
        measured = measure_sizes(tmp, board)
        flash = measured["flash_bytes"] if measured else cost["flash_bytes"]
        ram = measured["ram_bytes"] if measured else cost["ram_bytes"]
        if flash > board.flash_bytes or ram > board.ram_bytes:
            raise UserError(f"the model does not fit {board.name}: needs {flash} B flash and {ram} B RAM, the board "
                            f"has {board.flash_bytes} B flash and {board.ram_bytes} B RAM; prune it or use --coeff-bits 8")
        report = {
            "board": board.name, "coeff_bits": coeff_bits, "formats": formats,
            "flash_bytes": flash, "ram_bytes": ram, "macs_per_step": cost["macs_per_step"],
            "loads_per_step": cost["loads_per_step"], "modes": cost["modes"], "layers": cost["layers"],
            "sizes_measured": measured, "estimate": {k: cost[k] for k in ("flash_bytes", "const_bytes", "code_bytes", "ram_bytes")},
            "conversion_error": q.meta["conversion_error"], "coefficients": q.stats,
            "float_accuracy": float((float_pred == y_test).mean()) if n_eval else None,
            "int_accuracy": float((int_pred == y_test).mean()) if n_eval else None,
            "float_int_agreement": float((int_pred == float_pred).mean()) if n_eval else None,
            "n_eval": int(n_eval), "calib_sequences": int(len(calib)), "test_vectors": int(nt),
            "dataset": data.name, "saturations": {"state": ref.sat_state, "activations": ref.sat_act},
        }
        (tmp / "model.json").write_text(json.dumps(model_json(q, board.name), indent=1))
        (tmp / "report.json").write_text(json.dumps(report, indent=1))
        save_qmodel(q, tmp / "qmodel.npz")
        shutil.copyfile(ckpt_path, tmp / "model.pt")
        if writers["tflm"]:
            writers["tflm"](q, tmp, model=model, calib_x=calib, board=board)
    return report


def quantize_model(model, calib_x, coeff_bits=8):
    return qz.quantize_model(model, calib_x, coeff_bits)
