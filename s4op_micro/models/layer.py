"""One SSM layer as in s4d.py's `S4D` module: per-channel SSM + D skip -> GELU -> dropout ->
1x1 conv H -> 2H -> GLU. Its state dict matches s4d.py's (D, kernel.*, output_linear.0.*).

Operators (S4oP): each channel's SSM is one operator. `active` channels run their SSM; `removed`
channels output zero (so the mixer's input column for them is dead); every other channel is
bypassed (y = u). Only active channels have kernel parameters: pruned operators are physically gone.
"""

import torch
import torch.nn as nn

from .s4 import S4Kernel
from .s4d import S4DKernel

KERNELS = {"s4d": S4DKernel, "s4": S4Kernel}


class SSMLayer(nn.Module):
    def __init__(self, d_model, d_state=64, ssm="s4d", dropout=0.0, active=None, removed=(), **kernel_args):
        super().__init__()
        if ssm not in KERNELS:
            raise ValueError(f"unknown SSM {ssm!r}; choose from {sorted(KERNELS)}")
        self.h, self.n, self.ssm = d_model, d_state, ssm
        active = list(range(d_model)) if active is None else sorted(int(i) for i in active)
        removed = sorted(int(i) for i in removed)
        if set(active) & set(removed):
            raise ValueError("a channel cannot be both active and removed")
        self.register_buffer("active", torch.tensor(active, dtype=torch.long), persistent=False)
        self.register_buffer("removed", torch.tensor(removed, dtype=torch.long), persistent=False)
        self.D = nn.Parameter(torch.randn(len(active)))
        self.kernel = KERNELS[ssm](len(active), N=d_state, **kernel_args)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout1d(dropout) if dropout > 0 else nn.Identity()
        self.output_linear = nn.Sequential(nn.Conv1d(d_model, 2 * d_model, kernel_size=1), nn.GLU(dim=-2))

    def ssm_conv(self, u):
        """Operators only, convolution form: (B, H, L) -> (B, H, L)."""
        L = u.size(-1)
        y = u.clone()
        if len(self.active):
            ua = u[:, self.active]
            k = self.kernel(L=L).to(u.dtype)
            k_f = torch.fft.rfft(k, n=2 * L)
            u_f = torch.fft.rfft(ua, n=2 * L)
            y[:, self.active] = torch.fft.irfft(u_f * k_f, n=2 * L)[..., :L] + ua * self.D.unsqueeze(-1)
        y[:, self.removed] = 0
        return y

    def mix(self, y):
        """Everything after the operators: GELU -> dropout -> 1x1 conv -> GLU, (B, H, L)."""
        return self.output_linear(self.dropout(self.activation(y)))

    def forward(self, u):
        return self.mix(self.ssm_conv(u))

    # --- recurrent (streaming) form, used for tests and as the float reference of the export ---

    def step_init(self, batch, dtype=torch.float64):
        dA, _, _ = self.kernel.recurrence()
        return torch.zeros(batch, *dA.shape[:2], dtype=torch.complex128 if dtype == torch.float64 else torch.cfloat)

    def ssm_step(self, u, state):
        """One timestep of the operators: u (B, H) -> y (B, H), new state (B, H_active, M)."""
        dA, dB, C = (t.to(state.dtype) for t in self.kernel.recurrence())
        ua = u[:, self.active]
        if dA.dim() == 3:  # dense (S4)
            state = torch.einsum("hmk,bhk->bhm", dA, state) + dB * ua.unsqueeze(-1).to(state.dtype)
        else:  # diagonal (S4D)
            state = dA * state + dB * ua.unsqueeze(-1).to(state.dtype)
        y = u.clone()
        y[:, self.active] = 2 * (C * state).sum(-1).real.to(u.dtype) + self.D.to(u.dtype) * ua
        y[:, self.removed] = 0
        return y, state
