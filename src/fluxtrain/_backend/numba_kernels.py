"""The numba kernels of the fast paths (``fast_numpy``, and through it ``fast_torch`` and
``fast_jax_ffi``), imported the first time a kernel is asked for: numba is optional.

Every jitted function here is defined at module level. numba keys a cached function by
its closure's contents too, pickled, and a closure holding another jitted function or an
intrinsic pickles differently in every process: the kernels, once built inside a
function, were compiled again in every process (~1 s of a first step) and appended one
more entry to the on-disk cache each time.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


inline = numba.njit(inline="always")


@intrinsic
def piece_ptr(typingctx, addr, off, like):
    # element `off` of the array at integer address `addr`, as a pointer to `like`'s
    # float type (for numba.carray)
    if not (isinstance(addr, types.Integer) and isinstance(off, types.Integer)
            and isinstance(like, types.Float)):
        return None
    sig = types.CPointer(like)(addr, off, like)

    def codegen(context, builder, signature, args):
        p = builder.inttoptr(args[0], context.get_value_type(signature.return_type))
        return builder.gep(p, [args[1]])
    return sig, codegen


# addresses for the Python side: one call per array's set (a call per array costs more)
@numba.njit(cache=True)
def addr3(a, b, c):
    return a.ctypes.data, b.ctypes.data, c.ctypes.data


@numba.njit(cache=True)
def addr4(a, b, c, d):
    return a.ctypes.data, b.ctypes.data, c.ctypes.data, d.ctypes.data


@inline
def piece(P, CH, c, b, z):
    # elements lo:hi of buffer b of the chunk's array, indexed from 0: a loop from a
    # table-read start would keep numba's negative-index handling and not vectorise
    return numba.carray(piece_ptr(P[CH[c, 0], b], CH[c, 1], z), CH[c, 2] - CH[c, 1])


@inline
def pre(gi, xi, clip, has_clip, wd, has_wd):
    # ClipNorm's scale, then WeightDecay's g + lambda*x (as the chain applies them)
    if has_clip:
        gi = gi * clip
    if has_wd:
        gi = gi + wd * xi
    return gi


# Each `*_chunk` updates elements lo:hi of one array; scalars come per array from a
# small table of distinct rows U (floats, in the arrays' dtype) and I (flags).
@inline
def head(c, P, CH, R, I, C, z):
    # chunk c's pieces of its array's x and g, the array's row of scalars, clip scale and flags
    j = CH[c, 0]
    r = R[j]
    return piece(P, CH, c, 0, z), piece(P, CH, c, 1, z), r, C[j], I[r, 0] != 0, I[r, 1] != 0


@inline
def adam_chunk(c, P, CH, R, U, I, C):
    z = U[0, 0]
    x, g, r, clip, has_clip, has_wd = head(c, P, CH, R, I, C, z)
    m, v = piece(P, CH, c, 2, z), piece(P, CH, c, 3, z)
    b1, omb1, b2, omb2, bc1, bc2 = U[r, 0], U[r, 1], U[r, 2], U[r, 3], U[r, 4], U[r, 5]
    eps, eta, lam, wd, mode = U[r, 6], U[r, 7], U[r, 8], U[r, 9], I[r, 2]
    for i in range(x.size):
        xi = x[i]
        gi = pre(g[i], xi, clip, has_clip, wd, has_wd)
        mi = b1 * m[i] + omb1 * gi
        vi = b2 * v[i] + omb2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        a = mi / bc1 / (math.sqrt(vi / bc2) + eps)
        if mode == 0:    # Adam: a * eta
            d = a * eta
        elif mode == 1:  # AdamW(couple=true): eta * (a + lambda*x)
            d = eta * (a + lam * xi)
        else:            # AdamW(couple=false): eta*a + lambda*x
            d = eta * a + lam * xi
        x[i] = xi - d


@inline
def momentum_chunk(c, P, CH, R, U, I, C):
    z = U[0, 0]
    x, g, r, clip, has_clip, has_wd = head(c, P, CH, R, I, C, z)
    v = piece(P, CH, c, 2, z)
    rho, eta, wd = U[r, 0], U[r, 1], U[r, 2]
    for i in range(x.size):
        xi = x[i]
        vi = rho * v[i] + eta * pre(g[i], xi, clip, has_clip, wd, has_wd)
        v[i] = vi
        x[i] = xi - vi


@inline
def lion_chunk(c, P, CH, R, U, I, C):
    z = U[0, 0]
    x, g, r, clip, has_clip, has_wd = head(c, P, CH, R, I, C, z)
    s = piece(P, CH, c, 2, z)
    b1, b2, omb2, b2mb1, eta, wd = U[r, 0], U[r, 1], U[r, 2], U[r, 3], U[r, 4], U[r, 5]
    for i in range(x.size):
        xi = x[i]
        gi = pre(g[i], xi, clip, has_clip, wd, has_wd)
        si = b2 * gi + omb2 * s[i]
        s[i] = si
        c_ = b2mb1 * gi + b1 * si
        # eta*sign(c); 0, -0 and NaN are their own sign (np.sign, torch.sign, jnp.sign)
        if c_ > 0:
            d = eta
        elif c_ < 0:
            d = -eta
        else:
            d = eta * c_
        x[i] = xi - d


# error_model="numpy": x/0 is IEEE inf/NaN as in NumPy and torch (numba's default raises
# ZeroDivisionError mid-update, and its check per division stops vectorisation, ~10x).
# nogil: the pieces of one call run on several Python threads at once (see `_run`).
jit = numba.njit(fastmath=False, cache=True, nogil=True, error_model="numpy")


@jit
def adam(P, CH, R, U, I, C):
    for c in range(CH.shape[0]):
        adam_chunk(c, P, CH, R, U, I, C)


@jit
def momentum(P, CH, R, U, I, C):
    for c in range(CH.shape[0]):
        momentum_chunk(c, P, CH, R, U, I, C)


@jit
def lion(P, CH, R, U, I, C):
    for c in range(CH.shape[0]):
        lion_chunk(c, P, CH, R, U, I, C)


# NumPy's pairwise summation (loops_utils.h: blocks of at most 128 summed in 8
# accumulators, larger runs halved at a multiple of 8), of the squares rounded to the
# dtype: np.sum(g * g) bit for bit, without the temporary g * g
@numba.njit(fastmath=False, cache=True, nogil=True, error_model="numpy")
def pairwise_sq(a, z):
    # (range loops over a view from 0 spare numba's negative-index handling; without
    # fastmath LLVM still does not vectorise the 8 accumulators: see performance.md)
    n = a.size
    if n < 8:
        res = z
        for i in range(n):
            res += a[i] * a[i]
        return res
    if n <= 128:
        r0, r1, r2, r3 = a[0] * a[0], a[1] * a[1], a[2] * a[2], a[3] * a[3]
        r4, r5, r6, r7 = a[4] * a[4], a[5] * a[5], a[6] * a[6], a[7] * a[7]
        for k in range(1, n // 8):
            i = 8 * k
            r0 += a[i] * a[i]
            r1 += a[i + 1] * a[i + 1]
            r2 += a[i + 2] * a[i + 2]
            r3 += a[i + 3] * a[i + 3]
            r4 += a[i + 4] * a[i + 4]
            r5 += a[i + 5] * a[i + 5]
            r6 += a[i + 6] * a[i + 6]
            r7 += a[i + 7] * a[i + 7]
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        for i in range(n - n % 8, n):
            res += a[i] * a[i]
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return pairwise_sq(a[:n2], z) + pairwise_sq(a[n2:], z)


@jit
def sumsq(P, CH, out, z):
    # CH rows (j, lo, hi, t): out[t] = the pairwise sum of squares of array j's lo:hi;
    # z: 0 in the dtype (a float32 times an int literal would be float64 in numba)
    for c in range(CH.shape[0]):
        a = numba.carray(piece_ptr(P[CH[c, 0], 0], CH[c, 1], z), CH[c, 2] - CH[c, 1])
        out[CH[c, 3]] = pairwise_sq(a, z)


# ------------------------------------------------------------------ JAX's custom call (fast_jax_ffi)

@intrinsic
def at(typingctx, addr, like):
    # a pointer to `like`'s type at integer address `addr` (for numba.carray)
    if not isinstance(addr, types.Integer):
        return None
    sig = types.CPointer(like)(addr, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return sig, codegen


@numba.njit(cache=True, nogil=True)
def buffers(addrs):
    """``(dtypes, data, sizes)`` of the ``XLA_FFI_Buffer`` structs at ``addrs``
    (``{size_t, ext*, int dtype, void* data, int64 rank, int64* dims}``)."""
    n = addrs.size
    dt = np.empty(n, np.int64)
    data = np.empty(n, np.int64)
    sizes = np.empty(n, np.int64)
    for i in range(n):
        a = np.int64(addrs[i])
        dt[i] = numba.carray(at(a + 16, np.int32(0)), 1)[0]
        data[i] = numba.carray(at(a + 24, np.int64(0)), 1)[0]
        rank = numba.carray(at(a + 32, np.int64(0)), 1)[0]
        s = 1
        if rank > 0:  # (a 0-d buffer's dims may be a null pointer)
            dims = numba.carray(at(numba.carray(at(a + 40, np.int64(0)), 1)[0], np.int64(0)), rank)
            for k in range(rank):
                s *= dims[k]
        sizes[i] = s
    return dt, data, sizes
