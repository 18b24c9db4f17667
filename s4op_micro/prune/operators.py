"""Applying a pruning decision: rebuild a smaller model and copy the surviving weights.

What a `Decision` can take away, per layer of the *current* model:

  bypass  operators -> y = u (S4oP); their kernel parameters are gone from the rebuilt model.
  remove  operators -> y = 0; the mixer's input column for the channel is then dead (zeroed here,
          dropped by the exporter).
  modes   single complex modes of active S4D operators (mode_mask = 0; dropped by the exporter).
  blocks  whole blocks [norm, SSM, mixer, residual]: the layer and its norm go and the rebuilt model
          has fewer layers, which is exactly the original with that block skipped (h passes through
          unchanged). No model change is needed for it.
  channels  (model-wide) whole channels of the residual stream: a narrower d_model. The encoder's
          rows (embedding columns), every layer's norm entry, operator, mixer rows (both GLU halves)
          and mixer column, and the decoder's column go: the rebuilt model is exactly the original
          with those channels held at zero after the encoder, after every block and at every
          block's input (`masked_forward`), for BatchNorm pre- and post-norm alike (BatchNorm is
          per channel; LayerNorm normalizes over the kept channels, so there the function changes
          and the measured damage says by how much). The exporter handles any d_model.

A `Lineage` ties the current model to the original unpruned one (original shape, and which original
layer each current layer is), so that rates and reports always refer to the original model.
The pruned fraction ("rate") counts state modes: an operator bypassed or removed, or in a dropped
block, counts all its modes. With operator granularity that is the fraction of operators pruned.
"""

from dataclasses import dataclass, field

import torch

from ..models import SequenceClassifier


@dataclass
class Decision:
    """What to take away from the current model (layer indices of the current model)."""

    bypass: dict = field(default_factory=dict)  # layer -> [channel]
    remove: dict = field(default_factory=dict)  # layer -> [channel]
    modes: dict = field(default_factory=dict)  # layer -> [(channel, mode)]
    blocks: list = field(default_factory=list)  # [layer]
    channels: list = field(default_factory=list)  # [residual channel] (current indices), every layer

    def describe(self, lineage):
        """JSON-able record of what went, in original layer indices (channels: original channel
        indices of the residual stream; per layer, the current model's channel indices)."""
        orig = lineage.layers
        return {
            "bypassed": {orig[i]: sorted(c) for i, c in self.bypass.items() if c},
            "removed": {orig[i]: sorted(c) for i, c in self.remove.items() if c},
            "modes": {orig[i]: sorted([int(c), int(n)] for c, n in m) for i, m in self.modes.items() if m},
            "blocks": sorted(orig[i] for i in self.blocks),
            "channels": sorted(lineage.kept_channels[c] for c in self.channels),
        }


@dataclass
class Lineage:
    """Shape of the original model and the original index of each current layer."""

    n_layers: int
    d_model: int
    modes_per_operator: int
    layers: list
    channels: list = None  # original index of each current residual channel (None: all, unchanged)

    @classmethod
    def of(cls, model, record=None):
        """From a checkpoint's `pruning` record, or the identity for an unpruned model."""
        if record and "lineage" in record:
            return cls(**record["lineage"])
        cfg = model.config
        return cls(cfg["n_layers"], cfg["d_model"], cfg["d_state"] // 2, list(range(cfg["n_layers"])))

    @property
    def kept_channels(self):
        return list(range(self.d_model)) if self.channels is None else list(self.channels)

    def after(self, decision):
        cut = set(decision.channels)
        kept = [o for c, o in enumerate(self.kept_channels) if c not in cut]
        return Lineage(self.n_layers, self.d_model, self.modes_per_operator,
                       [o for i, o in enumerate(self.layers) if i not in decision.blocks],
                       None if len(kept) == self.d_model else kept)

    def as_dict(self):
        out = {"n_layers": self.n_layers, "d_model": self.d_model,
               "modes_per_operator": self.modes_per_operator, "layers": list(self.layers)}
        if self.channels is not None:
            out["channels"] = list(self.channels)
        return out


def apply(model, decision):
    """A new model without what `decision` takes away; every surviving weight copied exactly."""
    n = len(model.layers)
    if any(not 0 <= b < n for b in decision.blocks) or len(set(decision.blocks)) >= n:
        raise ValueError(f"cannot drop blocks {decision.blocks} of a {n}-layer model (one must stay)")
    keep = [i for i in range(n) if i not in decision.blocks]
    H = model.config["d_model"]
    cut = set(decision.channels)
    if not all(0 <= c < H for c in cut) or len(cut) >= H:
        raise ValueError(f"cannot cut channels {sorted(cut)} of a {H}-channel model (one must stay)")
    kc = [c for c in range(H) if c not in cut]  # the residual channels that stay
    new_index = {c: k for k, c in enumerate(kc)}
    active, removed, rows, old_active_kept = [], [], [], []
    for i in keep:
        layer = model.layers[i]
        old_active, old_removed = layer.active.tolist(), layer.removed.tolist()
        bypass, remove = set(decision.bypass.get(i, ())), set(decision.remove.get(i, ()))
        if not bypass <= set(old_active):
            raise ValueError(f"layer {i}: can only bypass active operators, not {sorted(bypass - set(old_active))}")
        if remove & set(old_removed) or not all(0 <= c < layer.h for c in remove):
            raise ValueError(f"layer {i}: cannot remove {sorted(remove)}")
        new_active = [c for c in old_active if c not in bypass | remove | cut]
        old_active_kept.append(new_active)
        active.append([new_index[c] for c in new_active])
        removed.append([new_index[c] for c in sorted(set(old_removed) | remove) if c not in cut])
        rows.append([old_active.index(c) for c in new_active])

    new = SequenceClassifier.from_config(dict(model.config, n_layers=len(keep), d_model=len(kc)), active, removed)
    old_state = model.state_dict()
    state = {}
    for key in new.state_dict():
        state[key] = _source_tensor(old_state, key, keep, rows, kc, H)
    for j, i in enumerate(keep):
        mixer = f"layers.{j}.output_linear.0.weight"
        state[mixer] = state[mixer].clone()
        state[mixer][:, removed[j]] = 0  # dead columns: removed channels feed nothing
        for c, mode in decision.modes.get(i, ()):
            if c in cut:
                continue  # the whole channel goes
            if c not in old_active_kept[j]:
                raise ValueError(f"layer {i}: modes of channel {c}, which is not an active operator")
            mask = f"layers.{j}.kernel.mode_mask"
            if mask not in state:
                raise ValueError("mode pruning needs S4D operators (S4's DPLR modes are coupled)")
            state[mask] = state[mask].clone()
            state[mask][old_active_kept[j].index(c), mode] = 0
    param = next(model.parameters())
    new = new.to(dtype=param.dtype, device=param.device)
    new.load_state_dict(state)
    new.train(model.training)
    return new


def _source_tensor(old_state, key, keep, rows, kc, H):
    """The old tensor a new state-dict entry comes from: layer indices shifted past dropped blocks,
    per-operator tensors (D, kernel.*) restricted to the surviving operators, and every tensor
    along the residual stream (encoder rows, norms, mixer rows and columns, decoder columns)
    restricted to the kept channels `kc` of the old width H."""
    parts = key.split(".")
    idx = torch.tensor(kc, dtype=torch.long)
    narrow = len(kc) < H
    if parts[0] not in ("layers", "norms"):
        tensor = old_state[key]
        if not narrow:
            return tensor
        if parts[0] == "encoder":  # Linear (H, C) / (H,); Embedding (V, H)
            return tensor[:, idx] if _is_embedding(old_state) and parts[1] == "weight" else tensor[idx]
        if parts[0] == "decoder" and parts[1] == "weight":
            return tensor[:, idx]
        return tensor
    j = int(parts[1])
    old_key = ".".join([parts[0], str(keep[j]), *parts[2:]])
    tensor = old_state[old_key]
    if parts[0] == "layers" and parts[2] in ("D", "kernel"):
        return tensor[torch.tensor(rows[j], dtype=torch.long)]
    if not narrow:
        return tensor
    if parts[0] == "norms":
        return tensor if tensor.dim() == 0 else tensor[idx]  # num_batches_tracked is a scalar
    if parts[2] == "output_linear":  # Conv1d(H, 2H, 1): GLU halves are rows [0, H) and [H, 2H)
        out_rows = torch.cat([idx, idx + H])
        return tensor[out_rows][:, idx] if parts[-1] == "weight" else tensor[out_rows]
    return tensor


def _is_embedding(state):
    """The encoder is an embedding (vocab, H) rather than a linear (H, C) with a bias."""
    return "encoder.bias" not in state


def masked_forward(model, x, channels):
    """The full model with the residual channels `channels` held at zero wherever the residual
    stream is read or written (after the encoder, at every block's input, after every block):
    what the model rebuilt without those channels computes (BatchNorm; see `channels` above)."""
    H = model.config["d_model"]
    m = torch.ones(H, dtype=next(model.parameters()).dtype, device=next(model.parameters()).device)
    m[list(channels)] = 0
    return mask_forward(model, x, m)


def mask_forward(model, x, m):
    """forward() with the multiplicative channel mask m (H,) on the residual stream."""
    m = m.view(1, -1, 1)
    h = model.encode(x) * m
    for i, layer in enumerate(model.layers):
        if model.config["prenorm"]:
            h = (h + model.block_dropout(layer(model._norm(i, h) * m))) * m
        else:
            h = model._norm(i, h + model.block_dropout(layer(h))) * m
    return model.decoder(h[..., model.pool_start(h.shape[-1]):].mean(dim=-1))


# --- what a model holds, relative to its original -------------------------------------------------

def kept_modes(layer):
    """Complex modes still computed in a layer (per active operator, its unmasked modes)."""
    mask = getattr(layer.kernel, "mode_mask", None)
    if mask is None:
        return len(layer.active) * (layer.n // 2)
    return int(mask.sum().item())


def pruned_fraction(model, lineage):
    total = lineage.n_layers * lineage.d_model * lineage.modes_per_operator
    return 1.0 - sum(kept_modes(layer) for layer in model.layers) / total


def summary(model, lineage):
    """Per original layer: operators active / bypassed / removed, modes pruned, block dropped, and
    the residual channels cut from the whole model (width_cut: the same in every row)."""
    rows = []
    cut = lineage.d_model - model.config["d_model"]
    for orig in range(lineage.n_layers):
        if orig not in lineage.layers:
            rows.append({"layer": orig, "block_removed": True, "active": 0, "bypassed": 0, "removed": 0,
                         "modes_pruned": 0, "width_cut": cut})
            continue
        layer = model.layers[lineage.layers.index(orig)]
        n_act, n_rem = len(layer.active), len(layer.removed)
        rows.append({"layer": orig, "block_removed": False, "active": n_act, "bypassed": layer.h - n_act - n_rem,
                     "removed": n_rem, "modes_pruned": n_act * (layer.n // 2) - kept_modes(layer), "width_cut": cut})
    return rows


def operators_kept(model, lineage):
    """Active operators per original layer (0 for a dropped block)."""
    return [row["active"] for row in summary(model, lineage)]


def effective_params(model):
    """Parameters the exporter keeps: without dead mixer columns (removed channels) and pruned modes."""
    total = sum(p.numel() for p in model.parameters())
    for layer in model.layers:
        total -= len(layer.removed) * layer.output_linear[0].weight.shape[0]
        mask = getattr(layer.kernel, "mode_mask", None)
        if mask is not None:  # per S4D mode: C (re, im), log_A_real, A_imag
            total -= 4 * int((mask == 0).sum().item())
    return total
