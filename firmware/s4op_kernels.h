/* s4op_kernels.h - the arithmetic kernels of the generated model (static C, copied next to it).
 * Every function here is bit-exact with s4op_micro.quant.reference (numpy) and intmath:
 *   DSP cores (ACLE SIMD32, __ARM_FEATURE_DSP): one instruction per 16-bit dual multiply;
 *   scalar cores and the host: plain C with identical results (tests/test_export_c.py compiles this
 *   header on the host with S4OP_SHIM_DSP, the C versions of the ARM-only instructions). */
#ifndef S4OP_KERNELS_H
#define S4OP_KERNELS_H

#include <stdint.h>
#include <string.h>

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP && defined(__ARM_FEATURE_SIMD32) && __ARM_FEATURE_SIMD32 && !defined(S4OP_NO_DSP)
#include <arm_acle.h>
#define S4OP_DSP 1
#if defined(__GNUC__) && defined(__arm__)
#define S4OP_ASM 1       /* PKHBT and SMMULR as inline assembly (GCC does not emit them from C) */
#else
#define S4OP_ASM 0       /* a host build of the DSP path through an intrinsics shim: the C versions */
#endif
#elif defined(S4OP_SHIM_DSP)   /* host test of the DSP path: the instructions in C */
#define S4OP_DSP 1
#define S4OP_ASM 0
static int32_t __smlad(int32_t a, int32_t b, int32_t c) { return c + (int16_t)a * (int16_t)b + (a >> 16) * (b >> 16); }
static int32_t __smlsd(int32_t a, int32_t b, int32_t c) { return c + (int16_t)a * (int16_t)b - (a >> 16) * (b >> 16); }
static int32_t __smladx(int32_t a, int32_t b, int32_t c) { return c + (int16_t)a * (b >> 16) + (a >> 16) * (int16_t)b; }
static int32_t __ssat(int32_t v, int bits) { const int32_t m = (1 << (bits - 1)) - 1; return v > m ? m : v < -m - 1 ? -m - 1 : v; }
#else
#define S4OP_DSP 0
#define S4OP_ASM 0
#endif

#if !S4OP_DSP && defined(__ARM_FEATURE_SAT) && __ARM_FEATURE_SAT && defined(__GNUC__) && defined(__arm__)
#include <arm_acle.h>
#define S4OP_SSAT 1      /* Cortex-M3: SSAT without the DSP extension */
#else
#define S4OP_SSAT S4OP_DSP
#endif

#ifdef S4OP_DEBUG
extern uint32_t s4op_sat_state, s4op_sat_act;
#define S4OP_COUNT(n, event) ((n) += (event))
#else
#define S4OP_COUNT(n, event) ((void)0)
#endif

/* @phase caller */
/* ---- saturation to int8 (activations) and int16 (state), counted in debug builds ---- */
static inline int32_t sat8(int32_t v)
{
#if S4OP_SSAT
    const int32_t s = __ssat(v, 8);
#else
    int32_t s = v;
    if ((int8_t)v != v)            /* the common in-range case: SXTB, CMP and one untaken branch */
        s = v > 0 ? 127 : -128;
#endif
    S4OP_COUNT(s4op_sat_act, s != v);
    return s;
}

/* @phase caller */
static inline int32_t sat16(int32_t v)
{
#if S4OP_SSAT
    const int32_t s = __ssat(v, 16);
#else
    int32_t s = v;
    if ((int16_t)v != v)           /* the common in-range case: SXTH, CMP and one untaken branch */
        s = v > 0 ? 32767 : -32768;
#endif
    S4OP_COUNT(s4op_sat_state, s != v);
    return s;
}

/* @phase caller */
/* (lo & 0xFFFF) | hi << 16: one PKHBT (GCC does not emit it from C) */
static inline int32_t pack16(int32_t lo, int32_t hi)
{
#if S4OP_ASM
    __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(lo) : "r"(lo), "r"(hi));
    return lo;
#else
    return (int32_t)(((uint32_t)lo & 0xFFFFu) | (uint32_t)hi << 16);
#endif
}

/* keep a constant in a register (GCC would rebuild it as an immediate and lose an MLA) */
#if defined(__GNUC__)
#define S4OP_IN_REGISTER(v) __asm__("" : "+r"(v))
#else
#define S4OP_IN_REGISTER(v) ((void)0)
#endif

static inline uint32_t load32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* @phase caller */
/* ---- requantization: TFLM's MultiplyByQuantizedMultiplier(x, M, shift) ----
 * A record holds what the export computed once (quant/qmodel.py Requant): the multiplier M in
 * [2^30, 2^31), left = max(shift, 0), right = max(-shift, 0), half = 2^(right-1).
 *   SRDHM(v, M) = floor((v M + 2^30) / 2^31)   (M >= 0: TFLM's nudge rounds alike)
 *   RDBPOT(s, e) = floor((s + 2^(e-1) - [s < 0]) / 2^e)   (half away from zero)
 * requant_narrow: sites where the export proved |x| 2^(left+1) < 2^31 and right >= 1. Then
 *   SRDHM(x 2^left, M) = floor((2^(left+1) x M + 2^31) / 2^32) = mulhi_round(x 2^(left+1), M),
 * the high word of one 32x32 product (SMMULR), and RDBPOT = (s + half + (s >> 31)) >> right.
 * requant_wide: any int32 x: both roundings as one 64-bit sum,
 *   (x 2^left M + 2^30 + 2^(30+right) - [x < 0] 2^31) >> (31 + right), left shift saturated. */
typedef struct {
    int32_t multiplier;    /* M, Q31 in [2^30, 2^31) (0: the real multiplier was 0) */
    int32_t left;          /* max(shift, 0) */
    int32_t right;         /* max(-shift, 0) */
    int32_t half;          /* 2^(right-1), 0 when right = 0 */
} s4op_requant_t;

/* round(a b / 2^32) with ties up = (a b + 2^31) >> 32 for b >= 0 */
static inline int32_t mulhi_round(int32_t a, int32_t b)
{
#if S4OP_ASM
    int32_t r;
    __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
#elif defined(__ARM_ARCH_6M__) || defined(S4OP_MULHI_PIECES)
    /* Cortex-M0/M0+: no 32x32->64 multiply; four 16x16 products, exact (no __aeabi_lmul) */
    const uint32_t al = (uint32_t)a & 0xFFFFu, bl = (uint32_t)b & 0xFFFFu;
    const int32_t ah = a >> 16, bh = b >> 16;                      /* b >= 0: bh in [0, 2^15) */
    const int32_t mid1 = ah * (int32_t)bl;                         /* |.| < 2^31 */
    const int32_t mid2 = (int32_t)(al * (uint32_t)bh);             /* [0, 2^31) */
    const uint32_t t = ((al * bl) >> 16) + ((uint32_t)mid1 & 0xFFFFu) + ((uint32_t)mid2 & 0xFFFFu) + 0x8000u;
    return ah * bh + (mid1 >> 16) + (mid2 >> 16) + (int32_t)(t >> 16);
#else
    return (int32_t)(((int64_t)a * b + ((int64_t)1 << 31)) >> 32);
#endif
}

static inline int32_t requant_narrow(int32_t x, const s4op_requant_t *q)
{
    const int32_t s = mulhi_round(x * ((int32_t)2 << q->left), q->multiplier);
    return (s + q->half + (s >> 31)) >> q->right;
}

/* the same where every record of the site has the same left shift (a literal: no load, no multiply) */
static inline int32_t requant_narrow_at(int32_t x, const s4op_requant_t *q, int left)
{
    const int32_t s = mulhi_round(x * ((int32_t)2 << left), q->multiplier);
    return (s + q->half + (s >> 31)) >> q->right;
}

static inline int32_t requant_wide(int32_t x, const s4op_requant_t *q)
{
    if (!q->right) {   /* a multiplier of 1/2 or more: SRDHM alone */
        if (q->left)
            x = x > (INT32_MAX >> q->left) ? INT32_MAX : x < (INT32_MIN >> q->left) ? INT32_MIN : x * ((int32_t)1 << q->left);
        return (int32_t)(((int64_t)x * q->multiplier + ((int64_t)1 << 30)) >> 31);
    }
    return (int32_t)(((int64_t)x * q->multiplier + ((((int64_t)1 << q->right) + 1) << 30)
                      - (int64_t)((uint32_t)x & 0x80000000u)) >> 32) >> (q->right - 1);
}

/* @phase caller */
/* ---- LayerNorm's reciprocal square root (quant/reference.py layer_norm_recip) ----
 * floor(sqrt(v)) digit by digit: shifts, adds and compares only (no multiply, no table, exact; the
 * same integer as any exact method, so the numpy reference and the TFLM graph use their own) */
static inline uint32_t isqrt32(uint32_t v)
{
    uint32_t root = 0, bit = (uint32_t)1 << 30;
    while (bit > v)
        bit >>= 2;
    for (; bit; bit >>= 2) {
        if (v >= root + bit) {
            v -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
    }
    return root;
}

/* rdiv(2^bits, isqrt(max(w, 1))): one 32-bit division per timestep (bits <= 30) */
static inline int32_t norm_recip(uint32_t w, int bits)
{
    const uint32_t s = isqrt32(w ? w : 1u);
    return (int32_t)((((uint32_t)1 << bits) + (s >> 1)) / s);
}

/* @phase caller */
/* ---- one complex mode of the recurrence, in place (docs/integer_contract.md "One step"):
 *   x~ = sat16((A x~ + in + 2^14) >> 15), re and im; the real input u b + in14, b = 2^sh, in14 = K + 2^14;
 *   cb = {c, b} (the mode's constants, adjacent);
 *   returns acc + Re(c x~) = acc + c_re x_re - c_im x_im (the readout).
 * state = {x_re, x_im} (int16, read as one word x_re | x_im << 16 on DSP cores), a = A_re | A_im << 16 (Q15), c = c_re | c_im << 16 (int16 lanes). */
static inline int32_t mode_step(int16_t *state, int32_t a, int32_t u, int32_t in14, const int32_t *cb, int32_t acc)
{
#if S4OP_DSP
    const int32_t x = (int32_t)load32(state), c = cb[0], b = cb[1];
    const int32_t re = sat16(__smlsd(a, x, in14 + u * b) >> 15);    /* A_re x_re - A_im x_im + in */
    const int32_t im = sat16(__smladx(a, x, 1 << 14) >> 15);          /* A_re x_im + A_im x_re */
    const int32_t nx = pack16(re, im);
    memcpy(state, &nx, 4);
/* @phase caller */
    return __smlsd(c, nx, acc);
#else
    const int32_t c = cb[0], in = in14 + u * cb[1];
    const int32_t x_re = state[0], x_im = state[1], a_re = (int16_t)a, a_im = a >> 16;
    const int32_t re = sat16((in + a_re * x_re - a_im * x_im) >> 15);
    const int32_t im = sat16(((1 << 14) + a_re * x_im + a_im * x_re) >> 15);
    state[0] = (int16_t)re, state[1] = (int16_t)im;   /* two halfword stores, no packing */
/* @phase caller */
    return acc + (int16_t)c * re - (c >> 16) * im;
#endif
}

/* @phase caller */
/* Mode k of a channel, the offsets as literals: st = the channel's RAM words (x~, a per mode),
 * md = its constants (c, b first). On ARM with DSP one inline-assembly block of 10 instructions (a
 * macro: the offsets must be literals): two LDRDs (GCC splits the constant pair into two LDRs), MLA,
 * SMLSD, SMLADX, two SSATs, PKHBT, STR, SMLSD; elsewhere (and in debug builds, which count
 * saturations) mode_step(). acc is updated in place. */
#if S4OP_ASM && !defined(S4OP_DEBUG)
#define MODE_STEP(ST, MD, K, U, IN14, ACC) do {                                                          \
    int32_t re_, x_, a_, c_, b_, im_;                                                          \
    __asm__ volatile(                                                                                  \
        "ldrd %[x], %[a], [%[st], %[so]]\n\t"                                                           \
        "ldrd %[c], %[b], [%[md], %[mo]]\n\t"                                                           \
        "mla %[re], %[b], %[u], %[in]\n\t"           /* u b + K + 2^14 */                             \
        "smlsd %[re], %[a], %[x], %[re]\n\t"          /* re = A_re x_re - A_im x_im + that */             \
        "smladx %[im], %[a], %[x], %[half]\n\t"       /* im = A_re x_im + A_im x_re + 2^14 */           \
        "ssat %[re], #16, %[re], asr #15\n\t"                                                           \
        "ssat %[im], #16, %[im], asr #15\n\t"                                                           \
        "pkhbt %[re], %[re], %[im], lsl #16\n\t"                                                        \
        "str %[re], [%[st], %[so]]\n\t"                                                                 \
        "smlsd %[acc], %[c], %[re], %[acc]"          /* acc += c_re x_re - c_im x_im */                \
        : [re] "=&r"(re_), [acc] "+&r"(ACC), [x] "=&r"(x_), [a] "=&r"(a_), [c] "=&r"(c_), [b] "=&r"(b_), \
          [im] "=&r"(im_)                                                                              \
        : [in] "r"(IN14), [st] "r"(ST), [md] "r"(MD), [u] "r"(U), [half] "r"(1 << 14), [so] "n"((K) * 8),              \
          [mo] "n"((K) * (int)sizeof *(MD))                                                           \
        : "memory");                                                                                   \
} while (0)
#else
#define MODE_STEP(st, md, k, u, in14, acc) \
    ((acc) = mode_step((st)[k].x, (st)[k].a, (u), (in14), &(md)[k].c, (acc)))
#endif

/* the layer walks its modes two at a time from the end (MODE_PAIR_DOWN) on DSP cores (and their host
 * test through the shim); elsewhere per mode from a fixed base (MODE_STEP, literal offsets: cheaper
 * on ARMv6-M/ARMv7-M without DSP) */
#define S4OP_MODE_PAIRS S4OP_DSP

/* @phase caller */
/* The modes of a channel without a constant input (in14 = 2^14), walked from the last one down:
 * st, md point just past the channel's state and constants; MODE_PAIR_DOWN steps the two modes
 * below them, MODE_ONE_DOWN one, and moves the pointers down. On ARM with DSP a pair is one block of
 * 18 instructions: LDMDB of both states and A (RAM) and of both (c, b) (flash) into fixed registers
 * (an LDM register list is ascending), 7 per mode, two STRs. */
#if S4OP_ASM && !defined(S4OP_DEBUG)
#define MODE_PAIR_DOWN(ST, MD, U, HALF, ACC)                                                              \
    __asm__ volatile(                                                                                  \
        "ldmdb %[st]!, {r8, r9, r12, lr}\n\t"        /* x0, a0, x1, a1 */                              \
        "ldmdb %[md]!, {r0, r1, r2, r3}\n\t"         /* c0, b0, c1, b1 */                              \
        "mla r1, r1, %[u], %[h]\n\t"                 /* u b0 + 2^14 */                                 \
        "smlsd r1, r9, r8, r1\n\t"                   /* re0 */                                         \
        "smladx r8, r9, r8, %[h]\n\t"                /* im0 */                                         \
        "ssat r1, #16, r1, asr #15\n\t"                                                                \
        "ssat r8, #16, r8, asr #15\n\t"                                                                \
        "pkhbt r8, r1, r8, lsl #16\n\t"                                                                \
        "str r8, [%[st]]\n\t"                                                                          \
        "smlsd %[acc], r0, r8, %[acc]\n\t"                                                             \
        "mla r3, r3, %[u], %[h]\n\t"                 /* the same for mode 1 */                         \
        "smlsd r3, lr, r12, r3\n\t"                                                                    \
        "smladx r12, lr, r12, %[h]\n\t"                                                                \
        "ssat r3, #16, r3, asr #15\n\t"                                                                \
        "ssat r12, #16, r12, asr #15\n\t"                                                              \
        "pkhbt r12, r3, r12, lsl #16\n\t"                                                              \
        "str r12, [%[st], #8]\n\t"                                                                     \
        "smlsd %[acc], r2, r12, %[acc]"                                                                \
        : [acc] "+r"(ACC), [st] "+r"(ST), [md] "+r"(MD)                                                \
        : [u] "r"(U), [h] "r"(HALF)                                                                    \
        : "r0", "r1", "r2", "r3", "r8", "r9", "r12", "lr", "memory")
#define MODE_ONE_DOWN(ST, MD, U, HALF, ACC)                                                               \
    __asm__ volatile(                                                                                  \
        "ldrd r8, r9, [%[st], #-8]!\n\t"             /* x, a */                                        \
        "ldrd r0, r1, [%[md], #-8]!\n\t"             /* c, b */                                        \
        "mla r1, r1, %[u], %[h]\n\t"                                                                   \
        "smlsd r1, r9, r8, r1\n\t"                                                                     \
        "smladx r8, r9, r8, %[h]\n\t"                                                                  \
        "ssat r1, #16, r1, asr #15\n\t"                                                                \
        "ssat r8, #16, r8, asr #15\n\t"                                                                \
        "pkhbt r8, r1, r8, lsl #16\n\t"                                                                \
        "str r8, [%[st]]\n\t"                                                                          \
        "smlsd %[acc], r0, r8, %[acc]"                                                                 \
        : [acc] "+r"(ACC), [st] "+r"(ST), [md] "+r"(MD)                                                \
        : [u] "r"(U), [h] "r"(HALF)                                                                    \
        : "r0", "r1", "r8", "r9", "memory")
#else
#define MODE_PAIR_DOWN(ST, MD, U, HALF, ACC) do {                                                         \
    (ST) -= 2, (MD) -= 2;                                                                              \
    (ACC) = mode_step((ST)[0].x, (ST)[0].a, (U), (HALF), &(MD)[0].c, (ACC));                           \
    (ACC) = mode_step((ST)[1].x, (ST)[1].a, (U), (HALF), &(MD)[1].c, (ACC));                           \
} while (0)
#define MODE_ONE_DOWN(ST, MD, U, HALF, ACC) do {                                                          \
    --(ST), --(MD);                                                                                    \
    (ACC) = mode_step((ST)[0].x, (ST)[0].a, (U), (HALF), &(MD)[0].c, (ACC));                           \
} while (0)
#endif

/* ARMv6-M (Cortex-M0/M0+) and its host test (-DS4OP_SHIM_6M): a channel's modes as one run from its
 * first one up (MODE_RUN), one inline-assembly loop on the core: GCC's code for mode_step takes ~56
 * instructions per mode there (no SMLAD, MULS destroys an operand, a 7-operand block has no
 * registers left), the loop ~36. Elsewhere MODE_PAIR_DOWN (DSP) or MODE_STEP (literal offsets). */
#if defined(__ARM_ARCH_6M__) || defined(S4OP_SHIM_6M)
#define S4OP_MODE_RUN 1
#else
#define S4OP_MODE_RUN 0
#endif

/* one mode at byte offset O of the run (st: {x_re, x_im, a}, md: {c, b}; 8 bytes each) in r0-r3:
 * 34 instructions. x~ is loaded twice (MULS overwrites one factor; a copy would need a 5th
 * register). Saturation: 2v overflows int32 exactly when v >> 15 leaves int16, so ADDS sets V and
 * the rare case branches to S4OP_SAT6M; ASRS keeps V. Labels are unique per block (%=). */
#define S4OP_MODE6M(O, O2, O4, ID)                                                                      \
    "ldr r0, [%[st], #" O4 "]\n\t"                   /* a = a_re | a_im << 16 */                       \
    "ldr r1, [%[st], #" O "]\n\t"                    /* x = x_re | x_im << 16 */                       \
    "sxth r2, r0\n\t"                                                                                 \
    "sxth r3, r1\n\t"                                                                                 \
    "muls r3, r2, r3\n\t"                            /* a_re x_re */                                   \
    "asrs r1, r1, #16\n\t"                                                                            \
    "muls r2, r1, r2\n\t"                            /* a_re x_im */                                   \
    "asrs r0, r0, #16\n\t"                                                                            \
    "muls r1, r0, r1\n\t"                            /* a_im x_im */                                   \
    "subs r3, r3, r1\n\t"                                                                             \
    "ldr r1, [%[st], #" O "]\n\t"                                                                     \
    "sxth r1, r1\n\t"                                                                                 \
    "muls r1, r0, r1\n\t"                            /* a_im x_re */                                   \
    "adds r2, r2, r1\n\t"                                                                             \
    "ldr r0, [%[md], #" O4 "]\n\t"                                                                    \
    "muls r0, %[u], r0\n\t"                          /* u b */                                         \
    "adds r3, r3, r0\n\t"                                                                             \
    "add r3, %[h]\n\t"                               /* re + 2^14 */                                   \
    "add r2, %[h]\n\t"                               /* im + 2^14 */                                   \
    "adds r3, r3, r3\n\t"                                                                             \
    "bvs .Ls4op_sr" ID "_%=\n"                                                                        \
    ".Ls4op_rr" ID "_%=:\n\t"                                                                         \
    "asrs r3, r3, #16\n\t"                           /* re = sat16(v >> 15) */                         \
    "adds r2, r2, r2\n\t"                                                                             \
    "bvs .Ls4op_si" ID "_%=\n"                                                                        \
    ".Ls4op_ri" ID "_%=:\n\t"                                                                         \
    "asrs r2, r2, #16\n\t"                           /* im */                                          \
    "strh r3, [%[st], #" O "]\n\t"                                                                    \
    "strh r2, [%[st], #" O2 "]\n\t"                                                                   \
    "ldr r0, [%[md], #" O "]\n\t"                    /* c */                                           \
    "sxth r1, r0\n\t"                                                                                 \
    "asrs r0, r0, #16\n\t"                                                                            \
    "muls r1, r3, r1\n\t"                            /* c_re re */                                     \
    "muls r0, r2, r0\n\t"                            /* c_im im */                                     \
    "subs r1, r1, r0\n\t"                                                                             \
    "add %[acc], r1\n\t"

/* out of line: R = 2v wrapped (its sign the opposite of v's) -> INT32_MAX or INT32_MIN, whose >> 16
 * is 32767 or -32768; back to the ASRS */
#define S4OP_SAT6M(R, KIND, ID)                                                                         \
    ".Ls4op_s" KIND ID "_%=:\n\t"                                                                     \
    "asrs " R ", " R ", #31\n\t"                                                                      \
    "movs r0, #1\n\t"                                                                                 \
    "lsls r0, r0, #31\n\t"                                                                            \
    "eors " R ", r0\n\t"                                                                              \
    "b .Ls4op_r" KIND ID "_%=\n\t"
#define S4OP_SATS6M(ID) S4OP_SAT6M("r3", "r", ID) S4OP_SAT6M("r2", "i", ID)

/* @phase caller */
/* MODE_RUN(ST, MD, N, U, HALF, ACC): the N modes at ST (RAM) and MD (constants), in14 = HALF = 2^14;
 * ACC += their readout; ST and MD end just past them. An odd mode first, then pairs. */
#if S4OP_MODE_RUN && defined(__ARM_ARCH_6M__) && defined(__GNUC__) && !defined(S4OP_NO_ASM) && !defined(S4OP_DEBUG) \
    && !defined(__OPTIMIZE_SIZE__)
/* 2^14 and the end pointer in high registers ("h": with "r" GCC 12 ran out of low ones on some models);
 * at -Os GCC keeps Thumb-1 code out of r8-r12, so -Os builds take the C loop */
#define MODE_RUN(ST, MD, N, U, HALF, ACC) do {                                                            \
    int32_t n_ = (N);                                                                                  \
    if (n_ & 1)                                                                                        \
        __asm__ volatile(".syntax unified\n\t"                                                          \
                         S4OP_MODE6M("0", "2", "4", "o")                                                \
                         "adds %[st], #8\n\t"                                                          \
                         "adds %[md], #8\n\t"                                                          \
                         "b .Ls4op_end_%=\n\t"                                                         \
                         S4OP_SATS6M("o")                                                              \
                         ".Ls4op_end_%=:\n\t"                                                          \
                         ".syntax divided"                                                             \
                         : [st] "+l"(ST), [md] "+l"(MD), [acc] "+r"(ACC)                               \
                         : [u] "l"(U), [h] "h"(HALF)                                                   \
                         : "r0", "r1", "r2", "r3", "cc", "memory");                                     \
    if (n_ >> 1) {                                                                                     \
        const void *end_ = (ST) + (n_ & ~1);                                                           \
        __asm__ volatile(".syntax unified\n"                                                            \
                         ".Ls4op_loop_%=:\n\t"                                                         \
                         S4OP_MODE6M("0", "2", "4", "a")                                                \
                         S4OP_MODE6M("8", "10", "12", "b")                                              \
                         "adds %[st], #16\n\t"                                                         \
                         "adds %[md], #16\n\t"                                                         \
                         "cmp %[st], %[end]\n\t"                                                       \
                         "bne .Ls4op_loop_%=\n\t"                                                      \
                         "b .Ls4op_end_%=\n\t"                                                         \
                         S4OP_SATS6M("a") S4OP_SATS6M("b")                                              \
                         ".Ls4op_end_%=:\n\t"                                                          \
                         ".syntax divided"                                                             \
                         : [st] "+l"(ST), [md] "+l"(MD), [acc] "+r"(ACC)                               \
                         : [u] "l"(U), [h] "h"(HALF), [end] "h"(end_)                                  \
                         : "r0", "r1", "r2", "r3", "cc", "memory");                                     \
    }                                                                                                  \
} while (0)
#else
#define MODE_RUN(ST, MD, N, U, HALF, ACC) do {                                                            \
    int32_t n_ = (N);                                                                                  \
    for (; n_ > 0; --n_, ++(ST), ++(MD))                                                               \
        (ACC) = mode_step((ST)->x, (ST)->a, (U), (HALF), &(MD)->c, (ACC));                             \
} while (0)
#endif

/* one input of an ARMv6-M dot16x2 chunk (written out 8 times, not .rept: GCC sizes inline assembly by
 * its statements when it places branches) */
#define S4OP_DOT6M_INPUT                                                                               \
    "ldrsh %[gi], [%[g], %[i]]\n\t"                                                                   \
    "ldrsh %[p], [%[w], %[i]]\n\t"                                                                    \
    "muls %[p], %[gi], %[p]\n\t"                                                                      \
    "add %[sa], %[p]\n\t"                                                                             \
    "ldrsh %[p], [%[wb], %[i]]\n\t"                                                                   \
    "muls %[p], %[gi], %[p]\n\t"                                                                      \
    "add %[sb], %[p]\n\t"                                                                             \
    "adds %[i], %[i], #2\n\t"

/* @phase caller */
/* ---- two int16 rows against the same int16 input g, in chunks of 8 inputs: w = n8 chunks of
 * {8 value weights, 8 gate weights} (read in order), g = 8 n8 int16; *a += wa . g, *b += wb . g ---- */
static inline void dot16x2(const int16_t *w, const int16_t *g, int n8, int32_t *a, int32_t *b)
{
    int32_t sa = *a, sb = *b;
    int k;
#if S4OP_ASM
    /* per chunk one LDM of g and one per row (GCC does not emit LDM here), then 8 SMLADs: 11 instructions
     * per 16 MACs. Fixed scratch registers: LDM needs an ascending register list. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 8
#endif
    for (k = 0; k < n8; ++k)
        __asm__ volatile(
            "ldmia %[g]!, {r0, r1, r2, r3}\n\t"
            "ldmia %[w]!, {r8, r9, r12, lr}\n\t"        /* value row */
            "smlad %[sa], r0, r8, %[sa]\n\t"
            "smlad %[sa], r1, r9, %[sa]\n\t"
            "smlad %[sa], r2, r12, %[sa]\n\t"
            "smlad %[sa], r3, lr, %[sa]\n\t"
            "ldmia %[w]!, {r8, r9, r12, lr}\n\t"        /* gate row */
            "smlad %[sb], r0, r8, %[sb]\n\t"
            "smlad %[sb], r1, r9, %[sb]\n\t"
            "smlad %[sb], r2, r12, %[sb]\n\t"
            "smlad %[sb], r3, lr, %[sb]"
            : [sa] "+r"(sa), [sb] "+r"(sb), [g] "+r"(g), [w] "+r"(w)
            : : "r0", "r1", "r2", "r3", "r8", "r9", "r12", "lr", "memory");
#elif S4OP_DSP
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 8
#endif
    for (k = 0; k < n8; ++k, w += 16, g += 8) {
        int i;
        for (i = 0; i < 8; i += 2) {
            const int32_t gi = (int32_t)load32(g + i);
            sa = __smlad((int32_t)load32(w + i), gi, sa);
            sb = __smlad((int32_t)load32(w + 8 + i), gi, sb);
        }
    }
#elif defined(__ARM_ARCH_6M__) && defined(__GNUC__) && !defined(S4OP_NO_ASM)
    /* ARMv6-M: LDRSH has only a register offset; one byte index i serves g, the value row (w) and the
     * gate row (w + 16 bytes): 8 instructions per input (GCC's code takes ~12) */
    for (k = 0; k < n8; ++k, w += 16, g += 8) {
        const int16_t *wb = w + 8;
        int32_t i, gi, p;
        __asm__ volatile(
            ".syntax unified\n\t"                           /* (GCC's Thumb-1 inline assembly is divided) */
            "movs %[i], #0\n\t"
            S4OP_DOT6M_INPUT S4OP_DOT6M_INPUT S4OP_DOT6M_INPUT S4OP_DOT6M_INPUT      /* the chunk's 8 inputs */
            S4OP_DOT6M_INPUT S4OP_DOT6M_INPUT S4OP_DOT6M_INPUT S4OP_DOT6M_INPUT
            ".syntax divided"
            : [sa] "+r"(sa), [sb] "+r"(sb), [i] "=&l"(i), [gi] "=&l"(gi), [p] "=&l"(p)
            : [g] "l"(g), [w] "l"(w), [wb] "l"(wb)
            : "cc", "memory");
    }
#else
    for (k = 0; k < n8; ++k, w += 16, g += 8) {
        int i;
        for (i = 0; i < 8; ++i) {
            sa += w[i] * g[i];
            sb += w[8 + i] * g[i];
        }
    }
#endif
    *a = sa, *b = sb;
}

#endif /* S4OP_KERNELS_H */
