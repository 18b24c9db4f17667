"""The integer LayerNorm (quant/qmodel.py LayerNormQ): its reciprocal square root in numpy, C and the
TFLM graph's Newton form against exact integers and float; the whole normalization against torch's
float LayerNorm within its stated rounding; eps on near-constant inputs; the int32 bounds on the
worst inputs. (Bit-exactness C / TFLM vs the reference on whole random models: test_export_c.py,
test_tflm.py; QEMU: test_import.py.)"""

import math
import shutil
import subprocess

import numpy as np
import pytest

from s4op_micro.codegen.project import STRICT_CFLAGS
from s4op_micro.codegen.tflm import ISQRT_NEWTON_STEPS
from s4op_micro.core.resources import firmware_dir
from s4op_micro.quant.discretize import layer_norm as float_layer_norm
from s4op_micro.quant.qmodel import TensorQ
from s4op_micro.quant.quantize import NORM_BITS, act_qparams, layer_norm_params
from s4op_micro.quant.reference import isqrt, layer_norm, layer_norm_recip


def square_roots_to_check():
    """W in [0, 2^31): small values, every perfect square +-1 (where floor(sqrt) steps), random, the top."""
    rng = np.random.default_rng(0)
    s = np.arange(1, 46341, dtype=np.int64)
    w = np.concatenate([np.arange(0, 5000), (s * s)[:, None] + np.array([-1, 0, 1]), rng.integers(0, 2**31, 50000),
                        2**31 - 1 - np.arange(100)], axis=None)
    return np.unique(w[(w >= 0) & (w < 2**31)])


ISQRT_MAIN = r"""
#include <stdio.h>
#include "s4op_kernels.h"
int main(void)   /* uint32 w on stdin -> isqrt32(w), norm_recip(w, 30) */
{
    uint32_t w, r[2];
    while (fread(&w, sizeof w, 1, stdin) == 1) {
        r[0] = isqrt32(w);
        r[1] = (uint32_t)norm_recip(w, 30);
        fwrite(r, sizeof r, 1, stdout);
    }
    return 0;
}
"""


def test_integer_square_root_is_exact_in_numpy_c_and_the_tflm_newton_form(tmp_path):
    w = square_roots_to_check()
    exact = np.array([math.isqrt(int(v)) for v in w])
    assert np.array_equal(isqrt(w), exact)
    # the TFLM graph's form: (2^8 + W/2^8)/2, then Newton steps by integer division, the minimum of the last two
    w1 = np.maximum(w, 1)
    x = (256 + w1 // 256) // 2
    for _ in range(ISQRT_NEWTON_STEPS):
        prev, x = x, (x + w1 // x) // 2
    assert np.array_equal(np.minimum(prev, x), np.maximum(exact, 1))
    # the C kernel (digit by digit) and its reciprocal
    (tmp_path / "main.c").write_text(ISQRT_MAIN)
    subprocess.run([shutil.which("gcc"), *STRICT_CFLAGS, "-I", str(firmware_dir()), str(tmp_path / "main.c"), "-o",
                    str(tmp_path / "isqrt")], check=True)
    res = subprocess.run([str(tmp_path / "isqrt")], input=w.astype("<u4").tobytes(), capture_output=True, check=True)
    got = np.frombuffer(res.stdout, dtype="<u4").astype(np.int64).reshape(-1, 2)
    assert np.array_equal(got[:, 0], exact)
    s = np.maximum(exact, 1)
    assert np.array_equal(got[:, 1], ((1 << 30) + s // 2) // s)


@pytest.mark.parametrize("H", [1, 2, 7, 64, 256])
def test_reciprocal_square_root_against_float(H):
    """R = rdiv(2^P, isqrt(W)) vs 2^P / sqrt(W): floor(sqrt) is low by < 1 and the division rounds by
    <= 1/2, so the relative error is below 1/S + 1/(2R) (S = isqrt(W), W = V 4^k + eps).
    Over every variance an int8 vector can have (V = H^2 var from 0 to H^2 255^2/4)."""
    p = layer_norm_params((np.ones(H), np.zeros(H), 1e-5), np.arange(H), TensorQ(0.05, 0), TensorQ(0.05, 0))
    v = np.unique(np.concatenate([np.arange(0, 3000), np.geomspace(1, H * H * 255 * 255 // 4, 5000).astype(np.int64)]))
    s1 = np.zeros_like(v)
    R = layer_norm_recip(p, s1, v // H) if H > 1 else layer_norm_recip(p, s1, v * 0)
    V = H * (v // H) if H > 1 else v * 0
    W = (V << (2 * p.w_shift)) + p.eps
    S = np.maximum(isqrt(W), 1)
    exact = 2.0 ** p.recip_bits / np.sqrt(np.maximum(W, 1).astype(np.float64))
    assert np.all(np.abs(R - exact) / exact <= 1.0 / S + 0.5 / R)
    # at the variances of real activations (std >= 1 LSB) the square root keeps >= 7 bits
    assert np.all(S[V >= H * H] >= 128)


def _quantized_ln(H, rng, scale=0.05, eps=1e-5, gamma=None, beta=None):
    gamma = rng.uniform(-2, 2, H) if gamma is None else gamma
    beta = rng.uniform(-1, 1, H) if beta is None else beta
    t_in = TensorQ(scale, int(rng.integers(-20, 20)))
    t_out = act_qparams(-(np.abs(gamma).max() * math.sqrt(H) + 1), np.abs(gamma).max() * math.sqrt(H) + 1)
    ln = (gamma, beta, eps)
    return ln, layer_norm_params(ln, np.arange(H), t_in, t_out), t_in, t_out


@pytest.mark.parametrize("H", [2, 5, 16, 63, 256])
def test_layer_norm_matches_torch_within_its_rounding(H):
    """Against the float LayerNorm of the dequantized input, within the bound of each rounding: the output
    requantization, the normalized value's and beta's 2^-NORM_BITS steps, the reciprocal's relative
    error (previous test) times |gamma n|, eps's rounding."""
    rng = np.random.default_rng(H)
    ln, p, t_in, t_out = _quantized_ln(H, rng)
    q = rng.integers(-128, 128, size=(400, H))
    q[:50] = rng.integers(-3, 4, size=(50, H))                   # small variances too
    got = layer_norm(p, q)
    n = float_layer_norm(t_in.scale * (q - t_in.zero_point), (np.ones(H), np.zeros(H), ln[2]))
    want = (ln[0] * n + ln[1]) / t_out.scale + t_out.zero_point
    s1, s2 = q.sum(-1, keepdims=True), (q * q).sum(-1, keepdims=True)
    R = layer_norm_recip(p, s1, s2)
    W = ((H * s2 - s1 * s1) << (2 * p.w_shift)) + p.eps
    S = np.maximum(isqrt(W), 1)
    # eps rounded to W's unit: sqrt(W) off by <= 1/(4 W) relative; n and beta at 2^-NORM_BITS (1/2 step
    # each); TFLM's requantization rounds twice (SRDHM, then RDBPOT: 1/2 + 2^-(right+1) output steps)
    bound = 0.5 + 0.5 * 2.0 ** np.minimum(p.rq.shift, 0) + np.abs(ln[0]) / t_out.scale * (
        np.abs(n) * (1.0 / S + 0.5 / R + 0.25 / np.maximum(W, 1)) + 2.0 ** -NORM_BITS) + 1e-6
    assert np.all(np.abs(got - want) <= bound)
    assert np.mean(np.abs(got - want) <= 0.5 + 1e-6) > 0.9        # almost all are the nearest code


def test_eps_decides_near_constant_inputs():
    """Torch adds eps to the variance inside the square root. At a fine input scale a 1-LSB ripple has a
    variance comparable to eps: the integer model follows torch's damped output, far from the undamped one
    (which would blow the ripple up to +-sqrt(H-1) standard deviations); a constant input gives beta."""
    H, rng = 16, np.random.default_rng(1)
    gamma, beta = np.full(H, 1.5), rng.uniform(-0.5, 0.5, H)
    ln, p, t_in, t_out = _quantized_ln(H, rng, scale=2e-3, eps=1e-5, gamma=gamma, beta=beta)
    assert p.eps > 0
    q = np.full((1, H), 40)
    q[0, 3] += 1
    x = t_in.scale * (q - t_in.zero_point)
    got = layer_norm(p, q)[0]
    with_eps = ((gamma * float_layer_norm(x, (np.ones(H), np.zeros(H), 1e-5)) + beta) / t_out.scale + t_out.zero_point)[0]
    without = ((gamma * float_layer_norm(x, (np.ones(H), np.zeros(H), 0.0)) + beta) / t_out.scale + t_out.zero_point)[0]
    assert np.abs(got - with_eps).max() <= 1
    assert np.abs(got - without).max() > 10
    flat = layer_norm(p, np.full((1, H), -7))[0]
    assert np.array_equal(flat, np.round(beta / t_out.scale) + t_out.zero_point)


@pytest.mark.parametrize("H", [1, 2, 3, 64, 255, 256])
def test_int32_bounds_hold_on_the_worst_inputs(H):
    """All channels at one end but one at the other (the largest |H q - S1| for its variance), half and half
    (the largest variance), all equal (zero variance), with a huge eps: the reference asserts V, W < 2^31 and
    |(H q - S1) R| < 2^30, which is what the C and TFLM int32 arithmetic relies on."""
    rng = np.random.default_rng(H)
    q = []
    for lo, hi in ((-128, 127), (127, -128), (0, 1), (5, 4)):
        one = np.full(H, lo)
        one[0] = hi
        q.append(one)
        half = np.full(H, lo)
        half[: H // 2] = hi
        q.append(half)
    q.append(np.full(H, -128))
    q = np.array(q)
    for scale, eps in ((0.05, 1e-5), (1e-4, 1e-5), (1e-7, 0.1)):
        _, p, _, _ = _quantized_ln(H, rng, scale=scale, eps=eps)
        out = layer_norm(p, q)
        assert out.shape == q.shape and np.all(np.abs(p.acc_bound()) < 2**30)


@pytest.mark.parametrize("prenorm,pooling", [(False, "mean"), (True, "causal_half")])
def test_qat_forward_follows_the_integer_layer_norm(prenorm, pooling):
    """`finetune --qat` covers LayerNorm and causal_half: its fake-quantized forward (float LayerNorm,
    output on the int8 grid) gives the integer reference's scores to within a few output steps."""
    import torch

    from s4op_micro.data import load_dataset
    from s4op_micro.models import SequenceClassifier
    from s4op_micro.quant.qat import make_qat_forward
    from s4op_micro.quant.reference import IntegerReference

    data = load_dataset(name="gunpoint")
    torch.manual_seed(0)
    m = SequenceClassifier(1, 2, d_model=12, d_state=8, n_layers=2, norm="layer", prenorm=prenorm, pooling=pooling,
                           seq_len=data.x_train.shape[1]).eval()
    with torch.no_grad():
        for ln in m.norms:
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.uniform_(-0.5, 0.5)
    fwd = make_qat_forward(m, data.x_train[:64], 16)
    with torch.no_grad():
        fake = fwd(m, torch.as_tensor(data.x_test[:40], dtype=torch.float32)).numpy()
    q = fwd.q
    ref = q.dequantize_scores(IntegerReference(q).run(q.quantize_input(data.x_test[:40])))
    steps = np.abs(fake - ref) / q.tensors["logits"].scale
    assert np.median(steps) <= 2 and steps.max() <= 8, (np.median(steps), steps.max())
