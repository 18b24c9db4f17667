"""The typed int8 model (quant/qmodel.py): save/load round trip, one-line errors on an old or damaged
file; the generated C: designated initializers only for the model constants, -pedantic clean."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from s4op_micro.codegen.c import render_c
from s4op_micro.codegen.project import STRICT_CFLAGS
from s4op_micro.core.errors import UserError
from s4op_micro.models import SequenceClassifier
from s4op_micro.quant.qmodel import FORMAT, Layer, QuantizedModel, Requant, load_qmodel, save_qmodel
from s4op_micro.quant.quantize import quantize_model
from s4op_micro.quant.reference import IntegerReference


def _model(prenorm, bits=8):
    torch.manual_seed(1)
    m = SequenceClassifier(2, 3, d_model=6, d_state=8, n_layers=2, prenorm=prenorm).eval()
    return quantize_model(m, np.random.default_rng(0).normal(size=(4, 12, 2)), coeff_bits=bits)


@pytest.mark.parametrize("prenorm,bits", [(False, 8), (True, 16)])
def test_round_trip_is_identical(tmp_path, prenorm, bits):
    q = _model(prenorm, bits)
    save_qmodel(q, tmp_path / "qmodel.npz")
    q2 = load_qmodel(tmp_path)
    assert isinstance(q2, QuantizedModel) and isinstance(q2.layers[0], Layer)
    assert isinstance(q2.layers[0].add.out, Requant) and q2.meta == q.meta
    assert (q2.layers[0].post is None) == prenorm
    assert q2.tensors == q.tensors
    x = q.quantize_input(np.random.default_rng(2).normal(size=(3, 9, 2)))
    assert np.array_equal(IntegerReference(q2).run_steps(x), IntegerReference(q).run_steps(x))
    np.testing.assert_array_equal(q2.layers[1].ssm.a_re, q.layers[1].ssm.a_re)


def test_layer_norm_causal_half_round_trip_and_format_2_files_still_load(tmp_path):
    """A LayerNorm model with causal_half pooling survives save/load; a format-2 file (written before
    LayerNorm existed: no layer_norm, no pool_start) loads as BatchNorm with mean pooling."""
    torch.manual_seed(1)
    m = SequenceClassifier(2, 3, d_model=5, d_state=4, n_layers=2, norm="layer", prenorm=True, pooling="causal_half",
                           seq_len=12).eval()
    q = quantize_model(m, np.random.default_rng(0).normal(size=(4, 12, 2)), coeff_bits=8)
    save_qmodel(q, tmp_path / "qmodel.npz")
    q2 = load_qmodel(tmp_path)
    assert q2.meta.pool_start == 6 and all(L.layer_norm is not None for L in q2.layers)
    x = q.quantize_input(np.random.default_rng(2).normal(size=(3, 12, 2)))
    assert np.array_equal(IntegerReference(q2).run_steps(x), IntegerReference(q).run_steps(x))
    old_q = _model(False)
    save_qmodel(old_q, tmp_path / "v2.npz")
    with np.load(tmp_path / "v2.npz") as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(bytes(arrays.pop("__header__")).decode())
    header["format"] = "s4op-micro/int8-model-2"
    del header["model"]["meta"]["pool_start"]
    for layer in header["model"]["layers"]:
        del layer["layer_norm"]
    np.savez_compressed(tmp_path / "v2.npz", __header__=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    v2 = load_qmodel(tmp_path / "v2.npz")
    assert v2.meta.pool_start == 0 and v2.layers[0].layer_norm is None and v2.layers[0].post is not None


def test_old_and_corrupt_files_give_one_line_errors(tmp_path):
    old = tmp_path / "old.npz"       # format 1: a JSON tree under __tree__
    np.savez_compressed(old, __tree__=np.frombuffer(json.dumps({"meta": {}}).encode(), np.uint8))
    other = tmp_path / "other.npz"
    np.savez_compressed(other, __header__=np.frombuffer(json.dumps({"format": "s4op-micro/int8-model-9"}).encode(), np.uint8))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    for path in (old, other, bad):
        with pytest.raises(UserError) as e:
            load_qmodel(path)
        msg = str(e.value)
        assert "\n" not in msg and "re-run `s4op-micro export`" in msg
    with pytest.raises(UserError, match=FORMAT):
        load_qmodel(other)


def _struct_initializers(text):
    """Every brace-enclosed initializer that holds another brace or a '.field =': the struct ones."""
    return re.findall(r"\{[^{}]*\}", text)


@pytest.mark.parametrize("prenorm,bits", [(False, 8), (True, 16)])
def test_generated_c_is_designated_and_pedantic(tmp_path, prenorm, bits):
    q = _model(prenorm, bits)
    render_c(q, tmp_path)
    weights = (tmp_path / "src" / "s4op_weights.c").read_text()
    model = (tmp_path / "src" / "s4op_model.c").read_text()
    # every struct initializer is designated: each innermost { } either names its fields or is a
    # plain array of numbers (weights, tables)
    inits = "\n".join(line for line in model.splitlines() if "= {" in line)    # the constants in the code
    for init in _struct_initializers(weights.split("#include", 1)[1] + inits):
        body = init[1:-1].strip()
        if not body or "=" in body:
            assert not body or re.match(r"\.\w+ =", body), init
            continue
        assert re.fullmatch(r"[-\d,\s]+", body), f"a positional initializer: {init[:80]}"
    for typed in ("s4op_encoder_t s4op_encoder = {", "s4op_layer0_t s4op_layer0 = {", ".channel = {", ".mode = {"):
        assert typed in weights
    assert ".multiplier = " in weights and ".right = " in weights
    # no positional magic arrays, no one-letter globals
    assert "mul[5]" not in model and "add[9]" not in model and " S." not in model and "XA" not in model
    internal = (tmp_path / "src" / "s4op_internal.h").read_text()
    assert re.search(r"int16_t mixer_weight\[S4OP_D_MODEL\]\[\d+\]\[2\]\[8\];\s+/\* \[H\]", internal)
    gcc = shutil.which("arm-none-eabi-gcc")
    for cc, flags in ((shutil.which("gcc"), []), (gcc, ["-mcpu=cortex-m4", "-mthumb"]), (gcc, ["-mcpu=cortex-m0plus", "-mthumb"])):
        if cc is None:
            continue
        for src in ("s4op_model.c", "s4op_weights.c"):
            res = subprocess.run([cc, *flags, *STRICT_CFLAGS, "-O2", "-I", str(tmp_path / "include"), "-c",
                                  str(tmp_path / "src" / src), "-o", str(tmp_path / (src + ".o"))],
                                 capture_output=True, text=True)
            assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("norm,prenorm", [("batch", False), ("layer", False), ("layer", True)])
def test_m0plus_hot_path_has_no_64_bit_multiply_call(tmp_path, norm, prenorm):
    """Cortex-M0+: the step's requantizations use 16-bit pieces, not libgcc's __aeabi_lmul; LayerNorm's
    variance, square root and reciprocal stay in 32 bits."""
    gcc = shutil.which("arm-none-eabi-gcc")
    assert gcc
    if norm == "batch":
        q = _model(prenorm)
    else:
        torch.manual_seed(1)
        m = SequenceClassifier(2, 3, d_model=6, d_state=8, n_layers=2, prenorm=prenorm, norm=norm).eval()
        q = quantize_model(m, np.random.default_rng(0).normal(size=(4, 12, 2)), coeff_bits=8)
    render_c(q, tmp_path)
    obj = tmp_path / "m.o"
    subprocess.run([gcc, "-mcpu=cortex-m0plus", "-mthumb", *STRICT_CFLAGS, "-O2", "-I", str(tmp_path / "include"),
                    "-c", str(tmp_path / "src" / "s4op_model.c"), "-o", str(obj)], check=True)
    dis = subprocess.run(["arm-none-eabi-objdump", "-dr", str(obj)], capture_output=True, text=True).stdout
    funcs = re.split(r"\n(?=[0-9a-f]+ <)", dis)
    hot = [f for f in funcs if f.split("\n", 1)[0].endswith(("<s4op_step>:", "<layer0>:", "<layer1>:", "<norm0>:",
                                                               "<norm1>:"))]
    assert hot and all("__aeabi_lmul" not in f for f in hot)
    assert norm == "batch" or "norm_recip" in (tmp_path / "src" / "s4op_model.c").read_text()
