/*
 * Runtime ISA dispatch for the kernel headers: a function marked
 * CLSTM_DISPATCH is compiled three times (baseline, x86-64-v3 = AVX2+FMA,
 * x86-64-v4 = AVX-512) and the loader picks one (target_clones, an ifunc), so
 * a portable wheel still uses the wide units. That needs gcc on x86-64 glibc
 * Linux (not clang, not musl): elsewhere, and with CLSTM_NO_DISPATCH, one
 * baseline build. CLSTM_HAVE_DISPATCH also gates the manually dispatched
 * variants (the small GEMM, the narrow products, the fused cell).
 */
#ifndef CLSTM_DISPATCH_H
#define CLSTM_DISPATCH_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    defined(__linux__) && defined(__GLIBC__) && !defined(CLSTM_NO_DISPATCH)
#define CLSTM_DISPATCH \
    __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#define CLSTM_HAVE_DISPATCH 1
#else
#define CLSTM_DISPATCH
#define CLSTM_HAVE_DISPATCH 0
#endif

#endif
