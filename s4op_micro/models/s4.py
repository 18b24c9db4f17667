"""S4: a diagonal-plus-low-rank (DPLR) SSM per channel with the HiPPO-LegS initialization.

Per channel, on N/2 complex modes (conjugates implied, y = 2 Re(C x) as in S4D):

    A = diag(Lambda) - P P^*,   Lambda = -exp(log_A_real) + i A_imag   (stable: Re(A) <= 0)
    bilinear: dA = (I - dt/2 A)^-1 (I + dt/2 A),  dB = (I - dt/2 A)^-1 dt B
    ZOH:      dA = expm(dt A),                    dB = A^-1 (dA - I) B

The kernel K_l = 2 Re(C dA^l dB) is built by repeated squaring (log2 L batched matmuls), which is
plenty on a CPU for L <= 4096. For the microcontroller the layer is turned into an equivalent
diagonal recurrence by an eigendecomposition of dA (`diagonal()`), with the error it introduces.
"""

import math

import torch
import torch.nn as nn

from .s4d import DISCRETIZATIONS


def hippo_legs_dplr(N):
    """HiPPO-LegS as normal-plus-low-rank, keeping the N/2 eigenvalues with Im >= 0.

    A_legs = S - P P^T with S normal (skew-symmetric - I/2): S = V diag(Lambda) V^*.
    Returns Lambda, P, B in the eigenbasis, each complex (N//2,).
    """
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    A = -torch.where(n[:, None] > n[None, :], r[:, None] * r[None, :], torch.diag(n + 1))
    B = r.clone()
    P = torch.sqrt(n + 0.5)
    S = A + P[:, None] * P[None, :]
    # S = -I/2 + skew: eigen-decompose the Hermitian matrix -i(S + I/2).
    evals, V = torch.linalg.eigh(-1j * (S + 0.5 * torch.eye(N, dtype=torch.float64)))
    Lambda = -0.5 + 1j * evals
    keep = torch.argsort(evals, descending=True)[: N // 2]  # Im(Lambda) >= 0
    V = V[:, keep]
    Vh = V.conj().T
    return Lambda[keep], Vh @ P.to(V.dtype), Vh @ B.to(V.dtype)


class S4Kernel(nn.Module):
    """DPLR SSM parameters for H channels; forward(L) gives the real kernel K (H, L)."""

    def __init__(self, d_model, N=64, dt_min=0.001, dt_max=0.1, disc="bilinear", lr=None, **_):
        super().__init__()
        H, M = d_model, N // 2
        self.N, self.disc = N, disc
        if disc not in DISCRETIZATIONS:
            raise ValueError(f"unknown discretization {disc!r}; choose from {DISCRETIZATIONS}")
        Lambda, P, B = hippo_legs_dplr(N)
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        C = torch.randn(H, M, dtype=torch.cfloat) * math.sqrt(0.5)
        self.C = nn.Parameter(torch.view_as_real(C))
        for name, value in [
            ("log_dt", log_dt),
            ("log_A_real", torch.log(-Lambda.real).float().repeat(H, 1)),
            ("A_imag", Lambda.imag.float().repeat(H, 1)),
            ("P", torch.view_as_real(P.to(torch.cfloat)).repeat(H, 1, 1)),
            ("B", torch.view_as_real(B.to(torch.cfloat)).repeat(H, 1, 1)),
        ]:
            p = nn.Parameter(value)
            p._optim = {"weight_decay": 0.0, **({"lr": lr} if lr is not None else {})}
            self.register_parameter(name, p)

    def recurrence(self):
        """Discrete dense recurrence: dA (H, M, M), dB (H, M), C (H, M), complex."""
        dt = torch.exp(self.log_dt)[:, None, None]
        P = torch.view_as_complex(self.P)
        A = torch.diag_embed(-torch.exp(self.log_A_real) + 1j * self.A_imag)
        A = A - P.unsqueeze(-1) * P.conj().unsqueeze(-2)
        B = torch.view_as_complex(self.B).unsqueeze(-1)
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        if self.disc == "bilinear":
            left = eye - dt / 2 * A
            dA = torch.linalg.solve(left, eye + dt / 2 * A)
            dB = torch.linalg.solve(left, dt * B)
        else:
            dA = torch.linalg.matrix_exp(dt * A)
            dB = torch.linalg.solve(A, (dA - eye) @ B)
        return dA, dB.squeeze(-1), torch.view_as_complex(self.C)

    @torch.no_grad()
    def diagonal(self, check_length=1000):
        """Equivalent diagonal recurrence via dA = V diag(lam) V^-1: (lam, V^-1 dB, C V, error).

        error = max |K_diag - K_dense| / max |K_dense| over `check_length` steps (float64).
        """
        dA, dB, C = (t.to(torch.complex128) for t in self.recurrence())
        lam, V = torch.linalg.eig(dA)
        dB_diag = torch.linalg.solve(V, dB.unsqueeze(-1)).squeeze(-1)
        C_diag = (C.unsqueeze(-2) @ V).squeeze(-2)
        K_dense = kernel_from_dense(dA, dB, C, check_length)
        powers = lam.unsqueeze(-1) ** torch.arange(check_length, device=lam.device)
        K_diag = 2 * torch.einsum("hn,hnl->hl", C_diag * dB_diag, powers).real
        error = ((K_diag - K_dense).abs().max() / K_dense.abs().max().clamp_min(1e-30)).item()
        return lam, dB_diag, C_diag, error

    def forward(self, L):
        dA, dB, C = self.recurrence()
        return kernel_from_dense(dA, dB, C, L)


def kernel_from_dense(dA, dB, C, L):
    """K_l = 2 Re(C dA^l dB) for l < L, by doubling: [v] -> [v, dA^m v] with dA^m squared each time."""
    V = dB.unsqueeze(-1)  # (H, M, 1): dA^0 dB
    power = dA
    while V.shape[-1] < L:
        V = torch.cat([V, power @ V], dim=-1)
        power = power @ power
    return 2 * torch.einsum("hm,hml->hl", C, V[..., :L]).real
