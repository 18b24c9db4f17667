/* s4op cost counter: start-up, overflow interrupt and unit conversion (see s4op_counter.h). */
#include "s4op_counter.h"

uint32_t s4op_counter_overhead;
uint64_t s4op_counter_origin;

#if defined(S4OP_COUNTER_SYSTICK)
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)

volatile uint32_t s4op_systick_wraps;

void SysTick_Handler(void);
void SysTick_Handler(void)
{
    s4op_systick_wraps++;
}

static void counter_start(void)
{
    SYST_CSR = 0u;
    SYST_RVR = 0xFFFFFFu;          /* full 24-bit range: one interrupt per 2^24 ticks */
    S4OP_SYST_CVR = 0u;            /* any write clears the current value */
    s4op_systick_wraps = 0u;
    SYST_CSR = 7u;                 /* CLKSOURCE = processor clock, TICKINT, ENABLE */
}

#elif defined(S4OP_COUNTER_DWT)
#define DEMCR (*(volatile uint32_t *)0xE000EDFCu)
#define DWT_CTRL (*(volatile uint32_t *)0xE0001000u)
#define DWT_LAR (*(volatile uint32_t *)0xE0001FB0u)

static void counter_start(void)
{
    DEMCR |= 1u << 24;             /* TRCENA: enable the DWT */
    DWT_LAR = 0xC5ACCE55u;         /* unlock (Cortex-M7 needs it; ignored elsewhere) */
    S4OP_DWT_CYCCNT = 0u;
    DWT_CTRL |= 1u;                /* CYCCNTENA */
}

#else
static void counter_start(void) {}
#endif

void s4op_counter_init(void)
{
    int i;
    uint32_t best = 0;
    counter_start();
    s4op_counter_overhead = 0u;
    s4op_counter_origin = s4op_counter_read();
    for (i = 0; i < 8; i++) {      /* smallest empty measurement = the reads' own cost */
        uint64_t t0 = s4op_counter_read();
        uint64_t t1 = s4op_counter_read();
        uint32_t d = (uint32_t)s4op_counter_elapsed(t0, t1);   /* overhead is still 0 here */
        if (i == 0 || d < best)
            best = d;
    }
    s4op_counter_overhead = best;
}
