/* Paged decode attention on CPU: the batched path of r1kit/ops/paged_attention.py for both cache layouts, over an
 * fp32 or a bf16 cache (a bf16 model's; widened to fp32 as it loads), with fp32 queries, softmax and outputs.
 *
 * Each row (a decode token) attends with its query heads over the first lens[row] tokens of its sequence, whose K/V
 * live in blocks listed by the row's block table. Query heads g * group .. (g + 1) * group - 1 share kv head g.
 * - GQA (Llama / Qwen): cache [num_blocks, bs, 2, hkv, d]; kv head g's key is at token offset g * d, its value at
 *   (hkv + g) * d.
 * - MLA (DeepSeek-V3), after weight absorption: cache [num_blocks, bs, R + rope], one "kv head" (multi-query):
 *   the whole latent [c_kv | k_pe] is the key, its first R elements c_kv the value; queries are absorbed [R + rope]
 *   and the output [R] is the probability-weighted latent (W_UV is applied afterwards in torch).
 *
 * Why C: in torch the rows' contexts are first gathered block by block into one padded [N, L_max, ...] copy (a few
 * MB per layer at every decode step), then masked. Here each row reads its blocks in place through its table,
 * exactly lens[row] keys, each once for the query heads that share it; the scores of one (row, kv head) stay in
 * cache-sized scratch. (row, kv head) items are spread over the threads (OpenMP).
 */
#include "dots.h"
#include "kernels.h"

/* Paged attention of one sequence's query heads: softmax(scale * q . key_j) over its first len tokens, then
 * out[hh] = sum_j p[hh, j] * value_j. Token j lives in block table[j / bs] at offset j % bs of a cache whose tokens
 * are ts elements apart; its key is the d elements at kv + (block * bs + offset) * ts, its value the dv elements at
 * the same place from vv (MLA: the latent is both, values its first R; GQA: one kv head's K and V). The cache is
 * fp32, or bf16 when kvbf16 (widened to fp32 as it loads); q, scores and out are fp32.
 * scores: float[h * len] scratch. Keys are read in place, once for all h heads. */
static inline __attribute__((always_inline)) void paged_attend(const int kvbf16, const float *const *q, int64_t h,
                                                              const void *kv, const void *vv, int64_t ts,
                                                              const int64_t *table, int64_t bs, int64_t len,
                                                              int64_t d, int64_t dv, float scale, float *scores,
                                                              float *const *out) {
    float *sh[64];
    for (int64_t h0 = 0; h0 < h; h0 += 64) {  /* heads in chunks of 64 (pointer arrays on the stack) */
        const int64_t hn = h - h0 < 64 ? h - h0 : 64;
        for (int64_t j0 = 0; j0 < len; j0 += bs) {  /* scores of one block's keys */
            if (j0 + bs < len) {  /* fetch the next block (anywhere in the cache) while this one computes: 8% */
                const int64_t nxt = len - j0 - bs < bs ? len - j0 - bs : bs;
                for (int64_t t = 0; t < nxt; t++)
                    prefetch_rows(kvbf16, elem(kvbf16, kv, (table[j0 / bs + 1] * bs + t) * ts), 1, d);
            }
            for (int64_t hh = 0; hh < hn; hh++) sh[hh] = scores + (h0 + hh) * len + j0;
            dots_w(kvbf16, q + h0, (int)hn, elem(kvbf16, kv, table[j0 / bs] * bs * ts), ts,
                   len - j0 < bs ? len - j0 : bs, d, sh);
        }
    }
    for (int64_t hh = 0; hh < h; hh++) {  /* softmax over the keys (max from a real score: no -inf under fast-math) */
        float *s = scores + hh * len, mx = s[0] * scale, sum = 0.f;
        for (int64_t j = 1; j < len; j++) mx = s[j] * scale > mx ? s[j] * scale : mx;
        for (int64_t j = 0; j < len; j++) sum += (s[j] = expf(s[j] * scale - mx));
        const float inv = 1.f / sum;
        for (int64_t j = 0; j < len; j++) s[j] *= inv;
    }
    /* out = p @ values: 4 heads x 2 vectors of out accumulate while the values stream past (2 loads and 4
     * broadcasts feed 8 FMAs); then 4 heads x 1 vector; scalar only when dv < VL */
    for (int64_t h0 = 0; h0 < h; h0 += 4) {
        const int64_t hn = h - h0 < 4 ? h - h0 : 4;
        const float *ph[4];
        for (int q_ = 0; q_ < 4; q_++) ph[q_] = scores + (h0 + (q_ < hn ? q_ : 0)) * len;  /* missing: unstored */
        int64_t c0 = 0;
        for (; c0 + 2 * VL <= dv; c0 += 2 * VL) {
            vf acc[4][2] = {{{0}}};
            for (int64_t j0 = 0; j0 < len; j0 += bs) {
                const void *blk = elem(kvbf16, vv, table[j0 / bs] * bs * ts + c0);
                const int64_t jn = len - j0 < bs ? len - j0 : bs;
                for (int64_t t = 0; t < jn; t++) {
                    const vf l0 = load_w(kvbf16, blk, t * ts), l1 = load_w(kvbf16, blk, t * ts + VL);
                    for (int q_ = 0; q_ < 4; q_++) {
                        acc[q_][0] += ph[q_][j0 + t] * l0;
                        acc[q_][1] += ph[q_][j0 + t] * l1;
                    }
                }
            }
            for (int q_ = 0; q_ < hn; q_++) {
                *(vf_u *)(out[h0 + q_] + c0) = acc[q_][0];
                *(vf_u *)(out[h0 + q_] + c0 + VL) = acc[q_][1];
            }
        }
        /* then single vectors; a tail of dv % VL columns (dv >= VL) runs as the vector over the last VL columns:
         * the columns it shares with the ones already done get the same sums again */
        for (; c0 < dv && dv >= VL; c0 += VL) {
            if (c0 > dv - VL) c0 = dv - VL;
            vf acc[4] = {{0}};
            for (int64_t j0 = 0; j0 < len; j0 += bs) {
                const void *blk = elem(kvbf16, vv, table[j0 / bs] * bs * ts + c0);
                const int64_t jn = len - j0 < bs ? len - j0 : bs;
                for (int64_t t = 0; t < jn; t++) {
                    const vf l0 = load_w(kvbf16, blk, t * ts);
                    for (int q_ = 0; q_ < 4; q_++) acc[q_] += ph[q_][j0 + t] * l0;
                }
            }
            for (int q_ = 0; q_ < hn; q_++) *(vf_u *)(out[h0 + q_] + c0) = acc[q_];
        }
        if (c0 < dv) {
            float acc[4][VL] = {{0}};
            for (int64_t j0 = 0; j0 < len; j0 += bs) {
                const void *blk = elem(kvbf16, vv, table[j0 / bs] * bs * ts);
                const int64_t jn = len - j0 < bs ? len - j0 : bs;
                for (int64_t t = 0; t < jn; t++)
                    for (int q_ = 0; q_ < 4; q_++)
                        for (int64_t c = c0; c < dv; c++)
                            acc[q_][c - c0] += ph[q_][j0 + t] * scalar_w(kvbf16, blk, t * ts + c);
            }
            for (int q_ = 0; q_ < hn; q_++)
                for (int64_t c = c0; c < dv; c++) out[h0 + q_][c] = acc[q_][c - c0];
        }
    }
}

/* Whether every row's length fits its table and every block id it reads is in [0, num_blocks): 0 if so. */
static int check_tables(const int64_t *tables, const int64_t *lens, int64_t n, int64_t bs, int64_t nblk,
                        int64_t num_blocks) {
    for (int64_t row = 0; row < n; row++) {
        if (lens[row] < 1 || lens[row] > nblk * bs) return -1;
        for (int64_t b = 0; b < (lens[row] + bs - 1) / bs; b++)
            if (tables[row * nblk + b] < 0 || tables[row * nblk + b] >= num_blocks) return -1;
    }
    return 0;
}

/* q [n, hq, d], out [n, hq, dv] (fp32); token j of a row lives in block tables[row, j / bs] at offset j % bs, a
 * token is ts elements, kv head g's key starts kv_stride * g elements into it in k and its value kv_stride * g
 * elements into it in v (GQA: k = cache, v = cache + hkv * d, kv_stride = d; MLA: hkv = 1, k = v = cache); the
 * cache is fp32, or bf16 when kvbf16. Returns 0, or -1 on a block id or length out of range or out of memory. */
static inline __attribute__((always_inline)) int paged_decode(const int kvbf16, const float *q, const void *k,
                                                             const void *v, const int64_t *tables,
                                                             const int64_t *lens, float *out, int64_t n, int64_t hq,
                                                             int64_t hkv, int64_t d, int64_t dv, int64_t ts,
                                                             int64_t kv_stride, int64_t bs, int64_t nblk,
                                                             int64_t num_blocks, float scale, int threads) {
    if (check_tables(tables, lens, n, bs, nblk, num_blocks) != 0) return -1;
    const int64_t group = hq / hkv;
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        float *scores = malloc(group * nblk * bs * sizeof(float));  /* [group, L] of the current item */
        const float **qh = malloc(group * sizeof(float *));
        float **oh = malloc(group * sizeof(float *));
        if (!scores || !qh || !oh) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < n * hkv; item++) {
            if (!scores || !qh || !oh) continue;
            const int64_t row = item / hkv, g = item % hkv;
            for (int64_t i = 0; i < group; i++) {
                qh[i] = q + (row * hq + g * group + i) * d;
                oh[i] = out + (row * hq + g * group + i) * dv;
            }
            paged_attend(kvbf16, qh, group, elem(kvbf16, k, g * kv_stride), elem(kvbf16, v, g * kv_stride), ts,
                         tables + row * nblk, bs, lens[row], d, dv, scale, scores, oh);
        }
        free(scores);
        free(qh);
        free(oh);
    }
    return failed ? -1 : 0;
}

int paged_decode_f32(const float *q, const float *k, const float *v, const int64_t *tables, const int64_t *lens,
                     float *out, int64_t n, int64_t hq, int64_t hkv, int64_t d, int64_t dv, int64_t ts,
                     int64_t kv_stride, int64_t bs, int64_t nblk, int64_t num_blocks, float scale, int threads) {
    return paged_decode(0, q, k, v, tables, lens, out, n, hq, hkv, d, dv, ts, kv_stride, bs, nblk, num_blocks,
                        scale, threads);
}

/* the same over a bf16 cache (uint16 bit patterns); q and out stay fp32 */
int paged_decode_bf16kv(const float *q, const uint16_t *k, const uint16_t *v, const int64_t *tables,
                        const int64_t *lens, float *out, int64_t n, int64_t hq, int64_t hkv, int64_t d, int64_t dv,
                        int64_t ts, int64_t kv_stride, int64_t bs, int64_t nblk, int64_t num_blocks, float scale,
                        int threads) {
    return paged_decode(1, q, k, v, tables, lens, out, n, hq, hkv, d, dv, ts, kv_stride, bs, nblk, num_blocks,
                        scale, threads);
}
