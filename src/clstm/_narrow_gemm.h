/*
 * Narrow float32 products, C[n x N] (+)= A[n x K] @ B[K x N] with N at most
 * CLSTM_NARROW_MAX: the input gradient grad_x = grad_gates @ W_ih of a layer
 * with few inputs (a univariate series: N = 1), over all T*B rows at once.
 *
 * The packed kernel (_packed_gemm.h) runs such a product on one 16-column
 * panel, almost all of it padding, and a 4-row tile there keeps only 4 FMA
 * chains: at N = 1 it spent 16 vector FMAs' time per useful one (ts-small's
 * grad_x, 1,600 x 200 @ 200 x 1, ~8 % of its training step). Here each entry
 * is a dot product over k in vectors: 4 accumulators of VW lanes take the k
 * in blocks of 4*VW, the rest is added one by one, and the sum is fixed by
 * (row, column) alone (the same in whatever block of rows a thread gets it),
 * though it differs in the last bits from the k-by-k sum of the packed kernel.
 * Compiled for the same three ISA levels as the packed kernel.
 */
#ifndef CLSTM_NARROW_GEMM_H
#define CLSTM_NARROW_GEMM_H

#include <stdlib.h>

#include "_packed_gemm.h"

#define CLSTM_NARROW_MAX 4

#if CLSTM_HAVE_PACKED_GEMM

/* c[r, j] (+)= a[r, :] . bt[j, :] for r < n, j < N; bt is B transposed (N x K,
 * row-major). */
#define CLSTM_DEFINE_NARROW(SFX, ATTR, VT, VW)                                  \
ATTR static void clstm_narrow_dots_##SFX(                                       \
    ptrdiff_t n, ptrdiff_t K, ptrdiff_t N, const float *a, ptrdiff_t lda,       \
    const float *bt, float *c, ptrdiff_t ldc, int accumulate)                   \
{                                                                               \
    const ptrdiff_t kv = K / (4 * VW) * (4 * VW);                               \
    for (ptrdiff_t r = 0; r < n; ++r) {                                         \
        const float *ar = a + r * lda;                                          \
        for (ptrdiff_t j = 0; j < N; ++j) {                                     \
            const float *bj = bt + j * K;                                       \
            VT s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                          \
            ptrdiff_t k;                                                        \
            for (k = 0; k < kv; k += 4 * VW) {                                  \
                s0 += *(const VT##u *)(ar + k) * *(const VT##u *)(bj + k);      \
                s1 += *(const VT##u *)(ar + k + VW) * *(const VT##u *)(bj + k + VW); \
                s2 += *(const VT##u *)(ar + k + 2 * VW)                         \
                      * *(const VT##u *)(bj + k + 2 * VW);                      \
                s3 += *(const VT##u *)(ar + k + 3 * VW)                         \
                      * *(const VT##u *)(bj + k + 3 * VW);                      \
            }                                                                   \
            s0 = (s0 + s1) + (s2 + s3);                                         \
            float lanes[VW], sum = 0.0f;                                        \
            memcpy(lanes, &s0, sizeof lanes);                                   \
            for (int l = 0; l < VW; ++l) sum += lanes[l];                       \
            for (; k < K; ++k) sum += ar[k] * bj[k];                            \
            float *cr = c + r * ldc + j;                                        \
            *cr = accumulate ? *cr + sum : sum;                                 \
        }                                                                       \
    }                                                                           \
}

#if CLSTM_HAVE_DISPATCH   /* (_dispatch.h: gcc, x86-64 glibc Linux) */
CLSTM_DEFINE_NARROW(v4, __attribute__((target("arch=x86-64-v4"))), clstm_v16, 16)
CLSTM_DEFINE_NARROW(v3, __attribute__((target("arch=x86-64-v3"))), clstm_v8, 8)
CLSTM_DEFINE_NARROW(base, , clstm_v4, 4)

typedef void (*clstm_narrow_dots_fn)(ptrdiff_t, ptrdiff_t, ptrdiff_t, const float *,
                                     ptrdiff_t, const float *, float *, ptrdiff_t, int);

static clstm_narrow_dots_fn clstm_select_narrow_dots(void)
{
    static const clstm_narrow_dots_fn fns[3] = {
        clstm_narrow_dots_base, clstm_narrow_dots_v3, clstm_narrow_dots_v4};
    return fns[clstm_isa_level()];
}
#else
CLSTM_DEFINE_NARROW(base, , clstm_v4, 4)

typedef void (*clstm_narrow_dots_fn)(ptrdiff_t, ptrdiff_t, ptrdiff_t, const float *,
                                     ptrdiff_t, const float *, float *, ptrdiff_t, int);

static clstm_narrow_dots_fn clstm_select_narrow_dots(void) { return clstm_narrow_dots_base; }
#endif

/* C (+)= A @ B for B (K x N) row-major with 1 <= N <= CLSTM_NARROW_MAX.
 * Returns 0 (nothing done: the caller takes another kernel) where N is out
 * of range or the transposed copy of B (N > 1) cannot be allocated. */
static int clstm_narrow_gemm(ptrdiff_t n, ptrdiff_t K, ptrdiff_t N, const float *a,
                             ptrdiff_t lda, const float *b, float *c, ptrdiff_t ldc,
                             int accumulate)
{
    static clstm_narrow_dots_fn fn = NULL;
    float *bt = NULL;
    if (N < 1 || N > CLSTM_NARROW_MAX)
        return 0;
    if (N > 1) {
        bt = (float *)malloc((size_t)(N * K) * sizeof(float));
        if (bt == NULL)
            return 0;
        for (ptrdiff_t k = 0; k < K; ++k)
            for (ptrdiff_t j = 0; j < N; ++j) bt[j * K + k] = b[k * N + j];
    }
    if (fn == NULL) fn = clstm_select_narrow_dots();   /* (a benign race) */
    fn(n, K, N, a, lda, N > 1 ? bt : b, c, ldc, accumulate);
    free(bt);
    return 1;
}

#else  /* no vector extensions: callers use BLAS */
static int clstm_narrow_gemm(ptrdiff_t n, ptrdiff_t K, ptrdiff_t N, const float *a,
                             ptrdiff_t lda, const float *b, float *c, ptrdiff_t ldc,
                             int accumulate)
{
    (void)n; (void)K; (void)N; (void)a; (void)lda; (void)b; (void)c; (void)ldc;
    (void)accumulate;
    return 0;
}
#endif

#endif /* CLSTM_NARROW_GEMM_H */
