"""Firmware: board table, build, QEMU runs, the cost counter, faults, serial/log parsing, bad input.

Uses a FAKE model (tests/fixtures/firmware/fake_model.c) that implements the exporter's C API; its
Python re-implementation below checks the harness end to end on every emulated core.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from s4op_micro.cli import build_parser, firmware as cli_firmware
from s4op_micro.toolchain import board_io, qemu, records
from s4op_micro.toolchain import build as fwbuild
from s4op_micro.core.boards import BOARDS, get_board
from s4op_micro.core.errors import UserError
from s4op_micro.toolchain.records import FirmwareFault, FirmwareTimeout

FIX = Path(__file__).resolve().parent / "fixtures" / "firmware"
EMULATED = [name for name, b in BOARDS.items() if b.emulated]
D, C = 3, 4  # S4OP_INPUT_DIM, S4OP_NUM_CLASSES of the fixture header


# --- the fake model in Python ---------------------------------------------------------------


def _c_array(text, name):
    body = re.search(name + r"\[\]\s*=\s*\{([^}]*)\}", text).group(1)
    return [int(v) for v in body.replace("\n", " ").split(",") if v.strip()]


def load_testdata():
    text = (FIX / "fake_testdata.c").read_text()
    n = int(re.search(r"s4op_test_n = (\d+)", text).group(1))
    length = int(re.search(r"s4op_test_len = (\d+)", text).group(1))
    flat, labels = _c_array(text, "s4op_test_x"), _c_array(text, "s4op_test_label")
    xs = [[flat[(i * length + t) * D:(i * length + t + 1) * D] for t in range(length)] for i in range(n)]
    return xs, labels


def fake_model_scores(seq, width):
    """fake_model.c, step by step (>> on negative ints is arithmetic in GCC and in Python)."""
    h, acc = [0] * width, [0] * C
    for x in seq:
        for j in range(width):
            u = sum(x[k] * (((j + 2 * k) % 5) - 2) for k in range(D))
            h[j] = h[j] - (h[j] >> 2) + u
        for c in range(C):
            s = sum(h[j] * (((j * 7 + c * 3) % 9) - 4) for j in range(width))
            acc[c] += s >> 4
    return [max(-128, min(127, a >> 12)) for a in acc]


def expected(width=16):
    xs, labels = load_testdata()
    scores = [fake_model_scores(seq, width) for seq in xs]
    preds = [s.index(max(s)) for s in scores]  # lowest index wins ties
    return scores, preds, labels


# --- helpers --------------------------------------------------------------------------------


def make_project(root, *sources):
    """An export-like directory: include/ from the fixtures, src/ with the given fixture files."""
    (root / "src").mkdir(parents=True)
    shutil.copytree(FIX / "include", root / "include")
    for s in sources:
        shutil.copy(FIX / s, root / "src" / s)
    return root


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("fake"), "fake_model.c", "fake_testdata.c")


@pytest.fixture(scope="module")
def cal(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("cal"), "cal_model.c", "fake_testdata.c")


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("fault"), "fault_model.c", "fake_testdata.c")


def build_run(project, board, tag="", **kw):
    res = fwbuild.build(project, board, out_dir=project / "build" / f"{board}{tag}", **kw)
    return res, qemu.run_qemu(res.elf, board, timeout=20)


def cli(argv):
    """Run a command's function through the s4op-micro parser (errors propagate as exceptions)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


# --- boards ---------------------------------------------------------------------------------


def test_board_table_has_the_required_entries():
    for name in ["cortex-m0plus", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55",
                 "nucleo-h743zi", "stm32f746g-disco", "nrf52840-dk", "rp2040-pico"]:
        b = get_board(name)
        assert b.flash_bytes > 0 and b.ram_bytes > 0 and b.clock_hz > 0 and b.cpu.startswith("cortex-m")
        assert "-mthumb" in b.arch_flags
    assert {b: BOARDS[b].qemu_machine for b in EMULATED} == {
        "cortex-m0plus": "microbit", "cortex-m3": "mps2-an385", "cortex-m4": "mps2-an386",
        "cortex-m7": "mps2-an500", "cortex-m33": "mps2-an505", "cortex-m55": "mps3-an547"}
    assert get_board("cortex-m55").mve and get_board("cortex-m4").dsp and not get_board("cortex-m3").dsp
    for b in BOARDS.values():  # budgets fit the memory map the linker uses
        assert b.flash_bytes <= b.flash_size and b.ram_bytes <= b.ram_size
        assert b.emulated != bool(b.pyocd_target)
        if b.emulated:  # counter resolution: >= 2 SysTick ticks per instruction (exact counts)
            assert 2 <= b.ticks_per_insn() < 4


def _qemu_regions(machine):
    """Regions of the CPU's address space from QEMU's monitor (`info mtree -f`)."""
    out = subprocess.run(["qemu-system-arm", "-M", machine, "-nographic", "-monitor", "stdio", "-serial", "null", "-S"],
                         input="info mtree -f\nquit\n", capture_output=True, text=True, timeout=30).stdout
    regions, on = [], False
    for line in out.splitlines():
        if line.startswith("FlatView"):
            on = False
        on = on or 'AS "cpu-memory-0"' in line
        m = re.match(r"\s+([0-9a-f]+)-([0-9a-f]+) \(prio \d+, ([\w/]+)\): (\S+)", line)
        if on and m and (m[3] in ("ram", "romd", "rom") or m[4] == "tz-mpc-upstream"):
            regions.append((int(m[1], 16), int(m[2], 16) + 1))
    return sorted(regions)


def _covered(regions, start, size):
    pos = start
    for a, b in regions:
        if a <= pos < b:
            pos = b
    return pos >= start + size


@pytest.mark.parametrize("name", EMULATED)
def test_core_memory_maps_match_qemu(name):
    b = get_board(name)
    regions = _qemu_regions(b.qemu_machine)
    assert _covered(regions, b.flash_origin, b.flash_size), (name, [(hex(x), hex(y)) for x, y in regions])
    assert _covered(regions, b.ram_origin, b.ram_size), (name, [(hex(x), hex(y)) for x, y in regions])


def test_unknown_board_lists_the_known_ones(fake):
    with pytest.raises(UserError, match="unknown board 'cortex-m9'.*cortex-m4.*nucleo-h743zi"):
        get_board("cortex-m9")
    with pytest.raises(UserError, match="unknown board"):
        fwbuild.build(fake, "cortex-m9")


def test_boards_command_json(capsys):
    assert cli(["boards", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["boards"]
    assert {r["name"] for r in rows} == set(BOARDS)
    assert cli(["boards"]) == 0
    assert "mps2-an500" in capsys.readouterr().out


# --- end to end on every emulated core ------------------------------------------------------


@pytest.mark.parametrize("name", EMULATED)
def test_fake_model_in_qemu_matches_python(fake, name):
    res, run = build_run(fake, name)
    assert res.unit == "insn" and res.flash_bytes == res.text + res.data and res.hex.is_file() and res.bin.is_file()
    assert run.exit_code == 0
    s = records.summarize(run.lines)
    scores, preds, labels = expected()
    assert s["scores"] == scores and s["preds"] == preds and s["labels"] == labels
    assert s["correct"] == sum(p == y for p, y in zip(preds, labels)) and s["accuracy"] == pytest.approx(4 / 6)
    assert s["unit"] == "insn" and s["steps"] == 6 * 24 and s["cost_per_step"] > 100
    assert s["clock_hz"] == get_board(name).clock_hz
    # deterministic: a second run prints exactly the same text (and instruction counts)
    assert qemu.run_qemu(res.elf, name, timeout=20).raw == run.raw


def test_host_build_gives_the_qemu_outputs(fake):
    res = fwbuild.build(fake, None, host=True)
    assert res.host and res.hex is None and res.unit == "none"
    s = records.summarize(qemu.run_host(res.elf).lines)
    q = records.summarize(build_run(fake, "cortex-m4")[1].lines)
    for key in ("scores", "preds", "labels", "correct", "steps"):
        assert s[key] == q[key]
    assert s["unit"] == "none" and s["cost_total"] == 0


# --- the cost counter -----------------------------------------------------------------------


def test_cost_scales_with_model_width(fake):
    narrow = records.summarize(build_run(fake, "cortex-m4", "-w16", defines=["FAKE_WIDTH=16"])[1].lines)
    wide = records.summarize(build_run(fake, "cortex-m4", "-w32", defines=["FAKE_WIDTH=32"])[1].lines)
    assert wide["scores"] == [fake_model_scores(seq, 32) for seq in load_testdata()[0]]
    # cost ~ width * (D + C) + a fixed part (call, loop set-up): between 1.7x and 2.05x
    assert 1.7 < wide["cost_per_step"] / narrow["cost_per_step"] < 2.05


@pytest.mark.parametrize("name", EMULATED)
def test_counter_calibration_with_known_instruction_counts(cal, name):
    """Each s4op_step runs CAL_N `nop`s. The counter reads are converted to instructions one by one
    relative to a reference read; with >= 2 SysTick ticks per instruction the tick quantization
    (< 1 tick) is below half an instruction, so the counts are exact: the tolerance is zero."""
    steps = 6 * 24
    cost = {}
    for n in (1000, 2000):
        s = records.summarize(build_run(cal, name, f"-{n}", defines=[f"CAL_N={n}"])[1].lines)
        cost[n] = s["cost_total"]
        assert len(set(s["seq_costs"])) == 1  # every sequence costs exactly the same
    assert cost[2000] - cost[1000] == 1000 * steps
    # what remains besides the nops is the call itself: a handful of instructions per step
    assert 0 < cost[1000] / steps - 1000 < 20


def test_icount_shift_override_is_rescaled_to_instructions(cal):
    res, run = build_run(cal, "cortex-m3", "-1000", defines=["CAL_N=1000"])
    other = qemu.run_qemu(res.elf, "cortex-m3", icount_shift=get_board("cortex-m3").icount_shift + 1)
    assert records.summarize(other.lines)["cost_total"] == records.summarize(run.lines)["cost_total"]


def test_counter_survives_systick_wraps(cal):
    """100k nops x 144 steps = 14.4 M instructions = 46 M ticks on mps2: the 24-bit SysTick wraps
    twice; the overflow interrupt keeps the count right (its few instructions are counted too)."""
    steps, big = 6 * 24, 100_000
    small = records.summarize(build_run(cal, "cortex-m3", "-1000", defines=["CAL_N=1000"])[1].lines)
    res, run = build_run(cal, "cortex-m3", "-big", defines=[f"CAL_N={big}"])
    s = records.summarize(run.lines)
    extra = s["cost_total"] - small["cost_total"] - (big - 1000) * steps
    assert 0 <= extra <= 3 * 20


def test_dwt_counter_build_runs_in_qemu_where_cyccnt_reads_zero(fake):
    """The real-board counter (DWT CYCCNT) initializes without faulting in QEMU, which does not
    model the DWT: the costs are 0 cycles (why QEMU builds use SysTick + -icount instead)."""
    res, run = build_run(fake, "cortex-m7", "-dwt", defines=["S4OP_COUNTER_DWT", "S4OP_OUT_SEMIHOST"])
    s = records.summarize(run.lines)
    assert res.unit == s["unit"] == "cycle" and s["cost_total"] == 0 and s["scores"] == expected()[0]


def test_per_layer_costs(fake):
    res, run = build_run(fake, "cortex-m33", "-layers", defines=["S4OP_PROFILE_LAYERS"])
    s = records.summarize(run.lines)
    assert len(s["layer_costs"]) == 2 and all(c > 0 for c in s["layer_costs"])
    assert 0.8 * s["cost_total"] < sum(s["layer_costs"]) <= s["cost_total"]
    assert s["scores"] == expected()[0]
    assert "layer 1:" in cli_firmware.format_report(s)


# --- faults and hangs -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cortex-m3", "cortex-m55"])
def test_undefined_instruction_is_reported_with_registers(faulty, name):
    res = fwbuild.build(faulty, name, out_dir=faulty / "build" / f"{name}-udf", defines=["FAULT_KIND=1"])
    t0 = time.monotonic()
    with pytest.raises(FirmwareFault) as e:
        qemu.run_qemu(res.elf, name, timeout=20)
    assert time.monotonic() - t0 < 5
    regs = e.value.registers
    assert regs["cfsr"] & (1 << 16)  # UFSR.UNDEFINSTR
    assert "UNDEFINSTR" in str(e.value) and "in s4op_step" in str(e.value) and "\n" not in str(e.value)
    assert get_board(name).flash_origin <= regs["pc"] < get_board(name).flash_origin + res.text


def test_bad_address_is_reported_with_bfar(faulty):
    res = fwbuild.build(faulty, "cortex-m4", out_dir=faulty / "build" / "m4-bus",
                         defines=["FAULT_KIND=2", "FAULT_ADDR=0xF0000000u"])
    with pytest.raises(FirmwareFault) as e:
        qemu.run_qemu(res.elf, "cortex-m4", timeout=20)
    assert e.value.registers["bfar"] == 0xF0000000 and e.value.registers["cfsr"] & (1 << 15)  # BFARVALID
    assert "bfar=0xf0000000" in str(e.value)


def test_fault_on_armv6m_has_no_status_registers_but_is_reported(faulty):
    res = fwbuild.build(faulty, "cortex-m0plus", out_dir=faulty / "build" / "m0-udf", defines=["FAULT_KIND=1"])
    with pytest.raises(FirmwareFault) as e:
        qemu.run_qemu(res.elf, "cortex-m0plus", timeout=20)
    assert e.value.registers["cfsr"] == 0 and e.value.registers["pc"] > 0


def test_endless_loop_hits_the_timeout(faulty):
    res = fwbuild.build(faulty, "cortex-m7", out_dir=faulty / "build" / "m7-loop", defines=["FAULT_KIND=3"])
    t0 = time.monotonic()
    with pytest.raises(FirmwareTimeout, match="did not finish within 1 s"):
        qemu.run_qemu(res.elf, "cortex-m7", timeout=1.0)
    assert time.monotonic() - t0 < 4


# --- records, logs and the serial port ------------------------------------------------------


def test_parse_records_ignores_noise_and_reads_every_kind():
    text = ("booting...\r\nS4OP seq i=0 label=1 pred=0 steps=3 cost=30 scores=-1,2\r\n"
            "S4OPX not a record\nS4OP layer i=0 cost=20\n"
            "S4OP summary n=1 correct=0 steps=3 cost=30 unit=cycle clock=480000000\n")
    recs = records.parse_records(text)
    assert [r["kind"] for r in recs] == ["seq", "layer", "summary"]
    assert recs[0]["scores"] == [-1, 2] and recs[0]["line"] == 2
    s = records.summarize(recs)
    assert s["unit"] == "cycle" and s["cost_per_step"] == 10 and s["us_per_step"] == pytest.approx(10 / 480)
    fault = records.parse_records("S4OP fault pc=0x00000100 lr=0x1 xpsr=0x1000000 cfsr=0x10000 hfsr=0x0 mmfar=0x0 bfar=0x0")
    with pytest.raises(FirmwareFault, match="UNDEFINSTR"):
        records.summarize(fault)


@pytest.mark.parametrize("line", ["S4OP seq i=0 label=1 pred=0 steps=3 cost=abc scores=1,2",
                                  "S4OP seq i=0 label=1 pred=0 steps=3 scores=1,2",
                                  "S4OP summary n=1 correct=1 steps=3 cost=3 unit=insn clock",
                                  "S4OP seq i=0 label=1 pred=0 steps=3 cost=1 scores=1,,2",
                                  "S4OP"])
def test_malformed_record_names_the_line(line):
    with pytest.raises(UserError, match="malformed S4OP record on line 3"):
        records.parse_records("hello\n\n" + line + "\n")


def test_missing_summary_or_lost_lines_are_errors():
    seq = "S4OP seq i={} label=1 pred=0 steps=3 cost=30 scores=1,2\n"
    with pytest.raises(UserError, match="no S4OP summary"):
        records.summarize(records.parse_records(seq.format(0)))
    with pytest.raises(UserError, match="n=2 but 1 sequence"):
        records.summarize(records.parse_records(seq.format(0) + "S4OP summary n=2 correct=0 steps=6 cost=60 unit=insn clock=1\n"))
    # a board reset mid-run: the last complete run counts
    text = seq.format(0) + seq.format(1) + seq.format(0) + "S4OP summary n=1 correct=0 steps=3 cost=30 unit=insn clock=1\n"
    assert records.summarize(records.parse_records(text))["n_sequences"] == 1


def test_serial_port_and_saved_log_give_the_same_summary(fake, tmp_path, capsys):
    raw = build_run(fake, "cortex-m3")[1].raw
    log = tmp_path / "run.log"
    log.write_text("boot banner\n" + raw)
    master, slave = os.openpty()
    port = os.ttyname(slave)

    def replay():  # the "board": after the reader has opened the port, send the log in pieces
        time.sleep(0.3)
        data = log.read_bytes().replace(b"\n", b"\r\n")
        for i in range(0, len(data), 64):
            os.write(master, data[i:i + 64])
            time.sleep(0.002)

    writer = threading.Thread(target=replay)
    writer.start()
    try:
        text = board_io.read_serial(port, baud=115200, timeout=10)
    finally:
        writer.join()
        os.close(master)
        os.close(slave)
    from_serial = records.summarize(records.parse_records(text))
    assert cli(["profile", "--log", str(log), "--json"]) == 0
    from_log = json.loads(capsys.readouterr().out)
    assert from_serial == from_log
    assert from_log["scores"] == expected()[0]


def test_serial_timeout_and_bad_port(tmp_path):
    master, slave = os.openpty()
    try:
        with pytest.raises(FirmwareTimeout, match="no S4OP summary"):
            board_io.read_serial(os.ttyname(slave), timeout=0.5)
    finally:
        os.close(master)
        os.close(slave)
    with pytest.raises(UserError, match="cannot open serial port"):
        board_io.read_serial(str(tmp_path / "ttyNOPE"), timeout=0.5)


# --- bad input ------------------------------------------------------------------------------


def test_board_without_qemu_machine_refuses_to_emulate(fake):
    res = fwbuild.build(fake, "nucleo-h743zi")
    assert res.unit == "cycle" and res.flash_bytes < get_board("nucleo-h743zi").flash_bytes
    with pytest.raises(UserError, match="nucleo-h743zi has no QEMU machine.*cortex-m7"):
        qemu.run_qemu(res.elf, "nucleo-h743zi")


def test_too_small_board_refuses_with_the_figures(fake):
    tiny = dataclasses.replace(get_board("cortex-m3"), name="tiny", flash_bytes=1024, ram_bytes=2048)
    with pytest.raises(UserError, match=r"the firmware does not fit tiny: \d+ B flash > 1024 B and \d+ B RAM > 2048 B "
                                        r"\(whole image: text \d+ \+ data \d+ B flash"):
        fwbuild.build(fake, tiny, out_dir=fake / "build" / "tiny")
    small_map = dataclasses.replace(get_board("cortex-m3"), name="tinymap", flash_size=1024)
    with pytest.raises(UserError, match="FLASH region \\(1024 B at 0x0\\) overflows by \\d+ B"):
        fwbuild.build(fake, small_map, out_dir=fake / "build" / "tinymap")


def test_missing_toolchain_names_the_apt_package(fake, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(UserError, match="apt-get install .*gcc-arm-none-eabi libnewlib-arm-none-eabi"):
        fwbuild.toolchain()
    with pytest.raises(UserError, match="gcc-arm-none-eabi"):
        fwbuild.build(fake, "cortex-m4", out_dir=tmp_path / "b")
    with pytest.raises(UserError, match="apt-get install gcc"):
        fwbuild.toolchain(host=True)
    with pytest.raises(UserError, match="apt-get install .*qemu-system-arm"):
        qemu.run_qemu(tmp_path / "x.elf", "cortex-m4")


def test_not_an_export_directory_or_broken_source(tmp_path):
    with pytest.raises(UserError, match="not an export directory"):
        fwbuild.build(tmp_path, "cortex-m4")
    proj = make_project(tmp_path / "broken", "fake_model.c", "fake_testdata.c")
    (proj / "src" / "oops.c").write_text("int f(void) { return missing; }\n")
    with pytest.raises(UserError, match=r"compiling .*oops.c failed: .*'missing' undeclared.*full log: .*build.log") as e:
        fwbuild.build(proj, "cortex-m4")
    assert "\n" not in str(e.value)


def test_flash_without_probe_or_for_an_emulated_core(fake):
    hex_path = fwbuild.build(fake, "nrf52840-dk").hex
    with pytest.raises(UserError, match="no debug probe found"):
        board_io.flash(hex_path, "nrf52840-dk")
    with pytest.raises(UserError, match="emulated core"):
        board_io.flash(hex_path, "cortex-m4")


# --- named boards, RP2040 boot2, CLI --------------------------------------------------------


def test_named_boards_build_with_their_memory_map(fake):
    for name, b in BOARDS.items():
        if b.emulated:
            continue
        res = fwbuild.build(fake, name)
        syms = subprocess.run(["arm-none-eabi-nm", str(res.elf)], capture_output=True, text=True).stdout
        vectors = int(re.search(r"([0-9a-f]+) R s4op_vectors", syms).group(1), 16)
        assert vectors == b.flash_origin + (256 if b.boot2 else 0), name
        assert res.unit == "cycle"


def test_rp2040_boot2_checksum(fake):
    assert fwbuild.crc32_mpeg2(b"123456789") == 0x0376E6E7  # the CRC-32/MPEG-2 check value
    image = fwbuild.build(fake, "rp2040-pico").bin.read_bytes()
    assert fwbuild.crc32_mpeg2(image[:252]) == int.from_bytes(image[252:256], "little")
    assert int.from_bytes(image[260:264], "little") & 1  # reset vector at 0x10000104 is Thumb


def test_build_command_uses_the_board_in_model_json(fake, capsys):
    (fake / "model.json").write_text(json.dumps({"board": "cortex-m33"}))
    try:
        assert cli(["build", str(fake), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["board"] == "cortex-m33" and out["unit"] == "insn" and out["board_flash_bytes"] == 512 * 1024
        assert cli(["profile", "--emulator", "qemu", str(fake), "--layers", "--json"]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["scores"] == expected()[0] and len(rep["layer_costs"]) == 2
    finally:
        (fake / "model.json").unlink()
    with pytest.raises(UserError, match="no --board given"):
        cli(["build", str(fake)])
    assert cli(["build", str(fake), "--host"]) == 0
    assert "built" in capsys.readouterr().out
