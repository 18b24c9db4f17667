"""Sequence classifier (S4oP / s4 `example.py` style), causal so it streams on a device:

    encoder (linear, or embedding for tokens, optionally with a padding index)
    -> n_layers x [norm -> SSM layer (operators, GELU, dropout, 1x1 H->2H + GLU) -> block dropout -> residual]
    -> pooling over time -> linear decoder

Post-norm (default, as example.py): x = norm(x + drop(layer(x))); pre-norm: x = x + drop(layer(norm(x))).
`block_dropout` is example.py's extra dropout after each layer (identity at inference).
Pooling: `mean` over all L steps, or `causal_half` (S4oP): the mean over steps L//2 ... L-1. Both
stream as a running sum; causal_half starts it at step seq_len//2, so it needs `seq_len` (the fixed
sequence length of the dataset) in the config. forward() takes L from its input, as S4oP does.
BatchNorm (foldable into the neighbouring linears at export; running statistics at inference, so
causal) or LayerNorm (per timestep). The model records, per layer, its active and removed
operators: pruning rebuilds smaller models from that record (`from_config`).
"""

import torch
import torch.nn as nn

from .layer import SSMLayer

DEFAULTS = dict(
    d_model=64, d_state=64, n_layers=4, ssm="s4d", norm="batch", prenorm=False, dropout=0.0,
    init="lin", disc="zoh", dt_min=0.001, dt_max=0.1, vocab_size=None,
    # added for imported models (issue 15); the defaults keep older checkpoints' behaviour
    padding_idx=None, block_dropout=0.0, pooling="mean", seq_len=None,
)
POOLINGS = ("mean", "causal_half")


class SequenceClassifier(nn.Module):
    def __init__(self, d_input, n_classes, active_operators=None, removed_operators=None, **config):
        super().__init__()
        unknown = set(config) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown model options {sorted(unknown)}")
        cfg = {**DEFAULTS, **config}
        self.config = dict(cfg, d_input=d_input, n_classes=n_classes)
        H, n_layers = cfg["d_model"], cfg["n_layers"]
        if cfg["norm"] not in ("batch", "layer"):
            raise ValueError(f"unknown norm {cfg['norm']!r}; choose batch or layer")
        if cfg["pooling"] not in POOLINGS:
            raise ValueError(f"unknown pooling {cfg['pooling']!r}; choose from {POOLINGS}")
        if cfg["pooling"] == "causal_half" and not (cfg["seq_len"] and cfg["seq_len"] >= 2):
            raise ValueError("causal_half pooling needs the fixed sequence length: pass seq_len >= 2")
        active_operators = active_operators or [list(range(H))] * n_layers
        removed_operators = removed_operators or [[]] * n_layers
        if len(active_operators) != n_layers or len(removed_operators) != n_layers:
            raise ValueError("active/removed operators must list every layer")

        if cfg["vocab_size"]:
            self.encoder = nn.Embedding(cfg["vocab_size"], H, padding_idx=cfg["padding_idx"])
        else:
            self.encoder = nn.Linear(d_input, H)
        kernel_args = dict(dt_min=cfg["dt_min"], dt_max=cfg["dt_max"], disc=cfg["disc"])
        if cfg["ssm"] == "s4d":
            kernel_args["init"] = cfg["init"]
            kernel_args["lr"] = None
        self.layers = nn.ModuleList(
            SSMLayer(H, cfg["d_state"], ssm=cfg["ssm"], dropout=cfg["dropout"], active=act, removed=rem, **kernel_args)
            for act, rem in zip(active_operators, removed_operators)
        )
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(H) if cfg["norm"] == "batch" else nn.LayerNorm(H) for _ in range(n_layers)
        )
        # no parameters: example.py's per-block dropout, after the layer and before the residual
        self.block_dropout = nn.Dropout1d(cfg["block_dropout"]) if cfg["block_dropout"] > 0 else nn.Identity()
        self.decoder = nn.Linear(H, n_classes)

    @property
    def active_operators(self):
        return [layer.active.tolist() for layer in self.layers]

    @property
    def removed_operators(self):
        return [layer.removed.tolist() for layer in self.layers]

    def _norm(self, i, x):
        """x: (B, H, L)."""
        if isinstance(self.norms[i], nn.LayerNorm):
            return self.norms[i](x.transpose(-1, -2)).transpose(-1, -2)
        return self.norms[i](x)

    def encode(self, x):
        """(B, L, C) floats or (B, L) tokens -> (B, H, L)."""
        return self.encoder(x).transpose(-1, -2)

    def pool_start(self, L):
        """First step the pooling sums: 0 (mean) or L//2 (causal_half)."""
        return L // 2 if self.config["pooling"] == "causal_half" else 0

    def forward(self, x):
        h = self.encode(x)
        for i, layer in enumerate(self.layers):
            if self.config["prenorm"]:
                h = h + self.block_dropout(layer(self._norm(i, h)))
            else:
                h = self._norm(i, h + self.block_dropout(layer(h)))
        return self.decoder(h[..., self.pool_start(h.shape[-1]):].mean(dim=-1))

    @torch.no_grad()
    def forward_recurrent(self, x):
        """Streaming inference, one timestep at a time (float64 state): logits of the running pooling
        at every step, (B, L, n_classes). Equals forward() at the last step in eval mode. causal_half
        sums from step L//2 on (before that the pooled vector is 0: the logits are the decoder bias)."""
        assert not self.training, "recurrent form needs eval mode (running norm statistics)"
        h_all = self.encode(x)
        B, _, L = h_all.shape
        states = [layer.step_init(B) for layer in self.layers]
        pooled = torch.zeros_like(h_all[..., 0])
        start = self.pool_start(L)
        out = []
        for t in range(L):
            h = h_all[..., t]
            for i, layer in enumerate(self.layers):
                u = self._norm(i, h.unsqueeze(-1)).squeeze(-1) if self.config["prenorm"] else h
                y, states[i] = layer.ssm_step(u, states[i])
                y = layer.mix(y.unsqueeze(-1)).squeeze(-1)
                h = h + y if self.config["prenorm"] else self._norm(i, (h + y).unsqueeze(-1)).squeeze(-1)
            if t >= start:
                pooled = pooled + h
            out.append(self.decoder(pooled / max(t + 1 - start, 1)))
        return torch.stack(out, dim=1)

    @classmethod
    def from_config(cls, config, active_operators=None, removed_operators=None):
        cfg = dict(config)
        return cls(cfg.pop("d_input"), cfg.pop("n_classes"), active_operators, removed_operators, **cfg)

    def ssm_parameters(self):
        """Parameters that get their own optimizer group (no weight decay, lower lr)."""
        return [p for p in self.parameters() if hasattr(p, "_optim")]
