# BLAS wrappers over scipy.linalg.cython_blas, fused over float32 / float64.
#
# All s/d branching and all row-major handling live here: kernels above this
# layer never name sgemm/dgemm. Row-major calls are served by the column-major
# BLAS through the identity C^T = B^T A^T (operands swapped).

from cython cimport floating

cpdef enum BLAS_Order:
    RowMajor
    ColMajor

cpdef enum BLAS_Trans:
    NoTrans = 110  # ord('n')
    Trans = 116    # ord('t')


# --- Level 1 ----------------------------------------------------------------
cdef void _axpy(int n, floating alpha, const floating* x, int incx,
                floating* y, int incy) noexcept nogil

cdef void _scal(int n, floating alpha, floating* x, int incx) noexcept nogil

# --- Level 2 ----------------------------------------------------------------
cdef void _gemv(BLAS_Order order, BLAS_Trans ta, int m, int n, floating alpha,
                const floating* A, int lda, const floating* x, int incx,
                floating beta, floating* y, int incy) noexcept nogil

# --- Level 3 ----------------------------------------------------------------
cdef void _gemm(BLAS_Order order, BLAS_Trans ta, BLAS_Trans tb, int m, int n,
                int k, floating alpha, const floating* A, int lda,
                const floating* B, int ldb, floating beta, floating* C,
                int ldc) noexcept nogil
