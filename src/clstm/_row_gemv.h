/*
 * One row against a row-major weight, float32: c[j] (+)= w[j, :] . a for
 * j < N, w (N x K) row-major as torch stores W_ih and W_hh. This is the
 * product of the streaming step (_stream.pyx), which reads the live weights
 * (nothing packed, so in-place edits are seen) at batch 1.
 *
 * AVX-512 only: 16 rows at a time, each a dot product in 16-lane vectors over
 * k (the last k masked), then the 16 sums' lanes added in a tree of
 * shuffles into one vector of 16 results. Zen 5, I=16, H=64 (256 x 16 and
 * 256 x 64, weights in L2): 0.60 us against 1.02 for the same dot products
 * reduced lane by lane; OpenBLAS's sgemv took ~0.75 us of a 1.7 us step.
 * Each entry's sum is fixed by K alone, and differs in the last bits from the
 * packed kernel's k-by-k sum, as BLAS's did. Other ISA levels return 0: the
 * caller uses BLAS.
 */
#ifndef CLSTM_ROW_GEMV_H
#define CLSTM_ROW_GEMV_H

#include <stddef.h>

#include "_packed_gemm.h"

#if CLSTM_HAVE_DISPATCH   /* (_dispatch.h: gcc, x86-64 glibc Linux) */
#include <immintrin.h>

#define CLSTM_V4_TARGET __attribute__((target("arch=x86-64-v4")))

/* Pairwise lane sums of two vectors, at three distances: adjacent floats,
 * pairs of floats, 128-bit blocks. */
CLSTM_V4_TARGET static inline __m512 clstm_sum_pairs_ps(__m512 a, __m512 b)
{
    return _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
}

CLSTM_V4_TARGET static inline __m512 clstm_sum_pairs_pd(__m512 a, __m512 b)
{
    const __m512d x = _mm512_castps_pd(a), y = _mm512_castps_pd(b);
    return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
}

CLSTM_V4_TARGET static inline __m512 clstm_sum_blocks(__m512 a, __m512 b)
{
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
}

CLSTM_V4_TARGET static void clstm_row_gemv_v4(ptrdiff_t N, ptrdiff_t K, const float *w,
                                              const float *a, float *c, int accumulate)
{
    const ptrdiff_t kv = K / 16 * 16;
    const __mmask16 tail = (__mmask16)((1u << (K - kv)) - 1u);
    ptrdiff_t j = 0, k;
    int r, i;
    for (; j + 16 <= N; j += 16) {
        __m512 s[16], t[8], u[4], v[2], x;
        for (r = 0; r < 16; ++r) s[r] = _mm512_setzero_ps();
        for (k = 0; k < kv; k += 16) {
            const __m512 av = _mm512_loadu_ps(a + k);
            for (r = 0; r < 16; ++r)
                s[r] = _mm512_fmadd_ps(av, _mm512_loadu_ps(w + (j + r) * K + k), s[r]);
        }
        if (tail) {
            const __m512 av = _mm512_maskz_loadu_ps(tail, a + kv);
            for (r = 0; r < 16; ++r)
                s[r] = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(tail, w + (j + r) * K + kv),
                                       s[r]);
        }
        /* rows 2i, 2i+1 -> 4i..4i+3 -> 8i..8i+7 -> all 16, in row order */
        for (i = 0; i < 8; ++i) t[i] = clstm_sum_pairs_ps(s[2 * i], s[2 * i + 1]);
        for (i = 0; i < 4; ++i) u[i] = clstm_sum_pairs_pd(t[2 * i], t[2 * i + 1]);
        for (i = 0; i < 2; ++i) v[i] = clstm_sum_blocks(u[2 * i], u[2 * i + 1]);
        x = clstm_sum_blocks(v[0], v[1]);
        if (accumulate) x = _mm512_add_ps(x, _mm512_loadu_ps(c + j));
        _mm512_storeu_ps(c + j, x);
    }
    for (; j < N; ++j) {          /* the rows left: one at a time */
        __m512 s1 = _mm512_setzero_ps();
        float sum;
        for (k = 0; k < kv; k += 16)
            s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(w + j * K + k), s1);
        if (tail)
            s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, a + kv),
                                 _mm512_maskz_loadu_ps(tail, w + j * K + kv), s1);
        sum = _mm512_reduce_add_ps(s1);
        c[j] = accumulate ? c[j] + sum : sum;
    }
}

/* c[:N] (+)= w @ a (see the top of this file); 0 (nothing done: the caller
 * uses BLAS) below AVX-512. */
static int clstm_row_gemv(ptrdiff_t N, ptrdiff_t K, const float *w, const float *a,
                          float *c, int accumulate)
{
    static int level = -1;
    if (level < 0) level = clstm_isa_level();   /* (a benign race) */
    if (level < 2)
        return 0;
    clstm_row_gemv_v4(N, K, w, a, c, accumulate);
    return 1;
}

#else
static int clstm_row_gemv(ptrdiff_t N, ptrdiff_t K, const float *w, const float *a,
                          float *c, int accumulate)
{
    (void)N; (void)K; (void)w; (void)a; (void)c; (void)accumulate;
    return 0;
}
#endif

#endif /* CLSTM_ROW_GEMV_H */
