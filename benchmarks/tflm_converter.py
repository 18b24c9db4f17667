"""The TFLM model a user gets from the standard converter, for bench_tflm: the float streaming step
of a SequenceClassifier (the FloatGraph the exporter derives) written in TensorFlow, converted by
tf.lite.TFLiteConverter with 16x8 quantization, and driven one step per Invoke with its state fed
back (requantized from each output's scale to the matching input's).

What a user would write differs from the integer export in three places, each forced by the
converter or this TFLM build: GELU is x*sigmoid(1.702x) (no GELU kernel), the mean pooling's
division is folded out of the graph (no 16x8 DIV kernel: the scores are the step count times the
mean's, the same argmax), and the complex recurrence is split into real and imaginary parts."""

import sys
from pathlib import Path

import numpy as np

from s4op_micro.quant.discretize import discretize, segment_matrix

DRIVER = """
import sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
model, arena, xs, n = open(sys.argv[1], "rb").read(), int(sys.argv[2]), np.load(sys.argv[3]), int(sys.argv[4])
io = np.load(sys.argv[5])          # rows: (input index, output index feeding it, input scale, output scale)
it = runtime.Interpreter.from_bytes(model, arena_size=arena)
x_in, x_scale = int(io[0, 0]), io[0, 2]
state = {int(r[0]): np.zeros(tuple(it.get_input_details(int(r[0]))["shape"]), np.int16) for r in io[1:]}
for t in range(n):
    it.set_input(np.clip(np.round(xs[t % len(xs)][None] / x_scale), -32768, 32767).astype(np.int16), x_in)
    for i, s in state.items():
        it.set_input(s, i)
    it.invoke()
    for r in io[1:]:
        out = it.get_output(int(r[1])).astype(np.float64) * r[3]
        state[int(r[0])] = np.clip(np.round(out / r[2]), -32768, 32767).astype(np.int16)
"""


def _step_module(g):
    import tensorflow as tf

    def f(a):
        return tf.constant(np.asarray(a, np.float32))

    class Step(tf.Module):
        def __init__(self):
            self.layers = []
            for fl in g.layers:
                K = len(fl.channels)
                gather = np.zeros((g.d_model, K))
                gather[fl.channels, np.arange(K)] = 1
                post = (np.ones(g.d_model), np.zeros(g.d_model)) if g.prenorm else (fl.post_scale, fl.post_shift)
                self.layers.append(dict(
                    gather=f(gather), per_mode=f(np.repeat(np.eye(K), np.diff(fl.mode_start), axis=1)),
                    per_channel=f(segment_matrix(fl.mode_start)), alpha=f(fl.alpha), beta=f(fl.beta), D=f(fl.D),
                    ar=f(fl.dA.real), ai=f(fl.dA.imag), br=f(fl.dB.real), bi=f(fl.dB.imag), cr=f(fl.C2.real),
                    ci=f(fl.C2.imag), W=f(fl.W_out.T), b=f(fl.b_out), ps=f(post[0]), pt=f(post[1])))
            self.We, self.be, self.Wd, self.bd = f(g.W_enc.T), f(g.b_enc), f(g.W_dec.T), f(g.b_dec)

        def step(self, x, pooled, count, *states):
            h = tf.matmul(x, self.We) + self.be
            new_states = []
            for i, c in enumerate(self.layers):
                sr, si = states[2 * i], states[2 * i + 1]
                u = c["alpha"] * tf.matmul(h, c["gather"]) + c["beta"]
                um = tf.matmul(u, c["per_mode"])
                nr = c["ar"] * sr - c["ai"] * si + c["br"] * um          # x' = dA x + dB u, re and im
                ni = c["ar"] * si + c["ai"] * sr + c["bi"] * um
                y = c["D"] * u + tf.matmul(c["cr"] * nr - c["ci"] * ni, c["per_channel"])   # 2 Re(C x) + D u
                v = tf.matmul(y * tf.sigmoid(1.702 * y), c["W"]) + c["b"]
                z = v[:, : g.d_model] * tf.sigmoid(v[:, g.d_model:])    # GLU
                r = h + z
                h = r if g.prenorm else c["ps"] * r + c["pt"]
                new_states += [nr, ni]
            pooled = pooled + h
            count = count + 1.0
            return (tf.matmul(pooled, self.Wd) + count * self.bd, pooled, count, *new_states)

    return Step()


def converter_model(model, calib):
    """(.tflite bytes of the 16x8-converted step, io rows for DRIVER). calib: (n, L, C) float inputs."""
    import tensorflow as tf

    g = discretize(model)
    module = _step_module(g)
    shapes = [[1, g.d_input], [1, g.d_model], [1, 1]] + [[1, len(fl.dA)] for fl in g.layers for _ in range(2)]
    specs = [tf.TensorSpec(sh, tf.float32, name=f"in{k:02d}") for k, sh in enumerate(shapes)]
    fn = tf.function(module.step, input_signature=specs)

    def representative():
        for seq in calib[:8]:
            state = [np.zeros(sh, np.float32) for sh in shapes[1:]]
            for t in range(min(len(seq), 64)):
                ins = [seq[t][None].astype(np.float32), *state]
                yield {f"in{k:02d}": v for k, v in enumerate(ins)}
                state = [o.numpy() for o in fn(*ins)[1:]]

    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], module)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int16
    model_bytes = conv.convert()
    return model_bytes, _io_rows(model_bytes, len(shapes))


def _io_rows(model_bytes, n):
    """Which output feeds which input (by the signature's names in00.. / output_0..) and their scales."""
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_content=model_bytes)
    runner = interp.get_signature_runner()
    ins, outs = runner.get_input_details(), runner.get_output_details()
    position = {d["index"]: k for k, d in enumerate(interp.get_input_details())}
    out_position = {d["index"]: k for k, d in enumerate(interp.get_output_details())}
    rows = []
    for k in range(n):
        d_in = ins[f"in{k:02d}"]
        # input k (k >= 1) is fed by output k: (logits, pooled, count, states...) vs (x, pooled, count, states...)
        d_out = outs[f"output_{k}"] if k else d_in
        rows.append((position[d_in["index"]], out_position.get(d_out["index"], -1),
                     d_in["quantization_parameters"]["scales"][0], d_out["quantization_parameters"]["scales"][0]))
    return np.array(rows, dtype=np.float64)


def converter_per_step(model_bytes, io, arena, xs_float, work, callgrind, toggle, n):
    """Instructions per step inside Invoke: (I(2n) - I(n)) / n over the float input stream xs_float (L, C)."""
    work = Path(work) / "converter"
    work.mkdir(exist_ok=True)
    (work / "model.tflite").write_bytes(model_bytes)
    np.save(work / "xs.npy", np.asarray(xs_float, np.float32))
    np.save(work / "io.npy", io)
    (work / "driver.py").write_text(DRIVER)
    cmd = [sys.executable, work / "driver.py", work / "model.tflite", arena, work / "xs.npy"]
    return (callgrind(cmd + [2 * n, work / "io.npy"], toggle=toggle) - callgrind(cmd + [n, work / "io.npy"], toggle=toggle)) / n
