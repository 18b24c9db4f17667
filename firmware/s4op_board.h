/* s4op board support: output, exit and build configuration shared by the firmware files.
 *
 * Configuration macros (set by `s4op_micro.firmware.build`, one of each group):
 *   output:  S4OP_OUT_SEMIHOST (QEMU, or a board under a debugger), S4OP_OUT_ITM (SWO stimulus
 *            port 0), S4OP_OUT_USER (you link a strong `void s4op_putc(char)`, e.g. for a UART),
 *            S4OP_TARGET_HOST (stdout of a native build).
 *   counter: S4OP_COUNTER_SYSTICK, S4OP_COUNTER_DWT, S4OP_COUNTER_NONE (see s4op_counter.h).
 *   S4OP_CLOCK_HZ: the core clock printed in the summary line.
 */
#ifndef S4OP_BOARD_H
#define S4OP_BOARD_H

#include <stdint.h>

#ifndef S4OP_CLOCK_HZ
#define S4OP_CLOCK_HZ 0
#endif

/* Exit code of a firmware that took a fault (QEMU's exit code via semihosting). */
#define S4OP_FAULT_EXIT 3

/* One character out. Weak: define your own `s4op_putc` to retarget the output (UART, RTT...). */
void s4op_putc(char c);
void s4op_puts(const char *s);
void s4op_put_u64(uint64_t v);
void s4op_put_i32(int32_t v);
void s4op_put_hex32(uint32_t v);      /* "0x" and 8 hex digits */
void s4op_flush(void);

/* End the program: QEMU exits with `code` (semihosting); a board without a debugger parks. */
void s4op_exit(int code);

#endif
