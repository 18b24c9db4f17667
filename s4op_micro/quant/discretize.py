"""Model -> FloatGraph: the float64 streaming graph that the integer model quantizes.

What happens here (all exact algebra, checked against `SequenceClassifier.forward_recurrent`):

- every layer's *kept* channels (active + bypassed; removed channels output 0, GELU(0) = 0, so their
  mixer columns are dropped) with, for active channels, the diagonal recurrence of their kept
  modes (S4D: `kernel.recurrence()`, pruned modes with mode_mask = 0 dropped; S4:
  `kernel.diagonal()`, an eigendecomposition, whose error is reported);
- conjugate folding: y = 2 Re(C x) is stored as Re(Chat x) with Chat = 2C, and each mode is taken
  with Im(dA) >= 0 (the conjugate mode, conj(dA, dB, C), gives the same real output);
- BatchNorm folding (running statistics, eval mode): a pre-norm BatchNorm in front of the SSM
  becomes u = alpha*h + beta per channel, folded into the SSM input (alpha scales dB and D,
  beta becomes a constant state input and an output bias; for a bypassed channel y = alpha*h+beta);
  a post-norm BatchNorm after the residual add becomes a per-channel affine (`post_scale`,
  `post_shift`) on r = h + z.
- LayerNorm cannot fold (its statistics depend on the timestep): `ln` = (gamma, beta, eps) over all H
  channels, applied to h (pre-norm: the SSM input n = LN(h)[kept]) or to r (post-norm: h = LN(r)).
- causal_half pooling: `pool_start` = seq_len // 2, the first step the running mean sums.

Token embeddings are refused (UserError).
`run_float` runs a FloatGraph over (n, L, C) inputs layer by layer over whole sequences (the
recurrence's readout as an FFT convolution, the state magnitudes by a cache-blocked scan) and records
the ranges calibration needs (per tensor min/max, per mode max |state|); equal to streaming the
graph one step at a time to float64 round-off.
"""

from dataclasses import dataclass, field
import math

import numpy as np
import torch
import torch.nn as nn

from ..core.errors import UserError


@dataclass
class FloatLayer:
    channels: np.ndarray      # (K,) original channel index of each kept channel
    active: np.ndarray        # (K,) bool: has an SSM (else bypassed: y = u)
    alpha: np.ndarray         # (K,) SSM input u = alpha*h + beta (pre-norm BatchNorm; else 1, 0)
    beta: np.ndarray
    D: np.ndarray             # (K,) skip (1 for bypassed channels, whose modes are empty)
    mode_start: np.ndarray    # (K+1,) offsets into the flat mode arrays
    dA: np.ndarray            # (M,) complex, Im >= 0
    dB: np.ndarray            # (M,) complex
    C2: np.ndarray            # (M,) complex, y = sum Re(C2 x) + D u
    W_out: np.ndarray         # (2H, K) mixer (1x1 conv) columns of the kept channels
    b_out: np.ndarray         # (2H,)
    post_scale: np.ndarray = None  # (H,) post-norm BatchNorm as h' = post_scale*r + post_shift
    post_shift: np.ndarray = None
    ln: tuple = None          # LayerNorm (gamma (H,), beta (H,), eps): pre-norm on h, post-norm on r
    modes_total: int = 0      # modes before mode pruning (for reports)


@dataclass
class FloatGraph:
    d_input: int
    n_classes: int
    d_model: int
    prenorm: bool
    ssm: str
    W_enc: np.ndarray
    b_enc: np.ndarray
    layers: list
    W_dec: np.ndarray
    b_dec: np.ndarray
    conversion_error: float = 0.0
    removed: list = field(default_factory=list)  # per layer, removed channel indices
    pool_start: int = 0       # first pooled step (causal_half: seq_len // 2)


def _np(t):
    return t.detach().cpu().to(torch.float64).numpy() if t.is_floating_point() else t.detach().cpu().numpy()


def _bn_affine(bn):
    """BatchNorm1d in eval mode as y = s*x + t."""
    var = _np(bn.running_var)
    mean = _np(bn.running_mean)
    s = 1.0 / np.sqrt(var + bn.eps)
    if bn.affine:
        s = s * _np(bn.weight)
        return s, _np(bn.bias) - s * mean
    return s, -s * mean


LAYER_NORM_MAX_WIDTH = 256     # H S2 and S1^2 stay below 2^31 (H^2 2^14 <= 2^30)


def _ln_params(ln):
    """(gamma, beta, eps) of an nn.LayerNorm over the channels (no affine: 1, 0)."""
    H = ln.normalized_shape[0]
    gamma = _np(ln.weight) if ln.weight is not None else np.ones(H)
    beta = _np(ln.bias) if ln.bias is not None else np.zeros(H)
    return gamma, beta, float(ln.eps)


def layer_norm(x, ln):
    """float LayerNorm over the last axis (torch: biased variance, eps inside the square root)."""
    gamma, beta, eps = ln
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def check_supported(model):
    """UserError for layers the integer export does not implement."""
    if isinstance(model.encoder, nn.Embedding):
        raise UserError("unsupported layer: Embedding (token inputs); the integer export takes real-valued "
                        "sequences (train without a vocabulary)")
    for norm in model.norms:
        if isinstance(norm, nn.LayerNorm):
            if tuple(norm.normalized_shape) != (model.config["d_model"],):
                raise UserError(f"unsupported LayerNorm shape {tuple(norm.normalized_shape)}; the integer export "
                                "normalizes over the channels")
            if model.config["d_model"] > LAYER_NORM_MAX_WIDTH:
                raise UserError(f"LayerNorm over d_model={model.config['d_model']} channels: the integer export's "
                                f"int32 variance holds at most {LAYER_NORM_MAX_WIDTH}; use --norm batch")
        elif not isinstance(norm, nn.BatchNorm1d) or not norm.track_running_stats:
            raise UserError(f"unsupported layer: {type(norm).__name__}; train with --norm batch or layer")
    for i, layer in enumerate(model.layers):
        kept = layer.h - len(layer.removed)
        if kept == 0:
            raise UserError(f"layer {i} has zero operators left (all {layer.h} removed): nothing reaches its "
                            "mixer; the checkpoint is inconsistent (pruning keeps at least one per layer)")
    for name, p in model.state_dict().items():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise UserError(f"checkpoint parameter {name} has NaN/inf values; the model is corrupt (re-train it)")


@torch.no_grad()
def layer_modes(layer):
    """Diagonal recurrence of a layer's active operators: (dA, dB, C) complex (H_active, M) numpy,
    keep mask (H_active, M), conversion error."""
    kernel = layer.kernel
    if hasattr(kernel, "diagonal") and layer.ssm == "s4":
        dA, dB, C, err = kernel.diagonal()
        keep = torch.ones(dA.shape, dtype=torch.bool)
    else:
        dA, dB, C = (t.to(torch.complex128) for t in kernel.recurrence())
        err = 0.0
        keep = kernel.mode_mask > 0
    return (dA.to(torch.complex128).numpy(), dB.to(torch.complex128).numpy(), C.to(torch.complex128).numpy(),
            keep.numpy(), float(err))


@torch.no_grad()
def discretize(model):
    """The FloatGraph of a (possibly pruned) SequenceClassifier in eval mode."""
    check_supported(model)
    cfg = model.config
    H = cfg["d_model"]
    prenorm = bool(cfg["prenorm"])
    layers, removed_all, err_max = [], [], 0.0
    for i, layer in enumerate(model.layers):
        active = layer.active.tolist()
        removed = set(layer.removed.tolist())
        kept = [c for c in range(H) if c not in removed]
        is_ln = isinstance(model.norms[i], nn.LayerNorm)
        bn_s, bn_t = (None, None) if is_ln else _bn_affine(model.norms[i])
        alpha = bn_s[kept] if prenorm and not is_ln else np.ones(len(kept))
        beta = bn_t[kept] if prenorm and not is_ln else np.zeros(len(kept))
        dA, dB, C, keep, err = layer_modes(layer) if active else (None, None, None, None, 0.0)
        err_max = max(err_max, err)
        Dp = _np(layer.D)
        act_pos = {c: j for j, c in enumerate(active)}
        starts, fA, fB, fC, D = [0], [], [], [], []
        for c in kept:
            if c in act_pos:
                j = act_pos[c]
                m = keep[j]
                a, b, cc = dA[j][m], dB[j][m], C[j][m]
                flip = a.imag < 0
                a, b, cc = np.where(flip, a.conj(), a), np.where(flip, b.conj(), b), np.where(flip, cc.conj(), cc)
                fA.append(a), fB.append(b), fC.append(2 * cc)
                D.append(Dp[j])
            else:
                D.append(1.0)
            starts.append(starts[-1] + (len(fA[-1]) if c in act_pos else 0))
        conv = layer.output_linear[0]
        W = _np(conv.weight)[:, :, 0]
        fl = FloatLayer(
            channels=np.array(kept, dtype=np.int64), active=np.array([c in act_pos for c in kept]),
            alpha=alpha, beta=beta, D=np.array(D, dtype=np.float64), mode_start=np.array(starts, dtype=np.int64),
            dA=np.concatenate(fA) if fA else np.zeros(0, complex), dB=np.concatenate(fB) if fB else np.zeros(0, complex),
            C2=np.concatenate(fC) if fC else np.zeros(0, complex), W_out=W[:, kept], b_out=_np(conv.bias),
            modes_total=len(active) * (layer.n // 2),
        )
        if is_ln:
            fl.ln = _ln_params(model.norms[i])
        elif not prenorm:
            fl.post_scale, fl.post_shift = bn_s, bn_t
        layers.append(fl)
        removed_all.append(sorted(removed))
    return FloatGraph(
        d_input=cfg["d_input"], n_classes=cfg["n_classes"], d_model=H, prenorm=prenorm, ssm=cfg["ssm"],
        W_enc=_np(model.encoder.weight), b_enc=_np(model.encoder.bias), layers=layers,
        W_dec=_np(model.decoder.weight), b_dec=_np(model.decoder.bias), conversion_error=err_max,
        removed=removed_all, pool_start=model.pool_start(cfg["seq_len"]) if cfg.get("seq_len") else 0,
    )


def segment_matrix(mode_start):
    """(M, K) 0/1 matrix summing each channel's modes (channels may have none)."""
    K, M = len(mode_start) - 1, int(mode_start[-1])
    S = np.zeros((M, K))
    S[np.arange(M), np.repeat(np.arange(K), np.diff(mode_start))] = 1.0
    return S


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _erf(x):
    from scipy.special import erf

    return erf(x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class Ranges:
    """min/max of every tensor seen, and max |state| per mode, accumulated over batches."""

    def __init__(self):
        self.lo, self.hi, self.state = {}, {}, {}

    def see(self, name, v):
        lo, hi = float(np.min(v)), float(np.max(v))
        self.lo[name] = min(lo, self.lo.get(name, lo))
        self.hi[name] = max(hi, self.hi.get(name, hi))

    def see_state(self, i, x):
        m = np.abs(x).max(axis=0) if len(x) else np.zeros(x.shape[1:])
        self.state[i] = np.maximum(m, self.state.get(i, m))

    def range(self, name):
        return self.lo[name], self.hi[name]


ROWS_PER_BATCH = 2**17    # sequences x steps that run_float holds at once (~130 MB per (rows, 128) float64)


def run_float(g, x, ranges=None, all_steps=False):
    """Stream the FloatGraph over x (n, L, C) in float64: logits at the last step (n, classes), or
    at every step (n, L, classes). `ranges` (a Ranges) records calibration statistics.

    Layer by layer over whole sequences (the only dependence on time is each mode's linear
    recurrence): the readout sum_m Re(C2 x_m) is a causal convolution of u with the channel's
    impulse response (FFT, `ssm_readout`), the per-mode max |state| a scan over time vectorized
    over sequences and modes (`state_absmax`). Equal to the step-by-step recurrence to float64
    round-off (tests/test_export_speed.py)."""
    x = np.asarray(x, dtype=np.float64)
    n, L, _ = x.shape
    rows = max(1, ROWS_PER_BATCH // max(L, 1))                 # bounds the memory of the whole-sequence arrays
    if n > rows:
        return np.concatenate([run_float(g, x[i : i + rows], ranges, all_steps) for i in range(0, n, rows)])
    see = ranges.see if ranges is not None else (lambda *a: None)
    see("x", x)
    h = _dense(x, g.W_enc, g.b_enc)
    see("h0", h)
    for i, fl in enumerate(g.layers):
        if g.prenorm and fl.ln is not None:
            u = layer_norm(h, fl.ln)[:, :, fl.channels]
            see(f"n{i}", u)
        else:
            u = fl.alpha * h[:, :, fl.channels] + fl.beta
        if ranges is not None:
            ranges.see_state(i, state_absmax(fl.dA, fl.dB, fl.mode_start, u)[None])
        y = fl.D * u + ssm_readout(fl.dA, fl.dB, fl.C2, fl.mode_start, u)
        see(f"y{i}", y)
        v = _dense(gelu(y), fl.W_out, fl.b_out)
        a, b = v[..., : g.d_model], v[..., g.d_model :]
        see(f"a{i}", a), see(f"b{i}", b)
        z = a * sigmoid(b)
        see(f"z{i}", z)
        r = h + z
        see(f"r{i}", r)
        if g.prenorm:
            h = r
        else:
            h = layer_norm(r, fl.ln) if fl.ln is not None else fl.post_scale * r + fl.post_shift
        see(f"h{i + 1}", h)
    # the running mean of h from step pool_start on: cumsum adds in the same order as a running sum
    t = np.arange(L)
    pooled = np.cumsum(h * (t >= g.pool_start)[:, None], axis=1) / np.maximum(t + 1 - g.pool_start, 1)[:, None]
    logits = _dense(pooled, g.W_dec, g.b_dec)                  # (n, L, classes): the scores after every step
    see("logits", logits)
    return logits if all_steps else logits[:, -1]


def _dense(x, W, b):
    """x (..., K) @ W.T + b as one 2-D matrix product (numpy's stacked matmul is far slower)."""
    return (x.reshape(-1, x.shape[-1]) @ W.T + b).reshape(*x.shape[:-1], len(W))


def _mode_channels(mode_start):
    return np.repeat(np.arange(len(mode_start) - 1), np.diff(mode_start))


def impulse_response(dA, dB, C2, mode_start, L):
    """(L, K): k_c[j] = sum over channel c's modes of Re(C2 dB dA^j), j = 0..L-1 (the response of
    x_t = dA x_{t-1} + dB u_t, y_t = sum Re(C2 x_t) to a unit impulse)."""
    K, M = len(mode_start) - 1, len(dA)
    if M == 0:
        return np.zeros((L, K))
    p = np.empty((L, M), dtype=np.complex128)
    p[0] = C2 * dB
    p[1:] = dA
    np.cumprod(p, axis=0, out=p)
    w = p.real
    k = np.zeros((L, K))
    nonempty = np.flatnonzero(np.diff(mode_start) > 0)
    k[:, nonempty] = np.add.reduceat(w, mode_start[nonempty], axis=1)
    return k


def ssm_readout(dA, dB, C2, mode_start, u):
    """sum_m Re(C2_m x_m) per channel for u (n, L, K), x the zero-started recurrence
    x_t = dA x_{t-1} + dB u_t: a causal convolution with `impulse_response`, by FFT in float64
    (over a contiguous time axis: pocketfft is several times slower on a strided one)."""
    from scipy import fft

    n, L, K = u.shape
    if len(dA) == 0:
        return np.zeros(u.shape)
    k = impulse_response(dA, dB, C2, mode_start, L)
    F = fft.next_fast_len(2 * L - 1, real=True)
    spec = fft.rfft(np.ascontiguousarray(u.transpose(0, 2, 1)), n=F, axis=2)
    spec *= fft.rfft(np.ascontiguousarray(k.T), n=F, axis=1)
    return fft.irfft(spec, n=F, axis=2)[:, :, :L].transpose(0, 2, 1)


def state_absmax(dA, dB, mode_start, u, block=32):
    """max over sequences and steps of |x_m| per mode (M,) for u (n, L, K), x_t = dA x_{t-1} + dB u_t
    from x = 0. Scanned as x' = x / dB (x'_t = dA x'_{t-1} + u_t: no input multiply) over blocks of
    `block` sequences (the block's state stays in cache); |x| = |dB| |x'|."""
    n, L, K = u.shape
    M = len(dA)
    if M == 0 or n == 0:
        return np.zeros(M)
    counts = np.diff(mode_start)
    uniform = bool((counts == counts[0]).all()) and counts[0] > 0
    mode_ch = _mode_channels(mode_start)
    uT = np.ascontiguousarray(u.transpose(1, 0, 2))            # (L, n, K): one step is contiguous
    best = np.zeros(M)
    for b0 in range(0, n, block):
        nb = min(n, b0 + block) - b0
        xs = np.zeros((nb, M), dtype=np.complex128)
        sq = np.empty((nb, 2 * M))
        a2 = np.empty((nb, M))
        run = np.zeros((nb, M))
        xre = xs.real.reshape(nb, K, counts[0]) if uniform else xs.real
        for t in range(L):
            xs *= dA
            if uniform:
                xre += uT[t, b0 : b0 + nb, :, None]
            else:
                xre += uT[t, b0 : b0 + nb][:, mode_ch]
            np.square(xs.view(np.float64), out=sq)
            np.add(sq[:, 0::2], sq[:, 1::2], out=a2)
            np.maximum(run, a2, out=run)
        np.maximum(best, run.max(axis=0), out=best)
    return np.sqrt(best) * np.abs(dB)
