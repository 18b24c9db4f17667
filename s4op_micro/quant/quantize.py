"""Calibration and quantization: FloatGraph + calibration inputs -> QuantizedModel (the int8 model).

TFLite/TFLM int8 scheme wherever it applies (docs/integer_contract.md has the whole contract):
activations int8 asymmetric per tensor (min/max over the calibration stream, range widened to hold
0, TFLite zero-point nudging), weights int8 symmetric per output channel, biases int32 at
input_scale*weight_scale, requantization by (M, shift) from `quantize_multiplier`.

The recurrence (per active channel c, per kept mode m; state int16 complex, int32 accumulation):

  state basis: x~ = x * 2^(sh-15) / (dB * alpha')   (complex scale: the input gain becomes the real
               power of two 2^sh, so B needs no multiply and no table; sh is chosen per mode so that
               the calibrated max |x~| lies in (2^13, 2^14], i.e. 1-2x headroom under int16)
  update:      acc = A * x~ + (u << sh) + K + 2^14 (complex, Q15 A), x~' = sat16(acc >> 15)
  readout:     acc_y = sum_m Re(c_m x~_m) + d*u + bias;  y = sat8(z_y + MBQM(acc_y, M_c, S_c))

with u = h - z_h (the int8 input centred), alpha' = alpha*s_h (BatchNorm gain times input scale),
K = round(2^sh * beta/alpha') the folded pre-norm BatchNorm offset. A codes:

  coeff_bits=16: A = the nearest Q15 complex code with |A|^2 < 2^30 (3x3 search: stable by
                 construction); c int16 per-channel symmetric, the scale also bounded so that the
                 int32 readout sum cannot overflow for any int16 state.
  coeff_bits=8:  polar code per mode (rho, phi) uint8 with per-channel (lg_lo, lg_step, dth) int32:
                 1 - |A| = 2^((lg_lo + rho*lg_step)/2^16) (log-uniform decay: slow modes keep their
                 time constant), angle = phi*dth (units pi/2^30). Expanded to Q15 at reset by
                 `decode8` (integer exp2 and sin/cos, fix-up to |A|^2 < 2^30); c int8 per channel.
"""

import math

import numpy as np

from ..core.checks import coeff_bits as check_coeff_bits
from ..core.errors import UserError
from . import intmath as im
from .discretize import Ranges, discretize, gelu, run_float, sigmoid
from .qmodel import (ADD_LEFT_SHIFT, FullyConnected, GluMul, Layer, LayerNormQ, Meta, Polar8, PostNorm,  # noqa: F401
                     QuantizedModel, Recurrence, Requant, ResidualAdd, TensorQ)

STATE_TARGET = 2.0 ** 14          # calibrated max |state| lands in (T/2, T]: >= 2x headroom to int16
IN_LIMIT = 2 ** 29                # |u << sh| + |K| <= 2^29 keeps the int32 update from overflowing
ACC_LIMIT = 2 ** 31 - 2 ** 12     # readout accumulator bound (worst case over every int16 state)
POOL_FRAC = 128                   # pooled mean: int16, 1/128 of the last h's LSB
SIG_SCALE, SIG_ZP = 1.0 / 256.0, -128   # TFLM LOGISTIC int8 output
# Calibration ranges are widened by this fraction of their width (per tensor kind, by first letter):
# unseen data exceeds the calibration min/max (gunpoint's test inputs by 13%), and clipping an input
# costs far more than a slightly coarser step.
RANGE_MARGIN = {"x": 0.1, "l": 0.1}


# --- activations and weights ----------------------------------------------------------------------

def widen(r, margin):
    lo, hi = r
    return lo - margin * (hi - lo), hi + margin * (hi - lo)


def f32(x):
    """Scales are stored as float32 in a .tflite, and TFLM derives its multipliers from those: round
    every scale to float32 where it is made, so our multipliers are TFLM's."""
    return np.asarray(x, dtype=np.float32).astype(np.float64) if np.ndim(x) else float(np.float32(x))


def tflm_expressible(s, s_out):
    """Nudge a (free) readout scale so that TFLM can be handed its requantization multiplier exactly.

    TFLM derives (M, shift) from a ratio of two float32 scales; ratios of 24-bit mantissas never fall
    just above 0.5 or just below 1 (within 2^-24 of a power of two) except on it, so a multiplier there
    has no float32 scale pair (export/tflm_graph.scale_pair). Moving s by < 2^-22 costs no accuracy."""
    m, e = math.frexp(s / s_out)
    if m > 1 - 2.0 ** -22:
        m = 1 - 2.0 ** -22
    elif 0.5 < m < 0.5 + 2.0 ** -23:
        m = 0.5 + 2.0 ** -23
    return math.ldexp(m, e) * s_out


def act_qparams(lo, hi):
    """TFLite asymmetric int8 (scale, zero point) for a float range, widened to hold 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-9:
        hi = lo + 1e-9
    scale = f32((hi - lo) / 255.0)
    zp = int(np.clip(im.round_half_away(-128 - lo / scale), -128, 127))
    return TensorQ(scale, zp)


def quantize_fc(W, b, s_in, z_in, out):
    """Per-output-channel symmetric int8 FC (TFLM FULLY_CONNECTED): w, bias int32, (M, shift)."""
    W = np.atleast_2d(W)
    amax = np.abs(W).max(axis=1) if W.shape[1] else np.zeros(len(W))
    s_w = f32(np.where(amax > 0, amax / 127.0, 1.0))
    w = np.clip(im.round_half_away(W / s_w[:, None]), -127, 127).astype(np.int64)
    bias = im.round_half_away(b / (s_in * s_w))
    if np.abs(bias).max(initial=0) > im.INT32_MAX:
        raise UserError("a bias does not fit int32 at input*weight scale; the model's weights are degenerate")
    M, S = im.quantize_multiplier(s_in * s_w / out.scale)
    # CMSIS-NN's offset fold: sum w*(x - z_in) + bias == bias_eff + sum w*x (exact)
    return FullyConnected(w=w, bias=bias.astype(np.int64), bias_eff=bias.astype(np.int64) - int(z_in) * w.sum(axis=1),
                          rq=Requant(M, S), w_scale=s_w, in_zp=int(z_in), out_zp=int(out.zero_point))


def table(fn, s_in, z_in, s_out, z_out):
    """Exact 256-entry int8 table of fn: index q + 128 -> round(fn(dequant(q)) / s_out) + z_out."""
    q = np.arange(-128, 128)
    v = fn(s_in * (q - z_in))
    return np.clip(im.round_half_away(v / s_out) + z_out, -128, 127).astype(np.int64), v


# --- recurrence coefficient codes ------------------------------------------------------------------

def code16(dA):
    """Nearest Q15 complex code with |A|^2 < 2^30 for each dA (complex array)."""
    t = np.asarray(dA, dtype=np.complex128) * 32768.0
    base_re, base_im = np.floor(t.real) - 1, np.floor(t.imag) - 1
    best_d = np.full(t.shape, np.inf)
    best_re, best_im = np.zeros(t.shape), np.zeros(t.shape)
    for i in range(4):
        for j in range(4):
            re, imag = base_re + i, base_im + j
            ok = (re * re + imag * imag < 2.0 ** 30) & (np.abs(re) <= 32767) & (np.abs(imag) <= 32767)
            d = np.where(ok, (re - t.real) ** 2 + (imag - t.imag) ** 2, np.inf)
            better = d < best_d
            best_d, best_re, best_im = np.where(better, d, best_d), np.where(better, re, best_re), np.where(better, imag, best_im)
    return best_re.astype(np.int64), best_im.astype(np.int64)


def decode8(rho, phi, lg_lo, lg_step, dth):
    """The reset-time expansion of 8-bit polar codes to Q15 (re, im): exactly the C's s4op_expand.
    rho, phi per mode; lg_lo, lg_step, dth per mode (broadcast from the channel)."""
    rho, phi = np.asarray(rho, np.int64), np.asarray(phi, np.int64)
    v = np.maximum(0, -(np.asarray(lg_lo, np.int64) + rho * np.asarray(lg_step, np.int64)))
    r = im.Q30 - im.exp2_neg_q16(v)                                    # |A| in Q30
    angle = np.minimum(phi * np.asarray(dth, np.int64), im.ANGLE_PI)
    cos, sin = im.sincos_q30(angle)
    rnd = np.int64(1) << 44
    re = (r * np.abs(cos) + rnd) >> 45
    re = np.where(cos < 0, -re, re)
    imag = (r * sin + rnd) >> 45
    while True:                                                         # stability fix-up
        bad = re * re + imag * imag >= (1 << 30)
        if not bad.any():
            return re, imag
        dec_re = bad & (np.abs(re) >= np.abs(imag))
        re = np.where(dec_re, re - np.sign(re), re)
        imag = np.where(bad & ~dec_re, imag - 1, imag)


def encode8(dA, mode_start):
    """Per-channel polar codes for dA (Im >= 0). Returns per-mode rho, phi and per-channel
    lg_lo, lg_step, dth (int64 arrays)."""
    K = len(mode_start) - 1
    r = np.abs(dA)
    ell = np.log2(np.clip(1.0 - r, 2.0 ** -20, 1.0)) * 65536.0          # log2(1-|A|), Q16
    theta = np.angle(dA) / math.pi * im.ANGLE_PI                        # [0, 2^30]
    rho, phi = np.zeros(len(dA), np.int64), np.zeros(len(dA), np.int64)
    lg_lo, lg_step, dth = np.zeros(K, np.int64), np.zeros(K, np.int64), np.zeros(K, np.int64)
    for c in range(K):
        s, e = mode_start[c], mode_start[c + 1]
        if s == e:
            continue
        lo, hi = ell[s:e].min(), ell[s:e].max()
        lg_lo[c] = int(math.floor(lo + 0.5))
        lg_step[c] = int(math.floor((hi - lg_lo[c]) / 255.0 + 0.5))
        if lg_step[c] > 0:
            rho[s:e] = np.clip(np.floor((ell[s:e] - lg_lo[c]) / lg_step[c] + 0.5), 0, 255)
        dth[c] = int(math.ceil(theta[s:e].max() / 255.0))
        if dth[c] > 0:
            phi[s:e] = np.clip(np.floor(theta[s:e] / dth[c] + 0.5), 0, 255)
    return rho, phi, lg_lo, lg_step, dth


def per_mode(values, mode_start):
    return np.repeat(np.asarray(values), np.diff(mode_start))


# --- the model --------------------------------------------------------------------------------------

def quantize_model(model, calib_x, coeff_bits=8):
    """Calibrate on calib_x (n, L, d_input) float and quantize. model: SequenceClassifier (eval) or a
    FloatGraph."""
    check_coeff_bits(coeff_bits)
    g = model if hasattr(model, "layers") and hasattr(model, "W_enc") else discretize(model)
    calib_x = np.asarray(calib_x)
    if calib_x.ndim == 2 and g.d_input == 1:
        calib_x = calib_x[..., None]
    if calib_x.ndim != 3 or calib_x.shape[2] != g.d_input or calib_x.shape[0] < 1 or calib_x.shape[1] < 1:
        raise UserError(f"calibration data has shape {tuple(calib_x.shape)}; the model needs (n, L, {g.d_input}) "
                        "with n, L >= 1")
    if not np.isfinite(calib_x).all():
        raise UserError("calibration data contains NaN/inf values")
    ranges = Ranges()
    for i in range(0, len(calib_x), 64):
        run_float(g, calib_x[i : i + 64], ranges)
    T = {name: act_qparams(*widen(ranges.range(name), RANGE_MARGIN.get(name[0], 0.0))) for name in ranges.lo}
    T["sig"] = TensorQ(SIG_SCALE, SIG_ZP)
    H = g.d_model
    qmax = 127 if coeff_bits == 8 else 32767

    enc = quantize_fc(g.W_enc, g.b_enc, T["x"].scale, T["x"].zero_point, T["h0"])
    layers, stats = [], {"state_shift_clamped": 0, "decay_rel_err_max": 0.0, "angle_err_max": 0.0,
                         "modes": 0, "conversion_error": g.conversion_error}
    for i, fl in enumerate(g.layers):
        th, ty = T[f"h{i}"], T[f"y{i}"]
        pre_ln = g.prenorm and fl.ln is not None
        tu = T[f"n{i}"] if pre_ln else th           # the SSM's input: h, or LayerNorm(h) in pre-norm
        s_h, z_h = tu.scale, tu.zero_point
        K = len(fl.channels)
        ms = fl.mode_start
        alpha = fl.alpha * s_h                      # float SSM input per unit of u = h - z_h
        safe_alpha = np.where(alpha == 0, 1.0, alpha)
        off = np.where(alpha == 0, 0.0, fl.beta / safe_alpha)   # constant input, in units of u
        # --- state basis and input shift per mode
        xmax = ranges.state.get(i, np.zeros(len(fl.dA)))
        dBa = fl.dB * per_mode(alpha, ms)
        sh_max = np.floor(np.log2(IN_LIMIT / (255.0 + np.abs(per_mode(off, ms)) + 1.0)))
        with np.errstate(divide="ignore"):
            want = np.floor(15 + np.log2(STATE_TARGET * np.abs(dBa) / xmax))
        want = np.where((xmax > 0) & (np.abs(dBa) > 0), want, sh_max)
        sh = np.clip(want, 0, sh_max).astype(np.int64)
        stats["state_shift_clamped"] += int((want < 0).sum())
        kconst = im.round_half_away(per_mode(off, ms) * 2.0 ** sh).astype(np.int64)
        gain = np.where(np.abs(dBa) > 0, 2.0 ** (sh - 15) / np.where(dBa == 0, 1, dBa), 0)  # x~ = gain * x
        chat = np.where(gain != 0, fl.C2 / np.where(gain == 0, 1, gain), 0)
        # --- A codes
        if coeff_bits == 16:
            a_re, a_im = code16(fl.dA)
            polar = None
        else:
            rho, phi, lg_lo, lg_step, dth = encode8(fl.dA, ms)
            a_re, a_im = decode8(rho, phi, per_mode(lg_lo, ms), per_mode(lg_step, ms), per_mode(dth, ms))
            polar = Polar8(rho=rho, phi=phi, lg_lo=lg_lo, lg_step=lg_step, dth=dth)
        Aq = (a_re + 1j * a_im) / 32768.0
        if np.any(a_re * a_re + a_im * a_im >= 2 ** 30):
            raise UserError(f"layer {i}: a quantized recurrence coefficient has |A| >= 1 (unstable); please report this")
        if len(fl.dA):
            stats["decay_rel_err_max"] = max(stats["decay_rel_err_max"], float(
                np.max(np.abs(np.abs(Aq) - np.abs(fl.dA)) / np.maximum(1 - np.abs(fl.dA), 1e-12))))
            stats["angle_err_max"] = max(stats["angle_err_max"], float(np.max(np.abs(np.angle(Aq) - np.angle(fl.dA)))))
        stats["modes"] += len(fl.dA)
        # --- readout codes, per channel scale s_c
        Dp = fl.D * alpha
        Db = fl.D * fl.beta
        c_re, c_im = np.zeros(len(fl.dA), np.int64), np.zeros(len(fl.dA), np.int64)
        d_q, b_q, s_c = np.zeros(K, np.int64), np.zeros(K, np.int64), np.zeros(K)
        for c in range(K):
            cc = chat[ms[c] : ms[c + 1]]
            amax = max(np.abs(cc.real).max(initial=0), np.abs(cc.imag).max(initial=0))
            l1 = (np.abs(cc.real) + np.abs(cc.imag)).sum()
            s = amax / qmax if amax > 0 else (abs(Dp[c]) / 2 ** 14 if Dp[c] != 0 else ty.scale)
            budget = ACC_LIMIT - 65536.0 * len(cc) - 256.0     # room for the rounding of every code
            s = max(s, (32768.0 * l1 + 255.0 * abs(Dp[c]) + abs(Db[c])) / budget, ty.scale * 2.0 ** -30)
            s_c[c] = s = tflm_expressible(s, ty.scale)
            c_re[ms[c] : ms[c + 1]] = np.clip(im.round_half_away(cc.real / s), -qmax, qmax)
            c_im[ms[c] : ms[c + 1]] = np.clip(im.round_half_away(cc.imag / s), -qmax, qmax)
            d_q[c], b_q[c] = im.round_half_away(Dp[c] / s), im.round_half_away(Db[c] / s)
            bound = 32768 * int((np.abs(c_re[ms[c] : ms[c + 1]]) + np.abs(c_im[ms[c] : ms[c + 1]])).sum()) \
                + 255 * abs(int(d_q[c])) + abs(int(b_q[c]))
            assert bound < 2 ** 31, "readout accumulator bound violated"
        y_M, y_S = im.quantize_multiplier(s_c / ty.scale)
        ssm = Recurrence(channels=np.asarray(fl.channels, np.int64), active=fl.active.astype(np.int64),
                         mode_start=np.asarray(ms, np.int64), a_re=a_re, a_im=a_im, sh=sh, k=kconst, c_re=c_re,
                         c_im=c_im, d=d_q, bias=b_q, out=Requant(y_M, y_S), c_scale=s_c, state_gain=gain,
                         in_zp=int(z_h), out_zp=int(ty.zero_point), polar=polar)
        # --- GELU table, mixer, GLU, residual add, post-norm
        gel, gv = table(gelu, ty.scale, ty.zero_point, 1.0, 0)
        tg = act_qparams(gv.min(), gv.max())
        T[f"g{i}"] = tg
        gelu_t, _ = table(gelu, ty.scale, ty.zero_point, tg.scale, tg.zero_point)
        fc_a = quantize_fc(fl.W_out[:H], fl.b_out[:H], tg.scale, tg.zero_point, T[f"a{i}"])
        fc_b = quantize_fc(fl.W_out[H:], fl.b_out[H:], tg.scale, tg.zero_point, T[f"b{i}"])
        tb = T[f"b{i}"]
        sig_t, _ = table(sigmoid, tb.scale, tb.zero_point, SIG_SCALE, SIG_ZP)
        ta, tz, tr = T[f"a{i}"], T[f"z{i}"], T[f"r{i}"]
        mul_M, mul_S = im.quantize_multiplier(ta.scale * SIG_SCALE / tz.scale)
        mul = GluMul(in1_zp=int(ta.zero_point), in2_zp=SIG_ZP, rq=Requant(mul_M, mul_S), out_zp=int(tz.zero_point))
        add = add_params(th, tz, tr)
        layer = Layer(ssm=ssm, gelu=gelu_t, fc_a=fc_a, fc_b=fc_b, sigmoid=sig_t, mul=mul, add=add)
        if pre_ln:
            layer.layer_norm = layer_norm_params(fl.ln, fl.channels, th, tu)
        if not g.prenorm:
            if fl.ln is not None:
                layer.layer_norm = layer_norm_params(fl.ln, np.arange(H), tr, T[f"h{i + 1}"])
            else:
                layer.post = post_params(fl.post_scale, fl.post_shift, tr, T[f"h{i + 1}"])
        else:
            T[f"h{i + 1}"] = tr                     # pre-norm: the next h is r itself
        layers.append(layer)
    tl = T[f"h{len(g.layers)}"]
    # pooling: the running mean as int16 at scale s_h/128, zero point 0 (a TFLM MEAN to int16), then a
    # 16x8 FULLY_CONNECTED decoder: the mean keeps 7 more bits than an int8 MEAN would.
    T["pool"] = TensorQ(tl.scale / POOL_FRAC, 0)
    dec = quantize_fc(g.W_dec, g.b_dec, T["pool"].scale, 0, T["logits"])
    meta = Meta(d_input=g.d_input, n_classes=g.n_classes, d_model=H, n_layers=len(g.layers), prenorm=bool(g.prenorm),
                coeff_bits=coeff_bits, ssm=g.ssm, conversion_error=float(g.conversion_error),
                removed=[list(map(int, r)) for r in g.removed], calib_sequences=int(len(calib_x)),
                pool_start=int(g.pool_start))
    return QuantizedModel(meta=meta, tensors=T, enc=enc, layers=layers, dec=dec, stats=stats)


def add_params(t1, t2, to):
    """TFLM int8 ADD (left shift ADD_LEFT_SHIFT, twice_max_input_scale)."""
    twice_max = 2.0 * max(t1.scale, t2.scale)
    m1, s1 = im.quantize_multiplier(t1.scale / twice_max)
    m2, s2 = im.quantize_multiplier(t2.scale / twice_max)
    mo, so = im.quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * to.scale))
    return ResidualAdd(left_shift=ADD_LEFT_SHIFT, in1_zp=int(t1.zero_point), in2_zp=int(t2.zero_point),
                       out_zp=int(to.zero_point), in1=Requant(m1, s1), in2=Requant(m2, s2), out=Requant(mo, so))


def post_params(scale, shift, t_in, t_out):
    """Post-norm BatchNorm h = scale*r + shift as TFLM's 1x1 DEPTHWISE_CONV_2D with per-channel int8
    weights (+-127: the magnitude lives in the multiplier) and int32 bias."""
    s_in = t_in.scale
    s_w = np.maximum(np.abs(scale) / 127.0, np.abs(shift) / (s_in * 2.0 ** 30))
    s_w = f32(np.where(s_w > 0, s_w, 1.0))
    w = np.clip(im.round_half_away(scale / s_w), -127, 127).astype(np.int64)
    bias = im.round_half_away(shift / (s_in * s_w)).astype(np.int64)
    M, S = im.quantize_multiplier(s_in * s_w / t_out.scale)
    return PostNorm(w=w, bias=bias, rq=Requant(M, S), w_scale=s_w, in_zp=int(t_in.zero_point),
                    out_zp=int(t_out.zero_point))


NORM_BITS = 11          # LayerNorm's normalized value n at 2^-11 (|n| < sqrt(H) <= 16: int16 range)
LN_BIAS_LIMIT = 2 ** 29     # |beta / gamma| at n's scale; keeps the requantization input narrow (< 2^30)


def layer_norm_params(ln, channels, t_in, t_out):
    """The integer LayerNorm (qmodel.LayerNormQ) of float (gamma, beta, eps) over H channels, input
    quantized as t_in, output t_out, computing the outputs for `channels`.

    Bounds (H <= 256): V = H S2 - S1^2 <= H^2 255^2 / 4 < 2^31; w_shift = the largest k <= 15 with
    (Vmax + eps) 4^k < 2^31 (more bits for the square root), W = V 4^k + eps 4^k. With S = isqrt(W) and R = rdiv(2^P, S),
    |H q - S1| <= sqrt((H-1) V) and sqrt(W) < S + 1 give |(H q - S1) R| < 2.1 sqrt(H-1) 2^(P-k): P - k
    is chosen so that this stays below 2^30."""
    gamma, beta, eps = (np.asarray(ln[0], np.float64), np.asarray(ln[1], np.float64), float(ln[2]))
    H, channels = len(gamma), np.asarray(channels, np.int64)
    s_in = t_in.scale
    v_max = (H * H * 255 * 255) // 4
    eps_v = eps * H * H / (s_in * s_in)            # eps in V's units
    w_shift = 0
    while w_shift < 15 and (v_max + eps_v) * 4.0 ** (w_shift + 1) < 2 ** 31:
        w_shift += 1
    # eps in W's units (4^k finer than V's: it matters when V is a few units), clamped to the int32 room
    eps_q = int(min(round(eps_v * 4 ** w_shift), 2 ** 31 - 1 - (v_max << (2 * w_shift))))
    # P - k: as large as |(H q - S1) R| < 2^30 allows, but P <= 30 (R <= 2^P is an int32); the square root
    # (S >= 2^k H std) then keeps >= 7 bits at std >= 1 LSB for any H, the reciprocal (R S = 2^P) the rest
    frac = min(int(math.floor(math.log2(2.0 ** 30 / (2.1 * math.sqrt(max(H - 1, 1)))))), 30 - w_shift)
    recip_bits = frac + w_shift
    g, b = gamma[channels], beta[channels]
    # |gamma| at least |beta| 2^NORM_BITS / LN_BIAS_LIMIT (and > 0): a smaller gamma moves the output by
    # < 2^-14 of beta, far below an output step, and the bias stays narrow
    mag = np.maximum(np.abs(g), np.maximum(np.abs(b), t_out.scale) * 2.0 ** NORM_BITS / LN_BIAS_LIMIT)
    bias = im.round_half_away(b / mag * 2.0 ** NORM_BITS).astype(np.int64)
    M, S = im.quantize_multiplier(mag * 2.0 ** -NORM_BITS / t_out.scale)
    return LayerNormQ(channels=channels, width=H, eps=eps_q, w_shift=w_shift, recip_bits=recip_bits,
                      norm_shift=frac - NORM_BITS, sign=np.where(g < 0, -1, 1).astype(np.int64), bias=bias,
                      rq=Requant(M, S), in_zp=int(t_in.zero_point), out_zp=int(t_out.zero_point))
