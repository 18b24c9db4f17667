"""The integer reference: exactly the arithmetic of the generated C, in numpy (int64, or int32/float
BLAS wherever a bound proves every partial sum exact), layer by layer over whole sequences with
only the state recurrence stepped in time (`ssm_scan`). It is the executable specification: host C
and QEMU C must match it bit for bit.

One timestep (all values int32 unless said; sat8/sat16 saturate; MBQM = TFLM's
MultiplyByQuantizedMultiplier; see docs/integer_contract.md):

  h  = FC_enc(x)                                          int8 FULLY_CONNECTED
  per layer:
    u  = h[kept] - z_h                                    (kept = active + bypassed channels;
                                                           pre-norm LayerNorm: LN(h)[kept] - z_n)
    per mode: acc = A*x~ + u*2^sh + K + 2^14 (complex), x~ = sat16(acc >> 15)   [int16 state]
    y  = sat8(z_y + MBQM(bias + d*u + sum_m Re(c x~), M_c, S_c))   per channel
    g  = GELU_TABLE[y]                                    exact 256-entry table
    a, b = FC_a(g), FC_b(g)                               int8 FULLY_CONNECTED (H outputs each)
    z  = MUL(a, SIGMOID_TABLE[b])                         TFLM MUL; sigmoid int8 (1/256, -128)
    r  = ADD(h, z)                                        TFLM ADD
    h  = post-norm ? DEPTHWISE_1x1(r) or LN(r) : r        BatchNorm: per-channel int8 weight, int32 bias
  pool += h - z_h  (steps t >= pool_start)                int32 running sum (causal_half: from L//2)
  p  = rdiv(128 * pool, max(t + 1 - pool_start, 1))       int16 mean (scale s_h/128, zp 0), half away

  LN(q) (qmodel.LayerNormQ, `layer_norm`): S1, S2 sums over the H channels, V = H S2 - S1^2,
    W = (V << 2k) + eps, R = rdiv(2^P, isqrt(max(W, 1))), n = RDBPOT((H q - S1) R, F),
    out = sat8(z + MBQM(sign n + bias))
  scores = FC_dec(p)                                      16x8 FULLY_CONNECTED

`sat_state` counts saturated state components (int16), `sat_act` clamped int8 activations.
"""

import numpy as np

from . import intmath as im
from .quantize import POOL_FRAC, quantize_model

CALIB_SAMPLES = 256  # training sequences that calibrate the activation ranges (export's default)


def fc(p, x):
    """int8 FULLY_CONNECTED: x (..., K) int -> (..., O) int8 values."""
    acc = p.bias_eff + int_matmul(x, p.w)
    assert np.abs(acc).max(initial=0) < 2**31, "FC accumulator overflow"
    return p.rq(acc) + p.out_zp


class IntegerReference:
    def __init__(self, qmodel):
        self.q = qmodel
        self.sat_state = 0
        self.sat_act = 0
        self._prep = []
        for layer in qmodel.layers:
            s = layer.ssm
            ms = np.asarray(s.mode_start)
            self._prep.append({"mode_ch": np.repeat(np.arange(len(ms) - 1), np.diff(ms)),
                               "pow": np.int64(1) << s.sh.astype(np.int64)})

    def _sat8(self, v):
        self.sat_act += int(np.count_nonzero((v < -128) | (v > 127)))
        return np.clip(v, -128, 127)

    def quantize_input(self, x_float):
        return self.q.quantize_input(x_float)

    def run_steps(self, x, every_step=True):
        """x int8 (n, L, C) (or (n, L) for C = 1) -> scores int8 (n, L, classes), or (n, classes)
        at the last step when every_step is False.

        Computed layer by layer over whole sequences: only the int16 state recurrence runs step by
        step (`ssm_scan`, whole-array over sequences and modes); everything else in a step is
        elementwise or a matrix product per step, so it runs on all (sequence, step) rows at once.
        The same integers as streaming one step at a time through every layer (the C's order)."""
        q = self.q
        x = np.asarray(x)
        if x.ndim == 2:
            x = x[..., None]
        if x.dtype != np.int8:
            raise ValueError("IntegerReference takes int8 inputs; use quantize_input() on floats")
        x = x.astype(np.int64)
        n, L, _ = x.shape
        if L < 1:
            raise ValueError("sequences need at least one step")
        z_last = q.tensors[f"h{len(q.layers)}"].zero_point
        h = self._sat8(fc(q.enc, x))                               # (n, L, H)
        for i, layer in enumerate(q.layers):
            h = self._layer(i, layer, h)
        start = q.meta.pool_start
        pooled = (np.arange(L) >= start)[:, None]                 # causal_half sums from step L//2 on
        pool = np.cumsum((h - z_last) * pooled, axis=1)            # int32 running sum after every step
        if not every_step:
            pool = pool[:, -1:]
        t1 = np.arange(L - pool.shape[1] + 1, L + 1, dtype=np.int64)[:, None]   # steps so far
        t1 = np.maximum(t1 - start, 1)                             # steps pooled so far (1 before any)
        p = im.rdiv(pool * POOL_FRAC, t1)                          # int16 mean, zero point 0
        out = self._sat8(fc(q.dec, p)).astype(np.int8)
        return out if every_step else out[:, 0]

    def _layer(self, i, layer, h):
        s, prep, ln = layer.ssm, self._prep[i], layer.layer_norm
        pre_ln = ln is not None and self.q.meta.prenorm
        u = (self._sat8(layer_norm(ln, h)) if pre_ln else h[..., s.channels]) - s.in_zp
        readout, nsat = ssm_scan(s.a_re, s.a_im, prep["pow"], s.k, prep["mode_ch"], s.mode_start, s.c_re, s.c_im, u)
        self.sat_state += nsat
        acc = s.bias + s.d * u + readout
        assert np.abs(acc).max(initial=0) < 2**31, "readout overflow"
        y = self._sat8(s.out(acc) + s.out_zp)
        g = layer.gelu[y + 128]
        a = self._sat8(fc(layer.fc_a, g))
        b = self._sat8(fc(layer.fc_b, g))
        sg = layer.sigmoid[b + 128]
        m = layer.mul
        z = self._sat8(m.rq((a - m.in1_zp) * (sg - m.in2_zp)) + m.out_zp)
        r = self._sat8(add(layer.add, h, z))
        if layer.post is not None:
            p = layer.post
            r = self._sat8(p.rq(p.w * (r - p.in_zp) + p.bias) + p.out_zp)
        elif ln is not None and not pre_ln:
            r = self._sat8(layer_norm(ln, r))
        return r

    def run(self, x):
        """Scores int8 (n, classes) of whole sequences (the last step)."""
        return self.run_steps(x, every_step=False)

    def predict(self, x):
        """Argmax of the last-step scores (ties -> lowest index, as np.argmax and the C)."""
        return self.run(x).argmax(axis=-1)


def int8_accuracy(model, x_calib, x, y, coeff_bits=8):
    """Accuracy on (x, y) of the float `model` quantized as `export` does (calibrated on the first
    CALIB_SAMPLES sequences of x_calib): what its firmware scores, without building it."""
    if not len(y):
        return 0.0
    ref = IntegerReference(quantize_model(model, x_calib[:CALIB_SAMPLES], coeff_bits=coeff_bits))
    return float((ref.predict(ref.quantize_input(x)) == np.asarray(y)).mean())


def isqrt(v):
    """floor(sqrt(v)) of non-negative int64 values below 2^53, exact (float64 sqrt, then corrected)."""
    v = np.asarray(v, np.int64)
    r = np.floor(np.sqrt(v.astype(np.float64))).astype(np.int64)
    r -= r * r > v
    r += (r + 1) * (r + 1) <= v
    return r


def layer_norm_recip(p, s1, s2):
    """R = rdiv(2^P, isqrt(max(W, 1))), W = ((H S2 - S1^2) << 2k) + eps: the reciprocal square root of
    the step's variance (plus eps), at 2^(P - k) over the normalized units of H q - S1."""
    v = p.width * s2 - s1 * s1
    w = (v << (2 * p.w_shift)) + p.eps
    assert np.all((v >= 0) & (w < 2**31)), "LayerNorm variance overflow"
    return im.rdiv(np.int64(1) << p.recip_bits, isqrt(np.maximum(w, 1)))


def layer_norm(p, q):
    """Integer LayerNorm (qmodel.LayerNormQ) of int8 values q (..., H) over the last axis -> the
    outputs for p.channels (..., len(channels)), int8 values before saturation."""
    q = np.asarray(q, np.int64)
    s1 = q.sum(axis=-1, keepdims=True)
    recip = layer_norm_recip(p, s1, (q * q).sum(axis=-1, keepdims=True))
    t = (p.width * q[..., p.channels] - s1) * recip
    assert np.abs(t).max(initial=0) < 2**30, "LayerNorm product bound violated"
    n = im.rdbpot(t, p.norm_shift)
    return p.rq(p.sign * n + p.bias) + p.out_zp


# --- whole-sequence kernels (the same integers as the per-step formulas) -----------------------------

EXACT_F32, EXACT_F64 = 2**24, 2**53


def int_matmul(x, w):
    """x (..., K) @ w.T for integer arrays, exact: as a BLAS product in float32 (float64) when every
    partial sum is an integer below 2^24 (2^53), so that any summation order is exact; else in int64."""
    K = x.shape[-1]
    bound = K * max(-int(x.min(initial=0)), int(x.max(initial=0))) * int(np.abs(w).max(initial=0))
    x2 = x.reshape(-1, K)
    if bound < EXACT_F64:
        ft = np.float32 if bound < EXACT_F32 else np.float64
        out = (x2.astype(ft) @ w.T.astype(ft)).astype(np.int64)
    else:
        out = x2.astype(np.int64) @ w.T.astype(np.int64)
    return out.reshape(*x.shape[:-1], len(w))


def segment_sum(v, mode_start):
    """v (rows, M) -> (rows, K): the sum over each channel's modes (0 for a channel without modes)."""
    K = len(mode_start) - 1
    counts = np.diff(mode_start)
    if len(counts) and counts[0] > 0 and (counts == counts[0]).all():
        return v.reshape(len(v), K, counts[0]).sum(axis=2)
    out = np.zeros((len(v), K), dtype=v.dtype)
    nonempty = np.flatnonzero(counts > 0)
    if len(nonempty):
        out[:, nonempty] = np.add.reduceat(v, np.asarray(mode_start)[nonempty], axis=1)
    return out


def ssm_scan(a_re, a_im, pow_, k, mode_ch, mode_start, c_re, c_im, u, block=32):
    """The int16 state recurrence and its readout over whole sequences: u (n, L, K) centred input ->
    (sum_m Re(c_m x~_m) per channel (n, L, K) int64, number of saturated state components).

    Per step, exactly `state_update`: acc = A x~ + (u 2^sh + K) + 2^14, x~ = sat16(acc >> 15), on
    whole (sequences, modes) arrays of `block` sequences at a time (small enough to stay in cache),
    the real and imaginary parts stacked in one array. In int32 when the worst case over every
    int16 state fits, for the update (|a_re| + |a_im|) 32768 + max|u 2^sh + K| + 2^14 < 2^31 and for
    the readout 32768 sum_m (|c_re| + |c_im|) < 2^31 per channel (the export guarantees both: no
    partial sum can overflow, in any order), else in int64 with `state_update`'s overflow check."""
    n, L, K = u.shape
    M = len(a_re)
    readout = np.zeros((n, L, K), np.int64)
    if M == 0 or n == 0:
        return readout, 0
    a_re, a_im = np.asarray(a_re, np.int64), np.asarray(a_im, np.int64)
    c_re, c_im = np.asarray(c_re, np.int64), np.asarray(c_im, np.int64)
    in_max = np.abs(u).max(axis=(0, 1))[mode_ch] * pow_ + np.abs(k) + (1 << 14)
    c_l1 = segment_sum((np.abs(c_re) + np.abs(c_im))[None], mode_start)
    safe32 = bool(((np.abs(a_re) + np.abs(a_im)) * 32768 + in_max).max() < 2**31 and c_l1.max() * 32768 < 2**31)
    dt = np.int32 if safe32 else np.int64
    ar, ai, pw = a_re.astype(dt), a_im.astype(dt), np.asarray(pow_).astype(dt)
    c2 = np.stack([c_re, -c_im]).astype(dt)[:, None]           # (2, 1, M): Re(c x) = c_re x_re - c_im x_im
    kq = (np.asarray(k, np.int64) + (1 << 14)).astype(dt)      # the constant input and the rounding
    half = dt(1 << 14)
    u = u.astype(dt)
    counts = np.diff(mode_start)
    mc = int(counts[0])
    uniform = mc > 0 and bool((counts == mc).all())           # every channel has mc modes: reshape, no gather
    if uniform:
        pw3, c3 = pw.reshape(K, mc), c2[:, 0].reshape(2, K, mc)
    nsat = 0
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        nb = b1 - b0
        x = np.zeros((2, nb, M), dt)                           # (re, im) of the int16 state
        p, q, nxt = np.empty((2, nb, M), dt), np.empty((2, nb, M), dt), np.empty((2, nb, M), dt)
        uin = np.empty((nb, M), dt)
        if uniform:
            x4, uin3 = x.reshape(2, nb, K, mc), uin.reshape(nb, K, mc)
        for t in range(L):
            np.multiply(ar, x, out=p)                          # (a_re x_re, a_re x_im)
            np.multiply(ai, x, out=q)                          # (a_im x_re, a_im x_im)
            np.subtract(p[0], q[1], out=nxt[0])
            np.add(p[1], q[0], out=nxt[1])
            if uniform:
                np.multiply(u[b0:b1, t, :, None], pw3, out=uin3)
            else:
                np.take(u[b0:b1, t], mode_ch, axis=1, out=uin)
                uin *= pw
            nxt[0] += uin
            nxt[0] += kq
            nxt[1] += half
            if not safe32:
                assert np.abs(nxt).max(initial=0) < 2**31, "state update overflow"
            nxt >>= 15
            if nxt.min() < -32768 or nxt.max() > 32767:
                nsat += int(np.count_nonzero((nxt < -32768) | (nxt > 32767)))
            np.clip(nxt, -32768, 32767, out=x)
            if uniform:                                        # readout: sum over re/im and the channel's modes
                readout[b0:b1, t] = np.einsum("sbkm,skm->bk", x4, c3)
            else:
                np.multiply(c2, x, out=p)
                np.add(p[0], p[1], out=uin)
                readout[b0:b1, t] = segment_sum(uin, mode_start)
    return readout, nsat


def state_update(a_re, a_im, xr, xi, inp):
    """One step of the int16 complex state: x' = sat16((A x + inp + 2^14) >> 15), A Q15, inp real
    (the input term u*2^sh + K). Returns (re, im, number of saturated components)."""
    re = inp + a_re * xr - a_im * xi + (1 << 14)
    imag = a_re * xi + a_im * xr + (1 << 14)
    assert np.abs(re).max(initial=0) < 2**31 and np.abs(imag).max(initial=0) < 2**31, "state update overflow"
    re, imag = re >> 15, imag >> 15
    nsat = int(((re < -32768) | (re > 32767)).sum() + ((imag < -32768) | (imag > 32767)).sum())
    return np.clip(re, -32768, 32767), np.clip(imag, -32768, 32767), nsat


def add(p, a, b):
    """TFLM int8 ADD (reference_integer_ops::Add) without the final clamp."""
    s1 = p.in1((a - p.in1_zp) << p.left_shift)
    s2 = p.in2((b - p.in2_zp) << p.left_shift)
    return p.out(s1 + s2) + p.out_zp
