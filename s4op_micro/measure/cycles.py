"""Cycles priced per core from an executed-instruction profile, as a (low, high) range.

QEMU counts instructions, not cycles. Instead of instructions x one CPI, each executed instruction
is priced by its mnemonic and form from the core's published timing:

- Cortex-M4: Cortex-M4 TRM (Arm DDI 0439) section 3.3.1, Table 3-1. Data processing, MUL/MLA/MLS,
  the 32x32->64 multiplies (SMULL, SMLAL, UMULL, UMLAL, UMAAL) and the DSP MACs 1; SDIV/UDIV 2-12;
  LDR/LDRB/LDRH/LDRSB/LDRSH/STR.. 2, but "neighbouring load and store single instructions can
  pipeline": N in a row cost N+1 (low bound) instead of 2N (high bound: each one stalled);
  STR with an immediate offset 1; LDRD/STRD 3 (1+N, N=2); LDM/STM/PUSH/POP 1+N; branches taken
  1+P with P (pipeline refill) 1-3, not-taken conditional branches 1; IT 0-1 (folded onto a
  preceding 16-bit instruction or not).
- Cortex-M3: Cortex-M3 TRM (Arm DDI 0337) Table 18-1: as the M4 but MLA/MLS 2, SMULL/UMULL 3-5,
  SMLAL/UMLAL 4-7 (early termination depends on the operands); no DSP extension.
- Cortex-M0+: Cortex-M0+ TRM (Arm DDI 0484) Table 3-1 (2-stage pipeline, no load pipelining):
  data processing 1, LDR/STR (all forms) 2, LDM/STM/PUSH/POP 1+N, POP {..pc} 3+N, taken
  branches 2, not taken 1, BL 3, BX/BLX 2, MULS 1 (the fast multiplier), ISB/DSB/DMB 3.
Zero-wait-state memory is assumed (no flash wait states, no bus contention), as the TRMs do.

Cortex-M7 and M55 have no published per-instruction table (dual issue); their blocks are priced
with llvm-mca's scheduling models (LLVM >= 17; Debian's llvm-19) in `mca_block_cycles`, and where
no such llvm-mca exists the board's CPI figure (boards.CORE_CPI) is used and labelled as such.
Every caller reports a `cycles_source` string saying which of these made the figure.
"""

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..core.boards import core_cpi
from ..core.errors import UserError

TABLE_CORES = ("cortex-m0", "cortex-m0plus", "cortex-m3", "cortex-m4")
MCA_CPUS = {"cortex-m7": ("thumbv7em-none-eabihf", "cortex-m7"),
            "cortex-m55": ("thumbv8.1m.main-none-eabihf", "cortex-m55")}
P_RANGE = (1, 3)        # M3/M4 pipeline refill after a taken branch (TRM: "P ... 1 to 3 cycles")

TRM_SOURCE = {
    "cortex-m0": "Cortex-M0 timing as the M0+ table (Cortex-M0+ TRM DDI 0484 Table 3-1) with taken branches 3",
    "cortex-m0plus": "Cortex-M0+ TRM (DDI 0484) Table 3-1 per-instruction timings",
    "cortex-m3": "Cortex-M3 TRM (DDI 0337) Table 18-1 per-instruction timings",
    "cortex-m4": "Cortex-M4 TRM (DDI 0439) Table 3-1 per-instruction timings",
}

_CONDS = "eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le"
_BRANCH = re.compile(rf"^(b|bl|blx|bx|cbz|cbnz|tbb|tbh)({_CONDS})?(\.[nw])?$")
_LOAD_STORE = re.compile(rf"^(ldr|str)(b|h|sb|sh|d|ex|exb|exh)?({_CONDS})?(\.[nw])?$")
_MULTI = re.compile(rf"^(ldm|stm|push|pop|vpush|vpop|vldm|vstm)(ia|db|fd|ea)?({_CONDS})?(\.[nw])?$")


def base(mnemonic):
    """Mnemonic without the .n/.w width qualifier."""
    return mnemonic.split(".")[0]


def is_branch(mnemonic, operands=""):
    """True for an instruction that may change the PC: B/BL/BX/CBZ/TBB, POP/LDM with pc, LDR pc,
    and data processing that writes the pc."""
    m = base(mnemonic)
    if _BRANCH.match(m):
        return True
    regs = _reglist(operands)
    if _MULTI.match(m) and "pc" in regs:
        return True
    return bool(operands) and operands.split(",")[0].strip() == "pc"


def is_conditional_branch(mnemonic, operands=""):
    m = base(mnemonic)
    b = _BRANCH.match(m)
    if b:
        return b.group(1) in ("cbz", "cbnz") or b.group(2) is not None
    return is_branch(mnemonic, operands) and bool(re.search(rf"({_CONDS})$", m))


def _reglist(operands):
    m = re.search(r"\{([^}]*)\}", operands or "")
    if not m:
        return []
    regs = []
    for part in m.group(1).split(","):
        part = part.strip()
        r = re.match(r"^([a-z]+)(\d+)-[a-z]+(\d+)$", part)
        regs += [f"{r.group(1)}{k}" for k in range(int(r.group(2)), int(r.group(3)) + 1)] if r else [part]
    return regs


def _taken_cost(core, mnemonic):
    """(low, high) cycles of a taken branch."""
    m = base(mnemonic)
    if core in ("cortex-m0", "cortex-m0plus"):
        refill = 3 if core == "cortex-m0" else 2
        return (refill + 1, refill + 1) if m.startswith("bl") and not m.startswith("blx") else (refill, refill)
    return 1 + P_RANGE[0], 1 + P_RANGE[1]


def insn_cycles(core, mnemonic, operands="", taken=True, pipelined=False):
    """(low, high) cycles of one execution of one instruction on a TRM-tabled core.

    taken: for a conditional branch, whether it was taken. pipelined: the instruction is a single
    load/store right after another one (M3/M4 may overlap them: 1 cycle instead of 2)."""
    m = base(mnemonic)
    m0 = core in ("cortex-m0", "cortex-m0plus")
    ops = operands or ""
    if is_branch(mnemonic, ops):
        multi = _MULTI.match(m)
        if multi:                                          # POP {..., pc}
            n = len(_reglist(ops))
            if m0:
                return 3 + n, 3 + n
            return 1 + n + P_RANGE[0], 1 + n + P_RANGE[1]
        if is_conditional_branch(mnemonic, ops) and not taken:
            return 1, 1
        if _LOAD_STORE.match(m):                           # LDR pc, [...]
            return (4, 4) if m0 else (2 + P_RANGE[0], 2 + P_RANGE[1])
        return _taken_cost(core, mnemonic)
    if m == "it" or re.match(r"^it[te]{1,3}$", m):
        return (0, 1) if not m0 else (1, 1)
    mm = _MULTI.match(m)
    if mm:
        n = len(_reglist(ops))
        return 1 + n, 1 + n
    ls = _LOAD_STORE.match(m)
    if ls:
        if m0:
            return 2, 2
        if ls.group(2) == "d":                             # LDRD/STRD: 1 + N, N = 2
            return 3, 3
        if ls.group(2) in ("ex", "exb", "exh"):
            return 2, 2
        if ls.group(1) == "str" and "]" in ops and not ops.rstrip().endswith("!") \
                and not re.search(r"\[[^\]]*,\s*[a-z]", ops):   # STR Rt, [Rn, #imm]: always 1
            return 1, 1
        return (1, 2) if pipelined else (2, 2)
    if m in ("sdiv", "udiv"):
        return 2, 12
    if m in ("isb", "dsb", "dmb"):
        return (3, 3) if m0 else (1 + 1, 1 + 3)
    if core == "cortex-m3":
        if m in ("mla", "mls"):
            return 2, 2
        if m in ("smull", "umull"):
            return 3, 5
        if m in ("smlal", "umlal"):
            return 4, 7
    if m0 and m in ("mrs", "msr"):
        return (3, 3) if m == "mrs" else (3, 3)
    if ops.split(",")[0].strip() == "pc":                 # ADD pc, ... (already a branch above)
        return _taken_cost(core, mnemonic)
    return 1, 1                                           # data processing, MUL, MACs, SSAT, ...


def price(core, insns, taken=None):
    """(low, high) cycles of one pass through a straight-line sequence on a TRM-tabled core.

    insns: [(mnemonic, operands)] or assembler lines ("ldr r0, [r1]"). taken: whether the final
    conditional branch is taken (None: both, the range covers either). Back-to-back single loads
    and stores pipeline on M3/M4: the low bound takes every overlap, the high bound none."""
    pairs = [tuple((s.split(None, 1) + [""])[:2]) if isinstance(s, str) else s for s in insns]
    lo = hi = 0
    prev_ls = False
    for k, (mn, ops) in enumerate(pairs):
        last = k == len(pairs) - 1
        single_ls = bool(_LOAD_STORE.match(base(mn))) and base(mn)[3:4] != "d" and not is_branch(mn, ops)
        if last and taken is None and is_conditional_branch(mn, ops):
            a = insn_cycles(core, mn, ops, taken=False)
            b = insn_cycles(core, mn, ops, taken=True)
            c = (min(a[0], b[0]), max(a[1], b[1]))
        else:
            c = insn_cycles(core, mn, ops, taken=True if taken is None else (taken if last else True),
                            pipelined=prev_ls and single_ls)
        lo, hi = lo + c[0], hi + c[1]
        prev_ls = single_ls
    return lo, hi


def price_block(core, insns, executions, taken_range=(0, 0)):
    """(low, high) total cycles of a block executed `executions` times, whose final conditional
    branch (if any) was taken between taken_range[0] and taken_range[1] of those times."""
    if not executions:
        return 0, 0
    cond = bool(insns) and is_conditional_branch(*insns[-1])
    if not cond:
        lo, hi = price(core, insns)
        return lo * executions, hi * executions
    t_lo, t_hi = price(core, insns, taken=True)
    n_lo, n_hi = price(core, insns, taken=False)
    k_lo, k_hi = taken_range
    return (k_lo * t_lo + (executions - k_lo) * n_lo, k_hi * t_hi + (executions - k_hi) * n_hi)


# ---------------------------------------------------------------------------------------------
# llvm-mca (M7, M55)


def llvm_mca():
    """Path of an llvm-mca >= 17 (scheduling models for cortex-m7 and cortex-m55; 14 crashes on
    Thumb-2 write-back forms), or None."""
    for v in (21, 20, 19, 18, 17):
        path = shutil.which(f"llvm-mca-{v}")
        if path:
            return path
    path = shutil.which("llvm-mca")
    if path:
        out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"LLVM version (\d+)", out)
        if m and int(m.group(1)) >= 17:
            return path
    return None


def _mca_line(mnemonic, operands):
    """An objdump instruction as llvm-mc input: branch targets become a label, BL/BLX become B
    (llvm-mca charges a call 100 cycles; the call's own cost is that of a taken branch), and the
    .w/.n width qualifier is dropped (llvm-mca 14 and 19 both crash on the .w write-back forms,
    e.g. `ldr.w r3, [r2], #4`; the assembler picks the same encoding and the models time the opcode)."""
    mnemonic = base(mnemonic)
    b = _BRANCH.match(mnemonic)
    if b and b.group(1) in ("bl", "blx"):
        return "bx lr" if not re.match(r"^[0-9a-f]+$", operands or "") else "b 9f"
    if b and re.match(r"^(r\d+, )?[0-9a-f]+$", operands or ""):
        operands = re.sub(r"[0-9a-f]+$", "9f", operands)
    return f"{mnemonic} {operands}".strip()


def mca_block_cycles(core, blocks, iterations=100):
    """{block key: (low, high)} cycles of one execution of each block, from llvm-mca's model of
    `core`: low = steady-state cycles per pass when the block repeats (overlapped with itself),
    high = cycles of one isolated pass (pipeline filled and drained). Not modelled: branch
    mispredictions; IT instructions (no scheduling data: skipped, as the M7 folds them). Lines
    llvm-mc cannot take (a block that starts inside an IT block) are skipped; a block left with
    nothing is missing from the answer (the caller prices it by CPI). blocks: {key: [(mnemonic, operands)]}."""
    triple, cpu = MCA_CPUS[core]
    mca = llvm_mca()
    keys = list(blocks)
    src = [".syntax unified", ".thumb"]
    for k, key in enumerate(keys):
        src += [f"# LLVM-MCA-BEGIN b{k}", *(_mca_line(*i) for i in blocks[key]), f"# LLVM-MCA-END b{k}"]
    src.append("9:")

    def run(iters):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "blocks.s"
            path.write_text("\n".join(src) + "\n")
            proc = subprocess.run([mca, f"-mtriple={triple}", f"-mcpu={cpu}", f"-iterations={iters}",
                                   "-skip-unsupported-instructions=any", "-summary-view", "-instruction-info=false",
                                   "-resource-pressure=false", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"llvm-mca failed on the firmware's blocks: {proc.stderr.strip()[-300:]}")
        found = re.findall(r"Code Region - b(\d+)\s+Iterations:\s+\d+\s+Instructions:\s+\d+\s+Total Cycles:\s+(\d+)",
                           proc.stdout)
        return {int(k): int(c) for k, c in found}

    single, many = run(1), run(iterations)
    return {keys[k]: (many[k] / iterations, float(single[k])) for k in single if k in many}


def table_source(core):
    """cycles_source of a TRM-priced profile."""
    if core in ("cortex-m0", "cortex-m0plus"):
        how = "taken branches 2 (BL 3, M0: 3), not taken 1, loads/stores 2 (no pipelining)"
    else:
        how = (f"taken branches 1+P with P={P_RANGE[0]}-{P_RANGE[1]}, not taken 1, back-to-back loads/stores "
               "pipelined all (low) or none (high)")
    return (f"{TRM_SOURCE[core]}, priced per executed instruction of the QEMU block profile; {how}; "
            "zero wait states")


def cpi_source(board):
    cpi, basis = core_cpi(board)
    return f"instructions x CPI {cpi:g} for {board.cpu} ({basis})"
