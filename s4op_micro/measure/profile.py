"""Measured per-phase profile of the generated C: where a firmware's s4op_step instructions go
(encoder; per layer norm, SSM update, readout, GELU, mixer, GLU, residual, requantization;
pooling; decoder), with MACs, instructions per MAC and cycles priced per core.

Method. A QEMU TCG plugin (firmware/qemu_plugin/s4op_insn_profile.c, built with the host gcc on
first use into ~/.cache/s4op-micro/, keyed by its source and the QEMU version) counts how often
each translated block runs while the benchmark firmware runs in QEMU as usual; one run gives the
block counts and the firmware's own instruction count (SysTick under -icount). Each executed
instruction address is mapped to a source line with the ELF's DWARF line table, and lines to
phases with comment markers in the generated sources.

Phase convention (kept by whoever writes the generated C):
- A comment `/* @phase NAME */` or `/* @phase NAME layer=I */` in a generated source file (the
  export's src/ and include/) starts a phase: every line below it, up to the next marker in the
  same file, belongs to it. Helpers that are inlined (requantization, saturation) carry their own
  source lines, so a marker above a helper's definition charges every inlined copy to its phase.
- Phase names used: encoder, norm, ssm (the state update), readout, gelu, mixer, glu, residual,
  requant, pool, decoder, other. `layer=I` splits a phase by layer (code generated per layer);
  without it the phase is summed over the layers (code that loops over them) and layer is None.
- Reserved names: `reset` and `api` mark model code that runs outside the measured step
  (s4op_reset and the coefficient expansion, s4op_classify, ...): counted in the harness bucket.
  `caller` marks code shared by several phases (dot products, load helpers): its instructions take
  the phase of the line they are inlined into (the call site from the DWARF inlining records,
  the innermost one with a phase of its own), or, when not inlined, the phase of the call site.
  Without inlining records (a macro, inline assembly copied into a function): the closest
  preceding instruction of the same function with a phase of its own.
- Lines of a model file above its first marker: phase "other". Lines of the firmware harness
  (firmware/*.c, *.h: start-up, bench_main, counter reads, output): "harness".
- Library code (libgcc's 64-bit and division helpers, newlib's memcpy, intrinsics headers) is
  charged to its caller: the plugin counts such blocks per context, the last harness or model
  block that ran before them (the call site).

The step total is the sum of the phases (harness, reset and api excluded); it is compared with the
firmware's own count of the same steps (`difference`): they differ by the few instructions of the
harness between the counter reads (argument set-up, call) and by counter artefacts (the SysTick
wrap interrupt is counted by the firmware inside the step it hits).

MACs per phase (multiplies of the int8 model, from qmodel.npz; the same counts as
export.cgen.cost_report): encoder H*C; per layer with M complex modes in K kept channels: ssm 5M
(4 for A x, 1 for the input 2^sh), readout 2M + K (Re(c x) per mode, D u per channel), mixer
2*H*K, glu H (a * sigmoid(b)), norm H (post-norm BatchNorm) or H + 3 n_out (LayerNorm: the squares,
then per output H q, (H q - S1) R and sign n); decoder NC*H once per
sequence (scores on the last step only). Requantization, GELU, residual and pooling have no MACs.
"""

import bisect
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.boards import get_board
from ..core.checks import emulated_board, resolve_board
from ..core.errors import UserError
from ..core.progress import quiet
from ..core.resources import firmware_dir
from ..quant.qmodel import load_qmodel
from ..toolchain import records
from ..toolchain.build import build, toolchain
from ..toolchain.qemu import APT_QEMU, run_qemu
from . import cycles as cyc
from . import elf as elfinfo

PHASE_ORDER = ["encoder", "norm", "ssm", "readout", "gelu", "mixer", "glu", "residual", "requant", "pool",
               "decoder", "other"]
OUTSIDE_STEP = {"reset", "api"}
CALLER, HARNESS, OTHER = "caller", "harness", "other"
MARKER = re.compile(r"/\*\s*@phase\s+([A-Za-z_][\w-]*)(?:\s+layer=(\d+))?\s*\*/")
PLUGIN_SOURCES = ("s4op_insn_profile.c", "s4op_qemu_plugin.h")


# ---------------------------------------------------------------------------------------------
# the plugin


def qemu_version():
    """(major, minor, patch) of qemu-system-arm."""
    exe = shutil.which("qemu-system-arm")
    if not exe:
        raise UserError(f"qemu-system-arm not found on PATH; install it: apt-get install {APT_QEMU}")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+)\.(\d+)\.?(\d*)", out)
    if not m:
        raise UserError(f"cannot read the QEMU version from {out.strip()[:80]!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def plugin_api_version(qemu):
    """The qemu_plugin_version to export: QEMU < 9 accepts 0..1 (7.2 refuses 2), QEMU >= 9 needs >= 2."""
    return 2 if qemu[0] >= 9 else 1


def cache_dir():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "s4op-micro"


def plugin_library():
    """Path of the built plugin, compiled with the host gcc the first time for this plugin source
    and this QEMU (cached under cache_dir()/qemu-plugin/<hash>/)."""
    src = firmware_dir() / "qemu_plugin"
    qemu = qemu_version()
    api = plugin_api_version(qemu)
    h = hashlib.sha256(f"qemu {qemu} api {api}".encode())
    for name in PLUGIN_SOURCES:
        h.update((src / name).read_bytes())
    out = cache_dir() / "qemu-plugin" / h.hexdigest()[:16] / "libs4op_insn_profile.so"
    if out.is_file():
        return out
    gcc = toolchain(host=True)["gcc"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{id(out)}.tmp")
    cmd = [gcc, "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-std=gnu99", "-Wall", "-Wextra", "-Werror",
           f"-DS4OP_QEMU_PLUGIN_VERSION={api}", f"-I{src}", str(src / PLUGIN_SOURCES[0]), "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"building the QEMU profiling plugin failed: {proc.stderr.strip()[:300]}")
    tmp.replace(out)   # atomic: a concurrent build writes the same file
    return out


@dataclass
class Block:
    id: int
    start: int
    addrs: list       # instruction addresses
    owned: bool


def parse_plugin_output(text):
    """({id: Block}, [(block id, context id or -1, executions)]) from the plugin's file."""
    lines = text.splitlines()
    if not lines or lines[0] != "S4OPPROF 1" or lines[-1] != "END":
        raise UserError("the QEMU profiling plugin wrote no complete profile (did QEMU exit normally?)")
    blocks, counts = {}, []
    for line in lines[1:-1]:
        parts = line.split()
        if parts[0] == "B":
            addrs = [int(a, 16) for a in parts[5].split(",")] if len(parts) > 5 else []
            blocks[int(parts[1])] = Block(int(parts[1]), int(parts[2], 16), addrs, parts[4] == "1")
        elif parts[0] == "C":
            counts.append((int(parts[1]), int(parts[2]), int(parts[3])))
    return blocks, counts


# ---------------------------------------------------------------------------------------------
# phases of source lines and of addresses


def source_phases(text):
    """[(phase, layer)] per line of a generated source (index 0 = line 1): the nearest marker above
    the line, or (other, None)."""
    out, cur = [], (OTHER, None)
    for line in text.splitlines():
        m = MARKER.search(line)
        if m:
            cur = (m.group(1), int(m.group(2)) if m.group(2) is not None else None)
        out.append(cur)
    return out


class PhaseMap:
    """Phase of each code address of a firmware ELF, following the convention above."""

    def __init__(self, elf, model_sources):
        self.funcs = elfinfo.functions(elf)
        self.lines = elfinfo.line_table(elf, self.funcs)
        self.insns = elfinfo.disassemble(elf)
        self.markers = {Path(p).name: source_phases(Path(p).read_text()) for p in model_sources}
        self.harness = {p.name for p in firmware_dir().iterdir() if p.suffix in (".c", ".h", ".S")}
        self._addrs = sorted(self.insns)
        self._cache = {}
        # the call sites of the instructions without a phase of their own (GCC may place an inlined
        # kernel far from its call, e.g. the mixer's dot products right after the SSM loop)
        self.chains = elfinfo.inline_chains(elf, [a for a in self._addrs if self.direct(a) is None])

    def direct(self, addr):
        """(phase, layer) from the address's own line; None for library/header lines and `caller`."""
        row = self.lines(addr)
        return None if row is None else self.at_line(*row)

    def at_line(self, name, line):
        """(phase, layer) of a source line; None for library/header lines and `caller`."""
        if name in self.markers:
            table = self.markers[name]
            ph = table[line - 1] if 0 < line <= len(table) else (OTHER, None)
            return None if ph[0] == CALLER else ph
        return (HARNESS, None) if name in self.harness else None

    def is_own_file(self, addr):
        row = self.lines(addr)
        return row is not None and (row[0] in self.markers or row[0] in self.harness)

    def phase(self, addr):
        """(phase, layer) of an instruction of harness or model code; lines without a phase of their
        own (caller-marked, inlined intrinsics) take their innermost call site's that has one, else
        the closest one before them in the function (after them when none is before)."""
        if addr in self._cache:
            return self._cache[addr]
        ph = self.direct(addr)
        for site in self.chains.get(addr, [])[1:] if ph is None else ():
            ph = self.at_line(*site)
            if ph is not None:
                break
        if ph is None:
            f = elfinfo.function_at(self.funcs, addr)
            lo, hi = (f.start, f.end) if f else (addr, addr + 1)
            i = bisect.bisect_left(self._addrs, addr)
            before = (a for a in reversed(self._addrs[:i]) if a >= lo)
            after = (a for a in self._addrs[i + 1:] if a < hi)
            for a in (*before, *after):
                ph = self.direct(a)
                if ph is not None:
                    break
            else:
                ph = (OTHER, None)
        self._cache[addr] = ph
        return ph

    def owned_ranges(self):
        """Address ranges the plugin counts directly: functions of the model and the harness whose
        entry has a phase of its own. Everything else (library code, out-of-line `caller` helpers)
        is counted per calling context."""
        out = []
        for f in self.funcs:
            if self.is_own_file(f.start) and self.direct(f.start) is not None:
                out.append((f.start, f.end))
        return out


# ---------------------------------------------------------------------------------------------
# MACs


def phase_macs(q, steps, sequences):
    """{(phase, layer): MACs over the run} from a QuantizedModel (see the module docstring), with
    a (phase, None) entry summing each per-layer phase over the layers."""
    H, C, NC = q.meta.d_model, q.meta.d_input, q.meta.n_classes
    macs = defaultdict(int)
    macs[("encoder", None)] = H * C * steps
    macs[("decoder", None)] = NC * H * sequences
    for i, L in enumerate(q.layers):
        M, K = L.ssm.n_modes, L.ssm.n_kept
        post = L.post is not None and not q.meta.prenorm
        ln = L.layer_norm
        norm = H if post else (H + 3 * len(ln.channels)) if ln is not None else 0
        per = {"ssm": 5 * M, "readout": 2 * M + K, "mixer": 2 * H * K, "glu": H, "norm": norm}
        for ph, n in per.items():
            macs[(ph, i)] += n * steps
            macs[(ph, None)] += n * steps
    return dict(macs)


# ---------------------------------------------------------------------------------------------
# the profile


@dataclass
class PhaseRow:
    phase: str
    layer: int                # None: summed over the layers
    instructions: int         # over the whole run
    share: float              # of the step total
    macs: int
    instructions_per_mac: float
    cycles_low: float
    cycles_high: float


@dataclass
class PhaseProfile:
    board: str
    cpu: str
    rows: list                         # PhaseRow, in PHASE_ORDER
    steps: int                         # s4op_step calls measured
    sequences: int
    step_instructions: int             # sum of the rows
    firmware_instructions: int         # the firmware's own count of the same steps
    difference: int                    # step_instructions - firmware_instructions
    harness_instructions: int          # outside the step: start-up, harness, reset, output
    outside: dict                      # {"harness": n, "reset": n, "api": n}
    cycles_low: float
    cycles_high: float
    cycles_source: str
    branch_method: str
    elf: str = ""
    plugin: str = ""
    notes: list = field(default_factory=list)

    @property
    def per_step(self):
        return self.step_instructions / self.steps if self.steps else 0.0

    def to_dict(self):
        d = asdict(self)
        d.update(instructions_per_step=self.per_step,
                 firmware_instructions_per_step=self.firmware_instructions / self.steps if self.steps else 0.0,
                 difference_per_step=self.difference / self.steps if self.steps else 0.0,
                 cycles_per_step=[self.cycles_low / self.steps, self.cycles_high / self.steps] if self.steps else None)
        return d


def _taken_ranges(blocks, counts_by_block, insns):
    """{block id: (low, high)} executions in which its final conditional branch was taken.
    Fall-through = the block starting right after it; when no other instruction branches there,
    that block's count is exactly the fall-through count (taken = count - fall-through); else the
    fall-through count is only bounded by it (taken in [count - min(count, next), count])."""
    targets = set()
    for mn, ops in insns.values():
        if cyc.is_branch(mn, ops):
            m = re.search(r"([0-9a-f]+)$", ops or "")
            if m and cyc._BRANCH.match(cyc.base(mn)):
                targets.add(int(m.group(1), 16))
    addrs = sorted(insns)
    nxt = {a: b for a, b in zip(addrs, addrs[1:])}
    by_start = defaultdict(int)
    for b in blocks.values():
        by_start[b.start] += counts_by_block.get(b.id, 0)
    out = {}
    for b in blocks.values():
        if not b.addrs or b.addrs[-1] not in insns or not cyc.is_conditional_branch(*insns[b.addrs[-1]]):
            continue
        n = counts_by_block.get(b.id, 0)
        after = nxt.get(b.addrs[-1])
        fall = min(n, by_start.get(after, 0))
        out[b.id] = (n - fall, n - fall) if after not in targets else (n - fall, n)
    return out


def profile_elf(elf, board, model_sources, qmodel=None, timeout=120.0):
    """Run a built benchmark firmware in QEMU with the plugin and return its PhaseProfile.
    model_sources: the generated .c/.h files (with their @phase markers) the ELF was built from."""
    board = get_board(board)
    pm = PhaseMap(elf, model_sources)
    plugin = plugin_library()
    with tempfile.TemporaryDirectory() as tmp:
        owned, out = Path(tmp) / "owned.txt", Path(tmp) / "blocks.txt"
        owned.write_text("".join(f"{lo:x} {hi:x}\n" for lo, hi in pm.owned_ranges()))
        run = run_qemu(elf, board, timeout=timeout, plugin=f"{plugin},out={out},owned={owned}")
        blocks, counts = parse_plugin_output(out.read_text())
    summary = records.summarize(run.lines)
    if summary["unit"] != "insn":
        raise UserError(f"the firmware counts {summary['unit']}, not emulated instructions; build it for an emulated core")

    # executions of each block, charged to a phase: own blocks per instruction, others by context
    execs = defaultdict(int)                       # block id -> executions (all contexts)
    charged = defaultdict(int)                     # (block id, phase key or None) -> executions
    for bid, ctx, n in counts:
        execs[bid] += n
        b = blocks[bid]
        if b.owned:
            charged[(bid, None)] += n
        else:
            key = pm.phase(blocks[ctx].addrs[-1]) if ctx >= 0 else (HARNESS, None)
            charged[(bid, key)] += n

    core = board.cpu
    insns = pm.insns
    taken = _taken_ranges(blocks, execs, insns)
    mca = {}
    if core in cyc.MCA_CPUS and cyc.llvm_mca():
        mca = cyc.mca_block_cycles(core, {b.id: [insns[a] for a in b.addrs if a in insns]
                                          for b in blocks.values() if execs.get(b.id)})
    cpi = cyc.core_cpi(board)[0]
    instr = defaultdict(int)
    cyc_lo, cyc_hi = defaultdict(float), defaultdict(float)
    unpriced = 0
    for (bid, key), n in charged.items():
        b = blocks[bid]
        keys = [key or pm.phase(a) for a in b.addrs]
        seq = [insns.get(a, ("nop", "")) for a in b.addrs]
        for k in keys:
            instr[k] += n
        share = n / execs[bid]
        if core in cyc.TABLE_CORES:
            t = taken.get(bid, (0, 0))
            lo, hi = cyc.price_block(core, seq, n, (t[0] * share, t[1] * share))
        elif bid in mca:
            lo, hi = mca[bid][0] * n, mca[bid][1] * n
        else:
            lo = hi = cpi * len(b.addrs) * n
            unpriced += len(b.addrs) * n
        for k in keys:        # a block's cycles spread over its instructions' phases
            cyc_lo[k] += lo / len(keys)
            cyc_hi[k] += hi / len(keys)

    steps, seqs = summary["steps"], summary["n_sequences"]
    macs = phase_macs(qmodel, steps, seqs) if qmodel is not None else {}
    step_keys = [k for k in instr if k[0] not in OUTSIDE_STEP and k[0] != HARNESS]
    total = sum(instr[k] for k in step_keys)
    order = {p: i for i, p in enumerate(PHASE_ORDER)}
    rows = []
    for k in sorted(step_keys, key=lambda k: (order.get(k[0], len(order)), k[0], -1 if k[1] is None else k[1])):
        m = macs.get(k, 0)
        rows.append(PhaseRow(phase=k[0], layer=k[1], instructions=instr[k], share=instr[k] / total if total else 0.0,
                             macs=m, instructions_per_mac=instr[k] / m if m else None,
                             cycles_low=cyc_lo[k], cycles_high=cyc_hi[k]))
    outside = {p: sum(v for k, v in instr.items() if k[0] == p) for p in (HARNESS, *sorted(OUTSIDE_STEP))}

    if core in cyc.TABLE_CORES:
        source = cyc.table_source(core)
    elif mca:
        source = (f"llvm-mca ({Path(cyc.llvm_mca()).name}) -mcpu={core} scheduling model per executed block: low = "
                  "steady-state cycles per pass, high = one isolated pass; branch mispredictions not modelled")
        if unpriced:
            source += f"; {unpriced} instructions in blocks llvm-mc could not assemble priced at CPI {cpi:g}"
    else:
        source = cyc.cpi_source(board) + " (no per-instruction model for this core here)"
    return PhaseProfile(
        board=board.name, cpu=core, rows=rows, steps=steps, sequences=seqs, step_instructions=total,
        firmware_instructions=summary["cost_total"], difference=total - summary["cost_total"],
        harness_instructions=sum(outside.values()), outside=outside,
        cycles_low=sum(r.cycles_low for r in rows), cycles_high=sum(r.cycles_high for r in rows),
        cycles_source=source,
        branch_method=("conditional branches: taken count = executions - fall-through, fall-through = executions "
                       "of the block at the next address (exact when nothing else branches there, else a range)"),
        elf=str(elf), plugin=str(plugin),
        notes=[] if any(r.layer is not None for r in rows) else
        ["the generated C loops over the layers: per-layer phases are summed over the layers (layer=None)"])


def profile_export(export_dir, board=None, out_dir=None, timeout=120.0):
    """Build an export directory for an emulated board with the benchmark main and its embedded
    test vectors (toolchain.build), run it in QEMU with the profiling plugin and return the
    PhaseProfile of its s4op_step calls. board: default DIR/model.json's board."""
    export_dir = Path(export_dir)
    board = emulated_board(resolve_board(board, export_dir), "profile it in QEMU")
    out = Path(out_dir) if out_dir else export_dir / "build" / f"{board.name}-profile"
    with quiet():
        res = build(export_dir, board, out_dir=out)
    sources = sorted((export_dir / "src").glob("*.[ch]")) + sorted((export_dir / "include").glob("*.h"))
    qmodel = load_qmodel(export_dir) if (export_dir / "qmodel.npz").is_file() else None
    return profile_elf(res.elf, board, sources, qmodel=qmodel, timeout=timeout)
