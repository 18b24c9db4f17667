"""The whole-sequence calibration (`run_float`) and integer reference (`IntegerReference`) against the
step-by-step computations they replaced, kept here as the independent slow references: one timestep
at a time through every layer, the state as a (sequences, modes) array, TFLM's primitives in their
gemmlowp form. Random models (hypothesis, ragged mode counts, bypassed and removed channels, S4 and
S4D, pre- and post-norm), forced state saturation, the int64 fallback of the state kernel, and a
model trained on a shipped dataset (gunpoint), pruned and not.

Exactness: the integer reference must agree bit for bit (outputs and saturation counters); the
calibration ranges to float64 round-off (the readout is an FFT convolution, the state scanned in the
basis x / dB), and the quantized model built from them must be identical."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import random_model
from hypothesis import HealthCheck, given, settings, strategies as st

import s4op_micro.quant.quantize as quantize_mod
from s4op_micro.prune.operators import Decision, apply
from s4op_micro.quant import intmath as im
from s4op_micro.quant.discretize import Ranges, discretize, gelu, run_float, segment_matrix, sigmoid
from s4op_micro.quant.quantize import POOL_FRAC, quantize_model
from s4op_micro.quant.reference import IntegerReference, ssm_scan, state_update

SLOW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the slow references ------------------------------------------------------------------------------

def slow_run_float(g, x, ranges=None, all_steps=False):
    """The per-timestep float graph (what run_float computed before it went whole-sequence)."""
    x = np.asarray(x, dtype=np.float64)
    n, L, _ = x.shape
    states = [np.zeros((n, len(fl.dA)), dtype=np.complex128) for fl in g.layers]
    pooled = np.zeros((n, g.d_model))
    out = []
    see = ranges.see if ranges is not None else (lambda *a: None)
    for t in range(L):
        see("x", x[:, t])
        h = x[:, t] @ g.W_enc.T + g.b_enc
        see("h0", h)
        for i, fl in enumerate(g.layers):
            if g.prenorm and fl.ln is not None:
                u = slow_layer_norm(h, *fl.ln)[:, fl.channels]
                see(f"n{i}", u)
            else:
                u = fl.alpha * h[:, fl.channels] + fl.beta
            states[i] = fl.dA * states[i] + fl.dB * np.repeat(u, np.diff(fl.mode_start), axis=1)
            if ranges is not None:
                ranges.see_state(i, states[i])
            y = fl.D * u + (fl.C2 * states[i]).real @ segment_matrix(fl.mode_start)
            see(f"y{i}", y)
            v = gelu(y) @ fl.W_out.T + fl.b_out
            a, b = v[:, : g.d_model], v[:, g.d_model :]
            see(f"a{i}", a), see(f"b{i}", b)
            z = a * sigmoid(b)
            see(f"z{i}", z)
            r = h + z
            see(f"r{i}", r)
            if g.prenorm:
                h = r
            else:
                h = slow_layer_norm(r, *fl.ln) if fl.ln is not None else fl.post_scale * r + fl.post_shift
            see(f"h{i + 1}", h)
        if t >= g.pool_start:
            pooled += h
        logits = (pooled / max(t + 1 - g.pool_start, 1)) @ g.W_dec.T + g.b_dec
        see("logits", logits)
        out.append(logits)
    return np.stack(out, axis=1) if all_steps else out[-1]


def slow_layer_norm(x, gamma, beta, eps):
    mu = x.mean(axis=1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(axis=1, keepdims=True) + eps) * gamma + beta


def slow_int_layer_norm(p, q):
    """The integer LayerNorm of qmodel.LayerNormQ one sequence at a time, in Python integers."""
    out = np.zeros((len(q), len(p.channels)), np.int64)
    for k, row in enumerate(q.tolist()):
        s1, s2 = sum(row), sum(v * v for v in row)
        w = ((p.width * s2 - s1 * s1) << (2 * p.w_shift)) + p.eps
        assert 0 <= w < 2**31
        root = max(math.isqrt(w), 1)
        recip = ((1 << p.recip_bits) + root // 2) // root
        for j, c in enumerate(p.channels.tolist()):
            t = (p.width * row[c] - s1) * recip
            n = (abs(t) + (1 << (p.norm_shift - 1))) >> p.norm_shift
            n = -n if t < 0 else n
            out[k, j] = slow_mbqm(int(p.sign[j]) * n + int(p.bias[j]), p.rq.mult[j], p.rq.shift[j]) + p.out_zp
    return out


def slow_mbqm(x, M, shift):
    """TFLM MultiplyByQuantizedMultiplier as gemmlowp writes it (nudge, truncating division, remainder
    vs threshold), on int64 arrays."""
    x, M, shift = (np.asarray(v, dtype=np.int64) for v in (x, M, shift))
    x = np.clip(x << np.maximum(shift, 0), -(2**31), 2**31 - 1)
    ab = x * M
    v = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    q = np.abs(v) >> 31
    hi = np.where((x == M) & (x == -(2**31)), 2**31 - 1, np.where(v < 0, -q, q))
    e = np.maximum(-shift, 0)
    mask = (np.int64(1) << e) - 1
    return (hi >> e) + ((hi & mask) > (mask >> 1) + (hi < 0))


class SlowReference:
    """The integer model streamed one timestep at a time (the C's order), int64 throughout."""

    def __init__(self, q):
        self.q, self.sat_state, self.sat_act = q, 0, 0

    def sat8(self, v):
        self.sat_act += int(((v < -128) | (v > 127)).sum())
        return np.clip(v, -128, 127)

    def fc(self, p, x):
        acc = p.bias_eff + x @ p.w.T
        assert np.abs(acc).max(initial=0) < 2**31
        return self.sat8(slow_mbqm(acc, p.rq.mult, p.rq.shift) + p.out_zp)

    def add(self, p, a, b):
        s1 = slow_mbqm((a - p.in1_zp) << p.left_shift, p.in1.mult, p.in1.shift)
        s2 = slow_mbqm((b - p.in2_zp) << p.left_shift, p.in2.mult, p.in2.shift)
        return slow_mbqm(s1 + s2, p.out.mult, p.out.shift) + p.out_zp

    def run_steps(self, x, every_step=True):
        q = self.q
        x = np.asarray(x).astype(np.int64)
        n, L, _ = x.shape
        st_ = [[np.zeros((n, len(l.ssm.a_re)), np.int64)] * 2 for l in q.layers]
        pool = np.zeros((n, q.meta.d_model), np.int64)
        z_last = q.tensors[f"h{len(q.layers)}"].zero_point
        out = []
        for t in range(L):
            h = self.fc(q.enc, x[:, t])
            for i, layer in enumerate(q.layers):
                s = layer.ssm
                ms = np.asarray(s.mode_start)
                ln = layer.layer_norm
                pre_ln = ln is not None and q.meta.prenorm
                u = (self.sat8(slow_int_layer_norm(ln, h)) if pre_ln else h[:, s.channels]) - s.in_zp
                um = np.repeat(u, np.diff(ms), axis=1)
                xr, xi, nsat = state_update(s.a_re, s.a_im, *st_[i], um * (np.int64(1) << s.sh) + s.k)
                self.sat_state += nsat
                st_[i] = [xr, xi]
                acc = s.bias + s.d * u + (s.c_re * xr - s.c_im * xi) @ segment_matrix(ms).astype(np.int64)
                assert np.abs(acc).max(initial=0) < 2**31
                y = self.sat8(slow_mbqm(acc, s.out.mult, s.out.shift) + s.out_zp)
                g = layer.gelu[y + 128]
                a, b = self.fc(layer.fc_a, g), self.fc(layer.fc_b, g)
                m = layer.mul
                z = self.sat8(slow_mbqm((a - m.in1_zp) * (layer.sigmoid[b + 128] - m.in2_zp), m.rq.mult,
                                        m.rq.shift) + m.out_zp)
                r = self.sat8(self.add(layer.add, h, z))
                if layer.post is not None:
                    p = layer.post
                    r = self.sat8(slow_mbqm(p.w * (r - p.in_zp) + p.bias, p.rq.mult, p.rq.shift) + p.out_zp)
                elif ln is not None and not pre_ln:
                    r = self.sat8(slow_int_layer_norm(ln, r))
                h = r
            start = q.meta.pool_start
            if t >= start:
                pool += h - z_last
            if every_step or t == L - 1:
                m = max(t + 1 - start, 1)
                p = np.sign(pool) * ((np.abs(pool * POOL_FRAC) + m // 2) // m)
                out.append(self.fc(q.dec, p).astype(np.int8))
        return np.stack(out, axis=1) if every_step else out[-1]


# --- comparisons -----------------------------------------------------------------------------------------

def ranges_rel_diff(r1, r2):
    """Max difference of two Ranges: tensor min/max relative to the tensor's range width, per-mode max
    |state| relative to the layer's largest."""
    assert set(r1.lo) == set(r2.lo) and set(r1.state) == set(r2.state)
    worst = 0.0
    for k in r1.lo:
        width = max(r1.hi[k] - r1.lo[k], 1e-300)
        worst = max(worst, abs(r1.lo[k] - r2.lo[k]) / width, abs(r1.hi[k] - r2.hi[k]) / width)
    for i in r1.state:
        a, b = r1.state[i], r2.state[i]
        if len(a):
            worst = max(worst, float(np.max(np.abs(a - b)) / max(np.max(a), 1e-300)))
    return worst


def assert_same_tree(a, b, path="q"):
    """Two quantized-model trees (dataclasses, dicts, lists of arrays and scalars) identical, dtypes included."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), path
        for f in dataclasses.fields(a):
            assert_same_tree(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == np.asarray(b).dtype and np.array_equal(a, b), path
    else:
        assert type(a) is type(b) and a == b, path


def assert_same_qmodel(q1, q2):
    for field in ("meta", "tensors", "enc", "layers", "dec", "stats"):
        assert_same_tree(getattr(q1, field), getattr(q2, field), field)


def quantize_slow(model, calib, bits, monkeypatch):
    with monkeypatch.context() as mp:
        mp.setattr(quantize_mod, "run_float", slow_run_float)
        return quantize_model(model, calib, coeff_bits=bits)


def check_reference(q, x):
    """IntegerReference == SlowReference bit for bit: every step, the last step, both counters."""
    for every in (True, False):
        fast, slow = IntegerReference(q), SlowReference(q)
        a, b = fast.run_steps(x, every_step=every), slow.run_steps(x, every_step=every)
        assert a.dtype == b.dtype == np.int8 and a.shape == b.shape and np.array_equal(a, b)
        assert (fast.sat_state, fast.sat_act) == (slow.sat_state, slow.sat_act)
    return slow


# --- random models ------------------------------------------------------------------------------------------

@st.composite
def cases(draw):
    m, seed = random_model(draw, st)
    return m, seed, draw(st.sampled_from([8, 16])), draw(st.sampled_from([1, 2, 9, 40]))


@SLOW
@given(cases())
def test_calibration_equals_stepwise_to_roundoff(case):
    m, seed, bits, L = case
    g = discretize(m)
    x = np.random.default_rng(seed).normal(size=(5, L, g.d_input))
    r_fast, r_slow = Ranges(), Ranges()
    fast, slow = run_float(g, x, r_fast, all_steps=True), slow_run_float(g, x, r_slow, all_steps=True)
    assert np.abs(fast - slow).max() <= 1e-11 * max(1.0, np.abs(slow).max())
    assert np.array_equal(run_float(g, x), fast[:, -1])
    assert ranges_rel_diff(r_fast, r_slow) < 1e-11


@SLOW
@given(cases())
def test_quantized_model_and_reference_equal_stepwise(monkeypatch_module, case):
    m, seed, bits, L = case
    rng = np.random.default_rng(seed)
    calib = rng.normal(size=(6, max(L, 5), m.config["d_input"])).astype(np.float32)
    q = quantize_model(m, calib, coeff_bits=bits)
    assert_same_qmodel(q, quantize_slow(m, calib, bits, monkeypatch_module))
    # full-scale int8 inputs, far outside the calibration range: saturations happen
    x = rng.integers(-128, 128, size=(7, L, m.config["d_input"])).astype(np.int8)
    check_reference(q, x)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_state_saturation_counted_as_stepwise():
    """Slow modes calibrated on tiny inputs, driven at full scale: the int16 state saturates."""
    torch.manual_seed(0)
    from s4op_micro.models import SequenceClassifier

    m = SequenceClassifier(1, 2, d_model=3, d_state=4, n_layers=1)
    with torch.no_grad():
        m.layers[0].kernel.log_dt.fill_(-7.0)
    m.eval()
    for bits in (8, 16):
        q = quantize_model(m, 0.01 * np.ones((2, 50, 1), np.float32), coeff_bits=bits)
        x = np.concatenate([np.full((1, 300, 1), 127, np.int8), np.full((1, 300, 1), -128, np.int8)])
        assert check_reference(q, x).sat_state > 0


def stepwise_scan(a_re, a_im, pow_, k, mode_start, c_re, c_im, u):
    n, L, K = u.shape
    xr = xi = np.zeros((n, len(a_re)), np.int64)
    out, nsat = np.zeros((n, L, K), np.int64), 0
    S = segment_matrix(mode_start).astype(np.int64)
    for t in range(L):
        inp = np.repeat(u[:, t], np.diff(mode_start), axis=1) * pow_ + k
        xr, xi, ns = state_update(a_re, a_im, xr, xi, inp)
        nsat += ns
        out[:, t] = (c_re * xr - c_im * xi) @ S
    return out, nsat


@pytest.mark.parametrize("k_big", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
def test_state_kernel_int32_and_int64_paths(k_big, ragged):
    """ssm_scan in int32 (the worst case over every int16 state fits) and in its int64 fallback (a
    constant input so large that the static bound fails, though the actual sums fit) equals
    state_update step by step, saturations included; an actual overflow raises in both."""
    rng = np.random.default_rng(int(k_big) * 2 + int(ragged))
    counts = np.array([3, 0, 5, 1]) if ragged else np.array([4, 4, 4])
    ms = np.concatenate([[0], np.cumsum(counts)])
    M, K = int(ms[-1]), len(counts)
    mode_ch = np.repeat(np.arange(K), counts)
    c_re, c_im = rng.integers(-127, 128, M), rng.integers(-127, 128, M)
    if not k_big:
        R, th = rng.uniform(0.5, 0.9999, M) * 32767, rng.uniform(0, np.pi, M)
        a_re, a_im = np.floor(R * np.cos(th)).astype(np.int64), np.floor(R * np.sin(th)).astype(np.int64)
        sh, k = rng.integers(0, 22, M), rng.integers(-(2**20), 2**20, M)
        u = rng.integers(-255, 256, (5, 60, K))
    else:
        # half the modes at 45 degrees, |A| ~ 0.99..0.9999, 2^21 input gain, |K| = 1.5e8: the static
        # worst case 45877 * 32768 + 255 * 2^21 + 1.5e8 exceeds 2^31, the data (one spike, then only K)
        # does not; the other half at angle 0 (slow, real), which K drives into saturation
        r = rng.uniform(0.99, 0.9999, M)
        diag = np.arange(M) % 2 == 0
        a_re = np.where(diag, np.floor(r * 23170), np.floor(r * 32767)).astype(np.int64)
        a_im = np.where(diag, a_re, 0)
        sh, k = np.full(M, 21), rng.choice([-1, 1], M) * 150_000_000
        u = np.zeros((5, 60, K), np.int64)
        u[:, 1] = rng.choice([-255, 255], (5, K))
    pow_ = np.int64(1) << sh
    worst = ((np.abs(a_re) + np.abs(a_im)) * 32768 + np.abs(u).max(axis=(0, 1))[mode_ch] * pow_ + np.abs(k) + 2**14).max()
    assert (worst >= 2**31) == k_big             # which path ssm_scan takes
    fast = ssm_scan(a_re, a_im, pow_, k, mode_ch, ms, c_re, c_im, u, block=2)
    slow = stepwise_scan(a_re, a_im, pow_, k, ms, c_re, c_im, u)
    assert np.array_equal(fast[0], slow[0]) and fast[1] == slow[1]
    if k_big:
        assert slow[1] > 0
        # a constant input of 1.2e9 on a saturated slow state: 32767 * |a_re| + 1.2e9 > 2^31
        k_over, u0 = np.full(M, 1_200_000_000), np.zeros((2, 5, K), np.int64)
        with pytest.raises(AssertionError):
            stepwise_scan(a_re, a_im, pow_, k_over, ms, c_re, c_im, u0)
        with pytest.raises(AssertionError):
            ssm_scan(a_re, a_im, pow_, k_over, mode_ch, ms, c_re, c_im, u0)


def test_mbqm_equals_gemmlowp_form():
    """srdhm/rdbpot/mbqm (the shift forms) equal gemmlowp's nudge-and-truncate forms on random and
    edge operands, every shift."""
    rng = np.random.default_rng(0)
    edge = np.array([-(2**31), -(2**31) + 1, -(2**30) - 1, -(2**30), -(2**30) + 1, -1, 0, 1, 2**30 - 1, 2**30,
                     2**31 - 1])
    x = np.concatenate([rng.integers(-(2**31), 2**31, 50_000), np.repeat(edge, len(edge)),
                        rng.integers(-(2**40), 2**40, 5000)])
    M = np.concatenate([rng.integers(0, 2**31, 50_000), np.tile(edge, len(edge)) & (2**31 - 1),
                        rng.integers(2**30, 2**31, 5000)])
    M[: len(edge)] = -(2**31)              # the saturating srdhm case
    x[: len(edge)] = -(2**31)
    for shift in [-31, -20, -1, 0, 1, 5, rng.integers(-31, 31, len(x))]:
        assert np.array_equal(im.mbqm(x, M, shift), slow_mbqm(x, M, shift))
    assert int(im.srdhm(-(2**31), -(2**31))) == 2**31 - 1 and int(im.rdbpot(-5, 1)) == -3 and int(im.rdbpot(-5, 0)) == -5


# --- a shipped dataset ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gunpoint(tmp_path_factory):
    from s4op_micro.models.checkpoint import load_model
    from s4op_micro.train import load_data_for, train

    out = tmp_path_factory.mktemp("speed_gp")
    res = train(dataset="gunpoint", out=out, epochs=3, progress=False, force=True)
    model, ckpt = load_model(res.model)
    return model, load_data_for(ckpt)


@pytest.mark.parametrize("pruned", [False, True])
def test_gunpoint_identical_qmodel_and_reference(gunpoint, pruned, monkeypatch):
    """gunpoint (2 layers, H=32, 150 steps): calibration ranges to round-off, the identical int8 model
    (8- and 16-bit coefficients) and a bit-identical reference over the whole test set; pruned: a
    third of each layer's operators bypassed and a few modes dropped (ragged layouts)."""
    model, data = gunpoint
    if pruned:
        model = apply(model, Decision(bypass={0: list(range(0, 32, 3)), 1: list(range(1, 32, 3))},
                                      modes={0: [(1, 0), (2, 5)], 1: [(0, 3)]}))
    g = discretize(model)
    calib = data.x_train[:64]
    r_fast, r_slow = Ranges(), Ranges()
    run_float(g, calib, r_fast)
    slow_run_float(g, calib, r_slow)
    assert ranges_rel_diff(r_fast, r_slow) < 1e-12
    for bits in (8, 16):
        q = quantize_model(model, calib, coeff_bits=bits)
        assert_same_qmodel(q, quantize_slow(model, calib, bits, monkeypatch))
        xq = q.quantize_input(data.x_test)
        fast, slow = IntegerReference(q), SlowReference(q)
        assert np.array_equal(fast.run(xq), slow.run_steps(xq, every_step=False))
        assert (fast.sat_state, fast.sat_act) == (slow.sat_state, slow.sat_act)
