/*
 * quantgraph native integer kernels: C99, optional OpenMP, no dependency on PyTorch.
 *
 * Exported entry points (all return 0 on success, QG_EBADARG or QG_ENOMEM on failure):
 *
 *   csr_spmm_i8 / csr_spmm_i4 / csr_spmm_i2   CSR aggregation into int32:
 *       acc[i, f] = sum_{e in row i} (w[e] - zw) * (x[indices[e], f] - zx)     (w absent: weight 1)
 *   csr_spmm_requant                         the same for any width, requantized to int8 in the row loop
 *   csr_spmm_msg / csr_spmm_msg_requant      the same with every message quantized before the sum:
 *       acc[i, f] = sum_{e in row i} (clamp(nearbyint(float64(p[e, f]) * m_msg) + z_msg, qmin_msg, qmax_msg) - z_msg)
 *       with p[e, f] = (w[e] - zw) * (x[indices[e], f] - zx), exact while |p| < 2**53; optionally
 *       requantized to int8 as above (no E x F intermediate)
 *   requantize_i32                           out = clamp(nearbyint(acc * m) + z, qmin, qmax)
 *   requantize_affine                        the same of relu?(in - zin + bias[f]), in int8 or int32
 *   quantize_f32                             out = clamp(nearbyintf(x / s) + z, qmin, qmax), float32
 *   pack_i8                                  int8 rows -> packed 4/2-bit feature rows
 *   gemm_i8_pack / gemm_i8                   int8 x int8 -> int32 matmul with zero points:
 *       C[m, n] = sum_k (A[m, k] - za) * (B[k, n] - zb[n]) + bias[n]
 *   csr_spmm_mixed_f32                       float32 CSR aggregation of dequantized node rows stored at mixed
 *       widths (A2Q: rows grouped by width 8/4/2/0, each group packed at its width, one scale per row)
 *   csr_build                                CSR from an edge list by a stable counting sort on the target
 *   qg_info                                  ABI version and build features
 *
 * Conventions
 *   - CSR: indptr int64 [n_rows + 1]; indices int32 or int64 [E] (idx64 = 0 / 1) with values in
 *     [0, n_src); rows are aggregation targets, indices their sources.
 *   - Features: row-major, x_stride bytes per row. 8 bits: int8 values. 4 and 2 bits: signed two's
 *     complement fields packed little-end first (feature 2k in the low nibble of byte k; feature 4k + j in
 *     bits 2j..2j+1), each row padded to whole bytes. Pad fields are ignored.
 *   - Edge weights: NULL, int8 (w_bytes = 1) or int16 (w_bytes = 2), CSR order, minus zero point zw.
 *   - Integer arithmetic is modulo 2**32 (unsigned): a result is exact whenever its true value fits in
 *     int32, which the compiler's range analysis guarantees for the graphs it lowers.
 *   - Results never depend on the thread count: every output row is computed by one thread, in edge order.
 *   - threads <= 0: OpenMP's default (OMP_NUM_THREADS or all cores).
 */
#define _POSIX_C_SOURCE 200809L

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define QG_VNNI 1
#else
#define QG_VNNI 0
#endif
/* byte table look-ups of the message quantizer: vpshufb (4/2 bits), vpermi2b (8 bits) */
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define QG_AVX512BW 1
#else
#define QG_AVX512BW 0
#endif
#if QG_AVX512BW && defined(__AVX512VBMI__)
#define QG_VBMI 1
#else
#define QG_VBMI 0
#endif

#if defined(__GNUC__)
#define QG_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)
#else
#define QG_PREFETCH(p) ((void)0)
#endif

/* The lane arrays of one row never alias the feature rows: no run-time alias checks (they also block
 * vectorizing short rows with the epilogue's narrower vectors). */
#if defined(__GNUC__)
#define QG_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define QG_ALWAYS_INLINE inline
#endif

#if defined(__clang__)
#define QG_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define QG_UNROLL _Pragma("GCC unroll 32")
#else
#define QG_UNROLL
#endif

#if defined(__clang__)
#define QG_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define QG_IVDEP _Pragma("GCC ivdep")
#else
#define QG_IVDEP
#endif

#define QG_ABI_VERSION 4
#define QG_OK 0
#define QG_EBADARG (-1)
#define QG_ENOMEM (-2)
#define QG_ENAN (-3) /* a NaN input: its element of the output is unspecified, the others are written */

/* scaling modes of requantize parameters */
#define QG_PER_TENSOR 0
#define QG_PER_ROW 1
#define QG_PER_COL 2

#ifndef QG_PREFETCH_DIST
#define QG_PREFETCH_DIST 32 /* edges ahead */
#endif

/* ------------------------------------------------------------------------------------------------ */
/* small helpers                                                                                    */

static void *qg_alloc(size_t bytes) {
    void *p = NULL;
    if (bytes == 0) bytes = 64;
    bytes = (bytes + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, bytes) != 0) return NULL;
    return p;
}

static int qg_threads(int threads) {
#ifdef _OPENMP
    return threads > 0 ? threads : omp_get_max_threads();
#else
    (void)threads;
    return 1;
#endif
}

/* ------------------------------------------------------------------------------------------------ */
/* requantization of one row                                                                        */

typedef struct {
    const double *mult; /* [1], [rows] or [cols] */
    int mult_mode;
    const int32_t *zp; /* [1], [rows] or [cols] */
    int zp_mode;
    int32_t qmin, qmax;
    int relu;
} qg_requant;

/* out[f] = clamp(nearbyint(acc[f] * m) + z, lo, hi) with torch's order: min with hi first, then max. */
static void requant_row_i8(const int32_t *restrict acc, int64_t n, int64_t row, const qg_requant *rq,
                           int8_t *restrict out) {
    const double hi = (double)rq->qmax;
    const double qmin = (double)rq->qmin;
    if (rq->mult_mode != QG_PER_COL && rq->zp_mode != QG_PER_COL) {
        const double m = rq->mult[rq->mult_mode == QG_PER_ROW ? row : 0];
        const double z = (double)rq->zp[rq->zp_mode == QG_PER_ROW ? row : 0];
        const double lo = rq->relu && z > qmin ? z : qmin;
        for (int64_t f = 0; f < n; ++f) {
            double v = nearbyint((double)acc[f] * m) + z;
            v = v > hi ? hi : v;
            v = v < lo ? lo : v;
            out[f] = (int8_t)(int32_t)v;
        }
        return;
    }
    for (int64_t f = 0; f < n; ++f) {
        const double m = rq->mult[rq->mult_mode == QG_PER_COL ? f : (rq->mult_mode == QG_PER_ROW ? row : 0)];
        const double z = (double)rq->zp[rq->zp_mode == QG_PER_COL ? f : (rq->zp_mode == QG_PER_ROW ? row : 0)];
        const double lo = rq->relu && z > qmin ? z : qmin;
        double v = nearbyint((double)acc[f] * m) + z;
        v = v > hi ? hi : v;
        v = v < lo ? lo : v;
        out[f] = (int8_t)(int32_t)v;
    }
}

static void requant_row_i32(const int32_t *restrict acc, int64_t n, int64_t row, const qg_requant *rq,
                            int32_t *restrict out) {
    const double hi = (double)rq->qmax;
    const double qmin = (double)rq->qmin;
    for (int64_t f = 0; f < n; ++f) {
        const double m = rq->mult[rq->mult_mode == QG_PER_COL ? f : (rq->mult_mode == QG_PER_ROW ? row : 0)];
        const double z = (double)rq->zp[rq->zp_mode == QG_PER_COL ? f : (rq->zp_mode == QG_PER_ROW ? row : 0)];
        const double lo = rq->relu && z > qmin ? z : qmin;
        double v = nearbyint((double)acc[f] * m) + z;
        v = v > hi ? hi : v;
        v = v < lo ? lo : v;
        out[f] = (int32_t)v;
    }
}


/* ------------------------------------------------------------------------------------------------ */
/* fused epilogues: requantize chains, packing and dequantize in the producing kernel                */

/*
 * A kernel's int32 output row goes through n_stages requantizes before it is stored:
 *     stage s:  t = requantize_s(relu_in_s ? max(t - zin_s + bias_s, 0) : t - zin_s + bias_s)
 * (t = acc at stage 0) with requantize(v) = clamp(nearbyint(v * m) + z, qmin, qmax) (relu_out: lower clamp at z),
 * the same arithmetic as the separate requantize / requantize_affine kernels, so the integers are those of the
 * unfused steps. The last stage's integers are stored as int8 (out_kind 8), packed 4/2-bit fields (4, 2; the
 * values must lie in that range) or dequantized to float32 (32): (float)(t - dq_zero) * dq_scale.
 */
#define QG_MAX_STAGES 4
typedef struct {
    const double *mult;
    const int32_t *zp;
    const int32_t *bias; /* [F] or NULL (stages >= 1) */
    int32_t mult_mode, zp_mode, qmin, qmax, zin, relu_in, relu_out, pad;
} qg_stage;

typedef struct {
    int32_t n_stages;
    int32_t out_kind;
    float dq_scale;
    int32_t dq_zero;
    void *out;
    int64_t out_stride; /* bytes per output row */
    qg_stage st[QG_MAX_STAGES];
} qg_epilogue;

static int epilogue_check(const qg_epilogue *e, int64_t F) {
    if (!e || !e->out || e->n_stages < 1 || e->n_stages > QG_MAX_STAGES) return QG_EBADARG;
    const int k = e->out_kind;
    if (k != 8 && k != 4 && k != 2 && k != 32) return QG_EBADARG;
    const int64_t need = k == 32 ? 4 * F : (F * (k == 32 ? 8 : k) + 7) / 8;
    if (e->out_stride < need) return QG_EBADARG;
    for (int s = 0; s < e->n_stages; ++s) {
        const qg_stage *g = &e->st[s];
        if (!g->mult || !g->zp || g->qmin > g->qmax) return QG_EBADARG;
        if (k != 32 && s == e->n_stages - 1) {
            const int32_t lo = k == 8 ? -128 : -(1 << (k - 1)), hi = k == 8 ? 127 : (1 << (k - 1)) - 1;
            if (g->qmin < lo || g->qmax > hi) return QG_EBADARG;
        }
    }
    return QG_OK;
}

/* t[f] = clamp(nearbyint(t[f] * m) + z, qmin, qmax) in place (torch's order: min with qmax, then max). One
 * loop per parameter layout, so each vectorizes. */
#define QG_STAGE_LOOP(M, Z)                                                                                    \
    for (int64_t f = 0; f < F; ++f) {                                                                          \
        const double z_ = (Z);                                                                                 \
        double v = nearbyint((double)t[f] * (M)) + z_;                                                         \
        v = v > hi ? hi : v;                                                                                   \
        v = v < qmin ? qmin : v;                                                                               \
        if (relu) v = v < z_ ? z_ : v;                                                                         \
        t[f] = (int32_t)v;                                                                                     \
    }
static void stage_requant(int32_t *restrict t, int64_t F, int64_t row, const qg_stage *g) {
    const double hi = (double)g->qmax, qmin = (double)g->qmin;
    const int relu = g->relu_out;
    const double *restrict mp = g->mult + (g->mult_mode == QG_PER_ROW ? row : 0);
    const int32_t *restrict zp = g->zp + (g->zp_mode == QG_PER_ROW ? row : 0);
    const int mcol = g->mult_mode == QG_PER_COL, zcol = g->zp_mode == QG_PER_COL;
#if defined(__AVX512F__)
    /* 8 values per step, the row's tail masked (short rows, e.g. F = 7, never fall to scalar code).
     * roundscale with the current rounding mode and no exceptions is nearbyint. */
    const __m512d H = _mm512_set1_pd(hi), Q = _mm512_set1_pd(qmin);
    const __m512d M0 = _mm512_set1_pd(mp[0]), Z0 = _mm512_set1_pd((double)zp[0]);
    for (int64_t f = 0; f < F; f += 8) {
        const __mmask8 k = F - f >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (F - f)) - 1u);
        const __m512d v0 = _mm512_cvtepi32_pd(_mm256_maskz_loadu_epi32(k, t + f));
        const __m512d m = mcol ? _mm512_maskz_loadu_pd(k, mp + f) : M0;
        const __m512d z = zcol ? _mm512_cvtepi32_pd(_mm256_maskz_loadu_epi32(k, zp + f)) : Z0;
        __m512d v = _mm512_add_pd(_mm512_roundscale_pd(_mm512_mul_pd(v0, m), _MM_FROUND_CUR_DIRECTION | _MM_FROUND_NO_EXC), z);
        v = _mm512_min_pd(v, H);
        v = _mm512_max_pd(v, Q);
        if (relu) v = _mm512_max_pd(v, z);
        _mm256_mask_storeu_epi32(t + f, k, _mm512_cvtpd_epi32(v));
    }
    return;
#elif defined(__AVX2__)
    /* 4 values per step as above (round with the current mode, no exceptions: nearbyint), scalar tail */
    const __m256d H = _mm256_set1_pd(hi), Q = _mm256_set1_pd(qmin);
    const __m256d M0 = _mm256_set1_pd(mp[0]), Z0 = _mm256_set1_pd((double)zp[0]);
    int64_t f = 0;
    for (; f + 4 <= F; f += 4) {
        const __m256d v0 = _mm256_cvtepi32_pd(_mm_loadu_si128((const __m128i *)(t + f)));
        const __m256d m = mcol ? _mm256_loadu_pd(mp + f) : M0;
        const __m256d z = zcol ? _mm256_cvtepi32_pd(_mm_loadu_si128((const __m128i *)(zp + f))) : Z0;
        __m256d v = _mm256_add_pd(_mm256_round_pd(_mm256_mul_pd(v0, m), _MM_FROUND_CUR_DIRECTION | _MM_FROUND_NO_EXC), z);
        v = _mm256_min_pd(v, H);
        v = _mm256_max_pd(v, Q);
        if (relu) v = _mm256_max_pd(v, z);
        _mm_storeu_si128((__m128i *)(t + f), _mm256_cvtpd_epi32(v));
    }
    for (; f < F; ++f) {
        const double z_ = (double)zp[zcol ? f : 0];
        double v = nearbyint((double)t[f] * mp[mcol ? f : 0]) + z_;
        v = v > hi ? hi : v;
        v = v < qmin ? qmin : v;
        if (relu) v = v < z_ ? z_ : v;
        t[f] = (int32_t)v;
    }
    return;
#endif
    if (mcol && zcol) {
        QG_STAGE_LOOP(mp[f], (double)zp[f])
    } else if (mcol) {
        const double z = (double)zp[0];
        QG_STAGE_LOOP(mp[f], z)
    } else if (zcol) {
        const double m = mp[0];
        QG_STAGE_LOOP(m, (double)zp[f])
    } else {
        const double m = mp[0], z = (double)zp[0];
        QG_STAGE_LOOP(m, z)
    }
}
#undef QG_STAGE_LOOP

/* Store the final integers t[F] of row `row` in the epilogue's output. */
static void epilogue_store(const qg_epilogue *e, const int32_t *restrict t, int64_t F, int64_t row) {
    uint8_t *o = (uint8_t *)e->out + row * e->out_stride;
    if (e->out_kind == 8) {
        int8_t *restrict q = (int8_t *)o;
        for (int64_t f = 0; f < F; ++f) q[f] = (int8_t)t[f];
    } else if (e->out_kind == 32) {
        float *restrict y = (float *)o;
        const float s = e->dq_scale;
        const uint32_t z = (uint32_t)e->dq_zero;
        for (int64_t f = 0; f < F; ++f) y[f] = (float)(int32_t)((uint32_t)t[f] - z) * s;
    } else {
        const int bits = e->out_kind, per = 8 / bits;
        const uint32_t mask = (1u << bits) - 1u;
        const int64_t nbytes = (F + per - 1) / per, full = F / per;
        uint8_t *restrict q = o;
        if (bits == 4) {
            for (int64_t k = 0; k < full; ++k)
                q[k] = (uint8_t)(((uint32_t)t[2 * k] & mask) | (((uint32_t)t[2 * k + 1] & mask) << 4));
        } else {
            for (int64_t k = 0; k < full; ++k)
                q[k] = (uint8_t)(((uint32_t)t[4 * k] & mask) | (((uint32_t)t[4 * k + 1] & mask) << 2) |
                                 (((uint32_t)t[4 * k + 2] & mask) << 4) | (((uint32_t)t[4 * k + 3] & mask) << 6));
        }
        for (int64_t k = full; k < nbytes; ++k) {
            uint32_t b = 0;
            for (int j = 0; j < per; ++j)
                if (k * per + j < F) b |= ((uint32_t)t[k * per + j] & mask) << (j * bits);
            q[k] = (uint8_t)b;
        }
    }
}

/* The whole epilogue of one int32 row, in place in acc (which holds F int32 values). */
static void epilogue_row(const qg_epilogue *e, int32_t *restrict acc, int64_t F, int64_t row) {
    for (int s = 0; s < e->n_stages; ++s) {
        const qg_stage *g = &e->st[s];
        const uint32_t zin = (uint32_t)g->zin;
        if (!g->bias && !zin && !g->relu_in) {
            stage_requant(acc, F, row, g);
            continue;
        }
        if (g->bias) {
            const int32_t *restrict b = g->bias;
            for (int64_t f = 0; f < F; ++f) acc[f] = (int32_t)((uint32_t)acc[f] - zin + (uint32_t)b[f]);
        } else {
            for (int64_t f = 0; f < F; ++f) acc[f] = (int32_t)((uint32_t)acc[f] - zin);
        }
        if (g->relu_in)
            for (int64_t f = 0; f < F; ++f) acc[f] = acc[f] > 0 ? acc[f] : 0;
        stage_requant(acc, F, row, g);
    }
    epilogue_store(e, acc, F, row);
}

/* ------------------------------------------------------------------------------------------------ */
/* CSR aggregation                                                                                  */

/*
 * Per-edge message quantizer: each product p = (w - zw) * (x - zx) becomes
 *     q = clamp(nearbyint(float64(p) * m) + z, qmin, qmax)
 * and the row sums q - z. Computed as clamp(nearbyint(p * m), qmin - z, qmax - z), the same integer: adding the
 * integer z commutes with the clamp, and the clamped values are far below 2**53.
 */
typedef struct {
    int on;
    double m;
    int32_t z, qmin, qmax;
    double lo, hi; /* qmin - z, qmax - z */
    /* lut = 1: the rows sum byte-table values q - qmin (needs qmax - qmin <= 255) in 16-bit partial lanes;
     * lut = 0: direct float64 evaluation per product into 32-bit lanes */
    int lut;
    int64_t tab_len;      /* entries of one table: 256 (8 bits, indexed by the byte), 16 (4 bits), 4 (2 bits) */
    const uint8_t *tabs;  /* [1] (no weights) or [256] (int8 weights, indexed by the weight byte) tables, or
                           * NULL: built per edge (int16 weights, packed features) */
    int64_t S;            /* packed widths: lane stride, Fb rounded up to 64 (8 bits: unused) */
    int64_t lanes;        /* lanes of one row: 8 bits F rounded up to 64; packed (8 / bits) * S */
    double xd[256];       /* x - zx of every raw field code */
} qg_msg;

typedef struct {
    int bits;
    int64_t n_rows, n_src, F;
    const int64_t *indptr;
    const int32_t *ind32;
    const int64_t *ind64;
    const uint8_t *x;
    int64_t x_stride; /* bytes per feature row */
    int32_t zx;
    const int8_t *w8;
    const int16_t *w16;
    int32_t zw;
    int32_t *acc_out; /* int32 result [n_rows, acc_stride], or NULL */
    int64_t acc_stride;
    int8_t *q_out; /* requantized result [n_rows, q_stride], or NULL */
    int64_t q_stride;
    qg_requant rq;
    qg_msg msg; /* per-edge message quantizer (msg.on = 0: none) */
    const qg_epilogue *epi; /* fused epilogue (then acc_out and q_out are NULL), or NULL */
} spmm_args;

static inline int64_t col_at(const spmm_args *a, int64_t e) {
    return a->ind64 ? a->ind64[e] : (int64_t)a->ind32[e];
}

static inline int32_t weight_at(const spmm_args *a, int64_t e) {
    return (a->w8 ? (int32_t)a->w8[e] : (int32_t)a->w16[e]) - a->zw;
}

static inline void prefetch_row(const spmm_args *a, int64_t e, int64_t e_end) {
    if (e + QG_PREFETCH_DIST < e_end) {
        /* every cache line the row touches, also when rows are not 64-byte aligned */
        const uintptr_t p = (uintptr_t)(a->x + col_at(a, e + QG_PREFETCH_DIST) * a->x_stride);
        for (uintptr_t line = p & ~(uintptr_t)63; line < p + (uintptr_t)a->x_stride; line += 64)
            QG_PREFETCH(line);
    }
}

/* Number of lanes a row is accumulated in: one per stored field, pad fields included. */
static int64_t lanes_of(const spmm_args *a) { return a->x_stride * (8 / a->bits); }

/*
 * Unweighted rows sum the stored fields in narrow partial lanes, flushed into 32-bit lanes before they can
 * overflow: 8 bits as signed values in 16-bit lanes; 4 and 2 bits as unsigned fields (field ^ sign bit, i.e.
 * value + 8 or + 2) in 8-bit lanes. Lane layout for packed widths: lane j * Fb + k holds field j of byte k
 * (Fb = bytes per row).
 */
#define FLUSH_I8 256 /* 256 * 128 = 32768: int16 holds any sum of 256 int8 values */
#define FLUSH_I4 17  /* 17 * 15 = 255 */
#define FLUSH_I2 85  /* 85 * 3 = 255 */

/* Returns 1 when the row's sums are still in the narrow lanes of part_buf (its degree is at most one flush
 * interval, the common case), 0 when they were flushed into acc. */
static int accumulate_unweighted(const spmm_args *a, int64_t e0, int64_t e1, uint32_t *restrict acc,
                                 void *restrict part_buf) {
    const int64_t Fb = a->x_stride;
    const int64_t L = lanes_of(a);
    const int64_t e_end = a->indptr[a->n_rows];
    const int64_t F8 = a->F; /* 8 bits: only the first F bytes of a row are features */
    int64_t e = e0;
    int first = 1;
    if (a->bits == 8) {
        uint16_t *restrict part = (uint16_t *)part_buf;
        if (e0 == e1) {
            memset(part, 0, (size_t)F8 * sizeof(uint16_t));
            return 1;
        }
        while (e < e1) {
            const int64_t stop = e1 - e > FLUSH_I8 ? e + FLUSH_I8 : e1;
            memset(part, 0, (size_t)F8 * sizeof(uint16_t));
            for (; e < stop; ++e) {
                prefetch_row(a, e, e_end);
                const int8_t *restrict r = (const int8_t *)(a->x + col_at(a, e) * a->x_stride);
                QG_IVDEP
                for (int64_t f = 0; f < F8; ++f) part[f] = (uint16_t)(part[f] + (uint16_t)r[f]);
            }
            if (first && e == e1) return 1;
            if (first)
                for (int64_t f = 0; f < F8; ++f) acc[f] = (uint32_t)(int32_t)(int16_t)part[f];
            else
                for (int64_t f = 0; f < F8; ++f) acc[f] += (uint32_t)(int32_t)(int16_t)part[f];
            first = 0;
        }
        return 0;
    }
    uint8_t *restrict part = (uint8_t *)part_buf;
    const int64_t flush = a->bits == 4 ? FLUSH_I4 : FLUSH_I2;
    if (e0 == e1) {
        memset(part, 0, (size_t)L);
        return 1;
    }
    while (e < e1) {
        const int64_t stop = e1 - e > flush ? e + flush : e1;
        memset(part, 0, (size_t)L);
        if (a->bits == 4) {
            uint8_t *restrict lo = part;
            uint8_t *restrict hi = part + Fb;
            for (; e < stop; ++e) {
                prefetch_row(a, e, e_end);
                const uint8_t *restrict r = a->x + col_at(a, e) * a->x_stride;
                QG_IVDEP
                for (int64_t k = 0; k < Fb; ++k) {
                    const uint8_t b = (uint8_t)(r[k] ^ 0x88u);
                    lo[k] = (uint8_t)(lo[k] + (b & 15u));
                    hi[k] = (uint8_t)(hi[k] + (b >> 4));
                }
            }
        } else {
            uint8_t *restrict p0 = part;
            uint8_t *restrict p1 = part + Fb;
            uint8_t *restrict p2 = part + 2 * Fb;
            uint8_t *restrict p3 = part + 3 * Fb;
            for (; e < stop; ++e) {
                prefetch_row(a, e, e_end);
                const uint8_t *restrict r = a->x + col_at(a, e) * a->x_stride;
                QG_IVDEP
                for (int64_t k = 0; k < Fb; ++k) {
                    const uint8_t b = (uint8_t)(r[k] ^ 0xAAu);
                    p0[k] = (uint8_t)(p0[k] + (b & 3u));
                    p1[k] = (uint8_t)(p1[k] + ((b >> 2) & 3u));
                    p2[k] = (uint8_t)(p2[k] + ((b >> 4) & 3u));
                    p3[k] = (uint8_t)(p3[k] + (b >> 6));
                }
            }
        }
        if (first && e == e1) return 1;
        if (first)
            for (int64_t f = 0; f < L; ++f) acc[f] = (uint32_t)part[f];
        else
            for (int64_t f = 0; f < L; ++f) acc[f] += (uint32_t)part[f];
        first = 0;
    }
    return 0;
}

/* Largest |w - zw| the weight type allows. */
static int64_t weight_bound(const spmm_args *a) {
    const int64_t lo = (a->w8 ? -128 : -32768) - (int64_t)a->zw;
    const int64_t hi = (a->w8 ? 127 : 32767) - (int64_t)a->zw;
    return lo < 0 ? (-lo > hi ? -lo : hi) : hi;
}

/*
 * Weighted packed rows with small weights: w * field is exact in 16 bits, and so is the sum of `flush` of them
 * (flush * max|w| * max field <= 32767); 16-bit partial lanes are flushed into acc. Returns sum of w.
 */
static uint32_t accumulate_weighted_narrow(const spmm_args *a, int64_t e0, int64_t e1, uint32_t *restrict acc,
                                           int16_t *restrict part, int64_t flush) {
    const int64_t Fb = a->x_stride;
    const int64_t L = lanes_of(a);
    const int64_t e_end = a->indptr[a->n_rows];
    uint32_t wsum = 0;
    int first = 1;
    int64_t e = e0;
    if (e0 == e1) memset(acc, 0, (size_t)L * sizeof(uint32_t));
    while (e < e1) {
        const int64_t stop = e1 - e > flush ? e + flush : e1;
        memset(part, 0, (size_t)L * sizeof(int16_t));
        for (; e < stop; ++e) {
            prefetch_row(a, e, e_end);
            const int32_t w = weight_at(a, e);
            const int16_t w16 = (int16_t)w;
            wsum += (uint32_t)w;
            const uint8_t *restrict r = a->x + col_at(a, e) * a->x_stride;
            if (a->bits == 4) {
                int16_t *restrict lo = part;
                int16_t *restrict hi = part + Fb;
                QG_IVDEP
                for (int64_t k = 0; k < Fb; ++k) {
                    const uint8_t b = (uint8_t)(r[k] ^ 0x88u);
                    lo[k] = (int16_t)(lo[k] + (int16_t)(w16 * (int16_t)(b & 15u)));
                    hi[k] = (int16_t)(hi[k] + (int16_t)(w16 * (int16_t)(b >> 4)));
                }
            } else {
                int16_t *restrict p0 = part;
                int16_t *restrict p1 = part + Fb;
                int16_t *restrict p2 = part + 2 * Fb;
                int16_t *restrict p3 = part + 3 * Fb;
                QG_IVDEP
                for (int64_t k = 0; k < Fb; ++k) {
                    const uint8_t b = (uint8_t)(r[k] ^ 0xAAu);
                    p0[k] = (int16_t)(p0[k] + (int16_t)(w16 * (int16_t)(b & 3u)));
                    p1[k] = (int16_t)(p1[k] + (int16_t)(w16 * (int16_t)((b >> 2) & 3u)));
                    p2[k] = (int16_t)(p2[k] + (int16_t)(w16 * (int16_t)((b >> 4) & 3u)));
                    p3[k] = (int16_t)(p3[k] + (int16_t)(w16 * (int16_t)(b >> 6)));
                }
            }
        }
        if (first)
            for (int64_t f = 0; f < L; ++f) acc[f] = (uint32_t)(int32_t)part[f];
        else
            for (int64_t f = 0; f < L; ++f) acc[f] += (uint32_t)(int32_t)part[f];
        first = 0;
    }
    return wsum;
}

/* Weighted rows: 32-bit lanes, acc += w_e * stored field (same lane layout as above). Returns sum of w. */
static uint32_t accumulate_weighted(const spmm_args *a, int64_t e0, int64_t e1, uint32_t *restrict acc) {
    const int64_t Fb = a->x_stride;
    const int64_t L = lanes_of(a);
    const int64_t e_end = a->indptr[a->n_rows];
    uint32_t wsum = 0;
    memset(acc, 0, (size_t)L * sizeof(uint32_t));
    for (int64_t e = e0; e < e1; ++e) {
        prefetch_row(a, e, e_end);
        const int32_t w = weight_at(a, e);
        const uint32_t uw = (uint32_t)w;
        wsum += uw;
        const uint8_t *restrict r = a->x + col_at(a, e) * a->x_stride;
        if (a->bits == 8) {
            const int8_t *restrict s = (const int8_t *)r;
            const int64_t F = a->F;
            if (w >= -255 && w <= 255) { /* |w * x| <= 32640: exact 16-bit products */
                const int16_t w16 = (int16_t)w;
                QG_IVDEP
                for (int64_t f = 0; f < F; ++f) acc[f] += (uint32_t)(int32_t)(int16_t)(w16 * (int16_t)s[f]);
            } else {
                QG_IVDEP
                for (int64_t f = 0; f < F; ++f) acc[f] += uw * (uint32_t)(int32_t)s[f];
            }
        } else if (a->bits == 4) {
            uint32_t *restrict lo = acc;
            uint32_t *restrict hi = acc + Fb;
            QG_IVDEP
            for (int64_t k = 0; k < Fb; ++k) {
                const uint8_t b = (uint8_t)(r[k] ^ 0x88u);
                lo[k] += uw * (uint32_t)(b & 15u);
                hi[k] += uw * (uint32_t)(b >> 4);
            }
        } else {
            uint32_t *restrict p0 = acc;
            uint32_t *restrict p1 = acc + Fb;
            uint32_t *restrict p2 = acc + 2 * Fb;
            uint32_t *restrict p3 = acc + 3 * Fb;
            QG_IVDEP
            for (int64_t k = 0; k < Fb; ++k) {
                const uint8_t b = (uint8_t)(r[k] ^ 0xAAu);
                p0[k] += uw * (uint32_t)(b & 3u);
                p1[k] += uw * (uint32_t)((b >> 2) & 3u);
                p2[k] += uw * (uint32_t)((b >> 4) & 3u);
                p3[k] += uw * (uint32_t)(b >> 6);
            }
        }
    }
    return wsum;
}

#if QG_AVX512BW
/*
 * Short rows (the whole row fits in a few zmm registers): the partial lanes live in registers for the whole
 * row, loaded with one masked load per edge, no lane loop and no scalar epilogue (the auto-vectorized lane
 * loops above run their main body only for rows of at least one full vector, so e.g. 16-byte rows fell to
 * scalar code). Same arithmetic and lane layout as the loops above, so results are bit-identical.
 */
static inline __mmask64 qg_mask64(int64_t n) { return n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1); }

static QG_ALWAYS_INLINE const uint8_t *reg_row(const spmm_args *a, int64_t e, int64_t e_end) {
    if (e + QG_PREFETCH_DIST < e_end) {
        const uint8_t *p = a->x + col_at(a, e + QG_PREFETCH_DIST) * a->x_stride;
        QG_PREFETCH(p);
        QG_PREFETCH(p + a->x_stride - 1);
    }
    return a->x + col_at(a, e) * a->x_stride;
}

/* Unweighted packed rows with x_stride <= 64 (same contract as accumulate_unweighted). */
static int accumulate_unweighted_reg_packed(const spmm_args *a, int64_t e0, int64_t e1, uint32_t *restrict acc,
                                            uint8_t *restrict part) {
    const int64_t Fb = a->x_stride;
    const int64_t L = lanes_of(a);
    const int64_t e_end = a->indptr[a->n_rows];
    const __mmask64 m = qg_mask64(Fb);
    const int four = a->bits == 4;
    const int64_t flush = four ? FLUSH_I4 : FLUSH_I2;
    const __m512i X = _mm512_set1_epi8(four ? (char)0x88 : (char)0xAA);
    const __m512i M = _mm512_set1_epi8(four ? 15 : 3);
    int first = 1;
    int64_t e = e0;
    do {
        const int64_t stop = e1 - e > flush ? e + flush : e1;
        __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
        if (four) {
            for (; e < stop; ++e) {
                const __m512i b = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, reg_row(a, e, e_end)), X);
                s0 = _mm512_add_epi8(s0, _mm512_and_si512(b, M));
                s1 = _mm512_add_epi8(s1, _mm512_and_si512(_mm512_srli_epi16(b, 4), M));
            }
        } else {
            for (; e < stop; ++e) {
                const __m512i b = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, reg_row(a, e, e_end)), X);
                s0 = _mm512_add_epi8(s0, _mm512_and_si512(b, M));
                s1 = _mm512_add_epi8(s1, _mm512_and_si512(_mm512_srli_epi16(b, 2), M));
                s2 = _mm512_add_epi8(s2, _mm512_and_si512(_mm512_srli_epi16(b, 4), M));
                s3 = _mm512_add_epi8(s3, _mm512_and_si512(_mm512_srli_epi16(b, 6), M));
            }
        }
        _mm512_mask_storeu_epi8(part, m, s0);
        _mm512_mask_storeu_epi8(part + Fb, m, s1);
        if (!four) {
            _mm512_mask_storeu_epi8(part + 2 * Fb, m, s2);
            _mm512_mask_storeu_epi8(part + 3 * Fb, m, s3);
        }
        if (first && e == e1) return 1;
        if (first)
            for (int64_t f = 0; f < L; ++f) acc[f] = (uint32_t)part[f];
        else
            for (int64_t f = 0; f < L; ++f) acc[f] += (uint32_t)part[f];
        first = 0;
    } while (e < e1);
    return 0;
}

/* Unweighted int8 rows with F <= 64: signed 16-bit partial sums in two zmm (same contract). */
static int accumulate_unweighted_reg_i8(const spmm_args *a, int64_t e0, int64_t e1, uint32_t *restrict acc,
                                        uint16_t *restrict part) {
    const int64_t F = a->F;
    const int64_t e_end = a->indptr[a->n_rows];
    const __mmask64 m = qg_mask64(F);
    int first = 1;
    int64_t e = e0;
    do {
        const int64_t stop = e1 - e > FLUSH_I8 ? e + FLUSH_I8 : e1;
        __m512i s0 = _mm512_setzero_si512(), s1 = s0;
        if (F <= 32) {
            for (; e < stop; ++e) {
                const __m256i b = _mm256_maskz_loadu_epi8((__mmask32)m, reg_row(a, e, e_end));
                s0 = _mm512_add_epi16(s0, _mm512_cvtepi8_epi16(b));
            }
        } else {
            for (; e < stop; ++e) {
                const __m512i b = _mm512_maskz_loadu_epi8(m, reg_row(a, e, e_end));
                s0 = _mm512_add_epi16(s0, _mm512_cvtepi8_epi16(_mm512_castsi512_si256(b)));
                s1 = _mm512_add_epi16(s1, _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(b, 1)));
            }
        }
        _mm512_mask_storeu_epi16(part, (__mmask32)m, s0);
        if (F > 32) _mm512_mask_storeu_epi16(part + 32, (__mmask32)(m >> 32), s1);
        if (first && e == e1) return 1;
        if (first)
            for (int64_t f = 0; f < F; ++f) acc[f] = (uint32_t)(int32_t)(int16_t)part[f];
        else
            for (int64_t f = 0; f < F; ++f) acc[f] += (uint32_t)(int32_t)(int16_t)part[f];
        first = 0;
    } while (e < e1);
    return 0;
}

static QG_ALWAYS_INLINE __m512i mul16_u8(__m256i v, __m512i w) {
    return _mm512_mullo_epi16(_mm512_cvtepu8_epi16(v), w);
}

/* Weighted packed rows with x_stride <= 32, 16-bit partial lanes (same contract as accumulate_weighted_narrow). */
static uint32_t accumulate_weighted_narrow_reg(const spmm_args *a, int64_t e0, int64_t e1, uint32_t *restrict acc,
                                               int16_t *restrict part, int64_t flush) {
    const int64_t Fb = a->x_stride;
    const int64_t L = lanes_of(a);
    const int64_t e_end = a->indptr[a->n_rows];
    const __mmask32 m = (__mmask32)qg_mask64(Fb);
    const int four = a->bits == 4;
    const __m256i X = _mm256_set1_epi8(four ? (char)0x88 : (char)0xAA);
    const __m256i M = _mm256_set1_epi8(four ? 15 : 3);
    uint32_t wsum = 0;
    int first = 1;
    int64_t e = e0;
    if (e0 == e1) memset(acc, 0, (size_t)L * sizeof(uint32_t));
    while (e < e1) {
        const int64_t stop = e1 - e > flush ? e + flush : e1;
        __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
        for (; e < stop; ++e) {
            const int32_t w = weight_at(a, e);
            wsum += (uint32_t)w;
            const __m512i W = _mm512_set1_epi16((short)w);
            const __m256i b = _mm256_xor_si256(_mm256_maskz_loadu_epi8(m, reg_row(a, e, e_end)), X);
            if (four) {
                s0 = _mm512_add_epi16(s0, mul16_u8(_mm256_and_si256(b, M), W));
                s1 = _mm512_add_epi16(s1, mul16_u8(_mm256_and_si256(_mm256_srli_epi16(b, 4), M), W));
            } else {
                s0 = _mm512_add_epi16(s0, mul16_u8(_mm256_and_si256(b, M), W));
                s1 = _mm512_add_epi16(s1, mul16_u8(_mm256_and_si256(_mm256_srli_epi16(b, 2), M), W));
                s2 = _mm512_add_epi16(s2, mul16_u8(_mm256_and_si256(_mm256_srli_epi16(b, 4), M), W));
                s3 = _mm512_add_epi16(s3, mul16_u8(_mm256_and_si256(_mm256_srli_epi16(b, 6), M), W));
            }
        }
        _mm512_mask_storeu_epi16(part, m, s0);
        _mm512_mask_storeu_epi16(part + Fb, m, s1);
        if (!four) {
            _mm512_mask_storeu_epi16(part + 2 * Fb, m, s2);
            _mm512_mask_storeu_epi16(part + 3 * Fb, m, s3);
        }
        if (first)
            for (int64_t f = 0; f < L; ++f) acc[f] = (uint32_t)(int32_t)part[f];
        else
            for (int64_t f = 0; f < L; ++f) acc[f] += (uint32_t)(int32_t)part[f];
        first = 0;
    }
    return wsum;
}

/* Weighted int8 rows with F <= 64: 32-bit lanes in up to four zmm, acc += w * x mod 2**32. Returns sum of w. */
static uint32_t accumulate_weighted_reg_i8(const spmm_args *a, int64_t e0, int64_t e1, uint32_t *restrict acc) {
    const int64_t F = a->F;
    const int64_t e_end = a->indptr[a->n_rows];
    const __mmask64 m = qg_mask64(F);
    uint32_t wsum = 0;
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    if (F <= 16) {
        for (int64_t e = e0; e < e1; ++e) {
            const int32_t w = weight_at(a, e);
            wsum += (uint32_t)w;
            const __m128i b = _mm_maskz_loadu_epi8((__mmask16)m, reg_row(a, e, e_end));
            s0 = _mm512_add_epi32(s0, _mm512_mullo_epi32(_mm512_cvtepi8_epi32(b), _mm512_set1_epi32(w)));
        }
    } else {
        for (int64_t e = e0; e < e1; ++e) {
            const int32_t w = weight_at(a, e);
            wsum += (uint32_t)w;
            const __m512i W = _mm512_set1_epi32(w);
            const __m512i b = _mm512_maskz_loadu_epi8(m, reg_row(a, e, e_end));
            s0 = _mm512_add_epi32(s0, _mm512_mullo_epi32(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(b)), W));
            s1 = _mm512_add_epi32(s1, _mm512_mullo_epi32(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(b, 1)), W));
            s2 = _mm512_add_epi32(s2, _mm512_mullo_epi32(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(b, 2)), W));
            s3 = _mm512_add_epi32(s3, _mm512_mullo_epi32(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(b, 3)), W));
        }
    }
    _mm512_mask_storeu_epi32(acc, (__mmask16)m, s0);
    if (F > 16) {
        _mm512_mask_storeu_epi32(acc + 16, (__mmask16)(m >> 16), s1);
        _mm512_mask_storeu_epi32(acc + 32, (__mmask16)(m >> 32), s2);
        _mm512_mask_storeu_epi32(acc + 48, (__mmask16)(m >> 48), s3);
    }
    return wsum;
}
#define QG_REG_ROWS 1
#else
#define QG_REG_ROWS 0
#endif

#if QG_VNNI && QG_VBMI && defined(__AVX512VL__)
/*
 * Weighted short rows with int8 edge weights of zero point -128 (weights w - zw in [0, 255], GCN's stored
 * normalisation) or 0 (weights in [-128, 127]): four edges per step with one vpdpbusd per 16 lanes. The four
 * rows are interleaved byte-wise so each 32-bit lane holds one lane of the four rows; vpdpbusd adds the four
 * exact products u8 * s8 to the int32 lane, wrapping mod 2**32 like the loops above, so the lane sums equal
 * theirs bit for bit. Row lanes (L <= 64) are the int8 values (8 bits) or the unsigned fields in the lane
 * layout j * Fb + k (4/2 bits, built by vpermi2b). Weight zero point -128: u8 = weights, s8 = lanes (fields
 * <= 15 and int8 values are valid s8). Zero point 0: u8 = lanes (int8 values + 128, or the fields), s8 = weights,
 * minus 128 * sum w for int8 values.
 */
#define QG_VNNI_ROWS 1
typedef struct {
    int mode;        /* 8, 4 or 2: the row's lanes */
    int64_t Fb, L;   /* bytes and lanes of a row */
    __mmask64 m;     /* the row's bytes */
    __m512i idx01, idx0123; /* vpermi2b indices combining field vectors into the lane layout */
    __m512i M, X, S; /* field mask, field sign flip, s8 -> u8 flip (zero point 0, int8) */
    int u8w;         /* 1: weights are the u8 operand (zw = -128) */
} vnni_rows;

static int vnni_rows_ok(const spmm_args *a) {
    if (!a->w8 || (a->zw != -128 && a->zw != 0) || a->msg.on) return 0;
    /* measured (tools/agg_micro.py): faster than the register paths for int8 rows wider than 16 lanes, every
     * 4-bit row, and 2-bit rows of at most 16 lanes (wider ones pay three vpermi2b per edge) */
    if (a->bits == 8) return a->F > 16 && a->F <= 64;
    return a->bits == 4 ? lanes_of(a) <= 64 : lanes_of(a) <= 16;
}

static void vnni_rows_init(const spmm_args *a, vnni_rows *v) {
    v->mode = a->bits;
    v->Fb = a->x_stride;
    v->L = a->bits == 8 ? a->F : lanes_of(a);
    v->m = qg_mask64(a->bits == 8 ? a->F : a->x_stride);
    v->u8w = a->zw == -128;
    uint8_t i01[64], i0123[64];
    for (int l = 0; l < 64; ++l) {
        i01[l] = (uint8_t)(l < v->Fb ? l : (l < 2 * v->Fb ? 64 + l - v->Fb : 0));
        i0123[l] = (uint8_t)(l < 2 * v->Fb ? l : (l < 4 * v->Fb ? 64 + l - 2 * v->Fb : 0));
    }
    v->idx01 = _mm512_loadu_si512(i01);
    v->idx0123 = _mm512_loadu_si512(i0123);
    v->M = _mm512_set1_epi8(a->bits == 4 ? 15 : 3);
    v->X = _mm512_set1_epi8(a->bits == 4 ? (char)0x88 : (char)0xAA);
    v->S = _mm512_set1_epi8(a->bits == 8 && !v->u8w ? (char)0x80 : 0);
}

/* The lanes of the row of edge e as 64 bytes (lanes >= L zero). */
static QG_ALWAYS_INLINE __m512i vnni_lanes(const spmm_args *a, const vnni_rows *v, int64_t e, int64_t e_end) {
    const __m512i b = _mm512_maskz_loadu_epi8(v->m, reg_row(a, e, e_end));
    if (v->mode == 8) return _mm512_xor_si512(b, v->S); /* S = 0 unless zw = 0 */
    const __m512i x = _mm512_xor_si512(b, v->X);
    if (v->mode == 4)
        return _mm512_permutex2var_epi8(_mm512_and_si512(x, v->M), v->idx01,
                                        _mm512_and_si512(_mm512_srli_epi16(x, 4), v->M));
    const __m512i f01 = _mm512_permutex2var_epi8(_mm512_and_si512(x, v->M), v->idx01,
                                                 _mm512_and_si512(_mm512_srli_epi16(x, 2), v->M));
    const __m512i f23 = _mm512_permutex2var_epi8(_mm512_and_si512(_mm512_srli_epi16(x, 4), v->M), v->idx01,
                                                 _mm512_and_si512(_mm512_srli_epi16(x, 6), v->M));
    return _mm512_permutex2var_epi8(f01, v->idx0123, f23);
}

/* acc[0..L) = sum_e w_e * lane_e (mod 2**32), same values as accumulate_weighted(_narrow). Returns sum of w. */
static uint32_t accumulate_weighted_vnni(const spmm_args *a, const vnni_rows *v, int64_t e0, int64_t e1,
                                         uint32_t *restrict acc) {
    const int64_t e_end = a->indptr[a->n_rows];
    const uint8_t *w8 = (const uint8_t *)a->w8;
    const uint32_t flip = v->u8w ? 0x80808080u : 0u; /* stored - (-128) = stored ^ 0x80 as u8 */
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    uint32_t wsum = 0;
    const int wide = v->L > 16;
    for (int64_t e = e0; e < e1; e += 4) {
        const int64_t n = e1 - e < 4 ? e1 - e : 4;
        uint32_t wq;
        if (n == 4) {
            memcpy(&wq, w8 + e, 4);
            wq ^= flip;
        } else {
            wq = 0;
            for (int64_t j = 0; j < n; ++j) wq |= (uint32_t)w8[e + j] << (8 * j);
            wq ^= flip & ((1u << (8 * n)) - 1u);
        }
        const __m512i W = _mm512_set1_epi32((int)wq);
        const __m512i r0 = vnni_lanes(a, v, e, e_end);
        const __m512i r1 = n > 1 ? vnni_lanes(a, v, e + 1, e_end) : _mm512_setzero_si512();
        const __m512i r2 = n > 2 ? vnni_lanes(a, v, e + 2, e_end) : _mm512_setzero_si512();
        const __m512i r3 = n > 3 ? vnni_lanes(a, v, e + 3, e_end) : _mm512_setzero_si512();
        const __m512i a01l = _mm512_unpacklo_epi8(r0, r1), a23l = _mm512_unpacklo_epi8(r2, r3);
        const __m512i q0 = _mm512_unpacklo_epi16(a01l, a23l), q1 = _mm512_unpackhi_epi16(a01l, a23l);
        if (v->u8w) {
            s0 = _mm512_dpbusd_epi32(s0, W, q0);
            s1 = _mm512_dpbusd_epi32(s1, W, q1);
        } else {
            s0 = _mm512_dpbusd_epi32(s0, q0, W);
            s1 = _mm512_dpbusd_epi32(s1, q1, W);
        }
        if (v->L > 8 || wide) {
            const __m512i a01h = _mm512_unpackhi_epi8(r0, r1), a23h = _mm512_unpackhi_epi8(r2, r3);
            const __m512i q2 = _mm512_unpacklo_epi16(a01h, a23h), q3 = _mm512_unpackhi_epi16(a01h, a23h);
            if (v->u8w) {
                s2 = _mm512_dpbusd_epi32(s2, W, q2);
                s3 = _mm512_dpbusd_epi32(s3, W, q3);
            } else {
                s2 = _mm512_dpbusd_epi32(s2, q2, W);
                s3 = _mm512_dpbusd_epi32(s3, q3, W);
            }
        }
    }
    if (v->u8w)
        for (int64_t e = e0; e < e1; ++e) wsum += (uint32_t)(uint8_t)(w8[e] ^ 0x80u);
    else
        for (int64_t e = e0; e < e1; ++e) wsum += (uint32_t)(int32_t)a->w8[e];
    /* s_i holds, in 128-bit block k, dword j: lane 16k + 4i + j. Transpose the 4x4 blocks. */
    const __m512i t0 = _mm512_shuffle_i32x4(s0, s1, 0x44), t1 = _mm512_shuffle_i32x4(s2, s3, 0x44);
    const __m512i t2 = _mm512_shuffle_i32x4(s0, s1, 0xEE), t3 = _mm512_shuffle_i32x4(s2, s3, 0xEE);
    const __m512i o[4] = {_mm512_shuffle_i32x4(t0, t1, 0x88), _mm512_shuffle_i32x4(t0, t1, 0xDD),
                          _mm512_shuffle_i32x4(t2, t3, 0x88), _mm512_shuffle_i32x4(t2, t3, 0xDD)};
    const uint64_t lm = (uint64_t)qg_mask64(v->L);
    const __m512i corr = _mm512_set1_epi32(v->mode == 8 && !v->u8w ? (int)(128u * wsum) : 0);
    for (int k = 0; k < 4 && 16 * k < v->L; ++k)
        _mm512_mask_storeu_epi32(acc + 16 * k, (__mmask16)(lm >> (16 * k)), _mm512_sub_epi32(o[k], corr));
    return wsum;
}
#else
#define QG_VNNI_ROWS 0
#endif

#if !QG_AVX512BW && defined(__AVX2__)
/*
 * AVX2 short int8 rows (no AVX-512BW masked loads): one 16-byte load per edge, from the row itself when 16
 * bytes fit before the end of the feature array, else from a zero-padded copy. Lanes >= F are never stored.
 * Same arithmetic as accumulate_weighted / accumulate_unweighted: bit-identical results.
 */
#define QG_AVX2_ROWS 1
static QG_ALWAYS_INLINE __m128i row16(const spmm_args *a, int64_t e, int64_t e_end) {
    if (e + QG_PREFETCH_DIST < e_end) QG_PREFETCH(a->x + col_at(a, e + QG_PREFETCH_DIST) * a->x_stride);
    const int64_t off = col_at(a, e) * a->x_stride;
    if (off + 16 <= a->n_src * a->x_stride) return _mm_loadu_si128((const __m128i *)(a->x + off));
    uint8_t tmp[16] = {0};
    memcpy(tmp, a->x + off, (size_t)a->F);
    return _mm_loadu_si128((const __m128i *)tmp);
}

/* Weighted int8 rows with F <= 16: 32-bit lanes, acc += w * x mod 2**32. Returns sum of w. */
static uint32_t accumulate_weighted_avx2_i8(const spmm_args *a, int64_t e0, int64_t e1, uint32_t *restrict acc) {
    const int64_t e_end = a->indptr[a->n_rows];
    uint32_t wsum = 0;
    __m256i s0 = _mm256_setzero_si256(), s1 = s0;
    for (int64_t e = e0; e < e1; ++e) {
        const int32_t w = weight_at(a, e);
        wsum += (uint32_t)w;
        const __m256i W = _mm256_set1_epi32(w);
        const __m128i b = row16(a, e, e_end);
        s0 = _mm256_add_epi32(s0, _mm256_mullo_epi32(_mm256_cvtepi8_epi32(b), W));
        if (a->F > 8) s1 = _mm256_add_epi32(s1, _mm256_mullo_epi32(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)), W));
    }
    uint32_t lanes[16];
    _mm256_storeu_si256((__m256i *)lanes, s0);
    _mm256_storeu_si256((__m256i *)(lanes + 8), s1);
    memcpy(acc, lanes, (size_t)a->F * sizeof(uint32_t));
    return wsum;
}

/* The first 16 bytes at packed row e (only its x_stride <= 8 bytes are used): a zero-padded copy near the end. */
static QG_ALWAYS_INLINE __m128i packed16(const spmm_args *a, int64_t e, int64_t e_end) {
    if (e + QG_PREFETCH_DIST < e_end) QG_PREFETCH(a->x + col_at(a, e + QG_PREFETCH_DIST) * a->x_stride);
    const int64_t off = col_at(a, e) * a->x_stride;
    if (off + 16 <= a->n_src * a->x_stride) return _mm_loadu_si128((const __m128i *)(a->x + off));
    uint8_t tmp[16] = {0};
    memcpy(tmp, a->x + off, (size_t)a->x_stride);
    return _mm_loadu_si128((const __m128i *)tmp);
}

/*
 * Weighted packed rows of at most 16 lanes (e.g. F = 7 at 4 or 2 bits): each edge's fields are spread into byte
 * lanes in the layout of accumulate_weighted (field j of byte k in lane j * Fb + k, as value + 8 / + 2), then
 * summed as accumulate_weighted_avx2_i8 does (32-bit lanes, acc += w * lane mod 2**32): the same integers as the
 * lane loops. Returns sum of w.
 */
static uint32_t accumulate_weighted_avx2_packed(const spmm_args *a, int64_t e0, int64_t e1, uint32_t *restrict acc) {
    const int64_t Fb = a->x_stride, L = lanes_of(a);
    const int64_t e_end = a->indptr[a->n_rows];
    const int four = a->bits == 4;
    const __m128i flip = _mm_set1_epi8((char)(four ? 0x88 : 0xAA));
    const __m128i fmask = _mm_set1_epi8((char)(four ? 15 : 3));
    uint8_t sel[4][16]; /* sel[j]: bytes [0, Fb) of field plane j to lanes [j * Fb, (j + 1) * Fb) */
    for (int j = 0; j < 4; ++j)
        for (int l = 0; l < 16; ++l) sel[j][l] = l >= j * Fb && l < (j + 1) * Fb ? (uint8_t)(l - j * Fb) : 0x80;
    const __m128i S0 = _mm_loadu_si128((const __m128i *)sel[0]), S1 = _mm_loadu_si128((const __m128i *)sel[1]);
    const __m128i S2 = _mm_loadu_si128((const __m128i *)sel[2]), S3 = _mm_loadu_si128((const __m128i *)sel[3]);
    uint32_t wsum = 0;
    __m256i s0 = _mm256_setzero_si256(), s1 = s0;
    for (int64_t e = e0; e < e1; ++e) {
        const int32_t w = weight_at(a, e);
        wsum += (uint32_t)w;
        const __m256i W = _mm256_set1_epi32(w);
        const __m128i b = _mm_xor_si128(packed16(a, e, e_end), flip);
        __m128i v;
        if (four) {
            v = _mm_or_si128(_mm_shuffle_epi8(_mm_and_si128(b, fmask), S0),
                             _mm_shuffle_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), fmask), S1));
        } else {
            v = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(_mm_and_si128(b, fmask), S0),
                                          _mm_shuffle_epi8(_mm_and_si128(_mm_srli_epi16(b, 2), fmask), S1)),
                             _mm_or_si128(_mm_shuffle_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), fmask), S2),
                                          _mm_shuffle_epi8(_mm_and_si128(_mm_srli_epi16(b, 6), fmask), S3)));
        }
        s0 = _mm256_add_epi32(s0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(v), W));
        if (L > 8) s1 = _mm256_add_epi32(s1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)), W));
    }
    uint32_t lanes[16];
    _mm256_storeu_si256((__m256i *)lanes, s0);
    _mm256_storeu_si256((__m256i *)(lanes + 8), s1);
    memcpy(acc, lanes, (size_t)L * sizeof(uint32_t));
    return wsum;
}

/* Unweighted int8 rows with F <= 16: signed 16-bit partial sums flushed every FLUSH_I8 edges (same contract
 * as accumulate_unweighted). */
static int accumulate_unweighted_avx2_i8(const spmm_args *a, int64_t e0, int64_t e1, uint32_t *restrict acc,
                                         uint16_t *restrict part) {
    const int64_t F = a->F;
    const int64_t e_end = a->indptr[a->n_rows];
    int first = 1;
    int64_t e = e0;
    do {
        const int64_t stop = e1 - e > FLUSH_I8 ? e + FLUSH_I8 : e1;
        __m256i s0 = _mm256_setzero_si256();
        for (; e < stop; ++e) s0 = _mm256_add_epi16(s0, _mm256_cvtepi8_epi16(row16(a, e, e_end)));
        uint16_t lanes[16];
        _mm256_storeu_si256((__m256i *)lanes, s0);
        memcpy(part, lanes, (size_t)F * sizeof(uint16_t));
        if (first && e == e1) return 1;
        if (first)
            for (int64_t f = 0; f < F; ++f) acc[f] = (uint32_t)(int32_t)(int16_t)part[f];
        else
            for (int64_t f = 0; f < F; ++f) acc[f] += (uint32_t)(int32_t)(int16_t)part[f];
        first = 0;
    } while (e < e1);
    return 0;
}
#else
#define QG_AVX2_ROWS 0
#endif

/* ------------------------------------------------------------------------------------------------ */
/* aggregation of quantized messages                                                                */

/* w - zw of edge e, exact */
static inline double weight_d(const spmm_args *a, int64_t e) {
    return (double)((a->w8 ? (int64_t)a->w8[e] : (int64_t)a->w16[e]) - (int64_t)a->zw);
}

/* Signed value of a raw field code c of `bits` bits. */
static inline int32_t field_value(int bits, int32_t c) {
    const int32_t sign = 1 << (bits - 1);
    return ((c & ((sign << 1) - 1)) ^ sign) - sign;
}

#define QG_ROUND_MAGIC 6755399441055744.0 /* 1.5 * 2**52 */

/*
 * nearbyint(clamp(v, lo, hi)) modulo 2**32, for integers lo <= hi with |lo|, |hi| < 2**51. It equals
 * clamp(nearbyint(v), lo, hi): rounding is monotone and keeps integers. y + 1.5 * 2**52 lies in [2**52, 2**53),
 * where doubles are the integers: the addition rounds y in the current mode (half to even, as nearbyint) and
 * the low 32 bits of the result's encoding are that integer modulo 2**32.
 */
static inline uint32_t msg_round_clamp(double v, double lo, double hi) {
    double t = v > hi ? hi : v;
    t = t < lo ? lo : t;
#if FLT_EVAL_METHOD == 0
    t += QG_ROUND_MAGIC;
    uint64_t u;
    memcpy(&u, &t, sizeof(u));
    return (uint32_t)u;
#else /* excess precision (x87) would round twice: plain nearbyint */
    return (uint32_t)(int64_t)nearbyint(t);
#endif
}
/* q - z modulo 2**32 of a product P = wd * (x - zx), exact in float64 while |P| < 2**53:
 * clamp(nearbyint(P * m), qmin - z, qmax - z) (locals M, LO, HI: g->m, g->lo, g->hi) */
#define QG_MSG(P) msg_round_clamp((P) * M, LO, HI)

/* tab[c] = q - qmin for every raw field code c < n, for the edge weight wd = w - zw. */
static inline void msg_table(const qg_msg *g, int64_t n, double wd, uint8_t *restrict tab) {
    const double M = g->m, LO = g->lo, HI = g->hi;
    const uint32_t base = (uint32_t)(int64_t)LO;
    const double *restrict xd = g->xd;
    for (int64_t c = 0; c < n; ++c) tab[c] = (uint8_t)(QG_MSG(wd * xd[c]) - base);
}

#if QG_AVX512BW
/* p[0..31] (half = 1) or p[0..63] += zero-extended bytes of v; p 64-byte aligned */
static inline void add_u8_to_u16(uint16_t *p, __m512i v, int half) {
    _mm512_store_si512((void *)p, _mm512_add_epi16(_mm512_load_si512((const void *)p),
                                                   _mm512_cvtepu8_epi16(_mm512_castsi512_si256(v))));
    if (half) return;
    _mm512_store_si512((void *)(p + 32), _mm512_add_epi16(_mm512_load_si512((const void *)(p + 32)),
                                                          _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(v, 1))));
}

static inline __mmask64 tail_mask(int64_t left) {
    return left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
}

/* The table of msg_table for 16 codes (4 and 2 bits), in every 128-bit lane: same arithmetic, 8 codes a time. */
static inline __m512i msg_table16(const qg_msg *g, double wd) {
    const __m512d M = _mm512_set1_pd(g->m), LO = _mm512_set1_pd(g->lo), HI = _mm512_set1_pd(g->hi);
    const __m512d W = _mm512_set1_pd(wd), MAGIC = _mm512_set1_pd(QG_ROUND_MAGIC);
    const __m512i base = _mm512_set1_epi64((int64_t)g->lo);
    __m512d y0 = _mm512_mul_pd(_mm512_mul_pd(W, _mm512_loadu_pd(g->xd)), M);
    __m512d y1 = _mm512_mul_pd(_mm512_mul_pd(W, _mm512_loadu_pd(g->xd + 8)), M);
    y0 = _mm512_add_pd(_mm512_max_pd(_mm512_min_pd(y0, HI), LO), MAGIC);
    y1 = _mm512_add_pd(_mm512_max_pd(_mm512_min_pd(y1, HI), LO), MAGIC);
    const __m128i b0 = _mm512_cvtepi64_epi8(_mm512_sub_epi64(_mm512_castpd_si512(y0), base));
    const __m128i b1 = _mm512_cvtepi64_epi8(_mm512_sub_epi64(_mm512_castpd_si512(y1), base));
    return _mm512_broadcast_i32x4(_mm_unpacklo_epi64(b0, b1));
}

/* q - z modulo 2**32 (QG_MSG) of the 16 codes of 4 and 2-bit fields, as int32 lanes: same arithmetic. */
static inline __m512i msg_table16_wide(const qg_msg *g, double wd) {
    const __m512d M = _mm512_set1_pd(g->m), LO = _mm512_set1_pd(g->lo), HI = _mm512_set1_pd(g->hi);
    const __m512d W = _mm512_set1_pd(wd), MAGIC = _mm512_set1_pd(QG_ROUND_MAGIC);
    __m512d y0 = _mm512_mul_pd(_mm512_mul_pd(W, _mm512_loadu_pd(g->xd)), M);
    __m512d y1 = _mm512_mul_pd(_mm512_mul_pd(W, _mm512_loadu_pd(g->xd + 8)), M);
    y0 = _mm512_add_pd(_mm512_max_pd(_mm512_min_pd(y0, HI), LO), MAGIC);
    y1 = _mm512_add_pd(_mm512_max_pd(_mm512_min_pd(y1, HI), LO), MAGIC);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_castpd_si512(y0))),
                              _mm512_cvtepi64_epi32(_mm512_castpd_si512(y1)), 1);
}

/* packed rows, any message range: acc[j * S + k] += tw[field j of byte k] (int32 table lanes), k < Fb */
static inline void lutp_edge_wide(int bits, const uint8_t *restrict r, int64_t Fb, int64_t S, __m512i tw,
                                  uint32_t *restrict acc) {
    const int per = 8 / bits;
    const __m512i mask = _mm512_set1_epi32(bits == 4 ? 15 : 3);
    for (int64_t k = 0; k < Fb; k += 16) {
        __m128i b8;
        if (Fb - k >= 16) {
            b8 = _mm_loadu_si128((const __m128i *)(r + k));
        } else { /* row tail: no load past the row */
            uint8_t tail[16] = {0};
            memcpy(tail, r + k, (size_t)(Fb - k));
            b8 = _mm_loadu_si128((const __m128i *)tail);
        }
        const __m512i b = _mm512_cvtepu8_epi32(b8);
        for (int j = 0; j < per; ++j) {
            uint32_t *p = acc + j * S + k;
            const __m512i code = _mm512_and_si512(_mm512_srli_epi32(b, (unsigned)(j * bits)), mask);
            _mm512_store_si512((void *)p, _mm512_add_epi32(_mm512_load_si512((const void *)p),
                                                           _mm512_permutexvar_epi32(code, tw)));
        }
    }
}

/* part[f] += tab[(uint8_t)r[f]], f < F, with the 256-entry table in t0..t3 (8 bits) */
static inline void lut8_edge(const uint8_t *restrict r, int64_t F, __m512i t0, __m512i t1, __m512i t2, __m512i t3,
                             uint16_t *restrict part) {
#if QG_VBMI
    for (int64_t f = 0; f < F; f += 64) {
        const __m512i idx = _mm512_maskz_loadu_epi8(tail_mask(F - f), (const void *)(r + f));
        const __m512i lo = _mm512_permutex2var_epi8(t0, idx, t1); /* codes 0..127 */
        const __m512i hi = _mm512_permutex2var_epi8(t2, idx, t3); /* codes 128..255 */
        add_u8_to_u16(part + f, _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi), F - f <= 32);
    }
#else
    uint8_t tab[256];
    _mm512_storeu_si512((void *)tab, t0);
    _mm512_storeu_si512((void *)(tab + 64), t1);
    _mm512_storeu_si512((void *)(tab + 128), t2);
    _mm512_storeu_si512((void *)(tab + 192), t3);
    for (int64_t f = 0; f < F; ++f) part[f] = (uint16_t)(part[f] + tab[r[f]]);
#endif
}

/* packed rows: part[j * S + k] += tab[field j of byte k], k < Fb, with the table in every 128-bit lane of tv */
static inline void lutp_edge(int bits, const uint8_t *restrict r, int64_t Fb, int64_t S, __m512i tv,
                             uint16_t *restrict part) {
    if (bits == 4) {
        const __m512i m4 = _mm512_set1_epi8(15);
        for (int64_t k = 0; k < Fb; k += 64) {
            const int half = Fb - k <= 32;
            const __m512i b = _mm512_maskz_loadu_epi8(tail_mask(Fb - k), (const void *)(r + k));
            add_u8_to_u16(part + k, _mm512_shuffle_epi8(tv, _mm512_and_si512(b, m4)), half);
            add_u8_to_u16(part + S + k, _mm512_shuffle_epi8(tv, _mm512_and_si512(_mm512_srli_epi16(b, 4), m4)),
                          half);
        }
        return;
    }
    const __m512i m2 = _mm512_set1_epi8(3);
    for (int64_t k = 0; k < Fb; k += 64) {
        const int half = Fb - k <= 32;
        const __m512i b = _mm512_maskz_loadu_epi8(tail_mask(Fb - k), (const void *)(r + k));
        for (int j = 0; j < 4; ++j)
            add_u8_to_u16(part + j * S + k,
                          _mm512_shuffle_epi8(tv, _mm512_and_si512(_mm512_srli_epi16(b, (unsigned)(2 * j)), m2)),
                          half);
    }
}
#endif

#if !QG_AVX512BW
/* portable look-ups: 8 bits part[f] += tab[byte f]; packed part[j * S + k] += tab[field j of byte k] */
static inline void lut_edge_portable(const spmm_args *a, const uint8_t *restrict r, const uint8_t *restrict tab,
                                     uint16_t *restrict part) {
    const int64_t S = a->msg.S, Fb = a->x_stride;
    if (a->bits == 8) {
        for (int64_t f = 0; f < a->F; ++f) part[f] = (uint16_t)(part[f] + tab[r[f]]);
    } else if (a->bits == 4) {
        for (int64_t k = 0; k < Fb; ++k) {
            part[k] = (uint16_t)(part[k] + tab[r[k] & 15u]);
            part[S + k] = (uint16_t)(part[S + k] + tab[r[k] >> 4]);
        }
    } else {
        for (int64_t k = 0; k < Fb; ++k)
            for (int j = 0; j < 4; ++j)
                part[j * S + k] = (uint16_t)(part[j * S + k] + tab[(r[k] >> (2 * j)) & 3u]);
    }
}
#endif

#define FLUSH_MSG 256 /* 256 * 255 = 65280: uint16 holds any sum of 256 table bytes */

/*
 * Edges e0 <= e < stop of a table row: part[lane] += tab_e[code of the lane's field], with the table of edge e's
 * weight: the only table (no weights), the precomputed one of the int8 weight, or one built for the edge.
 */
static void msg_lut_edges(const spmm_args *a, int64_t e0, int64_t stop, uint16_t *restrict part) {
    const qg_msg *g = &a->msg;
    const int64_t e_end = a->indptr[a->n_rows];
    const uint8_t *restrict x = a->x;
    const int64_t xs = a->x_stride;
#if QG_AVX512BW
    if (a->bits == 8) {
        const uint8_t *tab = g->tabs;
        uint8_t ebuf[256];
        __m512i t0 = _mm512_setzero_si512(), t1 = t0, t2 = t0, t3 = t0;
        if (tab) {
            t0 = _mm512_loadu_si512((const void *)tab);
            t1 = _mm512_loadu_si512((const void *)(tab + 64));
            t2 = _mm512_loadu_si512((const void *)(tab + 128));
            t3 = _mm512_loadu_si512((const void *)(tab + 192));
        }
        for (int64_t e = e0; e < stop; ++e) {
            prefetch_row(a, e, e_end);
            if (a->w8 || a->w16) {
                if (a->w8) {
                    tab = g->tabs + (int64_t)(uint8_t)a->w8[e] * 256;
                } else {
                    msg_table(g, 256, weight_d(a, e), ebuf);
                    tab = ebuf;
                }
                t0 = _mm512_loadu_si512((const void *)tab);
                t1 = _mm512_loadu_si512((const void *)(tab + 64));
                t2 = _mm512_loadu_si512((const void *)(tab + 128));
                t3 = _mm512_loadu_si512((const void *)(tab + 192));
            }
            lut8_edge(x + col_at(a, e) * xs, a->F, t0, t1, t2, t3, part);
        }
        return;
    }
    __m512i tv = _mm512_setzero_si512();
    if (!a->w8 && !a->w16) tv = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)g->tabs));
    for (int64_t e = e0; e < stop; ++e) {
        prefetch_row(a, e, e_end);
        if (a->w8)
            tv = _mm512_broadcast_i32x4(
                _mm_loadu_si128((const __m128i *)(g->tabs + (int64_t)(uint8_t)a->w8[e] * g->tab_len)));
        else if (a->w16)
            tv = msg_table16(g, weight_d(a, e));
        lutp_edge(a->bits, x + col_at(a, e) * xs, xs, g->S, tv, part);
    }
#else
    uint8_t ebuf[256];
    for (int64_t e = e0; e < stop; ++e) {
        prefetch_row(a, e, e_end);
        const uint8_t *tab = g->tabs;
        if (a->w8)
            tab = g->tabs + (int64_t)(uint8_t)a->w8[e] * g->tab_len;
        else if (a->w16) {
            msg_table(g, g->tab_len, weight_d(a, e), ebuf);
            tab = ebuf;
        }
        lut_edge_portable(a, x + col_at(a, e) * xs, tab, part);
    }
#endif
}

/*
 * Table rows (msg.lut): the lanes sum q - qmin of every edge's messages in 16-bit partial lanes flushed into acc.
 * Returns 1 when the sums are still in part (degree <= FLUSH_MSG), 0 when in acc.
 */
static int accumulate_msg_lut(const spmm_args *a, int64_t e0, int64_t e1, uint32_t *restrict acc,
                              uint16_t *restrict part) {
    const int64_t L = a->msg.lanes;
    int64_t e = e0;
    int first = 1;
    if (e0 == e1) {
        memset(part, 0, (size_t)L * sizeof(uint16_t));
        return 1;
    }
    while (e < e1) {
        const int64_t stop = e1 - e > FLUSH_MSG ? e + FLUSH_MSG : e1;
        memset(part, 0, (size_t)L * sizeof(uint16_t));
        msg_lut_edges(a, e, stop, part);
        e = stop;
        if (first && e == e1) return 1;
        if (first)
            for (int64_t f = 0; f < L; ++f) acc[f] = (uint32_t)part[f];
        else
            for (int64_t f = 0; f < L; ++f) acc[f] += (uint32_t)part[f];
        first = 0;
    }
    return 0;
}

#if !QG_AVX512BW && defined(__AVX2__)
#define QG_MSG_AVX2 1
/* The message quantizer's constants as float64 lanes: zx, m and the clamp bounds [lo, hi]. */
typedef struct {
    __m256d zx, m, lo, hi;
} msg_avx2;

static QG_ALWAYS_INLINE msg_avx2 msg_avx2_of(const spmm_args *a) {
    const msg_avx2 c = {_mm256_set1_pd((double)a->zx), _mm256_set1_pd(a->msg.m), _mm256_set1_pd(a->msg.lo),
                        _mm256_set1_pd(a->msg.hi)};
    return c;
}

/* QG_MSG of 8 raw field values v (int32) for the edge weight wd, as the scalar path: wd * (v - zx) in float64
 * (an exact integer), one rounding in the multiply by m, clamped to [lo, hi], rounded half to even by the
 * 1.5 * 2**52 addition; the 8 low 32-bit words, in order. */
static QG_ALWAYS_INLINE __m256i msg8_avx2(__m256i v, __m256d wd, const msg_avx2 *c) {
    const __m256d magic = _mm256_set1_pd(QG_ROUND_MAGIC);
    __m256d a = _mm256_sub_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(v)), c->zx);
    __m256d b = _mm256_sub_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(v, 1)), c->zx);
    a = _mm256_add_pd(_mm256_max_pd(_mm256_min_pd(_mm256_mul_pd(_mm256_mul_pd(wd, a), c->m), c->hi), c->lo), magic);
    b = _mm256_add_pd(_mm256_max_pd(_mm256_min_pd(_mm256_mul_pd(_mm256_mul_pd(wd, b), c->m), c->hi), c->lo), magic);
    const __m256 low = _mm256_shuffle_ps(_mm256_castpd_ps(a), _mm256_castpd_ps(b), _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_permute4x64_epi64(_mm256_castps_si256(low), 0xD8);
}

/* Signed values of the `bits`-bit codes in the low bits of each int32 lane of v (higher bits are dropped). */
static QG_ALWAYS_INLINE __m256i signed_fields(__m256i v, int bits) {
    const __m256i sign = _mm256_set1_epi32(1 << (bits - 1));
    const __m256i codes = _mm256_and_si256(v, _mm256_set1_epi32((1 << bits) - 1));
    return _mm256_sub_epi32(_mm256_xor_si256(codes, sign), sign);
}

static QG_ALWAYS_INLINE void add_lanes8(uint32_t *restrict p, __m256i v) {
    _mm256_storeu_si256((__m256i *)p, _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)p), v));
}

/* 8 bytes of the row at byte offset `off` of x, from its byte k of n: a full load while it stays inside x (the
 * bytes past the row land in lanes that are never read back), else the row's own bytes and zeros. */
static QG_ALWAYS_INLINE __m128i load8_row(const spmm_args *a, int64_t off, int64_t k, int64_t n) {
    if (k + 8 <= n || off + k + 8 <= a->n_src * a->x_stride) return _mm_loadl_epi64((const __m128i *)(a->x + off + k));
    uint8_t buf[8] = {0};
    for (int64_t i = k; i < n; ++i) buf[i - k] = a->x[off + i];
    return _mm_loadl_epi64((const __m128i *)buf);
}

/* Short rows (F <= 16): the row's sums stay in registers across its edges. Packed rows: the 8 fields of chunk c
 * in feature order, shifted out of the 32-bit word at byte c * bits (feature f sits at bit f * bits of the row),
 * laid out as the lanes at the end. */
static void accumulate_msg_short_avx2(const spmm_args *a, int64_t e0, int64_t e1, uint32_t *restrict acc) {
    const int64_t e_end = a->indptr[a->n_rows];
    const int64_t S = a->msg.S, Fb = a->x_stride, F = a->F;
    const msg_avx2 c = msg_avx2_of(a);
    const int weighted = a->w8 || a->w16, two = F > 8, bits = a->bits;
    const __m256i shift = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bits));
    __m256d wd = _mm256_set1_pd(1.0);
    __m256i s0 = _mm256_setzero_si256(), s1 = s0;
    for (int64_t e = e0; e < e1; ++e) {
        prefetch_row(a, e, e_end);
        if (weighted) wd = _mm256_set1_pd(weight_d(a, e));
        const int64_t off = col_at(a, e) * a->x_stride;
        if (bits == 8) {
            s0 = _mm256_add_epi32(s0, msg8_avx2(_mm256_cvtepi8_epi32(load8_row(a, off, 0, F)), wd, &c));
            if (two) s1 = _mm256_add_epi32(s1, msg8_avx2(_mm256_cvtepi8_epi32(load8_row(a, off, 8, F)), wd, &c));
            continue;
        }
        const __m256i w0 = _mm256_set1_epi32(_mm_cvtsi128_si32(load8_row(a, off, 0, Fb)));
        s0 = _mm256_add_epi32(s0, msg8_avx2(signed_fields(_mm256_srlv_epi32(w0, shift), bits), wd, &c));
        if (two) {
            const __m256i w1 = _mm256_set1_epi32(_mm_cvtsi128_si32(load8_row(a, off, bits, Fb)));
            s1 = _mm256_add_epi32(s1, msg8_avx2(signed_fields(_mm256_srlv_epi32(w1, shift), bits), wd, &c));
        }
    }
    if (bits == 8) {
        _mm256_storeu_si256((__m256i *)acc, s0);
        _mm256_storeu_si256((__m256i *)(acc + 8), s1);
        return;
    }
    const int per = 8 / bits;
    uint32_t sums[16];
    _mm256_storeu_si256((__m256i *)sums, s0);
    _mm256_storeu_si256((__m256i *)(sums + 8), s1);
    for (int64_t f = 0; f < F; ++f) acc[(f % per) * S + f / per] = sums[f];
}

/* accumulate_msg_direct with AVX2: 8 lanes per step, the same float64 arithmetic as QG_MSG */
static void accumulate_msg_direct_avx2(const spmm_args *a, int64_t e0, int64_t e1, uint32_t *restrict acc) {
    if (a->F <= 16) {
        accumulate_msg_short_avx2(a, e0, e1, acc);
        return;
    }
    const int64_t e_end = a->indptr[a->n_rows];
    const int64_t S = a->msg.S, Fb = a->x_stride, F = a->F;
    const msg_avx2 c = msg_avx2_of(a);
    const int weighted = a->w8 || a->w16;
    __m256d wd = _mm256_set1_pd(1.0);
    memset(acc, 0, (size_t)a->msg.lanes * sizeof(uint32_t));
    for (int64_t e = e0; e < e1; ++e) {
        prefetch_row(a, e, e_end);
        if (weighted) wd = _mm256_set1_pd(weight_d(a, e));
        const int64_t off = col_at(a, e) * a->x_stride;
        if (a->bits == 8) {
            for (int64_t f = 0; f < F; f += 8)
                add_lanes8(acc + f, msg8_avx2(_mm256_cvtepi8_epi32(load8_row(a, off, f, F)), wd, &c));
            continue;
        }
        const int per = 8 / a->bits;
        for (int64_t k = 0; k < Fb; k += 8) {
            const __m256i b = _mm256_cvtepu8_epi32(load8_row(a, off, k, Fb));
            for (int j = 0; j < per; ++j)
                add_lanes8(acc + j * S + k, msg8_avx2(signed_fields(_mm256_srli_epi32(b, a->bits * j), a->bits), wd, &c));
        }
    }
}
#else
#define QG_MSG_AVX2 0
#endif

#if !QG_MSG_AVX2
/* Direct rows (no table): acc[lane] += q - z, evaluated per product in float64, 32-bit lanes. */
static void accumulate_msg_direct(const spmm_args *a, int64_t e0, int64_t e1, uint32_t *restrict acc) {
    const qg_msg *g = &a->msg;
    const int64_t e_end = a->indptr[a->n_rows];
    const int64_t S = g->S, Fb = a->x_stride, F = a->F;
    const double M = g->m, LO = g->lo, HI = g->hi, zxd = (double)a->zx;
    const int weighted = a->w8 || a->w16;
    memset(acc, 0, (size_t)g->lanes * sizeof(uint32_t));
#if QG_AVX512BW
    if (a->bits != 8) { /* 16 codes: evaluate a table per edge, look the fields up */
        __m512i tw = msg_table16_wide(g, 1.0);
        for (int64_t e = e0; e < e1; ++e) {
            prefetch_row(a, e, e_end);
            if (weighted) tw = msg_table16_wide(g, weight_d(a, e));
            lutp_edge_wide(a->bits, a->x + col_at(a, e) * a->x_stride, Fb, S, tw, acc);
        }
        return;
    }
#endif
    for (int64_t e = e0; e < e1; ++e) {
        prefetch_row(a, e, e_end);
        const double wd = weighted ? weight_d(a, e) : 1.0;
        const uint8_t *restrict r = a->x + col_at(a, e) * a->x_stride;
        if (a->bits == 8) {
            const int8_t *restrict s = (const int8_t *)r;
            QG_IVDEP
            for (int64_t f = 0; f < F; ++f) acc[f] += QG_MSG(wd * ((double)s[f] - zxd));
        } else if (a->bits == 4) {
            uint32_t *restrict lo = acc;
            uint32_t *restrict hi = acc + S;
            QG_IVDEP
            for (int64_t k = 0; k < Fb; ++k) {
                const int32_t b = (int32_t)r[k];
                lo[k] += QG_MSG(wd * ((double)(((b & 15) ^ 8) - 8) - zxd));
                hi[k] += QG_MSG(wd * ((double)(((b >> 4) ^ 8) - 8) - zxd));
            }
        } else {
            for (int j = 0; j < 4; ++j) {
                uint32_t *restrict p = acc + j * S;
                QG_IVDEP
                for (int64_t k = 0; k < Fb; ++k) {
                    const int32_t c = ((int32_t)r[k] >> (2 * j)) & 3;
                    p[k] += QG_MSG(wd * ((double)((c ^ 2) - 2) - zxd));
                }
            }
        }
    }
}
#endif

/*
 * Natural-order int32 row from the lanes: lane minus (offset + zx) * sum(w), where offset undoes the
 * unsigned view of packed fields. Packed lanes are interleaved back: feature j + k * per is lane j * Fb + k.
 */
#define QG_FINISH_PACKED(LANE_T, STRIDE)                                                                  \
    do {                                                                                                  \
        const int64_t F = a->F, Fb = (STRIDE);                                                            \
        if (a->bits == 4) {                                                                               \
            const LANE_T *restrict lo = lanes;                                                            \
            const LANE_T *restrict hi = lanes + Fb;                                                       \
            const int64_t pairs = F / 2;                                                                  \
            for (int64_t k = 0; k < pairs; ++k) {                                                         \
                out[2 * k] = (int32_t)((uint32_t)lo[k] - corr);                                           \
                out[2 * k + 1] = (int32_t)((uint32_t)hi[k] - corr);                                       \
            }                                                                                             \
            if (F & 1) out[F - 1] = (int32_t)((uint32_t)lo[pairs] - corr);                                \
        } else {                                                                                          \
            const LANE_T *restrict p0 = lanes;                                                            \
            const LANE_T *restrict p1 = lanes + Fb;                                                       \
            const LANE_T *restrict p2 = lanes + 2 * Fb;                                                   \
            const LANE_T *restrict p3 = lanes + 3 * Fb;                                                   \
            const int64_t quads = F / 4;                                                                  \
            for (int64_t k = 0; k < quads; ++k) {                                                         \
                out[4 * k] = (int32_t)((uint32_t)p0[k] - corr);                                           \
                out[4 * k + 1] = (int32_t)((uint32_t)p1[k] - corr);                                       \
                out[4 * k + 2] = (int32_t)((uint32_t)p2[k] - corr);                                       \
                out[4 * k + 3] = (int32_t)((uint32_t)p3[k] - corr);                                       \
            }                                                                                             \
            for (int64_t f = 4 * quads; f < F; ++f)                                                       \
                out[f] = (int32_t)((uint32_t)lanes[(f & 3) * Fb + quads] - corr);                         \
        }                                                                                                 \
    } while (0)

/* stride: the lane stride of packed rows (x_stride, or msg.S for message lanes) */
static void finish_wide(const spmm_args *a, const uint32_t *restrict lanes, int64_t stride, uint32_t corr,
                        int32_t *restrict out) {
    if (a->bits == 8) {
        for (int64_t f = 0; f < a->F; ++f) out[f] = (int32_t)(lanes[f] - corr);
        return;
    }
    QG_FINISH_PACKED(uint32_t, stride);
}

static void finish_narrow(const spmm_args *a, const void *restrict part, uint32_t corr, int32_t *restrict out) {
    if (a->bits == 8) {
        const uint16_t *restrict p = (const uint16_t *)part; /* signed 16-bit sums */
        for (int64_t f = 0; f < a->F; ++f) out[f] = (int32_t)((uint32_t)(int32_t)(int16_t)p[f] - corr);
        return;
    }
    const uint8_t *restrict lanes = (const uint8_t *)part;
    QG_FINISH_PACKED(uint8_t, a->x_stride);
}

/* Message rows still in their 16-bit partial lanes: unsigned sums, lane stride msg.S. */
static void finish_msg16(const spmm_args *a, const uint16_t *restrict lanes, uint32_t corr, int32_t *restrict out) {
    if (a->bits == 8) {
        for (int64_t f = 0; f < a->F; ++f) out[f] = (int32_t)((uint32_t)lanes[f] - corr);
        return;
    }
    QG_FINISH_PACKED(uint16_t, a->msg.S);
}

static void spmm_rows(const spmm_args *a, int64_t r0, int64_t r1, uint32_t *acc, void *part, int32_t *row) {
    const uint32_t offset = a->bits == 8 ? 0u : (a->bits == 4 ? 8u : 2u);
    const uint32_t shift = offset + (uint32_t)a->zx;
    /* weighted packed rows: edges per 16-bit partial sum (<= 1: use 32-bit lanes throughout) */
    const int64_t narrow_flush =
        (a->w8 || a->w16) && a->bits != 8 ? 32767 / (weight_bound(a) * (a->bits == 4 ? 15 : 3) + 1) : 0;
#if QG_REG_ROWS
    /* short rows held in registers */
    const int reg_u8 = a->bits == 8 && a->F <= 64;
    const int reg_up = a->bits != 8 && a->x_stride <= 64;
    const int reg_w8 = a->bits == 8 && a->F <= 64;
    const int reg_wn = a->bits != 8 && a->x_stride <= 32;
#endif
#if QG_AVX2_ROWS
    const int avx2_i8 = a->bits == 8 && a->F <= 16;
    const int avx2_packed = a->bits != 8 && lanes_of(a) <= 16;
#endif
#if QG_VNNI_ROWS
    vnni_rows vr;
    memset(&vr, 0, sizeof(vr));
    const int vnni = vnni_rows_ok(a);
    if (vnni) vnni_rows_init(a, &vr);
#endif
    for (int64_t i = r0; i < r1; ++i) {
        const int64_t e0 = a->indptr[i], e1 = a->indptr[i + 1];
        int32_t *dst = a->acc_out ? a->acc_out + i * a->acc_stride : row;
        if (a->msg.on) {
            if (a->msg.lut) { /* lanes sum q - qmin: add degree * (qmin - z) */
                const uint32_t corr = 0u - (uint32_t)(e1 - e0) * ((uint32_t)a->msg.qmin - (uint32_t)a->msg.z);
                if (accumulate_msg_lut(a, e0, e1, acc, (uint16_t *)part))
                    finish_msg16(a, (const uint16_t *)part, corr, dst);
                else
                    finish_wide(a, acc, a->msg.S, corr, dst);
            } else {
#if QG_MSG_AVX2
                accumulate_msg_direct_avx2(a, e0, e1, acc);
#else
                accumulate_msg_direct(a, e0, e1, acc);
#endif
                finish_wide(a, acc, a->msg.S, 0u, dst);
            }
        } else if (a->w8 || a->w16) {
            uint32_t wsum;
#if QG_VNNI_ROWS
            if (vnni)
                wsum = accumulate_weighted_vnni(a, &vr, e0, e1, acc);
            else
#endif
#if QG_REG_ROWS
            if (reg_w8)
                wsum = accumulate_weighted_reg_i8(a, e0, e1, acc);
            else if (reg_wn && narrow_flush > 1)
                wsum = accumulate_weighted_narrow_reg(a, e0, e1, acc, (int16_t *)part, narrow_flush);
            else
#endif
#if QG_AVX2_ROWS
            if (avx2_i8)
                wsum = accumulate_weighted_avx2_i8(a, e0, e1, acc);
            else if (avx2_packed)
                wsum = accumulate_weighted_avx2_packed(a, e0, e1, acc);
            else
#endif
                wsum = narrow_flush > 1 ? accumulate_weighted_narrow(a, e0, e1, acc, (int16_t *)part, narrow_flush)
                                        : accumulate_weighted(a, e0, e1, acc);
            finish_wide(a, acc, a->x_stride, shift * wsum, dst);
        } else if (
#if QG_REG_ROWS
            reg_u8 ? accumulate_unweighted_reg_i8(a, e0, e1, acc, (uint16_t *)part)
            : reg_up ? accumulate_unweighted_reg_packed(a, e0, e1, acc, (uint8_t *)part) :
#endif
#if QG_AVX2_ROWS
            avx2_i8 ? accumulate_unweighted_avx2_i8(a, e0, e1, acc, (uint16_t *)part) :
#endif
                     accumulate_unweighted(a, e0, e1, acc, part)) {
            finish_narrow(a, part, shift * (uint32_t)(e1 - e0), dst);
        } else {
            finish_wide(a, acc, a->x_stride, shift * (uint32_t)(e1 - e0), dst);
        }
        if (a->q_out) requant_row_i8(dst, a->F, i, &a->rq, a->q_out + i * a->q_stride);
        if (a->epi) epilogue_row(a->epi, dst, a->F, i);
    }
}

/* First row of chunk c when rows are split into n_chunks of about equal cost (edges + ROW_COST per row). */
#define ROW_COST 4
static int64_t chunk_start(const int64_t *indptr, int64_t n_rows, int64_t c, int64_t n_chunks) {
    if (c >= n_chunks) return n_rows;
    const int64_t total = indptr[n_rows] + ROW_COST * n_rows;
    const int64_t target = (int64_t)((double)total * (double)c / (double)n_chunks);
    int64_t lo = 0, hi = n_rows; /* first i with cost(i) >= target */
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (indptr[mid] + ROW_COST * mid < target)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int spmm_run(const spmm_args *a, int threads) {
    if (!a->indptr || !a->x || a->n_rows < 0 || a->F < 0 || (a->bits != 8 && a->bits != 4 && a->bits != 2))
        return QG_EBADARG;
    if (a->x_stride < (a->F * a->bits + 7) / 8 || (!a->acc_out && !a->q_out && !a->epi)) return QG_EBADARG;
    if (a->n_rows == 0 || a->F == 0) return QG_OK;
    const int64_t L = a->msg.on && a->msg.lanes > lanes_of(a) ? a->msg.lanes : lanes_of(a);
    const int T = qg_threads(threads);
    const int64_t n_chunks = T == 1 ? 1 : (a->n_rows < (int64_t)T * 64 ? a->n_rows : (int64_t)T * 64);
    int status = QG_OK;
#ifdef _OPENMP
#pragma omp parallel num_threads(T)
#endif
    {
        uint32_t *acc = (uint32_t *)qg_alloc((size_t)L * sizeof(uint32_t));
        void *part = qg_alloc((size_t)L * sizeof(uint16_t));
        int32_t *row = (int32_t *)qg_alloc((size_t)(a->F + 16) * sizeof(int32_t));
        const int ok = acc && part && row;
        if (!ok) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            status = QG_ENOMEM;
        }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t c = 0; c < n_chunks; ++c) {
            if (ok)
                spmm_rows(a, chunk_start(a->indptr, a->n_rows, c, n_chunks),
                          chunk_start(a->indptr, a->n_rows, c + 1, n_chunks), acc, part, row);
        }
        free(acc);
        free(part);
        free(row);
    }
    return status;
}

static int spmm_setup(spmm_args *a, int bits, int64_t n_rows, int64_t n_src, int64_t F, const int64_t *indptr,
                      const void *indices, int idx64, const void *x, int64_t x_stride, int32_t zx, const void *w,
                      int w_bytes, int32_t zw) {
    memset(a, 0, sizeof(*a));
    if (w && w_bytes != 1 && w_bytes != 2) return QG_EBADARG;
    if (!indices && indptr && n_rows > 0 && indptr[n_rows] > 0) return QG_EBADARG;
    a->bits = bits;
    a->n_rows = n_rows;
    a->n_src = n_src;
    a->F = F;
    a->indptr = indptr;
    a->ind32 = idx64 ? NULL : (const int32_t *)indices;
    a->ind64 = idx64 ? (const int64_t *)indices : NULL;
    a->x = (const uint8_t *)x;
    a->x_stride = x_stride;
    a->zx = zx;
    a->w8 = w && w_bytes == 1 ? (const int8_t *)w : NULL;
    a->w16 = w && w_bytes == 2 ? (const int16_t *)w : NULL;
    a->zw = zw;
    return QG_OK;
}

static int spmm_i32(int bits, int64_t n_rows, int64_t n_src, int64_t F, const int64_t *indptr,
                    const void *indices, int idx64, const void *x, int64_t x_stride, int32_t zx, const void *w,
                    int w_bytes, int32_t zw, int32_t *out, int64_t out_stride, int threads) {
    spmm_args a;
    int s = spmm_setup(&a, bits, n_rows, n_src, F, indptr, indices, idx64, x, x_stride, zx, w, w_bytes, zw);
    if (s != QG_OK) return s;
    if (!out || out_stride < F) return QG_EBADARG;
    a.acc_out = out;
    a.acc_stride = out_stride;
    return spmm_run(&a, threads);
}

/* acc[n_rows, F] (row stride out_stride int32s) = CSR aggregation of int8 features x[n_src, x_stride]. */
int csr_spmm_i8(int64_t n_rows, int64_t n_src, int64_t F, const int64_t *indptr, const void *indices, int idx64,
                const int8_t *x, int64_t x_stride, int32_t zx, const void *w, int w_bytes, int32_t zw,
                int32_t *out, int64_t out_stride, int threads) {
    return spmm_i32(8, n_rows, n_src, F, indptr, indices, idx64, x, x_stride, zx, w, w_bytes, zw, out, out_stride,
                    threads);
}

/* Same for 4-bit packed features (x_stride >= ceil(F / 2) bytes per row). */
int csr_spmm_i4(int64_t n_rows, int64_t n_src, int64_t F, const int64_t *indptr, const void *indices, int idx64,
                const uint8_t *x, int64_t x_stride, int32_t zx, const void *w, int w_bytes, int32_t zw,
                int32_t *out, int64_t out_stride, int threads) {
    return spmm_i32(4, n_rows, n_src, F, indptr, indices, idx64, x, x_stride, zx, w, w_bytes, zw, out, out_stride,
                    threads);
}

/* Same for 2-bit packed features (x_stride >= ceil(F / 4) bytes per row). */
int csr_spmm_i2(int64_t n_rows, int64_t n_src, int64_t F, const int64_t *indptr, const void *indices, int idx64,
                const uint8_t *x, int64_t x_stride, int32_t zx, const void *w, int w_bytes, int32_t zw,
                int32_t *out, int64_t out_stride, int threads) {
    return spmm_i32(2, n_rows, n_src, F, indptr, indices, idx64, x, x_stride, zx, w, w_bytes, zw, out, out_stride,
                    threads);
}

/*
 * Message quantizer setup and run: builds the byte tables (one without weights, 256 for int8 weights) shared
 * read-only by the threads.
 */
#ifndef QG_MSG_TABLE_MIN_F
#define QG_MSG_TABLE_MIN_F 192
#endif

static int msg_setup(spmm_args *a, double m, int32_t z, int32_t qmin, int32_t qmax) {
    qg_msg *g = &a->msg;
    if (a->bits != 8 && a->bits != 4 && a->bits != 2) return QG_EBADARG;
    if (!isfinite(m) || qmin > qmax || a->x_stride < 0 || a->F < 0) return QG_EBADARG;
    g->on = 1;
    g->m = m;
    g->z = z;
    g->qmin = qmin;
    g->qmax = qmax;
    g->lo = (double)qmin - (double)z;
    g->hi = (double)qmax - (double)z;
    /* 8 bits with int16 weights build a 256-entry table per edge: worth it for wide rows only */
    g->lut = (int64_t)qmax - (int64_t)qmin <= 255 && !(a->bits == 8 && a->w16 && a->F < QG_MSG_TABLE_MIN_F);
#if QG_MSG_AVX2
    g->lut = 0; /* 8 float64 products per AVX2 step beat the scalar byte look-ups (docs/benchmarks.md) */
#endif
    g->tab_len = a->bits == 8 ? 256 : (a->bits == 4 ? 16 : 4);
    g->S = (a->x_stride + 31) / 32 * 32; /* keeps every lane block 64-byte aligned (16-bit lanes) */
    g->lanes = a->bits == 8 ? (a->F + 63) / 64 * 64 : (8 / a->bits) * g->S;
    if (g->lanes == 0) g->lanes = 64;
    for (int32_t c = 0; c < 256; ++c) g->xd[c] = (double)field_value(a->bits, c) - (double)a->zx;
    return QG_OK;
}

static int msg_run(spmm_args *a, int threads) {
    qg_msg *g = &a->msg;
    uint8_t *tabs = NULL;
    if (g->lut && !a->w16) {
        const int64_t n_tabs = a->w8 ? 256 : 1;
        tabs = (uint8_t *)qg_alloc((size_t)(n_tabs * g->tab_len + 64)); /* + 64: 16-byte loads of 4-entry tables */
        if (!tabs) return QG_ENOMEM;
        memset(tabs, 0, (size_t)(n_tabs * g->tab_len + 64));
        for (int64_t t = 0; t < n_tabs; ++t) {
            const double wd = a->w8 ? (double)((int64_t)(int8_t)(uint8_t)t - (int64_t)a->zw) : 1.0;
            msg_table(g, g->tab_len, wd, tabs + t * g->tab_len);
        }
        g->tabs = tabs;
    }
    const int status = spmm_run(a, threads);
    free(tabs);
    g->tabs = NULL;
    return status;
}

/*
 * Aggregation of quantized messages into int32:
 *     p[e, f]   = (w[e] - zw) * (x[indices[e], f] - zx)                          (w absent: weight 1)
 *     q[e, f]   = clamp(nearbyint(float64(p[e, f]) * msg_mult) + msg_zp, msg_qmin, msg_qmax)
 *     out[i, f] = sum_{e in row i} (q[e, f] - msg_zp)                            (modulo 2**32)
 * nearbyint rounds half to even (default rounding mode): bit-exact with torch.round / np.rint of the float64
 * product, exact whenever |p| < 2**53. No E x F intermediate: message ranges of at most 256 values sum byte
 * tables of q - msg_qmin per weight value (16-bit partial lanes), others evaluate each product directly.
 */
int csr_spmm_msg(int bits, int64_t n_rows, int64_t n_src, int64_t F, const int64_t *indptr, const void *indices,
                 int idx64, const void *x, int64_t x_stride, int32_t zx, const void *w, int w_bytes, int32_t zw,
                 double msg_mult, int32_t msg_zp, int32_t msg_qmin, int32_t msg_qmax, int32_t *out,
                 int64_t out_stride, int threads) {
    spmm_args a;
    int s = spmm_setup(&a, bits, n_rows, n_src, F, indptr, indices, idx64, x, x_stride, zx, w, w_bytes, zw);
    if (s != QG_OK) return s;
    if (!out || out_stride < F) return QG_EBADARG;
    s = msg_setup(&a, msg_mult, msg_zp, msg_qmin, msg_qmax);
    if (s != QG_OK) return s;
    a.acc_out = out;
    a.acc_stride = out_stride;
    return msg_run(&a, threads);
}

/* csr_spmm_msg fused with the output requantization of csr_spmm_requant (int8 out, same parameters). */
int csr_spmm_msg_requant(int bits, int64_t n_rows, int64_t n_src, int64_t F, const int64_t *indptr,
                         const void *indices, int idx64, const void *x, int64_t x_stride, int32_t zx, const void *w,
                         int w_bytes, int32_t zw, double msg_mult, int32_t msg_zp, int32_t msg_qmin,
                         int32_t msg_qmax, const double *mult, int mult_mode, const int32_t *zp, int zp_mode,
                         int32_t qmin, int32_t qmax, int relu, int8_t *out, int64_t out_stride, int threads) {
    spmm_args a;
    int s = spmm_setup(&a, bits, n_rows, n_src, F, indptr, indices, idx64, x, x_stride, zx, w, w_bytes, zw);
    if (s != QG_OK) return s;
    if (!out || out_stride < F || !mult || !zp || qmin > qmax || qmin < -128 || qmax > 127) return QG_EBADARG;
    s = msg_setup(&a, msg_mult, msg_zp, msg_qmin, msg_qmax);
    if (s != QG_OK) return s;
    a.q_out = out;
    a.q_stride = out_stride;
    a.rq.mult = mult;
    a.rq.mult_mode = mult_mode;
    a.rq.zp = zp;
    a.rq.zp_mode = zp_mode;
    a.rq.qmin = qmin;
    a.rq.qmax = qmax;
    a.rq.relu = relu;
    return msg_run(&a, threads);
}

/*
 * Aggregation fused with requantization: out[i, f] = clamp(nearbyint(acc[i, f] * m) + z, qmin, qmax) as int8,
 * m / z per tensor, per row (e.g. 1 / degree for mean) or per column (mode QG_PER_*). relu: lower clamp at z.
 */
int csr_spmm_requant(int bits, int64_t n_rows, int64_t n_src, int64_t F, const int64_t *indptr,
                     const void *indices, int idx64, const void *x, int64_t x_stride, int32_t zx, const void *w,
                     int w_bytes, int32_t zw, const double *mult, int mult_mode, const int32_t *zp, int zp_mode,
                     int32_t qmin, int32_t qmax, int relu, int8_t *out, int64_t out_stride, int threads) {
    spmm_args a;
    int s = spmm_setup(&a, bits, n_rows, n_src, F, indptr, indices, idx64, x, x_stride, zx, w, w_bytes, zw);
    if (s != QG_OK) return s;
    if (!out || out_stride < F || !mult || !zp || qmin > qmax || qmin < -128 || qmax > 127) return QG_EBADARG;
    a.q_out = out;
    a.q_stride = out_stride;
    a.rq.mult = mult;
    a.rq.mult_mode = mult_mode;
    a.rq.zp = zp;
    a.rq.zp_mode = zp_mode;
    a.rq.qmin = qmin;
    a.rq.qmax = qmax;
    a.rq.relu = relu;
    return spmm_run(&a, threads);
}

/*
 * Aggregation with a fused epilogue (see qg_epilogue): the int32 sums of each row (with the per-edge message
 * quantizer when msg_on) go through the epilogue's requantize stages and are stored as int8, packed 4/2-bit
 * rows or float32. No int32 [n_rows, F] intermediate.
 */
int csr_spmm_epilogue(int bits, int64_t n_rows, int64_t n_src, int64_t F, const int64_t *indptr,
                      const void *indices, int idx64, const void *x, int64_t x_stride, int32_t zx, const void *w,
                      int w_bytes, int32_t zw, int msg_on, double msg_mult, int32_t msg_zp, int32_t msg_qmin,
                      int32_t msg_qmax, const qg_epilogue *epi, int threads) {
    spmm_args a;
    int s = spmm_setup(&a, bits, n_rows, n_src, F, indptr, indices, idx64, x, x_stride, zx, w, w_bytes, zw);
    if (s != QG_OK) return s;
    if ((s = epilogue_check(epi, F)) != QG_OK) return s;
    a.epi = epi;
    if (!msg_on) return spmm_run(&a, threads);
    if ((s = msg_setup(&a, msg_mult, msg_zp, msg_qmin, msg_qmax)) != QG_OK) return s;
    return msg_run(&a, threads);
}

/*
 * Elementwise epilogue of int8 (in_bytes 1) or int32 (4) rows: requantize chains and packing in one pass,
 * e.g. requantize -> pack (a 4-bit GEMM output, when the GEMM is not fused) or requantize_affine chains.
 */
int rows_epilogue(const void *in, int in_bytes, int64_t rows, int64_t cols, int64_t in_stride,
                  const qg_epilogue *epi, int threads) {
    if (rows < 0 || cols < 0 || in_stride < cols || (in_bytes != 1 && in_bytes != 4)) return QG_EBADARG;
    if (rows == 0 || cols == 0) return QG_OK;
    int s = epilogue_check(epi, cols);
    if (s != QG_OK || !in) return s != QG_OK ? s : QG_EBADARG;
    const int T = qg_threads(threads);
    int status = QG_OK;
    (void)T;
#ifdef _OPENMP
#pragma omp parallel num_threads(T) if (rows * cols > 32768)
#endif
    {
        int32_t *t = (int32_t *)qg_alloc((size_t)cols * sizeof(int32_t));
        if (!t) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            status = QG_ENOMEM;
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t i = 0; i < rows; ++i) {
            if (!t) continue;
            if (in_bytes == 1) {
                const int8_t *restrict r = (const int8_t *)in + i * in_stride;
                for (int64_t f = 0; f < cols; ++f) t[f] = r[f];
            } else {
                memcpy(t, (const int32_t *)in + i * in_stride, (size_t)cols * sizeof(int32_t));
            }
            epilogue_row(epi, t, cols, i);
        }
        free(t);
    }
    return status;
}

/* ------------------------------------------------------------------------------------------------ */
/* requantize                                                                                       */

/*
 * out[i, f] = clamp(nearbyint(acc[i, f] * m) + z, qmin, qmax): round half to even under the default rounding
 * mode, the same as torch.round(acc.double() * m) + z followed by minimum(., qmax), maximum(., qmin).
 * out_bytes 1: int8 output (qmin/qmax within int8), 4: int32 output.
 */
int requantize_i32(const int32_t *acc, int64_t rows, int64_t cols, int64_t acc_stride, const double *mult,
                   int mult_mode, const int32_t *zp, int zp_mode, int32_t qmin, int32_t qmax, int relu, void *out,
                   int out_bytes, int64_t out_stride, int threads) {
    if (rows < 0 || cols < 0 || acc_stride < cols || out_stride < cols || qmin > qmax) return QG_EBADARG;
    if (rows == 0 || cols == 0) return QG_OK;
    if (!acc || !mult || !zp || !out || (out_bytes != 1 && out_bytes != 4)) return QG_EBADARG;
    if (out_bytes == 1 && (qmin < -128 || qmax > 127)) return QG_EBADARG;
    const qg_requant rq = {mult, mult_mode, zp, zp_mode, qmin, qmax, relu};
    const int T = qg_threads(threads);
    (void)T;
#ifdef _OPENMP
#pragma omp parallel for num_threads(T) schedule(static) if (rows * cols > 32768)
#endif
    for (int64_t i = 0; i < rows; ++i) {
        if (out_bytes == 1)
            requant_row_i8(acc + i * acc_stride, cols, i, &rq, (int8_t *)out + i * out_stride);
        else
            requant_row_i32(acc + i * acc_stride, cols, i, &rq, (int32_t *)out + i * out_stride);
    }
    return QG_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* elementwise: input quantize, affine requantize, packing                                           */

/*
 * out[i, f] = clamp(nearbyintf(x[i, f] / scale) + zp, qmin, qmax) as int8, all in float32 and in torch's
 * order (quantgraph::quantize: round(x / s) + z, then min with qmax, then max with qmin). Per tensor.
 */
int quantize_f32(const float *x, int64_t rows, int64_t cols, int64_t x_stride, float scale, float zp, float qmin,
                 float qmax, int8_t *out, int64_t out_stride, int threads) {
    if (rows < 0 || cols < 0 || x_stride < cols || out_stride < cols || !(qmin <= qmax)) return QG_EBADARG;
    if (qmin < -128.0f || qmax > 127.0f) return QG_EBADARG;
    if (rows == 0 || cols == 0) return QG_OK;
    if (!x || !out) return QG_EBADARG;
    const int T = qg_threads(threads);
    int nan = 0;
    (void)T;
#ifdef _OPENMP
#pragma omp parallel for num_threads(T) schedule(static) if (rows * cols > 32768) reduction(| : nan)
#endif
    for (int64_t i = 0; i < rows; ++i) {
        const float *restrict xr = x + i * x_stride;
        int8_t *restrict o = out + i * out_stride;
        for (int64_t f = 0; f < cols; ++f) {
            float v = nearbyintf(xr[f] / scale) + zp;
            nan |= v != v;
            v = v > qmax ? qmax : v;
            v = v < qmin ? qmin : v;
            o[f] = v == v ? (int8_t)(int32_t)v : (int8_t)0;
        }
    }
    return nan ? QG_ENAN : QG_OK;
}

/*
 * out = requantize(t) with t[i, f] = in[i, f] - zin + bias[f] (bias may be NULL), and t = max(t, 0) when
 * relu_in; in is int8 (in_bytes 1) or int32 (4). Requantize as requantize_i32 (relu there is not used).
 */
int requantize_affine(const void *in, int in_bytes, int64_t rows, int64_t cols, int64_t in_stride, int32_t zin,
                      const int32_t *bias, int relu_in, const double *mult, int mult_mode, const int32_t *zp,
                      int zp_mode, int32_t qmin, int32_t qmax, void *out, int out_bytes, int64_t out_stride,
                      int threads) {
    if (rows < 0 || cols < 0 || in_stride < cols || out_stride < cols || qmin > qmax) return QG_EBADARG;
    if (rows == 0 || cols == 0) return QG_OK;
    if (!in || !mult || !zp || !out || (in_bytes != 1 && in_bytes != 4) || (out_bytes != 1 && out_bytes != 4))
        return QG_EBADARG;
    if (out_bytes == 1 && (qmin < -128 || qmax > 127)) return QG_EBADARG;
    const qg_requant rq = {mult, mult_mode, zp, zp_mode, qmin, qmax, 0};
    const int T = qg_threads(threads);
    int status = QG_OK;
    (void)T;
#ifdef _OPENMP
#pragma omp parallel num_threads(T) if (rows * cols > 32768)
#endif
    {
        int32_t *t = (int32_t *)qg_alloc((size_t)cols * sizeof(int32_t));
        if (!t) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            status = QG_ENOMEM;
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t i = 0; i < rows; ++i) {
            if (!t) continue;
            if (in_bytes == 1) {
                const int8_t *restrict r = (const int8_t *)in + i * in_stride;
                for (int64_t f = 0; f < cols; ++f) t[f] = (int32_t)r[f] - zin;
            } else {
                const int32_t *restrict r = (const int32_t *)in + i * in_stride;
                for (int64_t f = 0; f < cols; ++f) t[f] = (int32_t)((uint32_t)r[f] - (uint32_t)zin);
            }
            if (bias)
                for (int64_t f = 0; f < cols; ++f) t[f] = (int32_t)((uint32_t)t[f] + (uint32_t)bias[f]);
            if (relu_in)
                for (int64_t f = 0; f < cols; ++f) t[f] = t[f] > 0 ? t[f] : 0;
            if (out_bytes == 1)
                requant_row_i8(t, cols, i, &rq, (int8_t *)out + i * out_stride);
            else
                requant_row_i32(t, cols, i, &rq, (int32_t *)out + i * out_stride);
        }
        free(t);
    }
    return status;
}

/* Pack int8 rows q[rows, cols] (values within the bits range) into the 4- or 2-bit feature layout. */
int pack_i8(const int8_t *q, int64_t rows, int64_t cols, int64_t q_stride, int bits, uint8_t *out,
            int64_t out_stride, int threads) {
    if (rows < 0 || cols < 0 || q_stride < cols || (bits != 4 && bits != 2)) return QG_EBADARG;
    const int per = 8 / bits;
    const int64_t nbytes = (cols + per - 1) / per;
    if (out_stride < nbytes) return QG_EBADARG;
    if (rows == 0) return QG_OK;
    if (!q || !out) return QG_EBADARG;
    const uint8_t mask = (uint8_t)((1u << bits) - 1u);
    const int T = qg_threads(threads);
    (void)T;
#ifdef _OPENMP
#pragma omp parallel for num_threads(T) schedule(static) if (rows * cols > 65536)
#endif
    for (int64_t i = 0; i < rows; ++i) {
        const int8_t *restrict r = q + i * q_stride;
        uint8_t *restrict o = out + i * out_stride;
        const int64_t full = cols / per;
        for (int64_t k = 0; k < full; ++k) {
            uint8_t b = 0;
            for (int j = 0; j < per; ++j) b |= (uint8_t)(((uint8_t)r[k * per + j] & mask) << (j * bits));
            o[k] = b;
        }
        for (int64_t k = full; k < out_stride; ++k) {
            uint8_t b = 0;
            for (int j = 0; j < per; ++j) {
                const int64_t f = k * per + j;
                if (f < cols) b |= (uint8_t)(((uint8_t)r[f] & mask) << (j * bits));
            }
            o[k] = b;
        }
    }
    return QG_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* int8 GEMM                                                                                        */

/*
 * Packed weight layout ("VNNI layout"): column blocks of 16 (jb = n / 16), grouped in panels of up to 4 blocks
 * (g = jb / 4, nb = min(4, Nb - 4 * g) blocks); a panel stores, for each quad of k (kb = k / 4), its nb blocks of
 * 64 bytes one after the other, each block holding B[k, n] at (n % 16) * 4 + k % 4:
 *     offset = g * Kb * 256 + kb * nb * 64 + (jb % 4) * 64 + (n % 16) * 4 + k % 4,   Kb = ceil(K / 4).
 * Padding is zero. colsum[n] = sum_k B[k, n]. After it (at byte gemm_i8_vnni_size) a row-major copy of B,
 * [K, 16 * Nb] with zero padding, for the sparse input rows of the GEMM (sparse_out).
 */
static int64_t gemm_i8_vnni_size(int64_t K, int64_t N) { return ((N + 15) / 16) * ((K + 3) / 4) * 64; }
int64_t gemm_i8_packed_size(int64_t K, int64_t N) { return gemm_i8_vnni_size(K, N) + K * 16 * ((N + 15) / 16); }

#define GEMM_NR 4 /* column blocks per panel */

/* Byte offset of the 64-byte block (jb, kb). */
static inline int64_t packed_block(int64_t jb, int64_t kb, int64_t Kb, int64_t Nb) {
    const int64_t g = jb / GEMM_NR;
    const int64_t nb = Nb - g * GEMM_NR < GEMM_NR ? Nb - g * GEMM_NR : GEMM_NR;
    return g * Kb * 64 * GEMM_NR + kb * nb * 64 + (jb % GEMM_NR) * 64;
}

/* layout 0: b is [K, N] (row stride ldb); layout 1: b is [N, K] (row stride ldb), i.e. a torch Linear weight. */
int gemm_i8_pack(const int8_t *b, int64_t K, int64_t N, int layout, int64_t ldb, int8_t *packed, int32_t *colsum) {
    if (!b || !packed || !colsum || K < 0 || N < 0 || (layout != 0 && layout != 1)) return QG_EBADARG;
    if ((layout == 0 && ldb < N) || (layout == 1 && ldb < K)) return QG_EBADARG;
    const int64_t Kb = (K + 3) / 4, Nb = (N + 15) / 16;
    memset(packed, 0, (size_t)gemm_i8_packed_size(K, N));
    for (int64_t n = 0; n < N; ++n) {
        uint32_t s = 0;
        for (int64_t k = 0; k < K; ++k) {
            const int8_t v = layout == 0 ? b[k * ldb + n] : b[n * ldb + k];
            packed[packed_block(n / 16, k / 4, Kb, Nb) + (n % 16) * 4 + k % 4] = v;
            packed[gemm_i8_vnni_size(K, N) + k * 16 * Nb + n] = v;
            s += (uint32_t)(int32_t)v;
        }
        colsum[n] = (int32_t)s;
    }
    return QG_OK;
}

#define GEMM_MR 6   /* rows per micro-kernel: 6 x 4 zmm accumulators + 4 weight blocks + 1 broadcast */
#define GEMM_MB 48  /* rows per parallel task, a multiple of GEMM_MR */

#if QG_VNNI
/*
 * Micro-kernel: the tile of C at GEMM_MR rows of the task buffer au (u8(a + 128), row stride Kp) and the NR column
 * blocks of one packed panel: GEMM_MR * NR zmm accumulators of vpdpbusd over the Kb quads of k, then
 * C = acc + colterm - zb * rowsum. Rows >= mr_valid are computed from the buffer's spare rows but not stored;
 * columns >= N are masked. NR is a constant at every call, so the accumulators live in registers.
 */
static QG_ALWAYS_INLINE void vnni_tile(const int NR, const uint8_t *au, int64_t Kp, const int8_t *pk, int64_t Kb,
                                       const uint32_t *colterm, const uint32_t *zbv, const uint32_t *rowsum,
                                       int64_t mr_valid, int32_t *c, int64_t ldc, int64_t n0, int64_t N) {
    __m512i acc[GEMM_MR][GEMM_NR];
    QG_UNROLL
    for (int i = 0; i < GEMM_MR; ++i) {
        QG_UNROLL
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
    }
    for (int64_t kb = 0; kb < Kb; ++kb) {
        __m512i b[GEMM_NR];
        QG_UNROLL
        for (int j = 0; j < NR; ++j) b[j] = _mm512_loadu_si512((const void *)(pk + (kb * NR + j) * 64));
        QG_UNROLL
        for (int i = 0; i < GEMM_MR; ++i) {
            int32_t a4;
            memcpy(&a4, au + i * Kp + 4 * kb, 4);
            const __m512i av = _mm512_set1_epi32(a4);
            QG_UNROLL
            for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], av, b[j]);
        }
    }
    QG_UNROLL
    for (int i = 0; i < GEMM_MR; ++i) {
        if (i < mr_valid) {
            const __m512i rs = _mm512_set1_epi32((int32_t)rowsum[i]);
            int32_t *crow = c + i * ldc;
            QG_UNROLL
            for (int j = 0; j < NR; ++j) {
                const int64_t n = n0 + 16 * j;
                const __m512i ct = _mm512_loadu_si512((const void *)(colterm + n));
                const __m512i zz = _mm512_loadu_si512((const void *)(zbv + n));
                const __m512i v = _mm512_sub_epi32(_mm512_add_epi32(acc[i][j], ct), _mm512_mullo_epi32(zz, rs));
                const int64_t left = N - n;
                const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
                _mm512_mask_storeu_epi32((void *)(crow + n), mask, v);
            }
        }
    }
}

/* All tiles of one task: mb rows (au, rowsum) times every panel of the packed weight. */
static void vnni_task(const uint8_t *au, int64_t Kp, int64_t mb, const int8_t *packed, int64_t Kb, int64_t Nb,
                      const uint32_t *colterm, const uint32_t *zbv, const uint32_t *rowsum, int32_t *c,
                      int64_t ldc, int64_t N) {
    for (int64_t j0 = 0; j0 < Nb; j0 += GEMM_NR) {
        const int64_t nr = Nb - j0 >= GEMM_NR ? GEMM_NR : Nb - j0;
        const int8_t *pk = packed + j0 * Kb * 64;
        for (int64_t i0 = 0; i0 < mb; i0 += GEMM_MR) {
            const uint8_t *ai = au + i0 * Kp;
            int32_t *ci = c + i0 * ldc;
            switch (nr) {
            case 4: vnni_tile(4, ai, Kp, pk, Kb, colterm, zbv, rowsum + i0, mb - i0, ci, ldc, 16 * j0, N); break;
            case 3: vnni_tile(3, ai, Kp, pk, Kb, colterm, zbv, rowsum + i0, mb - i0, ci, ldc, 16 * j0, N); break;
            case 2: vnni_tile(2, ai, Kp, pk, Kb, colterm, zbv, rowsum + i0, mb - i0, ci, ldc, 16 * j0, N); break;
            default: vnni_tile(1, ai, Kp, pk, Kb, colterm, zbv, rowsum + i0, mb - i0, ci, ldc, 16 * j0, N); break;
            }
        }
    }
}

/* au row = u8(a + 128) (a ^ 0x80) of K bytes; returns sum(a) modulo 2**32. */
static inline uint32_t vnni_row(const int8_t *a, int64_t K, uint8_t *au) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512i s = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 64) {
        const int64_t left = K - k;
        const __mmask64 mk = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
        const __m512i u = _mm512_maskz_mov_epi8(mk, _mm512_xor_si512(_mm512_maskz_loadu_epi8(mk, a + k), flip));
        _mm512_mask_storeu_epi8(au + k, mk, u);
        s = _mm512_add_epi64(s, _mm512_sad_epu8(u, _mm512_setzero_si512())); /* sums of a + 128 */
    }
    return (uint32_t)_mm512_reduce_add_epi64(s) - 128u * (uint32_t)K;
}
#endif

/* One float32 value quantized as quantize_f32 does (xq = {scale, zero point, qmin, qmax}). */
static inline int8_t quantize_one(float x, const float *xq) {
    float v = nearbyintf(x / xq[0]) + xq[1];
    v = v > xq[3] ? xq[3] : v;
    v = v < xq[2] ? xq[2] : v;
    return (int8_t)(int32_t)v;
}

/* One float32 row quantized as quantize_f32 does into q; returns q. The AVX2 body computes the same IEEE
 * operations eight at a time (min/max take their operands in the order that keeps a NaN as the scalar code
 * does; the int8 is the low byte of the truncated int32, as the scalar cast). */
static const int8_t *quantize_row(const float *restrict x, int64_t K, const float *xq, int8_t *restrict q) {
    int64_t k = 0;
#if defined(__AVX2__)
    const __m256 vs = _mm256_set1_ps(xq[0]), vz = _mm256_set1_ps(xq[1]);
    const __m256 vlo = _mm256_set1_ps(xq[2]), vhi = _mm256_set1_ps(xq[3]);
    const __m256i low = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12,
                                         -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    for (; k + 8 <= K; k += 8) {
        __m256 v = _mm256_div_ps(_mm256_loadu_ps(x + k), vs);
        v = _mm256_add_ps(_mm256_round_ps(v, _MM_FROUND_CUR_DIRECTION | _MM_FROUND_NO_EXC), vz);
        v = _mm256_min_ps(vhi, v); /* (qmax < v) ? qmax : v */
        v = _mm256_max_ps(vlo, v); /* (qmin > v) ? qmin : v */
        const __m256i b = _mm256_shuffle_epi8(_mm256_cvttps_epi32(v), low);
        const int32_t lo4 = _mm256_extract_epi32(b, 0), hi4 = _mm256_extract_epi32(b, 4);
        memcpy(q + k, &lo4, 4);
        memcpy(q + k + 4, &hi4, 4);
    }
#endif
    for (; k < K; ++k) q[k] = quantize_one(x[k], xq);
    return q;
}

/*
 * Sparse input rows of the GEMM: a row whose entries mostly equal the zero point za contributes only through
 * the others, C[n] = bias[n] + sum_{k: A[k] != za} (A[k] - za) * (B[k, n] - zb[n]), the same integers as the
 * dense sum (modulo 2**32 like it). The sparse_row_* scans return the count of such entries with their k and
 * A[k] - za, or -1 when the count exceeds cap (the row is then computed dense). Float rows are quantized only
 * where x != 0 (callers use this path only when 0 quantizes to za); their buffers hold K + 8 entries.
 */
static int64_t sparse_row_f32(const float *restrict x, int64_t K, const float *xq, int32_t za, int64_t cap,
                              const uint8_t *lut, int32_t *restrict cand, int32_t *restrict kk,
                              int32_t *restrict dd) {
    /* pass 1: the k with x != 0 (NaN included), left-packed 8 at a time without branches (lut[m]: the lanes
     * set in m, in order); pass 2: their quantized values, kept where != za */
    int64_t nc = 0, k = 0;
#if defined(__AVX2__) && defined(__GNUC__)
    const __m256 zero = _mm256_setzero_ps();
    for (; k + 8 <= K; k += 8) {
        const unsigned m = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + k), zero, _CMP_NEQ_UQ));
        int64_t lanes;
        memcpy(&lanes, lut + 8 * m, 8);
        const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32((int32_t)k),
                                             _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(lanes)));
        _mm256_storeu_si256((__m256i *)(cand + nc), idx);
        nc += __builtin_popcount(m);
    }
#else
    (void)lut;
#endif
    for (; k < K; ++k) {
        cand[nc] = (int32_t)k;
        nc += x[k] != 0.0f;
    }
    int64_t n = 0;
    for (int64_t c = 0; c < nc; ++c) {
        const int32_t j = cand[c];
        const int32_t d = (int32_t)quantize_one(x[j], xq) - za;
        kk[n] = j;
        dd[n] = d;
        n += d != 0;
    }
    return n > cap ? -1 : n;
}

static int64_t sparse_row_i8(const int8_t *restrict a, int64_t K, int32_t za, int64_t cap, int32_t *restrict kk,
                             int32_t *restrict dd) {
    int64_t n = 0;
    for (int64_t k = 0; k < K; ++k) {
        const int32_t d = (int32_t)a[k] - za;
        if (d) {
            if (n == cap) return -1;
            kk[n] = (int32_t)k;
            dd[n++] = d;
        }
    }
    return n;
}

/* crow[n] = bterm[n] + sum_j dd[j] * (brm[kk[j], n] - zb[n]) for n < N, brm = B row-major [K, Np]. */
static void sparse_out(const int32_t *kk, const int32_t *dd, int64_t nnz, const int8_t *brm, int64_t Np,
                       const uint32_t *bterm, const uint32_t *zbv, int64_t N, uint32_t *restrict acc,
                       int32_t *restrict crow) {
    uint32_t dsum = 0;
#if defined(__AVX2__)
    int narrow = Np <= 64;
    for (int64_t j = 0; j < nnz && narrow; ++j) narrow = dd[j] >= -255 && dd[j] <= 255;
    if (narrow) { /* up to 64 columns: 16-bit products widened into 8 ymm lanes of int32 held in registers */
        const int64_t nb = Np / 16;
        __m256i sum[8];
        QG_UNROLL
        for (int c = 0; c < 8; ++c) sum[c] = _mm256_setzero_si256();
        for (int64_t j = 0; j < nnz; ++j) {
            const __m256i dv = _mm256_set1_epi16((int16_t)dd[j]);
            const int8_t *br = brm + (int64_t)kk[j] * Np;
            dsum += (uint32_t)dd[j];
            QG_UNROLL
            for (int c = 0; c < 4; ++c) {
                if (c < nb) {
                    const __m256i p =
                        _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(br + 16 * c))), dv);
                    sum[2 * c] = _mm256_add_epi32(sum[2 * c], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(p)));
                    sum[2 * c + 1] = _mm256_add_epi32(sum[2 * c + 1], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(p, 1)));
                }
            }
        }
        QG_UNROLL
        for (int c = 0; c < 8; ++c)
            if (c < 2 * nb) _mm256_storeu_si256((__m256i *)(acc + 8 * c), sum[c]);
        for (int64_t f = 0; f < N; ++f) crow[f] = (int32_t)(acc[f] + bterm[f] - zbv[f] * dsum);
        return;
    }
#endif
    memset(acc, 0, (size_t)Np * sizeof(uint32_t));
    for (int64_t j = 0; j < nnz; ++j) {
        const int32_t d = dd[j];
        const int8_t *restrict br = brm + (int64_t)kk[j] * Np;
        dsum += (uint32_t)d;
        if (d >= -255 && d <= 255) { /* |d * b| <= 32640: exact 16-bit products */
            const int16_t d16 = (int16_t)d;
            QG_IVDEP
            for (int64_t f = 0; f < Np; ++f) acc[f] += (uint32_t)(int32_t)(int16_t)(d16 * (int16_t)br[f]);
        } else {
            const uint32_t ud = (uint32_t)d;
            QG_IVDEP
            for (int64_t f = 0; f < Np; ++f) acc[f] += ud * (uint32_t)(int32_t)br[f];
        }
    }
    for (int64_t f = 0; f < N; ++f) crow[f] = (int32_t)(acc[f] + bterm[f] - zbv[f] * dsum);
}

#if !QG_VNNI && defined(__AVX2__)
#define QG_AVX2_GEMM 1
#define AVX2_MR 6 /* rows per AVX2 micro-kernel: 6 x 2 ymm accumulators + 2 weight vectors + 1 broadcast */
/*
 * AVX2 micro-kernel (no VNNI): 8 output columns (half h of column block jb) of up to AVX2_MR rows of a16 (A as
 * int16, row stride Kp). Per quad of k, the packed block's two 16-byte quarters (4 columns x 4 k each) are
 * sign-extended to int16 and vpmaddwd'ed with the row's four int16 values broadcast: each int32 lane sums two
 * exact products (|a * b| <= 16384), lane pairs are added once at the end. C = acc + colterm - zb * rowsum.
 */
static QG_ALWAYS_INLINE void avx2_tile(const int MR, const int16_t *a16, int64_t Kp, const int8_t *pk,
                                       int64_t kb_stride, int64_t Kb, const uint32_t *colterm, const uint32_t *zbv,
                                       const uint32_t *rowsum, int64_t mr_valid, int32_t *c, int64_t ldc, int64_t n0,
                                       int64_t N) {
    __m256i acc0[AVX2_MR], acc1[AVX2_MR];
    QG_UNROLL
    for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm256_setzero_si256();
    for (int64_t kb = 0; kb < Kb; ++kb) {
        const __m256i b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(pk + kb * kb_stride)));
        const __m256i b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(pk + kb * kb_stride + 16)));
        QG_UNROLL
        for (int i = 0; i < MR; ++i) {
            int64_t a4;
            memcpy(&a4, a16 + i * Kp + 4 * kb, 8);
            const __m256i av = _mm256_set1_epi64x(a4);
            acc0[i] = _mm256_add_epi32(acc0[i], _mm256_madd_epi16(av, b0));
            acc1[i] = _mm256_add_epi32(acc1[i], _mm256_madd_epi16(av, b1));
        }
    }
    const int64_t left = N - n0;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t)(left < 8 ? left : 8)), lane);
    const __m256i ct = _mm256_loadu_si256((const __m256i *)(colterm + n0));
    const __m256i zz = _mm256_loadu_si256((const __m256i *)(zbv + n0));
    QG_UNROLL
    for (int i = 0; i < MR; ++i) {
        if (i < mr_valid) {
            /* hadd: [n0 n1 n4 n5 | n2 n3 n6 n7]; 0xD8 puts the 64-bit pairs in column order */
            const __m256i s = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc0[i], acc1[i]), 0xD8);
            const __m256i rs = _mm256_set1_epi32((int32_t)rowsum[i]);
            const __m256i v = _mm256_sub_epi32(_mm256_add_epi32(s, ct), _mm256_mullo_epi32(zz, rs));
            _mm256_maskstore_epi32(c + i * ldc + n0, mask, v);
        }
    }
}

/* All tiles of md rows of a16 against every 8-column half block of the packed weight. */
static void avx2_task(const int16_t *a16, int64_t Kp, int64_t md, const int8_t *packed, int64_t Kb, int64_t Nb,
                      const uint32_t *colterm, const uint32_t *zbv, const uint32_t *rowsum, int32_t *c, int64_t ldc,
                      int64_t N) {
    for (int64_t jb = 0; jb < Nb; ++jb) {
        const int64_t g = jb / GEMM_NR;
        const int64_t nb = Nb - g * GEMM_NR < GEMM_NR ? Nb - g * GEMM_NR : GEMM_NR;
        for (int64_t h = 0; h < 2 && 16 * jb + 8 * h < N; ++h) {
            const int8_t *pk = packed + packed_block(jb, 0, Kb, Nb) + 32 * h;
            const int64_t n0 = 16 * jb + 8 * h;
            for (int64_t i0 = 0; i0 < md; i0 += AVX2_MR)
                avx2_tile(AVX2_MR, a16 + i0 * Kp, Kp, pk, nb * 64, Kb, colterm, zbv, rowsum + i0, md - i0,
                          c + i0 * ldc, ldc, n0, N);
        }
    }
}
#else
#define QG_AVX2_GEMM 0
#endif

/* The GEMM behind gemm_i8 / gemm_i8_epilogue: int32 output c, or the epilogue epi per row. */
static int gemm_core(const int8_t *a, const float *af, const float *xq, const int64_t *row_index, int64_t M,
                     int64_t K, int64_t lda, int32_t za, const int8_t *packed, const int32_t *colsum, int64_t N,
                     const int32_t *zb, int zb_per_col, const int32_t *bias, int32_t *c, int64_t ldc,
                     const qg_epilogue *epi, int threads) {
    if (M < 0 || K < 0 || N < 0 || lda < K) return QG_EBADARG;
    if (M == 0 || N == 0) return QG_OK;
    if ((!a && !af) || !packed || !colsum || !zb || (!c && !epi)) return QG_EBADARG;
    const int64_t ldcb = 16 * ((N + 15) / 16); /* row stride of the per-task int32 tile buffer (epilogue) */
    const int64_t Kb = (K + 3) / 4, Kp = 4 * Kb, Nb = (N + 15) / 16;
    const uint32_t shift = QG_VNNI ? 128u : 0u;
    /* per-column constant: bias - (shift + za) * colsum + K * za * zb */
    uint32_t *colterm = (uint32_t *)qg_alloc((size_t)(16 * Nb) * sizeof(uint32_t));
    uint32_t *zbv = (uint32_t *)qg_alloc((size_t)(16 * Nb) * sizeof(uint32_t));
    if (!colterm || !zbv) {
        free(colterm);
        free(zbv);
        return QG_ENOMEM;
    }
    for (int64_t n = 0; n < 16 * Nb; ++n) {
        const uint32_t z = n < N ? (uint32_t)zb[zb_per_col ? n : 0] : 0u;
        const uint32_t cs = n < N ? (uint32_t)colsum[n] : 0u;
        const uint32_t bi = n < N && bias ? (uint32_t)bias[n] : 0u;
        zbv[n] = z;
        colterm[n] = bi - (shift + (uint32_t)za) * cs + (uint32_t)K * (uint32_t)za * z;
    }
    /* sparse rows (see sparse_row_f32): when a zero input quantizes to za, or for int8 rows of outputs wide enough
     * that the dense tile costs more than the scalar scan (N > 16), a row with at most cap entries != za is summed
     * from the rows of B (row-major copy brm) instead of the dense tile */
    const int64_t Np = 16 * Nb;
    const int64_t cap = QG_VNNI ? K / 8 : K / 4;
    const int8_t *brm = NULL;
    uint32_t *bterm = NULL;
    uint8_t lut[256 * 8]; /* lut[8 m + i]: the i-th lane set in the 8-bit mask m (sparse_row_f32) */
    for (int m = 0; m < 256; ++m)
        for (int i = 0, j = 0; i < 8; ++i) {
            lut[8 * m + i] = 0;
            if (m >> i & 1) lut[8 * m + j++] = (uint8_t)i;
        }
    if (cap > 0 && (af ? (int32_t)quantize_one(0.0f, xq) == za : Np >= 32)) {
        brm = packed + gemm_i8_vnni_size(K, N);
        bterm = (uint32_t *)qg_alloc((size_t)Np * sizeof(uint32_t));
        if (!bterm) {
            free(colterm);
            free(zbv);
            return QG_ENOMEM;
        }
        for (int64_t n = 0; n < Np; ++n) bterm[n] = n < N && bias ? (uint32_t)bias[n] : 0u;
    }
    const int64_t n_tasks = (M + GEMM_MB - 1) / GEMM_MB;
    const int T = qg_threads(threads);
    int status = QG_OK;
    (void)T;
#ifdef _OPENMP
#pragma omp parallel num_threads(T) if (n_tasks > 1)
#endif
    {
        /* the task's dense A rows: u8(a + 128) (VNNI), int16 (AVX2) or a itself, zero-padded to Kp, and their
         * plain sums */
        uint8_t *au = (uint8_t *)qg_alloc((size_t)(GEMM_MB * Kp) * (QG_AVX2_GEMM ? 2 : 1));
        uint32_t *rowsum = (uint32_t *)qg_alloc(GEMM_MB * sizeof(uint32_t));
        int32_t *cbuf = epi ? (int32_t *)qg_alloc((size_t)(GEMM_MB * ldcb) * sizeof(int32_t)) : NULL;
        int8_t *qrow = af ? (int8_t *)qg_alloc((size_t)K + 64) : NULL;
        int32_t *kk = brm ? (int32_t *)qg_alloc((size_t)(3 * (K + 8)) * sizeof(int32_t)) : NULL;
        uint32_t *sacc = brm ? (uint32_t *)qg_alloc((size_t)Np * sizeof(uint32_t)) : NULL;
        const int ok = au && rowsum && (!epi || cbuf) && (!af || qrow) && (!brm || (kk && sacc));
        if (!ok) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            status = QG_ENOMEM;
        } else {
            memset(au, 0, (size_t)(GEMM_MB * Kp) * (QG_AVX2_GEMM ? 2 : 1)); /* pad bytes (and spare rows) stay 0 */
            memset(rowsum, 0, GEMM_MB * sizeof(uint32_t));
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t t = 0; t < n_tasks; ++t) {
            if (!ok) continue;
            const int64_t m0 = t * GEMM_MB;
            const int64_t mb = M - m0 < GEMM_MB ? M - m0 : GEMM_MB;
            int32_t *cb = epi ? cbuf : c + m0 * ldc;
            const int64_t ldo = epi ? ldcb : ldc;
            int64_t i0 = 0; /* rows [0, i0) sparse, [i0, mb) dense (from the first row that is not sparse) */
            for (; brm && i0 < mb; ++i0) {
                const int64_t src = row_index ? row_index[m0 + i0] : m0 + i0;
                int32_t *dd = kk + (K + 8), *cand = kk + 2 * (K + 8);
                const int64_t nnz = af ? sparse_row_f32(af + src * lda, K, xq, za, cap, lut, cand, kk, dd)
                                       : sparse_row_i8(a + src * lda, K, za, cap, kk, dd);
                if (nnz < 0) break;
                sparse_out(kk, dd, nnz, brm, Np, bterm, zbv, N, sacc, cb + i0 * ldo);
            }
            const int64_t md = mb - i0;
            int32_t *cd = cb + i0 * ldo;
#if QG_VNNI
            for (int64_t i = 0; i < md; ++i) {
                const int64_t src = row_index ? row_index[m0 + i0 + i] : m0 + i0 + i;
                const int8_t *ar = af ? quantize_row(af + src * lda, K, xq, qrow) : a + src * lda;
                rowsum[i] = vnni_row(ar, K, au + i * Kp);
            }
            if (md) vnni_task(au, Kp, md, packed, Kb, Nb, colterm, zbv, rowsum, cd, ldo, N);
#elif QG_AVX2_GEMM
            int16_t *a16 = (int16_t *)au;
            for (int64_t i = 0; i < md; ++i) {
                const int64_t src = row_index ? row_index[m0 + i0 + i] : m0 + i0 + i;
                const int8_t *ar = af ? quantize_row(af + src * lda, K, xq, qrow) : a + src * lda;
                int16_t *restrict r16 = a16 + i * Kp;
                uint32_t sum = 0;
                for (int64_t k = 0; k < K; ++k) {
                    r16[k] = (int16_t)ar[k];
                    sum += (uint32_t)(int32_t)ar[k];
                }
                rowsum[i] = sum;
            }
            if (md) avx2_task(a16, Kp, md, packed, Kb, Nb, colterm, zbv, rowsum, cd, ldo, N);
#else
            for (int64_t i = 0; i < md; ++i) {
                const int64_t src = row_index ? row_index[m0 + i0 + i] : m0 + i0 + i;
                const int8_t *ar = af ? quantize_row(af + src * lda, K, xq, qrow) : a + src * lda;
                uint32_t s = 0;
                for (int64_t k = 0; k < K; ++k) {
                    au[i * Kp + k] = (uint8_t)ar[k];
                    s += (uint32_t)(int32_t)ar[k];
                }
                rowsum[i] = s;
            }
            for (int64_t i = 0; i < md; ++i) {
                const int8_t *ar = (const int8_t *)(au + i * Kp); /* shift == 0: the bytes are A itself */
                int32_t *crow = cd + i * ldo;
                for (int64_t jb = 0; jb < Nb; ++jb) {
                    uint32_t acc[16] = {0};
                    for (int64_t kb = 0; kb < Kb; ++kb) {
                        const int8_t *pk = packed + packed_block(jb, kb, Kb, Nb);
                        for (int j = 0; j < 16; ++j)
                            for (int q = 0; q < 4; ++q)
                                acc[j] += (uint32_t)((int32_t)ar[4 * kb + q] * (int32_t)pk[j * 4 + q]);
                    }
                    for (int j = 0; j < 16 && jb * 16 + j < N; ++j) {
                        const int64_t n = jb * 16 + j;
                        crow[n] = (int32_t)(acc[j] + colterm[n] - zbv[n] * rowsum[i]);
                    }
                }
            }
#endif
            if (epi)
                for (int64_t i = 0; i < mb; ++i) epilogue_row(epi, cbuf + i * ldcb, N, m0 + i);
        }
        free(au);
        free(rowsum);
        free(cbuf);
        free(qrow);
        free(kk);
        free(sacc);
    }
    free(bterm);
    free(colterm);
    free(zbv);
    return status;
}

/*
 * C[M, N] (row stride ldc) = (A - za) @ (B - zb) + bias, A int8 [M, K] (row stride lda), B given packed by
 * gemm_i8_pack with its colsum; zb per tensor (zb_per_col = 0, zb[0]) or per column (zb[N]); bias int32 [N]
 * or NULL. All arithmetic modulo 2**32 (exact whenever C fits in int32). With AVX512-VNNI: vpdpbusd on
 * u8(A + 128) x s8(B) in register tiles, corrected by 128 * colsum; else plain C.
 */
int gemm_i8(const int8_t *a, int64_t M, int64_t K, int64_t lda, int32_t za, const int8_t *packed,
            const int32_t *colsum, int64_t N, const int32_t *zb, int zb_per_col, const int32_t *bias, int32_t *c,
            int64_t ldc, int threads) {
    if (ldc < N || (M > 0 && N > 0 && !c)) return QG_EBADARG;
    return gemm_core(a, NULL, NULL, NULL, M, K, lda, za, packed, colsum, N, zb, zb_per_col, bias, c, ldc, NULL,
                     threads);
}

/*
 * gemm_i8 with a fused epilogue (requantize chain, packing; see qg_epilogue) instead of the int32 output, and
 * optionally the input quantize fused in front: af (float32 [*, K], row stride lda) quantized per row as
 * quantize_f32 with xq = {scale, zero point, qmin, qmax}, in place of a. row_index (or NULL): output row m
 * reads input row row_index[m] (a node renumbering applied on the fly).
 */
int gemm_i8_epilogue(const int8_t *a, const float *af, const float *xq, const int64_t *row_index, int64_t M,
                     int64_t K, int64_t lda, int32_t za, const int8_t *packed, const int32_t *colsum, int64_t N,
                     const int32_t *zb, int zb_per_col, const int32_t *bias, const qg_epilogue *epi, int threads) {
    const int s = epilogue_check(epi, N);
    if (s != QG_OK) return s;
    if (af && (!xq || !(xq[0] > 0.0f) || !(xq[2] <= xq[3]) || xq[2] < -128.0f || xq[3] > 127.0f)) return QG_EBADARG;
    return gemm_core(a, af, xq, row_index, M, K, lda, za, packed, colsum, N, zb, zb_per_col, bias, NULL, 0, epi,
                     threads);
}

/* ------------------------------------------------------------------------------------------------ */
/* mixed-bit node rows (A2Q): rows grouped by stored width, each group packed at its width            */

/*
 * Storage: group g in {0, 1, 2, 3} holds its rows at width {8, 4, 2, 0} bits (int8 values or the packed
 * fields of pack_i8), row k of group g at data + group_base[g] + k * group_stride[g]; node j is row
 * row_index[j] of group row_group[j]. Width 0 holds rows whose values are all 0 (A2Q's 1-bit rows:
 * qmax = 2^0 - 1 = 0): no bytes.
 */
static const int QG_MIXED_WIDTH[4] = {8, 4, 2, 0};

/* t4[b] / t2[b]: the 2 / 4 signed fields of byte b as int8 values, in field order */
typedef struct {
    int8_t t4[256][2];
    int8_t t2[256][4];
} qg_mixed_tables;

static void mixed_tables(qg_mixed_tables *t) {
    for (int b = 0; b < 256; b++) {
        for (int j = 0; j < 2; j++) t->t4[b][j] = (int8_t)((((b >> (4 * j)) & 15) ^ 8) - 8);
        for (int j = 0; j < 4; j++) t->t2[b][j] = (int8_t)((((b >> (2 * j)) & 3) ^ 2) - 2);
    }
}

/* tmp[0..F) = the int8 values of one stored row of width 8, 4 or 2 (table look-ups, one per byte). */
static inline const int8_t *mixed_row_i8(const uint8_t *restrict r, int width, int64_t F, const qg_mixed_tables *t,
                                         int8_t *restrict tmp) {
    if (width == 8) return (const int8_t *)r;
    if (width == 4) {
        const int64_t bytes = (F + 1) / 2;
        for (int64_t k = 0; k < bytes; k++) memcpy(tmp + 2 * k, t->t4[r[k]], 2);
    } else {
        const int64_t bytes = (F + 3) / 4;
        for (int64_t k = 0; k < bytes; k++) memcpy(tmp + 4 * k, t->t2[r[k]], 4);
    }
    return tmp;
}

/*
 * out[i, f] = sum_{e in row i, edge order} (float)q_j[f] * (row_scale[j] * w[e]), j = indices[e], over the
 * mixed-bit storage above (w NULL: weight 1, the coefficient is the scale and each term is the IR's
 * dequantized value q * s exactly). float32; one thread per output row, so the terms are added in CSR (edge)
 * order whatever the thread count, as a sequential scatter-add adds them. Width-0 rows add nothing.
 */
int csr_spmm_mixed_f32(int64_t n_rows, int64_t n_src, int64_t F, const int64_t *indptr, const void *indices,
                       int idx64, const float *w, const uint8_t *data, const int64_t *group_base,
                       const int64_t *group_stride, const uint8_t *row_group, const int32_t *row_index,
                       const float *row_scale, float *out, int64_t out_stride, int threads) {
    if (n_rows < 0 || n_src < 0 || F < 0 || !indptr || !group_base || !group_stride || out_stride < F) return QG_EBADARG;
    if (n_rows && (!out || (indptr[n_rows] && !indices))) return QG_EBADARG;
    if (n_src && (!row_group || !row_index || !row_scale)) return QG_EBADARG;
    for (int g = 0; g < 3; g++)
        if (group_stride[g] < (F * QG_MIXED_WIDTH[g] + 7) / 8) return QG_EBADARG;
    const int T = qg_threads(threads);
    const int64_t padded = (F + 3) / 4 * 4 + 64; /* a row's fields plus the pad fields of its last byte */
    int8_t *buf = (int8_t *)qg_alloc((size_t)T * (size_t)padded);
    qg_mixed_tables tables;
    if (!buf) return QG_ENOMEM;
    mixed_tables(&tables);
#pragma omp parallel num_threads(T) if (n_rows * F > 32768)
    {
#ifdef _OPENMP
        int8_t *tmp = buf + (size_t)omp_get_thread_num() * (size_t)padded;
#else
        int8_t *tmp = buf;
#endif
#pragma omp for schedule(dynamic, 64)
        for (int64_t i = 0; i < n_rows; i++) {
            float *restrict o = out + i * out_stride;
            for (int64_t f = 0; f < F; f++) o[f] = 0.0f;
            for (int64_t e = indptr[i]; e < indptr[i + 1]; e++) {
                const int64_t j = idx64 ? ((const int64_t *)indices)[e] : (int64_t)((const int32_t *)indices)[e];
                const int g = row_group[j] & 3;
                if (g == 3) continue;
                const uint8_t *r = data + group_base[g] + (int64_t)row_index[j] * group_stride[g];
                const int8_t *restrict q = mixed_row_i8(r, QG_MIXED_WIDTH[g], F, &tables, tmp);
                const float c = w ? row_scale[j] * w[e] : row_scale[j];
                for (int64_t f = 0; f < F; f++) o[f] += (float)q[f] * c;
            }
        }
    }
    free(buf);
    return QG_OK;
}

/* ------------------------------------------------------------------------------------------------ */

/* CSR of E edges (src[e] -> dst[e], ids in [0, n)) with rows = targets: indptr[n + 1], indices[E] (int32 or
 * int64: idx64) = sources, order[E] = the edge each CSR slot came from. A stable counting sort (O(n + E)):
 * the edges of a row keep their input order, as numpy's argsort(dst, kind="stable") orders them. */
int csr_build(const int64_t *src, const int64_t *dst, int64_t E, int64_t n, int64_t *indptr, void *indices,
              int idx64, int64_t *order) {
    if (E < 0 || n < 0 || !indptr || (E > 0 && (!src || !dst || !indices || !order))) return QG_EBADARG;
    for (int64_t i = 0; i <= n; ++i) indptr[i] = 0;
    for (int64_t e = 0; e < E; ++e) {
        const int64_t d = dst[e];
        if (d < 0 || d >= n || src[e] < 0 || src[e] >= n) return QG_EBADARG;
        indptr[d + 1]++;
    }
    for (int64_t i = 0; i < n; ++i) indptr[i + 1] += indptr[i];
    int64_t *cursor = (int64_t *)qg_alloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
    if (!cursor) return QG_ENOMEM;
    for (int64_t i = 0; i < n; ++i) cursor[i] = indptr[i];
    if (idx64) {
        int64_t *restrict out = (int64_t *)indices;
        for (int64_t e = 0; e < E; ++e) {
            const int64_t at = cursor[dst[e]]++;
            out[at] = src[e];
            order[at] = e;
        }
    } else {
        int32_t *restrict out = (int32_t *)indices;
        for (int64_t e = 0; e < E; ++e) {
            const int64_t at = cursor[dst[e]]++;
            out[at] = (int32_t)src[e];
            order[at] = e;
        }
    }
    free(cursor);
    return QG_OK;
}

/* ------------------------------------------------------------------------------------------------ */

/* info[0] = ABI version, info[1] = built with OpenMP, info[2] = VNNI GEMM path, info[3] = default threads */
void qg_info(int32_t *info) {
    info[0] = QG_ABI_VERSION;
#ifdef _OPENMP
    info[1] = 1;
    info[3] = omp_get_max_threads();
#else
    info[1] = 0;
    info[3] = 1;
#endif
    info[2] = QG_VNNI;
}
