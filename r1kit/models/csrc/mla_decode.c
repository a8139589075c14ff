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

/* o[hh] = sum_j p[hh, j] * c_kv[j] for the h heads of one row: p [h, len] (probabilities), the row's keys read
 * block by block through its table. A register-blocked GEMM: 4 heads x 2 vectors of o accumulate while the
 * keys stream past (2 latent loads and 4 broadcasts feed 8 FMAs). */
static void weighted_latents(const float *p, int64_t len, const float *cache, const int64_t *table, int64_t bs,
                             int64_t dk, int64_t h, int64_t r, float *o) {
    const int64_t rv = r - r % (2 * VL);
    for (int64_t h0 = 0; h0 < h; h0 += 4) {
        const int64_t hn = h - h0 < 4 ? h - h0 : 4;
        const float *ph[4];
        for (int q = 0; q < 4; q++) ph[q] = p + (h0 + (q < hn ? q : 0)) * len;  /* missing heads: unstored */
        for (int64_t c0 = 0; c0 < rv; c0 += 2 * VL) {
            vf acc[4][2] = {{{0}}};
            for (int64_t j0 = 0; j0 < len; j0 += bs) {
                const float *blk = cache + table[j0 / bs] * bs * dk + c0;
                const int64_t jn = len - j0 < bs ? len - j0 : bs;
                for (int64_t t = 0; t < jn; t++) {
                    const vf l0 = *(const vf_u *)(blk + t * dk), l1 = *(const vf_u *)(blk + t * dk + VL);
                    for (int q = 0; q < 4; q++) {
                        const float pj = ph[q][j0 + t];
                        acc[q][0] += pj * l0;
                        acc[q][1] += pj * l1;
                    }
                }
            }
            for (int q = 0; q < hn; q++) {
                *(vf_u *)(o + (h0 + q) * r + c0) = acc[q][0];
                *(vf_u *)(o + (h0 + q) * r + c0 + VL) = acc[q][1];
            }
        }
        for (int64_t c = rv; c < r; c++)  /* leftover columns (r % 32) */
            for (int q = 0; q < hn; q++) {
                float t = 0.f;
                for (int64_t j = 0; j < len; j++) t += ph[q][j] * cache[(table[j / bs] * bs + j % bs) * dk + c];
                o[(h0 + q) * r + c] = t;
            }
    }
}

/* q [n, h, dk] (dk = R + rope), cache [num_blocks, bs, dk], tables [n, nblk] (block ids of each row's sequence),
 * lens [n] -> out [n, h, r]. Returns 0, or -1 on a block id or length out of range or out of memory. */
int mla_decode_f32(const float *q, const float *cache, const int64_t *tables, const int64_t *lens, float *out,
                   int64_t n, int64_t h, int64_t dk, int64_t r, int64_t bs, int64_t nblk, int64_t num_blocks,
                   float scale, int threads) {
    for (int64_t row = 0; row < n; row++) {
        if (lens[row] < 1 || lens[row] > nblk * bs) return -1;
        for (int64_t b = 0; b < (lens[row] + bs - 1) / bs; b++)
            if (tables[row * nblk + b] < 0 || tables[row * nblk + b] >= num_blocks) return -1;
    }
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        float *scores = malloc(h * nblk * bs * sizeof(float));  /* [h, L] of the current row */
        if (!scores) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (int64_t row = 0; row < n; row++) {
            if (!scores) continue;
            const int64_t len = lens[row];
            const float *qh[64];
            float *sh[64];
            float *o = out + row * h * r;
            for (int64_t h0 = 0; h0 < h; h0 += 64) {  /* heads in chunks of 64 (pointer arrays on the stack) */
                const int64_t hn = h - h0 < 64 ? h - h0 : 64;
                for (int64_t hh = 0; hh < hn; hh++) qh[hh] = q + (row * h + h0 + hh) * dk;
                for (int64_t j0 = 0; j0 < len; j0 += bs) {  /* scores of one block's keys: dots with its latents */
                    const float *blk = cache + tables[row * nblk + j0 / bs] * bs * dk;
                    for (int64_t hh = 0; hh < hn; hh++) sh[hh] = scores + (h0 + hh) * len + j0;
                    dots(qh, (int)hn, blk, len - j0 < bs ? len - j0 : bs, dk, sh);
                }
            }
            for (int64_t hh = 0; hh < h; hh++) {  /* softmax over the row's keys, normalised at the end */
                float *s = scores + hh * len, mx = s[0] * scale, sum = 0.f;
                for (int64_t j = 1; j < len; j++) mx = s[j] * scale > mx ? s[j] * scale : mx;
                for (int64_t j = 0; j < len; j++) sum += (s[j] = expf(s[j] * scale - mx));
                const float inv = 1.f / sum;
                for (int64_t j = 0; j < len; j++) s[j] *= inv;
            }
            weighted_latents(scores, len, cache, tables + row * nblk, bs, dk, h, r, o);
        }
        free(scores);
    }
    return failed ? -1 : 0;
}
