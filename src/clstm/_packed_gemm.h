/*
 * Small float32 GEMM against a pre-packed right-hand matrix:
 *     C[n x N] (+)= A[n x K] @ B[K x N]
 * for the per-step recurrent products of an LSTM, where A has few rows (the
 * batch, or one thread's share of it) and B is a weight matrix used T times
 * in a row. A general BLAS repacks B on every call; here B is packed once
 * per forward/backward into column panels of 16 floats (panel p holds
 * B[:, 16p:16p+16] as K consecutive 16-float rows, zero-padded at the right
 * edge), so each step streams it straight from cache.
 *
 * The micro-kernel keeps an MR x (NP*16) tile of C in registers and, per k,
 * loads NP panel rows of B and broadcasts MR values of A. It is written with
 * GCC vector extensions, which lower to the widest vectors of the target, and
 * is compiled three times with tile sizes matched to the register file:
 * AVX-512 (x86-64-v4, 32 zmm): 4 x 64; AVX2+FMA (x86-64-v3, 16 ymm): 6 x 16;
 * baseline SSE2 (16 xmm): 2 x 16. The variant is chosen once at run time.
 * Each is also compiled reading A transposed, for the weight gradients
 * (clstm_wgrad: sums over all steps' rows, A^T @ B in blocks of rows).
 * Compilers without vector extensions (MSVC) use BLAS instead: see
 * CLSTM_HAVE_PACKED_GEMM.
 */
#ifndef CLSTM_PACKED_GEMM_H
#define CLSTM_PACKED_GEMM_H

#include <stddef.h>
#include <string.h>

#include "_dispatch.h"

#define CLSTM_PANEL 16

/* Size (in floats) of the packed form of a K x N matrix. */
static inline ptrdiff_t clstm_packed_size(ptrdiff_t K, ptrdiff_t N)
{
    return ((N + CLSTM_PANEL - 1) / CLSTM_PANEL) * K * CLSTM_PANEL;
}

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Pack B (K x N) into panels. B is read as b[k * ldb + j], or, when
 * `transposed`, as b[j * ldb + k] (B given as its transpose, e.g. W_hh for
 * the forward product h @ W_hh^T). A training loop packs again after every
 * optimizer step: the transposed whole panels go through 4 x 4 SSE
 * transposes (batch 1, I=16, H=64, [W_ih | W_hh]: 6.3 -> 3.0 us a step with
 * gathering the two side by side, Zen 5). */
static void clstm_pack_b(ptrdiff_t K, ptrdiff_t N, const float *b, ptrdiff_t ldb,
                         int transposed, float *packed)
{
    const ptrdiff_t n_panels = (N + CLSTM_PANEL - 1) / CLSTM_PANEL;
    for (ptrdiff_t p = 0; p < n_panels; ++p) {
        float *dst = packed + p * K * CLSTM_PANEL;
        const ptrdiff_t j0 = p * CLSTM_PANEL;
        const ptrdiff_t width = N - j0 < CLSTM_PANEL ? N - j0 : CLSTM_PANEL;
        if (!transposed && width == CLSTM_PANEL) {  /* (a copy of 64 bytes a row) */
            for (ptrdiff_t k = 0; k < K; ++k)
                memcpy(dst + k * CLSTM_PANEL, b + k * ldb + j0, CLSTM_PANEL * sizeof(float));
            continue;
        }
        ptrdiff_t k0 = 0;
#if defined(__SSE2__)
        if (transposed && width == CLSTM_PANEL) {
            /* 4 rows of B^T (4 columns of the panel) by 4 of k at a time */
            for (; k0 + 4 <= K; k0 += 4)
                for (ptrdiff_t j = 0; j < CLSTM_PANEL; j += 4) {
                    const float *src = b + (j0 + j) * ldb + k0;
                    __m128 r0 = _mm_loadu_ps(src), r1 = _mm_loadu_ps(src + ldb);
                    __m128 r2 = _mm_loadu_ps(src + 2 * ldb), r3 = _mm_loadu_ps(src + 3 * ldb);
                    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
                    _mm_storeu_ps(dst + k0 * CLSTM_PANEL + j, r0);
                    _mm_storeu_ps(dst + (k0 + 1) * CLSTM_PANEL + j, r1);
                    _mm_storeu_ps(dst + (k0 + 2) * CLSTM_PANEL + j, r2);
                    _mm_storeu_ps(dst + (k0 + 3) * CLSTM_PANEL + j, r3);
                }
        }
#endif
        for (ptrdiff_t k = k0; k < K; ++k) {
            float *row = dst + k * CLSTM_PANEL;
            ptrdiff_t j = 0;
            if (transposed)
                for (; j < width; ++j) row[j] = b[(j0 + j) * ldb + k];
            else
                for (; j < width; ++j) row[j] = b[k * ldb + j0 + j];
            for (; j < CLSTM_PANEL; ++j) row[j] = 0.0f;
        }
    }
}

#if defined(__GNUC__) || defined(__clang__)
#define CLSTM_HAVE_PACKED_GEMM 1

/* Vectors of 16, 8 and 4 floats (zmm, ymm, xmm); the "u" types allow
 * unaligned access. Each variant uses its target's native width: wider
 * generic vectors are split by gcc in ways that spill. */
typedef float clstm_v16 __attribute__((vector_size(64)));
typedef float clstm_v16u __attribute__((vector_size(64), aligned(4)));
typedef float clstm_v8 __attribute__((vector_size(32)));
typedef float clstm_v8u __attribute__((vector_size(32), aligned(4)));
typedef float clstm_v4 __attribute__((vector_size(16)));
typedef float clstm_v4u __attribute__((vector_size(16), aligned(4)));

/* One MR x (NP*16) tile: c[0:MR, 0:ncols] (+)= a[0:MR, :] @ panels[0:NP],
 * in vectors of type VT holding VW floats. ncols < NP*16 only at the right
 * edge of C. AT = 1: each A is read transposed, element (r, k) at
 * a[k * lda + r] (the weight gradients' grad_gates^T, see clstm_wgrad). */
#define CLSTM_A_AT(AT, a, lda, r, k) ((AT) ? (a)[(k) * (lda) + (r)] : (a)[(r) * (lda) + (k)])
#define CLSTM_DEFINE_TILE(NAME, VT, VW, MR, NP, AT)                             \
static inline __attribute__((always_inline)) void NAME(                         \
    ptrdiff_t K1, const float *a1, ptrdiff_t lda1,                              \
    ptrdiff_t K2, const float *a2, ptrdiff_t lda2, const float *pk,             \
    ptrdiff_t panel_stride, float *c, ptrdiff_t ldc, ptrdiff_t ncols,           \
    int accumulate)                                                             \
{                                                                               \
    enum { PER = CLSTM_PANEL / VW, NV = NP * PER };                             \
    VT acc[MR][NV];                                                             \
    for (int r = 0; r < MR; ++r)                                                \
        for (int v = 0; v < NV; ++v) acc[r][v] = (VT){0};                       \
    /* rows [0, K1) of the packed B multiply a1, rows [K1, K1+K2) a2; two    \
     * plain loops: folding them into a loop over segments cost the SSE2 and  \
     * AVX2 variants up to 30 % (measured) */                                 \
    for (ptrdiff_t k = 0; k < K1; ++k) {                                        \
        VT w[NV];                                                               \
        for (int v = 0; v < NV; ++v)                                            \
            w[v] = *(const VT##u *)(pk + (v / PER) * panel_stride               \
                                    + k * CLSTM_PANEL + (v % PER) * VW);        \
        for (int r = 0; r < MR; ++r) {                                          \
            const float av = CLSTM_A_AT(AT, a1, lda1, r, k);                    \
            for (int v = 0; v < NV; ++v) acc[r][v] += av * w[v];                \
        }                                                                       \
    }                                                                           \
    pk += K1 * CLSTM_PANEL;                                                     \
    for (ptrdiff_t k = 0; k < K2; ++k) {                                        \
        VT w[NV];                                                               \
        for (int v = 0; v < NV; ++v)                                            \
            w[v] = *(const VT##u *)(pk + (v / PER) * panel_stride               \
                                    + k * CLSTM_PANEL + (v % PER) * VW);        \
        for (int r = 0; r < MR; ++r) {                                          \
            const float av = CLSTM_A_AT(AT, a2, lda2, r, k);                    \
            for (int v = 0; v < NV; ++v) acc[r][v] += av * w[v];                \
        }                                                                       \
    }                                                                           \
    for (int r = 0; r < MR; ++r) {                                              \
        float *crow = c + r * ldc;                                              \
        if (ncols == NP * CLSTM_PANEL) {                                        \
            for (int v = 0; v < NV; ++v) {                                      \
                VT x = acc[r][v];                                               \
                if (accumulate) x += *(const VT##u *)(crow + v * VW);           \
                *(VT##u *)(crow + v * VW) = x;                                  \
            }                                                                   \
        } else {    /* whole vectors, then the last few columns one by one */ \
            float tmp[NP * CLSTM_PANEL];                                        \
            ptrdiff_t j = 0;                                                    \
            for (int v = 0; v < NV && j + VW <= ncols; ++v, j += VW) {          \
                VT x = acc[r][v];                                               \
                if (accumulate) x += *(const VT##u *)(crow + j);                \
                *(VT##u *)(crow + j) = x;                                       \
            }                                                                   \
            memcpy(tmp, acc[r], sizeof tmp);                                    \
            for (; j < ncols; ++j)                                              \
                crow[j] = accumulate ? crow[j] + tmp[j] : tmp[j];               \
        }                                                                       \
    }                                                                           \
}

/* The tiles of R rows: R x NP panels for the body; at the right edge R x 4
 * (where NP > 4), R x 2 (where NP > 2), then R x 1 panels, as many of each
 * as fit (for NP = 1 only the first is called). A 4 x 1 AVX-512 tile holds
 * 4 accumulator chains, half of what two FMA pipes with 4 cycles of latency
 * need (Zen 5): at N = 32 (grad_h = grad_gates @ W_hh of a 32-unit LSTM, 2
 * panels) the product took 2x the time of 4 x 2 tiles. */
#define CLSTM_DEFINE_TILES(SFX, VT, VW, R, NP, AT)                              \
CLSTM_DEFINE_TILE(clstm_tile_##SFX##_##R##_wide, VT, VW, R, NP, AT)             \
CLSTM_DEFINE_TILE(clstm_tile_##SFX##_##R##_four, VT, VW, R, 4, AT)              \
CLSTM_DEFINE_TILE(clstm_tile_##SFX##_##R##_two, VT, VW, R, 2, AT)               \
CLSTM_DEFINE_TILE(clstm_tile_##SFX##_##R##_one, VT, VW, R, 1, AT)

/* The tile of R rows and W panels (KIND: wide, four, two, one) at panel p. */
#define CLSTM_TILE_AT(SFX, R, KIND, W, p)                                       \
    {                                                                           \
        ptrdiff_t nc = N - (p) * CLSTM_PANEL;                                   \
        if (nc > (W) * CLSTM_PANEL) nc = (W) * CLSTM_PANEL;                     \
        clstm_tile_##SFX##_##R##_##KIND(K1, r1, lda1, K2, r2, lda2,             \
            packed + (p) * ps, ps, cr + (p) * CLSTM_PANEL, ldc, nc, accumulate); \
    }

/* One block of R rows of A against panels [g0, g1) (a case of the driver's
 * switch on the rows left), its tiles left to right, or right to left where
 * `rev`: consecutive blocks alternate, so a B larger than L1 (batch 1, I=16,
 * H=64: 80 KB) starts each pass on the panels that the last pass read last,
 * still in L1, instead of on those it evicted first. The order of the panels
 * never changes a value. (One loop over the tiles in either order: each tile
 * is inlined once, not once per direction.) The block's panels end at gb:
 * g1, or g1 - 1 where its rows' last panel ran on tiles of their own. */
#define CLSTM_ROW_BLOCK(SFX, R, NP)                                             \
    case R: {                                                                   \
        const ptrdiff_t n_w = (gb - g0) / NP, e_w = g0 + n_w * NP;              \
        const ptrdiff_t n_4 = NP > 4 ? (gb - e_w) / 4 : 0, e_4 = e_w + 4 * n_4; \
        const ptrdiff_t n_2 = NP > 2 ? (gb - e_4) / 2 : 0, e_2 = e_4 + 2 * n_2; \
        const ptrdiff_t n_t = n_w + n_4 + n_2 + (gb - e_2);                     \
        for (ptrdiff_t q = 0; q < n_t; ++q) {                                   \
            const ptrdiff_t i = rev ? n_t - 1 - q : q;                          \
            if (i < n_w) {                                                      \
                p = g0 + i * NP;                                                \
                CLSTM_TILE_AT(SFX, R, wide, NP, p)                              \
            } else if (NP > 4 && i < n_w + n_4) {                               \
                p = e_w + (i - n_w) * 4;                                        \
                CLSTM_TILE_AT(SFX, R, four, 4, p)                               \
            } else if (NP > 2 && i < n_w + n_4 + n_2) {                         \
                p = e_4 + (i - n_w - n_4) * 2;                                  \
                CLSTM_TILE_AT(SFX, R, two, 2, p)                                \
            } else {                                                            \
                p = e_2 + (i - n_w - n_4 - n_2);                                \
                CLSTM_TILE_AT(SFX, R, one, 1, p)                                \
            }                                                                   \
        }                                                                       \
        break;                                                                  \
    }

/* The packed B is taken in groups of panels of about CLSTM_GROUP_BYTES (a
 * multiple of 4 panels, the widest tile's, so the tiles are those of one
 * pass over all panels), each against every row of A before the next: a
 * group stays in L2 while the rows stream past. Without the groups, a B
 * larger than L2 (nlp-large's 2 MB input and 4 MB recurrent weights) came
 * from L3 once per block of rows: 200 GFLOP/s on Zen 5 against 260-268 with
 * them (n = 64 and 6400 rows, K = 256 and 512, N = 2048; one core, 273 peak). */
#define CLSTM_GROUP_BYTES (128 * 1024)

static inline ptrdiff_t clstm_panel_group(ptrdiff_t panel_floats)
{
    ptrdiff_t group;
    if (panel_floats <= 0) return 4;    /* K = 0: nothing to keep */
    group = CLSTM_GROUP_BYTES / (panel_floats * (ptrdiff_t)sizeof(float)) / 4 * 4;
    return group < 4 ? 4 : group;
}

/* The whole product in blocks of MR rows, the last block with the rows left
 * over. Those get a tile of their own height rather than one row at a time:
 * a one-row AVX2 tile holds 2 accumulator chains, so it waits on the FMA
 * latency (4 cycles per k for 2 FMAs) and costs 2/3 of a full 6-row tile;
 * the 4 rows left of a 16-row share (a 32-row batch on 2 threads) took 8/3
 * full tiles that way, against 2/3 as one 4-row tile. Every tile sums over k
 * in the same order, so the result of a row does not depend on the block it
 * falls in (thread splits stay bit-identical), nor on the panel groups.
 * CASES: one CLSTM_ROW_BLOCK per height 1..MR. TALL: statements run first,
 * which may compute rows [0, r0) on tiles of their own (r0 starts at 0), or
 * the group's last panel for rows [0, r_last) (a multiple of MR; r_last
 * starts at 0). */
#define CLSTM_A_ROW(AT, a, lda, r) ((AT) ? (a) + (r) : (a) + (r) * (lda))
#define CLSTM_DEFINE_GEMM(SFX, ATTR, MR, CASES, TALL, AT)                       \
ATTR static void clstm_packed_gemm_##SFX(                                       \
    ptrdiff_t n, ptrdiff_t K1, const float *a1, ptrdiff_t lda1,                 \
    ptrdiff_t K2, const float *a2, ptrdiff_t lda2, ptrdiff_t N,                 \
    const float *packed, float *c, ptrdiff_t ldc, int accumulate, int order)    \
{                                                                               \
    const ptrdiff_t n_panels = (N + CLSTM_PANEL - 1) / CLSTM_PANEL;             \
    const ptrdiff_t ps = (K1 + K2) * CLSTM_PANEL;                               \
    const ptrdiff_t group = AT ? 4 : clstm_panel_group(ps);                    \
    ptrdiff_t r, rows, p, g0, g1, r0, r_last;                                   \
    int rev = order & 1;                                                        \
    if (AT) K1 = 0;     /* (clstm_wgrad: one A; the first loop compiles away) */ \
    for (g0 = 0; g0 < n_panels; g0 = g1) {                                      \
        g1 = n_panels - g0 > group ? g0 + group : n_panels;                     \
        r0 = 0;                                                                 \
        r_last = 0;                                                             \
        TALL                                                                    \
        for (r = r0; r < n; r += rows) {                                        \
            rows = n - r < MR ? n - r : MR;                                     \
            const ptrdiff_t gb = r < r_last ? g1 - 1 : g1;                      \
            const float *r1 = CLSTM_A_ROW(AT, a1, lda1, r);                     \
            const float *r2 = CLSTM_A_ROW(AT, a2, lda2, r);                     \
            float *cr = c + r * ldc;                                            \
            switch (rows) { CASES }                                             \
            rev ^= 1;                                                           \
        }                                                                       \
    }                                                                           \
}

/* Each variant is compiled twice: SFX for A read as stored, SFX##t for A
 * read transposed (AT = 1, clstm_wgrad). */
#define CLSTM_BASE_GEMM(SFX, AT)                                                \
CLSTM_DEFINE_TILES(SFX, clstm_v4, 4, 2, 1, AT)                                  \
CLSTM_DEFINE_TILES(SFX, clstm_v4, 4, 1, 1, AT)                                  \
CLSTM_DEFINE_GEMM(SFX, , 2, CLSTM_ROW_BLOCK(SFX, 2, 1) CLSTM_ROW_BLOCK(SFX, 1, 1), , AT)

#if CLSTM_HAVE_DISPATCH   /* (_dispatch.h: gcc, x86-64 glibc Linux) */
/* AVX-512: 4 x 64 (4 panels), a single row 1 x 128 (8 panels: 8 chains, the
 * latency of two FMA pipes covered; batch 1, I=16, H=64: the step's [x | h]
 * product 0.48 -> 0.44 us, 0.33 -> 0.32 with the alternating order, Zen 5);
 * AVX2: 6 x 16; SSE2: 2 x 16.
 * A B of one panel (N <= 16: grad_x = grad_gates @ W_ih of 5-16 inputs, over
 * all T*B rows) runs on 8-row AVX-512 tiles first: a 4-row one holds 4
 * chains, half of what Zen 5's two FMA pipes need (ts-medium's grad_x,
 * 6,400 x 512 @ 512 x 8, 0.79 -> 0.57 ms); the same sums, k by k, bit for bit.
 * So does the last panel of an odd number of them, which a block of 4 rows
 * would take on a 4 x 1 tile (ts-small's gates, 13 panels: 4 + 4 + 4 + 1). */
#define CLSTM_V4_GEMM(SFX, AT)                                                  \
CLSTM_DEFINE_TILES(SFX, clstm_v16, 16, 4, 4, AT)                                \
CLSTM_DEFINE_TILES(SFX, clstm_v16, 16, 3, 4, AT)                                \
CLSTM_DEFINE_TILES(SFX, clstm_v16, 16, 2, 4, AT)                                \
CLSTM_DEFINE_TILES(SFX, clstm_v16, 16, 1, 8, AT)                                \
CLSTM_DEFINE_TILE(clstm_tile_##SFX##_8_narrow, clstm_v16, 16, 8, 1, AT)         \
CLSTM_DEFINE_GEMM(SFX, __attribute__((target("arch=x86-64-v4"))), 4,            \
    CLSTM_ROW_BLOCK(SFX, 4, 4) CLSTM_ROW_BLOCK(SFX, 3, 4)                       \
    CLSTM_ROW_BLOCK(SFX, 2, 4) CLSTM_ROW_BLOCK(SFX, 1, 8),                      \
    if ((g1 - g0) & 1) {                                                        \
        const ptrdiff_t g = g1 - 1;                                             \
        const ptrdiff_t nc = N - g * CLSTM_PANEL < CLSTM_PANEL                  \
            ? N - g * CLSTM_PANEL : CLSTM_PANEL;                                \
        for (; r_last + 8 <= n; r_last += 8)                                    \
            clstm_tile_##SFX##_8_narrow(K1, CLSTM_A_ROW(AT, a1, lda1, r_last), lda1, \
                K2, CLSTM_A_ROW(AT, a2, lda2, r_last), lda2, packed + g * ps, ps, \
                c + r_last * ldc + g * CLSTM_PANEL, ldc, nc, accumulate);       \
        if (g1 - g0 == 1) r0 = r_last;        /* (those rows are done) */       \
    }, AT)
/* AVX2 blocks of 1 or 2 rows span 4 or 2 panels, so that they too keep 8
 * FMA chains in flight (Zen 3 / Haswell: 2 pipes x 4 cycles of latency) */
#define CLSTM_V3_GEMM(SFX, AT)                                                  \
CLSTM_DEFINE_TILES(SFX, clstm_v8, 8, 6, 1, AT)                                  \
CLSTM_DEFINE_TILES(SFX, clstm_v8, 8, 5, 1, AT)                                  \
CLSTM_DEFINE_TILES(SFX, clstm_v8, 8, 4, 1, AT)                                  \
CLSTM_DEFINE_TILES(SFX, clstm_v8, 8, 3, 1, AT)                                  \
CLSTM_DEFINE_TILES(SFX, clstm_v8, 8, 2, 2, AT)                                  \
CLSTM_DEFINE_TILES(SFX, clstm_v8, 8, 1, 4, AT)                                  \
CLSTM_DEFINE_GEMM(SFX, __attribute__((target("arch=x86-64-v3"))), 6,            \
    CLSTM_ROW_BLOCK(SFX, 6, 1) CLSTM_ROW_BLOCK(SFX, 5, 1) CLSTM_ROW_BLOCK(SFX, 4, 1) \
    CLSTM_ROW_BLOCK(SFX, 3, 1) CLSTM_ROW_BLOCK(SFX, 2, 2) CLSTM_ROW_BLOCK(SFX, 1, 4), , AT)
CLSTM_V4_GEMM(v4, 0)
CLSTM_V4_GEMM(v4t, 1)
CLSTM_V3_GEMM(v3, 0)
CLSTM_V3_GEMM(v3t, 1)
CLSTM_BASE_GEMM(base, 0)
CLSTM_BASE_GEMM(baset, 1)

typedef void (*clstm_packed_gemm_fn)(ptrdiff_t, ptrdiff_t, const float *, ptrdiff_t,
                                     ptrdiff_t, const float *, ptrdiff_t, ptrdiff_t,
                                     const float *, float *, ptrdiff_t, int, int);

/* One row of A against NP panels (AVX-512), each output summed as two chains,
 * over k in [0, K/2) and over [K/2, K), added at the end: 2 NP chains where
 * the one-row tile of 4 panels or fewer has NP, half of what Zen 5's two
 * FMA pipes need. `rev` runs k descending in both halves, so a scan that
 * passes its step's parity starts each step on the rows of B that the last
 * one read last (a 256 x 64 recurrent weight is 64 KB, more than L1). The
 * sums differ from the tiles' (another order), so the scan uses this only
 * for batches of one row (clstm_packed_row_split). */
#define CLSTM_DEFINE_SPLIT_TILE(NP)                                             \
__attribute__((target("arch=x86-64-v4"))) static inline                         \
__attribute__((always_inline)) void clstm_split_tile_##NP(                      \
    ptrdiff_t K, const float *a, const float *pk, ptrdiff_t ps, float *c,       \
    ptrdiff_t ncols, int accumulate, int rev)                                   \
{                                                                               \
    const ptrdiff_t Kh = K / 2;                                                 \
    clstm_v16 lo[NP], hi[NP];                                                   \
    for (int v = 0; v < NP; ++v) lo[v] = hi[v] = (clstm_v16){0};                \
    for (ptrdiff_t q = 0; q < Kh; ++q) {                                        \
        const ptrdiff_t k = rev ? Kh - 1 - q : q;                               \
        const float al = a[k], ah = a[Kh + k];                                  \
        for (int v = 0; v < NP; ++v) {                                          \
            lo[v] += al * *(const clstm_v16u *)(pk + v * ps + k * CLSTM_PANEL); \
            hi[v] += ah * *(const clstm_v16u *)(pk + v * ps + (Kh + k) * CLSTM_PANEL); \
        }                                                                       \
    }                                                                           \
    if (K & 1)          /* (the second half has the odd row, last) */           \
        for (int v = 0; v < NP; ++v)                                            \
            hi[v] += a[K - 1] * *(const clstm_v16u *)(pk + v * ps + (K - 1) * CLSTM_PANEL); \
    float tmp[NP * CLSTM_PANEL];                                                \
    for (int v = 0; v < NP; ++v) {                                              \
        const clstm_v16 x = lo[v] + hi[v];                                      \
        memcpy(tmp + v * CLSTM_PANEL, &x, sizeof x);                            \
    }                                                                           \
    for (ptrdiff_t j = 0; j < ncols; ++j)                                       \
        c[j] = accumulate ? c[j] + tmp[j] : tmp[j];                             \
}
CLSTM_DEFINE_SPLIT_TILE(4)
CLSTM_DEFINE_SPLIT_TILE(2)
CLSTM_DEFINE_SPLIT_TILE(1)

__attribute__((target("arch=x86-64-v4"))) static void clstm_packed_row_split_v4(
    ptrdiff_t K, const float *a, ptrdiff_t N, const float *packed, float *c,
    int accumulate, int order)
{
    const ptrdiff_t n_panels = (N + CLSTM_PANEL - 1) / CLSTM_PANEL, ps = K * CLSTM_PANEL;
    for (ptrdiff_t p = 0, w; p < n_panels; p += w) {
        const ptrdiff_t left = n_panels - p;
        w = left >= 4 ? 4 : left >= 2 ? 2 : 1;
        const ptrdiff_t nc = N - p * CLSTM_PANEL < w * CLSTM_PANEL
            ? N - p * CLSTM_PANEL : w * CLSTM_PANEL;
        if (w == 4)
            clstm_split_tile_4(K, a, packed + p * ps, ps, c + p * CLSTM_PANEL, nc, accumulate,
                               order & 1);
        else if (w == 2)
            clstm_split_tile_2(K, a, packed + p * ps, ps, c + p * CLSTM_PANEL, nc, accumulate,
                               order & 1);
        else
            clstm_split_tile_1(K, a, packed + p * ps, ps, c + p * CLSTM_PANEL, nc, accumulate,
                               order & 1);
    }
}

/* The ISA level every manually dispatched kernel (this small GEMM, the
 * narrow products, the fused cell) runs at: 2 = x86-64-v4 (AVX-512),
 * 1 = x86-64-v3 (AVX2 + FMA), 0 = the baseline. Found once (a benign race:
 * every thread finds the same): the fused cell's steps ask for its width
 * every step, which ran __builtin_cpu_init and the CPU checks each time. */
static int clstm_isa_level(void)
{
    static int level = -1;
    if (level < 0) {
        __builtin_cpu_init();
        level = __builtin_cpu_supports("x86-64-v4") ? 2
              : __builtin_cpu_supports("x86-64-v3") ? 1 : 0;
    }
    return level;
}

static clstm_packed_gemm_fn clstm_select_packed_gemm(int transposed_a)
{
    static const clstm_packed_gemm_fn fns[2][3] = {
        {clstm_packed_gemm_base, clstm_packed_gemm_v3, clstm_packed_gemm_v4},
        {clstm_packed_gemm_baset, clstm_packed_gemm_v3t, clstm_packed_gemm_v4t}};
    return fns[transposed_a][clstm_isa_level()];
}
#else
CLSTM_BASE_GEMM(base, 0)
CLSTM_BASE_GEMM(baset, 1)

typedef void (*clstm_packed_gemm_fn)(ptrdiff_t, ptrdiff_t, const float *, ptrdiff_t,
                                     ptrdiff_t, const float *, ptrdiff_t, ptrdiff_t,
                                     const float *, float *, ptrdiff_t, int, int);

static int clstm_isa_level(void) { return 0; }
static clstm_packed_gemm_fn clstm_select_packed_gemm(int transposed_a)
{
    return transposed_a ? clstm_packed_gemm_baset : clstm_packed_gemm_base;
}
#endif

/* C (+)= [A1 | A2] @ B with B ((K1 + K2) x N) packed by clstm_pack_b: the
 * first K1 rows of B multiply A1 (n x K1), the next K2 rows A2 (n x K2), so a
 * step's input and recurrent products can run as one (K1 = 0: plain A @ B).
 * `order`: odd runs the first block of rows over the panels right to left
 * (CLSTM_ROW_BLOCK); a scan passes its step's parity, so that consecutive
 * steps alternate too. The variant is chosen on first use (every thread
 * computes the same pointer, so the race is benign). */
static void clstm_packed_gemm2(ptrdiff_t n, ptrdiff_t K1, const float *a1, ptrdiff_t lda1,
                               ptrdiff_t K2, const float *a2, ptrdiff_t lda2, ptrdiff_t N,
                               const float *packed, float *c, ptrdiff_t ldc, int accumulate,
                               int order)
{
    static clstm_packed_gemm_fn fn = NULL;
    if (fn == NULL) fn = clstm_select_packed_gemm(0);
    fn(n, K1, a1, lda1, K2, a2, lda2, N, packed, c, ldc, accumulate, order);
}

/* C (+)= A @ B with B (K x N) packed by clstm_pack_b (`order`: as above). */
__attribute__((unused)) static void clstm_packed_gemm(ptrdiff_t n, ptrdiff_t K, ptrdiff_t N, const float *a,
                              ptrdiff_t lda, const float *packed, float *c,
                              ptrdiff_t ldc, int accumulate, int order)
{
    clstm_packed_gemm2(n, 0, a, lda, K, a, lda, N, packed, c, ldc, accumulate, order);
}

/* c[0:N] (+)= a[0:K] @ B for one row of A (B packed by clstm_pack_b): on
 * AVX-512 with k split in two halves (clstm_split_tile_*), else as
 * clstm_packed_gemm. For a batch of one row, whose steps' one-row tiles wait
 * on the FMA latency: the backward's grad_h (I=16, H=64, Zen 5, a C loop
 * over 200 steps: 0.297 -> 0.19 us a step). Its sums are not the tiles', so
 * the scan chooses it by the batch, never by a step's rows or a thread's
 * share. */
static void clstm_packed_row_split(ptrdiff_t K, const float *a, ptrdiff_t N,
                                   const float *packed, float *c, int accumulate, int order)
{
#if CLSTM_HAVE_DISPATCH
    static int split = -1;      /* (as the GEMM's variant: a benign race) */
    if (split < 0) split = clstm_isa_level() == 2;
    if (split) {
        clstm_packed_row_split_v4(K, a, N, packed, c, accumulate, order);
        return;
    }
#endif
    clstm_packed_gemm(1, K, N, a, K, packed, c, N, accumulate, order);
}

/* clstm_wgrad takes CLSTM_WGRAD_ROWS rows of A and B at a time: their B
 * packed (the 4-panel share of one tile, 32 KB, stays in L1 while every row
 * of C passes) and A read in place. Where A's rows lie a multiple of 4 KB
 * apart (G a multiple of 1024), each of a tile's rows of A would fall in the
 * same L1 set: there the block's A is copied CLSTM_WGRAD_COLS columns at a
 * time to rows CLSTM_WGRAD_COLS + 16 floats apart. (Zen 5, one core, 6,400
 * rows: 2048 x 512 gradient 215 -> 240 GFLOP/s with the copy; G = 512, N =
 * 136 no faster with it.) */
#define CLSTM_WGRAD_ROWS 128
#define CLSTM_WGRAD_COLS 128

/* Whether clstm_wgrad computes C^T = B^T @ A instead (rows of the product:
 * the N columns of B; A packed), because the panels, which pad the columns
 * of the product to 16, waste 10 % more the other way: 33 columns are 3
 * panels, the 128 rows of C 8. (Zen 5, one core: the forecast fit's
 * 640 x 128 x 33 gradient 47 -> 30 us; ts-small's 1,600 x 200 x 51 170 us
 * either way.) */
static inline int clstm_wgrad_swapped(ptrdiff_t G, ptrdiff_t N)
{
    const ptrdiff_t pad_g = (G + CLSTM_PANEL - 1) / CLSTM_PANEL * CLSTM_PANEL;
    const ptrdiff_t pad_n = (N + CLSTM_PANEL - 1) / CLSTM_PANEL * CLSTM_PANEL;
    return 10 * N * pad_g < 9 * G * pad_n;
}

/* Threads split clstm_wgrad's work by C's rows [r0, r1) (the columns of
 * the product where it is swapped, whose A each packs only its columns of:
 * a split of the transpose's rows had every thread pack all of A) in whole
 * units of this many rows: a tile's height, or swapped a panel's width. */
static inline ptrdiff_t clstm_wgrad_unit(ptrdiff_t G, ptrdiff_t N)
{
    return clstm_wgrad_swapped(G, N) ? CLSTM_PANEL : 8;
}

/* Floats of work that clstm_wgrad needs (one thread). */
static inline ptrdiff_t clstm_wgrad_work_size(ptrdiff_t G, ptrdiff_t N)
{
    if (clstm_wgrad_swapped(G, N))
        return clstm_packed_size(CLSTM_WGRAD_ROWS, G) + N * G;
    return clstm_packed_size(CLSTM_WGRAD_ROWS, N)
        + CLSTM_WGRAD_ROWS * (CLSTM_WGRAD_COLS + 16);
}

/* C (G x N) (+)= A^T @ B, for A (M x G, lda) and B (M x N, ldb) row-major:
 * a weight gradient, a sum over the M rows of all steps, e.g. grad_W_hh +=
 * grad_gates^T @ h_prev; only C's rows [r0, r1) (where clstm_wgrad_swapped:
 * the columns [r0, r1) of C^T = B^T @ A, from those columns of A packed).
 * The tiles read the left operand (A, or B swapped) transposed in place: a
 * tile's MR rows are MR of its adjacent columns. An element is summed block
 * by block, k by k within a block, whatever [r0, r1): a split of the rows
 * across threads gives the same bits. `fn`: a transposed-A variant of the
 * small GEMM (clstm_select_packed_gemm(1)); `work`: clstm_wgrad_work_size(G,
 * N) floats. */
__attribute__((unused)) static void clstm_wgrad_on(
    clstm_packed_gemm_fn fn, ptrdiff_t M, ptrdiff_t G, ptrdiff_t N, const float *a,
    ptrdiff_t lda, const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc, int accumulate,
    ptrdiff_t r0, ptrdiff_t r1, float *work)
{
    const ptrdiff_t ldw = CLSTM_WGRAD_COLS + 16;
    const int swapped = clstm_wgrad_swapped(G, N);
    const int copy = !swapped && lda % 1024 == 0;
    float *wa = work + clstm_packed_size(CLSTM_WGRAD_ROWS, swapped ? G : N);
    ptrdiff_t k0, kc, k, r, rc, g;
    if (swapped) {      /* C^T[:, r0:r1] into wa (N x w), then added to C's rows */
        const ptrdiff_t w = r1 - r0;
        for (k0 = 0; k0 < M; k0 += kc) {
            kc = M - k0 < CLSTM_WGRAD_ROWS ? M - k0 : CLSTM_WGRAD_ROWS;
            clstm_pack_b(kc, w, a + k0 * lda + r0, lda, 0, work);
            fn(N, 0, b, ldb, kc, b + k0 * ldb, ldb, w, work, wa, w, k0 > 0, 0);
        }
        if (M == 0)
            memset(wa, 0, N * w * sizeof(float));
        for (g = r0; g < r1; ++g)
            for (r = 0; r < N; ++r)
                c[g * ldc + r] = accumulate ? c[g * ldc + r] + wa[r * w + g - r0]
                                            : wa[r * w + g - r0];
        return;
    }
    if (M == 0 && !accumulate)
        for (r = r0; r < r1; ++r) memset(c + r * ldc, 0, N * sizeof(float));
    for (k0 = 0; k0 < M; k0 += kc) {
        kc = M - k0 < CLSTM_WGRAD_ROWS ? M - k0 : CLSTM_WGRAD_ROWS;
        clstm_pack_b(kc, N, b + k0 * ldb, ldb, 0, work);
        if (!copy) {
            fn(r1 - r0, 0, a, lda, kc, a + k0 * lda + r0, lda, N, work, c + r0 * ldc, ldc,
               accumulate || k0 > 0, 0);
            continue;
        }
        for (r = r0; r < r1; r += rc) {
            rc = r1 - r < CLSTM_WGRAD_COLS ? r1 - r : CLSTM_WGRAD_COLS;
            for (k = 0; k < kc; ++k)
                memcpy(wa + k * ldw, a + (k0 + k) * lda + r, rc * sizeof(float));
            fn(rc, 0, wa, ldw, kc, wa, ldw, N, work, c + r * ldc, ldc, accumulate || k0 > 0, 0);
        }
    }
}

/* clstm_wgrad_on the variant of this CPU. */
__attribute__((unused)) static void clstm_wgrad(ptrdiff_t M, ptrdiff_t G, ptrdiff_t N,
                                                const float *a, ptrdiff_t lda, const float *b,
                                                ptrdiff_t ldb, float *c, ptrdiff_t ldc,
                                                int accumulate, ptrdiff_t r0, ptrdiff_t r1,
                                                float *work)
{
    static clstm_packed_gemm_fn fn = NULL;
    if (fn == NULL) fn = clstm_select_packed_gemm(1);
    clstm_wgrad_on(fn, M, G, N, a, lda, b, ldb, c, ldc, accumulate, r0, r1, work);
}

#else  /* no vector extensions: callers use BLAS */
#define CLSTM_HAVE_PACKED_GEMM 0
static void clstm_packed_gemm2(ptrdiff_t n, ptrdiff_t K1, const float *a1, ptrdiff_t lda1,
                               ptrdiff_t K2, const float *a2, ptrdiff_t lda2, ptrdiff_t N,
                               const float *packed, float *c, ptrdiff_t ldc, int accumulate,
                               int order)
{
    (void)n; (void)K1; (void)a1; (void)lda1; (void)K2; (void)a2; (void)lda2; (void)N;
    (void)packed; (void)c; (void)ldc; (void)accumulate; (void)order;
}
static void clstm_packed_gemm(ptrdiff_t n, ptrdiff_t K, ptrdiff_t N, const float *a,
                              ptrdiff_t lda, const float *packed, float *c,
                              ptrdiff_t ldc, int accumulate, int order)
{
    (void)n; (void)K; (void)N; (void)a; (void)lda; (void)packed; (void)c;
    (void)ldc; (void)accumulate; (void)order;
}
static void clstm_packed_row_split(ptrdiff_t K, const float *a, ptrdiff_t N,
                                   const float *packed, float *c, int accumulate, int order)
{
    (void)K; (void)a; (void)N; (void)packed; (void)c; (void)accumulate; (void)order;
}
static inline ptrdiff_t clstm_wgrad_unit(ptrdiff_t G, ptrdiff_t N) { (void)G; (void)N; return 8; }
static inline ptrdiff_t clstm_wgrad_work_size(ptrdiff_t G, ptrdiff_t N)
{
    (void)G; (void)N;
    return 0;
}
static void clstm_wgrad(ptrdiff_t M, ptrdiff_t G, ptrdiff_t N, const float *a, ptrdiff_t lda,
                        const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,
                        int accumulate, ptrdiff_t r0, ptrdiff_t r1, float *work)
{
    (void)M; (void)G; (void)N; (void)a; (void)lda; (void)b; (void)ldb; (void)c; (void)ldc;
    (void)accumulate; (void)r0; (void)r1; (void)work;
}
#endif

#endif /* CLSTM_PACKED_GEMM_H */
