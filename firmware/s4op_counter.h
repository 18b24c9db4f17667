/* s4op cost counter: what one measured call costs, in the unit S4OP_COUNTER_UNIT.
 *
 *   S4OP_COUNTER_DWT      real ARMv7-M/ARMv8-M Mainline board: DWT CYCCNT, core clock cycles.
 *   S4OP_COUNTER_SYSTICK  SysTick on the processor clock, its 24 bits extended to 64 by an overflow
 *                         interrupt. On an ARMv6-M board (no DWT) that is core cycles. In QEMU (no
 *                         DWT) under `-icount shift=S` it advances exactly r = f_systick*2^S/1e9
 *                         ticks per emulated instruction; the build picks S so that 2 <= r < 4 and
 *                         sets S4OP_TICK_NUM/S4OP_TICK_DEN = 1/r. Every read is converted on its
 *                         own, relative to a reference read taken at init: round((t - t_ref)/r)
 *                         is then exactly the number of instructions since t_ref, because the
 *                         tick quantization (< 1 tick) is < 1/2 instruction when r >= 2. So
 *                         differences are exact instruction counts (unit "insn").
 *   S4OP_COUNTER_NONE     host builds: always 0, unit "none".
 *
 * Usage:  t0 = s4op_counter_read(); f(); t1 = s4op_counter_read();
 *         cost += s4op_counter_elapsed(t0, t1);     (in units, minus the reads' own cost)
 * The reads carry compiler barriers so that f() is not moved across them. The SysTick overflow
 * interrupt (one per 2^24 ticks, a few million instructions) is counted in the region it hits.
 */
#ifndef S4OP_COUNTER_H
#define S4OP_COUNTER_H

#include <stdint.h>

#define S4OP_BARRIER() __asm__ __volatile__("" ::: "memory")

#ifndef S4OP_TICK_NUM          /* units = round(ticks * NUM / DEN) */
#define S4OP_TICK_NUM 1u
#endif
#ifndef S4OP_TICK_DEN
#define S4OP_TICK_DEN 1u
#endif

#if defined(S4OP_UNIT_INSN)
#define S4OP_COUNTER_UNIT "insn"
#elif defined(S4OP_COUNTER_DWT) || defined(S4OP_COUNTER_SYSTICK)
#define S4OP_COUNTER_UNIT "cycle"
#else
#define S4OP_COUNTER_UNIT "none"
#endif

void s4op_counter_init(void);          /* start the counter and measure the reads' overhead */
extern uint32_t s4op_counter_overhead;  /* units of an empty region (read; read) */
extern uint64_t s4op_counter_origin;    /* the reference read t_ref */

#if defined(S4OP_COUNTER_SYSTICK)
#define S4OP_SYST_CVR (*(volatile uint32_t *)0xE000E018u)
extern volatile uint32_t s4op_systick_wraps;   /* incremented by SysTick_Handler */

static inline uint64_t s4op_counter_read(void)
{
    uint32_t w, v;
    S4OP_BARRIER();
    do {                     /* retry if the counter wrapped between the two reads */
        w = s4op_systick_wraps;
        v = S4OP_SYST_CVR;
    } while (w != s4op_systick_wraps);
    S4OP_BARRIER();
    return ((uint64_t)w << 24) + (0xFFFFFFu - v);   /* SysTick counts down from 0xFFFFFF */
}
#elif defined(S4OP_COUNTER_DWT)
#define S4OP_DWT_CYCCNT (*(volatile uint32_t *)0xE0001004u)
static inline uint64_t s4op_counter_read(void)
{
    uint32_t v;
    S4OP_BARRIER();
    v = S4OP_DWT_CYCCNT;
    S4OP_BARRIER();
    return v;
}
#else
static inline uint64_t s4op_counter_read(void)
{
    S4OP_BARRIER();
    return 0;
}
#endif

/* Counter ticks -> units (instructions or cycles), rounded. */
static inline uint64_t s4op_counter_to_units(uint64_t ticks)
{
    return (ticks * S4OP_TICK_NUM + S4OP_TICK_DEN / 2u) / S4OP_TICK_DEN;
}

/* Raw ticks between two reads (the 32-bit DWT counter wraps: difference modulo 2^32). */
static inline uint64_t s4op_counter_ticks(uint64_t t0, uint64_t t1)
{
#if defined(S4OP_COUNTER_DWT)
    return (uint32_t)((uint32_t)t1 - (uint32_t)t0);
#else
    return t1 - t0;
#endif
}

/* Units between two reads, minus the reads' own cost. Each read is converted on its own (see
 * above), so in QEMU both ends are exact instruction counts and so is the difference. */
static inline uint64_t s4op_counter_elapsed(uint64_t t0, uint64_t t1)
{
#if defined(S4OP_COUNTER_DWT)
    uint64_t d = s4op_counter_ticks(t0, t1);
#else
    uint64_t d = s4op_counter_to_units(t1 - s4op_counter_origin) - s4op_counter_to_units(t0 - s4op_counter_origin);
#endif
    return d > s4op_counter_overhead ? d - s4op_counter_overhead : 0u;
}

#endif
