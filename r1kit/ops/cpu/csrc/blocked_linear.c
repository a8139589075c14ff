/* Decode-sized linear layers on CPU in fp32, over a column-blocked copy of the weight.
 *
 * Why C: at a GRPO rollout's 64 rows, MKL runs the decode step's linears (q_a/q_b/kv_a/o_proj, the shared experts,
 * lm_head) at about half its large-matrix rate, and at a quarter when the step's ~100 MB of expert weights and KV
 * cache have pushed the layer's weights out of cache (its [out, in] weight is walked against the grain). A copy in
 * column blocks (wb [ceil(n/32), k, 32]: block j holds outputs 32j..32j+31, input-major, the last zero-padded) is
 * streamed front to back by dots.h's register-blocked gemm: the decode step's linears 1.7x MKL at 8-64 rows, 1.15x at
 * 256 (docs/benchmarks.md). The copy is made once per rollout (r1kit/ops/cpu/weight_blocks.py). Work items are
 * (column block, chunk of 32 rows), spread over the threads.
 */
#include "dots.h"
#include "kernels.h"

/* out [m, n] = x [m, k] (contiguous rows) @ W^T, W given as wb */
void linear_blocked_f32(const float *x, const float *wb, float *out, int64_t m, int64_t n, int64_t k, int threads) {
    const int64_t nb = (n + 31) / 32, mc = (m + 31) / 32;
    #pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (nb * mc > 1)
    for (int64_t item = 0; item < nb * mc; item++) {
        const int64_t jb = item % nb, r0 = item / nb * 32, rows = m - r0 < 32 ? m - r0 : 32;
        const int64_t cols = n - jb * 32 < 32 ? n - jb * 32 : 32;
        if (cols == 32) {
            gemm(rows, 32, k, x + r0 * k, k, 1, wb + jb * 32 * k, 32, out + r0 * n + jb * 32, n, 0);
        } else {  /* the last, partial block: through a buffer */
            float tmp[32 * 32];
            gemm(rows, 32, k, x + r0 * k, k, 1, wb + jb * 32 * k, 32, tmp, 32, 0);
            for (int64_t r = 0; r < rows; r++) memcpy(out + (r0 + r) * n + jb * 32, tmp + r * 32, cols * sizeof(float));
        }
    }
}
