/* Routed SwiGLU experts for decode-sized batches on CPU, inference only: fp32 arithmetic over fp32 or bf16 weights.
 *
 * Same contract as r1kit.models.grouped_experts.routed_swiglu (see its docstring):
 *   out[n] = sum_k w[n,k] * down[e] @ (silu(gate_up[e, :I] @ x[n]) * (gate_up[e, I:] @ x[n])),  e = idx[n,k]
 *
 * Why C: in a decode step each expert gets a handful of rows, so the work per expert is two tiny matmuls. Run from
 * Python those cost ~20 us each in call and threading overhead, ~60 experts x 2 per layer. Here the (expert, row
 * tile) work items are spread over the threads with OpenMP (each item single-threaded, no per-matmul fork/join),
 * and each weight row is read once per tile of up to TILE rows. The weights keep their training layout
 * (gate_up [E, 2I, D], down [E, D, I], rows contiguous), so every output element is a dot product along a
 * contiguous row: the live policy weights are used as they are, nothing is repacked.
 *
 * Built on first use by r1kit/models/native.py with the system C compiler (-O3 -march=native -fopenmp); vectors
 * are GCC/Clang vector extensions, lowered to AVX-512, AVX2 or NEON by the compiler.
 */
#include "dots.h"

#define MAX_TILE 64  /* most rows per work item (the tile argument is clamped to it) */

/* x [n, d], idx/w [n, k], gate_up [e, 2i, d], down [e, d, i] -> out [n, d]. work: float[n * k * d] scratch.
 * The weights are fp32, or bf16 when wbf16 (then read at half the memory traffic and widened to fp32 as they load;
 * activations and sums stay fp32). Returns 0, or -1 when an expert id is out of range or memory runs out (out is
 * then not written). */
static inline __attribute__((always_inline)) int routed_swiglu(const int wbf16, const float *x, const int64_t *idx,
                                                              const float *w, const void *gate_up, const void *down,
                                                              float *out, float *work, int64_t n, int64_t k,
                                                              int64_t e, int64_t d, int64_t i, int tile,
                                                              int threads) {
    const int TILE = tile < 1 ? 1 : tile > MAX_TILE ? MAX_TILE : tile;
    const int64_t m = n * k;
    int64_t *count = calloc(e + 1, sizeof(int64_t)), *order = malloc(m * sizeof(int64_t));
    int64_t *items = malloc((m + e) * 2 * sizeof(int64_t));  /* (first sorted row, rows) per work item */
    if (!count || !order || !items) { free(count); free(order); free(items); return -1; }
    for (int64_t p = 0; p < m; p++) {
        if (idx[p] < 0 || idx[p] >= e) { free(count); free(order); free(items); return -1; }
        count[idx[p] + 1]++;
    }
    for (int64_t x_ = 0; x_ < e; x_++) count[x_ + 1] += count[x_];  /* count[x_]: first sorted row of expert x_ */
    int64_t *fill = malloc(e * sizeof(int64_t));
    if (!fill) { free(count); free(order); free(items); return -1; }
    memcpy(fill, count, e * sizeof(int64_t));
    for (int64_t p = 0; p < m; p++) order[fill[idx[p]]++] = p;  /* stable counting sort by expert */
    free(fill);
    int64_t n_items = 0;
    for (int64_t x_ = 0; x_ < e; x_++)
        for (int64_t s = count[x_]; s < count[x_ + 1]; s += TILE) {
            items[2 * n_items] = s;
            items[2 * n_items + 1] = count[x_ + 1] - s < TILE ? count[x_ + 1] - s : TILE;
            n_items++;
        }

    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        float *h = malloc(TILE * 2 * i * sizeof(float)), *act = malloc(TILE * i * sizeof(float));
        if (!h || !act) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < n_items; it++) {
            if (!h || !act) continue;
            const int64_t s = items[2 * it];
            const int rows = (int)items[2 * it + 1];
            const int64_t ex = idx[order[s]];
            const float *xr[MAX_TILE], *ar[MAX_TILE];
            float *hr[MAX_TILE], *yr[MAX_TILE];
            for (int r = 0; r < rows; r++) {
                xr[r] = x + (order[s + r] / k) * d;  /* the row's token */
                hr[r] = h + r * 2 * i;
                ar[r] = act + r * i;
                yr[r] = work + order[s + r] * d;  /* the (token, slot) pair's own row: no two items share one */
            }
            dots_w(wbf16, xr, rows, elem(wbf16, gate_up, ex * 2 * i * d), d, 2 * i, d, hr);  /* [rows, 2I] */
            for (int r = 0; r < rows; r++) {
                const float wr = w[order[s + r]];  /* routing weight, applied on the narrow side (I < D) */
                for (int64_t c = 0; c < i; c++) {
                    const float g = hr[r][c];
                    act[r * i + c] = g * sigmoid_f32(g) * hr[r][i + c] * wr;
                }
            }
            dots_w(wbf16, ar, rows, elem(wbf16, down, ex * d * i), i, d, i, yr);  /* [rows, D] */
        }
        free(h);
        free(act);
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < n; t++) {  /* sum each token's k rows */
            float *o = out + t * d;
            memcpy(o, work + t * k * d, d * sizeof(float));
            for (int64_t j = 1; j < k; j++) {
                const float *src = work + (t * k + j) * d;
                for (int64_t c = 0; c < d; c++) o[c] += src[c];
            }
        }
    }
    free(count);
    free(order);
    free(items);
    return failed ? -1 : 0;
}


int routed_swiglu_f32(const float *x, const int64_t *idx, const float *w, const float *gate_up, const float *down,
                      float *out, float *work, int64_t n, int64_t k, int64_t e, int64_t d, int64_t i, int tile,
                      int threads) {
    return routed_swiglu(0, x, idx, w, gate_up, down, out, work, n, k, e, d, i, tile, threads);
}

/* the same with bf16 weights (uint16 bit patterns): x, w, out and work stay fp32 */
int routed_swiglu_bf16w(const float *x, const int64_t *idx, const float *w, const uint16_t *gate_up,
                        const uint16_t *down, float *out, float *work, int64_t n, int64_t k, int64_t e, int64_t d,
                        int64_t i, int tile, int threads) {
    return routed_swiglu(1, x, idx, w, gate_up, down, out, work, n, k, e, d, i, tile, threads);
}
