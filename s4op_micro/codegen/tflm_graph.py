"""A small TFLite flatbuffer writer (tensors, constants, builtin operators -> .tflite bytes) with the
integer building blocks the streaming S4 graph needs, each exact in TFLM's reference kernels.

We write the flatbuffer ourselves (the schema's object API, shipped with `tflite-micro`; TensorFlow
has the same file) rather than running the TFLite converter: every scale, zero point, weight and
bias is then the export's own, so TFLM derives the same (multiplier, shift) pairs and computes what
our integer reference computes. The converter would re-calibrate and pick its own scales.

Constant data is 16-byte aligned in the file (TFLM reads int16/int32/int64 constants in place).
"""

from fractions import Fraction
import math

import numpy as np

try:  # the copy that ships with the TFLM runtime; TensorFlow's is the same schema
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb
except ImportError:  # pragma: no cover
    from tensorflow.lite.python import schema_py_generated as fb
import flatbuffers

from ..quant import intmath as im

DTYPES = {"int8": fb.TensorType.INT8, "int16": fb.TensorType.INT16, "int32": fb.TensorType.INT32,
          "int64": fb.TensorType.INT64, "float32": fb.TensorType.FLOAT32, "bool": fb.TensorType.BOOL,
          "resource": fb.TensorType.RESOURCE}
ALIGN = 16

# builtin op -> its options table (ops not listed take none)
_OPTIONS = {
    "FULLY_CONNECTED": "FullyConnectedOptions", "ADD": "AddOptions", "SUB": "SubOptions",
    "MUL": "MulOptions", "DIV": "DivOptions", "CONCATENATION": "ConcatenationOptions",
    "RESHAPE": "ReshapeOptions", "GATHER": "GatherOptions", "CAST": "CastOptions",
    "QUANTIZE": "QuantizeOptions", "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "BATCH_MATMUL": "BatchMatMulOptions", "SPLIT": "SplitOptions", "SPLIT_V": "SplitVOptions",
    "PACK": "PackOptions", "MAXIMUM": "MaximumMinimumOptions", "MINIMUM": "MaximumMinimumOptions",
    "VAR_HANDLE": "VarHandleOptions", "READ_VARIABLE": "ReadVariableOptions",
    "ASSIGN_VARIABLE": "AssignVariableOptions", "GELU": "GeluOptions",
}
OP_NAMES = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}


class _AlignedBuffer(fb.BufferT):
    """BufferT whose data starts on a 16-byte boundary (the generated Pack aligns to 1)."""

    def Pack(self, builder):
        data = None
        if self.data:
            builder.StartVector(1, len(self.data), ALIGN)
            builder.head -= len(self.data)
            builder.Bytes[builder.head : builder.head + len(self.data)] = self.data
            data = builder.EndVector()
        fb.BufferStart(builder)
        if data is not None:
            fb.BufferAddData(builder, data)
        return fb.BufferEnd(builder)


class Graph:
    """One subgraph under construction; tensors are referred to by index. The helper methods
    (cast, add, ...) append one operator and return its output tensor."""

    def __init__(self, description="s4op-micro"):
        self.description = description
        self.tensors, self.operators, self.opcodes = [], [], {}
        self.buffers = [_AlignedBuffer()]        # buffer 0: the empty sentinel
        self._names = {}

    # --- tensors -----------------------------------------------------------------------------------
    def tensor(self, name, dtype, shape, scale=None, zero_point=0, axis=0, data=None):
        """A tensor: an activation, or a constant when `data` is given. scale/zero_point: scalars
        (per tensor) or sequences (per channel along `axis`)."""
        n = self._names.get(name, 0)
        self._names[name] = n + 1
        t = fb.TensorT()
        t.name = name if n == 0 else f"{name}_{n}"
        t.shape = [int(s) for s in shape]
        t.type = DTYPES[dtype]
        t.buffer = 0
        if data is not None:
            arr = np.ascontiguousarray(np.asarray(data).astype(dtype).reshape(t.shape))
            buf = _AlignedBuffer()
            buf.data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        if scale is not None:
            q = fb.QuantizationParametersT()
            q.scale = [float(np.float32(s)) for s in np.atleast_1d(scale)]
            zp = np.broadcast_to(np.atleast_1d(zero_point), (len(q.scale),))
            q.zeroPoint = [int(z) for z in zp]
            q.quantizedDimension = int(axis)
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name, data, dtype, scale=None, zero_point=0, axis=0, shape=None):
        data = np.asarray(data)
        return self.tensor(name, dtype, data.shape if shape is None else shape, scale, zero_point, axis, data)

    def like(self, x, name, dtype=None, shape=None, scale=None, zero_point=0):
        return self.tensor(name, dtype or self.dtype(x), self.shape(x) if shape is None else shape, scale, zero_point)

    def shape(self, i):
        return list(self.tensors[i].shape)

    def dtype(self, i):
        return {v: k for k, v in DTYPES.items()}[self.tensors[i].type]

    def qparams(self, i):
        q = self.tensors[i].quantization
        return (q.scale, q.zeroPoint) if q is not None and q.scale else (None, None)

    # --- operators ---------------------------------------------------------------------------------
    def op(self, name, inputs, outputs, **options):
        """Append builtin operator `name`; options are the schema's fields (camelCase)."""
        if name not in self.opcodes:
            self.opcodes[name] = len(self.opcodes)
        o = fb.OperatorT()
        o.opcodeIndex = self.opcodes[name]
        o.inputs, o.outputs = [int(i) for i in inputs], [int(i) for i in outputs]
        if name in _OPTIONS:
            opts = getattr(fb, _OPTIONS[name] + "T")()
            for k, v in options.items():
                if not hasattr(opts, k):
                    raise ValueError(f"{name} has no option {k}")
                setattr(opts, k, v)
            o.builtinOptionsType = getattr(fb.BuiltinOptions, _OPTIONS[name])
            o.builtinOptions = opts
        elif options:
            raise ValueError(f"{name} takes no options")
        self.operators.append(o)
        return outputs[0] if len(outputs) == 1 else outputs

    @property
    def ops_used(self):
        return sorted(self.opcodes)

    def serialize(self, inputs, outputs):
        sg = fb.SubGraphT()
        sg.tensors, sg.operators, sg.name = self.tensors, self.operators, "step"
        sg.inputs, sg.outputs = list(inputs), list(outputs)
        m = fb.ModelT()
        m.version, m.description, m.subgraphs, m.buffers = 3, self.description, [sg], self.buffers
        m.operatorCodes = []
        for name in sorted(self.opcodes, key=self.opcodes.get):
            oc = fb.OperatorCodeT()
            oc.builtinCode = getattr(fb.BuiltinOperator, name)
            oc.deprecatedBuiltinCode = min(oc.builtinCode, 127)   # 127: "see builtinCode"
            oc.version = 1
            m.operatorCodes.append(oc)
        b = flatbuffers.Builder(1 << 16)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    # --- building blocks ---------------------------------------------------------------------------
    def cast(self, x, dtype, name="cast"):
        return self.op("CAST", [x], [self.like(x, name, dtype)])

    def reshape(self, x, shape, name="reshape"):
        s = self.const(f"{name}_shape", np.asarray(shape, np.int32), "int32")
        return self.op("RESHAPE", [x, s], [self.like(x, name, shape=shape, **self.qkwargs(x))], newShape=list(shape))

    def binary(self, op, a, b, name=None, dtype=None, scale=None, zero_point=0):
        """Elementwise op with numpy broadcasting; b may be a numpy constant (same dtype as a)."""
        if isinstance(b, (np.ndarray, list)):
            b = self.const(f"{name or op.lower()}_c", np.asarray(b), self.dtype(a), **self.qkwargs(a, unit=True))
        shape = list(np.broadcast_shapes(tuple(self.shape(a)), tuple(self.shape(b))))
        out = self.tensor(name or op.lower(), dtype or self.dtype(a), shape, scale, zero_point)
        return self.op(op, [a, b], [out])

    def qkwargs(self, x, unit=False):
        """Quantization kwargs for a tensor like x: x's own, or scale 1 / zero point 0 (unit=True)
        for the int16 helpers, whose exactness needs unit scales."""
        scale, zp = self.qparams(x)
        if scale is None:
            return {}
        return {"scale": 1.0, "zero_point": 0} if unit else {"scale": scale[0], "zero_point": zp[0]}

    def split(self, x, axis, sizes, name="split"):
        """SPLIT (equal parts) or SPLIT_V along axis: list of output tensors."""
        shape = self.shape(x)
        outs = [self.like(x, f"{name}{k}", shape=shape[:axis] + [s] + shape[axis + 1 :]) for k, s in enumerate(sizes)]
        ax = self.const(f"{name}_axis", np.asarray(axis, np.int32), "int32", shape=[])
        if len(set(sizes)) == 1:
            res = self.op("SPLIT", [ax, x], outs, numSplits=len(sizes))
        else:
            sz = self.const(f"{name}_sizes", np.asarray(sizes, np.int32), "int32")
            res = self.op("SPLIT_V", [x, sz, ax], outs, numSplits=len(sizes))
        return res if isinstance(res, list) else [res]

    def tree_sum(self, x, name="sum"):
        """Sum over axis 0 by halving (int32 ADD is exact): TFLM's SUM has no int32 kernel."""
        n, pending = self.shape(x)[0], []
        while n > 1:
            if n % 2:
                x, last = self.split(x, 0, [n - 1, 1], f"{name}_odd")
                pending.append(last)
                n -= 1
            lo, hi = self.split(x, 0, [n // 2, n // 2], f"{name}_half")
            x, n = self.binary("ADD", lo, hi, name), n // 2
        for p in pending:
            x = self.binary("ADD", x, p, name)
        return x

    def lookup(self, x, table, scale, zero_point, name="lut"):
        """256-entry int8 table indexed by int8 x (index x + 128): CAST, ADD, GATHER. Exact."""
        idx = self.binary("ADD", self.cast(x, "int32", f"{name}_idx"), np.int32([128]), f"{name}_idx")
        tab = self.const(f"{name}_table", np.asarray(table), "int8", scale, zero_point)
        out = self.like(x, name, scale=scale, zero_point=zero_point)
        return self.op("GATHER", [tab, idx], [out], axis=0)

    def requantize(self, acc, mult, shift, zero_point, scale, name="requant"):
        """int32 (1, K) -> int8 (1, K): sat8(zero_point + MBQM(acc[k], mult[k], shift[k])), exactly
        TFLM's per-channel requantization. QUANTIZE is per tensor, so one QUANTIZE per channel, each
        with an (input, output) scale pair chosen so that TFLM derives exactly (mult[k], shift[k])."""
        K = self.shape(acc)[1]
        parts = self.split(acc, 1, [1] * K, f"{name}_ch") if K > 1 else [acc]
        outs = []
        for k, part in enumerate(parts):
            a, b = scale_pair(int(mult[k]), int(shift[k]))
            self.tensors[part].quantization = self._quant(a, 0)
            outs.append(self.op("QUANTIZE", [part], [self.tensor(f"{name}{k}", "int8", [1, 1], b, zero_point)]))
        if K == 1:
            return outs[0]
        packed = self.op("PACK", outs, [self.tensor(f"{name}_pack", "int8", [1, K, 1], scale, zero_point)],
                         valuesCount=K, axis=1)
        return self.reshape(packed, [1, K], name)

    @staticmethod
    def _quant(scale, zero_point):
        q = fb.QuantizationParametersT()
        q.scale, q.zeroPoint, q.quantizedDimension = [float(scale)], [int(zero_point)], 0
        return q

    def variable(self, name, dtype, shape, scale=None):
        """A resource variable (state kept across Invokes, zero after reset): (handle, value read now)."""
        handle = self.op("VAR_HANDLE", [], [self.tensor(f"{name}_handle", "resource", [])], container="",
                         sharedName=name)
        value = self.op("READ_VARIABLE", [handle], [self.tensor(name, dtype, shape, scale, 0)])
        return handle, value

    def assign(self, handle, value):
        self.op("ASSIGN_VARIABLE", [handle, value], [])


def tflm_multiplier(real):
    """(M, shift) as TFLM derives it from a double (QuantizeMultiplier): the export's own routine."""
    m, s = im.quantize_multiplier(real)
    return int(m), int(s)


def scale_pair(mult, shift):
    """float32 scales (a, b) with TFLM's QuantizeMultiplier(double(a) / double(b)) == (mult, shift).

    A 31-bit multiplier is not a float32, but a ratio of two 24-bit integers gets within 2^-40 of
    any number: take the simplest fraction inside the interval that rounds to `mult`."""
    if mult <= 0:
        raise ValueError("multiplier must be positive")
    lo, hi = Fraction(2 * mult - 1, 2 ** 32) + Fraction(1, 2 ** 40), Fraction(2 * mult + 1, 2 ** 32) - Fraction(1, 2 ** 40)
    f = _simplest_between(lo, hi)
    p, q = f.numerator, f.denominator
    if p >= 2 ** 24 or q >= 2 ** 24:
        raise ValueError("no float32 scale pair found")
    a, b = float(np.float32(math.ldexp(p, shift))), float(np.float32(q))
    if tflm_multiplier(a / b) != (mult, shift):
        raise ValueError(f"scale pair {a}/{b} does not give ({mult}, {shift})")
    return a, b


def _simplest_between(lo, hi):
    """The fraction with the smallest denominator in the open interval (lo, hi), 0 < lo < hi."""
    fl = math.floor(lo)
    if fl + 1 < hi:
        return Fraction(fl + 1)
    if lo == fl:
        return fl + 1 / Fraction(math.floor(1 / (hi - fl)) + 1)
    return fl + 1 / _simplest_between(1 / (hi - fl), 1 / (lo - fl))


def builtin_names(model_bytes):
    """Names of the builtin operators a .tflite declares."""
    model = fb.Model.GetRootAs(model_bytes, 0)
    return [OP_NAMES.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "?")
            for oc in (model.OperatorCodes(i) for i in range(model.OperatorCodesLength()))]
