"""The integer reference: exactly the arithmetic of the generated C, in numpy int64, vectorized over
sequences. It is the executable specification: host C and QEMU C must match it bit for bit.

One timestep (all values int32 unless said; sat8/sat16 saturate; MBQM = TFLM's
MultiplyByQuantizedMultiplier; see docs/integer_contract.md):

  h  = FC_enc(x)                                          int8 FULLY_CONNECTED
  per layer:
    u  = h[kept] - z_h                                    (kept = active + bypassed channels)
    per mode: acc = A*x~ + u*2^sh + K + 2^14 (complex), x~ = sat16(acc >> 15)   [int16 state]
    y  = sat8(z_y + MBQM(bias + d*u + sum_m Re(c x~), M_c, S_c))   per channel
    g  = GELU_TABLE[y]                                    exact 256-entry table
    a, b = FC_a(g), FC_b(g)                               int8 FULLY_CONNECTED (H outputs each)
    z  = MUL(a, SIGMOID_TABLE[b])                         TFLM MUL; sigmoid int8 (1/256, -128)
    r  = ADD(h, z)                                        TFLM ADD
    h  = post-norm ? DEPTHWISE_1x1(r) : r                 per-channel int8 weight, int32 bias
  pool += h - z_h                                         int32 running sum
  p  = rdiv(128 * pool, t + 1)                            int16 mean (scale s_h/128, zp 0), half away
  scores = FC_dec(p)                                      16x8 FULLY_CONNECTED

`sat_state` counts saturated state components (int16), `sat_act` clamped int8 activations.
"""

import numpy as np

from . import intmath as im
from .quantize import POOL_FRAC


def fc(p, x):
    """int8 FULLY_CONNECTED: x (n, K) int -> (n, O) int8 values."""
    acc = p.bias_eff + x @ p.w.T
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
        self.sat_act += int(((v < -128) | (v > 127)).sum())
        return np.clip(v, -128, 127)

    def quantize_input(self, x_float):
        return self.q.quantize_input(x_float)

    def run_steps(self, x, every_step=True):
        """x int8 (n, L, C) (or (n, L) for C = 1) -> scores int8 (n, L, classes), or (n, classes)
        at the last step when every_step is False."""
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
        states = [(np.zeros((n, l.ssm.n_modes), np.int64), np.zeros((n, l.ssm.n_modes), np.int64)) for l in q.layers]
        z_last = q.tensors[f"h{len(q.layers)}"].zero_point
        pool = np.zeros((n, q.meta.d_model), np.int64)
        out = []
        for t in range(L):
            h = self._sat8(fc(q.enc, x[:, t]))
            for i, layer in enumerate(q.layers):
                h = self._layer(i, layer, h, states)
            pool += h - z_last
            if every_step or t == L - 1:
                p = im.rdiv(pool * POOL_FRAC, t + 1)    # int16 mean, zero point 0
                out.append(self._sat8(fc(q.dec, p)).astype(np.int8))
        return np.stack(out, axis=1) if every_step else out[-1]

    def _layer(self, i, layer, h, states):
        s, prep = layer.ssm, self._prep[i]
        xr, xi = states[i]
        u = h[:, s.channels] - s.in_zp
        um = u[:, prep["mode_ch"]]
        xr, xi, nsat = state_update(s.a_re, s.a_im, xr, xi, um * prep["pow"] + s.k)
        self.sat_state += nsat
        states[i] = (xr, xi)
        contrib = s.c_re * xr - s.c_im * xi
        cs = np.concatenate([np.zeros((len(h), 1), np.int64), np.cumsum(contrib, axis=1)], axis=1)
        ms = s.mode_start
        acc = s.bias + s.d * u + cs[:, ms[1:]] - cs[:, ms[:-1]]
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
        return r

    def run(self, x):
        """Scores int8 (n, classes) of whole sequences (the last step)."""
        return self.run_steps(x, every_step=False)

    def predict(self, x):
        """Argmax of the last-step scores (ties -> lowest index, as np.argmax and the C)."""
        return self.run(x).argmax(axis=-1)


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
