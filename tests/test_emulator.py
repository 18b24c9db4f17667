"""The REAL exported model in QEMU: `run --emulator qemu` on every emulated core, the exported
Makefile/CMakeLists.txt, DSP vs scalar path, pruning lowers the instruction count, the latency table
(`profile --lut`) and the emulator latency oracle (`prune --latency emulator`), bad input.

One small gunpoint model (2 layers, H=8) is trained once per session; everything else derives from it.
"""

import argparse
import contextlib
import io
import dataclasses
import json
import shutil
import subprocess

import numpy as np
import pytest

from conftest import run_cli_json
from s4op_micro.measure import emulator
from s4op_micro.toolchain import qemu, records
from s4op_micro.toolchain import build as fwbuild
from s4op_micro.core.boards import BOARDS, get_board
from s4op_micro.models.checkpoint import load_model, save_checkpoint
from s4op_micro.cli import main
from s4op_micro.core.errors import UserError
from s4op_micro.deploy import export
from s4op_micro.prune import latency
from s4op_micro.prune.operators import Decision, Lineage, apply
from s4op_micro.train import load_data_for

EMULATED = [name for name, b in BOARDS.items() if b.emulated]
H, LAYERS, LIMIT = 8, 2, 12




@pytest.fixture(scope="session")
def gp(tmp_path_factory):
    """A small trained gunpoint model, its data, and its export for cortex-m4."""
    root = tmp_path_factory.mktemp("gp")
    assert main(["train", "--dataset", "gunpoint", "--out", str(root / "train"), "--epochs", "3", "--d-model", str(H),
                 "--d-state", "8", "--n-layers", str(LAYERS), "--quiet", "--seed", "0"]) == 0
    ckpt_path = root / "train" / "model.pt"
    model, ckpt = load_model(ckpt_path)
    data = load_data_for(ckpt)
    export(ckpt_path, board="cortex-m4", out=root / "export")
    return argparse.Namespace(root=root, ckpt=ckpt_path, model=model, ckpt_dict=ckpt, data=data, export=root / "export")


@pytest.fixture(scope="session")
def runs(gp, tmp_path_factory):
    """`run DIR --emulator qemu --board B --json` on every emulated core (LIMIT test sequences)."""
    import contextlib
    import io

    out = {}
    for name in EMULATED:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(["run", str(gp.export), "--emulator", "qemu", "--dataset", "gunpoint", "--limit", str(LIMIT),
                         "--board", name, "--json"])
        out[name] = (code, json.loads(buf.getvalue().strip().splitlines()[-1]))
    return out


def reference_scores(gp, n=LIMIT):
    from s4op_micro.quant.reference import IntegerReference
    from s4op_micro.quant.qmodel import load_qmodel

    ref = IntegerReference(load_qmodel(gp.export))
    return ref.run(ref.quantize_input(gp.data.x_test[:n])).tolist()


# --- run --emulator qemu on every core ---------------------------------------------------------


def test_every_core_matches_the_integer_reference_and_each_other(gp, runs):
    ref = reference_scores(gp)
    for name, (code, r) in runs.items():
        b = get_board(name)
        assert code == 0, name
        assert r["mismatches"] == 0 and r["n_sequences"] == LIMIT and r["scores"] == ref, name
        assert r["accuracy"] == r["reference_accuracy"]
        assert r["instructions_per_step"] > 1000 and r["steps"] == LIMIT * gp.data.x_test.shape[1]
        assert r["cycles_per_step"] == pytest.approx(r["instructions_per_step"] * r["cpi"])
        assert r["cycles_source"].startswith(f"emulator instruction count (QEMU {b.qemu_machine} -icount)")
        assert f"CPI={r['cpi']:g}" in r["cycles_source"]
        assert len(r["layers"]) == LAYERS and all(L["instructions_per_step"] > 0 for L in r["layers"])
        assert 0 < r["outside_layers_instructions_per_step"] < r["instructions_per_step"] / 2
        assert r["flash_bytes"] <= b.flash_bytes and r["ram_bytes"] <= b.ram_bytes
    # the ARMv6-M build (Thumb-1, no long multiply) runs far more instructions than Thumb-2
    ips = {n: r["instructions_per_step"] for n, (_, r) in runs.items()}
    assert ips["cortex-m0plus"] > 1.4 * ips["cortex-m4"]


def test_instruction_counts_repeat_exactly(gp, runs):
    """Re-run the firmware that `run` built: the same output, byte for byte (so the same counts)."""
    for name in ("cortex-m3", "cortex-m55"):
        elf = gp.export / "build" / f"run-{name}" / "chunk0" / "plain" / "firmware.elf"
        a, b = qemu.run_qemu(elf, name), qemu.run_qemu(elf, name)
        assert a.raw == b.raw
        assert records.summarize(a.lines)["cost_total"] == runs[name][1]["instructions_total"]


def test_human_report_and_chunked_images(gp, capsys, monkeypatch):
    # a tiny flash map forces one image per few sequences: same scores, same total
    monkeypatch.setattr(emulator, "HARNESS_MARGIN", get_board("cortex-m55").flash_size - 40 * 1024)
    code, text, _ = run_cli_json(capsys, "run", gp.export, "--emulator", "qemu", "--dataset", "gunpoint", "--limit", 5,
                        "--board", "cortex-m55")
    assert code == 0
    assert "mismatches vs the integer reference: 0" in text and "instructions/step on cortex-m55" in text
    assert "cycles: emulator instruction count" in text and "layer 1:" in text
    monkeypatch.undo()
    code, r, _ = run_cli_json(capsys, "run", gp.export, "--emulator", "qemu", "--dataset", "gunpoint", "--limit", 5,
                     "--board", "cortex-m55", "--json")
    assert r["images"] == 1 and r["scores"] == reference_scores(gp, 5)


def test_default_board_is_the_exported_one(gp, runs, capsys):
    code, r, _ = run_cli_json(capsys, "run", gp.export, "--emulator", "qemu", "--dataset", "gunpoint", "--limit", LIMIT, "--json")
    assert code == 0 and r["board"] == "cortex-m4"
    assert r["instructions_total"] == runs["cortex-m4"][1]["instructions_total"]


# --- DSP path vs scalar path ---------------------------------------------------------------------


def test_dsp_path_vs_scalar_path_on_m4(gp, runs, tmp_path):
    project = emulator.stage_project(gp.export, tmp_path / "p")
    dsp = emulator.measure_project(project, "cortex-m4", tmp_path / "dsp", layers=False)["plain"]
    scalar = emulator.measure_project(project, "cortex-m4", tmp_path / "scalar", layers=False,
                                      defines=["S4OP_NO_DSP"])["plain"]
    assert dsp["scores"] == scalar["scores"]  # same arithmetic, bit for bit
    m3 = emulator.measure_project(project, "cortex-m3", tmp_path / "m3", layers=False)["plain"]
    assert m3["scores"] == dsp["scores"]
    print(f"\nM4 DSP {dsp['cost_per_step']:.1f}, M4 scalar {scalar['cost_per_step']:.1f}, "
          f"M3 {m3['cost_per_step']:.1f} instructions/step")
    assert dsp["cost_per_step"] < scalar["cost_per_step"]


# --- pruning lowers the count ---------------------------------------------------------------------


def test_pruning_half_the_operators_lowers_the_instruction_count(gp, runs, tmp_path, capsys):
    keep = H // 2
    pruned = apply(gp.model, Decision(bypass={j: list(range(keep, H)) for j in range(LAYERS)}))
    assert [len(L.active) for L in pruned.layers] == [keep] * LAYERS
    ck = gp.ckpt_dict
    save_checkpoint(tmp_path / "pruned.pt", pruned, ck["normalization"], ck["dataset"], ck["metrics"])
    export(tmp_path / "pruned.pt", board="cortex-m4", out=tmp_path / "export")
    for name in ("cortex-m3", "cortex-m4"):
        code, r, _ = run_cli_json(capsys, "run", tmp_path / "export", "--emulator", "qemu", "--dataset", "gunpoint",
                         "--limit", 4, "--board", name, "--json")
        full = runs[name][1]
        assert code == 0 and r["mismatches"] == 0
        assert r["instructions_per_step"] < full["instructions_per_step"]
        for a, b in zip(r["layers"], full["layers"]):
            assert a["instructions_per_step"] < b["instructions_per_step"]
        print(f"\n{name}: unpruned {full['instructions_per_step']:.1f}, 50% bypassed {r['instructions_per_step']:.1f} "
              "instructions/step")


# --- the exported Makefile and CMakeLists.txt ------------------------------------------------------


def _make(directory, *extra):
    res = subprocess.run(["make", "-j2", *extra], cwd=directory, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


@pytest.mark.parametrize("board", ["cortex-m4", "rp2040-pico"])
def test_exported_makefile_builds_the_same_firmware(gp, tmp_path, board):
    out = tmp_path / "exp"
    export(gp.ckpt, board=board, out=out, test_vectors=3)
    for f in ("Makefile", "CMakeLists.txt", "firmware/s4op_startup.c", "firmware/s4op_sections.ld",
              f"firmware/s4op_{board}.ld", "firmware/bench_main.c"):
        assert (out / f).is_file(), f
    ref = fwbuild.build(out, board, out_dir=tmp_path / "ref")
    _make(out)
    assert (out / "build" / "make" / "firmware.bin").read_bytes() == ref.bin.read_bytes()
    assert (out / "build" / "make" / "firmware.hex").is_file()
    if get_board(board).emulated:  # and it runs in QEMU with the same output, by `make run` too
        assert qemu.run_qemu(out / "build" / "make" / "firmware.elf", board).raw == qemu.run_qemu(ref.elf, board).raw
        run = subprocess.run(["make", "run"], cwd=out, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and "S4OP summary n=3" in run.stdout
    # the directory is self-contained: a copy elsewhere builds too, and with the per-layer hooks
    moved = tmp_path / "moved"
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns("build"))
    _make(moved, "DEFINES=S4OP_PROFILE_LAYERS", "BUILD=build/layers")
    layered = fwbuild.build(out, board, out_dir=tmp_path / "ref-layers", defines=["S4OP_PROFILE_LAYERS"])
    assert (moved / "build" / "layers" / "firmware.bin").read_bytes() == layered.bin.read_bytes()


def test_exported_cmake_builds_the_same_firmware(gp, tmp_path):
    out = tmp_path / "exp"
    export(gp.ckpt, board="cortex-m33", out=out, test_vectors=2)
    ref = fwbuild.build(out, "cortex-m33", out_dir=tmp_path / "ref")
    for cmd in (["cmake", "-S", ".", "-B", "build/cmake"], ["cmake", "--build", "build/cmake"]):
        res = subprocess.run(cmd, cwd=out, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]
    assert (out / "build" / "cmake" / "firmware.bin").read_bytes() == ref.bin.read_bytes()


# --- cycles fed back to pruning -------------------------------------------------------------------


@pytest.fixture(scope="session")
def lut(gp, tmp_path_factory):
    path = tmp_path_factory.mktemp("lut") / "m4.json"
    code = main(["profile", "--lut", "--board", "cortex-m4", "--model", str(gp.ckpt), "--out", str(path),
                 "--widths", "0,2,4,8", "--json"])
    assert code == 0
    return path


def test_lut_is_read_by_the_pruning_oracle_and_predicts_measurements(gp, lut):
    table = json.loads(lut.read_text())
    assert table["format"] == latency.LUT_FORMAT and table["board"] == "cortex-m4"
    assert table["model"] == {"d_model": H, "d_state": 8, "n_layers": LAYERS}
    for L in table["layers"]:
        costs = [L["width"][w] for w in ("0", "2", "4", "8")]
        assert costs == sorted(costs) and costs[0] > 0 and L["removed_column"] > 0
    board = get_board("cortex-m4")
    lineage = Lineage.of(gp.model)
    oracle = latency.make_oracle(f"lut:{lut}", board, lineage)
    assert oracle.source.startswith("emulator instruction count")
    # a width that was measured is reproduced exactly (plain build, real data)
    full = emulator.measure_model(gp.model, board, gp.data)
    assert oracle.cycles(gp.model, lineage) == pytest.approx(full["cycles_per_step"], rel=1e-9)
    # widths in between (interpolated) and removed operators: within 3% of a measurement
    mixed = apply(gp.model, Decision(bypass={0: [5, 6, 7]}, remove={1: [0, 1, 2]}))
    measured = emulator.measure_model(mixed, board, gp.data)["cycles_per_step"]
    assert oracle.cycles(mixed, lineage) == pytest.approx(measured, rel=0.03)
    # and a nucleo-l476rg (a Cortex-M4 board) may use the table measured on the emulated M4
    latency.make_oracle(f"lut:{lut}", get_board("nucleo-l476rg"), lineage)


def test_emulator_oracle_measures_once_per_width(gp, monkeypatch):
    calls = []
    real = emulator.measure_model
    monkeypatch.setattr(emulator, "measure_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    board = get_board("cortex-m7")
    lineage = Lineage.of(gp.model)
    oracle = latency.make_oracle("emulator", board, lineage, calib_x=gp.data.x_train[:256],
                                 measure=emulator.measure_cycles)
    c = oracle.cycles(gp.model, lineage)
    other_channels = apply(gp.model, Decision(bypass={0: [0, 1], 1: [2]}))
    same_widths = apply(gp.model, Decision(bypass={0: [6, 7], 1: [5]}))
    a, b = oracle.cycles(other_channels, lineage), oracle.cycles(same_widths, lineage)
    assert a == b < c and len(calls) == 2   # same widths, other channels: measured once
    direct = emulator.measure_cycles(gp.model, board, "emulator", calib_x=gp.data.x_train[:256])
    assert direct["cached"] and direct["cycles_per_step"] == c and "CPI=" in direct["source"]


def test_prune_with_the_emulator_oracle_remeasures_kept_models(gp, tmp_path, capsys):
    code, r, err = run_cli_json(capsys, "prune", gp.ckpt, "--out", tmp_path / "pr", "--strategy", "s4op", "--rates", "0.5",
                       "--seeds", 1, "--finetune-epochs", 1, "--latency", "emulator", "--board", "cortex-m4",
                       "--quiet", "--json")
    assert code == 0, err
    base, kept = r["models"]
    assert all(e["cycles_source"] == "emulator instruction count" for e in r["models"])
    assert kept["cycles_per_step"] < base["cycles_per_step"]
    model, _ = load_model(kept["path"])
    emulator._MEASURED.clear()
    again = emulator.measure_cycles(model, get_board("cortex-m4"), "emulator", calib_x=gp.data.x_train[:256])
    assert not again["cached"] and kept["cycles_per_step"] == pytest.approx(again["cycles_per_step"], abs=0.1)


# --- bad input ---------------------------------------------------------------------------------


def test_board_without_qemu_machine_asked_to_emulate(gp, capsys):
    code, _, err = run_cli_json(capsys, "run", gp.export, "--emulator", "qemu", "--dataset", "gunpoint", "--limit", 2,
                       "--board", "nucleo-h743zi")
    assert code == 2 and "nucleo-h743zi has no QEMU machine" in err and "--board cortex-m7" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli_json(capsys, "profile", "--lut", "--board", "rp2040-pico", "--model", gp.ckpt, "--out", "/tmp/x.json")
    assert code == 2 and "--board cortex-m0plus" in err


def test_model_too_big_for_the_board(gp, tmp_path):
    tiny = dataclasses.replace(get_board("cortex-m4"), name="tiny-m4", flash_bytes=2048, ram_bytes=256)
    with pytest.raises(UserError, match=r"the model does not fit tiny-m4: \d+ B flash > 2048 B and \d+ B RAM > 256 B "
                                        r"\((estimated from its shapes|model sources compiled -Os)\)"):
        export(gp.ckpt, board=tiny, out=tmp_path / "tiny")
    assert not (tmp_path / "tiny").exists()
    # build: the image without the test vectors is checked against the board's budget
    small = dataclasses.replace(get_board("cortex-m4"), name="small-m4", flash_bytes=4096)
    project = emulator.stage_project(gp.export, tmp_path / "p")
    with pytest.raises(UserError, match=r"the firmware does not fit small-m4: \d+ B flash > 4096 B \(model \+ harness, "
                                        r"without the 100 B of test vectors\)"):
        emulator.measure_project(project, get_board("cortex-m4"), tmp_path / "b", layers=False, vector_bytes=100,
                                 model_board=small)


def test_missing_toolchain_or_qemu_names_the_apt_package(gp, capsys, monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, _, err = run_cli_json(capsys, "run", gp.export, "--emulator", "qemu", "--dataset", "gunpoint", "--limit", 1)
    assert code == 2 and "apt-get install --no-install-recommends gcc-arm-none-eabi libnewlib-arm-none-eabi" in err
    with pytest.raises(UserError, match="apt-get install --no-install-recommends qemu-system-arm"):
        qemu.run_qemu(tmp_path / "x.elf", "cortex-m4")


def test_bad_lut_requests(gp, capsys, tmp_path):
    pruned = apply(gp.model, Decision(bypass={0: [1]}))
    ck = gp.ckpt_dict
    save_checkpoint(tmp_path / "pruned.pt", pruned, ck["normalization"], ck["dataset"], ck["metrics"])
    for argv, message in [
        (["--board", "cortex-m4", "--model", gp.ckpt], "--lut needs --out"),
        (["--board", "cortex-m4", "--out", tmp_path / "l.json"], "--lut needs the model"),
        (["--board", "cortex-m4", "--model", tmp_path / "none.pt", "--out", tmp_path / "l.json"], "no checkpoint"),
        (["--board", "cortex-m4", "--model", gp.ckpt, "--out", tmp_path / "l.json", "--widths", "1,x"], "--widths"),
        (["--board", "cortex-m4", "--model", gp.ckpt, "--out", tmp_path / "l.json", "--widths", "4,99"], "between 0 and d_model=8"),
        (["--board", "cortex-m4", "--model", tmp_path / "pruned.pt", "--out", tmp_path / "l.json"], "unpruned model"),
    ]:
        code, _, err = run_cli_json(capsys, "profile", "--lut", *argv)
        assert code == 2 and message in err, (argv, err)
    assert not (tmp_path / "l.json").exists()


def test_board_oracle_without_a_serial_port(gp, monkeypatch):
    monkeypatch.delenv("S4OP_PORT", raising=False)
    with pytest.raises(UserError, match="S4OP_PORT"):
        emulator.measure_cycles(gp.model, get_board("nucleo-h743zi"), "board")


def test_board_table_states_a_cpi_for_every_core():
    for b in BOARDS.values():
        d = b.to_dict()
        assert 0.5 < d["cpi"] < 2.0, b.name
    assert np.isclose(BOARDS["cortex-m7"].to_dict()["cpi"], 1.30 * 3.42 / 5.01, atol=0.01)


def test_odd_widths_run_bit_exactly_on_every_core(tmp_path, capsys):
    """Width pruning makes any d_model: the RAM and flash layouts must keep every buffer that the
    kernels read with LDM word-aligned when d_model and the kept channels are not multiples of 4
    (a 22-channel model faulted with UNALIGNED in the mixer once)."""
    code, _, err = run_cli_json(capsys, "train", "--dataset", "gunpoint", "--out", tmp_path / "t", "--epochs", 2,
                                "--d-model", 6, "--d-state", 6, "--n-layers", 2, "--quiet")
    assert code == 0, err
    for board in ("cortex-m7", "cortex-m4", "cortex-m33", "cortex-m55", "cortex-m3", "cortex-m0plus"):
        out = tmp_path / board
        code, _, err = run_cli_json(capsys, "export", tmp_path / "t" / "model.pt", "--board", board, "--out", out,
                                    "--test-vectors", 2)
        assert code == 0, err
        code, res, err = run_cli_json(capsys, "run", out, "--emulator", "qemu", "--limit", 3, "--json")
        assert code == 0 and res["mismatches"] == 0, (board, err)


@pytest.mark.parametrize("d_state", [14, 8])
def test_saturating_state_bit_exact_on_m0plus(gp, tmp_path, d_state):
    """The Thumb-1 mode loop (s4op_kernels.h MODE_RUN) saturates the state out of line: slow modes
    (log_dt = -7), calibrated on near-zero inputs and then driven at full scale, must saturate in the
    integer reference and agree with it bit for bit in QEMU. 7 modes per channel (d_state 14) take
    the odd-mode block and the pair loop, 4 the pair loop alone."""
    from s4op_micro.models import SequenceClassifier
    from s4op_micro.quant.qmodel import load_qmodel
    import torch

    from s4op_micro.quant.reference import IntegerReference

    torch.manual_seed(0)
    m = SequenceClassifier(1, 2, d_model=4, d_state=d_state, n_layers=2)
    with torch.no_grad():
        for layer in m.layers:
            layer.kernel.log_dt.fill_(-7.0)
    ck = gp.ckpt_dict
    save_checkpoint(tmp_path / "slow.pt", m.eval(), ck["normalization"], ck["dataset"], ck["metrics"])
    rng = np.random.default_rng(0)
    norm = ck["normalization"]
    x_train = norm["mean"][0] + 0.01 * norm["std"][0] * rng.normal(size=(8, 150, 1))
    x_test = norm["mean"][0] + norm["std"][0] * np.full((4, 150, 1), 60.0)
    np.savez(tmp_path / "d.npz", x_train=x_train.astype(np.float32), y_train=np.arange(8) % 2,
             x_test=x_test.astype(np.float32), y_test=np.arange(4) % 2)
    out = tmp_path / "m0"
    export(tmp_path / "slow.pt", board="cortex-m0plus", out=out, data=tmp_path / "d.npz", test_vectors=2)
    ref = IntegerReference(load_qmodel(out))
    ref.run(ref.quantize_input(x_test.astype(np.float32)))
    assert ref.sat_state > 0
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["run", str(out), "--emulator", "qemu", "--data", str(tmp_path / "d.npz"), "--json"])
    res = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert code == 0 and res["mismatches"] == 0 and res["n_sequences"] == 4, res
