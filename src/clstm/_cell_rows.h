/*
 * The elementwise math of every cell kind ("postgemm", as oneDNN calls it),
 * written once over the element type: _cell_kernels.h includes this file
 * twice, with T = float / SFX = f and T = double / SFX = d, and with TANH and
 * SIGMOID naming that type's activations.
 *
 * Each kind has a row kernel (one batch row, restrict-qualified pointers per
 * gate block, for the vectorizer) and a multi-row entry point (the one the
 * scan calls, dispatched to AVX2/AVX-512 clones). Variant flags are passed as
 * literal constants into always-inline row kernels, so every variant
 * compiles to its own branch-free loop; the switch on the variant sits
 * outside the loops.
 *
 *   section             cell kinds
 *   LSTM family         LSTM, peephole, coupled input-forget gate (CIFG),
 *                       layer-normalised cell state; any combination
 *   gate layer norm     normalises the input and recurrent products of a
 *                       layer-normalised LSTM before the LSTM cell
 *   GRU                 torch.nn.GRU (r, z, n; r multiplies W_hn h + b_hn)
 *
 * A projection (LSTMP) needs no elementwise math of its own: the scan runs
 * its product after the cell.
 */

#define CLSTM_CAT_(a, b) a##_##b
#define CLSTM_CAT(a, b) CLSTM_CAT_(a, b)
#define CLSTM_FN(name) CLSTM_CAT(name, SFX)

/* ==== LSTM family ========================================================
 * Gate blocks i | f | g | o (coupled: i | g | o, f = 1 - i). Peephole weights
 * p_i, p_f, p_o (coupled: p_i, p_o): i and f see c_{t-1}, o sees c_t.
 *
 * Forward: a = gates + bias (+ peepholes); i, f, o = sigmoid, g = tanh;
 *          c = f * c_prev + i * g;  h = o * tanh(c)  (or, with the layer-
 *          normalised cell, h = o * tanh(ln(c) * w + b), done by a second pass).
 *          The activated gates overwrite the pre-activations.
 * Backward: from dh (grad_h_out + grad_h_rec) and dc (grad_c, in/out):
 *          dc += dh * o * (1 - tanh(c)^2)            (layer norm: dcx, precomputed)
 *          d_o = dh * tanh(c) * o (1 - o);  dc += d_o * p_o
 *          d_i = dc * g * i (1 - i)                  (coupled: dc * (g - c_prev) * i (1 - i))
 *          d_f = dc * c_prev * f (1 - f);  d_g = dc * i (1 - g^2)
 *          grad_c <- dc * f + d_i * p_i + d_f * p_f  (the gradient reaching c_prev)
 *          grad_p_i += d_i * c_prev, grad_p_f += d_f * c_prev, grad_p_o += d_o * c
 */
CLSTM_INLINE void CLSTM_FN(lstm_forward_row)(
    ptrdiff_t n, T *CLSTM_RESTRICT gi, T *CLSTM_RESTRICT gf,
    T *CLSTM_RESTRICT gg, T *CLSTM_RESTRICT go,
    const T *CLSTM_RESTRICT bi, const T *CLSTM_RESTRICT bf,
    const T *CLSTM_RESTRICT bg, const T *CLSTM_RESTRICT bo,
    const T *CLSTM_RESTRICT pi, const T *CLSTM_RESTRICT pf,
    const T *CLSTM_RESTRICT po,
    const T *CLSTM_RESTRICT c_prev, T *CLSTM_RESTRICT c, T *CLSTM_RESTRICT h,
    const int peephole, const int coupled, const int write_h)
{
    /* Two passes over the row, the same arithmetic per element as one. In a
     * single loop each vector runs one dependent chain (three activations,
     * then c, then tanh(c): ~110 cycles on Zen 3) through a body too long for
     * the out-of-order window to overlap more than ~1.5 iterations, so the
     * loop waited on latency (66 cycles per 8 floats, perf at ts-medium).
     * Pass 1's activations do not depend on each other and pass 2 is short,
     * so both run at the units' throughput. */
    for (ptrdiff_t j = 0; j < n; ++j) {
        const T cp = c_prev[j];
        T ai = gi[j] + bi[j];
        if (peephole) ai += pi[j] * cp;
        gi[j] = SIGMOID(ai);
        if (!coupled) {
            T af = gf[j] + bf[j];
            if (peephole) af += pf[j] * cp;
            gf[j] = SIGMOID(af);
        }
        gg[j] = TANH(gg[j] + bg[j]);
    }
    for (ptrdiff_t j = 0; j < n; ++j) {
        const T i_ = gi[j];
        const T f_ = coupled ? (T)1 - i_ : gf[j];
        /* Which product gcc contracts into the FMA depends on the form of
         * this statement (a ternary here, or separate loads of c_prev and g,
         * changed it): this form keeps the roundings of the one-pass loop and
         * of _fused_cell.h, which tests/test_fused_cell_forward.py checks
         * bit for bit. */
        T c_;
        if (coupled) c_ = i_ * gg[j] + f_ * c_prev[j];
        else c_ = f_ * c_prev[j] + i_ * gg[j];
        T ao = go[j] + bo[j];
        if (peephole) ao += po[j] * c_;
        const T o_ = SIGMOID(ao);
        go[j] = o_;
        c[j] = c_;
        if (write_h) h[j] = o_ * TANH(c_);
    }
}

/* In place: each gate value is read before its gradient overwrites it (the
 * scan needs the activated gates of a step only until that step's backward),
 * so the backward holds no second (T, B, G) buffer. */
CLSTM_INLINE void CLSTM_FN(lstm_backward_row)(
    ptrdiff_t n, T *CLSTM_RESTRICT gi, T *CLSTM_RESTRICT gf,
    T *CLSTM_RESTRICT gg, T *CLSTM_RESTRICT go,
    const T *CLSTM_RESTRICT pi, const T *CLSTM_RESTRICT pf,
    const T *CLSTM_RESTRICT po,
    const T *CLSTM_RESTRICT c_prev, const T *CLSTM_RESTRICT c,
    const T *CLSTM_RESTRICT grad_h_out, const T *CLSTM_RESTRICT grad_h_rec,
    const T *CLSTM_RESTRICT tanh_c, const T *CLSTM_RESTRICT dcx,
    T *CLSTM_RESTRICT grad_c,
    T *CLSTM_RESTRICT gpi, T *CLSTM_RESTRICT gpf, T *CLSTM_RESTRICT gpo,
    const int peephole, const int coupled, const int has_rec, const int ln_cell)
{
    for (ptrdiff_t j = 0; j < n; ++j) {
        const T i_ = gi[j], g_ = gg[j], o_ = go[j];
        const T f_ = coupled ? (T)1 - i_ : gf[j];
        const T cp = c_prev[j];
        T dh = grad_h_out[j];
        if (has_rec) dh += grad_h_rec[j];
        T tc, dc;
        if (ln_cell) {
            tc = tanh_c[j];
            dc = grad_c[j] + dcx[j];
        } else {
            tc = TANH(c[j]);
            dc = grad_c[j] + dh * o_ * ((T)1 - tc * tc);
        }
        const T do_ = dh * tc * o_ * ((T)1 - o_);
        if (peephole) dc += do_ * po[j];
        const T di_ = coupled ? dc * (g_ - cp) * i_ * ((T)1 - i_)
                              : dc * g_ * i_ * ((T)1 - i_);
        T dcp = dc * f_;
        if (!coupled) {
            const T df_ = dc * cp * f_ * ((T)1 - f_);
            gf[j] = df_;
            if (peephole) { dcp += df_ * pf[j]; gpf[j] += df_ * cp; }
        }
        if (peephole) {
            dcp += di_ * pi[j];
            gpi[j] += di_ * cp;
            gpo[j] += do_ * c[j];
        }
        gi[j] = di_;
        gg[j] = dc * i_ * ((T)1 - g_ * g_);
        go[j] = do_;
        grad_c[j] = dcp;
    }
}

/* Layer-normalised cell state, forward: for one row of n = H values,
 * chat = (c - mean) * rstd, rstd = 1 / sqrt(var + eps) (stored in *rstd_out);
 * h = o * tanh(chat * w + b). */
CLSTM_INLINE void CLSTM_FN(ln_cell_forward_row)(
    ptrdiff_t n, const T *CLSTM_RESTRICT c, const T *CLSTM_RESTRICT o,
    const T *CLSTM_RESTRICT w, const T *CLSTM_RESTRICT b,
    T *CLSTM_RESTRICT chat, T *CLSTM_RESTRICT h, T *rstd_out)
{
    T mean = 0, var = 0;
    for (ptrdiff_t j = 0; j < n; ++j) mean += c[j];
    mean /= (T)n;
    for (ptrdiff_t j = 0; j < n; ++j) { const T d = c[j] - mean; var += d * d; }
    const T rstd = (T)1 / (T)sqrt((double)(var / (T)n) + CLSTM_LN_EPS);
    *rstd_out = rstd;
    for (ptrdiff_t j = 0; j < n; ++j) {
        const T ch = (c[j] - mean) * rstd;
        chat[j] = ch;
        h[j] = o[j] * TANH(ch * w[j] + b[j]);
    }
}

/* Layer-normalised cell state, backward, first pass: with u = chat * w + b,
 * tanh_c <- tanh(u); du = dh * o * (1 - tanh(u)^2); grad_w += du * chat,
 * grad_b += du; dcx <- rstd * (du w - mean(du w) - chat * mean(du w chat)),
 * the gradient reaching c through the normalisation. */
CLSTM_INLINE void CLSTM_FN(ln_cell_backward_row)(
    ptrdiff_t n, const T *CLSTM_RESTRICT o, const T *CLSTM_RESTRICT chat,
    const T *CLSTM_RESTRICT w, const T *CLSTM_RESTRICT b, T rstd,
    const T *CLSTM_RESTRICT grad_h_out, const T *CLSTM_RESTRICT grad_h_rec,
    T *CLSTM_RESTRICT tanh_c, T *CLSTM_RESTRICT dcx,
    T *CLSTM_RESTRICT grad_w, T *CLSTM_RESTRICT grad_b, const int has_rec)
{
    T s1 = 0, s2 = 0;
    for (ptrdiff_t j = 0; j < n; ++j) {
        T dh = grad_h_out[j];
        if (has_rec) dh += grad_h_rec[j];
        const T tu = TANH(chat[j] * w[j] + b[j]);
        const T du = dh * o[j] * ((T)1 - tu * tu);
        const T dch = du * w[j];
        tanh_c[j] = tu;
        dcx[j] = dch;
        grad_w[j] += du * chat[j];
        grad_b[j] += du;
        s1 += dch;
        s2 += dch * chat[j];
    }
    s1 /= (T)n;
    s2 /= (T)n;
    for (ptrdiff_t j = 0; j < n; ++j)
        dcx[j] = rstd * (dcx[j] - s1 - chat[j] * s2);
}

/* Row r of each matrix starts at base + r * ld; grad_h_rec, grad_c and the
 * scratch rows are contiguous (n_rows, hidden). `variant` is a combination of
 * CLSTM_PEEPHOLE, CLSTM_COUPLED and CLSTM_LN_CELL. Layer-norm arguments may be
 * NULL without CLSTM_LN_CELL, peephole ones without CLSTM_PEEPHOLE. */
#define CLSTM_LSTM_FWD_CASE(P, C, W)                                            \
    CLSTM_FN(lstm_forward_row)(n_main, gt, C ? NULL : gt + hidden,              \
        gt + (C ? 1 : 2) * hidden, gt + (C ? 2 : 3) * hidden,                   \
        bias, C ? NULL : bias + hidden, bias + (C ? 1 : 2) * hidden,            \
        bias + (C ? 2 : 3) * hidden, peep, (P && !C) ? peep + hidden : NULL,    \
        P ? peep + (C ? 1 : 2) * hidden : NULL, cp, ct, ht, P, C, W)

#if TAIL_LANES
/* The units past a row's last whole vector (t = hidden % TAIL_LANES of
 * them), gathered across rows. Left to the row kernel, they ran its scalar
 * loop (five activations a unit, one unit at a time): rows of H = 50 cost
 * 5.2 cycles a unit against 3.6 at H = 48 (the LSTM cell on 327 rows, one
 * thread, Zen 5). Instead the tails of up to TAIL_GROUP / t rows fill the
 * lanes of a few vectors and go through the same row kernel with a count
 * of whole vectors, so only its vector loop runs: 4.0 cycles a unit at
 * H = 50 (the three figures before clstm_tanhf's |x| form). Each value gets
 * the same elementwise arithmetic as in the row's own vectors: the same
 * bits (tests/test_cell.py, tests/test_hidden_tails.py).
 * Lanes of gathered tails: up to TAIL_ARRAYS arrays of TAIL_GROUP values. */
#define TAIL_ARRAYS 14
typedef struct { T v[TAIL_ARRAYS][TAIL_GROUP]; } CLSTM_FN(clstm_tail_lanes);

/* t values (0 < t < TAIL_LANES): two moves of the widest power-of-two size
 * that fits, the second ending where the values end (they overlap by as
 * much as needed), as a small memcpy does. A loop of t iterations, or of
 * TAIL_LANES conditional ones, cost more than the cell's own work. */
CLSTM_INLINE void CLSTM_FN(tail_copy)(T *CLSTM_RESTRICT dst, const T *CLSTM_RESTRICT src,
                                      ptrdiff_t t)
{
    const size_t n = (size_t)t * sizeof(T);
    char *d = (char *)dst;
    const char *p = (const char *)src;
    if (n >= 32) { memcpy(d, p, 32); memcpy(d + n - 32, p + n - 32, 32); }
    else if (n >= 16) { memcpy(d, p, 16); memcpy(d + n - 16, p + n - 16, 16); }
    else if (n >= 8) { memcpy(d, p, 8); memcpy(d + n - 8, p + n - 8, 8); }
    else memcpy(d, p, 4);     /* (one float) */
}

/* Lane k * t + u holds unit u of a group's k-th row, so the per-unit arrays
 * (biases, peepholes) repeat every t lanes. */
CLSTM_INLINE void CLSTM_FN(tail_repeat)(T *CLSTM_RESTRICT lanes, const T *CLSTM_RESTRICT src,
                                        ptrdiff_t t, ptrdiff_t group)
{
    /* (as a loop over u, gcc made each row's copy a call to memcpy) */
    for (ptrdiff_t k = 0; k < group; ++k) CLSTM_FN(tail_copy)(lanes + k * t, src, t);
}

/* Rows [r0, r0 + rows) of n arrays, each row's t tail values: row r of array
 * i at arrays[i] + r * ld[i], its lanes at lanes[i] + k * t for the group's
 * k-th row; gathered into the lanes, or (`out`) scattered back from them. */
CLSTM_INLINE void CLSTM_FN(tail_rows)(int n, T *const *lanes, T *const *arrays,
                                      const ptrdiff_t *ld, ptrdiff_t r0, ptrdiff_t rows,
                                      ptrdiff_t t, int out)
{
    /* (array by array: its base and stride stay in registers, where rows
     * outermost reloaded both for every copy. With the zeroing of only the
     * lanes no row fills, CLSTM_TAIL_LANES_DECL: the LSTM cell on 32 rows of
     * H = 50 3.9 -> 3.7 cycles a unit, H = 20 5.9 -> 5.1, Zen 5) */
    for (int i = 0; i < n; ++i) {
        T *row = arrays[i] + r0 * ld[i], *lane = lanes[i];
        const ptrdiff_t step = ld[i];
        for (ptrdiff_t k = 0; k < rows; ++k, row += step, lane += t) {
            if (out) CLSTM_FN(tail_copy)(row, lane, t);
            else CLSTM_FN(tail_copy)(lane, row, t);
        }
    }
}

/* The group's lanes, of which the first `used` arrays are read: zeroed from
 * lane `from` (the lanes no row of the first group fills; lanes past a later
 * group's rows then hold finite values: zeros, or an earlier group's; never
 * written out). At H = 50 and 32 rows a group's rows fill every lane. */
#define CLSTM_TAIL_LANES_DECL(used, from)                                       \
    CLSTM_FN(clstm_tail_lanes) lanes;                                           \
    T (*V)[TAIL_GROUP] = lanes.v;                                               \
    if ((from) < TAIL_GROUP)                                                    \
        for (int i_ = 0; i_ < (used); ++i_)                                     \
            memset(V[i_] + (from), 0, (size_t)(TAIL_GROUP - (from)) * sizeof(T))

/* whole vectors for `rows` rows of t lanes: the row kernel's vector loop only */
#define CLSTM_TAIL_COUNT(rows, t) (((rows) * (t) + TAIL_LANES - 1) / TAIL_LANES * TAIL_LANES)

/* One more array of a tails function's gather (side in) or scatter (side
 * out): its lanes V[lane], its rows at rows_at + r * ld_rows. */
#define CLSTM_TAIL_ARRAY(side, lane, rows_at, ld_rows)                           \
    { side##_lanes[n_##side] = V[lane]; side##_rows[n_##side] = (T *)(rows_at);    \
      side##_ld[n_##side++] = (ld_rows); }

/* lanes: 0-3 gate blocks (i f g o), 4-7 their biases, 8-10 peepholes (i f o),
 * 11 c_prev, 12 c, 13 h (coupled: no f) */
#define CLSTM_LSTM_FWD_TAIL_CASE(P, C)                                          \
    CLSTM_FN(lstm_forward_row)(n_lanes, V[0], V[1], V[2], V[3], V[4], V[5],     \
        V[6], V[7], V[8], V[9], V[10], V[11], V[12], V[13], P, C, 1)

/* The LSTM forward of the tails (units [hidden - t, hidden)) of n_rows rows,
 * 0 < t < TAIL_LANES; no layer-normalised cell (its second pass needs whole
 * rows). The arguments as clstm_lstm_forward's; keep_gates 0: the activated
 * gates are not written back (nothing reads them). */
CLSTM_DISPATCH static void CLSTM_FN(lstm_forward_tails)(
    int variant, int keep_gates, ptrdiff_t n_rows, ptrdiff_t hidden, ptrdiff_t t, T *gates,
    ptrdiff_t ld_gates, const T *bias, const T *peep, const T *c_prev,
    ptrdiff_t ld_c_prev, T *c, ptrdiff_t ld_c, T *h, ptrdiff_t ld_h)
{
    const int C = (variant & CLSTM_COUPLED) != 0, P = (variant & CLSTM_PEEPHOLE) != 0;
    const ptrdiff_t j0 = hidden - t, group = TAIL_GROUP / t;
    const int blocks = C ? 3 : 4;
    CLSTM_TAIL_LANES_DECL(TAIL_ARRAYS, (n_rows < group ? n_rows : group) * t);
    /* the blocks in the order a row holds them (coupled: i | g | o) */
    const int gate_lane[4] = {0, C ? 2 : 1, C ? 3 : 2, 3}, peep_lane[3] = {8, C ? 10 : 9, 10};
    T *in_lanes[5], *in_rows[5], *out_lanes[6], *out_rows[6];
    ptrdiff_t in_ld[5], out_ld[6];
    int n_in = 0, n_out = 0;
    for (int q = 0; q < blocks; ++q) {
        CLSTM_FN(tail_repeat)(V[4 + gate_lane[q]], bias + q * hidden + j0, t, group);
        if (P && q < blocks - 1)
            CLSTM_FN(tail_repeat)(V[peep_lane[q]], peep + q * hidden + j0, t, group);
        CLSTM_TAIL_ARRAY(in, gate_lane[q], gates + q * hidden + j0, ld_gates)
        if (keep_gates) CLSTM_TAIL_ARRAY(out, gate_lane[q], gates + q * hidden + j0, ld_gates)
    }
    CLSTM_TAIL_ARRAY(in, 11, c_prev + j0, ld_c_prev)
    CLSTM_TAIL_ARRAY(out, 12, c + j0, ld_c)
    CLSTM_TAIL_ARRAY(out, 13, h + j0, ld_h)
    for (ptrdiff_t r0 = 0; r0 < n_rows; r0 += group) {
        const ptrdiff_t rows = n_rows - r0 < group ? n_rows - r0 : group;
        const ptrdiff_t n_lanes = CLSTM_TAIL_COUNT(rows, t);
        CLSTM_FN(tail_rows)(n_in, in_lanes, in_rows, in_ld, r0, rows, t, 0);
        switch (variant & (CLSTM_PEEPHOLE | CLSTM_COUPLED)) {
        case 0: CLSTM_LSTM_FWD_TAIL_CASE(0, 0); break;
        case CLSTM_PEEPHOLE: CLSTM_LSTM_FWD_TAIL_CASE(1, 0); break;
        case CLSTM_COUPLED: CLSTM_LSTM_FWD_TAIL_CASE(0, 1); break;
        default: CLSTM_LSTM_FWD_TAIL_CASE(1, 1); break;
        }
        CLSTM_FN(tail_rows)(n_out, out_lanes, out_rows, out_ld, r0, rows, t, 1);
    }
}
#endif

CLSTM_DISPATCH CLSTM_MAYBE_UNUSED static void CLSTM_FN(clstm_lstm_forward)(
    int variant, ptrdiff_t n_rows, ptrdiff_t hidden, T *gates, ptrdiff_t ld_gates,
    const T *bias, const T *peep, const T *c_prev, ptrdiff_t ld_c_prev,
    T *c, ptrdiff_t ld_c, T *h, ptrdiff_t ld_h,
    const T *ln_w, const T *ln_b, T *chat, T *rstd)
{
    const int keep_gates = !(variant & CLSTM_GATES_UNREAD);
    variant &= ~CLSTM_GATES_UNREAD;     /* (the switch below: variants only) */
    const int ln = variant & CLSTM_LN_CELL;
#if TAIL_LANES
    const ptrdiff_t t = ln ? 0 : hidden % TAIL_LANES;
#else
    const ptrdiff_t t = 0;
#endif
    const ptrdiff_t n_main = hidden - t;     /* (CLSTM_LSTM_FWD_CASE's count) */
    for (ptrdiff_t r = 0; r < n_rows; ++r) {
        T *gt = gates + r * ld_gates;
        const T *cp = c_prev + r * ld_c_prev;
        T *ct = c + r * ld_c, *ht = h + r * ld_h;
        switch (variant) {
        case 0: CLSTM_LSTM_FWD_CASE(0, 0, 1); break;
        case CLSTM_PEEPHOLE: CLSTM_LSTM_FWD_CASE(1, 0, 1); break;
        case CLSTM_COUPLED: CLSTM_LSTM_FWD_CASE(0, 1, 1); break;
        case CLSTM_PEEPHOLE | CLSTM_COUPLED: CLSTM_LSTM_FWD_CASE(1, 1, 1); break;
        case CLSTM_LN_CELL: CLSTM_LSTM_FWD_CASE(0, 0, 0); break;
        case CLSTM_LN_CELL | CLSTM_PEEPHOLE: CLSTM_LSTM_FWD_CASE(1, 0, 0); break;
        case CLSTM_LN_CELL | CLSTM_COUPLED: CLSTM_LSTM_FWD_CASE(0, 1, 0); break;
        default: CLSTM_LSTM_FWD_CASE(1, 1, 0); break;
        }
        if (ln) {
            const T *o = gt + ((variant & CLSTM_COUPLED) ? 2 : 3) * hidden;
            CLSTM_FN(ln_cell_forward_row)(hidden, ct, o, ln_w, ln_b,
                                          chat + r * hidden, ht, rstd + r);
        }
    }
#if TAIL_LANES
    if (t > 0)
        CLSTM_FN(lstm_forward_tails)(variant, keep_gates, n_rows, hidden, t, gates, ld_gates,
                                     bias, peep, c_prev, ld_c_prev, c, ld_c, h, ld_h);
#else
    (void)keep_gates;
#endif
}

#define CLSTM_LSTM_BWD_CASE(P, C, R, L)                                         \
    CLSTM_FN(lstm_backward_row)(hidden, gt, C ? NULL : gt + hidden,             \
        gt + (C ? 1 : 2) * hidden, gt + (C ? 2 : 3) * hidden,                   \
        peep, (P && !C) ? peep + hidden : NULL,                                 \
        P ? peep + (C ? 1 : 2) * hidden : NULL, cp, ct, dho, dhr, tc, dx, dct,  \
        grad_peep,                                                              \
        (P && !C) ? grad_peep + hidden : NULL,                                  \
        P ? grad_peep + (C ? 1 : 2) * hidden : NULL, P, C, R, L)

#define CLSTM_LSTM_BWD_CASES(R, L)                                              \
    switch (variant & (CLSTM_PEEPHOLE | CLSTM_COUPLED)) {                       \
    case 0: CLSTM_LSTM_BWD_CASE(0, 0, R, L); break;                             \
    case CLSTM_PEEPHOLE: CLSTM_LSTM_BWD_CASE(1, 0, R, L); break;                \
    case CLSTM_COUPLED: CLSTM_LSTM_BWD_CASE(0, 1, R, L); break;                 \
    default: CLSTM_LSTM_BWD_CASE(1, 1, R, L); break;                            \
    }

/* gates: in, the activated gates; out, the gradients of their pre-activations.
 * grad_h_rec may be NULL (projection: the scan passes the whole gradient
 * reaching m in grad_h_out). work: 2 * hidden scratch values (layer norm). */
CLSTM_DISPATCH CLSTM_MAYBE_UNUSED static void CLSTM_FN(clstm_lstm_backward)(
    int variant, ptrdiff_t n_rows, ptrdiff_t hidden, T *gates,
    ptrdiff_t ld_gates, const T *peep, const T *c_prev, ptrdiff_t ld_c_prev,
    const T *c, ptrdiff_t ld_c, const T *grad_h_out, ptrdiff_t ld_grad_h_out,
    const T *grad_h_rec, T *grad_c,
    T *grad_peep, const T *ln_w, const T *ln_b, const T *chat, const T *rstd,
    T *grad_ln_w, T *grad_ln_b, T *work)
{
    const int ln = variant & CLSTM_LN_CELL;
    const int rec = grad_h_rec != NULL;
    T *tc = work, *dx = work + hidden;
    for (ptrdiff_t r = 0; r < n_rows; ++r) {
        T *gt = gates + r * ld_gates;
        const T *cp = c_prev + r * ld_c_prev, *ct = c + r * ld_c;
        const T *dho = grad_h_out + r * ld_grad_h_out;
        const T *dhr = rec ? grad_h_rec + r * hidden : NULL;
        T *dct = grad_c + r * hidden;
        if (ln) {
            const T *o = gt + ((variant & CLSTM_COUPLED) ? 2 : 3) * hidden;
            if (rec)
                CLSTM_FN(ln_cell_backward_row)(hidden, o, chat + r * hidden, ln_w,
                    ln_b, rstd[r], dho, dhr, tc, dx, grad_ln_w, grad_ln_b, 1);
            else
                CLSTM_FN(ln_cell_backward_row)(hidden, o, chat + r * hidden, ln_w,
                    ln_b, rstd[r], dho, dhr, tc, dx, grad_ln_w, grad_ln_b, 0);
            if (rec) { CLSTM_LSTM_BWD_CASES(1, 1) } else { CLSTM_LSTM_BWD_CASES(0, 1) }
        } else {
            if (rec) { CLSTM_LSTM_BWD_CASES(1, 0) } else { CLSTM_LSTM_BWD_CASES(0, 0) }
        }
    }
}

/* ==== gate layer norm (layer-normalised LSTM) ==============================
 * Forward, per row of n = G values: ax holds x W_ih^T, ah holds h W_hh^T.
 * xhat = ln(ax), hhat = ln(ah) (ln over the row, eps CLSTM_LN_EPS);
 * ax <- xhat * w_ih + hhat * w_hh (the cell adds the biases), ah <- hhat;
 * xhat saved; rstd[0], rstd[1] the two inverse deviations.
 * Backward: from dA (the cell's gradient of a, in grad_x), grad_bias += dA,
 * grad_w_ih += dA xhat, grad_w_hh += dA hhat; grad_x <- ln_backward(dA w_ih),
 * grad_h <- ln_backward(dA w_hh), with ln_backward(d) = rstd (d - mean(d) -
 * xhat mean(d xhat)).
 */
/* out may be v (in place): no restrict here. */
CLSTM_INLINE T CLSTM_FN(ln_normalise)(ptrdiff_t n, const T *v, T *out)
{
    T mean = 0, var = 0;
    for (ptrdiff_t j = 0; j < n; ++j) mean += v[j];
    mean /= (T)n;
    for (ptrdiff_t j = 0; j < n; ++j) { const T d = v[j] - mean; var += d * d; }
    const T rstd = (T)1 / (T)sqrt((double)(var / (T)n) + CLSTM_LN_EPS);
    for (ptrdiff_t j = 0; j < n; ++j) out[j] = (v[j] - mean) * rstd;
    return rstd;
}

CLSTM_INLINE void CLSTM_FN(ln_gates_combine_row)(
    ptrdiff_t n, T *CLSTM_RESTRICT ax, const T *CLSTM_RESTRICT xhat,
    const T *CLSTM_RESTRICT hhat, const T *CLSTM_RESTRICT w_ih,
    const T *CLSTM_RESTRICT w_hh)
{
    for (ptrdiff_t j = 0; j < n; ++j) ax[j] = xhat[j] * w_ih[j] + hhat[j] * w_hh[j];
}

CLSTM_DISPATCH CLSTM_MAYBE_UNUSED static void CLSTM_FN(clstm_ln_gates_forward)(
    ptrdiff_t n_rows, ptrdiff_t n, T *ax, T *ah, T *xhat, const T *w_ih,
    const T *w_hh, T *rstd)
{
    for (ptrdiff_t r = 0; r < n_rows; ++r) {
        T *a = ax + r * n, *hh = ah + r * n, *xh = xhat + r * n;
        rstd[2 * r] = CLSTM_FN(ln_normalise)(n, a, xh);
        rstd[2 * r + 1] = CLSTM_FN(ln_normalise)(n, hh, hh);   /* in place: read, then write */
        CLSTM_FN(ln_gates_combine_row)(n, a, xh, hh, w_ih, w_hh);
    }
}

CLSTM_INLINE void CLSTM_FN(ln_gates_backward_row)(
    ptrdiff_t n, T *CLSTM_RESTRICT grad_x, T *CLSTM_RESTRICT grad_h,
    const T *CLSTM_RESTRICT xhat, const T *CLSTM_RESTRICT hhat,
    const T *CLSTM_RESTRICT w_ih, const T *CLSTM_RESTRICT w_hh, T rx, T rh,
    T *CLSTM_RESTRICT grad_bias, T *CLSTM_RESTRICT grad_w_ih,
    T *CLSTM_RESTRICT grad_w_hh)
{
    T sx1 = 0, sx2 = 0, sh1 = 0, sh2 = 0;
    for (ptrdiff_t j = 0; j < n; ++j) {
        const T da = grad_x[j];
        const T dx = da * w_ih[j], dh = da * w_hh[j];
        grad_bias[j] += da;
        grad_w_ih[j] += da * xhat[j];
        grad_w_hh[j] += da * hhat[j];
        sx1 += dx; sx2 += dx * xhat[j];
        sh1 += dh; sh2 += dh * hhat[j];
    }
    sx1 /= (T)n; sx2 /= (T)n; sh1 /= (T)n; sh2 /= (T)n;
    for (ptrdiff_t j = 0; j < n; ++j) {
        const T da = grad_x[j];
        grad_h[j] = rh * (da * w_hh[j] - sh1 - hhat[j] * sh2);
        grad_x[j] = rx * (da * w_ih[j] - sx1 - xhat[j] * sx2);
    }
}

CLSTM_DISPATCH CLSTM_MAYBE_UNUSED static void CLSTM_FN(clstm_ln_gates_backward)(
    ptrdiff_t n_rows, ptrdiff_t n, T *grad_x, T *grad_h, const T *xhat,
    const T *hhat, const T *w_ih, const T *w_hh, const T *rstd, T *grad_bias,
    T *grad_w_ih, T *grad_w_hh)
{
    for (ptrdiff_t r = 0; r < n_rows; ++r)
        CLSTM_FN(ln_gates_backward_row)(n, grad_x + r * n, grad_h + r * n,
            xhat + r * n, hhat + r * n, w_ih, w_hh, rstd[2 * r], rstd[2 * r + 1],
            grad_bias, grad_w_ih, grad_w_hh);
}

/* ==== GRU ==================================================================
 * Gate blocks r | z | n. gx holds x W_ih^T, gh holds h W_hh^T (kept apart:
 * r multiplies the recurrent part of n only). bias = [b_ir + b_hr | b_iz +
 * b_hz | b_in], bias_hn = b_hn.
 * Forward:  r = sigmoid(gx_r + gh_r + b_r), z = sigmoid(gx_z + gh_z + b_z),
 *           hn = gh_n + b_hn, n = tanh(gx_n + b_in + r * hn),
 *           h = (1 - z) * n + z * h_prev; gx <- (r, z, n), gh_n <- hn.
 * Backward: dh = grad_h_out + grad_h_rec; dn = dh (1 - z); dz = dh (h_prev - n)
 *           dgx = (dr', dz', dn') = (dn' hn r (1 - r), dz z (1 - z), dn (1 - n^2))
 *           dgh = (dr', dz', dn' r);  grad_h_rec <- dh * z (the direct path to
 *           h_prev; the scan adds dgh @ W_hh).
 * h_prev is the unmasked previous state (recurrent dropout masks only the
 * product).
 */
CLSTM_INLINE void CLSTM_FN(gru_forward_row)(
    ptrdiff_t n, T *CLSTM_RESTRICT xr, T *CLSTM_RESTRICT xz, T *CLSTM_RESTRICT xn,
    const T *CLSTM_RESTRICT hr, const T *CLSTM_RESTRICT hz, T *CLSTM_RESTRICT hn,
    const T *CLSTM_RESTRICT br, const T *CLSTM_RESTRICT bz,
    const T *CLSTM_RESTRICT bn, const T *CLSTM_RESTRICT bhn,
    const T *CLSTM_RESTRICT h_prev, T *CLSTM_RESTRICT h)
{
    /* Two passes, as the LSTM's forward row (r and z do not depend on each
     * other; n waits on r): a chain of two activations per vector in one
     * loop runs at the latency of the chain, not at the units' throughput. */
    for (ptrdiff_t j = 0; j < n; ++j) {
        xr[j] = SIGMOID(xr[j] + hr[j] + br[j]);
        xz[j] = SIGMOID(xz[j] + hz[j] + bz[j]);
    }
    for (ptrdiff_t j = 0; j < n; ++j) {
        const T r_ = xr[j], z_ = xz[j];
        const T hn_ = hn[j] + bhn[j];
        const T n_ = TANH(xn[j] + bn[j] + r_ * hn_);
        h[j] = ((T)1 - z_) * n_ + z_ * h_prev[j];
        xn[j] = n_; hn[j] = hn_;
    }
}

/* In place, as the LSTM's: (r, z, n) and the recurrent blocks (hr, hz, hn)
 * are overwritten by the gradients of the input and recurrent pre-activations
 * (hr, hz are not read: the forward kept only hn). */
CLSTM_INLINE void CLSTM_FN(gru_backward_row)(
    ptrdiff_t n, T *CLSTM_RESTRICT r, T *CLSTM_RESTRICT z, T *CLSTM_RESTRICT nn,
    T *CLSTM_RESTRICT hr, T *CLSTM_RESTRICT hz, T *CLSTM_RESTRICT hn,
    const T *CLSTM_RESTRICT h_prev, const T *CLSTM_RESTRICT grad_h_out,
    T *CLSTM_RESTRICT grad_h_rec)
{
    for (ptrdiff_t j = 0; j < n; ++j) {
        const T r_ = r[j], z_ = z[j], n_ = nn[j], hn_ = hn[j];
        const T dh = grad_h_out[j] + grad_h_rec[j];
        const T dan = dh * ((T)1 - z_) * ((T)1 - n_ * n_);
        const T daz = dh * (h_prev[j] - n_) * z_ * ((T)1 - z_);
        const T dar = dan * hn_ * r_ * ((T)1 - r_);
        r[j] = dar; z[j] = daz; nn[j] = dan;
        hr[j] = dar; hz[j] = daz; hn[j] = dan * r_;
        grad_h_rec[j] = dh * z_;
    }
}

#if TAIL_LANES
/* The GRU forward of the tails (units [hidden - t, hidden)) of n_rows rows,
 * gathered across rows as the LSTM's (lstm_forward_tails); the arguments as
 * clstm_gru_forward's. Lanes: 0-2 x's r z n blocks, 3-5 h's, 6-9 the biases
 * (r z n, hn), 10 h_prev, 11 h. */
CLSTM_DISPATCH static void CLSTM_FN(gru_forward_tails)(
    ptrdiff_t n_rows, ptrdiff_t hidden, ptrdiff_t t, T *gx, T *gh, const T *bias,
    const T *bias_hn, const T *h_prev, ptrdiff_t ld_h_prev, T *h, ptrdiff_t ld_h)
{
    const ptrdiff_t j0 = hidden - t, group = TAIL_GROUP / t, G = 3 * hidden;
    CLSTM_TAIL_LANES_DECL(12, (n_rows < group ? n_rows : group) * t);
    T *in_lanes[7], *in_rows[7], *out_lanes[5], *out_rows[5];
    ptrdiff_t in_ld[7], out_ld[5];
    int n_in = 0, n_out = 0;
    for (int q = 0; q < 3; ++q) {
        CLSTM_FN(tail_repeat)(V[6 + q], bias + q * hidden + j0, t, group);
        CLSTM_TAIL_ARRAY(in, q, gx + q * hidden + j0, G)
        CLSTM_TAIL_ARRAY(in, 3 + q, gh + q * hidden + j0, G)
        CLSTM_TAIL_ARRAY(out, q, gx + q * hidden + j0, G)
    }
    CLSTM_FN(tail_repeat)(V[9], bias_hn + j0, t, group);
    CLSTM_TAIL_ARRAY(in, 10, h_prev + j0, ld_h_prev)
    CLSTM_TAIL_ARRAY(out, 5, gh + 2 * hidden + j0, G)       /* hn + b_hn, kept */
    CLSTM_TAIL_ARRAY(out, 11, h + j0, ld_h)
    for (ptrdiff_t r0 = 0; r0 < n_rows; r0 += group) {
        const ptrdiff_t rows = n_rows - r0 < group ? n_rows - r0 : group;
        CLSTM_FN(tail_rows)(n_in, in_lanes, in_rows, in_ld, r0, rows, t, 0);
        CLSTM_FN(gru_forward_row)(CLSTM_TAIL_COUNT(rows, t), V[0], V[1], V[2], V[3], V[4],
                                  V[5], V[6], V[7], V[8], V[9], V[10], V[11]);
        CLSTM_FN(tail_rows)(n_out, out_lanes, out_rows, out_ld, r0, rows, t, 1);
    }
}
#endif

CLSTM_DISPATCH CLSTM_MAYBE_UNUSED static void CLSTM_FN(clstm_gru_forward)(
    ptrdiff_t n_rows, ptrdiff_t hidden, T *gx, T *gh, const T *bias,
    const T *bias_hn, const T *h_prev, ptrdiff_t ld_h_prev, T *h, ptrdiff_t ld_h)
{
    const ptrdiff_t G = 3 * hidden;
#if TAIL_LANES
    const ptrdiff_t t = hidden % TAIL_LANES;    /* (gathered: gru_forward_tails) */
#else
    const ptrdiff_t t = 0;
#endif
    for (ptrdiff_t r = 0; r < n_rows; ++r) {
        T *x = gx + r * G, *hh = gh + r * G;
        CLSTM_FN(gru_forward_row)(hidden - t, x, x + hidden, x + 2 * hidden, hh,
            hh + hidden, hh + 2 * hidden, bias, bias + hidden, bias + 2 * hidden,
            bias_hn, h_prev + r * ld_h_prev, h + r * ld_h);
    }
#if TAIL_LANES
    if (t > 0)
        CLSTM_FN(gru_forward_tails)(n_rows, hidden, t, gx, gh, bias, bias_hn, h_prev,
                                    ld_h_prev, h, ld_h);
#endif
}

/* gx, gh: in, the forward's (r, z, n) and (., ., hn); out, the gradients of
 * the input and recurrent pre-activations. */
CLSTM_DISPATCH CLSTM_MAYBE_UNUSED static void CLSTM_FN(clstm_gru_backward)(
    ptrdiff_t n_rows, ptrdiff_t hidden, T *gx, T *gh,
    const T *h_prev, ptrdiff_t ld_h_prev, const T *grad_h_out,
    ptrdiff_t ld_grad_h_out, T *grad_h_rec)
{
    const ptrdiff_t G = 3 * hidden;
    for (ptrdiff_t r = 0; r < n_rows; ++r) {
        T *x = gx + r * G, *hh = gh + r * G;
        CLSTM_FN(gru_backward_row)(hidden, x, x + hidden, x + 2 * hidden, hh,
            hh + hidden, hh + 2 * hidden, h_prev + r * ld_h_prev,
            grad_h_out + r * ld_grad_h_out, grad_h_rec + r * hidden);
    }
}

/* ==== activations over an array (test twins) ============================= */
CLSTM_DISPATCH CLSTM_MAYBE_UNUSED static void CLSTM_FN(clstm_tanh)(ptrdiff_t n, const T *x, T *y)
{
    for (ptrdiff_t j = 0; j < n; ++j) y[j] = TANH(x[j]);
}

CLSTM_DISPATCH CLSTM_MAYBE_UNUSED static void CLSTM_FN(clstm_sigmoid)(ptrdiff_t n, const T *x, T *y)
{
    for (ptrdiff_t j = 0; j < n; ++j) y[j] = SIGMOID(x[j]);
}

#undef CLSTM_LSTM_FWD_CASE
#undef CLSTM_LSTM_BWD_CASE
#undef CLSTM_LSTM_BWD_CASES
#undef CLSTM_FN
#undef CLSTM_CAT
#undef CLSTM_CAT_
