/*
 * The cells' elementwise math (activations, gate and state updates, forward
 * and backward) for float and double: the activations here, each cell kind's
 * row kernels in _cell_rows.h (included once per element type).
 *
 * Gate order follows torch: a row of the LSTM gate buffer holds the blocks
 * i | f | g | o, a GRU row r | z | n. The forward overwrites the
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
#include <string.h>

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

#include "_dispatch.h"   /* CLSTM_DISPATCH */

/* ---- activations ------------------------------------------------------- */

CLSTM_INLINE float clstm_tanhf(float x)
{
    /* On |x|, the sign put back at the end (the rational is odd, so p / q of
     * -|x| is exactly minus that of |x|: the same bits as on x, checked for
     * all 2^32 floats at each ISA level; one clamp and one select instead of
     * two each: the cell's forward 0.87-0.91x the time, Zen 5). Beyond
     * 7.9053 tanh is 1 to float precision: returned as such (the clamped
     * argument only keeps the polynomial finite there; the vector copy in
     * _fused_cell.h agrees). The comparison (not fminf) lets NaN through. */
    const float clamp = 7.90531110763549805f;
    const float ax = fabsf(x);
    const float xc = ax > clamp ? clamp : ax;
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
    float r = p / q;
    r = ax > clamp ? 1.0f : r;
    return copysignf(r, x);
}

CLSTM_INLINE float clstm_sigmoidf(float x)
{
    return 0.5f * clstm_tanhf(0.5f * x) + 0.5f;
}

CLSTM_INLINE double clstm_tanh(double x) { return tanh(x); }

CLSTM_INLINE double clstm_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* ---- the cells' elementwise math, once per element type ------------------ */
/* Variant flags of the LSTM family (combinable). */
#define CLSTM_PEEPHOLE 1
#define CLSTM_COUPLED 2
#define CLSTM_LN_CELL 4
/* Not a variant: the caller reads no activated gates after the forward
 * (inference), so the gathered tails leave them unwritten (_cell_rows.h). */
#define CLSTM_GATES_UNREAD 8
/* Layer normalisation epsilon (as torch.nn.LayerNorm). */
#define CLSTM_LN_EPS 1e-5

#define T float
#define SFX f
#define TANH clstm_tanhf
#define SIGMOID clstm_sigmoidf
#define TAIL_LANES 16     /* one AVX-512 vector (two AVX2, four SSE2 ones) */
#define TAIL_GROUP 64     /* lanes of gathered tails a call (4 vectors: one alone
                             waited on its chain of activations) */
#include "_cell_rows.h"
#undef TAIL_LANES
#undef TAIL_GROUP
#undef T
#undef SFX
#undef TANH
#undef SIGMOID

#define T double
#define SFX d
#define TANH clstm_tanh
#define SIGMOID clstm_sigmoid
#define TAIL_LANES 0      /* (libm's activations: no vector loop to fill) */
#include "_cell_rows.h"
#undef TAIL_LANES
#undef T
#undef SFX
#undef TANH
#undef SIGMOID

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
