/* The memory-bound steps around the routed experts' matmuls in training (r1kit/ops/experts.py), CPU fp32.
 *
 * A training forward of the routed experts sorts the N*K (token, slot) pairs by expert, gathers x's rows in that
 * order, runs two matmuls per expert (torch / MKL), applies the SwiGLU activation and sums each token's K output
 * rows; the backward mirrors it. As torch ops the steps between the matmuls cost a third of the experts' time on a
 * 2-core CPU (small preset, 2,216 tokens, 8 of 64 experts): a comparison sort, single-threaded gathers into freshly
 * faulted pages, three elementwise passes over strided halves of the [M, 2I] pre-activations, an accumulating
 * index_add_ into a zeroed output. Here each is one pass, the rows split over the threads (static schedule, fixed
 * summation order: results do not depend on the thread count).
 */
#include "dots.h"
#include "kernels.h"

/* Stable counting sort of the expert ids idx[m] (values in [0, e)): order[r] = the pair in sorted row r, pos[p] =
 * the sorted row of pair p (order's inverse), counts[e]. Returns -1 on an id out of range or no memory. */
int expert_order(const int64_t *idx, int64_t m, int64_t e, int64_t *order, int64_t *pos, int64_t *counts) {
    int64_t *next = malloc((e > 0 ? e : 1) * sizeof(int64_t));
    if (!next) return -1;
    memset(counts, 0, e * sizeof(int64_t));
    for (int64_t p = 0; p < m; p++) {
        if (idx[p] < 0 || idx[p] >= e) { free(next); return -1; }
        counts[idx[p]]++;
    }
    for (int64_t x = 0, s = 0; x < e; s += counts[x], x++) next[x] = s;
    for (int64_t p = 0; p < m; p++) {
        const int64_t r = next[idx[p]]++;
        order[r] = p;
        pos[p] = r;
    }
    free(next);
    return 0;
}

/* dst[r] = src[index[r] / div] for r < m: rows of d floats (div = K turns a (token, slot) pair into its token) */
void gather_rows_f32(const float *src, const int64_t *index, int64_t div, float *dst, int64_t m, int64_t d,
                     int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < m; r++) memcpy(dst + r * d, src + (index[r] / div) * d, d * sizeof(float));
}

/* act_w[r, c] = silu(h[r, c]) * h[r, i + c] * w[order[r]]: SwiGLU of the [gate | up] pre-activations, scaled by
 * the row's routing weight (w in (token, slot) order) */
void swiglu_fwd_f32(const float *h, const float *w, const int64_t *order, float *act_w, int64_t m, int64_t i,
                    int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < m; r++) {
        const float *g = h + r * 2 * i, *u = g + i;
        const float wr = w[order[r]];
        float *a = act_w + r * i;
        for (int64_t c = 0; c < i; c++) a[c] = g[c] * sigmoid_f32(g[c]) * u[c] * wr;
    }
}

/* Backward of swiglu_fwd_f32, given d_act_w [m, i]: d_h [m, 2i] = [d gate | d up] and the routing weights'
 * gradient d_w[order[r]] = sum_c d_act_w[r, c] * silu(g) * u (written in (token, slot) order). silu is recomputed
 * from h rather than saved: one expf per element, less memory held between forward and backward. */
void swiglu_bwd_f32(const float *h, const float *w, const int64_t *order, const float *d_act_w, float *d_h,
                    float *d_w, int64_t m, int64_t i, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < m; r++) {
        const float *g = h + r * 2 * i, *u = g + i, *da = d_act_w + r * i;
        float *dg = d_h + r * 2 * i, *du = dg + i;
        const float wr = w[order[r]];
        float dw = 0.f;
        for (int64_t c = 0; c < i; c++) {
            const float s = sigmoid_f32(g[c]), silu = g[c] * s, d = da[c] * wr;
            dw += da[c] * silu * u[c];
            du[c] = d * silu;
            dg[c] = d * u[c] * s * (1.f + g[c] * (1.f - s));  /* silu'(g) = s (1 + g (1 - s)) */
        }
        d_w[order[r]] = dw;
    }
}

/* out[t] = sum_j rows[pos[t * k + j]] for t < n, j < k: each token's K rows (sorted by expert) summed in slot
 * order */
void token_sums_f32(const float *rows, const int64_t *pos, float *out, int64_t n, int64_t k, int64_t d,
                    int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < n; t++) {
        float *o = out + t * d;
        if (k == 0) { memset(o, 0, d * sizeof(float)); continue; }
        memcpy(o, rows + pos[t * k] * d, d * sizeof(float));
        for (int64_t j = 1; j < k; j++) {
            const float *src = rows + pos[t * k + j] * d;
            for (int64_t c = 0; c < d; c++) o[c] += src[c];
        }
    }
}
