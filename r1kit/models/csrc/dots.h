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

#define SHUF __builtin_shufflevector

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

/* o[r][j] = dot(a[r], wt[j]) for r < rows (<= 4), j < cols; the dots run over len floats, and row j of wt starts
 * at wt + j * ws. A 4 x 4 block of dot products per pass: 8 vector loads feed 16 FMAs. Missing rows (rows < 4)
 * recompute row 0 unstored. */
static void dots4(const float *const *a_in, int rows, const float *wt, int64_t ws, int64_t cols, int64_t len,
                  float *const *o) {
    const int64_t lv = len - len % VL;
    /* a tail of len % VL floats (len >= VL) runs as one more vector over the last VL floats, with the a-lanes that
     * the full vectors already covered zeroed: no scalar loop */
    const int vtail = lv < len && len >= VL;
    const float *a[4];
    vf at[4] = {{0}};
    for (int r = 0; r < 4; r++) {
        a[r] = a_in[r < rows ? r : 0];
        if (vtail)
            for (int l = 0; l < VL; l++) at[r][l] = len - VL + l < lv ? 0.f : a[r][len - VL + l];
    }
    int64_t j0 = 0;
    for (; j0 + 4 <= cols; j0 += 4) {
        vf acc[16] = {{0}};  /* acc[4 * j + r]: row r, column j0 + j */
        for (int64_t c = 0; c < lv; c += VL) {
            vf av[4];
            for (int r = 0; r < 4; r++) av[r] = *(const vf_u *)(a[r] + c);
            for (int j = 0; j < 4; j++) {
                vf wv = *(const vf_u *)(wt + (j0 + j) * ws + c);
                for (int r = 0; r < 4; r++) acc[4 * j + r] += av[r] * wv;
            }
        }
        if (vtail)
            for (int j = 0; j < 4; j++) {
                vf wv = *(const vf_u *)(wt + (j0 + j) * ws + len - VL);
                for (int r = 0; r < 4; r++) acc[4 * j + r] += at[r] * wv;
            }
        vf sum = reduce16(acc);
        for (int j = 0; j < 4; j++)
            for (int r = 0; r < rows; r++) {
                float t = sum[4 * j + r];
                if (!vtail)
                    for (int64_t c = lv; c < len; c++) t += a[r][c] * wt[(j0 + j) * ws + c];
                o[r][j0 + j] = t;
            }
    }
    for (; j0 < cols; j0++)  /* leftover columns (cols % 4) */
        for (int r = 0; r < rows; r++) {
            float t = 0.f;
            for (int64_t c = 0; c < len; c++) t += a[r][c] * wt[j0 * ws + c];
            o[r][j0] = t;
        }
}

/* dots4 over any number of rows, four at a time, in blocks of 16 columns: a block's weight rows stay in L1/L2
 * while every row group passes over them, so the weights are read from memory once, not once per 4 rows */
static void dots(const float *const *a, int rows, const float *wt, int64_t ws, int64_t cols, int64_t len,
                 float *const *o) {
    float *ob[4];
    for (int64_t j0 = 0; j0 < cols; j0 += 16) {
        const int64_t jn = cols - j0 < 16 ? cols - j0 : 16;
        for (int r0 = 0; r0 < rows; r0 += 4) {
            const int rn = rows - r0 < 4 ? rows - r0 : 4;
            for (int r = 0; r < rn; r++) ob[r] = o[r0 + r] + j0;
            dots4(a + r0, rn, wt + j0 * ws, ws, jn, len, ob);
        }
    }
}

#endif
