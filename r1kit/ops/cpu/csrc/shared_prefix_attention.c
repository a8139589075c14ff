/* Training attention over GRPO's shared-prefix rows on CPU, fp32: forward and backward.
 *
 * Layout and semantics: r1kit/ops/attention.py (SharedPrefix). A row of batch b holds a prompt of P tokens (left
 * padding marked by valid[b, :]) followed by G completions of C tokens. Prompt query i attends to prompt keys
 * j <= i that are valid (a padding query to itself only); completion query i of completion g attends to every valid
 * prompt key and to keys 0..i of its own completion.
 *
 * Why C: torch's CPU flash attention runs these shapes at ~20-50 GFLOP/s, must be given the completions' keys as
 * copies (the prompt's keys repeated G times) and an explicit mask, and computes the masked upper triangle of each
 * completion. Here each (batch, head) is one work item: the prompt's keys are transposed once into a thread buffer
 * and serve the prompt and all G completions, masked blocks are skipped, and the products are register-blocked (up
 * to 8 rows x 2 vectors, 6 x 3 or 4 x 4 accumulators of 16 floats, fed by one broadcast per row and one load per
 * vector), so each vector load serves 4-8 FMAs. The backward recomputes the probabilities from the saved
 * log-sum-exp (as flash attention does) and accumulates the prompt keys' gradients over all queries of the item in
 * a thread buffer.
 *
 * Tensors are addressed through (batch, head, token) strides in floats with a contiguous last dimension; the head
 * dims (d for q/k, dv for v) must be multiples of 16 (the Python side checks and otherwise uses torch).
 */
#include "dots.h"
#include "kernels.h"

#define BLK 8           /* query rows per causal block: a block computes keys up to its last query */
#define NEG_BIG (-1e30f) /* masked score: exp underflows to 0 (no infinities under -ffast-math) */

typedef struct { const float *p; int64_t sb, sh, st; } view;  /* p + b * sb + h * sh + t * st */

static inline const float *row(view v, int64_t b, int64_t h, int64_t t) { return v.p + b * v.sb + h * v.sh + t * v.st; }
static inline int64_t ceil16(int64_t n) { return (n + VL - 1) / VL * VL; }

/* One segment of a (batch, head) item: m queries at tokens t0.., keys = n1 prompt keys (columns [0, n1) of the
 * transposed buffers; n1 = P for a completion, 0 for the prompt) then the segment's own keys (columns n1..). */
typedef struct {
    int64_t b, h, t0, m, n1;
    int prompt;  /* the prompt segment: own keys are the prompt's, masked by valid (a query always sees itself) */
} segment;

/* columns of S a block of rows [r0, r0 + R) needs: the prefix and own keys up to the block's last query */
static inline int64_t block_cols(const segment *s, int64_t r0, int R) { return s->n1 + r0 + R; }

/* S rows of the segment -> probabilities P (in place; zero where masked, up to each row block's columns), from
 * the scores S = Q K^T (computed here). With lse_in, P = exp(scale * S - lse) (backward); else the softmax, and
 * the log-sum-exp goes to lse_out. */
static void probabilities(const segment *s, view q, const float *kt, int64_t npad, int64_t d, float scale,
                          const uint8_t *valid, int64_t P, float *S, const float *lse_in, float *lse_out) {
    for (int64_t r0 = 0; r0 < s->m; r0 += BLK) {
        const int R = s->m - r0 < BLK ? (int)(s->m - r0) : BLK;
        const int64_t cols = block_cols(s, r0, R);
        gemm(R, ceil16(cols), d, row(q, s->b, s->h, s->t0 + r0), q.st, 1, kt, npad, S + r0 * npad, npad, 0);
        for (int r = 0; r < R; r++) {
            const int64_t i = r0 + r, lim = s->n1 + i + 1;  /* columns [lim, cols) are masked (causal) */
            float *x = S + i * npad;
            for (int64_t j = 0; j < lim; j++) x[j] *= scale;
            for (int64_t j = 0; j < s->n1; j++)
                if (!valid[s->b * P + j]) x[j] = NEG_BIG;
            if (s->prompt)
                for (int64_t j = 0; j < i; j++)
                    if (!valid[s->b * P + j]) x[j] = NEG_BIG;
            if (lse_in) {
                const float l = lse_in[i];
                for (int64_t j = 0; j < lim; j++) x[j] = expf(x[j] - l);
            } else {
                float mx = x[0], sum = 0.f;
                for (int64_t j = 1; j < lim; j++) mx = x[j] > mx ? x[j] : mx;
                for (int64_t j = 0; j < lim; j++) sum += (x[j] = expf(x[j] - mx));
                const float inv = 1.f / sum;
                for (int64_t j = 0; j < lim; j++) x[j] *= inv;
                lse_out[i] = mx + logf(sum);
            }
            for (int64_t j = lim; j < ceil16(cols); j++) x[j] = 0.f;
        }
    }
}

/* keys (or values) of tokens [t0, t0 + n) of (b, h), transposed into columns [c0, c0 + n) of buf [width, npad] */
static void transpose_in(view k, int64_t b, int64_t h, int64_t t0, int64_t n, int64_t width, float *buf,
                         int64_t npad, int64_t c0) {
    for (int64_t j = 0; j < n; j++) {
        const float *src = row(k, b, h, t0 + j);
        for (int64_t c = 0; c < width; c++) buf[c * npad + c0 + j] = src[c];
    }
}

static segment make_segment(int64_t b, int64_t h, int64_t g, int64_t P, int64_t C) {
    segment s = {b, h, 0, P, 0, 1};
    if (g >= 0) s = (segment){b, h, P + g * C, C, P, 0};
    return s;
}

/* q, k [B, H, L, d], v [B, H, L, dv] (strides qs/ks/vs/os: batch, head, token), valid [B, P] (uint8), L = P + G*C
 * -> out [B, H, L, dv] (strides os), lse [B, H, L] contiguous. Returns 0, or -1 when memory runs out. */
int sp_attention_fwd(const float *q, const float *k, const float *v, const uint8_t *valid, float *out, float *lse,
                     int64_t B, int64_t H, int64_t P, int64_t G, int64_t C, int64_t d, int64_t dv,
                     const int64_t *qs, const int64_t *ks, const int64_t *vs, const int64_t *os, float scale,
                     int threads) {
    const view qv = {q, qs[0], qs[1], qs[2]}, kv = {k, ks[0], ks[1], ks[2]}, vv = {v, vs[0], vs[1], vs[2]};
    const view ov = {out, os[0], os[1], os[2]};
    const int64_t L = P + G * C, npad = ceil16(P + C), mmax = P > C ? P : C;
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        float *kt = calloc(d * npad, sizeof(float)), *S = calloc(mmax * npad, sizeof(float));
        if (!kt || !S) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < B * H; item++) {
            if (!kt || !S) continue;
            const int64_t b = item / H, h = item % H;
            transpose_in(kv, b, h, 0, P, d, kt, npad, 0);
            for (int64_t g = -1; g < G; g++) {
                const segment s = make_segment(b, h, g, P, C);
                if (g >= 0) transpose_in(kv, b, h, s.t0, C, d, kt, npad, P);
                probabilities(&s, qv, kt, npad, d, scale, valid, P, S, NULL, lse + item * L + s.t0);
                for (int64_t r0 = 0; r0 < s.m; r0 += BLK) {  /* O = P V: prefix keys, then own keys up to the block */
                    const int R = s.m - r0 < BLK ? (int)(s.m - r0) : BLK;
                    float *o = (float *)row(ov, b, h, s.t0 + r0);
                    gemm(R, dv, s.n1, S + r0 * npad, npad, 1, row(vv, b, h, 0), vv.st, o, ov.st, 0);
                    gemm(R, dv, r0 + R, S + r0 * npad + s.n1, npad, 1, row(vv, b, h, s.t0), vv.st, o, ov.st,
                         s.n1 > 0);
                }
            }
        }
        free(kt);
        free(S);
    }
    return failed ? -1 : 0;
}

/* The backward of sp_attention_fwd: go [B, H, L, dv] (strides gos) and the forward's out and lse -> dq, dk [B, H,
 * L, d], dv_ [B, H, L, dv] (strides dqs, dks, dvs), every element written. Returns 0, or -1 when memory runs out. */
int sp_attention_bwd(const float *q, const float *k, const float *v, const uint8_t *valid, const float *out,
                     const float *lse, const float *go, float *dq, float *dk, float *dv_, int64_t B, int64_t H,
                     int64_t P, int64_t G, int64_t C, int64_t d, int64_t dv, const int64_t *qs, const int64_t *ks,
                     const int64_t *vs, const int64_t *os, const int64_t *gos, const int64_t *dqs,
                     const int64_t *dks, const int64_t *dvs, float scale, int threads) {
    const view qv = {q, qs[0], qs[1], qs[2]}, kv = {k, ks[0], ks[1], ks[2]}, vv = {v, vs[0], vs[1], vs[2]};
    const view ov = {out, os[0], os[1], os[2]}, gv = {go, gos[0], gos[1], gos[2]};
    const view dqv = {dq, dqs[0], dqs[1], dqs[2]}, dkv = {dk, dks[0], dks[1], dks[2]};
    const view dvv = {dv_, dvs[0], dvs[1], dvs[2]};
    const int64_t L = P + G * C, npad = ceil16(P + C), mmax = P > C ? P : C;
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        float *kt = calloc(d * npad, sizeof(float)), *vt = calloc(dv * npad, sizeof(float));
        float *S = calloc(mmax * npad, sizeof(float)), *dS = calloc(mmax * npad, sizeof(float));
        float *dkp = malloc((P > 0 ? P : 1) * d * sizeof(float)), *dvp = malloc((P > 0 ? P : 1) * dv * sizeof(float));
        float *D = malloc(mmax * sizeof(float));
        if (!kt || !vt || !S || !dS || !dkp || !dvp || !D) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < B * H; item++) {
            if (!kt || !vt || !S || !dS || !dkp || !dvp || !D) continue;
            const int64_t b = item / H, h = item % H;
            memset(dkp, 0, P * d * sizeof(float));
            memset(dvp, 0, P * dv * sizeof(float));
            transpose_in(kv, b, h, 0, P, d, kt, npad, 0);
            transpose_in(vv, b, h, 0, P, dv, vt, npad, 0);
            for (int64_t g = -1; g < G; g++) {
                const segment s = make_segment(b, h, g, P, C);
                if (g >= 0) {
                    transpose_in(kv, b, h, s.t0, C, d, kt, npad, P);
                    transpose_in(vv, b, h, s.t0, C, dv, vt, npad, P);
                }
                for (int64_t i = 0; i < s.m; i++) {  /* D_i = dO_i . O_i */
                    const float *a = row(gv, b, h, s.t0 + i), *o = row(ov, b, h, s.t0 + i);
                    float t = 0.f;
                    for (int64_t c = 0; c < dv; c++) t += a[c] * o[c];
                    D[i] = t;
                }
                probabilities(&s, qv, kt, npad, d, scale, valid, P, S, lse + item * L + s.t0, NULL);
                for (int64_t r0 = 0; r0 < s.m; r0 += BLK) {  /* dS = P * (dO V^T - D) * scale */
                    const int R = s.m - r0 < BLK ? (int)(s.m - r0) : BLK;
                    const int64_t cols = ceil16(block_cols(&s, r0, R));
                    gemm(R, cols, dv, row(gv, b, h, s.t0 + r0), gv.st, 1, vt, npad, dS + r0 * npad, npad, 0);
                    for (int r = 0; r < R; r++) {
                        float *x = dS + (r0 + r) * npad;
                        const float *p = S + (r0 + r) * npad, di = D[r0 + r];
                        for (int64_t j = 0; j < cols; j++) x[j] = p[j] * (x[j] - di) * scale;
                    }
                }
                /* prompt keys seen by a completion (all of its queries): accumulate into dkp / dvp */
                gemm(s.n1, dv, s.m, S, 1, npad, row(gv, b, h, s.t0), gv.st, dvp, dv, 1);
                gemm(s.n1, d, s.m, dS, 1, npad, row(qv, b, h, s.t0), qv.st, dkp, d, 1);
                /* own keys j (the prompt's own keys are prompt keys: into dkp / dvp): queries i >= j only */
                for (int64_t j0 = 0; j0 < s.m; j0 += BLK) {
                    const int R = s.m - j0 < BLK ? (int)(s.m - j0) : BLK;
                    const int64_t a0 = j0 * npad + s.n1 + j0;
                    float *dvo = s.prompt ? dvp + j0 * dv : (float *)row(dvv, b, h, s.t0 + j0);
                    float *dko = s.prompt ? dkp + j0 * d : (float *)row(dkv, b, h, s.t0 + j0);
                    gemm(R, dv, s.m - j0, S + a0, 1, npad, row(gv, b, h, s.t0 + j0), gv.st, dvo,
                         s.prompt ? dv : dvv.st, s.prompt);
                    gemm(R, d, s.m - j0, dS + a0, 1, npad, row(qv, b, h, s.t0 + j0), qv.st, dko,
                         s.prompt ? d : dkv.st, s.prompt);
                }
                for (int64_t r0 = 0; r0 < s.m; r0 += BLK) {  /* dQ = dS K: prompt keys, then own keys */
                    const int R = s.m - r0 < BLK ? (int)(s.m - r0) : BLK;
                    float *o = (float *)row(dqv, b, h, s.t0 + r0);
                    gemm(R, d, s.n1, dS + r0 * npad, npad, 1, row(kv, b, h, 0), kv.st, o, dqv.st, 0);
                    gemm(R, d, r0 + R, dS + r0 * npad + s.n1, npad, 1, row(kv, b, h, s.t0), kv.st, o, dqv.st,
                         s.n1 > 0);
                }
            }
            for (int64_t j = 0; j < P; j++) {
                memcpy((float *)row(dkv, b, h, j), dkp + j * d, d * sizeof(float));
                memcpy((float *)row(dvv, b, h, j), dvp + j * dv, dv * sizeof(float));
            }
        }
        free(kt); free(vt); free(S); free(dS); free(dkp); free(dvp); free(D);
    }
    return failed ? -1 : 0;
}
