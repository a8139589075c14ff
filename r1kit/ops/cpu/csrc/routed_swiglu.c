/* Routed SwiGLU experts for decode-sized batches on CPU, inference only: fp32 arithmetic over fp32 or bf16 weights.
 *
 * Same contract as r1kit.ops.experts.routed_swiglu (see its docstring):
 *   out[n] = sum_k w[n,k] * down[e] @ (silu(gate_up[e, :I] @ x[n]) * (gate_up[e, I:] @ x[n])),  e = idx[n,k]
 *
 * Why C: in a decode step each expert gets a handful of rows, so the work per expert is two tiny matmuls. Run from
 * Python those cost ~20 us each in call and threading overhead, ~60 experts x 2 per layer. Here the (expert, row
 * tile) work items are spread over the threads with OpenMP (each item single-threaded, no per-matmul fork/join),
 * and each weight row is read once per tile of up to TILE rows. The weights keep their training layout
 * (gate_up [E, 2I, D], down [E, D, I], rows contiguous), so every output element is a dot product along a
 * contiguous row: the live policy weights are used as they are, nothing is repacked.
 *
 * Built on first use by r1kit/ops/cpu/library.py with the system C compiler (-O3 -march=native -fopenmp); vectors
 * are GCC/Clang vector extensions, lowered to AVX-512, AVX2 or NEON by the compiler.
 */
#include "dots.h"
#include "kernels.h"

#define MAX_TILE 64  /* most rows per work item (the tile argument is clamped to it) */

/* The work of one call: the (token, slot) pairs sorted by expert (a stable counting sort) and cut into work items of
 * at most TILE rows of one expert, each item (first sorted row, rows). */
typedef struct { int64_t *count, *order, *items, n_items; int tile; } plan;

static void plan_free(plan *p) { free(p->count); free(p->order); free(p->items); }

/* 0, or -1 when an expert id is out of range or memory runs out (nothing to free then). tile is clamped to
 * [1, MAX_TILE] into p->tile. */
static int plan_make(plan *p, const int64_t *idx, int64_t m, int64_t e, int tile) {
    tile = p->tile = tile < 1 ? 1 : tile > MAX_TILE ? MAX_TILE : tile;
    p->count = calloc(e + 1, sizeof(int64_t));
    p->order = malloc((m > 0 ? m : 1) * sizeof(int64_t));
    p->items = malloc((m + e) * 2 * sizeof(int64_t));
    int64_t *fill = malloc(e * sizeof(int64_t));
    int ok = p->count && p->order && p->items && fill;
    for (int64_t q = 0; ok && q < m; q++) {
        if (idx[q] < 0 || idx[q] >= e) ok = 0;
        else p->count[idx[q] + 1]++;
    }
    if (!ok) { free(fill); plan_free(p); return -1; }
    for (int64_t x = 0; x < e; x++) p->count[x + 1] += p->count[x];  /* count[x]: first sorted row of expert x */
    memcpy(fill, p->count, e * sizeof(int64_t));
    for (int64_t q = 0; q < m; q++) p->order[fill[idx[q]]++] = q;
    free(fill);
    p->n_items = 0;
    for (int64_t x = 0; x < e; x++)
        for (int64_t s = p->count[x]; s < p->count[x + 1]; s += tile) {
            p->items[2 * p->n_items] = s;
            p->items[2 * p->n_items + 1] = p->count[x + 1] - s < tile ? p->count[x + 1] - s : tile;
            p->n_items++;
        }
    return 0;
}

/* out[t] = sum of token t's k rows of work (inside a parallel region) */
static inline void sum_slots(const float *work, float *out, int64_t n, int64_t k, int64_t d) {
    #pragma omp for schedule(static)
    for (int64_t t = 0; t < n; t++) {
        float *o = out + t * d;
        memcpy(o, work + t * k * d, d * sizeof(float));
        for (int64_t j = 1; j < k; j++) {
            const float *src = work + (t * k + j) * d;
            for (int64_t c = 0; c < d; c++) o[c] += src[c];
        }
    }
}

/* How the weights are stored: as trained ([out, in] rows, fp32 or bf16) or as column-blocked fp32 copies */
enum { W_F32, W_BF16, W_BLOCKED };

/* x [n, d], idx/w [n, k], gate_up [e, 2i, d], down [e, d, i] -> out [n, d]. work: float[n * k * d] scratch.
 * W_F32 / W_BF16: the weights as trained, fp32 or bf16 (bf16 is read at half the memory traffic and widened to fp32
 * as it loads; activations and sums stay fp32), each output a dot product along a weight row (dots_w).
 * W_BLOCKED: fp32 copies in column blocks, gate_up [e, 2i/32, d, 32] and down [e, d/32, i, 32] (block jb holds
 * outputs 32 jb .. 32 jb + 31, input-major): an item gathers its tokens' rows and runs two register-blocked products
 * (dots.h's gemm) that stream each block front to back: no lane sums, and a layout the hardware prefetcher follows.
 * Half the time of W_F32 for 64 tokens on the small preset, seven layers' weights cycling; the blocks are a
 * transposed copy of the weights (r1kit/ops/cpu/weight_blocks.py).
 * Returns 0, or -1 when an expert id is out of range or memory runs out (out is then not written). */
static inline __attribute__((always_inline)) int routed_swiglu(const int layout, const float *x, const int64_t *idx,
                                                              const float *w, const void *gate_up, const void *down,
                                                              float *out, float *work, int64_t n, int64_t k,
                                                              int64_t e, int64_t d, int64_t i, int tile,
                                                              int threads) {
    const int wbf16 = layout == W_BF16, blocked = layout == W_BLOCKED;
    plan p;
    if (plan_make(&p, idx, n * k, e, tile)) return -1;
    const int64_t *order = p.order, *items = p.items;
    const int TILE = p.tile;
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        float *h = malloc(TILE * 2 * i * sizeof(float)), *act = malloc(TILE * i * sizeof(float));
        float *xb = blocked ? malloc(TILE * d * sizeof(float)) : NULL;  /* gathered rows, then the outputs */
        const int ok = h && act && (xb || !blocked);
        if (!ok) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < p.n_items; it++) {
            if (!ok) continue;
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
            if (blocked) {  /* h [rows, 2I] */
                for (int r = 0; r < rows; r++) memcpy(xb + r * d, xr[r], d * sizeof(float));
                for (int64_t jb = 0; jb < 2 * i / 32; jb++)
                    gemm(rows, 32, d, xb, d, 1, (const float *)gate_up + (ex * 2 * i + jb * 32) * d, 32, h + jb * 32,
                         2 * i, 0);
            } else {
                dots_w(wbf16, xr, rows, elem(wbf16, gate_up, ex * 2 * i * d), d, 2 * i, d, hr);
            }
            for (int r = 0; r < rows; r++) {
                const float wr = w[order[s + r]];  /* routing weight, applied on the narrow side (I < D) */
                for (int64_t c = 0; c < i; c++) {
                    const float g = hr[r][c];
                    act[r * i + c] = g * sigmoid_f32(g) * hr[r][i + c] * wr;
                }
            }
            if (blocked) {  /* [rows, D] into xb, then each row to its pair's row of work */
                for (int64_t jb = 0; jb < d / 32; jb++)
                    gemm(rows, 32, i, act, i, 1, (const float *)down + (ex * d + jb * 32) * i, 32, xb + jb * 32, d, 0);
                for (int r = 0; r < rows; r++) memcpy(yr[r], xb + r * d, d * sizeof(float));
            } else {
                dots_w(wbf16, ar, rows, elem(wbf16, down, ex * d * i), i, d, i, yr);
            }
        }
        free(h);
        free(act);
        free(xb);
        sum_slots(work, out, n, k, d);
    }
    plan_free(&p);
    return failed ? -1 : 0;
}


int routed_swiglu_f32(const float *x, const int64_t *idx, const float *w, const float *gate_up, const float *down,
                      float *out, float *work, int64_t n, int64_t k, int64_t e, int64_t d, int64_t i, int tile,
                      int threads) {
    return routed_swiglu(W_F32, x, idx, w, gate_up, down, out, work, n, k, e, d, i, tile, threads);
}

/* the same with bf16 weights (uint16 bit patterns): x, w, out and work stay fp32 */
int routed_swiglu_bf16w(const float *x, const int64_t *idx, const float *w, const uint16_t *gate_up,
                        const uint16_t *down, float *out, float *work, int64_t n, int64_t k, int64_t e, int64_t d,
                        int64_t i, int tile, int threads) {
    return routed_swiglu(W_BF16, x, idx, w, gate_up, down, out, work, n, k, e, d, i, tile, threads);
}

/* the same over fp32 column-blocked copies gate_up_b [e, 2i/32, d, 32], down_b [e, d/32, i, 32] (see above) */
int routed_swiglu_blocked_f32(const float *x, const int64_t *idx, const float *w, const float *gate_up_b,
                              const float *down_b, float *out, float *work, int64_t n, int64_t k, int64_t e,
                              int64_t d, int64_t i, int tile, int threads) {
    return routed_swiglu(W_BLOCKED, x, idx, w, gate_up_b, down_b, out, work, n, k, e, d, i, tile, threads);
}
