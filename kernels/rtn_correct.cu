// rtn_correct.cu: per-frame RTN correction of the gathered RTN pixels (ALGORITHM.md sections 2-3).
//
// The CUDA twin of rtnstream/kernels/numpy_backend.py, which is the specification: every step below is the
// same fixed sequence of IEEE float64 operations (sequential sums in window order, the medians as
// (a + b) * 0.5 of the two middle values, sorted as NumPy sorts them, the bilinear table lookup of
// ThresholdTable.lookup, strict inequalities), so integer output is bit-identical to the NumPy backend.
// Rules that keep it so (docs/cuda.md): compile with --fmad=false (no fused multiply-add contraction),
// double precision throughout, no transcendental function (sqrt only, which IEEE rounds exactly), no
// system headers (the host build force-includes cuda_host_shim.h); the one include, rtn_two_trap.cuh (the
// two-trap decision), is inlined by rtnstream.kernels._cuda.source_text for NVRTC, which has no include path.
//
// Four kernels, one template body each, exposed as extern "C" wrappers named by frame dtype
// (rtn_temporal_u16, rtn_spatial_f32, ...), whose parameter lists are described once on the Python side
// (rtnstream.kernels._cuda.TEMPORAL / SPATIAL / TEMPORAL_TWO_TRAP / SPATIAL_TWO_TRAP):
//   rtn_temporal_<dt>  ring buffer of gathered RTN pixels -> temporal median reference, variability veto,
//                      decision, saturating correction, counters (one launch per frame, both temporal modes)
//   rtn_spatial_<dt>   whole frame on the device -> median of the bias-subtracted k x k neighbours without
//                      the centre, decision, correction, counters (one launch per frame)
//   rtn_temporal_two_trap_<dt>, rtn_spatial_two_trap_<dt>  the same for the two-trap pixels only (one thread
//                      each, launched after the kernel above when the cube has any; that one skips them)
// All write the corrected pixels compacted (flat index, new value; order not deterministic, indices unique)
// for the host to scatter into its copy of the frame, the per-frame counts by decision code, and add to the
// per-pixel counters n_lo, n_hi, n_veto, n_frames.
//
// Two-trap pixels (docs/algorithm.md section 9; tt_slot[k] >= 0, their position among the n_two two-trap
// pixels, tt_pos the reverse) are decided by rtn_two_trap_decide at the neighbour median's lambda (spatial),
// or by the temporal rule (rtn_two_trap_temporal: lambda, veto and centre rule of its own), and corrected by
// their level's offset; n_lo / n_hi count them by its direction, n_level[8 * slot + level - 1] per level.
// Their own kernels keep their code (and its registers: the main kernels' occupancy) out of the main
// kernels, and their warps full of them. With n_two == 0 (a cube of one-trap pixels) tt_slot is not read.
//
// Launch: 1-D grid, blockDim a multiple of 32. The grid-stride loop keeps every lane of a warp in the same
// iteration (warp-uniform trip count), as the warp-aggregated atomics below require. The host shim runs the
// same loop with one block of one thread: a warp of one lane.

#define RTN_STATE_NONE 0          // left unchanged
#define RTN_STATE_LOW 1           // negative jump: x' = x + D_adu
#define RTN_STATE_HIGH 2          // positive jump: x' = x - D_adu
#define RTN_STATE_VETO 3          // variable source (temporal references): left unchanged
#define RTN_STATE_OUT_OF_TABLE 4  // lambda or sigma outside the threshold table: left unchanged
#define RTN_COUNT_CHANGED 5       // counts[5]: number of corrected pixels (the compaction cursor)
#define RTN_MAX_VALUES 80         // largest temporal window and spatial neighbourhood (9 x 9 - 1)
#define RTN_FULL_MASK 0xffffffffu
#ifdef __CUDACC__
#define RTN_UNROLL _Pragma("unroll")  // full unrolling where the trip count is a compile-time constant
#else
#define RTN_UNROLL                    // host build (g++)
#endif
#ifndef RTN_WINDOW
#define RTN_WINDOW 0  // temporal window W fixed at compile time (-DRTN_WINDOW=10); 0: taken at run time
#endif

typedef long long rtn_i64;

// ---- dtype traits: saturation range of the integer dtypes --------------------------------------------

template <typename T> struct RtnRange { static constexpr bool integer = false; };
template <> struct RtnRange<unsigned char> {
    static constexpr bool integer = true; static constexpr rtn_i64 lo = 0, hi = 255; };
template <> struct RtnRange<unsigned short> {
    static constexpr bool integer = true; static constexpr rtn_i64 lo = 0, hi = 65535; };
template <> struct RtnRange<short> {
    static constexpr bool integer = true; static constexpr rtn_i64 lo = -32768, hi = 32767; };
template <> struct RtnRange<unsigned int> {
    static constexpr bool integer = true; static constexpr rtn_i64 lo = 0, hi = 4294967295LL; };
template <> struct RtnRange<int> {
    static constexpr bool integer = true; static constexpr rtn_i64 lo = -2147483648LL, hi = 2147483647LL; };

// ---- small helpers -------------------------------------------------------------------------------------

// Exact float32 <-> float64 conversions that no flush-to-zero option can change. CuPy appends -ftz=true to
// the NVRTC options (the last one wins), which turns a plain (double)x of a float into cvt.ftz.f64.f32 and
// flushes float32 subnormals to zero; the explicit PTX below has no .ftz, whatever the options. The host
// build (g++, no __CUDA_ARCH__) converts exactly anyway. Every other type converts exactly as written.
template <typename T> __device__ __forceinline__ double rtn_to_double(T x) { return (double)x; }
template <> __device__ __forceinline__ double rtn_to_double<float>(float x) {
#ifdef __CUDA_ARCH__
    double d;
    asm("cvt.f64.f32 %0, %1;" : "=d"(d) : "f"(x));
    return d;
#else
    return (double)x;
#endif
}
template <typename T> __device__ __forceinline__ T rtn_from_double(double v) { return (T)v; }
template <> __device__ __forceinline__ float rtn_from_double<float>(double v) {
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.rn.f32.f64 %0, %1;" : "=f"(f) : "d"(v));
    return f;
#else
    return (float)v;
#endif
}

__device__ __forceinline__ unsigned rtn_lane() { return threadIdx.x & 31u; }

// NumPy's sort order: NaN after every number.
__device__ __forceinline__ bool rtn_nan_last_less(double a, double b) { return a < b || (b != b && a == a); }

// np.maximum(v, 0.0): NaN propagates.
__device__ __forceinline__ double rtn_clamp_lambda(double v) { return (v != v || v > 0.0) ? v : 0.0; }

// np.minimum / np.maximum: a NaN operand is returned.
__device__ __forceinline__ double rtn_np_min(double a, double b) { return a != a ? a : (b != b ? b : (b < a ? b : a)); }
__device__ __forceinline__ double rtn_np_max(double a, double b) { return a != a ? a : (b != b ? b : (b > a ? b : a)); }

// Temporal reference: the W window values, in window order, sorted by the odd-even transposition network of
// np.minimum / np.maximum; then (v[W/2 - 1] + v[W/2]) * 0.5. NumPy computes only those two rows, by a pruned
// selection network (numpy_backend.median_pair_network): the same values, and NaN where the window has one.
// W > 0: the window fixed at compile time (loops unrolled, v in registers); W == 0: w at run time.
template <int W>
__device__ __forceinline__ double rtn_window_median(double* v, int w_run) {
    const int w = W > 0 ? W : w_run;
RTN_UNROLL
    for (int k = 0; k < w; ++k) {
RTN_UNROLL
        for (int r = k % 2; r < w - 1; r += 2) {
            const double lo = rtn_np_min(v[r], v[r + 1]);
            v[r + 1] = rtn_np_max(v[r], v[r + 1]);
            v[r] = lo;
        }
    }
    return (v[w / 2 - 1] + v[w / 2]) * 0.5;
}

// Spatial reference (NumpyBackend._spatial_block): the c neighbour values sorted with NaN last (np.sort),
// then (v[(c-1)/2] + v[c/2]) * 0.5; NaN when c == 0 (every neighbour outside the frame).
__device__ double rtn_neighbour_median(double* v, int c) {
    if (c == 0) return __longlong_as_double(0x7ff8000000000000LL);
    for (int a = 1; a < c; ++a) {
        const double key = v[a];
        int b = a - 1;
        while (b >= 0 && rtn_nan_last_less(key, v[b])) {
            v[b + 1] = v[b];
            --b;
        }
        v[b + 1] = key;
    }
    return (v[(c - 1) / 2] + v[c / 2]) * 0.5;
}

struct RtnTable {
    const double* lambda_nodes;  // (n_lambda,), electron, strictly increasing
    int n_lambda;
    const double* q_lo;          // (n_lambda, n_sigma), electron, row-major
    const double* q_hi;
    int n_sigma;
};

struct RtnQuantiles { double lo, hi; bool in_table; };

// ThresholdTable.lookup: i = clip(searchsorted(nodes, lam, 'right') - 1, 0, n - 2), bilinear in (f, w).
__device__ RtnQuantiles rtn_lookup(const RtnTable& t, double lam, int j, double w) {
    const double* nodes = t.lambda_nodes;
    int a = 0, b = t.n_lambda;  // first node with lam < node; NaN compares false and goes last, as in NumPy
    while (a < b) {
        const int m = (a + b) >> 1;
        if (lam < nodes[m]) b = m; else a = m + 1;
    }
    int i = a - 1;
    i = i < 0 ? 0 : (i > t.n_lambda - 2 ? t.n_lambda - 2 : i);
    const double f = (lam - nodes[i]) / (nodes[i + 1] - nodes[i]);
    const double one_f = 1.0 - f;
    const double one_w = 1.0 - w;
    const rtn_i64 c0 = (rtn_i64)i * t.n_sigma + j;
    const rtn_i64 c1 = c0 + t.n_sigma;
    RtnQuantiles q;
    const double lo0 = t.q_lo[c0] * one_w + t.q_lo[c0 + 1] * w;
    const double lo1 = t.q_lo[c1] * one_w + t.q_lo[c1 + 1] * w;
    q.lo = lo0 * one_f + lo1 * f;
    const double hi0 = t.q_hi[c0] * one_w + t.q_hi[c0 + 1] * w;
    const double hi1 = t.q_hi[c1] * one_w + t.q_hi[c1 + 1] * w;
    q.hi = hi0 * one_f + hi1 * f;
    q.in_table = lam <= nodes[t.n_lambda - 1];
    return q;
}

// Per-pixel parameters (PixelParams), all of shape (n,).
struct RtnPixels {
    const rtn_i64* index;            // flat C-order index in the frame
    const double* mu_adu;
    const double* delta_e;
    const rtn_i64* delta_adu_int;
    const double* delta_adu_float;
    const int* sigma_j;
    const double* sigma_w;
    const unsigned char* sigma_ok;
};

// numpy_backend.decide for pixel k.
__device__ int rtn_decide(const RtnPixels& p, const RtnTable& t, rtn_i64 k, double x, double lam, double g) {
    const double s = (x - p.mu_adu[k]) * g;
    const RtnQuantiles q = rtn_lookup(t, lam, p.sigma_j[k], p.sigma_w[k]);
    const double d = p.delta_e[k];
    const double lo_cap = q.hi - d;
    const double hi_floor = q.lo + d;
    const bool low = (q.lo - d < s) && (s < (lo_cap < q.lo ? lo_cap : q.lo)) && (lam - q.lo < d);
    const bool high = ((hi_floor > q.hi ? hi_floor : q.hi) < s) && (s < q.hi + d) && (q.hi - lam < d);
    int state = low ? RTN_STATE_LOW : (high ? RTN_STATE_HIGH : RTN_STATE_NONE);
    if (!(q.in_table && p.sigma_ok[k])) state = RTN_STATE_OUT_OF_TABLE;
    return state;
}

#include "rtn_two_trap.cuh"

// The two-trap pixels' parameters (PixelParams.two_trap), all of shape (n_two,) unless said.
struct RtnTwoTrap {
    rtn_i64 n_two;                   // 0: no two-trap pixel, tt_slot is not read
    const int* tt_slot;              // (n,): position among the two-trap pixels, -1 for a one-trap pixel
    const double* delta2_e;          // trap 2 (trap 1 is the pixel's delta_e)
    const rtn_i64* delta2_adu_int;
    const double* delta2_adu_float;
    const double* tt_sigma_e;
    const double* tt_log_prior;      // (n_two, 8)
    const double* tt_log_prior_centre;
};

// two_trap.decide_two_trap for RTN pixel k, two-trap slot `slot` (beat_centre: the temporal references'
// centre rule): its level code; *state gets the STATE_* code of numpy_backend.two_trap_states (LOW: the
// level's offset i D1 + j D2 is negative, corrected upward).
__device__ int rtn_two_trap_level(const RtnPixels& p, const RtnTwoTrap& w, const RtnTable& t, rtn_i64 k, int slot,
                                  double x, double lam, double g, bool beat_centre, int* state) {
    const double s = (x - p.mu_adu[k]) * g;
    const RtnQuantiles q = rtn_lookup(t, lam, p.sigma_j[k], p.sigma_w[k]);
    const double d1 = p.delta_e[k];
    const double d2 = w.delta2_e[slot];
    const bool in_table = q.in_table && p.sigma_ok[k];
    const double* log_prior = w.tt_log_prior + (rtn_i64)RTN_TT_LEVELS * slot;
    const double sigma = w.tt_sigma_e[slot];
    const int level = beat_centre ? rtn_two_trap_decide_temporal(s, lam, q.lo, q.hi, in_table, d1, d2, sigma, log_prior,
                                                                 w.tt_log_prior_centre[slot])
                                  : rtn_two_trap_decide(s, lam, q.lo, q.hi, in_table, d1, d2, sigma, log_prior);
    if (level >= 1 && level <= RTN_TT_LEVELS) {
        const double off = (double)rtn_tt_i(level - 1) * d1 + (double)rtn_tt_j(level - 1) * d2;
        *state = off < 0.0 ? RTN_STATE_LOW : RTN_STATE_HIGH;
    } else {
        *state = level == RTN_TT_OUT_OF_TABLE ? RTN_STATE_OUT_OF_TABLE : RTN_STATE_NONE;
    }
    return level;
}

// The temporal references' two-trap rule (NumpyBackend._two_trap_reference): lambda and de-jumped spread
// by rtn_two_trap_temporal_lambda from the W window values (reloaded in window order: the median's sort has
// reordered v) and `median` (adu, the window median's), the veto on that spread, then the decision with the
// centre rule at that lambda. A NaN lambda `lam` (the window median's) stays NaN, and nothing is vetoed.
// Returns the level code (RTN_TT_NONE where vetoed); *state gets the STATE_* code.
template <typename T, int W>
__device__ int rtn_two_trap_temporal(const T* ring, const int* window_slots, int window, rtn_i64 n, rtn_i64 k,
                                     int slot, double median, double lam, double g, double k_var, double rn2_e2,
                                     const RtnPixels& p, const RtnTwoTrap& w, const RtnTable& t, double x,
                                     int* state) {
    double lam2 = lam;
    bool veto = false;
    if (lam == lam) {
        double u[W > 0 ? W : RTN_MAX_VALUES];
        for (int r = 0; r < window; ++r) u[r] = rtn_to_double<T>(ring[(rtn_i64)window_slots[r] * n + k]);
        double spread_e = 0.0;
        lam2 = rtn_two_trap_temporal_lambda(u, window, median, p.mu_adu[k], g, p.delta_e[k], w.delta2_e[slot],
                                            w.tt_sigma_e[slot], w.tt_log_prior + (rtn_i64)RTN_TT_LEVELS * slot,
                                            w.tt_log_prior_centre[slot], &spread_e);
        veto = spread_e > k_var * sqrt(lam2 + rn2_e2);
    }
    const int level = rtn_two_trap_level(p, w, t, k, slot, x, lam2, g, true, state);
    if (!veto) return level;
    *state = RTN_STATE_VETO;
    return RTN_TT_NONE;
}

// two_trap.apply_two_trap for one pixel at level `level` (1..8).
template <typename T>
__device__ T rtn_two_trap_corrected(T x, int level, rtn_i64 d1_int, rtn_i64 d2_int, double d1_float, double d2_float) {
    if constexpr (RtnRange<T>::integer) {
        return (T)rtn_two_trap_corrected_int((rtn_i64)x, level, d1_int, d2_int, RtnRange<T>::lo, RtnRange<T>::hi);
    } else {
        return rtn_from_double<T>(rtn_two_trap_corrected_float(rtn_to_double<T>(x), level, d1_float, d2_float));
    }
}

// numpy_backend.apply_corrections for one pixel: integer frames saturate, float frames add in float64.
template <typename T>
__device__ T rtn_corrected(T x, bool low, rtn_i64 d_int, double d_float) {
    if constexpr (RtnRange<T>::integer) {
        rtn_i64 v = (rtn_i64)x + (low ? d_int : -d_int);
        v = v < RtnRange<T>::lo ? RtnRange<T>::lo : (v > RtnRange<T>::hi ? RtnRange<T>::hi : v);
        return (T)v;
    } else {
        return rtn_from_double<T>(rtn_to_double<T>(x) + (low ? d_float : -d_float));
    }
}

struct RtnOutputs {
    rtn_i64* changed_index;  // (n,): flat indices of the corrected pixels, first counts[5] valid
    void* changed_value;     // (n,), frame dtype: their new values
    unsigned* counts;        // (6,): per-frame counts by decision code, [5] = number corrected; zeroed by host
    unsigned* n_lo;          // (n,) per-pixel counters over the series (32 bits: half the traffic of 64)
    unsigned* n_hi;
    unsigned* n_veto;
    unsigned* n_frames;
    unsigned* n_level;       // (n_two, 8): the two-trap pixels' corrections per level over the series
};

// Count, correct and record pixel k (every lane of the warp calls this; lanes past the end, and in the main
// kernels two-trap pixels, with valid = false): `corrected` is its new value where state is LOW or HIGH,
// `level_count` (two-trap pixels) the per-level counter to raise then, or nullptr.
template <typename T>
__device__ void rtn_finish(const RtnPixels& p, const RtnOutputs& o, rtn_i64 k, bool valid, int state, T corrected,
                           unsigned* level_count) {
    const int code = valid ? state : -1;
    const unsigned peers = __match_any_sync(RTN_FULL_MASK, code);
    if (code > RTN_STATE_NONE && rtn_lane() == (unsigned)(__ffs(peers) - 1)) {
        atomicAdd(&o.counts[code], (unsigned)__popc(peers));
    }
    const bool changed = code == RTN_STATE_LOW || code == RTN_STATE_HIGH;
    const unsigned movers = __ballot_sync(RTN_FULL_MASK, changed);
    unsigned base = 0;
    if (movers != 0u) {  // warp-uniform branch
        const int leader = __ffs(movers) - 1;
        if (rtn_lane() == (unsigned)leader) base = atomicAdd(&o.counts[RTN_COUNT_CHANGED], (unsigned)__popc(movers));
        base = __shfl_sync(RTN_FULL_MASK, base, leader);
    }
    if (changed) {
        const unsigned pos = base + (unsigned)__popc(movers & ((1u << rtn_lane()) - 1u));
        o.changed_index[pos] = p.index[k];
        static_cast<T*>(o.changed_value)[pos] = corrected;
        if (level_count != nullptr) *level_count += 1u;
    }
    if (valid) {
        o.n_lo[k] += code == RTN_STATE_LOW ? 1u : 0u;
        o.n_hi[k] += code == RTN_STATE_HIGH ? 1u : 0u;
        o.n_veto[k] += code == RTN_STATE_VETO ? 1u : 0u;
        o.n_frames[k] += 1u;
    }
}

// The one-trap correction of pixel k in state `state` (x itself unless LOW or HIGH).
template <typename T>
__device__ __forceinline__ T rtn_one_trap_value(const RtnPixels& p, rtn_i64 k, int state, T x) {
    const bool changed = state == RTN_STATE_LOW || state == RTN_STATE_HIGH;
    return changed ? rtn_corrected<T>(x, state == RTN_STATE_LOW, p.delta_adu_int[k], p.delta_adu_float[k]) : x;
}

// Pixel k is left to the two-trap kernels (tt_slot[k] >= 0; not read without two-trap pixels).
__device__ __forceinline__ bool rtn_is_two_trap(const RtnTwoTrap& w, rtn_i64 k) {
    return w.n_two > 0 && w.tt_slot[k] >= 0;
}

// ---- temporal reference (centred and causal) ------------------------------------------------------------

// ring: (n_slots, n) RTN pixel values of the last frames; window_slots: the W reference slots in time order.
// W > 0: the window fixed at compile time (the host passes window == W); W == 0: ``window`` at run time.

// Pixel k's temporal reference: lambda (electron) of the window median, *median (adu) and *spread_e (the
// window's standard deviation, electron, for the veto); v (W values) is left sorted.
template <typename T, int W>
__device__ __forceinline__ double rtn_temporal_reference(const T* ring, const int* window_slots, int window, rtn_i64 n,
                                                         rtn_i64 k, double g, double mu, double* v, double* median,
                                                         double* spread_e) {
    v[0] = rtn_to_double<T>(ring[(rtn_i64)window_slots[0] * n + k]);
    double acc = v[0];
RTN_UNROLL
    for (int r = 1; r < window; ++r) {
        v[r] = rtn_to_double<T>(ring[(rtn_i64)window_slots[r] * n + k]);
        acc = acc + v[r];
    }
    const double mean = acc / (double)window;
    double dev = v[0] - mean;
    acc = dev * dev;
RTN_UNROLL
    for (int r = 1; r < window; ++r) {
        dev = v[r] - mean;
        acc = acc + dev * dev;
    }
    *spread_e = sqrt(acc / (double)window) * g;
    *median = rtn_window_median<W>(v, window);
    return rtn_clamp_lambda((*median - mu) * g);
}

template <typename T, int W>
__device__ void rtn_temporal_body(const T* ring, const int* window_slots, int window_run, int slot, rtn_i64 n,
                                  double g, double k_var, const double* rn2_e2, const RtnPixels& p,
                                  const RtnTwoTrap& w, const RtnTable& t, const RtnOutputs& o) {
    const rtn_i64 stride = (rtn_i64)blockDim.x * gridDim.x;
    const int window = W > 0 ? W : window_run;
    for (rtn_i64 first = (rtn_i64)blockIdx.x * blockDim.x; first < n; first += stride) {
        const rtn_i64 k = first + threadIdx.x;
        const bool valid = k < n && !rtn_is_two_trap(w, k);
        int state = RTN_STATE_NONE;
        T x = 0;
        if (valid) {
            double v[W > 0 ? W : RTN_MAX_VALUES];
            double median, spread_e;
            const double lam = rtn_temporal_reference<T, W>(ring, window_slots, window, n, k, g, p.mu_adu[k], v,
                                                            &median, &spread_e);
            x = ring[(rtn_i64)slot * n + k];
            state = rtn_decide(p, t, k, rtn_to_double<T>(x), lam, g);
            if (spread_e > k_var * sqrt(lam + rn2_e2[k])) state = RTN_STATE_VETO;
        }
        rtn_finish<T>(p, o, k, valid, state, rtn_one_trap_value<T>(p, k, valid ? state : RTN_STATE_NONE, x), nullptr);
    }
}

// The two-trap pixels (tt_pos: their RTN pixel positions, n_two of them) with the temporal rule.
template <typename T, int W>
__device__ void rtn_temporal_two_trap_body(const T* ring, const int* window_slots, int window_run, int slot, rtn_i64 n,
                                           double g, double k_var, const double* rn2_e2, const RtnPixels& p,
                                           const RtnTwoTrap& w, const rtn_i64* tt_pos, const RtnTable& t,
                                           const RtnOutputs& o) {
    const rtn_i64 stride = (rtn_i64)blockDim.x * gridDim.x;
    const int window = W > 0 ? W : window_run;
    for (rtn_i64 first = (rtn_i64)blockIdx.x * blockDim.x; first < w.n_two; first += stride) {
        const rtn_i64 j = first + threadIdx.x;
        const bool valid = j < w.n_two;
        const rtn_i64 k = valid ? tt_pos[j] : 0;
        int state = RTN_STATE_NONE;
        T value = 0;
        unsigned* level_count = nullptr;
        if (valid) {
            double v[W > 0 ? W : RTN_MAX_VALUES];
            double median, spread_e;
            const double lam = rtn_temporal_reference<T, W>(ring, window_slots, window, n, k, g, p.mu_adu[k], v,
                                                            &median, &spread_e);
            const T x = ring[(rtn_i64)slot * n + k];
            const int level = rtn_two_trap_temporal<T, W>(ring, window_slots, window, n, k, (int)j, median, lam, g,
                                                          k_var, rn2_e2[k], p, w, t, rtn_to_double<T>(x), &state);
            value = rtn_two_trap_corrected<T>(x, level, p.delta_adu_int[k], w.delta2_adu_int[j], p.delta_adu_float[k],
                                              w.delta2_adu_float[j]);
            if (level >= 1 && level <= RTN_TT_LEVELS) level_count = &o.n_level[(rtn_i64)RTN_TT_LEVELS * j + level - 1];
        }
        rtn_finish<T>(p, o, k, valid, state, value, level_count);
    }
}

// ---- spatial reference ----------------------------------------------------------------------------------

// frame: (ny, nx) whole frame; meanbias_adu: (ny * nx,). Neighbours in a size x size box, centre excluded,
// only those inside the frame (pixels.neighbour_indices). Pixel `centre`'s lambda (electron); v: room for
// RTN_MAX_VALUES values.
template <typename T>
__device__ double rtn_spatial_reference(const T* frame, const double* meanbias_adu, int ny, int nx, int half,
                                        rtn_i64 centre, double g, double* v) {
    const rtn_i64 y0 = centre / nx;
    const rtn_i64 x0 = centre - y0 * nx;
    int c = 0;
    for (int dy = -half; dy <= half; ++dy) {
        const rtn_i64 yy = y0 + dy;
        if (yy < 0 || yy >= ny) continue;
        for (int dx = -half; dx <= half; ++dx) {
            const rtn_i64 xx = x0 + dx;
            if ((dy == 0 && dx == 0) || xx < 0 || xx >= nx) continue;
            const rtn_i64 q = yy * nx + xx;
            v[c++] = rtn_to_double<T>(frame[q]) - meanbias_adu[q];
        }
    }
    return rtn_clamp_lambda(rtn_neighbour_median(v, c) * g);
}

template <typename T>
__device__ void rtn_spatial_body(const T* frame, const double* meanbias_adu, int ny, int nx, int size,
                                 rtn_i64 n, double g, const RtnPixels& p, const RtnTwoTrap& w,
                                 const RtnTable& t, const RtnOutputs& o) {
    const rtn_i64 stride = (rtn_i64)blockDim.x * gridDim.x;
    const int half = size / 2;
    for (rtn_i64 first = (rtn_i64)blockIdx.x * blockDim.x; first < n; first += stride) {
        const rtn_i64 k = first + threadIdx.x;
        const bool valid = k < n && !rtn_is_two_trap(w, k);
        int state = RTN_STATE_NONE;
        T x = 0;
        if (valid) {
            const rtn_i64 centre = p.index[k];
            double v[RTN_MAX_VALUES];
            const double lam = rtn_spatial_reference<T>(frame, meanbias_adu, ny, nx, half, centre, g, v);
            x = frame[centre];
            state = rtn_decide(p, t, k, rtn_to_double<T>(x), lam, g);
        }
        rtn_finish<T>(p, o, k, valid, state, rtn_one_trap_value<T>(p, k, valid ? state : RTN_STATE_NONE, x), nullptr);
    }
}

// The two-trap pixels (tt_pos: their RTN pixel positions) at the neighbour median's lambda.
template <typename T>
__device__ void rtn_spatial_two_trap_body(const T* frame, const double* meanbias_adu, int ny, int nx, int size,
                                          rtn_i64 /* n: the launch covers n_two */, double g, const RtnPixels& p, const RtnTwoTrap& w,
                                          const rtn_i64* tt_pos, const RtnTable& t, const RtnOutputs& o) {
    const rtn_i64 stride = (rtn_i64)blockDim.x * gridDim.x;
    const int half = size / 2;
    for (rtn_i64 first = (rtn_i64)blockIdx.x * blockDim.x; first < w.n_two; first += stride) {
        const rtn_i64 j = first + threadIdx.x;
        const bool valid = j < w.n_two;
        const rtn_i64 k = valid ? tt_pos[j] : 0;
        int state = RTN_STATE_NONE;
        T value = 0;
        unsigned* level_count = nullptr;
        if (valid) {
            const rtn_i64 centre = p.index[k];
            double v[RTN_MAX_VALUES];
            const double lam = rtn_spatial_reference<T>(frame, meanbias_adu, ny, nx, half, centre, g, v);
            const T x = frame[centre];
            const int level = rtn_two_trap_level(p, w, t, k, (int)j, rtn_to_double<T>(x), lam, g, false, &state);
            value = rtn_two_trap_corrected<T>(x, level, p.delta_adu_int[k], w.delta2_adu_int[j], p.delta_adu_float[k],
                                              w.delta2_adu_float[j]);
            if (level >= 1 && level <= RTN_TT_LEVELS) level_count = &o.n_level[(rtn_i64)RTN_TT_LEVELS * j + level - 1];
        }
        rtn_finish<T>(p, o, k, valid, state, value, level_count);
    }
}

// ---- extern "C" wrappers, one per kernel and frame dtype ------------------------------------------------

#define RTN_PIXEL_PARAMS                                                                                     \
    const rtn_i64 *index, const double *mu_adu, const double *delta_e, const rtn_i64 *delta_adu_int,         \
        const double *delta_adu_float, const int *sigma_j, const double *sigma_w,                            \
        const unsigned char *sigma_ok
#define RTN_TWO_TRAP_PARAMS                                                                                  \
    rtn_i64 n_two, const int *tt_slot, const double *delta2_e, const rtn_i64 *delta2_adu_int,               \
        const double *delta2_adu_float, const double *tt_sigma_e, const double *tt_log_prior,                \
        const double *tt_log_prior_centre
#define RTN_TABLE_PARAMS \
    const double *lambda_nodes, int n_lambda, const double *q_lo, const double *q_hi, int n_sigma
#define RTN_OUTPUT_PARAMS                                                                                    \
    rtn_i64 *changed_index, void *changed_value, unsigned *counts, unsigned *n_lo, unsigned *n_hi,           \
        unsigned *n_veto, unsigned *n_frames, unsigned *n_level
#define RTN_STRUCTS                                                                                          \
    const RtnPixels p = {index, mu_adu, delta_e, delta_adu_int, delta_adu_float, sigma_j, sigma_w, sigma_ok}; \
    const RtnTwoTrap w = {n_two, tt_slot, delta2_e, delta2_adu_int, delta2_adu_float, tt_sigma_e,           \
                          tt_log_prior, tt_log_prior_centre};                                                \
    const RtnTable t = {lambda_nodes, n_lambda, q_lo, q_hi, n_sigma};                                        \
    const RtnOutputs o = {changed_index, changed_value, counts, n_lo, n_hi, n_veto, n_frames, n_level};

#define RTN_WRAPPERS(SUFFIX, T)                                                                              \
    extern "C" __global__ void rtn_temporal_##SUFFIX(                                                        \
        const T *ring, const int *window_slots, int window, int slot, rtn_i64 n, double gain, double k_var,  \
        const double *rn2_e2, RTN_PIXEL_PARAMS, RTN_TWO_TRAP_PARAMS, RTN_TABLE_PARAMS, RTN_OUTPUT_PARAMS) {  \
        RTN_STRUCTS                                                                                          \
        rtn_temporal_body<T, RTN_WINDOW>(ring, window_slots, window, slot, n, gain, k_var, rn2_e2, p, w, t, o); \
    }                                                                                                        \
    extern "C" __global__ void rtn_spatial_##SUFFIX(                                                         \
        const T *frame, const double *meanbias_adu, int ny, int nx, int size, rtn_i64 n, double gain,        \
        RTN_PIXEL_PARAMS, RTN_TWO_TRAP_PARAMS, RTN_TABLE_PARAMS, RTN_OUTPUT_PARAMS) {                        \
        RTN_STRUCTS                                                                                          \
        rtn_spatial_body<T>(frame, meanbias_adu, ny, nx, size, n, gain, p, w, t, o);                         \
    }                                                                                                        \
    extern "C" __global__ void rtn_temporal_two_trap_##SUFFIX(                                               \
        const T *ring, const int *window_slots, int window, int slot, rtn_i64 n, double gain, double k_var,  \
        const double *rn2_e2, RTN_PIXEL_PARAMS, RTN_TWO_TRAP_PARAMS, RTN_TABLE_PARAMS, RTN_OUTPUT_PARAMS,    \
        const rtn_i64 *tt_pos) {                                                                             \
        RTN_STRUCTS                                                                                          \
        rtn_temporal_two_trap_body<T, RTN_WINDOW>(ring, window_slots, window, slot, n, gain, k_var, rn2_e2, p, w, \
                                                  tt_pos, t, o);                                             \
    }                                                                                                        \
    extern "C" __global__ void rtn_spatial_two_trap_##SUFFIX(                                                \
        const T *frame, const double *meanbias_adu, int ny, int nx, int size, rtn_i64 n, double gain,        \
        RTN_PIXEL_PARAMS, RTN_TWO_TRAP_PARAMS, RTN_TABLE_PARAMS, RTN_OUTPUT_PARAMS, const rtn_i64 *tt_pos) { \
        RTN_STRUCTS                                                                                          \
        rtn_spatial_two_trap_body<T>(frame, meanbias_adu, ny, nx, size, n, gain, p, w, tt_pos, t, o);        \
    }

RTN_WRAPPERS(u8, unsigned char)
RTN_WRAPPERS(u16, unsigned short)
RTN_WRAPPERS(i16, short)
RTN_WRAPPERS(u32, unsigned int)
RTN_WRAPPERS(i32, int)
RTN_WRAPPERS(f32, float)
RTN_WRAPPERS(f64, double)
