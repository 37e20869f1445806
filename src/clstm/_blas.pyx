"""BLAS wrappers (fused float/double) and their Python-callable twins for tests."""

from scipy.linalg.cython_blas cimport saxpy, daxpy, sscal, dscal
from scipy.linalg.cython_blas cimport sgemv, dgemv, sgemm, dgemm

import numpy as np


# --- Level 1 ----------------------------------------------------------------
cdef void _axpy(int n, floating alpha, const floating* x, int incx,
                floating* y, int incy) noexcept nogil:
    """y += alpha * x"""
    if floating is float:
        saxpy(&n, &alpha, <float*> x, &incx, y, &incy)
    else:
        daxpy(&n, &alpha, <double*> x, &incx, y, &incy)


cdef void _scal(int n, floating alpha, floating* x, int incx) noexcept nogil:
    """x *= alpha"""
    if floating is float:
        sscal(&n, &alpha, x, &incx)
    else:
        dscal(&n, &alpha, x, &incx)


# --- Level 2 ----------------------------------------------------------------
cdef void _gemv(BLAS_Order order, BLAS_Trans ta, int m, int n, floating alpha,
                const floating* A, int lda, const floating* x, int incx,
                floating beta, floating* y, int incy) noexcept nogil:
    """y = alpha * op(A) @ x + beta * y, A of shape (m, n) in `order`"""
    cdef char ta_ = ta
    if order == RowMajor:
        # A row-major (m, n) is A^T column-major (n, m): flip the transpose.
        ta_ = NoTrans if ta == Trans else Trans
        m, n = n, m
    if floating is float:
        sgemv(&ta_, &m, &n, &alpha, <float*> A, &lda, <float*> x, &incx,
              &beta, y, &incy)
    else:
        dgemv(&ta_, &m, &n, &alpha, <double*> A, &lda, <double*> x, &incx,
              &beta, y, &incy)


# --- Level 3 ----------------------------------------------------------------
cdef void _gemm(BLAS_Order order, BLAS_Trans ta, BLAS_Trans tb, int m, int n,
                int k, floating alpha, const floating* A, int lda,
                const floating* B, int ldb, floating beta, floating* C,
                int ldc) noexcept nogil:
    """C = alpha * op(A) @ op(B) + beta * C, C of shape (m, n) in `order`"""
    cdef char ta_ = ta
    cdef char tb_ = tb
    if order == RowMajor:
        # C^T = op(B)^T op(A)^T: call the column-major BLAS with swapped operands.
        if floating is float:
            sgemm(&tb_, &ta_, &n, &m, &k, &alpha, <float*> B, &ldb,
                  <float*> A, &lda, &beta, C, &ldc)
        else:
            dgemm(&tb_, &ta_, &n, &m, &k, &alpha, <double*> B, &ldb,
                  <double*> A, &lda, &beta, C, &ldc)
    else:
        if floating is float:
            sgemm(&ta_, &tb_, &m, &n, &k, &alpha, <float*> A, &lda,
                  <float*> B, &ldb, &beta, C, &ldc)
        else:
            dgemm(&ta_, &tb_, &m, &n, &k, &alpha, <double*> A, &lda,
                  <double*> B, &ldb, &beta, C, &ldc)


# --- Python-callable twins (tests only) --------------------------------------
# Matrices may be row-major or column-major with any leading dimension (a
# slice of a larger array); the twin derives the BLAS order and leading
# dimension from the strides, as a kernel caller does from its layout.
# Scalars are doubles after the arrays, so the arrays pick the specialisation.

def _matrix_layout(floating[:, :] A):
    """(order, leading dimension) of a matrix with unit stride along one axis."""
    cdef Py_ssize_t item = sizeof(floating)
    cdef Py_ssize_t rows = A.shape[0], cols = A.shape[1]
    if A.strides[1] == item or cols == 1:
        return RowMajor, <int> max(A.strides[0] // item, cols, 1)
    if A.strides[0] == item or rows == 1:
        return ColMajor, <int> max(A.strides[1] // item, rows, 1)
    raise ValueError("matrix must have unit stride along one axis")


def axpy_py(floating[::1] x, floating[::1] y, double alpha):
    """y += alpha * x, in place."""
    if x.shape[0] != y.shape[0]:
        raise ValueError("x and y must have the same length")
    _axpy(<int> x.shape[0], <floating> alpha, &x[0], 1, &y[0], 1)


def scal_py(floating[::1] x, double alpha):
    """x *= alpha, in place."""
    _scal(<int> x.shape[0], <floating> alpha, &x[0], 1)


def gemv_py(floating[:, :] A, floating[::1] x, floating[::1] y, double alpha,
            double beta, bint trans=False):
    """y = alpha * op(A) @ x + beta * y, in place."""
    cdef BLAS_Order order
    cdef int lda
    order, lda = _matrix_layout(A)
    _gemv(order, Trans if trans else NoTrans, <int> A.shape[0], <int> A.shape[1],
          <floating> alpha, &A[0, 0], lda, &x[0], 1, <floating> beta, &y[0], 1)


def gemm_py(floating[:, :] A, floating[:, :] B, floating[:, :] C, double alpha,
            double beta, bint trans_a=False, bint trans_b=False):
    """C = alpha * op(A) @ op(B) + beta * C, in place; A, B, C share one order."""
    cdef BLAS_Order order, order_b, order_c
    cdef int lda, ldb, ldc
    order, lda = _matrix_layout(A)
    order_b, ldb = _matrix_layout(B)
    order_c, ldc = _matrix_layout(C)
    if not (order == order_b == order_c):
        raise ValueError("A, B and C must share one memory order")
    cdef int k = <int> (A.shape[0] if trans_a else A.shape[1])
    _gemm(order, Trans if trans_a else NoTrans, Trans if trans_b else NoTrans,
          <int> C.shape[0], <int> C.shape[1], k, <floating> alpha, &A[0, 0], lda,
          &B[0, 0], ldb, <floating> beta, &C[0, 0], ldc)
