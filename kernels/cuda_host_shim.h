// cuda_host_shim.h: compile the CUDA sources of rtnstream.kernels for the host (tests only).
//
// Force-included by the host build (g++ -include cuda_host_shim.h -x c++ rtn_correct.cu, with
// -ffp-contract=off and no -ffast-math, so the host arithmetic is the same IEEE float64 as the GPU build's
// --fmad=false). A kernel call then runs its grid-stride loop as a plain host loop: one block of one
// thread, i.e. a warp of a single lane (lane 0), for which the warp intrinsics below are exact.
#pragma once

#include <cmath>
#include <cstring>

#define __global__
#define __device__
#define __forceinline__ inline

struct RtnHostDim3 {
    unsigned x, y, z;
};

// One block of one thread: kernels' grid-stride loops visit every element in order.
static const RtnHostDim3 threadIdx = {0u, 0u, 0u};
static const RtnHostDim3 blockIdx = {0u, 0u, 0u};
static const RtnHostDim3 blockDim = {1u, 1u, 1u};
static const RtnHostDim3 gridDim = {1u, 1u, 1u};

using std::sqrt;

// Warp intrinsics for a warp whose only lane is lane 0.
inline unsigned __ballot_sync(unsigned, bool predicate) { return predicate ? 1u : 0u; }
inline unsigned __match_any_sync(unsigned, int) { return 1u; }
template <typename V> inline V __shfl_sync(unsigned, V value, int) { return value; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }

// Atomics: the host loop is serial.
inline unsigned atomicAdd(unsigned* address, unsigned value) {
    const unsigned old = *address;
    *address = old + value;
    return old;
}

inline double __longlong_as_double(long long bits) {
    double out;
    std::memcpy(&out, &bits, sizeof out);
    return out;
}
