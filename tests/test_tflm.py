"""TFLM path: the streaming .tflite run by the real TFLM kernels (the tflite-micro package) against the
integer reference, the C array and app glue, and the bad inputs."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import random_model
from s4op_micro.toolchain.tflm_app import build_app  # noqa: E402
from hypothesis import HealthCheck, given, settings, strategies as st

import tflite_micro  # noqa: F401  (installed by scripts/setup.sh: CI has it; no skip)

from s4op_micro.core.errors import UserError  # noqa: E402
from s4op_micro.quant.quantize import quantize_model
from s4op_micro.quant.reference import IntegerReference  # noqa: E402
from s4op_micro.quant import intmath as im  # noqa: E402
from s4op_micro.codegen import tflm
from s4op_micro.measure import tflm_runtime as rt  # noqa: E402
from s4op_micro.quant.quantize import add_params  # noqa: E402
from s4op_micro.quant.qmodel import FullyConnected, Requant, TensorQ  # noqa: E402
from s4op_micro.quant.reference import add, fc  # noqa: E402
from s4op_micro.codegen.tflm_graph import Graph, scale_pair, tflm_multiplier  # noqa: E402
from s4op_micro.models import SequenceClassifier  # noqa: E402

f32 = lambda v: np.float64(np.float32(v))  # noqa: E731


def cli(*args):
    return subprocess.run([sys.executable, "-m", "s4op_micro", *map(str, args)], capture_output=True, text=True)


class Result:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err


@pytest.fixture
def run_cli(capsys):
    """The CLI in this process (no second torch import): Result(exit code, stdout, stderr)."""
    from s4op_micro.cli import main

    def run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


# --- where the arithmetic coincides: FULLY_CONNECTED, MUL, ADD are bit-exact ----------------------

def _act(rng):
    return TensorQ(float(f32(rng.uniform(0.005, 0.2))), int(rng.integers(-128, 128)))


def _fc_params(rng, n_out, n_in, t_in, t_out):
    """Our FC quantization (per-channel int8 weights, int32 bias, M/shift from the scales)."""
    w = rng.integers(-127, 128, (n_out, n_in))
    s_w = f32(rng.uniform(1e-3, 5e-2, n_out))
    bias = rng.integers(-3000, 3000, n_out)
    M, S = im.quantize_multiplier(f32(t_in.scale) * s_w / f32(t_out.scale))
    return FullyConnected(w=w, bias=bias, bias_eff=bias - t_in.zero_point * w.sum(axis=1), rq=Requant(M, S),
                          w_scale=s_w, in_zp=t_in.zero_point, out_zp=t_out.zero_point)


def test_fc_mul_add_graph_is_bit_exact():
    """A graph of only FULLY_CONNECTED, MUL and ADD (our int8 quantization, float32 scales): TFLM's
    kernels and our reference agree on every output of 400 random inputs x 4 random layers."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        tx, ta, tb, tm, to = (_act(rng) for _ in range(5))
        pa, pb = _fc_params(rng, 24, 20, tx, ta), _fc_params(rng, 24, 20, tx, tb)
        mM, mS = tflm_multiplier(f32(ta.scale) * f32(tb.scale) / f32(tm.scale))
        pad = add_params(ta, tm, to)
        g = Graph()
        x = g.tensor("x", "int8", [1, 20], tx.scale, tx.zero_point)
        a, b = tflm._fc(g, x, pa, ta, "a"), tflm._fc(g, x, pb, tb, "b")
        m = g.op("MUL", [a, b], [g.tensor("m", "int8", [1, 24], tm.scale, tm.zero_point)])
        o = g.op("ADD", [a, m], [g.tensor("o", "int8", [1, 24], to.scale, to.zero_point)])
        it = rt.interpreter(g.serialize([x], [o]))
        xs = rng.integers(-128, 128, (400, 20))
        got = []
        for row in xs:
            it.set_input(row.astype(np.int8)[None], 0)
            it.invoke()
            got.append(it.get_output(0)[0])
        ra, rb = np.clip(fc(pa, xs), -128, 127), np.clip(fc(pb, xs), -128, 127)
        rm = np.clip(im.mbqm((ra - ta.zero_point) * (rb - tb.zero_point), mM, mS) + tm.zero_point, -128, 127)
        want = np.clip(add(pad, ra, rm), -128, 127)
        assert (np.asarray(got) == want).all(), f"seed {seed}: {(np.asarray(got) != want).sum()} outputs differ"


def test_scale_pairs_reproduce_any_multiplier():
    rng = np.random.default_rng(1)
    for real in np.concatenate([rng.uniform(1e-7, 50, 300), [2.0 ** -31, 0.5, 1 - 2.0 ** -33]]):
        M, S = tflm_multiplier(real)
        a, b = scale_pair(M, S)
        assert tflm_multiplier(f32(a) / f32(b)) == (M, S)


# --- the whole streaming model: random models, bit-exact at every step ------------------------------

@st.composite
def models(draw):
    m, seed = random_model(draw, st, max_channels=7, state_sizes=(2, 4, 8))
    return m, seed, draw(st.sampled_from([8, 16])), draw(st.sampled_from([1, 3, 17]))


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(models())
def test_random_models_bit_exact_in_tflm(case):
    m, seed, bits, L = case
    rng = np.random.default_rng(seed)
    calib = rng.normal(size=(6, max(L, 6), m.config["d_input"])).astype(np.float32)
    q = quantize_model(m, calib, coeff_bits=bits)
    model_bytes, info = tflm.build_tflite(q)
    assert set(info["ops"]) <= rt.TFLM_BUILTINS and "GELU" not in info["ops"]
    x = q.quantize_input(rng.normal(size=(3, L, m.config["d_input"])) * 1.5)
    got = rt.run_sequences(rt.interpreter(model_bytes), x)
    want = IntegerReference(q).run_steps(x)
    assert rt.lsb_stats(got, want)["max_lsb_diff"] == 0


def test_state_survives_invokes_and_reset_clears_it():
    torch.manual_seed(0)
    m = SequenceClassifier(1, 3, d_model=4, d_state=4, n_layers=1).eval()
    q = quantize_model(m, np.random.default_rng(0).normal(size=(4, 8, 1)), 16)
    it = rt.interpreter(tflm.build_tflite(q)[0])
    x = q.quantize_input(np.random.default_rng(1).normal(size=(2, 12, 1)))
    first, again = rt.run_sequences(it, x), rt.run_sequences(it, x)   # run_sequences resets per sequence
    assert (first == again).all()
    assert (first == IntegerReference(q).run_steps(x)).all()
    assert len({bytes(s) for s in first[0]}) > 1                      # the scores move: state is kept


# --- export, files, `run --runtime tflm` -------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tflm")
    res = cli("train", "--dataset", "digits", "--d-model", 8, "--d-state", 8, "--n-layers", 1, "--epochs", 1,
              "--max-train", 300, "--quiet", "--out", tmp / "train")
    assert res.returncode == 0, res.stderr
    out = tmp / "exp"
    res = cli("export", tmp / "train" / "model.pt", "--board", "cortex-m4", "--out", out, "--formats", "c,tflm",
              "--calib-samples", 64)
    assert res.returncode == 0, res.stderr
    return out


def test_export_writes_the_tflm_files(exported):
    d = exported / "tflm"
    model = (d / "model.tflite").read_bytes()
    meta = json.loads((d / "tflm.json").read_text())
    assert meta["model_bytes"] == len(model) and meta["test_sequence"]["mismatched_steps"] == 0
    # model_data.cc holds exactly the bytes of model.tflite, aligned
    cc = (d / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char g_s4op_model_data[]" in cc
    hexes = re.findall(r"0x([0-9a-f]{2})", cc.split("g_s4op_model_data[] = {", 1)[1])
    assert bytes(int(h, 16) for h in hexes) == model
    assert f"g_s4op_model_data_len = {len(model)};" in cc
    # the resolver holds exactly the ops of the model
    main = (d / "main.cc").read_text()
    methods = re.findall(r"resolver\.(Add\w+)\(\)", main)
    assert sorted(methods) == sorted(tflm.RESOLVER_METHODS[o] for o in meta["ops"])
    assert "MicroMutableOpResolver<kOps>" in main and f"constexpr int kOps = {len(meta['ops'])};" in main
    # the arena: measured need + stated margin, and the runtime runs in it
    a = meta["arena"]
    assert a["needed_bytes"] >= a["allocated_bytes"] and a["size_bytes"] == rt.arena_size(a["needed_bytes"])
    assert f"constexpr int kArenaSize = {a['size_bytes']};" in main
    assert not rt._runs(model, a["needed_bytes"] - 64) and rt._runs(model, a["needed_bytes"])


def test_model_data_cc_compiles_to_the_same_bytes(exported, tmp_path):
    d = exported / "tflm"
    dump = tmp_path / "dump.cc"
    dump.write_text('#include <cstdio>\n#include <cstdint>\n#include "model_data.h"\n'
                    'int main() { if (reinterpret_cast<uintptr_t>(g_s4op_model_data) % 16) return 3;\n'
                    '  fwrite(g_s4op_model_data, 1, g_s4op_model_data_len, stdout); return 0; }\n')
    exe = tmp_path / "dump"
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", "-I", d, d / "model_data.cc", dump, "-o", exe], check=True)
    assert subprocess.run([exe], capture_output=True, check=True).stdout == (d / "model.tflite").read_bytes()


def test_run_runtime_tflm_json(exported, run_cli):
    res = run_cli("run", exported, "--runtime", "tflm", "--limit", 40, "--json")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["n_sequences"] == 40 and r["max_lsb_diff"] == 0 and r["mismatches"] == 0
    assert r["accuracy"] == r["reference_accuracy"] and 0 <= r["float_accuracy"] <= 1
    assert r["lsb_histogram"] == {"0": 40 * r["steps"] * 10}
    human = run_cli("run", exported, "--runtime", "tflm", "--limit", 5)
    assert human.returncode == 0 and "tflm: 5 sequences" in human.stdout


# --- bad input ------------------------------------------------------------------------------------------

def _one_line_error(res, *words):
    assert res.returncode != 0 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_model_with_an_op_tflm_lacks(tmp_path):
    g = Graph()
    x = g.tensor("x", "float32", [1, 4])
    y = g.op("GELU", [x], [g.tensor("y", "float32", [1, 4])])
    with pytest.raises(UserError, match="GELU, which TFLM has no kernel for"):
        rt.interpreter(g.serialize([x], [y]))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "gelu"])
def test_run_with_a_broken_tflite(exported, tmp_path, damage, run_cli):
    d = tmp_path / "exp"
    shutil.copytree(exported, d)
    path = d / "tflm" / "model.tflite"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "garbage":
        path.write_bytes(data[:8] + bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    else:
        g = Graph()
        x = g.tensor("x", "int8", [1, 1], 0.1, 0)
        y = g.op("GELU", [x], [g.tensor("y", "int8", [1, 10], 0.1, 0)])
        path.write_bytes(g.serialize([x], [y]))
    _one_line_error(run_cli("run", d, "--runtime", "tflm", "--limit", 2), "model.tflite",
                    {"truncate": "corrupt", "garbage": "", "gelu": "GELU"}[damage])


def test_run_without_tflm_export(exported, tmp_path, run_cli):
    d = tmp_path / "exp"
    shutil.copytree(exported, d)
    shutil.rmtree(d / "tflm")
    _one_line_error(run_cli("run", d, "--runtime", "tflm", "--limit", 2), "--formats c,tflm")


def test_build_without_a_tflm_tree(exported, tmp_path, monkeypatch):
    monkeypatch.delenv("TFLM_ROOT", raising=False)
    with pytest.raises(UserError, match="TFLM_ROOT=\\(unset\\) is not a TensorFlow Lite Micro tree"):
        build_app(exported, tmp_path / "b")
    with pytest.raises(UserError, match="is not a TensorFlow Lite Micro tree"):
        build_app(exported, tmp_path / "b", tflm_root=tmp_path)
    if shutil.which("cmake"):   # the CMake project itself stops with a clear message
        res = subprocess.run(["cmake", "-S", exported / "tflm", "-B", tmp_path / "c"], capture_output=True, text=True)
        assert res.returncode != 0 and "TFLM_ROOT" in res.stderr and "create_tflm_tree.py" in res.stderr


# Declarations of the TFLM API that main.cc uses (signatures as in tflite-micro's headers), to
# compile the generated app here without a TFLM tree.
TFLM_API_STUB = {
    "tensorflow/lite/c/common.h": """
#pragma once
#include <cstddef>
#include <cstdint>
typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef union { int8_t* int8; int16_t* i16; int32_t* i32; } TfLitePtrUnion;
typedef struct { TfLitePtrUnion data; size_t bytes; } TfLiteTensor;
""",
    "tensorflow/lite/schema/schema_generated.h": """
#pragma once
namespace tflite { struct Model { unsigned int version() const; }; const Model* GetModel(const void* buf); }
""",
    "tensorflow/lite/micro/micro_log.h": "#pragma once\nvoid MicroPrintf(const char* format, ...);\n",
    "tensorflow/lite/micro/system_setup.h": "#pragma once\nnamespace tflite { void InitializeTarget(); }\n",
    "tensorflow/lite/micro/micro_allocator.h": """
#pragma once
#include "tensorflow/lite/c/common.h"
namespace tflite { class MicroAllocator { public: static MicroAllocator* Create(uint8_t* tensor_arena, size_t arena_size); }; }
""",
    "tensorflow/lite/micro/micro_resource_variable.h": """
#pragma once
#include "tensorflow/lite/micro/micro_allocator.h"
namespace tflite { class MicroResourceVariables { public:
  static MicroResourceVariables* Create(MicroAllocator* allocator, int num_variables); }; }
""",
    "tensorflow/lite/micro/micro_mutable_op_resolver.h": """
#pragma once
#include "tensorflow/lite/c/common.h"
namespace tflite { class MicroOpResolver {};
template <unsigned int tOpCount> class MicroMutableOpResolver : public MicroOpResolver { public:
""" + "".join(f"  TfLiteStatus {m}();\n" for m in sorted(tflm.RESOLVER_METHODS.values())) + "}; }\n",
    "tensorflow/lite/micro/micro_interpreter.h": """
#pragma once
#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/micro_allocator.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/micro/micro_resource_variable.h"
#include "tensorflow/lite/schema/schema_generated.h"
#define TFLITE_SCHEMA_VERSION (3)
namespace tflite { class MicroProfilerInterface; class MicroInterpreter { public:
  MicroInterpreter(const Model* model, const MicroOpResolver& op_resolver, MicroAllocator* allocator,
                   MicroResourceVariables* resource_variables = nullptr, MicroProfilerInterface* profiler = nullptr);
  TfLiteStatus AllocateTensors(); TfLiteStatus Invoke();
  TfLiteTensor* input(size_t index); TfLiteTensor* output(size_t index); size_t arena_used_bytes() const; }; }
""",
}


def test_main_cc_compiles_against_the_tflm_api(exported, tmp_path):
    for rel, text in TFLM_API_STUB.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    d = exported / "tflm"
    for flags in ([], ["-D__ARM_ARCH_7EM__"]):   # host (no DWT) and a Cortex-M4 (DWT cycle counter)
        res = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", *flags,
                              "-I", tmp_path, "-I", d, d / "main.cc"], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr


def test_readout_scales_always_have_a_tflm_scale_pair():
    """Multipliers within 2^-24 of a power of two have no float32 scale pair; the export's readout
    scales step out of those bands (a failing hypothesis case had M = 2147483598)."""
    from s4op_micro.quant import intmath as im
    from s4op_micro.quant.quantize import tflm_expressible
    from s4op_micro.codegen.tflm_graph import scale_pair

    rng = np.random.default_rng(0)
    for s_out in np.float32(rng.uniform(1e-3, 1.0, 20)).astype(float):
        for ratio in (1 - 2.0 ** -27, 1 - 2.0 ** -24, 0.5 + 2.0 ** -28, 0.5 + 2.0 ** -25, 0.75, 0.999):
            s = tflm_expressible(ratio * s_out * 8, s_out)
            assert abs(s / (ratio * s_out * 8) - 1) < 2.0 ** -20
            M, shift = im.quantize_multiplier(s / s_out)
            scale_pair(int(M), int(shift))  # raises when TFLM could not be given (M, shift)
