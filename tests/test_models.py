"""Model math: S4D/S4 kernels against independent computations, convolution vs recurrence."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from s4op_micro.models import S4DKernel, SequenceClassifier, SSMLayer
from s4op_micro.models.s4 import hippo_legs_dplr


def slow_s4d_layer(ssm="s4d", disc="zoh", H=4, N=8, seed=0):
    torch.manual_seed(seed)
    layer = SSMLayer(H, N, ssm=ssm, disc=disc, **({"init": "lin"} if ssm == "s4d" else {})).double()
    if ssm == "s4d":
        with torch.no_grad():  # slow modes: |dA| close to 1 (time constants of ~1000 steps)
            layer.kernel.log_dt.fill_(math.log(1e-3))
            layer.kernel.log_A_real[:, 0] = math.log(0.9)
    return layer


@pytest.mark.parametrize("ssm,disc", [("s4d", "zoh"), ("s4d", "bilinear"), ("s4", "bilinear"), ("s4", "zoh")])
def test_convolution_equals_recurrence(ssm, disc):
    """Relative error <= 1e-5 in float64 over L = 1200 (FFT round-off is ~1e-13)."""
    layer = slow_s4d_layer(ssm, disc)
    u = torch.randn(2, 4, 1200, dtype=torch.float64)
    y_conv = layer.ssm_conv(u)
    state = layer.step_init(2)
    ys = []
    for t in range(u.shape[-1]):
        y, state = layer.ssm_step(u[..., t], state)
        ys.append(y)
    y_rec = torch.stack(ys, -1)
    rel = (y_conv - y_rec).abs().max() / y_rec.abs().max()
    assert rel <= 1e-5, rel
    if ssm == "s4d":
        dA, _, _ = layer.kernel.recurrence()
        assert dA.abs().max() > 0.999  # the slow mode is really there


def test_zoh_matches_scipy_expm():
    """ZOH of one complex mode == expm of its 2x2 real block form (independent computation)."""
    k = S4DKernel(3, N=6, disc="zoh").double()
    dA, dB, _ = k.recurrence()
    dt = torch.exp(k.log_dt).detach().numpy()
    A = (-torch.exp(k.log_A_real) + 1j * k.A_imag).detach().numpy()
    for h in range(3):
        for n in range(3):
            a = A[h, n]
            M = np.array([[a.real, -a.imag, 1.0], [a.imag, a.real, 0.0], [0, 0, 0]])
            E = scipy.linalg.expm(M * dt[h])  # augmented matrix: [dA, dB; 0, 1]
            np.testing.assert_allclose(E[0, 0] + 1j * E[1, 0], dA[h, n].item(), rtol=1e-12)
            np.testing.assert_allclose(E[0, 2] + 1j * E[1, 2], dB[h, n].item(), rtol=1e-10)


def test_bilinear_formula():
    k = S4DKernel(2, N=4, disc="bilinear").double()
    dA, dB, _ = k.recurrence()
    dt = torch.exp(k.log_dt)[:, None]
    A = -torch.exp(k.log_A_real) + 1j * k.A_imag
    torch.testing.assert_close(dA, (1 + dt * A / 2) / (1 - dt * A / 2))
    torch.testing.assert_close(dB, dt / (1 - dt * A / 2))


def test_inits():
    N = 16
    n = torch.arange(N // 2, dtype=torch.float)
    lin, inv, real = (S4DKernel(2, N=N, init=i) for i in ("lin", "inv", "real"))
    torch.testing.assert_close(lin.A_imag[0], math.pi * n)
    torch.testing.assert_close(inv.A_imag[0], (N / math.pi) * (N / (1 + 2 * n) - 1))
    torch.testing.assert_close(-torch.exp(real.log_A_real[0]), -(n + 1))
    assert float(real.A_imag.detach().abs().max()) == 0.0
    dt = torch.exp(lin.log_dt)
    assert (dt >= 1e-3 - 1e-9).all() and (dt <= 1e-1 + 1e-9).all()


def test_loads_state_dict_shaped_like_s4d_py():
    """Keys and shapes of state-spaces/s4 models/s4/s4d.py's S4D module load into SSMLayer."""
    H, N = 5, 8
    sd = {
        "D": torch.randn(H), "kernel.C": torch.randn(H, N // 2, 2), "kernel.log_dt": torch.randn(H),
        "kernel.log_A_real": torch.randn(H, N // 2), "kernel.A_imag": torch.randn(H, N // 2),
        "output_linear.0.weight": torch.randn(2 * H, H, 1), "output_linear.0.bias": torch.randn(2 * H),
    }
    layer = SSMLayer(H, N)
    layer.load_state_dict(sd)
    torch.testing.assert_close(layer.kernel.C, sd["kernel.C"])
    assert layer.kernel.mode_mask.sum() == H * N // 2


def test_hippo_legs_dplr_properties():
    """Normal part S = A_legs + P P^T has eigenvalues -1/2 + i w; the basis change is unitary."""
    N = 8
    Lam, P, B = hippo_legs_dplr(N)
    assert torch.allclose(Lam.real, torch.full_like(Lam.real, -0.5))
    assert (Lam.imag >= 0).all()
    n = torch.arange(N, dtype=torch.float64)
    # B in the eigenbasis has the norm of the original B (V is unitary; conj half doubles |B|^2)
    assert math.isclose(2 * float((B.abs() ** 2).sum()), float(((2 * n + 1)).sum()), rel_tol=1e-9)


def test_s4_diagonal_conversion_error_small():
    layer = slow_s4d_layer("s4", "bilinear")
    *_, err = layer.kernel.diagonal(check_length=500)
    assert err < 1e-6


@pytest.mark.parametrize("prenorm", [False, True])
@pytest.mark.parametrize("norm", ["batch", "layer"])
@pytest.mark.parametrize("ssm", ["s4d", "s4"])
def test_classifier_streams_like_it_convolves(prenorm, norm, ssm):
    """Causal: the recurrent stream at step t equals the conv model on the prefix x[:t+1]."""
    torch.manual_seed(1)
    m = SequenceClassifier(3, 4, d_model=6, d_state=8, n_layers=2, ssm=ssm, prenorm=prenorm, norm=norm,
                           active_operators=[[0, 2, 5], list(range(6))], removed_operators=[[1], []]).double()
    x = torch.randn(3, 40, 3, dtype=torch.float64)
    m.train()
    m(x)  # non-trivial BatchNorm running statistics
    m.eval()
    stream = m.forward_recurrent(x)
    for t in (0, 17, 39):
        torch.testing.assert_close(stream[:, t], m(x[:, : t + 1]), rtol=1e-9, atol=1e-9)


def test_bypass_and_removed_channels():
    layer = SSMLayer(4, 4, active=[1], removed=[2]).double()
    u = torch.randn(1, 4, 10, dtype=torch.float64)
    y = layer.ssm_conv(u)
    torch.testing.assert_close(y[:, [0, 3]], u[:, [0, 3]])
    assert float(y[:, 2].detach().abs().max()) == 0.0
    assert layer.kernel.C.shape[0] == 1 and layer.D.shape == (1,)  # physically one operator


def test_token_encoder():
    m = SequenceClassifier(1, 3, d_model=4, d_state=4, n_layers=1, vocab_size=11).eval()
    out = m(torch.randint(0, 11, (2, 9)))
    assert out.shape == (2, 3)
