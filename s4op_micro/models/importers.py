"""Checkpoints of other code bases -> SequenceClassifier, one to one (issue 15).

Two layouts (DESIGN.md §7), read from the tensor shapes alone; what shapes cannot tell (pre- or
post-norm, pooling, dropout, the fixed sequence length) comes in as keyword arguments:

- `s4-example`: state-spaces/s4 `example.py` `S4Model` with the standalone S4D layer
  (`models/s4/s4d.py`): encoder, s4_layers.i.{D, kernel.*, output_linear.0}, norms.i (LayerNorm),
  decoder. Saved as {'model': state_dict, 'acc', 'epoch'} or as a bare state dict.
- `s4op`: PARCO-LAB/S4oP `S4D` with `LayerS4D`: embedding (Linear, or Embedding with padding
  index 0 for tokens), s4d_layers.i.{active_idx, D, kernel.*} (rows for the active channels only,
  in active_idx order), s4d_layers.i.output_linear.0, norms.i (LayerNorm or BatchNorm1d), fc.
  A channel outside active_idx is bypassed (y = u): our `active_operators`.

Neither code base normalizes its inputs: the imported model takes the raw sequences
(`identity_normalization`: mean 0, std 1). Every problem with the file is a one-line UserError naming what was
expected. Pure functions: no data, no output files.
"""

import re
from pathlib import Path

import torch

from ..core.errors import UserError
from .classifier import POOLINGS, SequenceClassifier

FORMATS = ("s4-example", "s4op")
# What each format's state dict looks like, for the error messages.
LAYOUTS = {
    "s4-example": "encoder.{weight (H, d_in), bias}, s4_layers.i.{D, kernel.{log_dt, C (H, N/2, 2), log_A_real, "
                  "A_imag}, output_linear.0.{weight (2H, H, 1), bias}}, norms.i.{weight, bias}, decoder.{weight, bias}",
    "s4op": "embedding.{weight, bias} or embedding.weight (vocab, H), s4d_layers.i.{active_idx, D, kernel.{log_dt, C, "
            "log_A_real, A_imag}, output_linear.0.{weight (2H, H, 1), bias}}, norms.i.*, fc.{weight, bias}",
}
SIGNATURES = {"s4-example": ("encoder.weight", "s4_layers."), "s4op": ("embedding.weight", "s4d_layers.")}
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")  # where a training script puts the state dict
DEFAULT_DROPOUT = {"s4-example": 0.1, "s4op": 0.0}  # example.py's --dropout default; S4oP: none assumed


def identity_normalization(model):
    """Mean 0, std 1 per input channel ({} for tokens): the data pipeline then feeds raw inputs."""
    if model.config.get("vocab_size"):
        return {}
    d = model.config["d_input"]
    return {"mean": [0.0] * d, "std": [1.0] * d}


def import_checkpoint(path, fmt, *, prenorm=False, pooling="mean", dropout=None, seq_len=None):
    """(model in eval mode, metadata) for the checkpoint file at `path` in format `fmt`.

    seq_len: the fixed sequence length (needed by causal_half pooling, recorded otherwise).
    dropout: the in-layer and per-block dropout (identity at inference; default per format).
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown checkpoint format {fmt!r}; pass one of {', '.join(FORMATS)}")
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}; pass one of {', '.join(POOLINGS)}")
    if fmt == "s4-example" and pooling != "mean":
        raise UserError("example.py pools by the mean over all steps; --pooling causal_half is for S4oP checkpoints")
    if pooling == "causal_half" and not (seq_len and seq_len >= 2):
        raise UserError("causal_half pooling starts its running sum at step L//2 of a fixed length L; "
                        "pass the dataset (--dataset/--data) or --seq-len")
    if dropout is not None and not 0 <= dropout < 1:
        raise UserError(f"--dropout {dropout} is not a probability; pass a value in [0, 1)")
    state, extras = read_state_dict(path)
    check_signature(state, fmt, path)
    reader = ShapeReader(state, fmt)
    arch = READERS[fmt](reader)
    reader.finish()
    dropout = DEFAULT_DROPOUT[fmt] if dropout is None else float(dropout)
    model = SequenceClassifier(
        arch["d_input"], arch["n_classes"], arch["active"], None, d_model=reader.dims["H"],
        d_state=2 * reader.dims["N/2"], n_layers=len(arch["active"]), ssm="s4d", norm=arch["norm"],
        prenorm=bool(prenorm), dropout=dropout, block_dropout=dropout, disc="zoh", vocab_size=arch["vocab_size"],
        padding_idx=0 if arch["vocab_size"] else None, pooling=pooling, seq_len=seq_len,
    )
    model.load_state_dict(reader.out)  # the reader checked every shape: this cannot fail on a shape
    model.eval()
    metadata = {"format": fmt, "source": str(Path(path).resolve()), "source_extras": extras,
                "prenorm": bool(prenorm), "pooling": pooling, "dropout": dropout, "seq_len": seq_len}
    return model, metadata


# --- the two layouts --------------------------------------------------------------------------

def read_s4_example(r):
    r.take("encoder.weight", "H", "d_in", to="encoder.weight")
    r.take("encoder.bias", "H", to="encoder.bias")
    n = r.count_layers("s4_layers", "norms")
    for i in range(n):
        p, q = f"s4_layers.{i}.", f"layers.{i}."
        r.take(p + "D", "H", to=q + "D")
        for name, dims in KERNEL_DIMS.items():
            r.take(p + "kernel." + name, "H", *dims, to=q + "kernel." + name)
        read_mixer(r, p, q)
        read_norm(r, i, "layer")
    read_decoder(r, "decoder")
    return {"d_input": r.dims["d_in"], "n_classes": r.dims["classes"], "vocab_size": None, "norm": "layer",
            "active": [list(range(r.dims["H"]))] * n}


def read_s4op(r):
    tokens = "embedding.bias" not in r.state
    if tokens:  # nn.Embedding(vocab, H, padding_idx=0)
        r.take("embedding.weight", "vocab", "H", to="encoder.weight")
    else:
        r.take("embedding.weight", "H", "d_in", to="encoder.weight")
        r.take("embedding.bias", "H", to="encoder.bias")
    n = r.count_layers("s4d_layers", "norms")
    norm = "batch" if "norms.0.running_mean" in r.state else "layer"
    active = []
    for i in range(n):
        p, q = f"s4d_layers.{i}.", f"layers.{i}."
        idx = r.take(p + "active_idx", f"K{i}")
        order = check_active(idx, r.dims["H"], p + "active_idx")
        active.append(sorted(idx.tolist()))
        # kernel rows follow active_idx; ours follow the sorted channel list
        r.take(p + "D", f"K{i}", to=q + "D", rows=order)
        for name, dims in KERNEL_DIMS.items():
            r.take(p + "kernel." + name, f"K{i}", *dims, to=q + "kernel." + name, rows=order)
        read_mixer(r, p, q)
        read_norm(r, i, norm)
    read_decoder(r, "fc")
    return {"d_input": 1 if tokens else r.dims["d_in"], "n_classes": r.dims["classes"],
            "vocab_size": r.dims["vocab"] if tokens else None, "norm": norm, "active": active}


READERS = {"s4-example": read_s4_example, "s4op": read_s4op}
KERNEL_DIMS = {"log_dt": (), "C": ("N/2", 2), "log_A_real": ("N/2",), "A_imag": ("N/2",)}  # after the channel dim
NORM_KEYS = {"layer": {"weight": ("H",), "bias": ("H",)},
             "batch": {"weight": ("H",), "bias": ("H",), "running_mean": ("H",), "running_var": ("H",),
                       "num_batches_tracked": ()}}


def read_mixer(r, p, q):
    """output_linear.0: Conv1d(H, 2H, 1), followed by GLU over channels."""
    r.take(p + "output_linear.0.weight", "2H", "H", 1, to=q + "output_linear.0.weight")
    r.take(p + "output_linear.0.bias", "2H", to=q + "output_linear.0.bias")


def read_norm(r, i, kind):
    for name, dims in NORM_KEYS[kind].items():
        r.take(f"norms.{i}.{name}", *dims, to=f"norms.{i}.{name}")


def read_decoder(r, prefix):
    r.take(prefix + ".weight", "classes", "H", to="decoder.weight")
    r.take(prefix + ".bias", "classes", to="decoder.bias")


def check_active(idx, H, key):
    """The argsort that puts active_idx (any order) into increasing channel order."""
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise UserError(f"{key} has dtype {idx.dtype}; expected integer channel indices")
    values = idx.tolist()
    if len(set(values)) != len(values) or any(not 0 <= v < H for v in values):
        raise UserError(f"{key} = {values[:8]}{'...' if len(values) > 8 else ''} must list distinct channels in "
                        f"0..{H - 1} (H={H})")
    return torch.argsort(idx.long())


# --- reading the file and its shapes ----------------------------------------------------------

def read_state_dict(path):
    """(state dict, JSON-able extras such as acc/epoch) from a torch file: a bare state dict, or a
    dict holding one under model / state_dict / model_state_dict."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass the .pt/.pth file the original training script saved")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds on garbage and on pickled modules
        raise UserError(f"{path} is not a torch file of tensors ({type(e).__name__}); save the model's "
                        "state_dict() (or {'model': state_dict, ...}) with torch.save") from None
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("s4op-micro/"):
        raise UserError(f"{path} is already an s4op-micro checkpoint ({obj['format']}); use it directly, no import needed")
    if is_state_dict(obj):
        state, extras = obj, {}
    else:
        key = next((k for k in WRAPPER_KEYS if isinstance(obj, dict) and is_state_dict(obj.get(k))), None)
        if key is None:
            found = sorted(map(str, obj))[:6] if isinstance(obj, dict) else type(obj).__name__
            raise UserError(f"{path} holds no state dict (found {found}); expected a state dict of tensors or a "
                            f"dict with one under {'/'.join(WRAPPER_KEYS)}")
        state = obj[key]
        extras = {k: v for k, v in obj.items() if k != key and isinstance(v, (int, float, str, bool))}
    state = {k: v for k, v in state.items()}
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, extras


def is_state_dict(obj):
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def check_signature(state, fmt, path):
    """UserError when the file is laid out as another format (or none we know)."""
    def looks_like(f):
        key, prefix = SIGNATURES[f]
        return key in state and any(k.startswith(prefix) for k in state)

    if looks_like(fmt):
        return
    other = [f for f in FORMATS if f != fmt and looks_like(f)]
    hint = f"; it looks like --format {other[0]}" if other else f"; found keys {sorted(state)[:5]}"
    raise UserError(f"{path} is not a {fmt} checkpoint: expected {LAYOUTS[fmt]}{hint}")


class ShapeReader:
    """Takes keys from a foreign state dict, checks each shape against named sizes (H, N/2, d_in,
    classes, vocab, K<i>: bound by the first key that shows them; 2H derived from H), and collects
    the renamed tensors in `out`. `finish()` rejects any key that no reader took."""

    def __init__(self, state, fmt):
        self.state, self.fmt = state, fmt
        self.dims, self.origin, self.out, self.used = {}, {}, {}, set()

    def take(self, key, *dims, to=None, rows=None):
        if key not in self.state:
            raise UserError(f"{self.fmt} checkpoint lacks {key}; expected {LAYOUTS[self.fmt]}")
        t = self.state[key]
        shape = tuple(t.shape)
        expected = self._expected(dims)
        if len(shape) != len(dims) or any(e is not None and e != s for e, s in zip(expected, shape)):
            raise UserError(f"{self.fmt} checkpoint: {key} has shape {shape}, expected ({self._describe(dims, expected)})"
                            f"{self._sources(dims)}")
        for d, s in zip(dims, shape):
            if isinstance(d, str) and d != "2H" and d not in self.dims:
                self.dims[d], self.origin[d] = s, key
        self.used.add(key)
        if to is not None:
            self.out[to] = (t[rows] if rows is not None else t).detach().clone()
        return t

    def _expected(self, dims):
        def size(d):
            if isinstance(d, int):
                return d
            if d == "2H":
                return 2 * self.dims["H"] if "H" in self.dims else None
            return self.dims.get(d)
        return [size(d) for d in dims]

    def _describe(self, dims, expected):
        return ", ".join(str(d) if isinstance(d, int) else (f"{d}={e}" if e is not None else d)
                         for d, e in zip(dims, expected))

    def _sources(self, dims):
        names = sorted({"H" if d == "2H" else d for d in dims if isinstance(d, str)} & set(self.origin))
        return (" with " + ", ".join(f"{n} from {self.origin[n]}" for n in names)) if names else ""

    def count_layers(self, *prefixes):
        """The number of layers: every index 0..n-1 must appear under every prefix."""
        seen = {p: {int(m.group(1)) for k in self.state if (m := re.match(re.escape(p) + r"\.(\d+)\.", k))}
                for p in prefixes}
        n = max((max(s) + 1 for s in seen.values() if s), default=0)
        if n == 0:
            raise UserError(f"{self.fmt} checkpoint has no layers (no {prefixes[0]}.0.* keys); expected {LAYOUTS[self.fmt]}")
        for i in range(n):
            for p in prefixes:
                if i not in seen[p]:
                    raise UserError(f"{self.fmt} checkpoint has {n} layers but layer {i} is missing: no {p}.{i}.* keys")
        return n

    def finish(self):
        unknown = sorted(set(self.state) - self.used)
        if unknown:
            more = f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
            raise UserError(f"{self.fmt} checkpoint has unknown keys {unknown[:3]}{more}; expected only "
                            f"{LAYOUTS[self.fmt]}")

