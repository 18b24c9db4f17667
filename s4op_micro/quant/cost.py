"""Flash, RAM, MACs and loads per step of the generated C, from a model's shapes alone (no
calibration): what the export checks against the board before calibrating, what `prune` reports
for every candidate and what the analytic latency oracle prices.

flash_bytes = const data (exactly what s4op_weights.c declares, padding aside) + code_bytes.
ram_bytes   = the static state struct + the decoder's stack buffer.

code_bytes (arm-none-eabi-gcc -Os, cortex-m7) grows with the layers and with each layer's unrolled mode
loop (a switch over the channel's mode count, one case per mode up to the layer's largest count):
base + per layer (PER_LAYER + PER_MODE x that count) + PER_CHANNEL x d_model. The constants are a
least-squares fit to 26 compiled models (H 8-64, N 4-64, 1-4 layers, both widths): the largest error
was 154 B, 1.3% of the model's flash (tests/test_export.py checks a spread of shapes against the compiler).

Flash per layer (s4op_internal.h): channel records, mode records (c, B[, K + 2^14]) and A codes, the
GELU and sigmoid tables, the int16 mixer weights [H][Kp/8][2][8] and rows, the two ADD input tables.
RAM per mode: the state and the expanded Q15 A (8 bytes, both coefficient widths).
"""

import numpy as np

from .qmodel import QuantizedModel

# code bytes per coefficient width: (base, per layer, per unrolled mode of a layer, per residual channel)
CODE_BYTES = {8: (1266, 499, 38.3, 4.0), 16: (658, 477, 38.4, 3.5)}
UNROLL_LIMIT = 64             # codegen.c: a layer whose channels hold more modes runs a plain loop (not unrolled)

RQ = 16                       # sizeof(s4op_requant_t)


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
        ln = cfg.get("norm", "batch") == "layer"
        layers.append({"modes_per_channel": [act.get(c, 0) for c in kept], "n_active": len(active),
                       "n_removed": len(removed), "has_k": bool(cfg["prenorm"]) and not ln, "layer_norm": ln})
    return {"d_input": cfg["d_input"], "n_classes": cfg["n_classes"], "d_model": H, "prenorm": bool(cfg["prenorm"]),
            "layers": layers}


def _shapes_from_qmodel(q):
    layers = []
    for L in q.layers:
        s = L.ssm
        layers.append({"modes_per_channel": np.diff(s.mode_start).tolist(), "n_active": int(np.sum(s.active)),
                       "n_removed": q.meta.d_model - s.n_kept, "has_k": s.has_k,
                       "layer_norm": L.layer_norm is not None})
    m = q.meta
    return {"d_input": m.d_input, "n_classes": m.n_classes, "d_model": m.d_model, "prenorm": m.prenorm,
            "layers": layers}


def _n_kept(layer):
    return len(layer["modes_per_channel"])


def _fc_bytes(n_out, n_in):
    return n_out * n_in + n_out * (4 + RQ)          # weights + s4op_fc_row_t per row


def code_size(shapes, coeff_bits):
    base, per_layer, per_mode, per_channel = CODE_BYTES[coeff_bits]
    unrolled = [max(L["modes_per_channel"], default=0) for L in shapes["layers"]]
    return int(round(base + sum(per_layer + per_mode * (u if u <= UNROLL_LIMIT else 0) for u in unrolled)
                     + per_channel * shapes["d_model"]))


def cost_report(model_or_qmodel, coeff_bits=8):
    """Flash/RAM bytes, MACs and loads per step, from shapes alone (no calibration needed).

    flash_bytes = const data (exactly what s4op_weights.c declares, padding aside) + CODE_BYTES.
    ram_bytes   = the static state struct + the decoder's stack buffer.
    macs_per_step counts the multiplies of one s4op_step with scores (per mode: 4 for A x, 1 for
    the input 2^sh, 2 for the readout). loads_per_step counts 32-bit loads on the DSP path (int16
    pairs and int8 quads are one load each)."""
    if isinstance(model_or_qmodel, QuantizedModel):
        sh = _shapes_from_qmodel(model_or_qmodel)
        coeff_bits = model_or_qmodel.meta.coeff_bits
    else:
        sh = _shapes_from_model(model_or_qmodel)
    H, C, NC = sh["d_model"], sh["d_input"], sh["n_classes"]
    enc_flash, dec_flash = _fc_bytes(H, C), _fc_bytes(NC, H)
    flash = enc_flash + dec_flash
    macs = H * C + NC * H
    loads = H * ((C + 3) // 4 + 3) + NC * (H // 2 + 3) + H
    total_modes, max_kp, layers, ram_modes = 0, 8, [], 0
    pre_ln = 0
    for i, L in enumerate(sh["layers"]):
        ln = L.get("layer_norm", False)
        post = not sh["prenorm"] and not ln                             # post-norm BatchNorm, per mixer row
        ln_out = (_n_kept(L) if sh["prenorm"] else H) if ln else 0       # LayerNorm outputs
        pre_ln = max(pre_ln, ln_out if sh["prenorm"] else 0)
        mpc = L["modes_per_channel"]
        K, M = len(mpc), int(sum(mpc))
        Kp = max(8, -(-K // 8) * 8)
        total_modes += M
        max_kp = max(max_kp, Kp)
        mode_bytes = 8 + (4 if L["has_k"] else 0)                       # s4op_mode_t / s4op_mode_k_t
        code_bytes = 4 if coeff_bits == 16 else 2                       # Q15 A word / polar (rho, phi)
        f = K * (16 + RQ) + max(M, 1) * (mode_bytes + code_bytes) + (12 * K if coeff_bits == 8 else 0)
        f += 256 + 2 * H * 2 * Kp + H * (8 + 2 * RQ + (8 + RQ if post else 0)) + 256 + 2 * 1024
        f += ln_out * (12 + RQ)                                         # s4op_norm_row_t
        # LayerNorm: H squares, then per output H q, (H q - S1) R and sign n
        m_macs = 7 * M + K + 2 * H * K + H + (H if post else 0) + ((H + 3 * ln_out) if ln else 0)
        m_loads = M * (2 + 1 + (1 if L["has_k"] else 0)) + 7 * K + 2 * H * (Kp // 2 + 3) + 2 * K + H * (6 + (4 if post else 0)) \
            + ((H + 8 * ln_out) if ln else 0)
        ram_l = 8 * max(M, 1)
        ram_modes += ram_l
        layers.append({"layer": i, "operators_active": L["n_active"], "operators_bypassed": K - L["n_active"],
                       "operators_removed": L["n_removed"], "modes": M, "flash_bytes": f, "ram_bytes": ram_l,
                       "macs": m_macs, "loads": m_loads})
        flash += f
        macs += m_macs
        loads += m_loads
    ram = 4 * H + 4 + ram_modes + H + 2 * max_kp + 4 + 2 * H + pre_ln
    code = code_size(sh, coeff_bits)
    return {"flash_bytes": flash + code, "const_bytes": flash, "code_bytes": code, "code_bytes_estimated": True,
            "ram_bytes": ram, "macs_per_step": macs, "loads_per_step": loads, "coeff_bits": coeff_bits,
            "modes": total_modes, "layers": layers}
