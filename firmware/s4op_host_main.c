/* Host driver for `s4op-micro run --host`: reads int8 sequences from stdin and writes int8 scores to
 * stdout (binary). Input: int32 n, int32 length, int32 every_step, then n*length*S4OP_INPUT_DIM int8.
 * Output: per sequence the scores of every step (every_step != 0) or of the last step, then one line
 * on stderr with the debug saturation counters when built with -DS4OP_DEBUG. */
#include <stdio.h>
#include <stdlib.h>
#include "s4op_model.h"

int main(void)
{
    int32_t hdr[3];
    int8_t x[S4OP_INPUT_DIM], s[S4OP_NUM_CLASSES];
    int32_t i, t;
    if (fread(hdr, sizeof hdr, 1, stdin) != 1)
        return 1;
    for (i = 0; i < hdr[0]; ++i) {
        s4op_reset();
        for (t = 0; t < hdr[1]; ++t) {
            const int want = hdr[2] || t == hdr[1] - 1;
            if (fread(x, 1, sizeof x, stdin) != sizeof x)
                return 1;
            s4op_step(x, want ? s : NULL);
            if (want && fwrite(s, 1, sizeof s, stdout) != sizeof s)
                return 1;
        }
    }
#ifdef S4OP_DEBUG
    fprintf(stderr, "sat_state=%lu sat_act=%lu\n", (unsigned long)s4op_sat_state, (unsigned long)s4op_sat_act);
#endif
    return 0;
}
