"""What the benchmark firmware prints, one record per line (see firmware/bench_main.c), and the
report made of it. The same parser reads QEMU's output, a board's serial port and a saved log:

    S4OP seq i=<i> label=<y> pred=<argmax> steps=<L> cost=<cost> scores=<s0>,<s1>,...
    S4OP layer i=<layer> cost=<cost>                                    (-DS4OP_PROFILE_LAYERS)
    S4OP summary n=<n> correct=<k> steps=<steps> cost=<total> unit=<insn|cycle|none> clock=<hz>
    S4OP fault pc=0x... lr=0x... xpsr=0x... cfsr=0x... hfsr=0x... mmfar=0x... bfar=0x...

Costs are emulated instructions ("insn", QEMU -icount + SysTick), board core cycles ("cycle", DWT
CYCCNT or SysTick on ARMv6-M) or nothing ("none", host builds).
"""

import re
import shutil
import subprocess
from dataclasses import dataclass

from ..core.errors import UserError


class FirmwareTimeout(UserError):
    """The firmware did not finish (or the board did not answer) in time."""


class FirmwareFault(UserError):
    """The firmware took a fault; `registers` holds the printed fault registers."""

    def __init__(self, message, registers=None):
        super().__init__(message)
        self.registers = registers or {}


@dataclass
class RunResult:
    exit_code: int
    lines: list          # parsed S4OP records (dicts)
    raw: str             # everything the firmware (and QEMU) printed
    seconds: float = 0.0


RECORD_FIELDS = {
    "seq": ("i", "label", "pred", "steps", "cost", "scores"),
    "layer": ("i", "cost"),
    "summary": ("n", "correct", "steps", "cost", "unit", "clock"),
    "fault": ("pc", "lr", "xpsr", "cfsr", "hfsr", "mmfar", "bfar"),
}


_INT = re.compile(r"^(-?[0-9]+|0x[0-9a-fA-F]+)$")


_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _parse_value(key, v):
    if key == "scores":
        parts = v.split(",")
        if not all(_INT.match(p) for p in parts):
            raise ValueError(f"scores={v!r} is not a comma-separated integer list")
        return [int(p, 0) for p in parts]
    if _INT.match(v):
        return int(v, 0)
    if _WORD.match(v):
        return v
    raise ValueError(f"{key}={v!r} is not an integer")


def parse_records(text):
    """S4OP records from firmware output (other text is ignored). Malformed record -> UserError."""
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        tokens = line.strip().split()
        if not tokens or tokens[0] != "S4OP":
            continue
        try:
            if len(tokens) < 3:
                raise ValueError("no fields")
            kind, rec = tokens[1], {}
            if not _WORD.match(kind):
                raise ValueError(f"bad record kind {kind!r}")
            for tok in tokens[2:]:
                key, sep, value = tok.partition("=")
                if not sep or not _WORD.match(key) or not value:
                    raise ValueError(f"{tok!r} is not key=value")
                rec[key] = _parse_value(key, value)
            missing = [k for k in RECORD_FIELDS.get(kind, ()) if k not in rec]
            if missing:
                raise ValueError(f"'{kind}' record lacks {', '.join(missing)}")
            if kind == "summary" and not isinstance(rec["unit"], str):
                raise ValueError("unit is not a word")
            if kind != "summary" and any(isinstance(v, str) for v in rec.values()):
                raise ValueError("non-integer value")
        except ValueError as e:
            raise UserError(f"malformed S4OP record on line {n} ({e}): {line.strip()[:100]!r}; "
                            "rebuild the firmware with this s4op-micro, or check the log for corruption") from None
        records.append({"kind": kind, "line": n, **rec})
    return records


_CFSR_BITS = {0: "IACCVIOL", 1: "DACCVIOL", 3: "MUNSTKERR", 4: "MSTKERR", 5: "MLSPERR", 7: "MMARVALID",
              8: "IBUSERR", 9: "PRECISERR", 10: "IMPRECISERR", 11: "UNSTKERR", 12: "STKERR", 13: "LSPERR",
              15: "BFARVALID", 16: "UNDEFINSTR", 17: "INVSTATE", 18: "INVPC", 19: "NOCP", 20: "STKOF",
              24: "UNALIGNED", 25: "DIVBYZERO"}


_HFSR_BITS = {1: "VECTTBL", 30: "FORCED", 31: "DEBUGEVT"}


def _bits(value, names):
    return "|".join(n for b, n in names.items() if value >> b & 1)


def fault_error(rec, where="", elf=None):
    """FirmwareFault for a fault record: registers, decoded CFSR/HFSR, and the faulting function."""
    regs = {k: rec[k] for k in RECORD_FIELDS["fault"]}
    parts = []
    for k, v in regs.items():
        decoded = _bits(v, _CFSR_BITS) if k == "cfsr" else _bits(v, _HFSR_BITS) if k == "hfsr" else ""
        parts.append(f"{k}={v:#010x}" + (f"({decoded})" if decoded else ""))
    loc = ""
    addr2line = shutil.which("arm-none-eabi-addr2line")
    if elf and addr2line:
        out = subprocess.run([addr2line, "-f", "-s", "-e", str(elf), hex(regs["pc"] & ~1)],
                             capture_output=True, text=True).stdout.split()
        if len(out) >= 2 and out[0] != "??":
            loc = f" in {out[0]} ({out[1]})"
    hint = ("undefined instruction: firmware built for another core?" if regs["cfsr"] >> 16 & 1 else
            "bad memory access: check pointers and the linker map" if regs["cfsr"] & 0x3FF else
            "see the Cortex-M fault status registers")
    return FirmwareFault(f"firmware fault{where}{loc}: {' '.join(parts)}; {hint}", regs)


def summarize(records):
    """Report of one benchmark run: accuracy, cost per step and unit, per-layer costs, scores.

    Uses the last complete run in the records (a board reset mid-stream starts over at i=0)."""
    for r in records:
        if r["kind"] == "fault":
            raise fault_error(r)
    last = max((k for k, r in enumerate(records) if r["kind"] == "summary"), default=None)
    if last is None:
        nseq = sum(r["kind"] == "seq" for r in records)
        raise UserError(f"no S4OP summary line: the firmware did not finish ({nseq} sequence lines read); "
                        "check that the whole output was captured")
    start = 0
    for k in range(last - 1, -1, -1):
        r = records[k]
        if r["kind"] == "summary" or (r["kind"] == "seq" and r["i"] == 0):
            start = k + (r["kind"] == "summary")
            break
    run, summ = records[start:last], records[last]
    seqs = [r for r in run if r["kind"] == "seq"]
    layers = sorted((r for r in run if r["kind"] == "layer"), key=lambda r: r["i"])
    if len(seqs) != summ["n"]:
        raise UserError(f"summary says n={summ['n']} but {len(seqs)} sequence lines were read "
                        "(lost output?); capture the run again")
    steps, unit, clock = summ["steps"], summ["unit"], summ["clock"]
    cps = summ["cost"] / steps if steps else 0.0
    correct = sum(r["pred"] == r["label"] for r in seqs)
    return {
        "n_sequences": len(seqs),
        "correct": correct,
        "accuracy": correct / len(seqs) if seqs else 0.0,
        "steps": steps,
        "cost_total": summ["cost"],
        "cost_per_step": cps,
        "unit": unit,
        "clock_hz": clock,
        "us_per_step": (cps / clock * 1e6) if unit == "cycle" and clock else None,
        "layer_costs": [r["cost"] for r in layers],
        "layer_cost_per_step": [r["cost"] / steps if steps else 0.0 for r in layers],
        "seq_costs": [r["cost"] for r in seqs],
        "preds": [r["pred"] for r in seqs],
        "labels": [r["label"] for r in seqs],
        "scores": [r["scores"] for r in seqs],
    }
