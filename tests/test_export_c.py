"""Generated C vs the integer reference: bit-exact on random models (hypothesis), scalar and DSP
paths, requantization on every shift and edge operand, clean under strict flags on host gcc and
arm-none-eabi-gcc, saturation counted in debug."""

import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import random_model
from hypothesis import HealthCheck, given, settings, strategies as st

from s4op_micro.quant.quantize import quantize_model
from s4op_micro.quant.reference import IntegerReference
from s4op_micro.quant import intmath as im
from s4op_micro.codegen.c import render_c
from s4op_micro.codegen.project import STRICT_CFLAGS
from s4op_micro.toolchain.hostrun import compile_host, run_host
from s4op_micro.models import SequenceClassifier

# Portable models of the ACLE intrinsics the DSP path uses (ARMv7E-M ARM: SMLAD, SMLADX, SMLSD,
# SXTB16, SSAT; wrap-around arithmetic, which never happens here since every sum is bounded at export).
# Compiling the DSP path on the host with these checks its data layout and packing bit-exactly.
ACLE_SHIM = r"""
#include <stdint.h>
static inline int32_t lo16(int32_t v) { return (int16_t)(uint16_t)((uint32_t)v & 0xFFFFu); }
static inline int32_t hi16(int32_t v) { return (int16_t)(uint16_t)((uint32_t)v >> 16); }
static inline int32_t wrap(int64_t v) { return (int32_t)(uint32_t)(uint64_t)v; }
static inline int32_t __smlad(int32_t a, int32_t b, int32_t c) { return wrap((int64_t)c + lo16(a) * lo16(b) + hi16(a) * hi16(b)); }
static inline int32_t __smladx(int32_t a, int32_t b, int32_t c) { return wrap((int64_t)c + lo16(a) * hi16(b) + hi16(a) * lo16(b)); }
static inline int32_t __smlsd(int32_t a, int32_t b, int32_t c) { return wrap((int64_t)c + lo16(a) * lo16(b) - hi16(a) * hi16(b)); }
static inline int32_t __sxtb16(int32_t x) {
    uint32_t u = (uint32_t)x;
    return (int32_t)(((uint32_t)(uint16_t)(int16_t)(int8_t)(u & 0xFFu)) | ((uint32_t)(uint16_t)(int16_t)(int8_t)((u >> 16) & 0xFFu) << 16));
}
static inline int32_t __ssat(int32_t x, int bits) {
    const int32_t hi = (int32_t)((1u << (bits - 1)) - 1u), lo = -hi - 1;
    return x > hi ? hi : x < lo ? lo : x;
}
"""


@st.composite
def cases(draw):
    m, seed = random_model(draw, st)
    bits = draw(st.sampled_from([8, 16]))
    L = draw(st.sampled_from([1, 2, 7, 23]))
    return m, seed, bits, L


def check_exact(m, seed, bits, L, tmp, dsp=False, defines=()):
    rng = np.random.default_rng(seed)
    calib = rng.normal(size=(6, max(L, 5), m.config["d_input"])).astype(np.float32)
    q = quantize_model(m, calib, coeff_bits=bits)
    ref = IntegerReference(q)
    render_c(q, tmp)
    extra = tuple(defines)
    if dsp:
        (tmp / "shim").mkdir()
        (tmp / "shim" / "arm_acle.h").write_text(ACLE_SHIM)
        extra += ("-D__ARM_FEATURE_DSP=1", "-D__ARM_FEATURE_SIMD32=1", "-I", str(tmp / "shim"))
    exe = compile_host(tmp, tmp / "build", debug=True, extra=extra)
    # random int8 inputs over the whole range: far outside calibration, so saturation does happen
    x = rng.integers(-128, 128, size=(5, L, m.config["d_input"]), dtype=np.int64).astype(np.int8)
    c_scores, counters = run_host(exe, x, q.meta.n_classes, every_step=True)
    r_scores = ref.run_steps(x)
    assert np.array_equal(c_scores, r_scores)
    assert counters == {"sat_state": ref.sat_state, "sat_act": ref.sat_act}
    return ref


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cases())
def test_random_models_bit_exact_scalar_and_dsp(tmp_path_factory, case):
    m, seed, bits, L = case
    check_exact(m, seed, bits, L, tmp_path_factory.mktemp("c"))
    check_exact(m, seed, bits, L, tmp_path_factory.mktemp("dsp"), dsp=True)
    # the ARMv6-M structure on the host: MODE_RUN's C loop (the Thumb-1 loop's fallback, one run of modes
    # per channel) and the requantization's 16-bit pieces
    check_exact(m, seed, bits, L, tmp_path_factory.mktemp("m0"), defines=("-DS4OP_SHIM_6M", "-DS4OP_MULHI_PIECES"))


def _slow_model(prenorm=False, norm="batch"):
    torch.manual_seed(0)
    m = SequenceClassifier(1, 2, d_model=3, d_state=4, n_layers=1, prenorm=prenorm, norm=norm,
                           pooling="causal_half" if norm == "layer" else "mean", seq_len=10)
    with torch.no_grad():
        m.layers[0].kernel.log_dt.fill_(-7.0)
    return m.eval()


def test_state_saturation_is_counted_not_silent(tmp_path):
    """Calibrated on tiny inputs, then driven by full-scale ones for 300 steps: the slow states
    saturate; the C counts exactly the events the reference counts (and agrees bit for bit)."""
    m = _slow_model()
    calib = 0.01 * np.ones((2, 50, 1), np.float32)
    q = quantize_model(m, calib, coeff_bits=16)
    ref = IntegerReference(q)
    render_c(q, tmp_path)
    exe = compile_host(tmp_path, tmp_path / "b")
    x = np.full((1, 300, 1), 127, np.int8)
    s, counters = run_host(exe, x, 2)
    assert np.array_equal(s, ref.run(x))
    assert counters["sat_state"] == ref.sat_state > 0
    # in-range data: no state saturation at all
    ref2 = IntegerReference(q)
    s2, c2 = run_host(exe, ref2.quantize_input(calib), 2)
    assert np.array_equal(s2, ref2.run(ref2.quantize_input(calib))) and c2["sat_state"] == ref2.sat_state == 0


@pytest.mark.parametrize("bits,norm", [(8, "batch"), (16, "batch"), (8, "layer")])
@pytest.mark.parametrize("prenorm", [False, True])
def test_cross_compiles_clean_for_cortex_m(tmp_path, bits, prenorm, norm):
    """-Wall -Wextra -Werror -pedantic -std=c99 for M0+ (scalar), M4 and M7 (DSP path), also without
    float helpers and with the profiling/debug hooks; the DSP build really uses the SIMD instructions.
    (LayerNorm models: with causal_half pooling.)"""
    gcc = shutil.which("arm-none-eabi-gcc")
    assert gcc, "arm-none-eabi-gcc is part of the toolchain (scripts/setup.sh)"
    m = _slow_model(prenorm, norm)
    q = quantize_model(m, np.random.default_rng(0).normal(size=(3, 20, 1)), coeff_bits=bits)
    render_c(q, tmp_path, test=(np.zeros((1, 4, 1), np.int8), [1], np.zeros((1, 2), np.int8)))
    for cpu in ("cortex-m0plus", "cortex-m4", "cortex-m7"):
        # -O2: the firmware's build (M0+: the Thumb-1 mode loop); -Os: the flash figure (its C loop)
        for opt, defines in (("-O2", []), ("-Os", []), ("-Os", ["-DS4OP_NO_FLOAT", "-DS4OP_DEBUG", "-DS4OP_PROFILE_LAYERS"])):
            for src in ("s4op_model.c", "s4op_weights.c", "s4op_testdata.c"):
                obj = tmp_path / f"{cpu}_{src}{opt}.o"
                cmd = [gcc, f"-mcpu={cpu}", "-mthumb", *STRICT_CFLAGS, opt, *defines, "-I", str(tmp_path / "include"),
                       "-c", str(tmp_path / "src" / src), "-o", str(obj)]
                res = subprocess.run(cmd, capture_output=True, text=True)
                assert res.returncode == 0, res.stderr
        o2 = subprocess.run(["arm-none-eabi-objdump", "-d", str(tmp_path / f"{cpu}_s4op_model.c-O2.o")],
                            capture_output=True, text=True).stdout
        # the M0+ mode loop's out-of-line saturation (BVS on 2v) is in the -O2 build of every layer that uses it
        uses_run = "MODE_RUN(" in (tmp_path / "src" / "s4op_model.c").read_text()
        assert ("bvs" in o2) == (cpu == "cortex-m0plus" and uses_run)
        dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(tmp_path / f"{cpu}_s4op_model.c-Os.o")],
                             capture_output=True, text=True).stdout
        assert ("smlsd" in dis) == (cpu != "cortex-m0plus")
        # the last build had -DS4OP_NO_FLOAT: no float or double code at all (soft-float calls)
        assert "__aeabi_f" not in dis and "__aeabi_d" not in dis


MBQM_MAIN = r"""
#include <stdio.h>
#include "s4op_kernels.h"
int main(void)   /* (x, m, shift) int32 triples on stdin -> wide, narrow (0 where not applicable) */
{
    int32_t v[3], r[2];
    while (fread(v, sizeof v, 1, stdin) == 1) {
        s4op_requant_t q;
        q.multiplier = v[1], q.left = v[2] > 0 ? v[2] : 0, q.right = v[2] < 0 ? -v[2] : 0;
        q.half = q.right ? (int32_t)1 << (q.right - 1) : 0;
        r[0] = requant_wide(v[0], &q);
        r[1] = (q.right >= 1 && q.left <= 29 && (int64_t)(v[0] < 0 ? -(int64_t)v[0] : v[0]) * ((int64_t)2 << q.left) < ((int64_t)1 << 31))
            ? requant_narrow(v[0], &q) : 0;
        fwrite(r, sizeof r, 1, stdout);
    }
    return 0;
}
"""


def test_requantization_is_tflms_on_every_shift_and_edge_operand(tmp_path):
    """The C MBQM (SRDHM's and RDBPOT's roundings folded into one 64-bit sum) = the reference's TFLM
    MultiplyByQuantizedMultiplier: every shift QuantizeMultiplier gives (-31..30), extreme multipliers
    and operands, and rounding ties (m = 2^30 puts x m + 2^30 on a multiple of 2^31 for odd x)."""
    q = quantize_model(_slow_model(), np.random.default_rng(0).normal(size=(2, 10, 1)), coeff_bits=8)
    render_c(q, tmp_path)
    (tmp_path / "main.c").write_text(MBQM_MAIN)
    exes = []
    for name, defines in (("mbqm", []), ("mbqm_pieces", ["-DS4OP_MULHI_PIECES"])):   # M0+'s 16-bit pieces
        exes.append(tmp_path / name)
        subprocess.run([shutil.which("gcc"), *STRICT_CFLAGS, *defines, "-I", str(tmp_path / "src"),
                        str(tmp_path / "main.c"), "-o", str(exes[-1])], check=True)
    rng = np.random.default_rng(2)
    p2 = np.int64(1) << np.arange(31)
    x = np.unique(np.concatenate([[0, im.INT32_MIN, im.INT32_MAX], p2, p2 - 1, p2 + 1, -p2, 1 - p2, -1 - p2,
                                  np.arange(-300, 301), rng.integers(im.INT32_MIN, im.INT32_MAX, 300, endpoint=True),
                                  rng.integers(-2**20, 2**20, 300)]))
    x = x[(x >= im.INT32_MIN) & (x <= im.INT32_MAX)]
    m = np.array([0, 1, 3, 2**30, 2**30 + 1, 2**31 - 2, 2**31 - 1, *rng.integers(2**30, 2**31, 8)])
    X, M, S = np.meshgrid(x, m, np.arange(-31, 31), indexing="ij")
    args = np.stack([X.ravel(), M.ravel(), S.ravel()], 1).astype("<i4")
    want = im.mbqm(X.ravel(), M.ravel(), S.ravel())
    left, right = np.maximum(S.ravel(), 0), np.maximum(-S.ravel(), 0)
    narrow = (right >= 1) & (left <= 29) & (np.abs(X.ravel()) * (np.int64(2) << np.minimum(left, 29)) < 2**31)
    assert narrow.sum() > 1000
    for exe in exes:
        res = subprocess.run([str(exe)], input=args.tobytes(), capture_output=True, check=True)
        got = np.frombuffer(res.stdout, dtype="<i4").astype(np.int64).reshape(-1, 2)
        assert np.array_equal(got[:, 0], want)
        assert np.array_equal(got[narrow, 1], want[narrow])