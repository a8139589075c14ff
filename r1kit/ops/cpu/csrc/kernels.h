/* The native boundary: every function the shared library exports, declared once.
 *
 * Each .c file of this folder includes this header, so the compiler rejects a definition that disagrees with its
 * declaration here; r1kit/ops/cpu/library.py reads this file to set the ctypes argument and return types, so Python
 * passes what C expects (tests/test_ops_boundary.py checks the Python call sites against it). Plain C types only:
 * pointers (passed from Python as tensor data_ptr() addresses), int64_t sizes and strides, int flags and thread
 * counts, float scalars. Functions returning int return 0 on success and nonzero on bad input or out of memory.
 * Shapes and contracts are documented at each definition.
 */
#ifndef R1KIT_KERNELS_H
#define R1KIT_KERNELS_H

#include <stdint.h>

/* routed_swiglu.c: decode-sized routed SwiGLU experts (no autograd), over fp32, bf16 or column-blocked fp32 weights */
int routed_swiglu_f32(const float *x, const int64_t *idx, const float *w, const float *gate_up, const float *down,
                      float *out, float *work, int64_t n, int64_t k, int64_t e, int64_t d, int64_t i, int tile,
                      int threads);
int routed_swiglu_bf16w(const float *x, const int64_t *idx, const float *w, const uint16_t *gate_up,
                        const uint16_t *down, float *out, float *work, int64_t n, int64_t k, int64_t e, int64_t d,
                        int64_t i, int tile, int threads);
int routed_swiglu_blocked_f32(const float *x, const int64_t *idx, const float *w, const float *gate_up_b,
                              const float *down_b, float *out, float *work, int64_t n, int64_t k, int64_t e,
                              int64_t d, int64_t i, int tile, int threads);

/* blocked_linear.c: x [m, k] @ W^T with W [n, k] given as its column-blocked copy */
void linear_blocked_f32(const float *x, const float *wb, float *out, int64_t m, int64_t n, int64_t k, int threads);

/* paged_decode.c: decode attention over a paged KV cache (MLA latent or GQA K/V), fp32 or bf16 cache */
int paged_decode_f32(const float *q, const float *k, const float *v, const int64_t *tables, const int64_t *lens,
                     float *out, int64_t n, int64_t hq, int64_t hkv, int64_t d, int64_t dv, int64_t ts,
                     int64_t kv_stride, int64_t bs, int64_t nblk, int64_t num_blocks, float scale, int threads);
int paged_decode_bf16kv(const float *q, const uint16_t *k, const uint16_t *v, const int64_t *tables,
                        const int64_t *lens, float *out, int64_t n, int64_t hq, int64_t hkv, int64_t d, int64_t dv,
                        int64_t ts, int64_t kv_stride, int64_t bs, int64_t nblk, int64_t num_blocks, float scale,
                        int threads);

/* decode_small_ops.c: RMSNorm (forward; backward for training), rope, DeepSeek-V3 expert selection */
void rms_norm_fwd_f32(const float *x, const float *w, float *out, float *rstd, int64_t n, int64_t d,
                      int64_t x_stride, float eps);
void rms_norm_bwd_f32(const float *x, const float *w, const float *rstd, const float *g, float *dx, float *dw,
                      float *work, int64_t n, int64_t d, int64_t x_stride, int threads);
void rope_f32(const float *x, const float *cos_, const float *sin_, float *out, int64_t t, int64_t h, int64_t d,
              int64_t x_st, int64_t x_sh, int interleave);
int router_select_f32(const float *scores, const float *bias, int64_t *idx, float *w, int64_t n, int64_t e,
                      int64_t k, int64_t g, int64_t topk_groups, int norm, float scaling);

/* moe_train.c: the routed experts' training glue around the per-expert matmuls */
int expert_order(const int64_t *idx, int64_t m, int64_t e, int64_t *order, int64_t *pos, int64_t *counts);
void gather_rows_f32(const float *src, const int64_t *index, int64_t div, float *dst, int64_t m, int64_t d,
                     int threads);
void swiglu_fwd_f32(const float *h, const float *w, const int64_t *order, float *act_w, int64_t m, int64_t i,
                    int threads);
void swiglu_bwd_f32(const float *h, const float *w, const int64_t *order, const float *d_act_w, float *d_h,
                    float *d_w, int64_t m, int64_t i, int threads);
void token_sums_f32(const float *rows, const int64_t *pos, float *out, int64_t n, int64_t k, int64_t d,
                    int threads);

/* shared_prefix_attention.c: GRPO's shared-prefix rows, forward and backward (strides: batch, head, token) */
int sp_attention_fwd(const float *q, const float *k, const float *v, const uint8_t *valid, float *out, float *lse,
                     int64_t B, int64_t H, int64_t P, int64_t G, int64_t C, int64_t d, int64_t dv,
                     const int64_t *qs, const int64_t *ks, const int64_t *vs, const int64_t *os, float scale,
                     int threads);
int sp_attention_bwd(const float *q, const float *k, const float *v, const uint8_t *valid, const float *out,
                     const float *lse, const float *go, float *dq, float *dk, float *dv_, int64_t B, int64_t H,
                     int64_t P, int64_t G, int64_t C, int64_t d, int64_t dv, const int64_t *qs, const int64_t *ks,
                     const int64_t *vs, const int64_t *os, const int64_t *gos, const int64_t *dqs,
                     const int64_t *dks, const int64_t *dvs, float scale, int threads);

#endif
