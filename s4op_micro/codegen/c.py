"""The C model: a QuantizedModel rendered (Jinja) into plain C99 sources.

Files written into DIR:
  include/s4op_model.h, src/s4op_model.c, src/s4op_weights.c, src/s4op_internal.h   the model
  include/s4op_testdata.h, src/s4op_testdata.c     N int8 test sequences, labels, reference scores
"""

from pathlib import Path

import numpy as np

from .. import __version__
from ..quant import quantize as qz
from .env import environment

def _fc_ctx(p):
    return {"w": p.w, "bias": p.bias_eff, "mult": p.rq.mult, "shift": p.rq.shift, "n_out": p.n_out,
            "n_in": p.n_in, "out_zp": p.out_zp}


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
        s = L.ssm
        ms = np.asarray(s.mode_start)
        ctx = {"n_ch": s.n_kept, "n_modes": s.n_modes, "state_off": off, "ch": s.channels, "ms": ms,
               "sh": s.sh, "k": s.k if s.has_k else None, "d": s.d, "bias": s.bias, "mult": s.out.mult,
               "shift": s.out.shift, "in_zp": s.in_zp, "out_zp": s.out_zp, "gelu": L.gelu,
               "sigmoid": L.sigmoid, "fc_a": _fc_ctx(L.fc_a), "fc_b": _fc_ctx(L.fc_b),
               "n_active": int(np.sum(s.active)), "n_bypassed": int(s.n_kept - np.sum(s.active)),
               "n_removed": q.meta.d_model - s.n_kept}
        if q.meta.coeff_bits == 16:
            ctx["a"] = np.stack([s.a_re, s.a_im], 1).ravel()
        else:
            p = s.polar
            ctx["code"] = np.stack([p.rho, p.phi], 1).ravel()
            ctx["code_ch"] = np.stack([p.lg_lo, p.lg_step, p.dth], 1).ravel()
        ctx["c"] = _c_words(s.c_re, s.c_im, ms, q.meta.coeff_bits)
        m, a = L.mul, L.add
        ctx["mul"] = [m.in1_zp, m.in2_zp, int(m.rq.mult), int(m.rq.shift), m.out_zp]
        ctx["add"] = [a.in1_zp, a.in2_zp, a.out_zp, int(a.in1.mult), int(a.in1.shift), int(a.in2.mult),
                      int(a.in2.shift), int(a.out.mult), int(a.out.shift)]
        ctx["post"] = None if L.post is None else {"w": L.post.w, "bias": L.post.bias, "mult": L.post.rq.mult,
                                                   "shift": L.post.rq.shift, "in_zp": L.post.in_zp,
                                                   "out_zp": L.post.out_zp}
        off += s.n_modes
        layers.append(ctx)
    meta = {"d_input": q.meta.d_input, "n_classes": q.meta.n_classes, "n_layers": q.meta.n_layers,
            "d_model": q.meta.d_model, "coeff_bits": q.meta.coeff_bits, "ssm": q.meta.ssm, "prenorm": q.meta.prenorm}
    tensors = {k: {"scale": t.scale, "zero_point": t.zero_point} for k, t in q.tensors.items()}
    return {"version": __version__, "source": source, "meta": meta, "tensors": tensors, "layers": layers,
            "enc": _fc_ctx(q.enc), "dec": _fc_ctx(q.dec), "coeff_bits": q.meta.coeff_bits, "total_modes": off,
            "max_kept": max([L.ssm.n_kept for L in q.layers] + [1]), "pool_frac": qz.POOL_FRAC,
            "pool_zp": q.tensors[f"h{len(q.layers)}"].zero_point}


MODEL_FILES = ["include/s4op_model.h", "src/s4op_internal.h", "src/s4op_model.c", "src/s4op_weights.c"]


def render_c(q, out_dir, source="model", test=None):
    """Write the C sources of q into out_dir; test = (x int8 (n, L, C), labels, scores) or None."""
    env, ctx = environment(), template_context(q, source)
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
