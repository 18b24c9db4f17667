"""The measured per-phase profile (s4op_micro.measure.profile): the QEMU plugin is built, a small
real exported model is profiled on three cores, and the phases add up to the firmware's own
instruction count."""

import json

import pytest

from s4op_micro.cli import main
from s4op_micro.core.errors import UserError
from s4op_micro.core.resources import firmware_dir
from s4op_micro.deploy import export
from s4op_micro.cli.export import format_profile
from s4op_micro.measure import profile as prof
from s4op_micro.models import SequenceClassifier
from s4op_micro.models.checkpoint import load_model, save_checkpoint

H, N, LAYERS = 8, 8, 2
STEP_PHASES = ["encoder", "norm", "ssm", "readout", "gelu", "mixer", "glu", "residual", "requant", "pool", "decoder"]
# the firmware's count includes the harness's call set-up between its two counter reads (5 on
# ARMv7-M, 8 on ARMv6-M) and, in the step it hits, the SysTick wrap interrupt
TOLERANCE_PER_STEP = 10


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile")
    assert main(["train", "--dataset", "gunpoint", "--out", str(root / "train"), "--epochs", "2", "--d-model", str(H),
                 "--d-state", str(N), "--n-layers", str(LAYERS), "--quiet", "--seed", "0"]) == 0
    return root


@pytest.fixture(scope="module", params=["cortex-m4", "cortex-m0plus", "cortex-m7"])
def profiled(request, model):
    out = model / request.param
    export(model / "train" / "model.pt", board=request.param, out=out, test_vectors=2)
    return out, prof.profile_export(out)


def test_plugin_builds_once_for_this_qemu():
    path = prof.plugin_library()
    assert path.is_file() and prof.plugin_library() == path
    assert prof.plugin_api_version(prof.qemu_version()) == (2 if prof.qemu_version()[0] >= 9 else 1)


def test_phases_add_up_to_the_firmware_count(profiled):
    _, p = profiled
    assert p.steps == 2 * 150 and p.sequences == 2
    assert sum(r.instructions for r in p.rows) == p.step_instructions
    assert p.difference == p.step_instructions - p.firmware_instructions
    assert abs(p.difference) <= TOLERANCE_PER_STEP * p.steps, format_profile(p)
    assert abs(sum(r.share for r in p.rows) - 1) < 1e-9
    assert p.outside["harness"] > 0 and p.outside["reset"] > 0   # start-up/output and s4op_reset, not in the step


def _by_phase(p):
    """The rows summed over layers (the generated C has per-layer code: one row per phase and layer)."""
    from types import SimpleNamespace
    out = {}
    for r in p.rows:
        o = out.setdefault(r.phase, SimpleNamespace(instructions=0, macs=0, share=0.0))
        o.instructions += r.instructions
        o.macs += r.macs
        o.share += r.share
    for o in out.values():
        o.instructions_per_mac = o.instructions / o.macs if o.macs else None
    return out


def test_every_phase_present_with_its_macs(profiled):
    export, p = profiled
    rows = _by_phase(p)
    for phase in STEP_PHASES:
        assert phase in rows and rows[phase].instructions > 0, f"{phase} missing:\n{format_profile(p)}"
    modes = LAYERS * H * (N // 2)
    assert rows["ssm"].macs == 5 * modes * p.steps
    assert rows["readout"].macs == (2 * modes + LAYERS * H) * p.steps
    assert rows["mixer"].macs == LAYERS * 2 * H * H * p.steps
    assert rows["decoder"].macs == 2 * H * p.sequences
    assert rows["requant"].macs == 0 and rows["requant"].instructions_per_mac is None
    assert rows["ssm"].instructions_per_mac == pytest.approx(rows["ssm"].instructions / rows["ssm"].macs)
    # requantization is its own visible phase (records computed at export: ~2-5% of the step; on
    # ARMv6-M no __aeabi_lmul any more, the high word from 16-bit pieces)
    assert rows["requant"].share > 0.02


def test_cycles_are_ranges_with_their_source(profiled):
    _, p = profiled
    assert 0 < p.cycles_low <= p.cycles_high
    for r in p.rows:
        assert 0 <= r.cycles_low <= r.cycles_high + 1e-6
    expected = {"cortex-m4": "Cortex-M4 TRM", "cortex-m0plus": "Cortex-M0+ TRM", "cortex-m7": "llvm-mca"}[p.cpu]
    assert expected in p.cycles_source
    # a cycle range within reason of the instruction count: 0.5..3 cycles per instruction
    assert 0.5 * p.step_instructions < p.cycles_low and p.cycles_high < 3 * p.step_instructions
    d = json.loads(json.dumps(p.to_dict()))
    assert d["cycles_source"] and d["difference_per_step"] == pytest.approx(p.difference / p.steps)
    text = format_profile(p)
    assert "firmware's own count" in text and "ssm" in text and p.cycles_source in text


def test_source_phases_convention():
    text = "int a;\n/* @phase ssm */\nx();\n/* @phase mixer layer=1 */\ny();\n/* @phase caller */\nz();\n"
    assert prof.source_phases(text) == [("other", None), ("ssm", None), ("ssm", None), ("mixer", 1), ("mixer", 1),
                                        ("caller", None), ("caller", None)]


def test_generated_model_carries_the_markers(profiled):
    export, _ = profiled
    names = {ph for ph, _ in prof.source_phases((export / "src" / "s4op_model.c").read_text())}
    assert set(STEP_PHASES) <= names and {"reset", "api", "caller"} <= names


def test_incomplete_plugin_output_is_an_error():
    with pytest.raises(UserError, match="no complete profile"):
        prof.parse_plugin_output("S4OPPROF 1\nB 0 100 1 1 100\n")


@pytest.fixture(scope="module", params=[("cortex-m7", False), ("cortex-m0plus", True)])
def profiled_layer_norm(request, tmp_path_factory):
    """A LayerNorm model (post-norm on cortex-m7, pre-norm with causal_half pooling on cortex-m0plus)."""
    cpu, prenorm = request.param
    root = tmp_path_factory.mktemp("profile_ln")
    args = ["--prenorm"] if prenorm else []
    assert main(["train", "--dataset", "gunpoint", "--out", str(root / "train"), "--epochs", "1", "--d-model", str(H),
                 "--d-state", str(N), "--n-layers", str(LAYERS), "--norm", "layer", *args, "--quiet", "--seed", "0"]) == 0
    ckpt = root / "train" / "model.pt"
    if prenorm:
        model, saved = load_model(ckpt)
        model = SequenceClassifier.from_config(dict(model.config, pooling="causal_half", seq_len=150),
                                               model.active_operators, model.removed_operators)
        model.load_state_dict(saved["state_dict"])
        save_checkpoint(ckpt, model, saved["normalization"], saved["dataset"], saved["metrics"])
    export(ckpt, board=cpu, out=root / "export", test_vectors=2)
    return root / "export", prof.profile_export(root / "export")


def test_layer_norm_has_a_norm_row_per_layer(profiled_layer_norm):
    """`run --emulator qemu --profile` on a LayerNorm model: one `norm` row per layer (the statistics, the
    square root, the reciprocal and the per-channel outputs), its MACs H + 3 outputs per step, and the
    phases still add up to the firmware's own count."""
    _, p = profiled_layer_norm
    print(f"\n{p.cpu}: LayerNorm instructions per step " + ", ".join(
        f"layer {r.layer}: {r.instructions / p.steps:.0f}" for r in p.rows if r.phase == "norm"))
    norm = {r.layer: r for r in p.rows if r.phase == "norm"}
    assert set(norm) == set(range(LAYERS)), format_profile(p)
    n_out = H                                            # post-norm: all H; pre-norm: the kept channels (all here)
    for r in norm.values():
        assert r.instructions > 0 and r.macs == (H + 3 * n_out) * p.steps
    assert sum(r.instructions for r in p.rows) == p.step_instructions
    assert abs(p.difference) <= TOLERANCE_PER_STEP * p.steps, format_profile(p)


def test_mixer_row_holds_its_multiplies(profiled):
    """Every MAC of the mixer needs a multiply instruction charged to it: at least one SMLAD per two MACs
    on the DSP cores, one MULS per MAC on ARMv6-M, so the mixer row holds at least MACs/2 (MACs)
    instructions. dot16x2 is inlined and GCC places its code right after the SSM loop: charged by
    address proximity, it went to "ssm" and the mixer row kept only the rows' set-up (here that
    fails on M0+; on the 32/32/2 gunpoint model on M7 it was 481 instructions for 2048 MACs). Its
    DWARF call site puts it in the mixer. The next test catches the DSP cores instruction by
    instruction."""
    _, p = profiled
    per_mac = 1 if p.cpu == "cortex-m0plus" else 0.5
    mixer = [r for r in p.rows if r.phase == "mixer"]
    assert len(mixer) == LAYERS
    for r in mixer:
        assert r.instructions >= per_mac * r.macs, format_profile(p)


def test_inlined_kernels_are_charged_to_their_call_site(profiled):
    """Address by address: every instruction of the mixer's dot products (dot16x2's lines in
    s4op_kernels.h, its C or assembly on every core; on DSP cores also every SMLAD: the SSM uses
    SMLSD/SMLADX) is a mixer instruction wherever GCC placed it."""
    out, p = profiled
    sources = sorted((out / "src").glob("*.[ch]")) + sorted((out / "include").glob("*.h"))
    pm = prof.PhaseMap(p.elf, sources)
    kernels = (firmware_dir() / "s4op_kernels.h").read_text().splitlines()
    first = next(i for i, line in enumerate(kernels, 1) if line.startswith("static inline void dot16x2("))
    last = next(i for i in range(first, len(kernels) + 1) if kernels[i - 1] == "}")
    in_dot = [a for a in pm.insns if (row := pm.lines(a)) and row[0] == "s4op_kernels.h" and first <= row[1] <= last]
    assert in_dot and {pm.phase(a)[0] for a in in_dot} == {"mixer"}
    smlad = [a for a, (mn, _) in pm.insns.items() if mn == "smlad"]
    assert (p.cpu == "cortex-m0plus") == (not smlad)
    assert {pm.phase(a)[0] for a in smlad} <= {"mixer"}
