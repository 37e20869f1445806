/*
 * The LSTM cell as the epilogue of the recurrent product (float32 inference;
 * oneDNN calls the cell's elementwise part "postgemm"):
 *     a = [x_t | h_prev] @ [W_ih | W_hh]^T       (thin inputs), or
 *     a = pre_t + h_prev @ W_hh^T                (pre_t: the input projection
 *                                                 of all steps, one GEMM)
 *     c = f * c_prev + i * g,  h = o * tanh(c)   (the cell of _cell_rows.h)
 * in one pass: a tile keeps the pre-activations of every gate of V units in
 * registers, applies the cell to them and stores only c and h. The gates
 * never reach memory, so no backward can run from such a forward: training
 * forwards keep the two passes (_packed_gemm.h, then _cell_rows.h).
 *
 * Layout: W^T is packed gate-interleaved in groups of V units (V = the
 * vector width: 16 AVX-512, 8 AVX2, 4 SSE2). Group u holds, per k, NG
 * vectors (gates i, f, g, o; coupled i, g, o) of units [uV, uV + V), so the
 * accumulator of gate q and the one of gate q' hold the same units lane by
 * lane and the cell needs no shuffles. After the K weight rows come one row
 * of biases and (peephole) one row of peephole weights (i, f, o; coupled
 * i, o). Units past H are zero in every row and never written.
 *
 * Same results as the two-pass path, bit for bit: each accumulator sums the
 * same products in the same order (k ascending, x before h), the projection
 * and the bias are added as the two-pass path adds them, and the vector
 * activations below repeat clstm_tanhf / clstm_sigmoidf operation by
 * operation (the clamps select exact values; the compiler contracts the same
 * multiply-adds in both). The variant is chosen at run time among the same
 * three ISA levels as the small GEMM's, so both paths run at the same level.
 * Compilers without vector extensions (MSVC) have no fused path
 * (CLSTM_HAVE_FUSED_CELL 0): the scan then runs the two passes.
 */
#ifndef CLSTM_FUSED_CELL_H
#define CLSTM_FUSED_CELL_H

#include <stddef.h>
#include <string.h>

#include "_packed_gemm.h"
#include "_cell_kernels.h"

/* The packed size (floats) of a fused weight: K rows, NG gates, H units,
 * groups of V units, plus the bias row and (peephole) the peephole row. */
static inline ptrdiff_t clstm_fused_size_v(ptrdiff_t K, ptrdiff_t H, int ng, int peephole,
                                           ptrdiff_t V)
{
    return ((H + V - 1) / V) * (K + 1 + (peephole ? 1 : 0)) * ng * V;
}

/* Pack [W1 | W2]^T gate-interleaved (see above): W1 (NG*H x K1) and W2
 * (NG*H x K2) row-major as torch stores them, bias (NG*H), peep (NULL, or
 * 3H; coupled 2H) in torch's block order. */
static void clstm_pack_fused_v(ptrdiff_t K1, const float *w1, ptrdiff_t K2, const float *w2,
                               ptrdiff_t H, int ng, const float *bias, const float *peep,
                               ptrdiff_t V, float *out)
{
    const ptrdiff_t K = K1 + K2, n_groups = (H + V - 1) / V, row = ng * V;
    const int n_peep = ng - 1;           /* i, f, o (coupled: i, o) */
    const ptrdiff_t rows = K + 1 + (peep != NULL ? 1 : 0);
    memset(out, 0, (size_t)(n_groups * rows * row) * sizeof(float));
    for (ptrdiff_t u = 0; u < n_groups; ++u) {
        float *dst = out + u * rows * row;
        for (ptrdiff_t l = 0; l < V && u * V + l < H; ++l) {
            const ptrdiff_t j = u * V + l;
            for (int q = 0; q < ng; ++q) {
                const ptrdiff_t unit = q * H + j;       /* row of W, entry of bias */
                for (ptrdiff_t k = 0; k < K1; ++k)
                    dst[k * row + q * V + l] = w1[unit * K1 + k];
                for (ptrdiff_t k = 0; k < K2; ++k)
                    dst[(K1 + k) * row + q * V + l] = w2[unit * K2 + k];
                dst[K * row + q * V + l] = bias[unit];
            }
            if (peep != NULL)
                for (int q = 0; q < n_peep; ++q)
                    dst[(K + 1) * row + q * V + l] = peep[q * H + j];
        }
    }
}

/* Steps with more rows than this run the two passes (the same values, bit
 * for bit, so the scan may choose per step). Measured on an AVX2 Zen core
 * (one thread, T = 50, I = 1, H = 50 / 128, interleaved, noisy), two-pass /
 * fused time: 1-4 rows 1.1-2.1x, 8 rows 1.03-1.09x, 16 rows 0.93-1.3x,
 * 24-32 rows 0.72-0.96x: the small GEMM's 6-row x 16-column tiles beat the
 * fused 3-row x 4-gate ones once there are enough rows (tried and dropped:
 * a fused 6-row x 2-gate tile in two passes over K, and single rows through
 * two unit groups at once, neither faster there); its single-row edge tiles
 * do not. On AVX-512 (Zen 5, one thread, whole inference forwards), fusing
 * every step instead (threshold 64) was slower: ts-small (32 rows) 0.28 ->
 * 0.36 ms, ts-medium (64) 4.76 -> 4.99, stacked (32) 7.07 -> 7.26; there,
 * single rows through two unit groups are faster (PAIRS below). The scan's
 * threshold starts here and can be set (clstm._scan.set_fused_cell_max_rows). */
#define CLSTM_FUSED_MAX_ROWS 8

#if CLSTM_HAVE_PACKED_GEMM
#define CLSTM_HAVE_FUSED_CELL 1

typedef int clstm_vi16 __attribute__((vector_size(64)));
typedef int clstm_vi8 __attribute__((vector_size(32)));
typedef int clstm_vi4 __attribute__((vector_size(16)));

/* Vector activations of one ISA level: clstm_tanhf and clstm_sigmoidf
 * (_cell_kernels.h), the same operations in the same order. */
#define CLSTM_DEFINE_VMATH(SFX, ATTR, VT, VI)                                   \
ATTR static inline __attribute__((always_inline)) VT                            \
clstm_vsel_##SFX(VI m, VT a, VT b)                                              \
{                                                                               \
    return (VT)((m & (VI)a) | (~m & (VI)b));                                    \
}                                                                               \
ATTR static inline __attribute__((always_inline)) VT clstm_vtanh_##SFX(VT x)    \
{                                                                               \
    const float clamp = 7.90531110763549805f;                                   \
    const VT hi = (VT){0} + clamp;                                              \
    const VI sign = (VI){0} + (-2147483647 - 1);         /* the sign bit */     \
    const VT ax = (VT)((VI)x & ~sign);                     /* fabsf */          \
    const VT xc = clstm_vsel_##SFX(ax > hi, hi, ax);                            \
    const VT x2 = xc * xc;                                                      \
    VT p = (VT){0} + -2.76076847742355e-16f;                                    \
    p = p * x2 + 2.00018790482477e-13f;                                         \
    p = p * x2 + -8.60467152213735e-11f;                                        \
    p = p * x2 + 5.12229709037114e-08f;                                         \
    p = p * x2 + 1.48572235717979e-05f;                                         \
    p = p * x2 + 6.37261928875436e-04f;                                         \
    p = p * x2 + 4.89352455891786e-03f;                                         \
    p = p * xc;                                                                 \
    VT q = (VT){0} + 1.19825839466702e-06f;                                     \
    q = q * x2 + 1.18534705686654e-04f;                                         \
    q = q * x2 + 2.26843463243900e-03f;                                         \
    q = q * x2 + 4.89352518554385e-03f;                                         \
    VT r = p / q;                                                               \
    r = clstm_vsel_##SFX(ax > hi, (VT){0} + 1.0f, r);                           \
    return (VT)(((VI)r & ~sign) | ((VI)x & sign));         /* copysignf */      \
}                                                                               \
ATTR static inline __attribute__((always_inline)) VT clstm_vsigmoid_##SFX(VT x) \
{                                                                               \
    return 0.5f * clstm_vtanh_##SFX(0.5f * x) + 0.5f;                           \
}

/* One tile: rows [0, MR) x NU groups of VW units (NU = 1, or 2 for single
 * rows: 8 accumulator chains on AVX-512, not 4, so the two FMA pipes are not
 * left waiting on their latency), the second group `gstride` floats after
 * the first in the packed weights; nu of the last group's units are real.
 * PEEP, COUPLED: the variant, as constants; NG = COUPLED ? 3 : 4. */
#define CLSTM_DEFINE_FUSED_TILE(NAME, SFX, ATTR, VT, VW, MR, NU, PEEP, COUPLED) \
ATTR static inline __attribute__((always_inline)) void NAME(                    \
    ptrdiff_t K1, const float *a1, ptrdiff_t lda1,                              \
    ptrdiff_t K2, const float *a2, ptrdiff_t lda2, const float *pk,             \
    ptrdiff_t gstride, const float *pre, ptrdiff_t ld_pre, ptrdiff_t H,         \
    const float *c_prev, ptrdiff_t ld_cp, float *c, ptrdiff_t ld_c,             \
    float *h, ptrdiff_t ld_h, ptrdiff_t nu)                                     \
{                                                                               \
    enum { NG = COUPLED ? 3 : 4, ROW = NG * VW };                               \
    VT acc[MR][NU][NG];                                                         \
    for (int r = 0; r < MR; ++r)                                                \
        for (int g = 0; g < NU; ++g)                                            \
            for (int q = 0; q < NG; ++q) acc[r][g][q] = (VT){0};                \
    /* two plain loops, as the small GEMM's (x rows, then h rows) */            \
    for (ptrdiff_t k = 0; k < K1; ++k) {                                        \
        VT w[NU][NG];                                                           \
        for (int g = 0; g < NU; ++g)                                            \
            for (int q = 0; q < NG; ++q)                                        \
                w[g][q] = *(const VT##u *)(pk + g * gstride + k * ROW + q * VW); \
        for (int r = 0; r < MR; ++r) {                                          \
            const float av = a1[r * lda1 + k];                                  \
            for (int g = 0; g < NU; ++g)                                        \
                for (int q = 0; q < NG; ++q) acc[r][g][q] += av * w[g][q];      \
        }                                                                       \
    }                                                                           \
    pk += K1 * ROW;                                                             \
    for (ptrdiff_t k = 0; k < K2; ++k) {                                        \
        VT w[NU][NG];                                                           \
        for (int g = 0; g < NU; ++g)                                            \
            for (int q = 0; q < NG; ++q)                                        \
                w[g][q] = *(const VT##u *)(pk + g * gstride + k * ROW + q * VW); \
        for (int r = 0; r < MR; ++r) {                                          \
            const float av = a2[r * lda2 + k];                                  \
            for (int g = 0; g < NU; ++g)                                        \
                for (int q = 0; q < NG; ++q) acc[r][g][q] += av * w[g][q];      \
        }                                                                       \
    }                                                                           \
    pk += K2 * ROW;                                                             \
    /* the epilogue: lstm_forward_row of _cell_rows.h on VW lanes */            \
    for (int g = 0; g < NU; ++g) {                                              \
        const float *pb = pk + g * gstride;                                     \
        const ptrdiff_t ng = g == NU - 1 ? nu : VW, jg = g * VW;                \
        const VT bi = *(const VT##u *)(pb), bg = *(const VT##u *)(pb + (NG - 2) * VW); \
        const VT bo = *(const VT##u *)(pb + (NG - 1) * VW);                     \
        const VT bf = COUPLED ? (VT){0} : *(const VT##u *)(pb + VW);            \
        VT pi = (VT){0}, pf = (VT){0}, po = (VT){0};                            \
        if (PEEP) {                                                             \
            pi = *(const VT##u *)(pb + ROW);                                    \
            if (!COUPLED) pf = *(const VT##u *)(pb + ROW + VW);                 \
            po = *(const VT##u *)(pb + ROW + (COUPLED ? 1 : 2) * VW);           \
        }                                                                       \
        for (int r = 0; r < MR; ++r) {                                          \
            VT a[NG];                                                           \
            for (int q = 0; q < NG; ++q) {                                      \
                a[q] = acc[r][g][q];                                            \
                /* the two-pass path stores acc + pre, then adds the bias */    \
                if (pre != NULL)                                                \
                    a[q] += clstm_vload_##SFX(pre + r * ld_pre + q * H + jg, ng); \
            }                                                                   \
            const VT cp = clstm_vload_##SFX(c_prev + r * ld_cp + jg, ng);       \
            VT ai = a[0] + bi;                                                  \
            if (PEEP) ai += pi * cp;                                            \
            const VT i_ = clstm_vsigmoid_##SFX(ai);                             \
            VT f_;                                                              \
            if (COUPLED) {                                                      \
                f_ = 1.0f - i_;                                                 \
            } else {                                                            \
                VT af = a[1] + bf;                                              \
                if (PEEP) af += pf * cp;                                        \
                f_ = clstm_vsigmoid_##SFX(af);                                  \
            }                                                                   \
            const VT g_ = clstm_vtanh_##SFX(a[NG - 2] + bg);                    \
            /* (operands in the order gcc 12 contracts the scalar row into FMAs) */ \
            const VT c_ = COUPLED ? i_ * g_ + f_ * cp : f_ * cp + i_ * g_;      \
            VT ao = a[NG - 1] + bo;                                             \
            if (PEEP) ao += po * c_;                                            \
            const VT o_ = clstm_vsigmoid_##SFX(ao);                             \
            clstm_vstore_##SFX(c + r * ld_c + jg, c_, ng);                      \
            clstm_vstore_##SFX(h + r * ld_h + jg, o_ * clstm_vtanh_##SFX(c_), ng); \
        }                                                                       \
    }                                                                           \
}

/* Unit group outermost: its packed weights (K x NG*VW floats) stay in L1
 * while every row tile reads them (the rows of a1, a2 are the smaller
 * operand); then the rows in tiles of MR, the last ones singly. The groups
 * run in ascending order, or descending where `order` is odd: a scan passes
 * its step's parity, so that a step starts on the groups that the last one
 * read last, still in L1, where the weights are larger than L1 (batch 1,
 * I=16, H=64: 80 KB; the order never changes a value). */
#define CLSTM_FUSED_ROWS(BODY, EDGE, PAIR, PAIRS, MR, VW)                       \
    for (ptrdiff_t ui = 0; ui < u_end - u0;) {                                  \
        /* fewer rows than a tile (PAIRS): two groups at a time while two are   \
         * left, each row on its own */                                         \
        const int two = PAIRS && n < MR && u_end - u0 - ui >= 2;                \
        const ptrdiff_t u = (order & 1) ? u_end - 1 - ui - two : u0 + ui;       \
        const ptrdiff_t j = u * VW, jl = (u + two) * VW;                        \
        const ptrdiff_t nu = H - jl < VW ? H - jl : VW;                         \
        const float *pk = packed + u * stride;                                  \
        ui += 1 + two;                                                          \
        for (ptrdiff_t r = 0; r < n; r += (n - r >= MR ? MR : 1)) {             \
            const float *pr = pre == NULL ? NULL : pre + r * ld_pre + j;        \
            if (two)                                                            \
                PAIR(K1, a1 + r * lda1, lda1, K2, a2 + r * lda2, lda2, pk, stride, \
                     pr, ld_pre, H, c_prev + r * ld_cp + j, ld_cp, c + r * ld_c + j, \
                     ld_c, h + r * ld_h + j, ld_h, nu);                         \
            else if (n - r >= MR)                                               \
                BODY(K1, a1 + r * lda1, lda1, K2, a2 + r * lda2, lda2, pk, 0, pr, \
                     ld_pre, H, c_prev + r * ld_cp + j, ld_cp, c + r * ld_c + j, \
                     ld_c, h + r * ld_h + j, ld_h, nu);                         \
            else                                                                \
                EDGE(K1, a1 + r * lda1, lda1, K2, a2 + r * lda2, lda2, pk, 0, pr, \
                     ld_pre, H, c_prev + r * ld_cp + j, ld_cp, c + r * ld_c + j, \
                     ld_c, h + r * ld_h + j, ld_h, nu);                         \
        }                                                                       \
    }

/* A variant's tiles: clstm_fused_SFX_PC (MR rows), _PCe (one row), _PCp (one
 * row, two unit groups); P, C: peephole, coupled. */
#define CLSTM_DEFINE_FUSED_TILES(SFX, ATTR, VT, VW, MR, P, C)                   \
CLSTM_DEFINE_FUSED_TILE(clstm_fused_##SFX##_##P##C, SFX, ATTR, VT, VW, MR, 1, P, C) \
CLSTM_DEFINE_FUSED_TILE(clstm_fused_##SFX##_##P##C##e, SFX, ATTR, VT, VW, 1, 1, P, C) \
CLSTM_DEFINE_FUSED_TILE(clstm_fused_##SFX##_##P##C##p, SFX, ATTR, VT, VW, 1, 2, P, C)

#define CLSTM_DEFINE_FUSED(SFX, ATTR, VT, VI, VW, MR, PAIRS)                    \
CLSTM_DEFINE_VMATH(SFX, ATTR, VT, VI)                                           \
/* nu < VW only in the last group: its loads and stores stop at H */            \
ATTR static inline __attribute__((always_inline)) VT                            \
clstm_vload_##SFX(const float *p, ptrdiff_t nu)                                 \
{                                                                               \
    if (nu == VW) return *(const VT##u *)p;                                     \
    VT v = (VT){0};                                                             \
    memcpy(&v, p, (size_t)nu * sizeof(float));                                  \
    return v;                                                                   \
}                                                                               \
ATTR static inline __attribute__((always_inline)) void                          \
clstm_vstore_##SFX(float *p, VT v, ptrdiff_t nu)                                \
{                                                                               \
    if (nu == VW) *(VT##u *)p = v;                                              \
    else memcpy(p, &v, (size_t)nu * sizeof(float));                             \
}                                                                               \
CLSTM_DEFINE_FUSED_TILES(SFX, ATTR, VT, VW, MR, 0, 0)                           \
CLSTM_DEFINE_FUSED_TILES(SFX, ATTR, VT, VW, MR, 1, 0)                           \
CLSTM_DEFINE_FUSED_TILES(SFX, ATTR, VT, VW, MR, 0, 1)                           \
CLSTM_DEFINE_FUSED_TILES(SFX, ATTR, VT, VW, MR, 1, 1)                           \
ATTR static void clstm_fused_lstm_##SFX(                                        \
    int variant, ptrdiff_t n, ptrdiff_t K1, const float *a1, ptrdiff_t lda1,    \
    ptrdiff_t K2, const float *a2, ptrdiff_t lda2, ptrdiff_t H,                 \
    const float *packed, const float *pre, ptrdiff_t ld_pre,                    \
    const float *c_prev, ptrdiff_t ld_cp, float *c, ptrdiff_t ld_c,             \
    float *h, ptrdiff_t ld_h, ptrdiff_t u0, ptrdiff_t u1, int order)            \
{                                                                               \
    const int peep = variant & CLSTM_PEEPHOLE, coupled = variant & CLSTM_COUPLED; \
    const ptrdiff_t stride = (K1 + K2 + 1 + (peep ? 1 : 0)) * (coupled ? 3 : 4) * VW; \
    const ptrdiff_t u_end = u1 < (H + VW - 1) / VW ? u1 : (H + VW - 1) / VW;    \
    switch (variant & (CLSTM_PEEPHOLE | CLSTM_COUPLED)) {                       \
    case 0:                                                                     \
        CLSTM_FUSED_ROWS(clstm_fused_##SFX##_00, clstm_fused_##SFX##_00e,       \
            clstm_fused_##SFX##_00p, PAIRS, MR, VW) break;                      \
    case CLSTM_PEEPHOLE:                                                        \
        CLSTM_FUSED_ROWS(clstm_fused_##SFX##_10, clstm_fused_##SFX##_10e,       \
            clstm_fused_##SFX##_10p, PAIRS, MR, VW) break;                      \
    case CLSTM_COUPLED:                                                         \
        CLSTM_FUSED_ROWS(clstm_fused_##SFX##_01, clstm_fused_##SFX##_01e,       \
            clstm_fused_##SFX##_01p, PAIRS, MR, VW) break;                      \
    default:                                                                    \
        CLSTM_FUSED_ROWS(clstm_fused_##SFX##_11, clstm_fused_##SFX##_11e,       \
            clstm_fused_##SFX##_11p, PAIRS, MR, VW) break;                      \
    }                                                                           \
}

typedef void (*clstm_fused_lstm_fn)(int, ptrdiff_t, ptrdiff_t, const float *, ptrdiff_t,
                                    ptrdiff_t, const float *, ptrdiff_t, ptrdiff_t,
                                    const float *, const float *, ptrdiff_t,
                                    const float *, ptrdiff_t, float *, ptrdiff_t,
                                    float *, ptrdiff_t, ptrdiff_t, ptrdiff_t, int);

#if CLSTM_HAVE_DISPATCH   /* (_dispatch.h: gcc, x86-64 glibc Linux) */
/* AVX-512: 4 rows x 4 gates = 16 of 32 zmm; AVX2: 3 x 4 = 12 of 16 ymm;
 * SSE2: 2 x 4 = 8 of 16 xmm (the rest: weights and broadcasts). Fewer rows
 * than a tile take two unit groups at a time on AVX-512 only (PAIRS; on an
 * AVX2 Zen 3 core, single rows through two groups were no faster). */
CLSTM_DEFINE_FUSED(v4, __attribute__((target("arch=x86-64-v4"))), clstm_v16, clstm_vi16, 16, 4, 1)
CLSTM_DEFINE_FUSED(v3, __attribute__((target("arch=x86-64-v3"))), clstm_v8, clstm_vi8, 8, 3, 0)
CLSTM_DEFINE_FUSED(base, , clstm_v4, clstm_vi4, 4, 2, 0)

/* (indexed by clstm_isa_level: the small GEMM's level) */
static const clstm_fused_lstm_fn clstm_fused_fns[3] = {
    clstm_fused_lstm_base, clstm_fused_lstm_v3, clstm_fused_lstm_v4};
static const ptrdiff_t clstm_fused_widths[3] = {4, 8, 16};
#else
CLSTM_DEFINE_FUSED(base, , clstm_v4, clstm_vi4, 4, 2, 0)
static const clstm_fused_lstm_fn clstm_fused_fns[1] = {clstm_fused_lstm_base};
static const ptrdiff_t clstm_fused_widths[1] = {4};
#endif

/* The unit-group width V of this CPU's variant (the packing must match it). */
static ptrdiff_t clstm_fused_width(void)
{
    return clstm_fused_widths[clstm_isa_level()];
}

/* One step of the fused cell on n rows: c[:n], h[:n] from
 * a = [a1 | a2] @ packed (+ pre) and c_prev (see the top of this file).
 * a1 (n x K1, K1 may be 0), a2 (n x K2); pre NULL (thin inputs) or the
 * rows of the step's input projection (n x NG*H, gate blocks of H).
 * Only unit groups [u0, u1) (units [u0 V, u1 V) of c and h): a step can be
 * split across threads by its units, each unit's values the same in any
 * split (clstm_team in _threads.h). `order`: odd runs the groups in
 * descending order (CLSTM_FUSED_ROWS). */
static void clstm_fused_lstm_step(int variant, ptrdiff_t n, ptrdiff_t K1, const float *a1,
                                  ptrdiff_t lda1, ptrdiff_t K2, const float *a2,
                                  ptrdiff_t lda2, ptrdiff_t H, const float *packed,
                                  const float *pre, ptrdiff_t ld_pre,
                                  const float *c_prev, ptrdiff_t ld_cp,
                                  float *c, ptrdiff_t ld_c, float *h, ptrdiff_t ld_h,
                                  ptrdiff_t u0, ptrdiff_t u1, int order)
{
    static clstm_fused_lstm_fn fn = NULL;
    if (fn == NULL) fn = clstm_fused_fns[clstm_isa_level()];
    fn(variant, n, K1, a1, lda1, K2, a2, lda2, H, packed, pre, ld_pre, c_prev, ld_cp,
       c, ld_c, h, ld_h, u0, u1, order);
}

#else  /* no vector extensions: the scan runs the two passes */
#define CLSTM_HAVE_FUSED_CELL 0
static ptrdiff_t clstm_fused_width(void) { return 4; }
static void clstm_fused_lstm_step(int variant, ptrdiff_t n, ptrdiff_t K1, const float *a1,
                                  ptrdiff_t lda1, ptrdiff_t K2, const float *a2,
                                  ptrdiff_t lda2, ptrdiff_t H, const float *packed,
                                  const float *pre, ptrdiff_t ld_pre,
                                  const float *c_prev, ptrdiff_t ld_cp,
                                  float *c, ptrdiff_t ld_c, float *h, ptrdiff_t ld_h,
                                  ptrdiff_t u0, ptrdiff_t u1, int order)
{
    (void)u0; (void)u1; (void)order;
    (void)variant; (void)n; (void)K1; (void)a1; (void)lda1; (void)K2; (void)a2;
    (void)lda2; (void)H; (void)packed; (void)pre; (void)ld_pre; (void)c_prev;
    (void)ld_cp; (void)c; (void)ld_c; (void)h; (void)ld_h;
}
#endif

/* Size and packing at this CPU's width. */
static ptrdiff_t clstm_fused_size(ptrdiff_t K, ptrdiff_t H, int ng, int peephole)
{
    return clstm_fused_size_v(K, H, ng, peephole, clstm_fused_width());
}

static void clstm_pack_fused(ptrdiff_t K1, const float *w1, ptrdiff_t K2, const float *w2,
                             ptrdiff_t H, int ng, const float *bias, const float *peep,
                             float *out)
{
    clstm_pack_fused_v(K1, w1, K2, w2, H, ng, bias, peep, clstm_fused_width(), out);
}

#endif /* CLSTM_FUSED_CELL_H */
