// Host-build test driver of kernels/rtn_two_trap.cuh (tests/kernels/test_two_trap_host.py).
//
// Built with g++ -include kernels/cuda_host_shim.h -I kernels (IEEE float64, -ffp-contract=off), like the
// host build of rtn_correct.cu. Per frame dtype, one extern "C" function runs, for n pixels, the decision on
// s = (x - mu) g with the quantiles NumPy's table lookup gave (rtn_two_trap_decide, or
// rtn_two_trap_decide_temporal when beat_centre is set) and the saturating (integer) or float64
// correction; another, the temporal lambda of n pixels from their w window values (frame-major, w x n), with
// the window median taken as the engine takes it (the mean of the two middle sorted values). The test
// compares states, values, lambdas and spreads bit for bit with rtnstream.kernels.two_trap.
#include "rtn_two_trap.cuh"

#define RTN_TT_HOST(SUFFIX, T, INTEGER, LO, HI)                                                                \
    extern "C" void rtn_two_trap_host_##SUFFIX(long long n, const T* x, const double* mu, double g,            \
                                               const double* lam, const double* q_lo, const double* q_hi,      \
                                               const unsigned char* ok, const double* d1_e, const double* d2_e, \
                                               const double* sigma_e, const double* log_prior,                 \
                                               const long long* d1_int, const long long* d2_int,               \
                                               const double* d1_float, const double* d2_float, int beat_centre, \
                                               const double* log_prior_centre, unsigned char* state, T* out) { \
        for (long long k = 0; k < n; ++k) {                                                                    \
            const double s = ((double)x[k] - mu[k]) * g;                                                       \
            const int st = beat_centre                                                                         \
                               ? rtn_two_trap_decide_temporal(s, lam[k], q_lo[k], q_hi[k], ok[k] != 0, d1_e[k], \
                                                              d2_e[k], sigma_e[k], log_prior + 8 * k,          \
                                                              log_prior_centre[k])                             \
                               : rtn_two_trap_decide(s, lam[k], q_lo[k], q_hi[k], ok[k] != 0, d1_e[k], d2_e[k], \
                                                     sigma_e[k], log_prior + 8 * k);                           \
            state[k] = (unsigned char)st;                                                                      \
            if (INTEGER) {                                                                                     \
                out[k] = (T)rtn_two_trap_corrected_int((long long)x[k], st, d1_int[k], d2_int[k], LO, HI);     \
            } else {                                                                                           \
                out[k] = st >= 1 && st <= RTN_TT_LEVELS                                                        \
                             ? (T)rtn_two_trap_corrected_float((double)x[k], st, d1_float[k], d2_float[k])     \
                             : x[k];                                                                           \
            }                                                                                                  \
        }                                                                                                      \
    }                                                                                                          \
    extern "C" void rtn_two_trap_lambda_host_##SUFFIX(long long n, int w, const T* window, const double* mu,   \
                                                      double g, const double* d1_e, const double* d2_e,        \
                                                      const double* sigma_e, const double* log_prior,          \
                                                      const double* log_prior_centre, double* lam,             \
                                                      double* spread) {                                        \
        double v[64], sorted[64];                                                                              \
        for (long long k = 0; k < n; ++k) {                                                                    \
            for (int t = 0; t < w; ++t) {                                                                      \
                v[t] = (double)window[t * n + k];                                                              \
                int i = t;                                                                                     \
                for (; i > 0 && sorted[i - 1] > v[t]; --i) sorted[i] = sorted[i - 1];                          \
                sorted[i] = v[t];                                                                              \
            }                                                                                                  \
            const double median = (sorted[(w - 1) / 2] + sorted[w / 2]) * 0.5;                                 \
            lam[k] = rtn_two_trap_temporal_lambda(v, w, median, mu[k], g, d1_e[k], d2_e[k], sigma_e[k],      \
                                                  log_prior + 8 * k, log_prior_centre[k], spread + k);        \
        }                                                                                                      \
    }

RTN_TT_HOST(u8, unsigned char, true, 0LL, 255LL)
RTN_TT_HOST(u16, unsigned short, true, 0LL, 65535LL)
RTN_TT_HOST(i16, short, true, -32768LL, 32767LL)
RTN_TT_HOST(u32, unsigned int, true, 0LL, 4294967295LL)
RTN_TT_HOST(i32, int, true, -2147483648LL, 2147483647LL)
RTN_TT_HOST(f32, float, false, 0LL, 0LL)
RTN_TT_HOST(f64, double, false, 0LL, 0LL)
