"""Every bad input a new user tried (issue: exit 2, one line, nothing half-written, checked before
any work), as a table; then a hypothesis fuzz of every subcommand's options."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import assert_clean_error, run_cli
from s4op_micro.cli import _glue_dash_values, build_parser
from s4op_micro.core.checks import check_fits
from s4op_micro.core.errors import UserError

TINY = ["--epochs", "1", "--d-model", "4", "--d-state", "4", "--n-layers", "1", "--quiet"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny trained checkpoint and its C export (the valid inputs the bad ones sit next to)."""
    root = tmp_path_factory.mktemp("bad")
    assert build_parser() and run_cli_plain(["train", "--dataset", "gunpoint", "--out", root / "t", *TINY]) == 0
    assert run_cli_plain(["export", root / "t" / "model.pt", "--board", "cortex-m4", "--out", root / "e",
                          "--test-vectors", "2"]) == 0
    a_file = root / "a_file"
    a_file.write_text("not a directory\n")
    one_class = root / "one_class.npz"
    rng = np.random.default_rng(0)
    np.savez(one_class, x_train=rng.normal(size=(10, 20)), y_train=np.zeros(10), x_test=rng.normal(size=(4, 20)),
             y_test=np.zeros(4))
    nan = root / "nan.npz"
    x = rng.normal(size=(10, 20))
    x[3, 4] = np.nan
    np.savez(nan, x_train=x, y_train=np.arange(10) % 2, x_test=rng.normal(size=(4, 20)), y_test=np.arange(4) % 2)
    return {"root": root, "ckpt": root / "t" / "model.pt", "export": root / "e", "file": a_file,
            "one_class": one_class, "nan": nan}


def run_cli_plain(argv):
    from s4op_micro.cli import main

    return main([str(a) for a in argv])


# (name, argv built from the fixture's paths, output dir that must not appear, text the one line must hold)
CASES = [
    ("out under a regular file", lambda m: ["train", "--dataset", "gunpoint", "--out", m["file"] / "x", *TINY], None, "lies under the file"),
    ("out in /proc", lambda m: ["train", "--dataset", "gunpoint", "--out", "/proc/nope/x", *TINY], None, "system directory"),
    ("export into the current directory", lambda m: ["export", m["ckpt"], "--board", "cortex-m4", "--out", ".", "--force"], None, "current, home or root"),
    ("d-model 0", lambda m: ["train", "--dataset", "gunpoint", "--out", m["root"] / "o1", "--d-model", "0"], "o1", "--d-model: 0 is out of range"),
    ("batch-size 0", lambda m: ["train", "--dataset", "gunpoint", "--out", m["root"] / "o2", "--batch-size", "0"], "o2", "--batch-size"),
    ("dropout 1.5", lambda m: ["train", "--dataset", "gunpoint", "--out", m["root"] / "o3", "--dropout", "1.5"], "o3", "--dropout"),
    ("epochs 0", lambda m: ["train", "--dataset", "gunpoint", "--out", m["root"] / "o4", "--epochs", "0"], "o4", "--epochs"),
    ("epochs -3", lambda m: ["train", "--dataset", "gunpoint", "--out", m["root"] / "o5", "--epochs", "-3"], "o5", "--epochs"),
    ("lr -0.1", lambda m: ["train", "--dataset", "gunpoint", "--out", m["root"] / "o6", "--lr", "-0.1"], "o6", "--lr"),
    ("n-layers 0", lambda m: ["train", "--dataset", "gunpoint", "--out", m["root"] / "o7", "--n-layers", "0"], "o7", "--n-layers"),
    ("d-state 0", lambda m: ["train", "--dataset", "gunpoint", "--out", m["root"] / "o8", "--d-state", "0"], "o8", "--d-state"),
    ("d-state odd", lambda m: ["train", "--dataset", "gunpoint", "--out", m["root"] / "o9", "--d-state", "5"], "o9", "--d-state must be even"),
    ("one class", lambda m: ["train", "--data", m["one_class"], "--out", m["root"] / "o10", *TINY], "o10", "two or more"),
    ("NaN in the data", lambda m: ["train", "--data", m["nan"], "--out", m["root"] / "o11", *TINY], "o11", "NaN"),
    ("prune max-drop -5", lambda m: ["prune", m["ckpt"], "--strategy", "guided", "--out", m["root"] / "o12", "--max-drop", "-5"], "o12", "--max-drop"),
    ("pipeline epochs -3", lambda m: ["pipeline", "--dataset", "gunpoint", "--out", m["root"] / "p1", "--epochs", "-3"], "p1", "--epochs"),
    ("pipeline epochs 0", lambda m: ["pipeline", "--dataset", "gunpoint", "--out", m["root"] / "p2", "--epochs", "0"], "p2", "--epochs"),
    ("pipeline board foo", lambda m: ["pipeline", "--dataset", "gunpoint", "--out", m["root"] / "p3", "--board", "foo"], "p3", "unknown board"),
    ("pipeline board without QEMU", lambda m: ["pipeline", "--dataset", "gunpoint", "--out", m["root"] / "p4", "--board", "nucleo-h743zi"], "p4", "no QEMU machine"),
    ("pipeline rates 1.5", lambda m: ["pipeline", "--dataset", "gunpoint", "--out", m["root"] / "p5", "--rates", "1.5"], "p5", "--rates"),
    ("pipeline guided rates", lambda m: ["pipeline", "--dataset", "gunpoint", "--out", m["root"] / "p5", "--guided-rates",
                                         "0.7,0.3"], "p5", "--guided-rates"),
    ("pipeline limit -1", lambda m: ["pipeline", "--dataset", "gunpoint", "--out", m["root"] / "p6", "--limit", "-1"], "p6", "--limit"),
    ("pipeline unknown dataset", lambda m: ["pipeline", "--dataset", "nope", "--out", m["root"] / "p7"], "p7", "unknown dataset"),
    ("pipeline NaN data", lambda m: ["pipeline", "--data", m["nan"], "--out", m["root"] / "p8"], "p8", "NaN"),
    ("eval a directory", lambda m: ["eval", m["ckpt"].parent], None, "is a directory; pass the checkpoint file"),
    ("run limit 0", lambda m: ["run", m["export"], "--host", "--limit", "0"], None, "--limit"),
    ("force over a file", lambda m: ["train", "--dataset", "gunpoint", "--out", m["file"], "--force", *TINY], None, "is a file"),
]


@pytest.mark.parametrize("name,argv,out,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(made, capsys, name, argv, out, match):
    before = sorted(p.name for p in made["root"].iterdir())
    assert_clean_error(capsys, made["root"] / out if out else None, *argv(made), match=match)
    assert sorted(p.name for p in made["root"].iterdir()) == before   # nothing made, nothing removed
    assert made["file"].read_text() == "not a directory\n"


def test_force_refuses_a_directory_s4op_micro_did_not_make(made, capsys):
    mine = made["root"] / "users_own"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    err = assert_clean_error(capsys, None, "train", "--dataset", "gunpoint", "--out", mine, "--force", *TINY,
                             match="replaces only directories s4op-micro made")
    assert (mine / "thesis.tex").read_text() == "precious" and "another --out" in err
    # a directory s4op-micro made is replaced
    code, _, err = run_cli(capsys, "train", "--dataset", "gunpoint", "--out", made["root"] / "again", *TINY)
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--dataset", "gunpoint", "--out", made["root"] / "again", "--force", *TINY)
    assert code == 0, err


@pytest.mark.parametrize("artifact,damage,argv,match", [
    ("qmodel.npz", b"PK\x03\x04 not a zip", lambda e: ["run", e, "--host"], "qmodel.npz is corrupt"),
    ("model.json", b"{not json", lambda e: ["build", e], "model.json is corrupt"),
    ("report.json", b"[]", lambda e: ["run", e, "--emulator", "qemu", "--limit", "1"], "report.json is corrupt"),
    ("model.pt", b"garbage", lambda e: ["run", e, "--host"], "corrupt or not a torch file"),
])
def test_corrupt_artifacts_name_the_file_and_the_fix(made, tmp_path, capsys, artifact, damage, argv, match):
    import shutil

    export = tmp_path / "e"
    shutil.copytree(made["export"], export)
    (export / artifact).write_bytes(damage)
    err = assert_clean_error(capsys, None, *argv(export), match=match)
    assert "export" in err or "train" in err    # the fix names the command that re-creates it


def test_opt_dash_o3_can_be_typed():
    args = build_parser().parse_args(_glue_dash_values(["build", "d", "--opt", "-O3"]))
    assert args.opt == "-O3"


def test_does_not_fit_suggests_8_bit_coefficients_only_at_16():
    with pytest.raises(UserError) as at16:
        check_fits("cortex-m0plus", 10 ** 7, 0, coeff_bits_used=16)
    with pytest.raises(UserError) as at8:
        check_fits("cortex-m0plus", 10 ** 7, 0, coeff_bits_used=8)
    assert "--coeff-bits 8" in str(at16.value) and "--coeff-bits" not in str(at8.value)


def test_flash_looks_for_the_probe_before_building_and_keeps_stdout_clean(made, tmp_path, capsys):
    import shutil

    export = tmp_path / "e"
    shutil.copytree(made["export"], export)
    code, out, err = run_cli(capsys, "flash", export, "--board", "nrf52840-dk", "--json")
    assert code == 2 and out == "" and "no debug probe found" in err and len(err.strip().splitlines()) == 1
    assert not (export / "build").exists()   # nothing built for a board that is not there


def test_an_unexpected_error_is_one_line_with_the_debug_hint(made, capsys, monkeypatch):
    from s4op_micro.cli import train as cli_train

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli_train, "checkpoint_info", boom)
    code, out, err = run_cli(capsys, "info", made["ckpt"])
    assert code == 1 and len(err.strip().splitlines()) == 1 and "S4OP_DEBUG=1" in err and "disk on fire" in err
    monkeypatch.setenv("S4OP_DEBUG", "1")
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_cli(capsys, "info", made["ckpt"])


def test_every_command_and_option_says_what_it_is():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    missing = []
    for name, p in sub.choices.items():
        if not p.description:
            missing.append(f"{name}: no description")
        missing += [f"{name} {a.option_strings or a.dest}: no help" for a in p._actions
                    if a.help is None and a.dest != "help"]
    assert not missing, missing


def test_no_progress_bar_off_a_terminal(made, capsys):
    code, _, err = run_cli(capsys, "train", "--dataset", "gunpoint", "--out", made["root"] / "bars",
                           "--epochs", "3", "--d-model", "4", "--d-state", "4", "--n-layers", "1")
    assert code == 0 and "\r" not in err and len(err.strip().splitlines()) <= 3, err


def test_sigterm_leaves_no_temporary_directory(tmp_path):
    out = tmp_path / "t"
    proc = subprocess.Popen([sys.executable, "-m", "s4op_micro", "train", "--dataset", "digits", "--epochs", "500",
                             "--out", str(out), "--quiet"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".t.*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert list(tmp_path.glob(".t.*")), "training never started writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err
    assert not out.exists() and not list(tmp_path.glob(".t*"))


# --- fuzz: every subcommand, out-of-range and wrong-typed values, odd paths, missing and corrupt files ----

BAD_VALUES = ["-1", "0", "-0.5", "1e309", "nan", "abc", "", "2.5", "-100", "99999999999999999999"]


def option_table():
    """{command: [(option, takes_value)]} from the real parser."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    table = {}
    for name, p in sub.choices.items():
        table[name] = [(a.option_strings[-1], a.nargs != 0) for a in p._actions
                       if a.option_strings and a.dest not in ("help", "json", "quiet")]
    return table


OPTIONS = option_table()


def positionals(command, m, odd_path):
    """Valid positionals (or an odd path in their place) so that the fuzzed option decides."""
    paths = {"export": m["ckpt"], "eval": m["ckpt"], "info": m["ckpt"], "prune": m["ckpt"], "finetune": m["ckpt"],
             "run": m["export"], "build": m["export"], "flash": m["export"], "import": m["ckpt"]}
    if command not in paths:
        return []
    return [odd_path if odd_path is not None else paths[command]]


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_every_subcommand_exits_0_or_2_without_traceback(made, capsys, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # relative odd paths ("-1") land in a scratch directory
    command = data.draw(st.sampled_from(sorted(OPTIONS)), label="command")
    odd = data.draw(st.sampled_from([None, None, "missing", "file", "dir", "corrupt"]), label="path")
    odd_path = {None: None, "missing": made["root"] / "nope.pt", "file": made["file"], "dir": made["root"],
                "corrupt": made["file"]}[odd]
    option, takes_value = data.draw(st.sampled_from(OPTIONS[command] or [("--help", False)]), label="option")
    value = data.draw(st.sampled_from(BAD_VALUES + [str(made["file"] / "x"), "/proc/x"]), label="value")
    argv = [command, *positionals(command, made, odd_path), option, *([value] if takes_value else [])]
    if command not in ("datasets", "boards") and "--out" not in argv and any(o == "--out" for o, _ in OPTIONS[command]):
        argv += ["--out", made["root"] / "fuzz_out"]
    if command in ("train", "pipeline", "fit") and "--dataset" not in argv and "--data" not in argv:
        argv += ["--dataset", "nope"]                  # an unknown dataset: refused before any work
    if command == "prune" and "--strategy" not in argv:
        argv += ["--strategy", "bogus"]
    if command == "run" and not {"--host", "--emulator", "--runtime"} & set(argv):
        argv += ["--runtime", "nope"]
    if command == "import" and "--format" not in argv:
        argv += ["--format", "nope"]
    if command == "profile" and not {"--port", "--log", "--emulator", "--lut"} & set(argv):
        argv += ["--log", made["root"] / "no.log"]
    before = sorted(p.name for p in made["root"].iterdir())
    code, out, err = run_cli(capsys, *argv)
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1 or code == 0, (argv, err)
    after = sorted(p.name for p in made["root"].iterdir())
    assert after == before or code == 0, (argv, set(after) ^ set(before))
    if code == 0 and (made["root"] / "fuzz_out").exists():
        import shutil
        shutil.rmtree(made["root"] / "fuzz_out")
    if "--json" in argv and code == 0:
        json.loads(out)


def test_fuzz_reached_every_subcommand():
    assert set(OPTIONS) >= {"train", "eval", "info", "datasets", "import", "prune", "export", "run", "finetune",
                            "boards", "build", "flash", "profile", "pipeline", "fit"}
    assert os.environ.get("CI") is None or True
