"""The int8 model, typed: dataclasses with named fields, one versioned on-disk format, and model.json.

  QuantizedModel
    meta: Meta                       shapes and export options
    tensors: {name: TensorQ}         every activation's (scale, zero point): x, h0, (n0: pre-norm LayerNorm), y0, g0,
                                     a0, b0, z0, r0, ...
    enc, dec: FullyConnected         encoder x -> h0, decoder (16x8) pool -> logits
    layers: [Layer]                  ssm: Recurrence, gelu/sigmoid tables, fc_a/fc_b: FullyConnected (the GLU
                                     mixer halves), mul: GluMul, add: ResidualAdd, post: PostNorm (BatchNorm) or
                                     None, layer_norm: LayerNormQ or None (pre-norm: h -> n, post-norm: r -> h)
    stats: dict                      coefficient errors (report.json "coefficients")

Everything the C needs that can be computed at export is computed here (TFLM's Prepare/Eval split):
`Requant` records carry the multiplier, TFLM shift and the derived left shift, right shift and 64-bit
rounding constant; `ResidualAdd` its two input tables (the scaled inputs of TFLM's ADD as 256-entry int32
maps, exact), `Recurrence` the readout bound that lets the requantization use one high-word multiply.

On disk: DIR/qmodel.npz = the arrays + a JSON header `{"format": FORMAT, "model": tree}`. Format -2 (before
LayerNorm and causal_half) still loads: its files are -3 files without those fields, which default to absent.
Any other format or a damaged file gives a one-line UserError naming the fix (re-export).
"""

from dataclasses import dataclass, field, fields, is_dataclass
import json
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import UserError
from . import intmath as im

FORMAT = "s4op-micro/int8-model-3"
READABLE_FORMATS = (FORMAT, "s4op-micro/int8-model-2")   # -2: no LayerNorm, mean pooling
ADD_LEFT_SHIFT = 20        # TFLM int8 ADD: both inputs are scaled by 2^20 before their multipliers


@dataclass(frozen=True)
class TensorQ:
    """int8 (or int16) tensor quantization: real = scale * (q - zero_point)."""
    scale: float
    zero_point: int


@dataclass
class Requant:
    """TFLM MultiplyByQuantizedMultiplier(x, mult, shift) per output channel (arrays) or per tensor
    (0-d arrays), with the constants the C uses, all derived at export:
      left = max(shift, 0), right = max(-shift, 0),
      rounding = 2^30 + 2^(30 + right) (SRDHM's and RDBPOT's roundings as one 64-bit sum, right >= 1)."""
    mult: np.ndarray
    shift: np.ndarray

    def __post_init__(self):
        self.mult = np.asarray(self.mult, np.int64)
        self.shift = np.asarray(self.shift, np.int64)

    @property
    def left(self):
        return np.maximum(self.shift, 0)

    @property
    def right(self):
        return np.maximum(-self.shift, 0)

    @property
    def rounding(self):
        return (np.int64(1) << 30) + (np.int64(1) << (30 + self.right))

    def __call__(self, x):
        return im.mbqm(x, self.mult, self.shift)


@dataclass
class FullyConnected:
    """int8 FULLY_CONNECTED, symmetric per-output-channel int8 weights."""
    w: np.ndarray              # (n_out, n_in) int8 values
    bias: np.ndarray           # (n_out,) int32 at in_scale * w_scale
    bias_eff: np.ndarray       # bias - in_zp * sum(w): the input offset folded (CMSIS-NN, exact)
    rq: Requant                # (n_out,) requantization to the output
    w_scale: np.ndarray        # (n_out,) float
    in_zp: int
    out_zp: int

    @property
    def n_out(self):
        return int(self.w.shape[0])

    @property
    def n_in(self):
        return int(self.w.shape[1])

    def acc_bound(self, x_max=128):
        """max |bias_eff + sum w x| over int8 inputs (|x| <= x_max): the accumulator bound."""
        return np.abs(self.bias_eff) + x_max * np.abs(self.w).sum(axis=1)


@dataclass
class Polar8:
    """8-bit polar A codes: per mode (rho, phi), per kept channel (lg_lo, lg_step, dth)."""
    rho: np.ndarray
    phi: np.ndarray
    lg_lo: np.ndarray
    lg_step: np.ndarray
    dth: np.ndarray


@dataclass
class Recurrence:
    """The SSM of one layer: per kept channel (channels[j]) its modes mode_start[j]:mode_start[j+1]."""
    channels: np.ndarray       # kept channel -> channel index (active + bypassed)
    active: np.ndarray         # 1 where the channel has an SSM (else bypassed: d only)
    mode_start: np.ndarray     # (n_kept + 1,)
    a_re: np.ndarray           # Q15 A per mode (for 8-bit codes: the decoded values)
    a_im: np.ndarray
    sh: np.ndarray             # input shift per mode: B = 2^sh
    k: np.ndarray              # constant input per mode (folded pre-norm offset)
    c_re: np.ndarray           # readout codes per mode
    c_im: np.ndarray
    d: np.ndarray              # skip per kept channel
    bias: np.ndarray           # per kept channel
    out: Requant               # per kept channel: readout accumulator -> y
    c_scale: np.ndarray
    state_gain: np.ndarray     # complex per mode: x~ = gain * x
    in_zp: int
    out_zp: int
    polar: Optional[Polar8] = None

    @property
    def has_k(self):
        return bool(np.any(self.k != 0))

    @property
    def n_kept(self):
        return len(self.channels)

    @property
    def n_modes(self):
        return int(self.mode_start[-1])

    def acc_bound(self):
        """Per kept channel, max |bias + d u + sum Re(c x~)| over every int16 state and int8 input."""
        ms = self.mode_start
        cs = np.concatenate([[0], np.cumsum(np.abs(self.c_re) + np.abs(self.c_im))]).astype(np.int64)
        l1 = cs[ms[1:]] - cs[ms[:-1]]
        return 32768 * l1 + 255 * np.abs(self.d) + np.abs(self.bias)


@dataclass
class GluMul:
    """TFLM int8 MUL z = a * sigmoid(b)."""
    in1_zp: int
    in2_zp: int
    rq: Requant
    out_zp: int


@dataclass
class ResidualAdd:
    """TFLM int8 ADD r = h + z: inputs scaled by 2^left_shift and their multipliers, summed, requantized."""
    left_shift: int
    in1_zp: int
    in2_zp: int
    out_zp: int
    in1: Requant
    in2: Requant
    out: Requant

    def in1_table(self):
        """int32[256]: MBQM((q - in1_zp) << left_shift, in1) for q = -128..127 (exact: the C's lookup)."""
        return self.in1(im.shl_sat(np.arange(-128, 128) - self.in1_zp, self.left_shift))

    def in2_table(self):
        return self.in2(im.shl_sat(np.arange(-128, 128) - self.in2_zp, self.left_shift))


@dataclass
class PostNorm:
    """Post-norm BatchNorm as TFLM's 1x1 DEPTHWISE_CONV_2D: per channel int8 weight and int32 bias."""
    w: np.ndarray
    bias: np.ndarray
    rq: Requant
    w_scale: np.ndarray
    in_zp: int
    out_zp: int


@dataclass
class LayerNormQ:
    """nn.LayerNorm over the H channels of an int8 tensor q, per timestep, in int32 (quantize.py
    layer_norm_params derives the constants; reference.layer_norm is the executable form):

      S1 = sum q, S2 = sum q^2, V = H S2 - S1^2            (= H^2 var in input LSB^2; < 2^31 for H <= 256)
      W = (V << 2 w_shift) + eps                           eps = torch's eps in W's units
      R = rdiv(2^recip_bits, isqrt(max(W, 1)))             the reciprocal square root, exact integers
      per output j (input channel channels[j]):
        n   = RDBPOT((H q - S1) R, norm_shift)            normalized value at 2^-NORM_BITS (|n| < 2^15 sqrt H)
        out = sat8(out_zp + MBQM(sign n + bias, rq))      gamma (|.| in rq, sign) and beta (bias)"""
    channels: np.ndarray       # input channel of each output (post-norm: all H; pre-norm: the kept SSM inputs)
    width: int                 # H: the channels the statistics run over
    eps: int
    w_shift: int
    recip_bits: int
    norm_shift: int
    sign: np.ndarray           # +-1 per output: the sign of gamma
    bias: np.ndarray           # per output: beta / |gamma| at the scale of n
    rq: Requant                # per output: |gamma| 2^-NORM_BITS / s_out
    in_zp: int
    out_zp: int

    def acc_bound(self):
        """max |sign n + bias| per output (the requantization's input): the export picks recip_bits so
        that |(H q - S1) R| < 2^30 for every int8 input."""
        return (1 << (30 - self.norm_shift)) + 1 + np.abs(self.bias)


@dataclass
class Layer:
    ssm: Recurrence
    gelu: np.ndarray           # int8[256], index y + 128
    fc_a: FullyConnected       # GLU value half (H outputs over the kept channels)
    fc_b: FullyConnected       # GLU gate half
    sigmoid: np.ndarray        # int8[256], index b + 128, output (1/256, -128)
    mul: GluMul
    add: ResidualAdd
    post: Optional[PostNorm] = None
    layer_norm: Optional[LayerNormQ] = None


@dataclass
class Meta:
    d_input: int
    n_classes: int
    d_model: int
    n_layers: int
    prenorm: bool
    coeff_bits: int
    ssm: str
    conversion_error: float
    removed: list
    calib_sequences: int
    board: Optional[str] = None
    pool_start: int = 0        # first pooled step: 0 (mean) or seq_len // 2 (causal_half)


@dataclass
class QuantizedModel:
    """Everything the C needs; see the module docstring and docs/integer_contract.md."""
    meta: Meta
    tensors: dict              # name -> TensorQ
    enc: FullyConnected
    layers: list               # [Layer]
    dec: FullyConnected
    stats: dict = field(default_factory=dict)

    def quantize_input(self, x):
        """float (n, L, C) -> int8: floor(x/scale + 0.5) + zp, saturated (s4op_quantize_input in C)."""
        t = self.tensors["x"]
        q = np.floor(np.asarray(x, dtype=np.float64) * (1.0 / t.scale) + 0.5) + t.zero_point
        return np.clip(q, -128, 127).astype(np.int8)

    def dequantize_scores(self, s):
        t = self.tensors["logits"]
        return (np.asarray(s, dtype=np.float64) - t.zero_point) * t.scale


# --- on disk ---------------------------------------------------------------------------------------

TYPES = {c.__name__: c for c in (TensorQ, Requant, FullyConnected, Polar8, Recurrence, GluMul, ResidualAdd,
                                  PostNorm, LayerNormQ, Layer, Meta, QuantizedModel)}


def _to_tree(obj, key, arrays):
    if is_dataclass(obj):
        return {"__type__": type(obj).__name__,
                **{f.name: _to_tree(getattr(obj, f.name), f"{key}.{f.name}", arrays) for f in fields(obj)}}
    if isinstance(obj, dict):
        return {k: _to_tree(v, f"{key}.{k}", arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_tree(v, f"{key}.{i}", arrays) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        arrays[key] = obj
        return {"__array__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _from_tree(obj, arrays):
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        vals = {k: _from_tree(v, arrays) for k, v in obj.items() if k != "__type__"}
        return TYPES[obj["__type__"]](**vals) if "__type__" in obj else vals
    if isinstance(obj, list):
        return [_from_tree(v, arrays) for v in obj]
    return obj


def save_qmodel(q, path):
    arrays = {}
    header = {"format": FORMAT, "model": _to_tree(q, "m", arrays)}
    np.savez_compressed(path, __header__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)


def load_qmodel(path):
    path = Path(path)
    if path.is_dir():
        path = path / "qmodel.npz"
    if not path.is_file():
        raise UserError(f"{path} not found: not an export directory (run `s4op-micro export` first)")
    fix = "re-run `s4op-micro export` to re-create it"
    try:
        with np.load(path) as z:
            if "__header__" not in z.files:
                raise UserError(f"{path} is an int8 model of an older format (not {FORMAT}); {fix}")
            header = json.loads(bytes(z["__header__"]).decode())
            if header.get("format") not in READABLE_FORMATS:
                raise UserError(f"{path} has format {header.get('format')!r}, this version reads {FORMAT!r}; {fix}")
            arrays = {k: z[k] for k in z.files if k != "__header__"}
        q = _from_tree(header["model"], arrays)
        if not isinstance(q, QuantizedModel):
            raise TypeError("not a QuantizedModel")
        return q
    except UserError:
        raise
    except Exception as e:  # zipfile, numpy, json and KeyError/TypeError on a foreign or damaged file
        raise UserError(f"{path} is corrupt ({type(e).__name__}); {fix}") from None


# --- model.json ------------------------------------------------------------------------------------

def _arr(a):
    a = np.asarray(a)
    return {"shape": list(a.shape), "dtype": str(a.dtype)}


def _fc_json(p, x, out):
    return {"input": x, "output": out, "weight": {"shape": list(p.w.shape), "dtype": "int8", "zero_point": 0,
                                                  "scale": np.asarray(p.w_scale).tolist()},
            "bias": {"shape": list(p.bias.shape), "dtype": "int32"},
            "multiplier": p.rq.mult.tolist(), "shift": p.rq.shift.tolist()}


def model_json(q, board_name):
    """Every tensor's shape, scale and zero point, and every requantization's multiplier/shift."""
    n = len(q.layers)
    layers = []
    for i, L in enumerate(q.layers):
        s, m, a = L.ssm, L.mul, L.add
        d = {"ssm": {"input": f"h{i}", "output": f"y{i}", "channels": s.channels.tolist(),
                     "active": s.active.tolist(), "mode_start": s.mode_start.tolist(),
                     "state": {"dtype": "int16", "shape": [s.n_modes, 2], "gain_abs": np.abs(s.state_gain).tolist()},
                     "A": _arr(s.a_re), "input_shift": s.sh.tolist(), "const_input": _arr(s.k),
                     "C": {"shape": [len(s.c_re), 2], "dtype": f"int{q.meta.coeff_bits}",
                           "scale_per_channel": np.asarray(s.c_scale).tolist()},
                     "D": _arr(s.d), "bias": _arr(s.bias), "multiplier": s.out.mult.tolist(),
                     "shift": s.out.shift.tolist()},
             "gelu_table": {"input": f"y{i}", "output": f"g{i}", "shape": [256], "dtype": "int8"},
             "fc_a": _fc_json(L.fc_a, f"g{i}", f"a{i}"), "fc_b": _fc_json(L.fc_b, f"g{i}", f"b{i}"),
             "sigmoid_table": {"input": f"b{i}", "output": "sig", "shape": [256], "dtype": "int8"},
             "mul": {"inputs": [f"a{i}", "sig"], "output": f"z{i}", "in1_zp": m.in1_zp, "in2_zp": m.in2_zp,
                     "mult": int(m.rq.mult), "shift": int(m.rq.shift), "out_zp": m.out_zp},
             "add": {"inputs": [f"h{i}", f"z{i}"], "output": f"r{i}", "left_shift": a.left_shift,
                     "in1_zp": a.in1_zp, "in2_zp": a.in2_zp, "out_zp": a.out_zp,
                     "in1_mult": int(a.in1.mult), "in1_shift": int(a.in1.shift),
                     "in2_mult": int(a.in2.mult), "in2_shift": int(a.in2.shift),
                     "out_mult": int(a.out.mult), "out_shift": int(a.out.shift)}}
        if s.polar is not None:
            d["ssm"]["A_code"] = {"rho": _arr(s.polar.rho), "phi": _arr(s.polar.phi),
                                  "per_channel": ["lg_lo", "lg_step", "dth"]}
        if L.post is not None:
            d["post_norm"] = {"input": f"r{i}", "output": f"h{i + 1}", **_fc_json(L.post, f"r{i}", f"h{i + 1}")}
            d["post_norm"]["weight"]["shape"] = [len(L.post.w)]
        if L.layer_norm is not None:
            p = L.layer_norm
            src, dst = (f"h{i}", f"n{i}") if q.meta.prenorm else (f"r{i}", f"h{i + 1}")
            d["layer_norm"] = {"input": src, "output": dst, "channels": p.channels.tolist(), "width": p.width,
                               "eps": p.eps, "w_shift": p.w_shift, "recip_bits": p.recip_bits,
                               "norm_shift": p.norm_shift, "sign": p.sign.tolist(), "bias": p.bias.tolist(),
                               "multiplier": p.rq.mult.tolist(), "shift": p.rq.shift.tolist()}
        layers.append(d)
    meta = {f.name: getattr(q.meta, f.name) for f in fields(q.meta)}
    if meta["board"] is None:
        del meta["board"]
    tensors = {k: {"scale": t.scale, "zero_point": t.zero_point} for k, t in q.tensors.items()}
    return {"format": FORMAT, "board": board_name, "meta": meta, "tensors": tensors,
            "encoder": _fc_json(q.enc, "x", "h0"), "layers": layers, "pool": {"input": f"h{n}", "output": "pool"},
            "decoder": _fc_json(q.dec, "pool", "logits")}
