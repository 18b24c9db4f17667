"""The board table: compiler flags, features, memory budget and map, clock, and how to run or flash.

Two kinds of entries:
- generic cores (`cortex-m3`, ...): the QEMU machine that emulates the core (memory map read from
  QEMU 7.2's `info mtree -f`), so `--board cortex-m7` builds firmware that boots in QEMU. Their
  flash/RAM *budget* is that of a realistic part named in the description (the map is QEMU's).
- named boards (`nucleo-h743zi`, ...): the real part's figures and map, a pyocd target for
  flashing, no QEMU machine (their map differs from any emulated one).

`s4op-micro boards [--json]` prints the table (s4op_micro.cli.boards).
"""

from dataclasses import asdict, dataclass
from fractions import Fraction
import math

from .errors import UserError

KB = 1024
MB = 1024 * 1024


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    cpu: str                      # -mcpu
    arch_flags: tuple             # -mthumb, -mfpu, -mfloat-abi
    dsp: bool                     # ARMv7E-M / ARMv8-M Mainline DSP extension (SIMD32 intrinsics)
    mve: bool                     # Helium (ARMv8.1-M MVE)
    flash_bytes: int              # budget the build is checked against
    ram_bytes: int
    clock_hz: int                 # core clock (nominal for generic cores)
    flash_origin: int             # memory map the linker script uses
    flash_size: int
    ram_origin: int
    ram_size: int
    fpu: str = "none"             # "none" | "sp" | "dp" (for the table)
    qemu_machine: str = None      # -M, None when no QEMU machine emulates this board
    qemu_cpu: str = None          # -cpu
    systick_hz: int = None        # QEMU: SysTick processor-clock frequency of that machine
    pyocd_target: str = None      # -t for pyocd; None for emulator-only entries
    pyocd_pack: str = None        # part to `pyocd pack install` when the target is not built in
    stack_bytes: int = 4 * KB     # stack reserved at the top of RAM (counted in bss)
    boot2: bool = False           # RP2040: 256-byte second-stage bootloader at the start of flash
    notes: str = ""

    # --- derived ---------------------------------------------------------------------------
    @property
    def kind(self):
        return "core" if self.pyocd_target is None else "board"

    @property
    def emulated(self):
        return self.qemu_machine is not None

    @property
    def armv6m(self):
        """ARMv6-M (M0/M0+): no DWT cycle counter, no ITM, no CFSR."""
        return self.cpu in ("cortex-m0", "cortex-m0plus", "cortex-m1")

    @property
    def icount_shift(self):
        """QEMU `-icount shift=S`: one instruction lasts 2^S ns of virtual time, so SysTick (at
        systick_hz) advances r = systick_hz * 2^S / 1e9 ticks per instruction. S is the smallest
        with r >= 2: then rounding ticks / r gives the exact instruction count at every read."""
        if not self.systick_hz:
            return None
        return max(0, math.ceil(math.log2(2e9 / self.systick_hz)))

    def ticks_per_insn(self, shift=None):
        """SysTick ticks per emulated instruction under -icount shift=S (exact fraction)."""
        s = self.icount_shift if shift is None else shift
        return Fraction(self.systick_hz * 2 ** s, 10 ** 9)

    def to_dict(self):
        d = asdict(self)
        d["arch_flags"] = list(self.arch_flags)
        d.update(kind=self.kind, emulated=self.emulated, icount_shift=self.icount_shift,
                 cpi=CORE_CPI.get(self.cpu, (None,))[0])
        for k in ("flash_origin", "ram_origin"):
            d[k] = hex(d[k])
        return d


def _core(name, desc, cpu, flags, dsp, mve, fpu, budget, clock, fmap, rmap, machine, qcpu, systick):
    return Board(name=name, description=desc, cpu=cpu, arch_flags=tuple(flags), dsp=dsp, mve=mve,
                 fpu=fpu, flash_bytes=budget[0], ram_bytes=budget[1], clock_hz=clock,
                 flash_origin=fmap[0], flash_size=fmap[1], ram_origin=rmap[0], ram_size=rmap[1],
                 qemu_machine=machine, qemu_cpu=qcpu, systick_hz=systick)


M0P = ["-mthumb", "-mfloat-abi=soft"]
M3 = ["-mthumb", "-mfloat-abi=soft"]
M4F = ["-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"]
M7SP = ["-mthumb", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard"]
M7DP = ["-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard"]
M33F = ["-mthumb", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard"]
M55 = ["-mthumb", "-mfpu=auto", "-mfloat-abi=hard"]   # auto: FPv5-D16 + MVE-F (Helium)

BOARDS = {b.name: b for b in [
    # --- generic cores: QEMU 7.2 machines; budgets of the part named in the description -------
    _core("cortex-m0plus",
          "Cortex-M0+ (ARMv6-M); QEMU microbit (nRF51, a Cortex-M0: same ISA); budget of a SAMD21E17 (128 KB flash, 16 KB RAM, 48 MHz)",
          "cortex-m0plus", M0P, False, False, "none", (128 * KB, 16 * KB), 48_000_000,
          (0x00000000, 256 * KB), (0x20000000, 16 * KB), "microbit", "cortex-m0", 16_000_000),
    _core("cortex-m3",
          "Cortex-M3 (ARMv7-M); QEMU mps2-an385; budget of an STM32F103RE (512 KB flash, 64 KB RAM, 72 MHz)",
          "cortex-m3", M3, False, False, "none", (512 * KB, 64 * KB), 72_000_000,
          (0x00000000, 4 * MB), (0x20000000, 4 * MB), "mps2-an385", "cortex-m3", 25_000_000),
    _core("cortex-m4",
          "Cortex-M4F (ARMv7E-M, DSP, SP FPU); QEMU mps2-an386; budget of an STM32F411RE (512 KB flash, 128 KB RAM, 100 MHz)",
          "cortex-m4", M4F, True, False, "sp", (512 * KB, 128 * KB), 100_000_000,
          (0x00000000, 4 * MB), (0x20000000, 4 * MB), "mps2-an386", "cortex-m4", 25_000_000),
    _core("cortex-m7",
          "Cortex-M7 (ARMv7E-M, DSP, DP FPU); QEMU mps2-an500; budget of an STM32F767ZI (2 MB flash, 512 KB RAM, 216 MHz)",
          "cortex-m7", M7DP, True, False, "dp", (2 * MB, 512 * KB), 216_000_000,
          (0x00000000, 4 * MB), (0x20000000, 4 * MB), "mps2-an500", "cortex-m7", 25_000_000),
    _core("cortex-m33",
          "Cortex-M33 (ARMv8-M Mainline, DSP, SP FPU); QEMU mps2-an505 (secure); budget of an STM32L552ZE (512 KB flash, 256 KB RAM, 110 MHz)",
          "cortex-m33", M33F, True, False, "sp", (512 * KB, 256 * KB), 110_000_000,
          (0x10000000, 4 * MB), (0x38000000, 4 * MB), "mps2-an505", "cortex-m33", 20_000_000),
    _core("cortex-m55",
          "Cortex-M55 (ARMv8.1-M, DSP, Helium MVE, DP FPU); QEMU mps3-an547 (code in ITCM, data in DTCM); budget of an Alif Ensemble E1 M55-HE (256 KB ITCM, 256 KB DTCM, 160 MHz)",
          "cortex-m55", M55, True, True, "dp", (256 * KB, 256 * KB), 160_000_000,
          (0x10000000, 512 * KB), (0x30000000, 512 * KB), "mps3-an547", "cortex-m55", 32_000_000),

    # --- named boards: real parts (flash with pyocd; no QEMU machine) ------------------------
    Board("nucleo-h743zi", "ST NUCLEO-H743ZI2: STM32H743ZI, Cortex-M7 480 MHz, 2 MB flash, 1 MB RAM (512 KB AXI SRAM used)",
          "cortex-m7", tuple(M7DP), True, False, 2 * MB, 512 * KB, 480_000_000,
          0x08000000, 2 * MB, 0x24000000, 512 * KB, fpu="dp", pyocd_target="stm32h743xx",
          notes="DTCM (128 KB at 0x20000000) and SRAM1-4 left unused; SWO/ITM output or override s4op_putc for the ST-LINK VCP UART"),
    Board("stm32f746g-disco", "ST 32F746GDISCOVERY: STM32F746NG, Cortex-M7 216 MHz, 1 MB flash, 320 KB RAM",
          "cortex-m7", tuple(M7SP), True, False, 1 * MB, 320 * KB, 216_000_000,
          0x08000000, 1 * MB, 0x20000000, 320 * KB, fpu="sp", pyocd_target="stm32f746nghx",
          pyocd_pack="stm32f746ng"),
    Board("nucleo-l476rg", "ST NUCLEO-L476RG: STM32L476RG, Cortex-M4F 80 MHz, 1 MB flash, 128 KB RAM (96 KB SRAM1 used)",
          "cortex-m4", tuple(M4F), True, False, 1 * MB, 96 * KB, 80_000_000,
          0x08000000, 1 * MB, 0x20000000, 96 * KB, fpu="sp", pyocd_target="stm32l476rgtx",
          pyocd_pack="stm32l476rg", notes="SRAM2 (32 KB at 0x10000000) left unused"),
    Board("nrf52840-dk", "Nordic nRF52840-DK: nRF52840, Cortex-M4F 64 MHz, 1 MB flash, 256 KB RAM",
          "cortex-m4", tuple(M4F), True, False, 1 * MB, 256 * KB, 64_000_000,
          0x00000000, 1 * MB, 0x20000000, 256 * KB, fpu="sp", pyocd_target="nrf52840"),
    Board("microbit-v2", "BBC micro:bit v2: nRF52833, Cortex-M4F 64 MHz, 512 KB flash, 128 KB RAM",
          "cortex-m4", tuple(M4F), True, False, 512 * KB, 128 * KB, 64_000_000,
          0x00000000, 512 * KB, 0x20000000, 128 * KB, fpu="sp", pyocd_target="nrf52833"),
    Board("rp2040-pico", "Raspberry Pi Pico: RP2040, Cortex-M0+ 125 MHz, 2 MB QSPI flash (XIP), 264 KB SRAM",
          "cortex-m0plus", tuple(M0P), False, False, 2 * MB, 256 * KB, 125_000_000,
          0x10000000, 2 * MB, 0x20000000, 256 * KB, pyocd_target="rp2040", boot2=True,
          notes="boot2 (generic 03h XIP) at 0x10000000; cycles from SysTick (no DWT on M0+); clocks left at the ROSC boot default; output by semihosting unless s4op_putc is overridden"),
]}


# Cycles per instruction assumed when an emulator instruction count is turned into a cycle estimate
# (QEMU is not cycle-accurate). Rough figures for this kind of code (int8/int16 loops with 64-bit
# requantization; ~25% loads/stores, ~10% taken branches), zero-wait-state memory:
#  - M0+/M3/M4 from the instruction timings of their Technical Reference Manuals: data processing 1
#    cycle; single loads 2 (M3/M4: back-to-back loads pipelined to 1); taken branches 1+P, P = 1..3
#    (M0+: 2-stage pipeline, taken B 2, BL 3); MUL 1 (M0+ with the fast multiplier); 32x32->64
#    SMULL/SMLAL 3..5 cycles on M3 (Cortex-M3 TRM DDI0337, Table 18.1) and 1 on M4 (Cortex-M4 TRM
#    DDI0439, section 3.3.1).
#  - M7, M33, M55 (same Thumb-2 code, so about the same instruction count as the M4): the M4 figure
#    scaled by Arm's published CoreMark/MHz, M4 3.42 : M7 5.01 : M33 4.02 : M55 4.2 (Arm Cortex-M
#    processor comparison pages), i.e. cpi = 1.30 * 3.42 / CoreMark/MHz.
# Real cycles come from the DWT counter on a board (`s4op-micro profile --port`).
CORE_CPI = {
    "cortex-m0": (1.35, "Cortex-M0 TRM: 3-stage pipeline, loads 2, taken branches 3"),
    "cortex-m0plus": (1.35, "Cortex-M0+ TRM (DDI0484): loads/stores 2, taken branches 2 (BL 3), MULS 1"),
    "cortex-m3": (1.40, "Cortex-M3 TRM (DDI0337) Table 18.1: loads 2 (pipelined 1), taken branches 1+P, SMULL 3-5"),
    "cortex-m4": (1.30, "Cortex-M4 TRM (DDI0439) 3.3.1: as M3 but single-cycle SMULL/SMLAL/SMLAD"),
    "cortex-m7": (0.89, "M4's 1.30 x CoreMark/MHz 3.42/5.01 (dual-issue 6-stage pipeline)"),
    "cortex-m33": (1.11, "M4's 1.30 x CoreMark/MHz 3.42/4.02"),
    "cortex-m55": (1.06, "M4's 1.30 x CoreMark/MHz 3.42/4.2 (scalar code; no MVE in these kernels)"),
}


def core_cpi(board):
    """(cycles per instruction, basis) assumed for the board's core."""
    board = get_board(board)
    if board.cpu not in CORE_CPI:
        raise UserError(f"no cycles-per-instruction figure for cpu {board.cpu!r} (boards.CORE_CPI)")
    return CORE_CPI[board.cpu]


def get_board(name):
    """The Board called `name` (a Board passes through); UserError listing the known names."""
    if isinstance(name, Board):
        return name
    try:
        return BOARDS[name]
    except KeyError:
        raise UserError(f"unknown board {name!r}; known boards: {', '.join(BOARDS)} "
                        "(see `s4op-micro boards`)") from None
