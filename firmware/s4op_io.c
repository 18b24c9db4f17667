/* Output and exit for the s4op firmware: semihosting (QEMU / debugger), ITM (SWO), a user-supplied
 * s4op_putc, or stdout on the host. Integer formatting is done here so that no printf is linked. */
#include "s4op_board.h"

#if defined(S4OP_TARGET_HOST)
#include <stdio.h>
#include <stdlib.h>
#endif

#if defined(S4OP_OUT_SEMIHOST) && !defined(S4OP_TARGET_HOST)
/* ARM semihosting: `bkpt 0xAB` with the operation in r0 and its argument in r1. */
#define SYS_WRITE0 0x04
#define SYS_EXIT 0x18
#define SYS_EXIT_EXTENDED 0x20
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u

static int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ __volatile__("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

/* Characters are collected and sent one line per SYS_WRITE0 call (one trap per line). */
static char line_buf[128];
static unsigned line_len;

void s4op_flush(void)
{
    if (line_len) {
        line_buf[line_len] = '\0';
        semihost(SYS_WRITE0, line_buf);
        line_len = 0;
    }
}

__attribute__((weak)) void s4op_putc(char c)
{
    line_buf[line_len++] = c;
    if (c == '\n' || line_len == sizeof line_buf - 1)
        s4op_flush();
}

void s4op_exit(int code)
{
    uint32_t block[2];
    s4op_flush();
    block[0] = ADP_STOPPED_APPLICATION_EXIT;
    block[1] = (uint32_t)code;
    semihost(SYS_EXIT_EXTENDED, block);                  /* exit(code) ... */
    semihost(SYS_EXIT, (const void *)(uintptr_t)(code ? 0x20023u : ADP_STOPPED_APPLICATION_EXIT));
    for (;;) {                                           /* ... or 0/1 on old hosts */
    }
}

#elif defined(S4OP_TARGET_HOST)
void s4op_flush(void) { fflush(stdout); }
__attribute__((weak)) void s4op_putc(char c) { putchar(c); }
void s4op_exit(int code) { fflush(stdout); exit(code); }

#else /* a board without semihosting: ITM stimulus port 0, or the user's s4op_putc */
void s4op_flush(void) {}

#if defined(S4OP_OUT_ITM)
#define ITM_STIM0 (*(volatile uint32_t *)0xE0000000u)
#define ITM_TER (*(volatile uint32_t *)0xE0000E00u)
#define ITM_TCR (*(volatile uint32_t *)0xE0000E80u)
__attribute__((weak)) void s4op_putc(char c)
{
    if ((ITM_TCR & 1u) && (ITM_TER & 1u)) {   /* only when the debugger enabled tracing */
        while ((ITM_STIM0 & 1u) == 0u) {
        }
        *(volatile uint8_t *)0xE0000000u = (uint8_t)c;
    }
}
#endif /* S4OP_OUT_USER: s4op_putc comes from the user's code */

void s4op_exit(int code)
{
    (void)code;
    for (;;) {                                 /* nothing to return to: park */
        __asm__ __volatile__("wfi");
    }
}
#endif

void s4op_puts(const char *s)
{
    while (*s)
        s4op_putc(*s++);
}

void s4op_put_u64(uint64_t v)
{
    char buf[21];
    int n = 0;
    do {
        buf[n++] = (char)('0' + (int)(v % 10u));
        v /= 10u;
    } while (v);
    while (n)
        s4op_putc(buf[--n]);
}

void s4op_put_i32(int32_t v)
{
    if (v < 0) {
        s4op_putc('-');
        s4op_put_u64((uint64_t)(-(int64_t)v));
    } else {
        s4op_put_u64((uint64_t)v);
    }
}

void s4op_put_hex32(uint32_t v)
{
    int i;
    s4op_puts("0x");
    for (i = 28; i >= 0; i -= 4)
        s4op_putc("0123456789abcdef"[(v >> i) & 0xFu]);
}
