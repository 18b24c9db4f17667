"""What the profiler reads from a firmware ELF with binutils (the build uses -g): the DWARF line
table (address -> source file and line), the inlining chains (address -> the call sites of the
inlined functions it belongs to), the function symbols (address ranges) and the
disassembly (address -> mnemonic and operands, for pricing cycles). Text tools rather than an ELF
library: arm-none-eabi-objdump/nm are installed with the toolchain the firmware needs anyway."""

import bisect
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError


def _tool(name):
    path = shutil.which(f"arm-none-eabi-{name}")
    if not path:
        raise UserError(f"arm-none-eabi-{name} not found on PATH; install the Arm toolchain: "
                        "apt-get install --no-install-recommends gcc-arm-none-eabi")
    return path


def _run(*cmd):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True).stdout


_ROW = re.compile(r"^(\S+)\s+(\d+|-)\s+(0x[0-9a-f]+|0)(?:\s|$)")


class LineTable:
    """Address -> (file basename, line): the row at or below the address, within its sequence."""

    def __init__(self, rows):
        self.addrs = sorted(rows)
        self.rows = rows

    def __call__(self, addr):
        i = bisect.bisect_right(self.addrs, addr)
        return self.rows[self.addrs[i - 1]] if i else None


def line_table(elf, funcs=None):
    """LineTable from `objdump --dwarf=decodedline`. Where several rows
    share an address (inlining views), the last one wins: it is the innermost source position,
    as addr2line reports it. A sequence (one function's rows, up to its end row "-") counts only if
    it starts where a function symbol starts: --gc-sections leaves the rows of discarded functions
    in the table, relocated to address 0, on top of live code."""
    starts = {f.start for f in (funcs if funcs is not None else functions(elf))}
    rows, seq = {}, []
    for text in _run(_tool("objdump"), "--dwarf=decodedline", elf).splitlines():
        m = _ROW.match(text)
        if not m:
            continue
        addr = int(m.group(3), 16)
        if m.group(2) != "-":
            seq.append((addr, Path(m.group(1)).name, int(m.group(2))))
            continue
        if seq and seq[0][0] in starts:
            rows.update((a, (f, n)) for a, f, n in seq)
            rows.setdefault(addr, None)   # past the end of the sequence: no line
        seq = []
    return LineTable(rows)


_POS = re.compile(r"^(.*):(\d+)(?:\s|$)")


def inline_chains(elf, addrs):
    """{address: [(file basename, line), ...]} from `addr2line -a -i`: the address's own source
    position, then the call site of each function it is inlined into, innermost first (DWARF
    inlined-subroutine entries). Positions addr2line cannot name (??) are left out."""
    addrs = sorted(set(addrs))
    if not addrs:
        return {}
    proc = subprocess.run([_tool("addr2line"), "-a", "-i", "-e", str(elf)], input="".join(f"{a:#x}\n" for a in addrs),
                          capture_output=True, text=True, check=True)
    out, cur = {}, None
    for text in proc.stdout.splitlines():
        if text.startswith("0x"):
            cur = out.setdefault(int(text, 16), [])
            continue
        m = _POS.match(text)
        if m and cur is not None:
            cur.append((Path(m.group(1)).name, int(m.group(2))))
    return out


@dataclass(frozen=True)
class Function:
    name: str
    start: int
    end: int        # exclusive


def functions(elf):
    """Code symbols (nm types t/T/w/W with a size), sorted by address; Thumb bit cleared."""
    out = []
    for text in _run(_tool("nm"), "-S", "-n", "--defined-only", elf).splitlines():
        parts = text.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            start, size = int(parts[0], 16) & ~1, int(parts[1], 16)
            if size:
                out.append(Function(parts[3], start, start + size))
    return out


def function_at(funcs, addr):
    """The Function containing addr (funcs sorted by start), or None."""
    lo, hi = 0, len(funcs)
    while lo < hi:
        mid = (lo + hi) // 2
        if funcs[mid].start <= addr:
            lo = mid + 1
        else:
            hi = mid
    f = funcs[lo - 1] if lo else None
    return f if f and addr < f.end else None


_INSN = re.compile(r"^\s*([0-9a-f]+):\s+([a-z][\w.]*)(?:\s+(.*?))?\s*$")


def disassemble(elf):
    """{address: (mnemonic, operands)} of every instruction `objdump -d` decodes (comments after
    '@' or ';' and the '<symbol>' of branch targets dropped)."""
    insns = {}
    for text in _run(_tool("objdump"), "-d", "--no-show-raw-insn", elf).splitlines():
        text = text.split("\t@")[0].split("\t;")[0]
        m = _INSN.match(text.replace("\t", " "))
        if m and not m.group(2).startswith("."):
            ops = re.sub(r"\s*<[^>]*>", "", m.group(3) or "").strip()
            insns[int(m.group(1), 16)] = (m.group(2), ops)
    return insns
