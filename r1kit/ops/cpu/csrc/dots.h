/* Vector helpers shared by the kernels in this folder: GCC/Clang vector extensions (lowered to AVX-512, AVX2 or
 * NEON by the compiler) and a blocked dot-product routine for rows stored contiguously (weights [out, in]). */
#ifndef R1KIT_DOTS_H
#define R1KIT_DOTS_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define VL 16   /* floats per vector */

typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef float vf_u __attribute__((vector_size(VL * sizeof(float)), aligned(4)));  /* unaligned load */
typedef uint16_t vh_u __attribute__((vector_size(VL * sizeof(uint16_t)), aligned(2)));  /* VL bf16, unaligned */
typedef uint32_t vu __attribute__((vector_size(VL * sizeof(uint32_t))));

/* element o of an array of fp32, or of bf16 when bf */
static inline const void *elem(const int bf, const void *p, int64_t o) { return (const char *)p + o * (bf ? 2 : 4); }

/* bf16 -> fp32 is exact: the bf16 bits are the float's upper half */
static inline float bf16_to_f32(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* VL weights of row p from offset c: fp32 as stored, or bf16 (wbf16) widened to fp32 (zero-extend, shift) */
static inline __attribute__((always_inline)) vf load_w(const int wbf16, const void *p, int64_t c) {
    if (wbf16) return (vf)(__builtin_convertvector(*(const vh_u *)((const uint16_t *)p + c), vu) << 16);
    return *(const vf_u *)((const float *)p + c);
}

static inline __attribute__((always_inline)) float scalar_w(const int wbf16, const void *p, int64_t c) {
    return wbf16 ? bf16_to_f32(((const uint16_t *)p)[c]) : ((const float *)p)[c];
}

/* 1 / (1 + exp(-g)) with a denominator in [1, 2]: under -ffast-math the compiler divides by a reciprocal estimate
 * refined by one Newton step, which turns an infinite denominator (expf(-g) overflows below g ~ -88.7) into
 * inf * 0 = NaN. Written this way it vectorises the same and stays exact in the tails. */
static inline __attribute__((always_inline)) float sigmoid_f32(float g) {
    const float e = expf(-fabsf(g));
    return (g >= 0.f ? 1.f : e) / (1.f + e);
}

#define SHUF __builtin_shufflevector

/* Prefetch rows [0, n) of len elements each, stored contiguously (fp32, or bf16 when bf) */
static inline void prefetch_rows(const int bf, const void *p, int64_t n, int64_t len) {
    const int64_t line = 64 / (bf ? 2 : 4);
    for (int64_t c = 0; c < n * len; c += line) __builtin_prefetch(elem(bf, p, c), 0, 3);
}

/* Lane sums of 16 vectors at once: result[q] = sum of v[q]'s lanes. A transpose-and-add tree (4 levels of two
 * shuffles and an add) instead of 16 horizontal sums: each level halves the lanes per vector and doubles the
 * vectors per register. */
static inline vf reduce16(const vf *v) {
    vf a[8], b[4], c[2];
    for (int q = 0; q < 8; q++)  /* [v_2q partials (8), v_2q+1 partials (8)] */
        a[q] = SHUF(v[2 * q], v[2 * q + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
             + SHUF(v[2 * q], v[2 * q + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int q = 0; q < 4; q++)  /* 4 partials each of 4 vectors */
        b[q] = SHUF(a[2 * q], a[2 * q + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27)
             + SHUF(a[2 * q], a[2 * q + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    for (int q = 0; q < 2; q++)  /* 2 partials each of 8 vectors */
        c[q] = SHUF(b[2 * q], b[2 * q + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29)
             + SHUF(b[2 * q], b[2 * q + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    return SHUF(c[0], c[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
         + SHUF(c[0], c[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

/* o[r][j0 + j] = dot(a[r], wt row j0 + j) for r < R, j < jn (<= 16 / R): one block of 16 accumulators (R rows x
 * 16 / R weight rows; R is a constant where this is inlined, so the loops unroll). Per pass R + 16 / R vector loads
 * feed 16 FMAs. The dots run over len floats; row j of wt starts at wt + j * ws. Missing weight rows (jn < 16 / R)
 * recompute row 0 unstored. */
static inline __attribute__((always_inline)) void dots_block(const int wbf16, const int R, const float *const *a,
                                                            const void *wt, int64_t ws, int64_t j0, int64_t jn,
                                                            int64_t len, float *const *o) {
    const int C = 16 / R;
    const int64_t lv = len - len % VL;
    /* a tail of len % VL floats (len >= VL) runs as one more vector over the last VL floats, with the a-lanes that
     * the full vectors already covered zeroed: no scalar loop */
    const int vtail = lv < len && len >= VL;
    const void *w[16];
    for (int j = 0; j < C; j++) w[j] = elem(wbf16, wt, (j0 + (j < jn ? j : 0)) * ws);
    vf acc[16] = {{0}};  /* acc[R * j + r]: row r, weight row j0 + j */
    for (int64_t c = 0; c < lv; c += VL) {
        vf av[4];
        for (int r = 0; r < R; r++) av[r] = *(const vf_u *)(a[r] + c);
        for (int j = 0; j < C; j++) {
            const vf wv = load_w(wbf16, w[j], c);
            for (int r = 0; r < R; r++) acc[R * j + r] += av[r] * wv;
        }
    }
    if (vtail) {
        vf at[4];
        for (int r = 0; r < R; r++) {
            float lanes[VL];
            for (int l = 0; l < VL; l++) lanes[l] = len - VL + l < lv ? 0.f : a[r][len - VL + l];
            memcpy(&at[r], lanes, sizeof lanes);
        }
        for (int j = 0; j < C; j++) {
            const vf wv = load_w(wbf16, w[j], len - VL);
            for (int r = 0; r < R; r++) acc[R * j + r] += at[r] * wv;
        }
    }
    const vf sum = reduce16(acc);
    for (int j = 0; j < jn; j++)
        for (int r = 0; r < R; r++) {
            float t = sum[R * j + r];
            if (!vtail)
                for (int64_t c = lv; c < len; c++) t += a[r][c] * scalar_w(wbf16, w[j], c);
            o[r][j0 + j] = t;
        }
}

/* o[r][j] = dot(a[r], wt[j]) for r < rows, j < cols: 4-row blocks, then a 2-row and a 1-row block for the rest of
 * the rows, each with as many weight rows as keep 16 accumulators busy (a lone row is not computed as 4). Weight rows
 * go in chunks of 16: a chunk stays in L1/L2 while every row group passes over it, so the weights are read from
 * memory once, not once per 4 rows. Weights are fp32, or bf16 (wbf16) widened as they load: half the memory
 * traffic, the same fp32 arithmetic. */
static inline __attribute__((always_inline)) void dots_w(const int wbf16, const float *const *a, int rows,
                                                        const void *wt, int64_t ws, int64_t cols, int64_t len,
                                                        float *const *o) {
    for (int64_t j0 = 0; j0 < cols; j0 += 16) {
        const int64_t jn = cols - j0 < 16 ? cols - j0 : 16;
        /* fetch the next chunk's weight rows while this one computes. Rows of 1 KB or less, walked four at a time,
         * are too short for the hardware stream prefetcher to get ahead of: the routed experts spent as long
         * waiting for weights (12.6 MB a layer at decode, beyond the L3) as computing. Measured on the experts
         * kernel cycling 14 layers: 9-21% faster at 8-256 tokens; two chunks ahead was no better. */
        for (int64_t j = j0 + 16; j < j0 + 32 && j < cols; j++) prefetch_rows(wbf16, elem(wbf16, wt, j * ws), 1, len);
        int r0 = 0;
        for (; r0 + 4 <= rows; r0 += 4)
            for (int64_t j = 0; j < jn; j += 4)
                dots_block(wbf16, 4, a + r0, wt, ws, j0 + j, jn - j < 4 ? jn - j : 4, len, o + r0);
        if (rows - r0 >= 2) {
            for (int64_t j = 0; j < jn; j += 8)
                dots_block(wbf16, 2, a + r0, wt, ws, j0 + j, jn - j < 8 ? jn - j : 8, len, o + r0);
            r0 += 2;
        }
        if (rows - r0 == 1) dots_block(wbf16, 1, a + r0, wt, ws, j0, jn, len, o + r0);
    }
}

/* Register-blocked products in outer-product form (used where the right-hand side's rows are contiguous vectors:
 * the training attention's transposed keys and values, the decode experts' blocked weights). */
/* c[r][0:NV*VL] (+)= sum_k a(r, k) * b[k][0:NV*VL], r < R; a(r, k) = a[r * ar + k * ak]; b row k at b + k * ldb.
 * R x NV accumulators (at most 24: AVX-512 has 32 vector registers) */
static inline __attribute__((always_inline)) void mk(const int R, const int NV, const float *a, int64_t ar,
                                                    int64_t ak, const float *b, int64_t ldb, int64_t K, float *c,
                                                    int64_t ldc, int add) {
    vf acc[24];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) acc[NV * r + v] = add ? *(const vf_u *)(c + r * ldc + v * VL) : (vf){0};
    for (int64_t k = 0; k < K; k++) {
        vf bv[4];
        for (int v = 0; v < NV; v++) bv[v] = *(const vf_u *)(b + k * ldb + v * VL);
        for (int r = 0; r < R; r++) {
            const float s = a[r * ar + k * ak];
            for (int v = 0; v < NV; v++) acc[NV * r + v] += s * bv[v];
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) *(vf_u *)(c + r * ldc + v * VL) = acc[NV * r + v];
}

/* rows per micro-block for NV vectors of columns: each k step loads NV vectors and R scalars for R * NV FMAs */
static inline int rows_for(int nv) { return nv <= 2 ? 8 : nv == 3 ? 6 : 4; }

/* c [M, N] (+)= a [M, K] b [K, N], N a multiple of VL; a(r, k) = a[r * ar + k * ak], b rows ldb apart, c rows ldc
 * apart. Column blocks of 64 outer, so a block of b stays in L1 while the rows pass over it. */
static inline void gemm(int64_t M, int64_t N, int64_t K, const float *a, int64_t ar, int64_t ak, const float *b,
                 int64_t ldb, float *c, int64_t ldc, int add) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!add)
            for (int64_t r = 0; r < M; r++) memset(c + r * ldc, 0, N * sizeof(float));
        return;
    }
    for (int64_t n0 = 0; n0 < N; n0 += 4 * VL) {
        const int nv = (N - n0) / VL < 4 ? (int)((N - n0) / VL) : 4, rmax = rows_for(nv);
        for (int64_t r0 = 0; r0 < M; r0 += rmax) {
            const int R = M - r0 < rmax ? (int)(M - r0) : rmax;
            const float *ap = a + r0 * ar;
            const float *bp = b + n0;
            float *cp = c + r0 * ldc + n0;
            switch (R * 8 + nv) {
#define MK_CASE(RR, NN) case RR * 8 + NN: mk(RR, NN, ap, ar, ak, bp, ldb, K, cp, ldc, add); break;
                MK_CASE(1, 1) MK_CASE(2, 1) MK_CASE(3, 1) MK_CASE(4, 1)
                MK_CASE(5, 1) MK_CASE(6, 1) MK_CASE(7, 1) MK_CASE(8, 1)
                MK_CASE(1, 2) MK_CASE(2, 2) MK_CASE(3, 2) MK_CASE(4, 2)
                MK_CASE(5, 2) MK_CASE(6, 2) MK_CASE(7, 2) MK_CASE(8, 2)
                MK_CASE(1, 3) MK_CASE(2, 3) MK_CASE(3, 3) MK_CASE(4, 3) MK_CASE(5, 3) MK_CASE(6, 3)
                MK_CASE(1, 4) MK_CASE(2, 4) MK_CASE(3, 4) MK_CASE(4, 4)
#undef MK_CASE
            }
        }
    }
}

#endif
