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
// with its rtn_lookup quantiles for the pixels the cube flags DQ_TWO_TRAP. With the temporal reference
// (docs/algorithm.md section 9, "Temporal reference"): lambda and the veto's spread from
// rtn_two_trap_temporal_lambda, the decision from rtn_two_trap_decide_temporal.
#pragma once

#define RTN_TT_NONE 0          // left unchanged
#define RTN_TT_LEVELS 8        // level codes 1 .. 8: level index k = code - 1
#define RTN_TT_OUT_OF_TABLE 9  // lambda or sigma outside the threshold table: left unchanged

// Trap states of level index k (two_trap.LEVEL_I, LEVEL_J).
__device__ __forceinline__ int rtn_tt_i(int k) { return k < 3 ? -1 : (k < 5 ? 0 : 1); }
__device__ __forceinline__ int rtn_tt_j(int k) {
    return k < 3 ? k - 1 : (k < 5 ? 2 * k - 7 : k - 6);  // -1 0 1 | -1 1 | -1 0 1
}

// The decision with an optional centre rule (two_trap.decide_two_trap's beat_centre): with beat_centre and
// d2 != 0 a level is a candidate only when its score is above the centre's, log_prior_centre - 0.5 z0^2.
__device__ __forceinline__ int rtn_two_trap_decide_rule(double s, double lam, double q_lo, double q_hi, bool in_table,
                                                        double d1, double d2, double sigma, const double* log_prior,
                                                        bool beat_centre, double log_prior_centre) {
    const bool outside_centre = (s < q_lo) || (s > q_hi);
    const double width = sqrt(sigma * sigma + lam);
    const double signal = s - lam;
    const double z0 = signal / width;
    const double centre = log_prior_centre - 0.5 * (z0 * z0);
    const bool centre_rule = beat_centre && !(d2 == 0.0);
    int state = RTN_TT_NONE;
    double best = 0.0;
    for (int k = 0; k < RTN_TT_LEVELS; ++k) {
        const double off = (double)rtn_tt_i(k) * d1 + (double)rtn_tt_j(k) * d2;
        const bool inside = (q_lo + off < s) && (s < q_hi + off);
        const bool resolvable = off < 0.0 ? (lam - q_lo < -off) : (off > 0.0 ? (q_hi - lam < off) : false);
        if (!(inside && outside_centre && resolvable)) continue;
        const double z = (signal - off) / width;
        const double score = log_prior[k] - 0.5 * (z * z);
        if (centre_rule && !(score > centre)) continue;
        if (state == RTN_TT_NONE || score > best) {
            state = k + 1;
            best = score;
        }
    }
    if (!in_table) state = RTN_TT_OUT_OF_TABLE;
    return state;
}

// two_trap.decide_two_trap for one pixel: s = (x - mu) g (electron), lam (electron), the table's
// quantiles q_lo, q_hi at (lam, sigma), whether both lie in the table, the jumps d1, d2 and sigma
// (electron), and the pixel's 8 log priors (level order).
__device__ int rtn_two_trap_decide(double s, double lam, double q_lo, double q_hi, bool in_table, double d1,
                                   double d2, double sigma, const double* log_prior) {
    return rtn_two_trap_decide_rule(s, lam, q_lo, q_hi, in_table, d1, d2, sigma, log_prior, false, 0.0);
}

// two_trap.decide_two_trap(..., beat_centre=True), the temporal reference's decision: as rtn_two_trap_decide,
// and a level of a pixel with d2 != 0 must score above the centre, log_prior_centre = log(P1(0) P2(0)).
__device__ int rtn_two_trap_decide_temporal(double s, double lam, double q_lo, double q_hi, bool in_table, double d1,
                                            double d2, double sigma, const double* log_prior,
                                            double log_prior_centre) {
    return rtn_two_trap_decide_rule(s, lam, q_lo, q_hi, in_table, d1, d2, sigma, log_prior, true, log_prior_centre);
}

// two_trap.log_by_roots: ln x by six square roots and the series 128 (y + y^3/3 + y^5/5 + y^7/7),
// y = (r - 1) / (r + 1), r = x^(1/64) (Horner form, the same operations as NumPy's).
__device__ __forceinline__ double rtn_tt_log(double x) {
    double r = x;
    for (int i = 0; i < 6; ++i) r = sqrt(r);
    const double y = (r - 1.0) / (r + 1.0);
    const double y2 = y * y;
    return 128.0 * (y * (1.0 + y2 * (1.0 / 3.0 + y2 * (1.0 / 5.0 + y2 * (1.0 / 7.0)))));
}

// Offset (electron) of level h of the nine, centre first: 0, then level index h - 1.
__device__ __forceinline__ double rtn_tt_offset9(int h, double d1, double d2) {
    return h == 0 ? 0.0 : (double)rtn_tt_i(h - 1) * d1 + (double)rtn_tt_j(h - 1) * d2;
}

// two_trap._best_levels for one window value r = (v - mu) g: the best score over the nine levels under
// (lam, var), centre first, strict > in order; *off gets that level's offset.
__device__ __forceinline__ double rtn_tt_best_level(double r, double lam, double var, double d1, double d2,
                                                    const double* log_prior, double log_prior_centre, double* off) {
    const double res = r - lam;
    double d = res - 0.0;
    double best = log_prior_centre - 0.5 * ((d * d) / var);
    *off = 0.0;
    for (int k = 1; k <= RTN_TT_LEVELS; ++k) {
        const double o = rtn_tt_offset9(k, d1, d2);
        d = res - o;
        const double sc = log_prior[k - 1] - 0.5 * ((d * d) / var);
        if (sc > best) {
            best = sc;
            *off = o;
        }
    }
    return best;
}

// two_trap.temporal_lambda_two_trap for one pixel: the w window values v (adu, window order), their median
// (adu: the mean of the two middle sorted values), mu (adu), g (e-/adu), d1, d2, sigma (electron), the 8
// log priors and the centre's. Returns lambda (electron, >= 0); *spread_e gets the standard deviation
// (ddof = 0, electron) of the window values moved to the centre by their levels under it.
__device__ double rtn_two_trap_temporal_lambda(const double* v, int w, double median, double mu, double g,
                                               double d1, double d2, double sigma, const double* log_prior,
                                               double log_prior_centre, double* spread_e) {
    const double m = (median - mu) * g;
    const double s2 = sigma * sigma;
    const double half_w = 0.5 * (double)w;
    double lam = 0.0;
    double best = 0.0;
    double off = 0.0;
    for (int h = 0; h <= RTN_TT_LEVELS; ++h) {
        const double shifted = m - rtn_tt_offset9(h, d1, d2);
        const double lam_h = shifted > 0.0 ? shifted : 0.0;
        const double var = s2 + lam_h;
        double total = 0.0;
        for (int t = 0; t < w; ++t) {
            const double sc = rtn_tt_best_level((v[t] - mu) * g, lam_h, var, d1, d2, log_prior, log_prior_centre, &off);
            total = t == 0 ? sc : total + sc;
        }
        const double score = total - half_w * rtn_tt_log(var);
        if (h == 0 || score > best) {
            lam = lam_h;
            best = score;
        }
    }
    const double var = s2 + lam;
    double mean = 0.0;
    for (int t = 0; t < w; ++t) {
        const double r = (v[t] - mu) * g;
        rtn_tt_best_level(r, lam, var, d1, d2, log_prior, log_prior_centre, &off);
        mean = t == 0 ? r - off : mean + (r - off);
    }
    mean = mean / (double)w;
    double acc = 0.0;
    for (int t = 0; t < w; ++t) {
        const double r = (v[t] - mu) * g;
        rtn_tt_best_level(r, lam, var, d1, d2, log_prior, log_prior_centre, &off);
        const double d = (r - off) - mean;
        acc = t == 0 ? d * d : acc + d * d;
    }
    *spread_e = sqrt(acc / (double)w);
    return lam;
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
