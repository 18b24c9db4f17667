/* s4op benchmark main: streams every test sequence through the model one timestep at a time
 * (s4op_reset, then s4op_step per timestep, scores requested on the last one), measures each
 * s4op_step with the cost counter and prints, one record per line (the parser's contract):
 *   S4OP seq i=<i> label=<y> pred=<argmax> steps=<L> cost=<cost of the L steps> scores=<s0>,<s1>,...
 *   S4OP layer i=<layer> cost=<total>                  (only with -DS4OP_PROFILE_LAYERS)
 *   S4OP summary n=<n> correct=<k> steps=<total steps> cost=<total> unit=<insn|cycle|none> clock=<hz>
 */
#include <stddef.h>
#include <stdint.h>
#include "s4op_model.h"
#include "s4op_testdata.h"
#include "s4op_board.h"
#include "s4op_counter.h"

#ifdef S4OP_PROFILE_LAYERS
/* Called by the model around each layer (phase 0 start, 1 end); costs accumulate per layer. */
void s4op_profile_layer(int layer, int phase);
/* Raw ticks are summed (cheap inside the measured step) and converted once at the end. */
static uint64_t layer_ticks[S4OP_NUM_LAYERS];
static uint64_t layer_start[S4OP_NUM_LAYERS];

void s4op_profile_layer(int layer, int phase)
{
    uint64_t t = s4op_counter_read();
    if (layer < 0 || layer >= S4OP_NUM_LAYERS)
        return;
    if (phase == 0)
        layer_start[layer] = t;
    else
        layer_ticks[layer] += s4op_counter_ticks(layer_start[layer], t);
}
#endif

/* Index of the largest score; ties go to the lowest index. */
static int argmax(const int8_t *s, int n)
{
    int i, best = 0;
    for (i = 1; i < n; i++)
        if (s[i] > s[best])
            best = i;
    return best;
}

static void put_kv(const char *key, uint64_t v)
{
    s4op_putc(' ');
    s4op_puts(key);
    s4op_putc('=');
    s4op_put_u64(v);
}

int main(void)
{
    static int8_t scores[S4OP_NUM_CLASSES];
    uint64_t total_cost = 0, total_steps = 0;
    int i, t, c, correct = 0;

    s4op_counter_init();
    for (i = 0; i < s4op_test_n; i++) {
        const int8_t *x = s4op_test_x + (size_t)i * (size_t)s4op_test_len * S4OP_INPUT_DIM;
        uint64_t cost = 0;
        int pred;
        for (c = 0; c < S4OP_NUM_CLASSES; c++)
            scores[c] = 0;
        s4op_reset();
        for (t = 0; t < s4op_test_len; t++) {
            int8_t *out = (t == s4op_test_len - 1) ? scores : NULL;
            uint64_t t0 = s4op_counter_read();
            s4op_step(x + (size_t)t * S4OP_INPUT_DIM, out);
            uint64_t t1 = s4op_counter_read();
            cost += s4op_counter_elapsed(t0, t1);
        }
        pred = argmax(scores, S4OP_NUM_CLASSES);
        correct += (pred == (int)s4op_test_label[i]);
        total_cost += cost;
        total_steps += (uint64_t)s4op_test_len;

        s4op_puts("S4OP seq");
        put_kv("i", (uint64_t)i);
        put_kv("label", s4op_test_label[i]);
        put_kv("pred", (uint64_t)pred);
        put_kv("steps", (uint64_t)s4op_test_len);
        put_kv("cost", cost);
        s4op_puts(" scores=");
        for (c = 0; c < S4OP_NUM_CLASSES; c++) {
            if (c)
                s4op_putc(',');
            s4op_put_i32(scores[c]);
        }
        s4op_putc('\n');
    }
#ifdef S4OP_PROFILE_LAYERS
    for (i = 0; i < S4OP_NUM_LAYERS; i++) {
        s4op_puts("S4OP layer");
        put_kv("i", (uint64_t)i);
        put_kv("cost", s4op_counter_to_units(layer_ticks[i]));
        s4op_putc('\n');
    }
#endif
    s4op_puts("S4OP summary");
    put_kv("n", (uint64_t)s4op_test_n);
    put_kv("correct", (uint64_t)correct);
    put_kv("steps", total_steps);
    put_kv("cost", total_cost);
    s4op_puts(" unit=" S4OP_COUNTER_UNIT);
    put_kv("clock", (uint64_t)S4OP_CLOCK_HZ);
    s4op_putc('\n');
    s4op_flush();
    return 0;
}
