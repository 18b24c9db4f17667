/* RP2040 second-stage bootloader (generic, 03h serial reads; works with any QSPI flash).
 * The boot ROM copies the first 256 bytes of flash to SRAM, checks their CRC32 and runs them:
 * configure the XIP SSI for plain 03h reads, then start the image whose vector table follows at
 * 0x10000100. Position independent (literals are PC-relative). The build pads this code to 252
 * bytes and appends the CRC32/MPEG-2 the boot ROM checks. Not exercised in CI (no RP2040). */
    .syntax unified
    .cpu cortex-m0plus
    .thumb
    .text
    .global s4op_boot2_entry
    .thumb_func
s4op_boot2_entry:
    ldr r3, =0x18000000          /* XIP_SSI */
    movs r1, #0
    str r1, [r3, #0x08]          /* SSIENR = 0 while configuring */
    movs r1, #4
    str r1, [r3, #0x14]          /* BAUDR: SCK = clk_sys / 4 */
    ldr r1, =((31 << 16) | (3 << 8))
    str r1, [r3, #0x00]          /* CTRLR0: 32-bit frames, TMOD = EEPROM read */
    movs r1, #0
    str r1, [r3, #0x04]          /* CTRLR1: NDF = 0 (one frame per XIP access) */
    ldr r1, =((0x03 << 24) | (2 << 8) | (6 << 2))
    ldr r2, =0x180000f4
    str r1, [r2]                 /* SPI_CTRLR0: command 03h, 8-bit instruction, 24-bit address */
    movs r1, #1
    str r1, [r3, #0x08]          /* SSIENR = 1 */
    ldr r0, =0x10000100          /* the image's vector table */
    ldr r1, =0xe000ed08
    str r0, [r1]                 /* VTOR */
    ldmia r0, {r0, r1}
    msr msp, r0
    bx r1
    .ltorg
