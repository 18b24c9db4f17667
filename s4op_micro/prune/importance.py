"""Importance of operators and modes: how much the model's function changes when one goes.

Lower score = safer to prune. Scores rank units *within* a layer; the controller compares layers
by measured damage, so the scales need not agree across layers.

hinf    From the discretized modes, in the spirit of LAST (Gwak et al., 2024): the H-infinity norm
        of what pruning changes in a channel's transfer function. Per operator, replaced by the
        bypass (R = 1) or by zero (R = 0):  max_w |G_h(e^{iw}) - R|  with
            G_h(z) = sum_n [c_n b_n / (1 - a_n z^-1) + conj(c_n b_n) / (1 - conj(a_n) z^-1)] + D_h;
        per mode, the H-infinity norm of its conjugate pair alone. The peak of a slow mode sits at
        its angle, so the frequency grid holds every mode's angle. Each norm is weighted by the RMS
        of the channel's input (how much signal goes through) and the norm of its mixer column
        (how much of it reaches the next layer).
taylor  First-order Taylor estimate of the loss change (Molchanov et al., 2019), summed over
        training batches: |sum g (R - y)| per operator, with g = dLoss/dy its output;
        |dLoss/dmask| per mode (mode_mask is the gate).

Residual channels (`channel_scores`, the width granularity) are always scored by Taylor: |dLoss/dm_c|
for a mask m on the residual stream (operators.mask_forward: after the encoder, at every block's
input and output), i.e. the first-order loss change of holding channel c at zero everywhere, which
is exactly what cutting it does. (An H-infinity norm has no meaning for a channel that also feeds
the mixers, norms and the decoder.)
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..train import batches

SCORES = ("hinf", "taylor")
KINDS = ("bypass", "zero", "mode")  # operator replaced by its bypass, operator replaced by zero, single modes
FREQUENCIES = 2048  # plus every mode's angle


def score(model, method, kinds, x, y, max_samples=256, batch_size=64):
    """{kind: per layer of `model`, a tensor aligned with layer.active}: (H_active,) for "bypass"
    and "zero", (H_active, N/2) for "mode" (+inf where a mode is already pruned). One pass over the
    data serves every kind."""
    if method not in SCORES:
        raise ValueError(f"unknown score {method!r}; choose from {SCORES}")
    if "mode" in kinds and model.config["ssm"] != "s4d":
        raise ValueError("mode scores need S4D operators")
    x = torch.as_tensor(np.asarray(x[:max_samples]))
    x = x.to(next(model.parameters()).dtype) if x.is_floating_point() else x.long()
    y = torch.as_tensor(np.asarray(y[:max_samples])).long()
    return _hinf(model, kinds, x) if method == "hinf" else _taylor(model, kinds, x, y, batch_size)


@torch.no_grad()
def _hinf(model, kinds, x):
    out = {kind: [] for kind in kinds}
    for layer, u in zip(model.layers, _layer_inputs(model, x)):
        dA, dB, C = _diagonal_modes(layer.kernel)
        act = layer.active
        weight = u[:, act].pow(2).mean(dim=(0, 2)).sqrt() * layer.output_linear[0].weight[:, act, 0].norm(dim=0)
        weight = weight.double()
        w = torch.linspace(0, math.pi, FREQUENCIES, dtype=torch.float64).expand(len(act), -1)
        w = torch.cat([w, dA.angle().abs()], dim=-1)  # (H, W): each mode's peak is on the grid
        z_inv = torch.exp(-1j * w).unsqueeze(1)  # (H, 1, W)
        cb = (C * dB).unsqueeze(-1)
        a = dA.unsqueeze(-1)
        terms = cb / (1 - a * z_inv) + cb.conj() / (1 - a.conj() * z_inv)  # (H, M, W)
        G = terms.sum(1) + layer.D.double().unsqueeze(-1)
        for kind in kinds:
            if kind == "mode":
                s = terms.abs().amax(-1) * weight.unsqueeze(-1)
                out[kind].append(torch.where(C == 0, math.inf, s).float())
            else:
                replacement = 1.0 if kind == "bypass" else 0.0
                out[kind].append(((G - replacement).abs().amax(-1) * weight).float())
    return out


def _taylor(model, kinds, x, y, batch_size):
    was_training = model.training
    model.eval()  # the function that is deployed: running norm statistics, no dropout
    masks = [layer.kernel.mode_mask for layer in model.layers] if "mode" in kinds else []
    for m in masks:
        m.requires_grad_(True)
    caps, handles = _capture(model, keep_grad=True)
    totals = {kind: [0.0] * len(model.layers) for kind in kinds}
    try:
        for xb, yb in batches(x, y, batch_size):
            model.zero_grad()
            for m in masks:
                m.grad = None
            F.cross_entropy(model(xb), yb).backward()
            for i, (layer, cap) in enumerate(zip(model.layers, caps)):
                act, yv = layer.active, cap["y"]
                for kind in kinds:
                    if kind == "mode":
                        s = masks[i].grad.abs()
                    else:
                        r = cap["u"][:, act] if kind == "bypass" else 0.0
                        s = (yv.grad[:, act] * (r - yv[:, act])).sum(dim=(0, 2)).abs().detach()
                    totals[kind][i] = totals[kind][i] + s
    finally:
        for h in handles:
            h.remove()
        for m in masks:
            m.requires_grad_(False)
            m.grad = None
        model.zero_grad()
        model.train(was_training)
    if "mode" in kinds:
        totals["mode"] = [torch.where(m == 0, math.inf, t) for m, t in zip(masks, totals["mode"])]
    return totals


def channel_scores(model, x, y, max_samples=256, batch_size=64):
    """Taylor score per residual channel (H,) of `model`: lower = safer to cut."""
    from .operators import mask_forward

    x = torch.as_tensor(np.asarray(x[:max_samples]))
    param = next(model.parameters())
    x = x.to(param.dtype) if x.is_floating_point() else x.long()
    y = torch.as_tensor(np.asarray(y[:max_samples])).long()
    was_training = model.training
    model.eval()
    m = torch.ones(model.config["d_model"], dtype=param.dtype, requires_grad=True)
    total = torch.zeros(model.config["d_model"], dtype=torch.float64)
    try:
        for xb, yb in batches(x, y, batch_size):
            g, = torch.autograd.grad(F.cross_entropy(mask_forward(model, xb, m), yb), m)
            total += g.abs().double()
    finally:
        model.zero_grad()
        model.train(was_training)
    return total.float()


def _diagonal_modes(kernel):
    """(dA, dB, C) per active operator and mode, complex128; S4 via its eigendecomposition."""
    if hasattr(kernel, "mode_mask"):
        dA, dB, C = kernel.recurrence()
    else:
        dA, dB, C, _ = kernel.diagonal(check_length=2)
    return dA.to(torch.complex128), dB.to(torch.complex128), C.to(torch.complex128)


def _capture(model, keep_grad):
    """Forward hooks recording each layer's input u and operator output y (the GELU's input)."""
    caps, handles = [], []
    for layer in model.layers:
        cap = {}

        def take_u(module, args, cap=cap):
            cap["u"] = args[0]

        def take_y(module, args, cap=cap):
            if keep_grad and args[0].requires_grad:
                args[0].retain_grad()
            cap["y"] = args[0]

        handles += [layer.register_forward_pre_hook(take_u), layer.activation.register_forward_pre_hook(take_y)]
        caps.append(cap)
    return caps, handles


@torch.no_grad()
def _layer_inputs(model, x, batch_size=128):
    """Each layer's input u (B, H, L) over `x`, in eval mode."""
    was_training = model.training
    model.eval()
    caps, handles = _capture(model, keep_grad=False)
    inputs = [[] for _ in model.layers]
    try:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
            for store, cap in zip(inputs, caps):
                store.append(cap["u"])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [torch.cat(s) for s in inputs]
