/*
 * LSTM cell: the elementwise gate activations and state update, forward and
 * backward, for float and double.
 *
 * Gate order follows torch.nn.LSTM: a row of the gate buffer holds four
 * blocks of `hidden` values, i | f | g | o. The forward overwrites the
 * pre-activations with the activated gates (saved for the backward); the
 * backward consumes them.
 *
 * Written for the auto-vectorizer: each row is processed by an always-inline
 * function whose gate blocks come in as separate restrict-qualified pointers
 * (offsets into one pointer cannot be proven disjoint), with no runtime flags
 * inside the loop. Needs -O3 -fno-trapping-math (without it gcc does not
 * if-convert the clamps and vectorizes nothing). On x86-64 Linux with gcc the
 * multi-row entry points are compiled three times (baseline, x86-64-v3 =
 * AVX2+FMA, x86-64-v4 = AVX-512) and picked at load time (target_clones), so
 * a portable wheel still uses the wide units.
 *
 * float activations: tanh by a branch-free rational approximation (odd
 * degree-13 numerator over even degree-6 denominator; the coefficients are
 * the published minimax fit used by Eigen's ptanh_float), accurate to a few
 * float32 ulp, and sigmoid(x) = 0.5 * tanh(0.5 x) + 0.5. double activations
 * use libm: float64 is the accuracy path.
 */
#ifndef CLSTM_CELL_KERNELS_H
#define CLSTM_CELL_KERNELS_H

#include <math.h>
#include <stddef.h>

#if defined(_MSC_VER)
#define CLSTM_RESTRICT __restrict
#define CLSTM_INLINE static __forceinline
#else
#define CLSTM_RESTRICT __restrict__
#define CLSTM_INLINE static inline __attribute__((always_inline))
#endif

/* Each module that includes this header uses only some entry points. */
#if defined(__GNUC__)
#define CLSTM_MAYBE_UNUSED __attribute__((unused))
#else
#define CLSTM_MAYBE_UNUSED
#endif

/* target_clones needs ifunc support: gcc on x86-64 glibc Linux (not musl). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    defined(__linux__) && defined(__GLIBC__) && !defined(CLSTM_NO_DISPATCH)
#define CLSTM_DISPATCH \
    __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#define CLSTM_HAVE_DISPATCH 1
#else
#define CLSTM_DISPATCH
#define CLSTM_HAVE_DISPATCH 0
#endif

/* ---- activations ------------------------------------------------------- */

CLSTM_INLINE float clstm_tanhf(float x)
{
    /* Beyond +-7.9053 the approximation equals +-1 to float precision. The
     * comparisons (not fminf/fmaxf) let NaN through unchanged. */
    const float clamp = 7.90531110763549805f;
    float xc = x > clamp ? clamp : x;
    xc = xc < -clamp ? -clamp : xc;
    const float x2 = xc * xc;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    p = p * xc;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return p / q;
}

CLSTM_INLINE float clstm_sigmoidf(float x)
{
    return 0.5f * clstm_tanhf(0.5f * x) + 0.5f;
}

CLSTM_INLINE double clstm_tanh(double x) { return tanh(x); }

CLSTM_INLINE double clstm_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* ---- one row ------------------------------------------------------------
 * Forward:  adds the bias (b_ih + b_hh, folded here instead of a separate
 *           pass over the gate buffer), then i, f, o = sigmoid(.),
 *           g = tanh(.) in place;
 *           c = f * c_prev + i * g;  h = o * tanh(c).
 * Backward: given the activated gates, c_prev, c, the gradient reaching h
 *           (grad_h_out + grad_h_rec) and the one reaching c (grad_c, in/out):
 *           grad_c  <- grad_c + grad_h * o * (1 - tanh(c)^2)
 *           grad_i = grad_c * g * i (1 - i)     grad_f = grad_c * c_prev * f (1 - f)
 *           grad_g = grad_c * i * (1 - g^2)     grad_o = grad_h * tanh(c) * o (1 - o)
 *           grad_c <- grad_c * f               (the gradient reaching c_prev)
 */
#define CLSTM_DEFINE_ROWS(T, SFX, TANH, SIGMOID)                                \
CLSTM_INLINE void cell_forward_row_##SFX(                                       \
    ptrdiff_t n, T *CLSTM_RESTRICT gi, T *CLSTM_RESTRICT gf,                    \
    T *CLSTM_RESTRICT gg, T *CLSTM_RESTRICT go,                                 \
    const T *CLSTM_RESTRICT bi, const T *CLSTM_RESTRICT bf,                     \
    const T *CLSTM_RESTRICT bg, const T *CLSTM_RESTRICT bo,                     \
    const T *CLSTM_RESTRICT c_prev, T *CLSTM_RESTRICT c, T *CLSTM_RESTRICT h)   \
{                                                                               \
    for (ptrdiff_t j = 0; j < n; ++j) {                                         \
        const T i_ = SIGMOID(gi[j] + bi[j]);                                    \
        const T f_ = SIGMOID(gf[j] + bf[j]);                                    \
        const T g_ = TANH(gg[j] + bg[j]);                                       \
        const T o_ = SIGMOID(go[j] + bo[j]);                                    \
        const T c_ = f_ * c_prev[j] + i_ * g_;                                  \
        gi[j] = i_; gf[j] = f_; gg[j] = g_; go[j] = o_;                         \
        c[j] = c_;                                                              \
        h[j] = o_ * TANH(c_);                                                   \
    }                                                                           \
}                                                                               \
                                                                                \
CLSTM_INLINE void cell_backward_row_##SFX(                                      \
    ptrdiff_t n, const T *CLSTM_RESTRICT gi, const T *CLSTM_RESTRICT gf,        \
    const T *CLSTM_RESTRICT gg, const T *CLSTM_RESTRICT go,                     \
    const T *CLSTM_RESTRICT c_prev, const T *CLSTM_RESTRICT c,                  \
    const T *CLSTM_RESTRICT grad_h_out, const T *CLSTM_RESTRICT grad_h_rec,     \
    T *CLSTM_RESTRICT grad_c,                                                   \
    T *CLSTM_RESTRICT di, T *CLSTM_RESTRICT df, T *CLSTM_RESTRICT dg,           \
    T *CLSTM_RESTRICT d_o)                                                      \
{                                                                               \
    for (ptrdiff_t j = 0; j < n; ++j) {                                         \
        const T i_ = gi[j], f_ = gf[j], g_ = gg[j], o_ = go[j];                 \
        const T tc = TANH(c[j]);                                                \
        const T dh = grad_h_out[j] + grad_h_rec[j];                             \
        const T dc = grad_c[j] + dh * o_ * ((T)1 - tc * tc);                    \
        di[j] = dc * g_ * i_ * ((T)1 - i_);                                     \
        df[j] = dc * c_prev[j] * f_ * ((T)1 - f_);                              \
        dg[j] = dc * i_ * ((T)1 - g_ * g_);                                     \
        d_o[j] = dh * tc * o_ * ((T)1 - o_);                                    \
        grad_c[j] = dc * f_;                                                    \
    }                                                                           \
}

CLSTM_DEFINE_ROWS(float, f, clstm_tanhf, clstm_sigmoidf)
CLSTM_DEFINE_ROWS(double, d, clstm_tanh, clstm_sigmoid)

/* ---- many rows (the entry points) --------------------------------------
 * Row r of each matrix starts at base + r * ld. The gate rows hold 4*hidden
 * values; grad_h_rec and grad_c are contiguous (n_rows, hidden) state buffers.
 */
#define CLSTM_DEFINE_ENTRY(T, SFX)                                              \
CLSTM_DISPATCH CLSTM_MAYBE_UNUSED static void clstm_cell_forward_##SFX(                           \
    ptrdiff_t n_rows, ptrdiff_t hidden, T *gates, ptrdiff_t ld_gates,           \
    const T *bias, const T *c_prev, ptrdiff_t ld_c_prev, T *c, ptrdiff_t ld_c,  \
    T *h, ptrdiff_t ld_h)                                                       \
{                                                                               \
    for (ptrdiff_t r = 0; r < n_rows; ++r) {                                    \
        T *g = gates + r * ld_gates;                                            \
        cell_forward_row_##SFX(hidden, g, g + hidden, g + 2 * hidden,           \
                               g + 3 * hidden, bias, bias + hidden,             \
                               bias + 2 * hidden, bias + 3 * hidden,            \
                               c_prev + r * ld_c_prev, c + r * ld_c,            \
                               h + r * ld_h);                                   \
    }                                                                           \
}                                                                               \
                                                                                \
CLSTM_DISPATCH CLSTM_MAYBE_UNUSED static void clstm_cell_backward_##SFX(                          \
    ptrdiff_t n_rows, ptrdiff_t hidden, const T *gates, ptrdiff_t ld_gates,     \
    const T *c_prev, ptrdiff_t ld_c_prev, const T *c, ptrdiff_t ld_c,           \
    const T *grad_h_out, ptrdiff_t ld_grad_h_out, const T *grad_h_rec,          \
    T *grad_c, T *grad_gates, ptrdiff_t ld_grad_gates)                          \
{                                                                               \
    for (ptrdiff_t r = 0; r < n_rows; ++r) {                                    \
        const T *g = gates + r * ld_gates;                                      \
        T *dg = grad_gates + r * ld_grad_gates;                                 \
        cell_backward_row_##SFX(hidden, g, g + hidden, g + 2 * hidden,          \
                                g + 3 * hidden, c_prev + r * ld_c_prev,         \
                                c + r * ld_c, grad_h_out + r * ld_grad_h_out,   \
                                grad_h_rec + r * hidden, grad_c + r * hidden,   \
                                dg, dg + hidden, dg + 2 * hidden,               \
                                dg + 3 * hidden);                               \
    }                                                                           \
}                                                                               \
                                                                                \
CLSTM_DISPATCH CLSTM_MAYBE_UNUSED static void clstm_tanh_##SFX(ptrdiff_t n, const T *x, T *y)      \
{                                                                               \
    for (ptrdiff_t j = 0; j < n; ++j) y[j] = TANH_##SFX(x[j]);                  \
}                                                                               \
                                                                                \
CLSTM_DISPATCH CLSTM_MAYBE_UNUSED static void clstm_sigmoid_##SFX(ptrdiff_t n, const T *x, T *y)   \
{                                                                               \
    for (ptrdiff_t j = 0; j < n; ++j) y[j] = SIGMOID_##SFX(x[j]);               \
}

#define TANH_f clstm_tanhf
#define SIGMOID_f clstm_sigmoidf
#define TANH_d clstm_tanh
#define SIGMOID_d clstm_sigmoid

CLSTM_DEFINE_ENTRY(float, f)
CLSTM_DEFINE_ENTRY(double, d)

/* Which clone of the dispatched kernels this CPU runs (for tests and bug
 * reports); mirrors the order in which the target_clones resolver picks. */
CLSTM_MAYBE_UNUSED static const char *clstm_dispatch_level(void)
{
#if CLSTM_HAVE_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4";
    if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3";
    return "baseline";
#else
    return "no-dispatch";
#endif
}

#endif /* CLSTM_CELL_KERNELS_H */
