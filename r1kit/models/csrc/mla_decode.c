/* Multi-head latent attention over the paged latent cache for decode rows, on CPU, fp32.
 *
 * The batched path of r1kit.models.paged_attention.mla_paged_attention, after weight absorption: each row (a
 * decode token) has an absorbed query per head [H, R + rope] and attends, like multi-query attention, over the
 * latent [c_kv | k_pe] of its sequence's first lens[row] tokens; the output is the probability-weighted latent
 * c_kv [H, R] (W_UV is applied afterwards in torch).
 *
 * Why C: in torch the rows' contexts are first gathered block by block into one padded [N, L_max, R + rope] copy
 * (a few MB per layer at every decode step), then masked. Here each row reads its blocks in place through its block
 * table, exactly lens[row] keys, once per row for all heads, and the scores of one row stay in cache-sized scratch.
 * Rows are spread over the threads (OpenMP).
 */
#include "dots.h"

/* q [n, h, dk] (dk = R + rope), cache [num_blocks, bs, dk], tables [n, nblk] (block ids of each row's sequence),
 * lens [n] -> out [n, h, r]. Returns 0, or -1 on a block id or length out of range or out of memory. */
int mla_decode_f32(const float *q, const float *cache, const int64_t *tables, const int64_t *lens, float *out,
                   int64_t n, int64_t h, int64_t dk, int64_t r, int64_t bs, int64_t nblk, int64_t num_blocks,
                   float scale, int threads) {
    if (check_tables(tables, lens, n, bs, nblk, num_blocks) != 0) return -1;
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        float *scores = malloc(h * nblk * bs * sizeof(float));  /* [h, L] of the current row */
        const float **qh = malloc(h * sizeof(float *));
        float **oh = malloc(h * sizeof(float *));
        if (!scores || !qh || !oh) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (int64_t row = 0; row < n; row++) {
            if (!scores || !qh || !oh) continue;
            for (int64_t hh = 0; hh < h; hh++) {
                qh[hh] = q + (row * h + hh) * dk;
                oh[hh] = out + (row * h + hh) * r;
            }
            /* MQA over the latent: keys are the whole latent rows, values their first r floats */
            paged_attend(qh, h, cache, cache, dk, tables + row * nblk, bs, lens[row], dk, r, scale, scores, oh);
        }
        free(scores);
        free(qh);
        free(oh);
    }
    return failed ? -1 : 0;
}
