"""TFLite/TFLM integer primitives, vectorized in numpy int64 with int32 semantics.

These are the exact arithmetic of TFLM's reference kernels (tensorflow/lite/kernels/internal/
common.h, quantization_util.cc; gemmlowp fixedpoint.h):

  quantize_multiplier(real) -> (M, shift)       real ~= M * 2^(shift - 31), M in [2^30, 2^31)
  srdhm(a, b)                                   SaturatingRoundingDoublingHighMul
  rdbpot(x, e)                                  RoundingDivideByPOT (round half away from zero)
  mbqm(x, M, shift)                             MultiplyByQuantizedMultiplier = rdbpot(srdhm(x << l, M), r)

One deliberate difference: TFLM computes `x * (1 << left_shift)` in int32, undefined on overflow;
here (and in the generated C) that left shift saturates. Identical wherever TFLM is defined.

Plus the integer routines of our own that the C code repeats at reset (8-bit coefficient decoding):
exp2 of a Q16 log and sine/cosine of an angle in units of pi/2^30, each a fixed Horner scheme on
non-negative int64 values with truncating division (bit-exact in C with int64_t).
"""

import math

import numpy as np

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def quantize_multiplier(real):
    """TFLite QuantizeMultiplier for a scalar or array of non-negative reals: (M int64, shift int64)."""
    real = np.asarray(real, dtype=np.float64)
    if np.any(real < 0):
        raise ValueError("multipliers must be non-negative")
    flat_m, flat_s = [], []
    for r in real.ravel():
        if r == 0.0:
            flat_m.append(0), flat_s.append(0)
            continue
        q, shift = math.frexp(float(r))
        q_fixed = int(math.floor(abs(q) * (1 << 31) + 0.5))  # TfLiteRound: half away from zero
        if q_fixed == (1 << 31):
            q_fixed //= 2
            shift += 1
        if shift < -31:
            shift, q_fixed = 0, 0
        if shift > 30:
            shift, q_fixed = 30, (1 << 31) - 1
        flat_m.append(q_fixed), flat_s.append(shift)
    return (np.array(flat_m, dtype=np.int64).reshape(real.shape),
            np.array(flat_s, dtype=np.int64).reshape(real.shape))


def sat32(x):
    return np.clip(x, INT32_MIN, INT32_MAX)


def srdhm(a, b):
    """SaturatingRoundingDoublingHighMul(int32 a, int32 b) elementwise.

    gemmlowp: (a*b + nudge) / 2^31 truncated toward zero, nudge = 2^30 if a*b >= 0 else 1 - 2^30,
    saturated for a == b == INT32_MIN. Both nudges make that exactly floor((a*b + 2^30) / 2^31)
    (for a*b < 0, truncating (a*b + 1 - 2^30) toward zero is flooring it plus 2^31 - 1), i.e. an
    arithmetic shift; the one result above INT32_MAX is the saturating case."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    ab += 1 << 30
    ab >>= 31
    return np.minimum(ab, INT32_MAX, out=ab) if ab.ndim else np.int64(min(int(ab), INT32_MAX))


def rdbpot(x, exponent):
    """RoundingDivideByPOT(int32 x, exponent >= 0): x / 2^exponent rounded half away from zero.

    gemmlowp's (x >> e) + (remainder > threshold) with threshold = 2^(e-1) - 1 + (x < 0) is
    floor((x + 2^(e-1) - [x < 0 and e > 0]) / 2^e)."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    nudge = (np.int64(1) << exponent) >> 1                       # 2^(e-1), 0 for e = 0
    v = x + nudge
    v -= (x < 0) & (exponent > 0)
    v >>= exponent
    return v


def shl_sat(x, n):
    """x * 2^n (n >= 0), saturated to int32 (TFLM: undefined on overflow)."""
    x = np.asarray(x, dtype=np.int64)
    return sat32(x << np.asarray(n, dtype=np.int64))


def mbqm(x, multiplier, shift):
    """MultiplyByQuantizedMultiplier(int32 x, int32 M, int shift) elementwise (broadcasting)."""
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    x = shl_sat(x, left) if left.any() else sat32(np.asarray(x, dtype=np.int64))
    return rdbpot(srdhm(x, multiplier), right)


def sat(x, lo, hi):
    return np.clip(x, lo, hi)


def round_half_away(x):
    """Round float64 half away from zero (TfLiteRound / C's round)."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def rdiv(num, den):
    """Integer division rounded half away from zero (num int64 any sign, den > 0), as the C does:
    (|num| + den/2) / den with the sign of num."""
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    q = (np.abs(num) + den // 2) // den
    return np.where(num < 0, -q, q)


# --- fixed-point exp2 and sin/cos (8-bit coefficient decoding) -------------------------------------
# Every intermediate is a non-negative int64, so C's truncating `/` and `>>` equal numpy's `//`, `>>`.

Q30 = 1 << 30
LN2_Q30 = int(round(math.log(2) * Q30))       # 744261118
PI_Q30 = int(round(math.pi * Q30))            # 3373259426
ANGLE_PI = 1 << 30                            # angle unit: pi / 2^30


def exp2_neg_q16(v):
    """2^(-v/65536) in Q30 for int v >= 0 (round half up), elementwise. Max error < 2 units of Q30.

    2^-f (0 <= f < 1) by the Taylor series of e^(-f ln2) to degree 9 (truncation < 2e-8) in Horner
    form, then a rounding right shift by the integer part."""
    v = np.asarray(v, dtype=np.int64)
    n = v >> 16
    f = v & 0xFFFF
    t = (f * LN2_Q30) >> 16                         # f*ln2 in Q30, in [0, 0.694)
    p = np.full_like(v, Q30)
    for k in range(9, 0, -1):                       # e^-t = 1 - t (1 - t/2 (1 - t/3 (...))), in (0, 1]
        p = Q30 - ((t * p) >> 30) // k
    n = np.minimum(n, 62)
    half = np.where(n > 0, np.int64(1) << np.maximum(n - 1, 0), 0)
    return (p + half) >> n


def sincos_q30(angle):
    """(cos, sin) in Q30 of angle in [0, 2^30] (units of pi/2^30, i.e. 0..pi), elementwise.

    Reduced to [0, pi/4] by symmetry; Taylor polynomials to x^10 (cos) and x^11 (sin), error
    < 3e-9 before rounding. cos carries the sign (negative past pi/2); sin >= 0."""
    a = np.asarray(angle, dtype=np.int64)
    if np.any((a < 0) | (a > ANGLE_PI)):
        raise ValueError("angle out of [0, pi]")
    neg_cos = a > (ANGLE_PI >> 1)
    a = np.where(neg_cos, ANGLE_PI - a, a)          # [0, pi/2]
    swap = a > (ANGLE_PI >> 2)
    a = np.where(swap, (ANGLE_PI >> 1) - a, a)      # [0, pi/4]
    x = (a * PI_Q30) >> 30                          # radians, Q30
    x2 = (x * x) >> 30
    s = np.full_like(x, Q30)
    for k in (110, 72, 42, 20, 6):                  # sin x = x (1 - x2/6 (1 - x2/20 (1 - x2/42 ...)))
        s = Q30 - ((x2 * s) >> 30) // k
    s = (x * s) >> 30
    c = np.full_like(x, Q30)
    for k in (90, 56, 30, 12, 2):                   # cos x = 1 - x2/2 (1 - x2/12 (1 - x2/30 ...))
        c = Q30 - ((x2 * c) >> 30) // k
    cos, sin = np.where(swap, s, c), np.where(swap, c, s)
    return np.where(neg_cos, -cos, cos), sin
