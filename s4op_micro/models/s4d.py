"""S4D: a diagonal state space model, one complex SISO SSM per channel (Gu et al., 2022).

Parameters are named and shaped as in `models/s4/s4d.py` of state-spaces/s4, so its state dicts
load here. Per channel h and complex mode n (N/2 modes; their conjugates are implied):

    A = -exp(log_A_real) + i * A_imag        continuous state matrix (diagonal)
    B = 1,  C complex,  dt = exp(log_dt)
    ZOH:      dA = exp(dt A),                   dB = (exp(dt A) - 1) / A
    bilinear: dA = (1 + dt A / 2) / (1 - dt A / 2), dB = dt / (1 - dt A / 2)
    x_k = dA x_{k-1} + dB u_k,   y_k = 2 Re(C x_k)  (+ D u_k, in the layer)

so the convolution kernel is K_l = 2 Re(sum_n C_n dB_n dA_n^l).
"""

import math

import torch
import torch.nn as nn

INITS = ("lin", "inv", "real")
DISCRETIZATIONS = ("zoh", "bilinear")


def init_diagonal_A(H, N, init):
    """(log_A_real, A_imag), each (H, N//2): S4D-Lin, S4D-Inv or S4D-Real."""
    n = torch.arange(N // 2, dtype=torch.float)
    if init == "lin":
        real, imag = 0.5 * torch.ones_like(n), math.pi * n
    elif init == "inv":
        real, imag = 0.5 * torch.ones_like(n), (N / math.pi) * (N / (1 + 2 * n) - 1)
    elif init == "real":
        real, imag = n + 1, torch.zeros_like(n)
    else:
        raise ValueError(f"unknown S4D init {init!r}; choose from {INITS}")
    return torch.log(real).repeat(H, 1), imag.repeat(H, 1)


def discretize(dtA, A, dt, disc):
    """Diagonal discretization: (dA, dB) from dt*A, A and dt (broadcast shapes)."""
    if disc == "zoh":
        dA = torch.exp(dtA)
        return dA, (dA - 1.0) / A
    if disc == "bilinear":
        denom = 1.0 - dtA / 2
        return (1.0 + dtA / 2) / denom, dt / denom
    raise ValueError(f"unknown discretization {disc!r}; choose from {DISCRETIZATIONS}")


class S4DKernel(nn.Module):
    """Diagonal SSM parameters for H channels; forward(L) gives the real kernel K (H, L)."""

    def __init__(self, d_model, N=64, dt_min=0.001, dt_max=0.1, init="lin", disc="zoh", lr=None):
        super().__init__()
        H = d_model
        self.N, self.disc = N, disc
        if disc not in DISCRETIZATIONS:
            raise ValueError(f"unknown discretization {disc!r}; choose from {DISCRETIZATIONS}")
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        C = torch.randn(H, N // 2, dtype=torch.cfloat)
        log_A_real, A_imag = init_diagonal_A(H, N, init)
        self.C = nn.Parameter(torch.view_as_real(C))
        self.register("log_dt", log_dt, lr)
        self.register("log_A_real", log_A_real, lr)
        self.register("A_imag", A_imag, lr)
        # 1 = mode kept, 0 = mode pruned (mode-granularity pruning; pruned modes are dropped at export).
        self.register_buffer("mode_mask", torch.ones(H, N // 2))

    def register(self, name, tensor, lr=None):
        """SSM parameters: their own optimizer group with no weight decay (as in s4d.py)."""
        if lr == 0.0:
            self.register_buffer(name, tensor)
        else:
            self.register_parameter(name, nn.Parameter(tensor))
            optim = {"weight_decay": 0.0}
            if lr is not None:
                optim["lr"] = lr
            setattr(getattr(self, name), "_optim", optim)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # state dicts from state-spaces/s4 have no mode mask: all modes kept.
        state_dict.setdefault(prefix + "mode_mask", torch.ones_like(self.mode_mask))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def continuous(self):
        """(dt (H, 1), A (H, N//2) complex)."""
        return torch.exp(self.log_dt).unsqueeze(-1), -torch.exp(self.log_A_real) + 1j * self.A_imag

    def recurrence(self):
        """Discrete diagonal recurrence (dA, dB, C), complex (H, N//2); pruned modes have C = 0."""
        dt, A = self.continuous()
        dA, dB = discretize(A * dt, A, dt, self.disc)
        return dA, dB, torch.view_as_complex(self.C) * self.mode_mask

    def diagonal(self):
        """The diagonal form used by the exporter: (dA, dB, C) and the conversion error (0: exact)."""
        dA, dB, C = self.recurrence()
        return dA, dB, C, 0.0

    def forward(self, L):
        if self.disc == "zoh":  # s4d.py's arithmetic, operation for operation: the same float kernel
            dt, A = self.continuous()
            dtA = A * dt
            C = torch.view_as_complex(self.C) * self.mode_mask
            C = C * (torch.exp(dtA) - 1.0) / A
            powers = torch.exp(dtA.unsqueeze(-1) * torch.arange(L, device=A.device))  # (H N L)
            return 2 * torch.einsum("hn,hnl->hl", C, powers).real
        # bilinear: dA^l through log(dA) (exact for integer l: the 2*pi*i branch cut drops out)
        dA, dB, C = self.recurrence()
        powers = torch.exp(torch.log(dA).unsqueeze(-1) * torch.arange(L, device=dA.device))
        return 2 * torch.einsum("hn,hnl->hl", C * dB, powers).real
