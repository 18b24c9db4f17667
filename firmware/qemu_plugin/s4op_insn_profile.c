/* s4op_insn_profile: a QEMU TCG plugin that counts how often each translated block runs.
 *
 * Written by s4op_micro.measure.profile, which builds it with the host gcc on first use:
 *   qemu-system-arm ... -plugin libs4op_insn_profile.so,out=PROFILE.txt[,owned=RANGES.txt]
 *
 * For every translated block (start address, instruction count, address of each instruction) it
 * counts executions. Blocks are keyed by (start, instruction count): under -icount QEMU may
 * translate a shorter block at the same address, and each is counted as what it is.
 *
 * Attribution of library code: RANGES.txt lists "lo hi" address ranges (hex, hi exclusive) of
 * "owned" code (the model's and the harness's functions). A block outside them (libgcc helpers
 * such as __aeabi_lmul, newlib's memcpy) is counted per *context*: the last owned block that ran
 * before it, i.e. the code that called it. Python then charges the helper's instructions to the
 * caller's phase. Without owned=, every block is owned (plain per-block counts).
 *
 * Output, written at exit (one line each):
 *   S4OPPROF 1
 *   B <id> <start> <n> <owned> <addr>,<addr>,...      a block (hex addresses)
 *   C <id> <context id or -1> <executions>            execution counts
 * Single-threaded by construction: -icount runs all vCPUs in one thread (and these machines have
 * one vCPU), so no locking. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "s4op_qemu_plugin.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = S4OP_QEMU_PLUGIN_VERSION;

typedef struct {
    uint64_t start;
    uint32_t n, owned, id;
    uint64_t count;            /* executions (owned blocks) */
    uint64_t *addr;            /* n instruction addresses */
} block_t;

/* open-addressing hash tables: blocks by (start, n); counts of unowned blocks by (id, context) */
typedef struct { uint64_t key; uint64_t value; int used; } slot_t;
typedef struct { slot_t *slot; size_t cap, len; } table_t;

static block_t **blocks;
static size_t n_blocks, cap_blocks;
static table_t by_key, ctx_counts;
static uint64_t (*ranges)[2];
static size_t n_ranges;
static int64_t context = -1;   /* id of the last owned block executed */
static char *out_path;

static uint64_t mix(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return k;
}

static slot_t *lookup(table_t *t, uint64_t key, int insert)
{
    size_t i;
    if (insert && 2 * (t->len + 1) > t->cap) {   /* grow to keep the load under 1/2 */
        table_t g = {calloc(t->cap ? 2 * t->cap : 1024, sizeof(slot_t)), t->cap ? 2 * t->cap : 1024, 0};
        for (i = 0; i < t->cap; i++)
            if (t->slot[i].used)
                *lookup(&g, t->slot[i].key, 1) = t->slot[i];
        free(t->slot);
        *t = g;
    }
    if (!t->cap)
        return NULL;
    for (i = mix(key) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
        if (t->slot[i].used && t->slot[i].key == key)
            return &t->slot[i];
        if (!t->slot[i].used) {
            if (!insert)
                return NULL;
            t->slot[i].used = 1;
            t->slot[i].key = key;
            t->slot[i].value = 0;
            t->len++;
            return &t->slot[i];
        }
    }
}

static int is_owned(uint64_t pc)
{
    size_t i;
    if (!ranges)
        return 1;
    for (i = 0; i < n_ranges; i++)
        if (pc >= ranges[i][0] && pc < ranges[i][1])
            return 1;
    return 0;
}

static void on_exec(unsigned int vcpu, void *udata)
{
    block_t *b = udata;
    (void)vcpu;
    if (b->owned) {
        b->count++;
        context = b->id;
    } else {
        lookup(&ctx_counts, (uint64_t)b->id << 32 | (uint32_t)context, 1)->value++;
    }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    const size_t n = qemu_plugin_tb_n_insns(tb);
    const uint64_t start = qemu_plugin_tb_vaddr(tb);
    slot_t *s = lookup(&by_key, start << 16 ^ n, 1);   /* n < 2^16: a block is at most 512 insns */
    block_t *b;
    size_t i;
    (void)id;
    if (s->value) {
        b = blocks[s->value - 1];
    } else {
        b = calloc(1, sizeof *b);
        b->start = start;
        b->n = (uint32_t)n;
        b->owned = (uint32_t)is_owned(start);
        b->addr = calloc(n ? n : 1, sizeof *b->addr);
        for (i = 0; i < n; i++)
            b->addr[i] = qemu_plugin_insn_vaddr(qemu_plugin_tb_get_insn(tb, i));
        if (n_blocks == cap_blocks) {
            cap_blocks = cap_blocks ? 2 * cap_blocks : 1024;
            blocks = realloc(blocks, cap_blocks * sizeof *blocks);
        }
        b->id = (uint32_t)n_blocks;
        blocks[n_blocks++] = b;
        s->value = n_blocks;
    }
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_exec, QEMU_PLUGIN_CB_NO_REGS, b);
}

static void write_profile(qemu_plugin_id_t id, void *udata)
{
    FILE *f = fopen(out_path, "w");
    size_t i, k;
    (void)id, (void)udata;
    if (!f) {
        qemu_plugin_outs("s4op_insn_profile: cannot write the profile\n");
        return;
    }
    fprintf(f, "S4OPPROF 1\n");
    for (i = 0; i < n_blocks; i++) {
        const block_t *b = blocks[i];
        fprintf(f, "B %u %" PRIx64 " %u %u ", b->id, b->start, b->n, b->owned);
        for (k = 0; k < b->n; k++)
            fprintf(f, k ? ",%" PRIx64 : "%" PRIx64, b->addr[k]);
        fprintf(f, "\n");
        if (b->owned && b->count)
            fprintf(f, "C %u -1 %" PRIu64 "\n", b->id, b->count);
    }
    for (i = 0; i < ctx_counts.cap; i++)
        if (ctx_counts.slot[i].used)
            fprintf(f, "C %u %d %" PRIu64 "\n", (uint32_t)(ctx_counts.slot[i].key >> 32),
                    (int32_t)(uint32_t)ctx_counts.slot[i].key, ctx_counts.slot[i].value);
    fprintf(f, "END\n");
    fclose(f);
}

static int read_ranges(const char *path)
{
    FILE *f = fopen(path, "r");
    unsigned long long lo, hi;
    size_t cap = 0;
    if (!f)
        return -1;
    while (fscanf(f, "%llx %llx", &lo, &hi) == 2) {
        if (n_ranges == cap) {
            cap = cap ? 2 * cap : 64;
            ranges = realloc(ranges, cap * sizeof *ranges);
        }
        ranges[n_ranges][0] = lo;
        ranges[n_ranges][1] = hi;
        n_ranges++;
    }
    fclose(f);
    if (!ranges)
        ranges = malloc(sizeof *ranges);   /* an empty file: nothing is owned */
    return 0;
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    int i;
    (void)info;
    for (i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strncmp(a, "arg=", 4))   /* the older "-plugin FILE,arg=KEY=VALUE" form */
            a += 4;
        if (!strncmp(a, "out=", 4)) {
            out_path = strdup(a + 4);
        } else if (!strncmp(a, "owned=", 6)) {
            if (read_ranges(a + 6)) {
                fprintf(stderr, "s4op_insn_profile: cannot read %s\n", a + 6);
                return -1;
            }
        } else {
            fprintf(stderr, "s4op_insn_profile: unknown argument %s (expected out=FILE, owned=FILE)\n", a);
            return -1;
        }
    }
    if (!out_path) {
        fprintf(stderr, "s4op_insn_profile: out=FILE is required\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, write_profile, NULL);
    return 0;
}
