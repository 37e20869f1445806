/*
 * One row of the float32 softmax cross-entropy, written for the
 * auto-vectorizer (no reductions over floats inside the exp loop, restrict
 * pointers, no branches), compiled for the baseline, AVX2 and AVX-512 and
 * picked at load time as the cell kernels are (see _cell_kernels.h).
 *
 * exp: x = n ln2 + r with n = round(x / ln2) (the 1.5 * 2^23 rounding trick,
 * valid without -ffast-math), ln2 in two parts, exp(r) by the degree-6
 * polynomial of Cephes' expf, 2^n from the exponent bits; arguments are
 * clamped to [-87, 0] (softmax only needs x - max <= 0), where its relative
 * error is a few float32 ulp. Sums, the log and the loss are in double.
 */
#ifndef CLSTM_SOFTMAX_ROWS_H
#define CLSTM_SOFTMAX_ROWS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(_MSC_VER)
#define CLSTM_SM_RESTRICT __restrict
#else
#define CLSTM_SM_RESTRICT __restrict__
#endif

#include "_dispatch.h"

/* e[j] = exp(z[j] - m) for j < k (z[j] - m <= 0). */
static void clstm_softmax_exp_f(const float* CLSTM_SM_RESTRICT z, ptrdiff_t k, float m,
                                float* CLSTM_SM_RESTRICT e)
{
    for (ptrdiff_t j = 0; j < k; ++j) {
        float x = z[j] - m;
        x = x < -87.0f ? -87.0f : x;
        float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
        float r = x - n * 0.693359375f;
        r = r - n * -2.12194440e-4f;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * r * r + r + 1.0f;
        union { int32_t i; float f; } scale;
        scale.i = ((int32_t)n + 127) << 23;
        e[j] = p * scale.f;
    }
}

/* g[j] *= c */
static void clstm_softmax_scale_f(float* CLSTM_SM_RESTRICT g, ptrdiff_t k, float c)
{
    for (ptrdiff_t j = 0; j < k; ++j)
        g[j] *= c;
}

/* w * (logsumexp(z) - z[y]); g = w * (softmax(z) - onehot(y)). */
CLSTM_DISPATCH
static double clstm_softmax_xent_row_f(const float* CLSTM_SM_RESTRICT z, ptrdiff_t k,
                                       int64_t y, double w, float* CLSTM_SM_RESTRICT g)
{
    float m = z[0];
    for (ptrdiff_t j = 1; j < k; ++j)
        m = z[j] > m ? z[j] : m;
    clstm_softmax_exp_f(z, k, m, g);
    /* eight independent double partial sums: exact order, no reassociation needed */
    double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    ptrdiff_t j = 0;
    for (; j + 8 <= k; j += 8)
        for (int u = 0; u < 8; ++u)
            part[u] += (double)g[j + u];
    double s = 0.0;
    for (; j < k; ++j)
        s += (double)g[j];
    for (int u = 0; u < 8; ++u)
        s += part[u];
    double e_y = (double)g[y];
    clstm_softmax_scale_f(g, k, (float)(w / s));
    g[y] = (float)((e_y / s - 1.0) * w);
    return w * (log(s) + (double)m - (double)z[y]);
}

#endif
