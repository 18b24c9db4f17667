/* s4op start-up for Cortex-M: vector table, Reset_Handler (.data copy, .bss zeroing, FPU enable),
 * and fault handlers that print one machine-readable line and exit with S4OP_FAULT_EXIT:
 *   S4OP fault pc=0x... lr=0x... xpsr=0x... cfsr=0x... hfsr=0x... mmfar=0x... bfar=0x...
 * Symbols from the linker script (s4op_sections.ld): _sidata _sdata _edata _sbss _ebss _estack. */
#include <stdint.h>
#include "s4op_board.h"

extern uint32_t _sidata[], _sdata[], _edata[], _sbss[], _ebss[], _estack[];
int main(void);
void Reset_Handler(void);
void s4op_fault_entry(void);
void s4op_fault_report(const uint32_t *frame) __attribute__((noreturn, used));
void s4op_board_init(void);

/* Interrupt handlers the firmware may provide (s4op_counter.c has SysTick_Handler). */
void SysTick_Handler(void) __attribute__((weak, alias("s4op_fault_entry")));
void PendSV_Handler(void) __attribute__((weak, alias("s4op_fault_entry")));
void SVC_Handler(void) __attribute__((weak, alias("s4op_fault_entry")));

#define SCB_REG(off) (*(volatile uint32_t *)(0xE000ED00u + (off)))
#if __ARM_ARCH_ISA_THUMB >= 2    /* ARMv7-M / ARMv8-M Mainline have the fault status registers */
#define HAS_FAULT_STATUS 1
#endif

/* Board hook run before main (clocks, pins, UART...). Weak: override it in your own code. */
__attribute__((weak)) void s4op_board_init(void) {}

void Reset_Handler(void)
{
    uint32_t *src, *dst;
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    SCB_REG(0x88) |= 0xFu << 20;   /* CPACR: full access to CP10/CP11 (FPU, MVE), first thing */
    __asm__ __volatile__("dsb\n\tisb" ::: "memory");
#endif
#ifdef HAS_FAULT_STATUS
    SCB_REG(0x24) |= 7u << 16;     /* SHCSR: MemManage, BusFault, UsageFault get their own handler */
#endif
    for (src = _sidata, dst = _sdata; dst < _edata;)
        *dst++ = *src++;
    for (dst = _sbss; dst < _ebss;)
        *dst++ = 0u;
    s4op_board_init();
    s4op_exit(main());
}

/* All faults and unexpected exceptions: find the stacked frame (MSP or PSP per EXC_RETURN bit 2)
 * and pass it to s4op_fault_report. Thumb-1 only, so it also runs on ARMv6-M. */
__attribute__((naked)) void s4op_fault_entry(void)
{
    __asm__ __volatile__(
        "movs r0, #4\n\t"
        "mov r1, lr\n\t"
        "tst r0, r1\n\t"
        "beq 1f\n\t"
        "mrs r0, psp\n\t"
        "b 2f\n"
        "1:\n\t"
        "mrs r0, msp\n"
        "2:\n\t"
        "bl s4op_fault_report\n\t");
}

void s4op_fault_report(const uint32_t *frame)
{
    /* frame: r0 r1 r2 r3 r12 lr pc xpsr */
    uint32_t cfsr = 0, hfsr = 0, mmfar = 0, bfar = 0;
#ifdef HAS_FAULT_STATUS
    cfsr = SCB_REG(0x28);
    hfsr = SCB_REG(0x2C);
    mmfar = SCB_REG(0x34);
    bfar = SCB_REG(0x38);
#endif
    s4op_puts("\nS4OP fault pc=");
    s4op_put_hex32(frame[6]);
    s4op_puts(" lr=");
    s4op_put_hex32(frame[5]);
    s4op_puts(" xpsr=");
    s4op_put_hex32(frame[7]);
    s4op_puts(" cfsr=");
    s4op_put_hex32(cfsr);
    s4op_puts(" hfsr=");
    s4op_put_hex32(hfsr);
    s4op_puts(" mmfar=");
    s4op_put_hex32(mmfar);
    s4op_puts(" bfar=");
    s4op_put_hex32(bfar);
    s4op_puts("\n");
    s4op_exit(S4OP_FAULT_EXIT);
    for (;;) {
    }
}

/* The vector table: initial stack pointer, then the system exception handlers. */
typedef union {
    void (*handler)(void);
    void *sp;
} s4op_vector_t;

__attribute__((section(".isr_vector"), used)) const s4op_vector_t s4op_vectors[16] = {
    {.sp = _estack},
    {Reset_Handler},
    {s4op_fault_entry}, /* NMI */
    {s4op_fault_entry}, /* HardFault */
    {s4op_fault_entry}, /* MemManage */
    {s4op_fault_entry}, /* BusFault */
    {s4op_fault_entry}, /* UsageFault */
    {s4op_fault_entry}, /* SecureFault (ARMv8-M) */
    {0},
    {0},
    {0},
    {SVC_Handler},
    {s4op_fault_entry}, /* DebugMonitor */
    {0},
    {PendSV_Handler},
    {SysTick_Handler},
};
