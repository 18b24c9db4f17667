"""Quantization-aware fine-tuning: a fake-quantized forward that follows the integer model, and
`qat_finetune`, what `finetune --qat` runs.

`make_qat_forward(model, calib_x, coeff_bits)` calibrates once (quantize_model) and returns
forward(model, x) -> logits for `train.fit(..., forward_fn=forward)`. It streams the model like the
integer reference does, with straight-through estimators (round in the forward pass, identity in the
backward pass) for:
  - every int8 activation at its calibrated (scale, zero point): x, h, y, g, a, b, sigmoid (1/256), z, r;
  - weights: int8 per output channel (encoder, mixer, decoder), BatchNorm folded (running statistics
    frozen, gamma/beta trained through the fold); LayerNorm in float, its output fake-quantized (the
    integer LayerNorm is within ~1 output step of it: tests/test_layer_norm.py);
  - the recurrence coefficient code: Q15 (16-bit) or the 8-bit polar code (log-uniform decay per
    channel, uniform angle per channel), and the readout C per channel (int8 / int16);
  - the int16 state: rounded at the calibrated state step of each mode and saturated.
The pooled mean (over all steps, or from L//2 for causal_half) is fake-quantized at s_h/128 and the
scores at their int8 grid.
"""

import numpy as np
import torch
import torch.nn.functional as F

from ..core.checks import coeff_bits as check_coeff_bits
from ..core.errors import UserError
from ..core.outdir import atomic_output_dir, check_output_path
from ..models.checkpoint import load_model, save_checkpoint
from ..train import evaluate, fit, load_data_for
from .discretize import check_supported
from .quantize import quantize_model
from .reference import IntegerReference


def ste_round(v):
    return v + (torch.round(v) - v).detach()


def fq(v, t):
    """Fake-quantize to an int8 (scale, zero point) grid."""
    s, z = t.scale, t.zero_point
    q = torch.clamp(ste_round(v / s) + z, -128, 127)
    return (q - z) * s


def fq_weight(W, bits=8):
    """Symmetric per-output-channel fake quantization (rows of W)."""
    qmax = 2 ** (bits - 1) - 1
    s = (W.detach().abs().amax(dim=tuple(range(1, W.dim()))) / qmax).clamp_min(1e-12)
    shape = (-1,) + (1,) * (W.dim() - 1)
    return torch.clamp(ste_round(W / s.view(shape)), -qmax, qmax) * s.view(shape)


def bn_affine(bn):
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return s, bn.bias - s * bn.running_mean


def layer_modes_torch(layer):
    """(dA, dB, C) complex (H_active, M) with autograd (S4: eigendecomposition)."""
    dA, dB, C = layer.kernel.recurrence()
    if dA.dim() == 3:
        lam, V = torch.linalg.eig(dA.to(torch.complex128))
        dB = torch.linalg.solve(V, dB.to(torch.complex128).unsqueeze(-1)).squeeze(-1)
        C = (C.to(torch.complex128).unsqueeze(-2) @ V).squeeze(-2)
        dA = lam
    return dA.to(torch.complex64), dB.to(torch.complex64), C.to(torch.complex64)


def fq_dA(dA, bits):
    """The coefficient code: Q15 components (16) or the polar code (8), straight-through."""
    if bits == 16:
        re, im = ste_round(dA.real * 32768) / 32768, ste_round(dA.imag * 32768) / 32768
        return torch.complex(re, im)
    r = dA.abs().clamp(max=1 - 2.0 ** -20)
    ell = torch.log2(1 - r)
    lo, hi = ell.detach().amin(-1, keepdim=True), ell.detach().amax(-1, keepdim=True)
    step = ((hi - lo) / 255).clamp_min(1e-12)
    ell_q = lo + ste_round((ell - lo) / step) * step
    theta = torch.angle(dA)
    mag = theta.abs()
    dth = (mag.detach().amax(-1, keepdim=True) / 255).clamp_min(1e-12)
    theta_q = torch.sign(theta) * ste_round(mag / dth) * dth
    r_q = 1 - torch.pow(2.0, ell_q)
    return torch.polar(r_q, theta_q)


class QATForward:
    """Callable forward(model, x) -> logits with the integer model's quantization (see module doc)."""

    def __init__(self, model, calib_x, coeff_bits=8):
        model.eval()
        self.q = quantize_model(model, calib_x, coeff_bits)
        self.bits = coeff_bits
        self.T = self.q.tensors
        self.layer_consts = []
        for i, layer in enumerate(model.layers):
            s = self.q.layers[i].ssm
            Ha, M = len(layer.active), layer.kernel.C.shape[1]
            keep = (layer.kernel.mode_mask > 0) if hasattr(layer.kernel, "mode_mask") and model.config["ssm"] == "s4d" \
                else torch.ones(Ha, M, dtype=torch.bool)
            sh, step = torch.zeros(Ha, M), torch.ones(Ha, M)
            chan_pos = {int(c): j for j, c in enumerate(s.channels)}
            for j, c in enumerate(layer.active.tolist()):
                k = chan_pos[c]
                a, b = s.mode_start[k], s.mode_start[k + 1]
                idx = torch.nonzero(keep[j]).flatten()
                sh[j, idx] = torch.as_tensor(s.sh[a:b], dtype=torch.float32)
                g = np.abs(s.state_gain[a:b])
                step[j, idx] = torch.as_tensor(np.where(g > 0, 1.0 / np.maximum(g, 1e-30), 1.0), dtype=torch.float32)
            self.layer_consts.append({"sh": sh, "step": step, "keep": keep})

    def __call__(self, model, x):
        T, cfg = self.T, model.config
        x = fq(x.float(), T["x"])
        We = fq_weight(model.encoder.weight)
        h_all = fq(F.linear(x, We, model.encoder.bias), T["h0"])  # (B, L, H)
        B, L, H = h_all.shape
        prep = []
        for i, layer in enumerate(model.layers):
            dA, dB, C = layer_modes_torch(layer)
            dA_q = fq_dA(dA, self.bits)
            is_ln = isinstance(model.norms[i], torch.nn.LayerNorm)
            s_bn, t_bn = (None, None) if is_ln else bn_affine(model.norms[i])
            th = T[f"n{i}"] if is_ln and cfg["prenorm"] else T[f"h{i}"]     # the SSM input's quantization
            act = layer.active
            alpha = (s_bn[act] if cfg["prenorm"] and not is_ln else torch.ones(len(act))) * th.scale
            beta = t_bn[act] if cfg["prenorm"] and not is_ln else torch.zeros(len(act))
            k = self.layer_consts[i]
            # readout in the integer state basis: chat = 2 C dB alpha / 2^(sh-15), per channel codes
            gain = torch.pow(2.0, k["sh"] - 15) / (dB * alpha[:, None].to(dB.dtype))
            chat = 2 * C / gain
            qmax = 127 if self.bits == 8 else 32767
            amax = torch.maximum(chat.real.abs().amax(-1), chat.imag.abs().amax(-1)).detach().clamp_min(1e-12)
            sc = (amax / qmax)[:, None]
            chat_q = torch.complex(torch.clamp(ste_round(chat.real / sc), -qmax, qmax) * sc,
                                   torch.clamp(ste_round(chat.imag / sc), -qmax, qmax) * sc)
            W = fq_weight(layer.output_linear[0].weight[:, :, 0])
            removed = layer.removed
            if len(removed):
                W = W.clone()
                W[:, removed] = 0
            prep.append((dA_q, dB, chat_q * gain, alpha / th.scale, beta, k, W, s_bn, t_bn))
        states = [torch.zeros(B, len(l.active), l.kernel.C.shape[1], dtype=torch.complex64) for l in model.layers]
        pooled, out = 0, None
        for t in range(L):
            h = h_all[:, t]
            for i, layer in enumerate(model.layers):
                dA_q, dB, C2, a_rel, beta, k, W, s_bn, t_bn = prep[i]
                act = layer.active
                u = h.clone()
                if cfg["prenorm"]:
                    u = fq(model.norms[i](u), T[f"n{i}"]) if s_bn is None else s_bn * u + t_bn
                ua = u[:, act]
                st = dA_q * states[i] + dB * ua.unsqueeze(-1).to(dB.dtype)
                step = k["step"]
                lim = 32768 * step
                re = torch.maximum(torch.minimum(ste_round(st.real / step) * step, lim), -lim)
                im = torch.maximum(torch.minimum(ste_round(st.imag / step) * step, lim), -lim)
                states[i] = torch.complex(re, im)
                y = u.clone()
                if len(act):
                    y[:, act] = (C2 * states[i]).real.sum(-1) + layer.D * ua
                if len(layer.removed):
                    y[:, layer.removed] = 0
                y = fq(y, T[f"y{i}"])
                g = fq(F.gelu(y), T[f"g{i}"])
                v = F.linear(g, W, layer.output_linear[0].bias)
                a, b = fq(v[:, :H], T[f"a{i}"]), fq(v[:, H:], T[f"b{i}"])
                sg = torch.clamp(ste_round(torch.sigmoid(b) * 256) - 128, -128, 127) / 256 + 0.5
                z = fq(a * sg, T[f"z{i}"])
                r = fq(h + z, T[f"r{i}"])
                if not cfg["prenorm"]:
                    r = fq(model.norms[i](r) if s_bn is None else s_bn * r + t_bn, T[f"h{i + 1}"])
                h = r
            if t >= self.q.meta.pool_start:
                pooled = pooled + h
        ts = T["pool"]
        p = pooled / max(L - self.q.meta.pool_start, 1)
        p = torch.clamp(ste_round(p / ts.scale), -32768, 32767) * ts.scale
        Wd = fq_weight(model.decoder.weight)
        out = fq(F.linear(p, Wd, model.decoder.bias), T["logits"])
        return out


def make_qat_forward(model, calib_x, coeff_bits=8):
    return QATForward(model, calib_x, coeff_bits)


def qat_finetune(model, *, out, epochs=10, lr=1e-3, batch_size=32, coeff_bits=8, calib_samples=256, seed=0,
                 force=False, progress=True, dataset=None, data=None, root=None, max_train=None):
    """Quantization-aware fine-tune of the checkpoint `model` through the fake-quantized integer
    model; writes OUT/model.pt. Returns {"model", "before", "after", "coeff_bits", "seconds"} with
    float and int8-reference test accuracies before and after."""
    check_coeff_bits(coeff_bits)
    for name, value in (("epochs", epochs), ("batch-size", batch_size), ("calib-samples", calib_samples)):
        if value < 1:
            raise UserError(f"--{name} must be at least 1, not {value}")
    if not lr > 0:
        raise UserError(f"--lr must be positive, not {lr}")
    check_output_path(out, force)
    float_model, ckpt = load_model(model)
    check_supported(float_model)
    loaded = load_data_for(ckpt, dataset=dataset, data=data, root=root, max_train=max_train)
    calib = loaded.x_train[:calib_samples]

    def int_acc(m):
        q = quantize_model(m, calib, coeff_bits)
        ref = IntegerReference(q)
        return float((ref.predict(ref.quantize_input(loaded.x_test)) == loaded.y_test).mean())

    before = {"float": evaluate(float_model, loaded.x_test, loaded.y_test)["accuracy"], "int": int_acc(float_model)}
    qat = make_qat_forward(float_model, calib, coeff_bits)
    threads = torch.get_num_threads()
    with atomic_output_dir(out, force=force) as tmp:
        # the QAT forward streams small tensors step by step: intra-op threads only add contention
        torch.set_num_threads(1)
        try:
            hist = fit(float_model, loaded, epochs, lr, batch_size, seed=seed, progress=progress,
                       desc="finetune --qat", forward_fn=qat)
        finally:
            torch.set_num_threads(threads)
        after = {"float": evaluate(float_model, loaded.x_test, loaded.y_test)["accuracy"], "int": int_acc(float_model)}
        metrics = dict(ckpt["metrics"], test_accuracy=after["float"], qat={
            "coeff_bits": coeff_bits, "epochs": epochs, "lr": lr, "before": before, "after": after,
            "val_accuracy": hist["val_accuracy"]})
        extra = {k: v for k, v in ckpt.items() if k not in ("format", "config", "state_dict", "active_operators",
                                                             "removed_operators", "normalization", "dataset", "metrics")}
        save_checkpoint(tmp / "model.pt", float_model, ckpt["normalization"], ckpt["dataset"], metrics, **extra)
    return {"model": str(out) + "/model.pt", "before": before, "after": after, "coeff_bits": coeff_bits,
            "seconds": hist["seconds"]}
