"""TensorFlow Lite Micro path: the QuantizedModel as a streaming .tflite (+ C array and TFLM app
glue), validated in the real TFLM kernels of the `tflite-micro` Python package.

One Invoke = one timestep: x int8 (1, C) in, int8 scores (1, classes) out. The recurrent state, the
pooled sum and the step count are resource variables (VAR_HANDLE / READ_VARIABLE / ASSIGN_VARIABLE)
rather than extra inputs/outputs: they stay in the arena, the app needs no copy-back and no knowledge
of their layout (Invoke() per sample, MicroInterpreter::Reset() zeroes them for a new sequence).
The graph reproduces the integer reference (reference.py) bit for bit with builtin ops only:

  h  = FULLY_CONNECTED(x)                                               encoder, int8
  per layer (kept channels reordered: the Ka channels with modes first, P mode slots each):
    u    = BROADCAST_TO(MUL(ADD(CAST16(GATHER(h, channel)), -z_h), [1 | 128]))   int16 (P, Ka, 1, .)
    x~   = BATCH_MATMUL([x~ | u 128u | 1 2^14..], R, adj_y)           int16 x int16, R scale 2^-15,
           R per mode [[a_re, -a_im, gains, K], [a_im, a_re, 0..]]: TFLM requantizes 16x16 results
           as floor((acc + 2^14) / 2^15) with int16 saturation: exactly our state update. (16x16,
           not 16x8: 16x8 ops take int8 weights, and an int8 A cannot hold |A| = 0.999.)
    acc  = tree-sum(MUL(CAST32(x~), [c_re, -c_im])) + d*h + (bias - d*z_h)   int32 (TFLM's SUM has
           no int32 kernel; int32 ADD/MUL are exact)
    y    = QUANTIZE per channel (int32 -> int8), scale pairs chosen so that TFLM derives our (M_c, S_c)
    g    = GATHER(GELU table, y + 128)          this TFLM has no GELU kernel; the table is exact
    a, b = FULLY_CONNECTED(g) x 2;  s = GATHER(sigmoid table, b + 128);  z = MUL(a, s);  r = ADD(h, z)
    h    = post-norm ? DEPTHWISE_CONV_2D 1x1 (r) (BatchNorm) or LN(r) : r   (pre-norm LN: u from LN(h))
  pool += (h - z_h) [n > pool_start];  n += 1                          int32 variables (causal_half:
                                                                        MIN(MAX(n - start, 0), 1) gates)
  p  = rdiv(128 pool, m) = DIV(MAX(128 pool, 0) + m/2, m) + DIV(MIN(128 pool, 0) - m/2, m),
       m = MAX(n - pool_start, 1)
  LN = the integer LayerNorm (reference.layer_norm) in int32 ops, exact: S1, S2 by tree sums, V, W by
       MUL/SUB/ADD, isqrt(W) by ISQRT_NEWTON_STEPS integer Newton steps (DIV; the MINIMUM of the last
       two is floor(sqrt(W)), checked over W up to 2^31), R and RDBPOT by DIV, then QUANTIZE per channel
  scores = QUANTIZE per class (tree-sum(p^T * W_dec^T) + bias)          (TFLM's 16x8 FULLY_CONNECTED
           writes int16 with a 16-bit multiplier; the int32 route keeps our int8 requantization)

FULLY_CONNECTED, MUL, ADD and DEPTHWISE_CONV_2D derive their multipliers from the float32 scales
in the file; they equal the export's when its scales are float32 numbers (`multiplier_check`
counts the channels where they do not; there a product lying within ~1e-8 of a rounding boundary
may round the other way). The int32 pooled sum limits sequences to 65793 steps (128 * 255 * L < 2^31).
"""

import json
from pathlib import Path

import numpy as np

from .. import __version__
from ..core.errors import UserError
from ..quant.quantize import POOL_FRAC, SIG_SCALE, SIG_ZP
from .env import render

try:  # the `tflm` extra: tflite-micro (flatbuffer schema) and flatbuffers
    from .tflm_graph import Graph, fb, tflm_multiplier
except ImportError as e:
    _MISSING = e.name
else:
    _MISSING = None


def _require():
    if _MISSING:
        raise UserError(f"the TFLM path needs the package {_MISSING}; pip install 's4op-micro[tflm]'")

# MicroMutableOpResolver method of each op we emit
RESOLVER_METHODS = {
    "ADD": "AddAdd", "ASSIGN_VARIABLE": "AddAssignVariable", "BATCH_MATMUL": "AddBatchMatMul",
    "BROADCAST_TO": "AddBroadcastTo", "CAST": "AddCast", "CONCATENATION": "AddConcatenation", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DIV": "AddDiv", "FULLY_CONNECTED": "AddFullyConnected", "GATHER": "AddGather", "MAXIMUM": "AddMaximum",
    "MINIMUM": "AddMinimum", "MUL": "AddMul", "PACK": "AddPack", "QUANTIZE": "AddQuantize",
    "READ_VARIABLE": "AddReadVariable", "RESHAPE": "AddReshape", "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV",
    "SUB": "AddSub", "VAR_HANDLE": "AddVarHandle",
}
ISQRT_NEWTON_STEPS = 12      # x <- (x + W/x)/2 from (2^8 + W/2^8)/2: floor(sqrt(W)) for W < 2^31 after 11
STATE_SCALE = 2.0 ** -15      # R's scale: the 16x16 product is shifted back by 15 bits
TEST_STEPS_MAX = 1024         # main.cc streams at most this many steps of its test sequence


# --- the graph ----------------------------------------------------------------------------------

def build_tflite(q):
    """QuantizedModel -> (.tflite bytes, info dict: ops, tensors, variables)."""
    _require()
    g = Graph(f"s4op-micro streaming step ({q.meta.ssm}, {q.meta.n_layers} layers, "
              f"{q.meta.coeff_bits}-bit coefficients)")
    T = q.tensors
    x = g.tensor("x", "int8", [1, q.meta.d_input], T["x"].scale, T["x"].zero_point)
    h = _fc(g, x, q.enc, T["h0"], "h0")
    n_vars = 0
    for i, layer in enumerate(q.layers):
        h, has_state = _layer(g, q, i, layer, h)
        n_vars += has_state
    scores = _pool_and_decode(g, q, h)
    model = g.serialize([x], [scores])
    return model, {"ops": g.ops_used, "n_operators": len(g.operators), "n_tensors": len(g.tensors),
                   "resource_variables": n_vars + 2}


def _fc(g, x, p, out, name, perm=None):
    """int8 FULLY_CONNECTED with per-channel weights (our quantize_fc parameters)."""
    w = np.asarray(p.w) if perm is None else np.asarray(p.w)[:, perm]
    s_in = g.qparams(x)[0][0]
    wt = g.const(f"{name}_w", w, "int8", p.w_scale, 0, axis=0)
    bt = g.const(f"{name}_b", p.bias, "int32", np.asarray(p.w_scale) * s_in, 0)
    o = g.tensor(name, "int8", [1, len(w)], out.scale, out.zero_point)
    return g.op("FULLY_CONNECTED", [x, wt, bt], [o], keepNumDims=False)


def _layer(g, q, i, layer, h):
    T, s, H = q.tensors, layer.ssm, q.meta.d_model
    ms = np.asarray(s.mode_start)
    n_modes = np.diff(ms)
    ssm_ch = [k for k in range(len(n_modes)) if n_modes[k] > 0]
    perm = np.array(ssm_ch + [k for k in range(len(n_modes)) if n_modes[k] == 0])
    K, Ka, z_h = len(perm), len(ssm_ch), int(s.in_zp)
    pre_ln = layer.layer_norm is not None and q.meta.prenorm
    # the SSM input: h (channel s.channels[j]) or, pre-norm LayerNorm, LN(h) of the kept channels (position j)
    src, src_index = (_layer_norm(g, layer.layer_norm, h, T[f"n{i}"], f"l{i}_ln"), np.arange(K)) if pre_ln \
        else (h, np.asarray(s.channels))
    # skip and bias: d*u + (bias - d*z_u), int32 (1, K)
    hk = g.op("GATHER", [src, g.const(f"l{i}_kept", src_index[perm].astype(np.int32), "int32")],
              [g.like(src, f"l{i}_hk", shape=[1, K], **g.qkwargs(src))], axis=1)
    d = np.asarray(s.d)[perm]
    acc = g.binary("MUL", g.cast(hk, "int32", f"l{i}_hk32"), d.reshape(1, K).astype(np.int32), f"l{i}_du")
    acc = g.binary("ADD", acc, (np.asarray(s.bias)[perm] - d * z_h).reshape(1, K).astype(np.int32), f"l{i}_du")
    if Ka:
        ssum = _recurrence(g, i, s, ssm_ch, src, src_index)
        if Ka < K:
            zeros = g.const(f"l{i}_bypass0", np.zeros((1, K - Ka), np.int32), "int32")
            ssum = g.op("CONCATENATION", [ssum, zeros], [g.tensor(f"l{i}_ssum", "int32", [1, K])], axis=1)
        acc = g.binary("ADD", acc, ssum, f"l{i}_acc")
    ty, tg = T[f"y{i}"], T[f"g{i}"]
    y = g.requantize(acc, np.asarray(s.out.mult)[perm], np.asarray(s.out.shift)[perm], ty.zero_point,
                     ty.scale, f"l{i}_y")
    gel = g.lookup(y, layer.gelu, tg.scale, tg.zero_point, f"l{i}_gelu")
    a = _fc(g, gel, layer.fc_a, T[f"a{i}"], f"l{i}_a", perm)
    b = _fc(g, gel, layer.fc_b, T[f"b{i}"], f"l{i}_b", perm)
    sig = g.lookup(b, layer.sigmoid, SIG_SCALE, SIG_ZP, f"l{i}_sigmoid")
    tz, tr = T[f"z{i}"], T[f"r{i}"]
    z = g.op("MUL", [a, sig], [g.tensor(f"l{i}_z", "int8", [1, H], tz.scale, tz.zero_point)])
    r = g.op("ADD", [h, z], [g.tensor(f"l{i}_r", "int8", [1, H], tr.scale, tr.zero_point)])
    if layer.post is not None:
        r = _post_norm(g, r, layer.post, T[f"h{i + 1}"], f"l{i}_post")
    elif layer.layer_norm is not None and not pre_ln:
        r = _layer_norm(g, layer.layer_norm, r, T[f"h{i + 1}"], f"l{i}_ln")
    return r, Ka > 0


def _layer_norm(g, p, x, out, name):
    """int8 (1, H) -> int8 (1, len(p.channels)): reference.layer_norm in exact int32 ops."""
    H, n_out = p.width, len(p.channels)
    q32 = g.cast(x, "int32", f"{name}_q")
    col = g.reshape(q32, [H, 1], f"{name}_col")
    s1 = g.reshape(g.tree_sum(col, f"{name}_s1"), [1, 1], f"{name}_s1")
    s2 = g.reshape(g.tree_sum(g.binary("MUL", col, col, f"{name}_sq"), f"{name}_s2"), [1, 1], f"{name}_s2")
    v = g.binary("SUB", g.binary("MUL", s2, np.int32([H]), f"{name}_hs2"), g.binary("MUL", s1, s1, f"{name}_s1s1"),
                 f"{name}_v")
    w = g.binary("ADD", g.binary("MUL", v, np.int32([1 << (2 * p.w_shift)]), f"{name}_w"), np.int32([p.eps]),
                 f"{name}_w")
    w = g.binary("MAXIMUM", w, np.int32([1]), f"{name}_w")
    x_k = g.binary("DIV", g.binary("ADD", g.binary("DIV", w, np.int32([256]), f"{name}_sqrt"), np.int32([256]),
                                   f"{name}_sqrt"), np.int32([2]), f"{name}_sqrt")
    for _ in range(ISQRT_NEWTON_STEPS):                     # integer Newton steps from above
        prev = x_k
        x_k = g.binary("DIV", g.binary("ADD", x_k, g.binary("DIV", w, x_k, f"{name}_sqrt"), f"{name}_sqrt"),
                       np.int32([2]), f"{name}_sqrt")
    root = g.binary("MINIMUM", prev, x_k, f"{name}_isqrt")   # converged: s, or s and s + 1 alternating
    recip = g.binary("DIV", g.binary("ADD", g.binary("DIV", root, np.int32([2]), f"{name}_recip"),
                                     np.int32([1 << p.recip_bits]), f"{name}_recip"), root, f"{name}_recip")
    if n_out != H or not np.array_equal(p.channels, np.arange(H)):    # (TFLM's GATHER takes int8, not int32)
        xc = g.op("GATHER", [x, g.const(f"{name}_ch", np.asarray(p.channels, np.int32), "int32")],
                  [g.like(x, f"{name}_xc", shape=[1, n_out], **g.qkwargs(x))], axis=1)
        q32 = g.cast(xc, "int32", f"{name}_qc")
    e = g.binary("SUB", g.binary("MUL", q32, np.int32([H]), f"{name}_hq"), s1, f"{name}_e")
    t = g.binary("MUL", e, recip, f"{name}_t")
    half, den = np.int32([1 << (p.norm_shift - 1)]), np.int32([1 << p.norm_shift])
    pos = g.binary("DIV", g.binary("ADD", g.binary("MAXIMUM", t, np.int32([0]), f"{name}_pos"), half, f"{name}_pos"),
                   den, f"{name}_pos")
    neg = g.binary("DIV", g.binary("SUB", g.binary("MINIMUM", t, np.int32([0]), f"{name}_neg"), half, f"{name}_neg"),
                   den, f"{name}_neg")
    n = g.binary("ADD", pos, neg, f"{name}_n")                 # RDBPOT(t, norm_shift)
    acc = g.binary("ADD", g.binary("MUL", n, np.asarray(p.sign, np.int32).reshape(1, -1), f"{name}_acc"),
                   np.asarray(p.bias, np.int32).reshape(1, -1), f"{name}_acc")
    return g.requantize(acc, p.rq.mult, p.rq.shift, out.zero_point, out.scale, name)


def _recurrence(g, i, s, ssm_ch, h, h_index):
    """State update (16x16 BATCH_MATMUL) and the int32 readout sum of the channels with modes:
    (1, Ka) int32."""
    ms = np.asarray(s.mode_start)
    Ka, z_h = len(ssm_ch), int(s.in_zp)
    P = int(max(ms[k + 1] - ms[k] for k in ssm_ch))
    slot = np.full((P, Ka), -1)                       # mode index of each (slot, channel); -1: padding
    for a, k in enumerate(ssm_ch):
        slot[: ms[k + 1] - ms[k], a] = np.arange(ms[k], ms[k + 1])
    valid = slot >= 0

    def per_slot(v):
        out = np.zeros((P, Ka), np.int64)
        out[valid] = np.asarray(v, np.int64)[slot[valid]]
        return out

    a_re, a_im, sh, kc, c_re, c_im = (per_slot(getattr(s, n)) for n in ("a_re", "a_im", "sh", "k", "c_re", "c_im"))
    if sh.max(initial=0) > 21:
        raise UserError(f"layer {i}: an input shift of {sh.max()} bits does not fit the int16 TFLM graph (max 21)")
    # the input gain 2^sh is an int16 weight on u (sh <= 14) or on 128u (sh >= 7): one column when it can
    lo, hi = sh[valid].min(), sh[valid].max()
    scales = [1] if hi <= 14 else [128] if lo >= 7 else [1, 128]
    gains = [np.where(valid if len(scales) == 1 else valid & ((sh <= 14) == (f == 1)), (np.int64(1) << sh) // f, 0)
             for f in scales]
    re_row, im_row, const_vals = [a_re, -a_im, *gains], [a_im, a_re] + [0 * sh] * len(scales), []
    if s.has_k:                                   # constant input K = k0 + 2^14 (k1 + k2 + ...)
        k_hi = np.where(kc >= 0, (kc + 8192) >> 14, -((-kc + 8192) >> 14))
        re_row.append(kc - (k_hi << 14)), im_row.append(0 * sh), const_vals.append(1)
        while True:                                  # int16 weights: |k_hi| may need two columns
            part = np.clip(k_hi, -32767, 32767)
            re_row.append(part), im_row.append(0 * sh), const_vals.append(1 << 14)
            k_hi = k_hi - part
            if not k_hi.any():
                break
    R = np.stack([np.stack(re_row, -1), np.stack(im_row, -1)], axis=2)     # (P, Ka, 2, C), adj_y layout
    assert np.abs(R).max() <= 32767
    # LHS = [state | u and/or 128u | constants]; u is gathered per channel and broadcast over the slots
    chan = np.asarray(h_index)[ssm_ch].reshape(Ka, 1, 1).astype(np.int32)
    hc = g.op("GATHER", [h, g.const(f"l{i}_ssm_ch", chan, "int32")],
              [g.like(h, f"l{i}_hc", shape=[1, Ka, 1, 1], **g.qkwargs(h))], axis=1)
    u = g.op("CAST", [hc], [g.tensor(f"l{i}_h16", "int16", [1, Ka, 1, 1], 1.0, 0)])
    u = g.binary("ADD", u, np.int16([-z_h]), f"l{i}_u", scale=1.0)
    ucols = g.binary("MUL", u, np.int16(scales).reshape(1, 1, 1, -1), f"l{i}_ucols", scale=1.0)
    if P > 1:                                        # a copy per mode slot (cheaper than a broadcasting MUL)
        shape = g.const(f"l{i}_slots", np.int32([P, Ka, 1, len(scales)]), "int32")
        ucols = g.op("BROADCAST_TO", [ucols, shape],
                     [g.tensor(f"l{i}_ucols_slots", "int16", [P, Ka, 1, len(scales)], 1.0, 0)])
    handle, state = g.variable(f"s4op_state{i}", "int16", [P, Ka, 1, 2], 1.0)
    parts = [state, ucols]
    if const_vals:
        parts.append(g.const(f"l{i}_ones", np.broadcast_to(np.int16(const_vals), (P, Ka, 1, len(const_vals))),
                             "int16", 1.0, 0))
    lhs = g.op("CONCATENATION", parts, [g.tensor(f"l{i}_lhs", "int16", [P, Ka, 1, R.shape[-1]], 1.0, 0)], axis=3)
    rhs = g.const(f"l{i}_R", R, "int16", STATE_SCALE, 0)
    new = g.op("BATCH_MATMUL", [lhs, rhs], [g.tensor(f"l{i}_state", "int16", [P, Ka, 1, 2], 1.0, 0)],
               adjX=False, adjY=True)
    g.assign(handle, new)
    coef = np.stack([c_re, -c_im], -1).reshape(P, Ka, 1, 2).astype(np.int32)
    prod = g.binary("MUL", g.cast(new, "int32", f"l{i}_state32"), coef, f"l{i}_cx")
    tot = g.tree_sum(prod, f"l{i}_sum")                                   # (1, Ka, 1, 2)
    re_part, im_part = g.split(tot, 3, [1, 1], f"l{i}_reim")
    return g.reshape(g.binary("ADD", re_part, im_part, f"l{i}_ssum"), [1, Ka], f"l{i}_ssum")


def _post_norm(g, r, p, out, name):
    H = len(p.w)
    s_in = g.qparams(r)[0][0]
    r4 = g.reshape(r, [1, 1, 1, H], f"{name}_in")
    w = g.const(f"{name}_w", np.asarray(p.w).reshape(1, 1, 1, H), "int8", p.w_scale, 0, axis=3)
    b = g.const(f"{name}_b", p.bias, "int32", np.asarray(p.w_scale) * s_in, 0)
    o = g.tensor(name, "int8", [1, 1, 1, H], out.scale, out.zero_point)
    o = g.op("DEPTHWISE_CONV_2D", [r4, w, b], [o], padding=fb.Padding.VALID, strideW=1, strideH=1,
             depthMultiplier=1, dilationWFactor=1, dilationHFactor=1)
    return g.reshape(o, [1, H], name)


def _pool_and_decode(g, q, h):
    H, C, T = q.meta.d_model, q.meta.n_classes, q.tensors
    z = int(T[f"h{q.meta.n_layers}"].zero_point)
    pool_h, pool = g.variable("s4op_pool", "int32", [1, H])
    count_h, count = g.variable("s4op_count", "int32", [1])
    count = g.binary("ADD", count, np.int32([1]), "count")
    hz = g.binary("ADD", g.cast(h, "int32", "h32"), np.int32([-z]), "hz")
    start = q.meta.pool_start
    if start:                           # causal_half: h is pooled from step `start` on (count > start)
        after = g.binary("SUB", count, np.int32([start]), "pooled")
        gate = g.binary("MINIMUM", g.binary("MAXIMUM", after, np.int32([0]), "gate"), np.int32([1]), "gate")
        hz = g.binary("MUL", hz, gate, "hz")
    pool = g.binary("ADD", pool, hz, "pool")
    g.assign(pool_h, pool)
    g.assign(count_h, count)
    if start:
        count = g.binary("MAXIMUM", after, np.int32([1]), "pooled")
    n = g.binary("MUL", pool, np.int32([POOL_FRAC]), "pool128")
    half = g.binary("DIV", count, np.int32([2]), "half")
    pos = g.binary("DIV", g.binary("ADD", g.binary("MAXIMUM", n, np.int32([0]), "pos"), half, "pos"), count, "pos")
    neg = g.binary("DIV", g.binary("SUB", g.binary("MINIMUM", n, np.int32([0]), "neg"), half, "neg"), count, "neg")
    mean = g.binary("ADD", pos, neg, "mean")                              # rdiv(128 pool, count)
    prod = g.binary("MUL", g.reshape(mean, [H, 1], "mean_t"), np.asarray(q.dec.w).T.astype(np.int32), "dec_wx")
    acc = g.binary("ADD", g.tree_sum(prod, "dec_sum"), np.asarray(q.dec.bias).reshape(1, C).astype(np.int32), "dec_acc")
    t = T["logits"]
    return g.requantize(acc, q.dec.rq.mult, q.dec.rq.shift, t.zero_point, t.scale, "scores")


def multiplier_check(q):
    """Requantizing ops whose multiplier TFLM derives from float32 scales: how many channels get a
    (M, shift) different from the export's (then those outputs may differ by 1 LSB)."""
    f32 = lambda v: np.float64(np.float32(v))  # noqa: E731
    T = q.tensors
    checks = []  # (name, tflm reals, export M, export shift)

    def fc(name, p, s_in, s_out):
        checks.append((name, f32(s_in) * f32(np.asarray(p.w_scale)) / f32(s_out), p.rq.mult, p.rq.shift))

    fc("enc", q.enc, T["x"].scale, T["h0"].scale)
    for i, layer in enumerate(q.layers):
        fc(f"l{i}.fc_a", layer.fc_a, T[f"g{i}"].scale, T[f"a{i}"].scale)
        fc(f"l{i}.fc_b", layer.fc_b, T[f"g{i}"].scale, T[f"b{i}"].scale)
        m = layer.mul
        checks.append((f"l{i}.mul", f32(T[f"a{i}"].scale) * f32(SIG_SCALE) / f32(T[f"z{i}"].scale),
                       m.rq.mult, m.rq.shift))
        a = layer.add
        s1, s2, so = f32(T[f"h{i}"].scale), f32(T[f"z{i}"].scale), f32(T[f"r{i}"].scale)
        tm = 2 * max(s1, s2)
        checks += [(f"l{i}.add.in1", s1 / tm, a.in1.mult, a.in1.shift),
                   (f"l{i}.add.in2", s2 / tm, a.in2.mult, a.in2.shift),
                   (f"l{i}.add.out", tm / ((1 << a.left_shift) * so), a.out.mult, a.out.shift)]
        if layer.post is not None:
            fc(f"l{i}.post", layer.post, T[f"r{i}"].scale, T[f"h{i + 1}"].scale)
    bad = {}
    for name, reals, M, S in checks:
        got = [tflm_multiplier(r) for r in np.atleast_1d(reals)]
        want = list(zip(np.atleast_1d(M).tolist(), np.atleast_1d(S).tolist()))
        n = sum(a != b for a, b in zip(got, want))
        if n:
            bad[name] = n
    return {"channels_checked": int(sum(np.size(c[2]) for c in checks)), "mismatched": bad}




# --- files: model.tflite, model_data.cc/.h, main.cc, CMakeLists.txt, tflm.json ----------------------

def write_tflm(q, out_dir, model_bytes, info, x, expected, checked, board=None):
    """Write DIR/tflm/ (model.tflite, model_data.cc/.h, main.cc, CMakeLists.txt, tflm.json) for the
    .tflite built by build_tflite(q). x: the int8 test sequence (1, L, C) main.cc streams, expected:
    the integer reference's scores at every step; checked: what the TFLM runtime measured at export
    (s4op_micro.measure.tflm_runtime.check_export: arena, margin, mismatched steps)."""
    arena, size, margin = checked["arena"], checked["size"], checked["margin"]
    d = Path(out_dir) / "tflm"
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.tflite").write_bytes(model_bytes)
    ctx = {"version": __version__, "n_bytes": len(model_bytes), "hex": _hex(model_bytes), "ops": info["ops"],
           "resolver_methods": [RESOLVER_METHODS[o] for o in info["ops"]],
           "resource_variables": info["resource_variables"], "arena_size": size, "arena_measured": arena["needed"],
           "arena_allocated": arena["total"],
           "margin_pct": int(margin[0] * 100), "margin_bytes": margin[1],
           "steps": len(x[0]), "n_inputs": x.shape[2], "n_classes": q.meta.n_classes,
           "label": int(expected[-1].argmax()), "inputs": x[0].tolist(), "expected": expected.tolist()}
    for name in ("model_data.h", "model_data.cc", "main.cc", "CMakeLists.txt"):
        (d / name).write_text(render(f"tflm/{name}.j2", **ctx))
    report = {"model_bytes": len(model_bytes), **info,
              "arena": {"needed_bytes": arena["needed"], "allocated_bytes": arena["total"], "head_bytes": arena["head"],
                        "tail_bytes": arena["tail"],
                        "size_bytes": size, "margin": f"+{int(margin[0] * 100)}% + {margin[1]} B",
                        "report": arena["report"]},
              "test_sequence": {"steps": len(x[0]), "mismatched_steps": checked["mismatched_steps"]},
              "multiplier_check": multiplier_check(q)}
    if board is not None:   # TFLM's own code (interpreter + kernels) comes on top of these
        report["board"] = {"name": board.name, "flash_bytes": board.flash_bytes, "ram_bytes": board.ram_bytes,
                           "model_fits_flash": len(model_bytes) <= board.flash_bytes, "arena_fits_ram": size <= board.ram_bytes}
    (d / "tflm.json").write_text(json.dumps(report, indent=1))
    return report


def test_sequence(q, calib_x):
    """int8 (1, L, C): the first calibration sequence (zeros without calibration data)."""
    C = q.meta.d_input
    if calib_x is None or len(calib_x) == 0:
        return np.zeros((1, 16, C), np.int8)
    x = np.asarray(calib_x[0], dtype=np.float64).reshape(1, -1, C)[:, :TEST_STEPS_MAX]
    return q.quantize_input(x)


def _hex(data, per_line=16):
    return "\n".join("    " + ", ".join(f"0x{b:02x}" for b in data[i : i + per_line]) + ","
                     for i in range(0, len(data), per_line))




# --- `s4op-micro run DIR --runtime tflm` ------------------------------------------------------------
