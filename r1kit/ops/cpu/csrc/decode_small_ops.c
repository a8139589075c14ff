/* Small per-token ops on CPU in fp32: RMSNorm (inference, and forward + backward for training), rotary embedding
 * and DeepSeek-V3's expert selection (inference).
 *
 * Why C: at decode sizes (a few dozen tokens) these ops are tiny, but in PyTorch each is a chain of elementwise
 * calls (RMSNorm on CPU: square, mean, add, rsqrt, two multiplies; rope: two strided views, four multiplies, an
 * add, a subtract and a cat; the router's group-limited top-k: ~12 calls), every one paying dispatch and
 * allocation. A decode step of the small deepseek_v3 preset runs 33 norms, 16 ropes and 7 routers. In training,
 * torch's composite RMSNorm forward and backward make ~15 passes over the activations (2.7 ms for [2216, 256]);
 * here it is one pass each way (0.3 ms). Loops run single-threaded below OPENMP_MIN_ELEMS elements (forking
 * threads would cost more than the work).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define OPENMP_MIN_ELEMS (1 << 16)

/* out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w for n rows of d floats; x's rows are x_stride floats apart, out is
 * contiguous [n, d]. The mean is accumulated in fp32 like torch's fp32 rms_norm. For training, rstd [n] (when not
 * NULL) gets each row's 1 / rms for the backward. */
void rms_norm_fwd_f32(const float *x, const float *w, float *out, float *rstd, int64_t n, int64_t d,
                      int64_t x_stride, float eps) {
    #pragma omp parallel for schedule(static) if (n * d >= OPENMP_MIN_ELEMS)
    for (int64_t r = 0; r < n; r++) {
        const float *xr = x + r * x_stride;
        float *o = out + r * d, ss = 0.f;
        for (int64_t c = 0; c < d; c++) ss += xr[c] * xr[c];
        const float inv = 1.f / sqrtf(ss / (float)d + eps);
        if (rstd) rstd[r] = inv;
        for (int64_t c = 0; c < d; c++) o[c] = xr[c] * inv * w[c];
    }
}

/* Its backward, with xh = x * rstd:  dx = rstd * (g * w - xh * mean(g * w * xh)),  dw = sum over rows of g * xh.
 * dx [n, d] contiguous; dw [d] is written (not accumulated); work: float[threads * d] for per-thread dw sums. */
void rms_norm_bwd_f32(const float *x, const float *w, const float *rstd, const float *g, float *dx, float *dw,
                      float *work, int64_t n, int64_t d, int64_t x_stride, int threads) {
    const int nt = n * d >= OPENMP_MIN_ELEMS ? threads : 1;
    memset(work, 0, (size_t)nt * d * sizeof(float));
    #pragma omp parallel num_threads(nt)
    {
        int tid = 0;
        #ifdef _OPENMP
        tid = omp_get_thread_num();
        #endif
        float *acc = work + tid * d;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < n; r++) {
            const float *xr = x + r * x_stride, *gr = g + r * d, inv = rstd[r];
            float dot = 0.f;
            for (int64_t c = 0; c < d; c++) {
                const float xh = xr[c] * inv;
                dot += gr[c] * w[c] * xh;
                acc[c] += gr[c] * xh;
            }
            const float m = dot / (float)d;
            float *o = dx + r * d;
            for (int64_t c = 0; c < d; c++) o[c] = inv * (gr[c] * w[c] - xr[c] * inv * m);
        }
    }
    for (int64_t c = 0; c < d; c++) {
        float t = 0.f;
        for (int q = 0; q < nt; q++) t += work[q * d + c];
        dw[c] = t;
    }
}

/* Rotary embedding in the half layout (r1kit/ops/rope.py) for x [t, h, d] with rows x_st floats
 * apart per token and x_sh per head, cos/sin [t, d/2] contiguous: out [t, h, d] contiguous,
 *   out[:d/2] = x1 * cos - x2 * sin, out[d/2:] = x2 * cos + x1 * sin,
 * with (x1, x2) the even and odd elements when interleave, else the two halves. */
void rope_f32(const float *x, const float *cos_, const float *sin_, float *out, int64_t t, int64_t h, int64_t d,
              int64_t x_st, int64_t x_sh, int interleave) {
    const int64_t half = d / 2;
    #pragma omp parallel for schedule(static) if (t * h * d >= OPENMP_MIN_ELEMS)
    for (int64_t i = 0; i < t; i++) {
        const float *c = cos_ + i * half, *s = sin_ + i * half;
        for (int64_t j = 0; j < h; j++) {
            const float *xr = x + i * x_st + j * x_sh;
            float *o = out + (i * h + j) * d;
            for (int64_t p = 0; p < half; p++) {
                const float x1 = interleave ? xr[2 * p] : xr[p], x2 = interleave ? xr[2 * p + 1] : xr[half + p];
                o[p] = x1 * c[p] - x2 * s[p];
                o[half + p] = x2 * c[p] + x1 * s[p];
            }
        }
    }
}

/* Insert (v, j) into the descending top-k list (vals, ids) of current length *len (at most k): strict > keeps the
 * earlier candidate first among equals, so ties go to the lowest index. */
static inline void top_insert(float *vals, int64_t *ids, int64_t *len, int64_t k, float v, int64_t j) {
    if (*len == k && !(v > vals[k - 1])) return;
    int64_t p = *len < k ? (*len)++ : k - 1;
    while (p > 0 && v > vals[p - 1]) {
        vals[p] = vals[p - 1];
        ids[p] = ids[p - 1];
        p--;
    }
    vals[p] = v;
    ids[p] = j;
}

/* DeepSeek-V3's routing from sigmoid scores [n, e] (fp32) and the correction bias [e]:
 *   choice = scores + bias; group score = sum of the top 2 choices of each of the g groups (e / g experts each);
 *   keep the topk_groups best groups; idx = the k best choices among their experts; w = scores at idx, divided by
 *   their sum when norm (+1e-20), times scaling.
 * idx [n, k] (int64), w [n, k] (fp32), in descending order of choice. Returns 0, or -1 on bad sizes. */
int router_select_f32(const float *scores, const float *bias, int64_t *idx, float *w, int64_t n, int64_t e,
                      int64_t k, int64_t g, int64_t topk_groups, int norm, float scaling) {
    if (e < 1 || e > 1024 || g < 1 || e % g || topk_groups < 1 || topk_groups > g || k < 1
        || k > topk_groups * (e / g) || (topk_groups < g && e / g < 2))
        return -1;
    const int64_t per = e / g;
    #pragma omp parallel for schedule(static) if (n * e >= OPENMP_MIN_ELEMS)
    for (int64_t r = 0; r < n; r++) {
        float choice[1024], gvals[1024], vals[1024];
        int64_t gids[1024];
        unsigned char keep[1024];
        const float *s = scores + r * e;
        for (int64_t j = 0; j < e; j++) choice[j] = s[j] + bias[j];
        int64_t ng = 0, nk = 0;
        for (int64_t q = 0; q < g; q++) {
            keep[q] = topk_groups == g;
            if (topk_groups == g) continue;
            const float *c = choice + q * per;  /* group score: the sum of its top 2 choices (per >= 2) */
            float a = c[0] > c[1] ? c[0] : c[1], b = c[0] > c[1] ? c[1] : c[0];
            for (int64_t j = 2; j < per; j++) {
                if (c[j] > a) { b = a; a = c[j]; }
                else if (c[j] > b) b = c[j];
            }
            top_insert(gvals, gids, &ng, topk_groups, a + b, q);
        }
        for (int64_t t = 0; t < ng; t++) keep[gids[t]] = 1;
        int64_t *ir = idx + r * k;
        for (int64_t j = 0; j < e; j++)
            if (keep[j / per]) top_insert(vals, ir, &nk, k, choice[j], j);
        float sum = 0.f;
        for (int64_t t = 0; t < k; t++) sum += s[ir[t]];
        for (int64_t t = 0; t < k; t++) w[r * k + t] = (norm ? s[ir[t]] / (sum + 1e-20f) : s[ir[t]]) * scaling;
    }
    return 0;
}
