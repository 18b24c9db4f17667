"""Shared test helpers: the CLI run in this process, the one-line-error check, and the random
model generator the bit-exactness tests (C and TFLM) draw from."""

import json

import numpy as np
import torch

from s4op_micro.cli import main
from s4op_micro.models import SequenceClassifier


def run_cli(capsys, *argv):
    """s4op-micro in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_cli_json(capsys, *argv):
    """As run_cli, with stdout's last line parsed as JSON when it is JSON (else the text)."""
    code, out, err = run_cli(capsys, *argv)
    try:
        return code, json.loads(out.strip().splitlines()[-1]), err
    except (json.JSONDecodeError, IndexError):
        return code, out, err


def assert_clean_error(capsys, out, *argv, match=""):
    """The command fails as bad input should: exit 2, one line on stderr containing `match`, and
    (when `out` is given) no output directory and no temporary sibling left behind."""
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, err
    if out is not None:
        assert not out.exists()
        assert not list(out.parent.glob(f".{out.name}*"))
    return err


def random_model(draw, st, max_channels=9, state_sizes=(2, 4, 6, 8)):
    """A random small classifier (hypothesis draws): S4D or S4, 1-2 layers, operators active,
    bypassed or removed at random, pre- or post-norm, BatchNorm (random statistics) or LayerNorm
    (random gamma, beta; sometimes a large eps), mean or causal_half pooling (random seq_len),
    sometimes a pruned mode and a slow channel (|dA| ~ 0.9995). Returns (model, seed)."""
    H = draw(st.integers(1, max_channels))
    n_layers = draw(st.integers(1, 2))
    ssm = draw(st.sampled_from(["s4d", "s4"]))
    N = draw(st.sampled_from(list(state_sizes)))
    C, K = draw(st.integers(1, 3)), draw(st.integers(2, 4))
    prenorm = draw(st.booleans())
    norm = draw(st.sampled_from(["batch", "layer"]))
    pooling, seq_len = draw(st.sampled_from([("mean", None), ("causal_half", 2), ("causal_half", 9), ("causal_half", 40)]))
    seed = draw(st.integers(0, 10_000))
    rng = np.random.default_rng(seed)
    active, removed = [], []
    for _ in range(n_layers):
        role = rng.integers(0, 3 if draw(st.booleans()) else 1, size=H)  # 0 active, 1 bypassed, 2 removed
        if (role == 2).all():
            role[0] = 0
        active.append([c for c in range(H) if role[c] == 0])
        removed.append([c for c in range(H) if role[c] == 2])
    torch.manual_seed(seed)
    m = SequenceClassifier(C, K, d_model=H, d_state=N, n_layers=n_layers, ssm=ssm, prenorm=prenorm, norm=norm,
                           pooling=pooling, seq_len=seq_len, dt_min=1e-3, dt_max=0.5, active_operators=active,
                           removed_operators=removed)
    with torch.no_grad():
        for nm in m.norms:
            if norm == "batch":
                nm.running_mean.uniform_(-1, 1)
                nm.running_var.uniform_(0.3, 3)
            elif rng.random() < 0.3:
                nm.eps = 0.3                                   # eps comparable to the variance: it matters
            nm.weight.uniform_(-2, 2)
            nm.bias.uniform_(-1, 1)
        for layer in m.layers:
            if ssm == "s4d" and len(layer.active) and draw(st.booleans()):
                layer.kernel.mode_mask[0, 0] = 0               # a pruned mode: ragged mode counts
                layer.kernel.log_dt[0] = -7.0                  # a slow channel: |dA| ~ 0.9995
    m.eval()
    return m, seed
