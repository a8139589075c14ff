/* Grouped-query attention over the paged K/V cache for decode rows, on CPU, fp32.
 *
 * The batched path of r1kit.models.paged_attention.gqa_paged_attention (Llama / Qwen models): each row (a decode
 * token) attends with its hq query heads over the first lens[row] tokens of its sequence; query heads
 * g * group .. (g + 1) * group - 1 share kv head g. Like mla_decode.c, each row reads its blocks in place through
 * its block table (torch first gathers every row's context into a padded copy), each key once for the query heads
 * that share it. Work items are (row, kv head) pairs, spread over the threads (OpenMP).
 */
#include "dots.h"

/* q [n, hq, d], cache [num_blocks, bs, 2, hkv, d] (K then V), tables [n, nblk], lens [n] -> out [n, hq, d].
 * Returns 0, or -1 on a block id or length out of range or out of memory. */
int gqa_decode_f32(const float *q, const float *cache, const int64_t *tables, const int64_t *lens, float *out,
                   int64_t n, int64_t hq, int64_t hkv, int64_t d, int64_t bs, int64_t nblk, int64_t num_blocks,
                   float scale, int threads) {
    if (check_tables(tables, lens, n, bs, nblk, num_blocks) != 0) return -1;
    const int64_t group = hq / hkv, ts = 2 * hkv * d;  /* floats per cached token */
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        float *scores = malloc(group * nblk * bs * sizeof(float));
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
                oh[i] = out + (row * hq + g * group + i) * d;
            }
            paged_attend(qh, group, cache + g * d, cache + (hkv + g) * d, ts, tables + row * nblk, bs, lens[row],
                         d, d, scale, scores, oh);
        }
        free(scores);
        free(qh);
        free(oh);
    }
    return failed ? -1 : 0;
}
