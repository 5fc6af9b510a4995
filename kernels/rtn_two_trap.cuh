// rtn_two_trap.cuh: jump decision and correction of two-trap pixels, as CUDA device functions.
//
// The CUDA twin of rtnstream/kernels/two_trap.py, which is the specification (its module docstring and
// docs/algorithm.md, "Two-trap pixels", give the rules): levels L_k = i_k D1 + j_k D2 in the fixed order
// below; level k is a candidate when q_lo + L_k < s < q_hi + L_k, s lies outside the central range
// (s < q_lo or s > q_hi) and level k is resolvable from the centre; the candidate with the largest
// log_prior[k] - 0.5 z^2, z = ((s - lam) - L_k) / sqrt(sigma^2 + lam), is taken (the first on ties).
// Same IEEE float64 operations as NumPy (products by -1, 0, 1 are exact, one addition; the log priors come
// from the host; sqrt only, which IEEE rounds exactly; no fused multiply-add: build with --fmad=false, or
// -ffp-contract=off on the host), strict inequalities, no header and no library function, so NVRTC
// compiles it as is and the host build force-includes cuda_host_shim.h.
//
// Phase 2 (issue 19): rtn_correct.cu includes this after its own helpers and calls rtn_two_trap_decide
// with its rtn_lookup quantiles for the pixels the cube flags DQ_TWO_TRAP.
#pragma once

#define RTN_TT_NONE 0          // left unchanged
#define RTN_TT_LEVELS 8        // level codes 1 .. 8: level index k = code - 1
#define RTN_TT_OUT_OF_TABLE 9  // lambda or sigma outside the threshold table: left unchanged

// Trap states of level index k (two_trap.LEVEL_I, LEVEL_J).
__device__ __forceinline__ int rtn_tt_i(int k) { return k < 3 ? -1 : (k < 5 ? 0 : 1); }
__device__ __forceinline__ int rtn_tt_j(int k) {
    return k < 3 ? k - 1 : (k < 5 ? 2 * k - 7 : k - 6);  // -1 0 1 | -1 1 | -1 0 1
}

// two_trap.decide_two_trap for one pixel: s = (x - mu) g (electron), lam (electron), the table's
// quantiles q_lo, q_hi at (lam, sigma), whether both lie in the table, the jumps d1, d2 and sigma
// (electron), and the pixel's 8 log priors (level order).
__device__ int rtn_two_trap_decide(double s, double lam, double q_lo, double q_hi, bool in_table, double d1,
                                   double d2, double sigma, const double* log_prior) {
    const bool outside_centre = (s < q_lo) || (s > q_hi);
    const double width = sqrt(sigma * sigma + lam);
    const double signal = s - lam;
    int state = RTN_TT_NONE;
    double best = 0.0;
    for (int k = 0; k < RTN_TT_LEVELS; ++k) {
        const double off = (double)rtn_tt_i(k) * d1 + (double)rtn_tt_j(k) * d2;
        const bool inside = (q_lo + off < s) && (s < q_hi + off);
        const bool resolvable = off < 0.0 ? (lam - q_lo < -off) : (off > 0.0 ? (q_hi - lam < off) : false);
        if (!(inside && outside_centre && resolvable)) continue;
        const double z = (signal - off) / width;
        const double score = log_prior[k] - 0.5 * (z * z);
        if (state == RTN_TT_NONE || score > best) {
            state = k + 1;
            best = score;
        }
    }
    if (!in_table) state = RTN_TT_OUT_OF_TABLE;
    return state;
}

// two_trap.apply_two_trap, integer frames: x - (i D1_adu + j D2_adu), clipped to [lo, hi] (the dtype's range).
__device__ __forceinline__ long long rtn_two_trap_corrected_int(long long x, int state, long long d1, long long d2,
                                                                long long lo, long long hi) {
    if (state < 1 || state > RTN_TT_LEVELS) return x;
    const long long v = x - ((long long)rtn_tt_i(state - 1) * d1 + (long long)rtn_tt_j(state - 1) * d2);
    return v < lo ? lo : (v > hi ? hi : v);
}

// two_trap.apply_two_trap, float frames: (double)x - (i D1_adu + j D2_adu) in float64.
__device__ __forceinline__ double rtn_two_trap_corrected_float(double x, int state, double d1, double d2) {
    if (state < 1 || state > RTN_TT_LEVELS) return x;
    return x - ((double)rtn_tt_i(state - 1) * d1 + (double)rtn_tt_j(state - 1) * d2);
}
