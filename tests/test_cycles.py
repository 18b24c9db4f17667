"""Timing tables of s4op_micro.measure.cycles on sequences hand-counted from the Technical Reference
Manuals (Cortex-M4 DDI 0439 Table 3-1, Cortex-M3 DDI 0337 Table 18-1, Cortex-M0+ DDI 0484 Table 3-1),
and the llvm-mca pricing of M7/M55 blocks."""

import pytest

from s4op_micro.core.boards import get_board
from s4op_micro.measure import cycles


@pytest.mark.parametrize("core, seq, taken, expected", [
    # M4: LDR 2, a second LDR right behind it pipelines (N loads = N+1), ADD 1
    ("cortex-m4", ["ldr r0, [r1]", "ldr r2, [r1, #4]", "adds r0, r2"], None, (4, 5)),
    # M4: STR with an immediate offset is always 1; LDRD 3; PUSH of 4 registers 1+4
    ("cortex-m4", ["str r0, [r1, #4]"], None, (1, 1)),
    ("cortex-m4", ["ldrd r0, r1, [r2]"], None, (3, 3)),
    ("cortex-m4", ["push {r4, r5, r6, lr}"], None, (5, 5)),
    # M4: POP with pc = 1+N+P, N = 2 registers, P = 1..3
    ("cortex-m4", ["pop {r4, pc}"], None, (4, 6)),
    # M4 MAC loop: LDR post-indexed 2, SMLAD 1, SUBS 1, BNE taken 1+P / not taken 1
    ("cortex-m4", ["ldr.w r3, [r0], #4", "smlad r2, r3, r4, r2", "subs r1, #1", "bne.n 100"], True, (6, 8)),
    ("cortex-m4", ["ldr.w r3, [r0], #4", "smlad r2, r3, r4, r2", "subs r1, #1", "bne.n 100"], False, (5, 5)),
    ("cortex-m4", ["ldr.w r3, [r0], #4", "smlad r2, r3, r4, r2", "subs r1, #1", "bne.n 100"], None, (5, 8)),
    # M4: 64-bit multiplies and MLA single-cycle, SDIV 2..12, BL 1+P
    ("cortex-m4", ["smlal r0, r1, r2, r3", "umull r0, r1, r2, r3", "mla r0, r1, r2, r3"], None, (3, 3)),
    ("cortex-m4", ["sdiv r0, r1, r2"], None, (2, 12)),
    ("cortex-m4", ["bl 1234"], None, (2, 4)),
    # M4: IT folds (0) or not (1)
    ("cortex-m4", ["it eq", "moveq r0, r1"], None, (1, 2)),
    # M3: MLA 2, SMULL 3..5, SMLAL 4..7
    ("cortex-m3", ["mla r0, r1, r2, r3"], None, (2, 2)),
    ("cortex-m3", ["smull r0, r1, r2, r3", "smlal r0, r1, r2, r3"], None, (7, 12)),
    # M0+: LDR/STR 2 without pipelining, ADDS 1, MULS 1, BL 3, taken B 2, not taken 1, POP {.., pc} 3+N
    ("cortex-m0plus", ["ldr r0, [r1]", "ldr r2, [r1, #4]", "adds r0, r2"], None, (5, 5)),
    ("cortex-m0plus", ["muls r0, r1", "str r0, [r2, #4]"], None, (3, 3)),
    ("cortex-m0plus", ["bl 1234"], None, (3, 3)),
    ("cortex-m0plus", ["adds r0, #1", "bne.n 100"], True, (3, 3)),
    ("cortex-m0plus", ["adds r0, #1", "bne.n 100"], False, (2, 2)),
    ("cortex-m0plus", ["pop {r4, pc}"], None, (5, 5)),
])
def test_trm_worked_examples(core, seq, taken, expected):
    assert cycles.price(core, seq, taken=taken) == expected


def test_ranges_are_ordered_and_blocks_scale():
    seq = [("ldr", "r0, [r1]"), ("ldr", "r2, [r1, #4]"), ("mla", "r0, r2, r3, r0"), ("bne.n", "100")]
    for core in cycles.TABLE_CORES:
        lo, hi = cycles.price(core, seq)
        assert 0 < lo <= hi
        # 10 executions, the branch taken 7..9 times: between all-not-taken and all-taken
        blo, bhi = cycles.price_block(core, seq, 10, (7, 9))
        assert 10 * cycles.price(core, seq, taken=False)[0] <= blo <= bhi <= 10 * cycles.price(core, seq, taken=True)[1]


def test_branch_classification():
    assert cycles.is_branch("bl", "1234") and cycles.is_branch("pop", "{r4, pc}") and cycles.is_branch("bx", "lr")
    assert not cycles.is_branch("pop", "{r4, r5}") and not cycles.is_branch("ldr", "r0, [r1]")
    assert cycles.is_conditional_branch("bne.n", "100") and cycles.is_conditional_branch("cbz", "r3, 100")
    assert not cycles.is_conditional_branch("b.n", "100") and not cycles.is_conditional_branch("bl", "100")


@pytest.mark.parametrize("core", ["cortex-m7", "cortex-m55"])
def test_llvm_mca_blocks(core):
    assert cycles.llvm_mca(), "llvm-mca >= 17 (Debian llvm-19) is installed by scripts/setup.sh"
    blocks = {"loop": [("ldr.w", "r3, [r0], #4"), ("smlad", "r2, r3, r4, r2"), ("subs", "r1, #1"), ("bne.n", "d0a")],
              "call": [("push", "{r4, lr}"), ("bl", "c1c"), ("strb.w", "r0, [r8], #2"), ("pop", "{r4, pc}")]}
    res = cycles.mca_block_cycles(core, blocks)
    assert set(res) == {"loop", "call"}
    for lo, hi in res.values():
        assert 0 < lo <= hi < 50     # a call is priced as a branch, not llvm-mca's 100-cycle call


def test_sources_name_their_basis():
    for core in cycles.TABLE_CORES:
        assert "TRM" in cycles.table_source(core)
    assert "CPI" in cycles.cpi_source(get_board("cortex-m33"))
