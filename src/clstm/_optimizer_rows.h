/* The optimizers' elementwise loops (_optimizer_steps.pyx), one pass over
 * contiguous arrays, compiled three times (baseline, x86-64-v3 = AVX2,
 * x86-64-v4 = AVX-512) and picked at load time (target_clones). Each
 * operation is IEEE and elementwise (the module is built with
 * -ffp-contract=off: no fused multiply-adds), so every clone gives the same
 * bits: the wider vectors only do more entries at once. A 4,400-entry Adam
 * step (the forecast fit's model) took 3.2 us on the baseline's SSE2, whose
 * divisions and square roots are 4 floats wide. */
#ifndef CLSTM_OPTIMIZER_ROWS_H
#define CLSTM_OPTIMIZER_ROWS_H

#include <math.h>
#include <stddef.h>

#include "_dispatch.h"

#if defined(_MSC_VER)
#define CLSTM_OPT_RESTRICT __restrict
#else
#define CLSTM_OPT_RESTRICT __restrict__
#endif

/* m = m * b1 + omb1 * g;  v = v * b2 + omb2 * (g * g);
 * param = param + (neg_step * m) / (sqrt(v) + eps), each operation rounded. */
#define CLSTM_DEFINE_ADAM(NAME, T, SQRT)                                                   \
    static CLSTM_DISPATCH void NAME(                                                   \
        ptrdiff_t n, T* CLSTM_OPT_RESTRICT param, const T* CLSTM_OPT_RESTRICT grad,       \
        T* CLSTM_OPT_RESTRICT m, T* CLSTM_OPT_RESTRICT v, T beta_1, T one_minus_beta_1,    \
        T beta_2, T one_minus_beta_2, T neg_step, T epsilon)                               \
    {                                                                                      \
        for (ptrdiff_t i = 0; i < n; ++i) {                                                \
            T g = grad[i];                                                                 \
            T mi = m[i] * beta_1;                                                          \
            mi = mi + one_minus_beta_1 * g;                                                \
            T vi = v[i] * beta_2;                                                          \
            vi = vi + one_minus_beta_2 * (g * g);                                          \
            m[i] = mi;                                                                     \
            v[i] = vi;                                                                     \
            param[i] = param[i] + (neg_step * mi) / (SQRT(vi) + epsilon);                  \
        }                                                                                  \
    }

/* s = s * rho + omr * (g * g);  param = param + (neg_rate * g) / (sqrt(s) + eps). */
#define CLSTM_DEFINE_RMSPROP(NAME, T, SQRT)                                                \
    static CLSTM_DISPATCH void NAME(                                                   \
        ptrdiff_t n, T* CLSTM_OPT_RESTRICT param, const T* CLSTM_OPT_RESTRICT grad,       \
        T* CLSTM_OPT_RESTRICT s, T rho, T one_minus_rho, T neg_rate, T epsilon)            \
    {                                                                                      \
        for (ptrdiff_t i = 0; i < n; ++i) {                                                \
            T g = grad[i];                                                                 \
            T si = s[i] * rho;                                                             \
            si = si + one_minus_rho * (g * g);                                             \
            s[i] = si;                                                                     \
            param[i] = param[i] + (neg_rate * g) / (SQRT(si) + epsilon);                   \
        }                                                                                  \
    }

CLSTM_DEFINE_ADAM(clstm_adam_f, float, sqrtf)
CLSTM_DEFINE_ADAM(clstm_adam_d, double, sqrt)
CLSTM_DEFINE_RMSPROP(clstm_rmsprop_f, float, sqrtf)
CLSTM_DEFINE_RMSPROP(clstm_rmsprop_d, double, sqrt)

/* sum(values ** 2) in float64: CLSTM_SQUARES_LANES independent sums, entry i
 * going to lane i % LANES, added up in lane order at the end. The lanes do
 * not depend on the vector width, so every clone gives the same bits; they
 * are enough that the adds pipeline (8 AVX-512 vectors of doubles): 21,057
 * float32 entries (the stream benchmark's model) took 3.5 us with four
 * scalar sums, whose adds waited on each other. */
#define CLSTM_SQUARES_LANES 64
#define CLSTM_DEFINE_SQUARES(NAME, T)                                                      \
    static CLSTM_DISPATCH double NAME(ptrdiff_t n, const T* CLSTM_OPT_RESTRICT values)    \
    {                                                                                      \
        double acc[CLSTM_SQUARES_LANES] = {0};                                             \
        const ptrdiff_t whole = n - n % CLSTM_SQUARES_LANES;                               \
        for (ptrdiff_t i = 0; i < whole; i += CLSTM_SQUARES_LANES)                         \
            for (int j = 0; j < CLSTM_SQUARES_LANES; ++j) {                                \
                const double a = (double)values[i + j];                                    \
                acc[j] = acc[j] + a * a;                                                   \
            }                                                                              \
        for (ptrdiff_t i = whole; i < n; ++i) {                                            \
            const double a = (double)values[i];                                            \
            acc[i - whole] = acc[i - whole] + a * a;                                       \
        }                                                                                  \
        double total = 0.0;                                                                \
        for (int j = 0; j < CLSTM_SQUARES_LANES; ++j)                                      \
            total = total + acc[j];                                                        \
        return total;                                                                      \
    }

CLSTM_DEFINE_SQUARES(clstm_sum_of_squares_f, float)
CLSTM_DEFINE_SQUARES(clstm_sum_of_squares_d, double)

#endif
