"""The C model: a QuantizedModel rendered (Jinja) into plain C99 sources.

Files written into DIR:
  include/s4op_model.h, src/s4op_model.c, src/s4op_weights.c, src/s4op_internal.h   the model
  src/s4op_kernels.h                               the arithmetic kernels (static, from firmware/)
  include/s4op_testdata.h, src/s4op_testdata.c     N int8 test sequences, labels, reference scores
"""

from pathlib import Path

import numpy as np

from .. import __version__
from ..quant import quantize as qz
from ..quant.cost import UNROLL_LIMIT
from ..core.resources import firmware_dir
from .env import environment

INT31 = 2 ** 31


def _rq(r, i=None):
    """A requantization record (s4op_requant_t) of Requant r (channel i, or a per-tensor record)."""
    m, sh = (r.mult, r.shift) if i is None else (r.mult[i], r.shift[i])
    m, sh = int(m), int(sh)
    left, right = max(sh, 0), max(-sh, 0)
    return {"multiplier": m, "left": left, "right": right, "half": (1 << (right - 1)) if right else 0}


def _narrow(r, bound):
    """True when every channel's requantization may use the high-word form (s4op_kernels.h
    requant_narrow): |x| 2^(left+1) < 2^31 for every reachable x, and right >= 1."""
    left, right = np.broadcast_to(r.left, np.shape(bound)), np.broadcast_to(r.right, np.shape(bound))
    bound = np.asarray(bound, dtype=object)
    return bool(np.all(right >= 1) and np.all(left <= 29)
                and all(int(b) * (2 << int(lf)) < INT31 for b, lf in zip(np.ravel(bound), np.ravel(left))))


def _left(r):
    """The left shift of every record of a site when they all agree (the C then has it as a literal), else None."""
    lefts = set(np.ravel(r.left).tolist())
    return int(lefts.pop()) if len(lefts) == 1 else None


def _fc_ctx(p, x_max=128):
    return {"w": p.w, "rows": [{"bias": int(p.bias_eff[o]), "out": _rq(p.rq, o)} for o in range(p.n_out)],
            "n_out": p.n_out, "n_in": p.n_in, "out_zp": p.out_zp, "narrow": _narrow(p.rq, p.acc_bound(x_max)), "left": _left(p.rq)}


def _i32(v):
    """A uint32 bit pattern as the int32 the C stores."""
    v = int(v) & 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _words(lo, hi):
    """int16 lanes lo | hi << 16 as int32 words."""
    return [_i32((int(a) & 0xFFFF) | (int(b) & 0xFFFF) << 16) for a, b in zip(lo, hi)]


def _layer_ctx(q, i, L, off):
    s, H = L.ssm, q.meta.d_model
    ms = np.asarray(s.mode_start)
    K, M = s.n_kept, s.n_modes
    Kp = max(8, -(-K // 8) * 8)                   # mixer inputs padded to a multiple of 8 (one chunk: four int16 pairs)
    bound = s.acc_bound()
    channels = [{"index": int(s.channels[j]), "n_modes": int(ms[j + 1] - ms[j]), "d": int(s.d[j]),
                 "bias": int(s.bias[j]), "out": _rq(s.out, j)} for j in range(K)]
    c_words = _words(s.c_re, s.c_im)
    modes = [{"c": c_words[m], "b": 1 << int(s.sh[m]), "k14": int(s.k[m]) + (1 << 14)} for m in range(M)]
    ctx = {"i": i, "K": K, "Kp": Kp, "M": M, "Mp": max(M, 1), "state_off": off, "channels": channels, "modes": modes,
           "has_k": s.has_k, "in_zp": s.in_zp, "y_zp": s.out_zp, "ssm_narrow": _narrow(s.out, bound), "ssm_left": _left(s.out),
           "n_active": int(np.sum(s.active)), "n_bypassed": int(K - np.sum(s.active)), "n_removed": H - K,
           "gelu": L.gelu, "a_q15": _words(s.a_re, s.a_im)}
    most = int(np.diff(ms).max(initial=0))
    ctx["unroll"] = most if most <= UNROLL_LIMIT else 0      # unroll every channel's modes (a switch on the count)
    ctx["pairs"] = bool(ctx["unroll"]) and not s.has_k and M > 0   # two modes per block, channels walked down
    if s.polar is not None:
        p = s.polar
        ctx["polar_mode"] = [{"rho": int(p.rho[m]), "phi": int(p.phi[m])} for m in range(M)]
        ctx["polar_channel"] = [{"lg_lo": int(p.lg_lo[j]), "lg_step": int(p.lg_step[j]), "dth": int(p.dth[j])}
                                for j in range(K)]
    # mixer: per output channel o and chunk of 8 inputs the a row then the b row, int16, in the order the loop
    # reads them (one pointer walks every weight of the layer)
    w = np.zeros((H, 2, Kp), np.int64)
    w[:, 0, :K], w[:, 1, :K] = L.fc_a.w, L.fc_b.w
    ctx["mixer_w"] = w.reshape(H, 2, Kp // 8, 8).transpose(0, 2, 1, 3)      # [H][Kp/8][value, gate][8]
    fa, fb, m, a = L.fc_a, L.fc_b, L.mul, L.add
    rows = []
    for o in range(H):
        row = {"bias_a": int(fa.bias_eff[o]), "bias_b": int(fb.bias_eff[o]), "out_a": _rq(fa.rq, o), "out_b": _rq(fb.rq, o)}
        if L.post is not None:
            row.update(post_w=int(L.post.w[o]), post_bias=int(L.post.bias[o]), post=_rq(L.post.rq, o))
        rows.append(row)
    ctx["rows"] = rows
    ctx["a_narrow"], ctx["b_narrow"] = _narrow(fa.rq, fa.acc_bound()), _narrow(fb.rq, fb.acc_bound())
    ctx["a_left"], ctx["b_left"] = _left(fa.rq), _left(fb.rq)
    assert m.in2_zp == qz.SIG_ZP and m.in1_zp == fa.out_zp
    ctx["sigmoid_centered"] = np.asarray(L.sigmoid) - m.in2_zp          # sigmoid(b) - z_sig in [0, 255]
    ctx["a_zp"], ctx["b_zp"], ctx["z_zp"] = fa.out_zp, fb.out_zp, m.out_zp
    ctx["mul"], ctx["mul_narrow"] = _rq(m.rq), _narrow(m.rq, 255 * 255)
    t1, t2 = a.in1_table(), a.in2_table()
    ctx["add_h"], ctx["add_z"], ctx["r_zp"] = t1, t2, a.out_zp
    ctx["add_out"] = _rq(a.out)
    ctx["add_narrow"] = _narrow(a.out, int(np.abs(t1).max() + np.abs(t2).max()))
    ctx["post"] = L.post is not None
    ctx["ln"], ctx["pre_ln"] = _norm_ctx(L.layer_norm), L.layer_norm is not None and q.meta.prenorm
    if L.post is not None:
        ctx["post_in_zp"], ctx["post_out_zp"] = L.post.in_zp, L.post.out_zp
        ctx["post_left"] = _left(L.post.rq)
        ctx["post_narrow"] = _narrow(L.post.rq, 255 * np.abs(L.post.w) + np.abs(L.post.bias))
    return ctx


def _norm_ctx(p):
    """The LayerNorm of a layer (qmodel.LayerNormQ) for the template, or None."""
    if p is None:
        return None
    rows = [{"index": int(p.channels[j]), "sign": int(p.sign[j]), "bias": int(p.bias[j]), "out": _rq(p.rq, j)}
            for j in range(len(p.channels))]
    return {"n_out": len(rows), "rows": rows, "eps": p.eps, "w_shift": p.w_shift, "recip_bits": p.recip_bits,
            "norm_shift": p.norm_shift, "half": 1 << (p.norm_shift - 1), "out_zp": p.out_zp,
            "narrow": _narrow(p.rq, p.acc_bound()), "left": _left(p.rq)}


def template_context(q, source="model"):
    layers, off = [], 0
    for i, L in enumerate(q.layers):
        layers.append(_layer_ctx(q, i, L, off))
        off += L.ssm.n_modes
    meta = {"d_input": q.meta.d_input, "n_classes": q.meta.n_classes, "n_layers": q.meta.n_layers,
            "d_model": q.meta.d_model, "coeff_bits": q.meta.coeff_bits, "ssm": q.meta.ssm, "prenorm": q.meta.prenorm}
    tensors = {k: {"scale": t.scale, "zero_point": t.zero_point} for k, t in q.tensors.items()}
    return {"version": __version__, "source": source, "meta": meta, "tensors": tensors, "layers": layers,
            "enc": _fc_ctx(q.enc), "dec": _fc_ctx(q.dec, 32768), "coeff_bits": q.meta.coeff_bits, "total_modes": off,
            "max_kp": max([l["Kp"] for l in layers] + [8]), "pool_frac": qz.POOL_FRAC, "pool_start": q.meta.pool_start,
            "any_pre_ln": any(l["pre_ln"] for l in layers),
            "pool_zp": q.tensors[f"h{len(q.layers)}"].zero_point}


MODEL_FILES = ["include/s4op_model.h", "src/s4op_internal.h", "src/s4op_model.c", "src/s4op_weights.c"]
STATIC_FILES = {"src/s4op_kernels.h": "s4op_kernels.h"}     # copied from firmware/


def render_c(q, out_dir, source="model", test=None):
    """Write the C sources of q into out_dir; test = (x int8 (n, L, C), labels, scores) or None."""
    env, ctx = environment(), template_context(q, source)
    out_dir = Path(out_dir)
    for rel in MODEL_FILES:
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / rel).write_text(env.get_template(rel + ".j2").render(**ctx))
    for rel, name in STATIC_FILES.items():
        (out_dir / rel).write_text((firmware_dir() / name).read_text())
    if test is not None:
        x, labels, scores = test
        tctx = {"n": int(len(x)), "length": int(x.shape[1]) if len(x) else 0, "x": np.asarray(x).ravel(),
                "labels": np.asarray(labels).ravel(), "scores": np.asarray(scores).ravel(), "split": "test"}
        for rel in ("include/s4op_testdata.h", "src/s4op_testdata.c"):
            (out_dir / rel).write_text(env.get_template(rel + ".j2").render(**tctx))
    return out_dir
