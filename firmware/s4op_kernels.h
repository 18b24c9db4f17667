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
    const int32_t s = v > 127 ? 127 : v < -128 ? -128 : v;
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
    const int32_t s = v > 32767 ? 32767 : v < -32768 ? -32768 : v;
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
/* ---- one complex mode of the recurrence, in place (docs/integer_contract.md "One step"):
 *   x~ = sat16((A x~ + in + 2^14) >> 15), re and im; in14 = u 2^sh + K + 2^14 (the real input);
 *   returns acc + Re(c x~) = acc + c_re x_re - c_im x_im (the readout).
 * state = x_re | x_im << 16, a = A_re | A_im << 16 (Q15), c = c_re | c_im << 16 (int16 lanes). */
static inline int32_t mode_step(int32_t *state, int32_t a, int32_t in14, int32_t c, int32_t acc)
{
    const int32_t x = *state;
#if S4OP_DSP
    const int32_t re = sat16(__smlsd(a, x, in14) >> 15);    /* A_re x_re - A_im x_im + in14 */
    const int32_t im = sat16(__smladx(a, x, 1 << 14) >> 15);          /* A_re x_im + A_im x_re */
    const int32_t nx = pack16(re, im);
    *state = nx;
/* @phase caller */
    return __smlsd(c, nx, acc);
#else
    const int32_t x_re = (int16_t)x, x_im = x >> 16, a_re = (int16_t)a, a_im = a >> 16;
    const int32_t re = sat16((in14 + a_re * x_re - a_im * x_im) >> 15);
    const int32_t im = sat16(((1 << 14) + a_re * x_im + a_im * x_re) >> 15);
    int16_t nx[2];
    nx[0] = (int16_t)re, nx[1] = (int16_t)im;
    memcpy(state, nx, 4);           /* two halfword stores, no packing */
/* @phase caller */
    return acc + (int16_t)c * re - (c >> 16) * im;
#endif
}

/* @phase caller */
/* ---- two int16 rows (wa, wb: n16 = a multiple of 4 of int16 weights each, read in order) against
 * the same int16 input g: *a += wa . g, *b += wb . g ---- */
static inline void dot16x2(const int16_t *wa, const int16_t *wb, const int16_t *g, int n16, int32_t *a, int32_t *b)
{
    int32_t sa = *a, sb = *b;
    int k;
#if S4OP_DSP
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 32
#endif
    for (k = 0; k < n16; k += 4) {   /* n16 is a multiple of 4 (the export pads): 64-bit loads */
        const int32_t g0 = (int32_t)load32(g + k), g1 = (int32_t)load32(g + k + 2);
        sa = __smlad((int32_t)load32(wa + k), g0, sa);
        sa = __smlad((int32_t)load32(wa + k + 2), g1, sa);
        sb = __smlad((int32_t)load32(wb + k), g0, sb);
        sb = __smlad((int32_t)load32(wb + k + 2), g1, sb);
    }
#else
    for (k = 0; k < n16; ++k) {
        sa += wa[k] * g[k];
        sb += wb[k] * g[k];
    }
#endif
    *a = sa, *b = sb;
}

#endif /* S4OP_KERNELS_H */
