/*
 * quantgraph native integer kernels: C99, optional OpenMP, no dependency on PyTorch.
 *
 * Exported entry points (all return 0 on success, QG_EBADARG or QG_ENOMEM on failure):
 *
 *   csr_spmm_i8 / csr_spmm_i4 / csr_spmm_i2   CSR aggregation into int32:
 *       acc[i, f] = sum_{e in row i} (w[e] - zw) * (x[indices[e], f] - zx)     (w absent: weight 1)
 *   csr_spmm_requant                         the same for any width, requantized to int8 in the row loop
 *   requantize_i32                           out = clamp(nearbyint(acc * m) + z, qmin, qmax)
 *   gemm_i8_pack / gemm_i8                   int8 x int8 -> int32 matmul with zero points
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

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define QG_VNNI 1
#else
#define QG_VNNI 0
#endif

#if defined(__GNUC__)
#define QG_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)
#else
#define QG_PREFETCH(p) ((void)0)
#endif

/* The lane arrays of one row never alias the feature rows: no run-time alias checks (they also block
 * vectorizing short rows with the epilogue's narrower vectors). */
#if defined(__clang__)
#define QG_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define QG_IVDEP _Pragma("GCC ivdep")
#else
#define QG_IVDEP
#endif

#define QG_ABI_VERSION 1
#define QG_OK 0
#define QG_EBADARG (-1)
#define QG_ENOMEM (-2)

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
/* CSR aggregation                                                                                  */

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

/*
 * Natural-order int32 row from the lanes: lane minus (offset + zx) * sum(w), where offset undoes the
 * unsigned view of packed fields. Packed lanes are interleaved back: feature j + k * per is lane j * Fb + k.
 */
#define QG_FINISH_PACKED(LANE_T)                                                                          \
    do {                                                                                                  \
        const int64_t F = a->F, Fb = a->x_stride;                                                         \
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

static void finish_wide(const spmm_args *a, const uint32_t *restrict lanes, uint32_t corr, int32_t *restrict out) {
    if (a->bits == 8) {
        for (int64_t f = 0; f < a->F; ++f) out[f] = (int32_t)(lanes[f] - corr);
        return;
    }
    QG_FINISH_PACKED(uint32_t);
}

static void finish_narrow(const spmm_args *a, const void *restrict part, uint32_t corr, int32_t *restrict out) {
    if (a->bits == 8) {
        const uint16_t *restrict p = (const uint16_t *)part; /* signed 16-bit sums */
        for (int64_t f = 0; f < a->F; ++f) out[f] = (int32_t)((uint32_t)(int32_t)(int16_t)p[f] - corr);
        return;
    }
    const uint8_t *restrict lanes = (const uint8_t *)part;
    QG_FINISH_PACKED(uint8_t);
}

static void spmm_rows(const spmm_args *a, int64_t r0, int64_t r1, uint32_t *acc, void *part, int32_t *row) {
    const uint32_t offset = a->bits == 8 ? 0u : (a->bits == 4 ? 8u : 2u);
    const uint32_t shift = offset + (uint32_t)a->zx;
    /* weighted packed rows: edges per 16-bit partial sum (<= 1: use 32-bit lanes throughout) */
    const int64_t narrow_flush =
        (a->w8 || a->w16) && a->bits != 8 ? 32767 / (weight_bound(a) * (a->bits == 4 ? 15 : 3) + 1) : 0;
    for (int64_t i = r0; i < r1; ++i) {
        const int64_t e0 = a->indptr[i], e1 = a->indptr[i + 1];
        int32_t *dst = a->acc_out ? a->acc_out + i * a->acc_stride : row;
        if (a->w8 || a->w16) {
            const uint32_t wsum = narrow_flush > 1
                                      ? accumulate_weighted_narrow(a, e0, e1, acc, (int16_t *)part, narrow_flush)
                                      : accumulate_weighted(a, e0, e1, acc);
            finish_wide(a, acc, shift * wsum, dst);
        } else if (accumulate_unweighted(a, e0, e1, acc, part)) {
            finish_narrow(a, part, shift * (uint32_t)(e1 - e0), dst);
        } else {
            finish_wide(a, acc, shift * (uint32_t)(e1 - e0), dst);
        }
        if (a->q_out) requant_row_i8(dst, a->F, i, &a->rq, a->q_out + i * a->q_stride);
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
    if (a->x_stride < (a->F * a->bits + 7) / 8 || (!a->acc_out && !a->q_out)) return QG_EBADARG;
    if (a->n_rows == 0 || a->F == 0) return QG_OK;
    const int64_t L = lanes_of(a);
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
/* int8 GEMM                                                                                        */

/*
 * Packed weight layout ("VNNI layout"): B[k, n] at ((n / 16) * Kb + k / 4) * 64 + (n % 16) * 4 + k % 4 with
 * Kb = ceil(K / 4); padding is zero. colsum[n] = sum_k B[k, n].
 */
int64_t gemm_i8_packed_size(int64_t K, int64_t N) { return ((N + 15) / 16) * ((K + 3) / 4) * 64; }

/* layout 0: b is [K, N] (row stride ldb); layout 1: b is [N, K] (row stride ldb), i.e. a torch Linear weight. */
int gemm_i8_pack(const int8_t *b, int64_t K, int64_t N, int layout, int64_t ldb, int8_t *packed, int32_t *colsum) {
    if (!b || !packed || !colsum || K < 0 || N < 0 || (layout != 0 && layout != 1)) return QG_EBADARG;
    if ((layout == 0 && ldb < N) || (layout == 1 && ldb < K)) return QG_EBADARG;
    const int64_t Kb = (K + 3) / 4;
    memset(packed, 0, (size_t)gemm_i8_packed_size(K, N));
    for (int64_t n = 0; n < N; ++n) {
        uint32_t s = 0;
        for (int64_t k = 0; k < K; ++k) {
            const int8_t v = layout == 0 ? b[k * ldb + n] : b[n * ldb + k];
            packed[((n / 16) * Kb + k / 4) * 64 + (n % 16) * 4 + k % 4] = v;
            s += (uint32_t)(int32_t)v;
        }
        colsum[n] = (int32_t)s;
    }
    return QG_OK;
}

#define GEMM_MB 32 /* rows per parallel task */

#if QG_VNNI
/* C[mr rows, 16 * nr cols] block: up to 4 x 4 zmm accumulators of u8(a + 128) . s8(b) dot products. */
static inline void vnni_block(const uint8_t *au, int64_t lda_u, int mr, const int8_t *pk, int64_t Kb, int nr,
                              __m512i acc[4][4]) {
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_si512();
    if (mr == 4 && nr == 4) {
        for (int64_t kb = 0; kb < Kb; ++kb) {
            const __m512i b0 = _mm512_loadu_si512((const void *)(pk + (0 * Kb + kb) * 64));
            const __m512i b1 = _mm512_loadu_si512((const void *)(pk + (1 * Kb + kb) * 64));
            const __m512i b2 = _mm512_loadu_si512((const void *)(pk + (2 * Kb + kb) * 64));
            const __m512i b3 = _mm512_loadu_si512((const void *)(pk + (3 * Kb + kb) * 64));
            for (int i = 0; i < 4; ++i) {
                int32_t a4;
                memcpy(&a4, au + i * lda_u + 4 * kb, 4);
                const __m512i av = _mm512_set1_epi32(a4);
                acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], av, b0);
                acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], av, b1);
                acc[i][2] = _mm512_dpbusd_epi32(acc[i][2], av, b2);
                acc[i][3] = _mm512_dpbusd_epi32(acc[i][3], av, b3);
            }
        }
        return;
    }
    for (int64_t kb = 0; kb < Kb; ++kb) {
        for (int j = 0; j < nr; ++j) {
            const __m512i bj = _mm512_loadu_si512((const void *)(pk + ((int64_t)j * Kb + kb) * 64));
            for (int i = 0; i < mr; ++i) {
                int32_t a4;
                memcpy(&a4, au + i * lda_u + 4 * kb, 4);
                acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], _mm512_set1_epi32(a4), bj);
            }
        }
    }
}
#endif

/*
 * C[M, N] (row stride ldc) = (A - za) @ (B - zb) + bias, A int8 [M, K] (row stride lda), B given packed by
 * gemm_i8_pack with its colsum; zb per tensor (zb_per_col = 0, zb[0]) or per column (zb[N]); bias int32 [N]
 * or NULL. With AVX512-VNNI: vpdpbusd on u8(A + 128) x s8(B), corrected by 128 * colsum; else plain C.
 */
int gemm_i8(const int8_t *a, int64_t M, int64_t K, int64_t lda, int32_t za, const int8_t *packed,
            const int32_t *colsum, int64_t N, const int32_t *zb, int zb_per_col, const int32_t *bias, int32_t *c,
            int64_t ldc, int threads) {
    if (M < 0 || K < 0 || N < 0 || lda < K || ldc < N) return QG_EBADARG;
    if (M == 0 || N == 0) return QG_OK;
    if (!a || !packed || !colsum || !zb || !c) return QG_EBADARG;
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
    const int64_t n_tasks = (M + GEMM_MB - 1) / GEMM_MB;
    const int T = qg_threads(threads);
    int status = QG_OK;
    (void)T;
#ifdef _OPENMP
#pragma omp parallel num_threads(T) if (n_tasks > 1)
#endif
    {
        /* A rows as u8(a ^ shift) padded with zeros to Kp, and their plain sums */
        uint8_t *au = (uint8_t *)qg_alloc((size_t)(GEMM_MB * Kp));
        uint32_t *rowsum = (uint32_t *)qg_alloc(GEMM_MB * sizeof(uint32_t));
        const int ok = au && rowsum;
        if (!ok) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            status = QG_ENOMEM;
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t t = 0; t < n_tasks; ++t) {
            if (!ok) continue;
            const int64_t m0 = t * GEMM_MB;
            const int64_t mb = M - m0 < GEMM_MB ? M - m0 : GEMM_MB;
            memset(au, 0, (size_t)(GEMM_MB * Kp));
            for (int64_t i = 0; i < mb; ++i) {
                const int8_t *ar = a + (m0 + i) * lda;
                uint32_t s = 0;
                for (int64_t k = 0; k < K; ++k) {
                    au[i * Kp + k] = (uint8_t)((uint8_t)ar[k] ^ (uint8_t)shift);
                    s += (uint32_t)(int32_t)ar[k];
                }
                rowsum[i] = s;
            }
#if QG_VNNI
            for (int64_t i0 = 0; i0 < mb; i0 += 4) {
                const int mr = mb - i0 < 4 ? (int)(mb - i0) : 4;
                for (int64_t j0 = 0; j0 < Nb; j0 += 4) {
                    const int nr = Nb - j0 < 4 ? (int)(Nb - j0) : 4;
                    __m512i acc[4][4];
                    vnni_block(au + i0 * Kp, Kp, mr, packed + j0 * Kb * 64, Kb, nr, acc);
                    for (int i = 0; i < mr; ++i) {
                        const __m512i rs = _mm512_set1_epi32((int32_t)rowsum[i0 + i]);
                        int32_t *crow = c + (m0 + i0 + i) * ldc;
                        for (int j = 0; j < nr; ++j) {
                            const int64_t n0 = (j0 + j) * 16;
                            const __m512i ct = _mm512_loadu_si512((const void *)(colterm + n0));
                            const __m512i zz = _mm512_loadu_si512((const void *)(zbv + n0));
                            __m512i v = _mm512_add_epi32(acc[i][j], ct);
                            v = _mm512_sub_epi32(v, _mm512_mullo_epi32(zz, rs));
                            const int64_t left = N - n0;
                            const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
                            _mm512_mask_storeu_epi32((void *)(crow + n0), mask, v);
                        }
                    }
                }
            }
#else
            for (int64_t i = 0; i < mb; ++i) {
                const int8_t *ar = (const int8_t *)(au + i * Kp); /* shift == 0: the bytes are A itself */
                int32_t *crow = c + (m0 + i) * ldc;
                for (int64_t jb = 0; jb < Nb; ++jb) {
                    uint32_t acc[16] = {0};
                    const int8_t *pk = packed + jb * Kb * 64;
                    for (int64_t kb = 0; kb < Kb; ++kb)
                        for (int j = 0; j < 16; ++j)
                            for (int q = 0; q < 4; ++q)
                                acc[j] += (uint32_t)((int32_t)ar[4 * kb + q] * (int32_t)pk[kb * 64 + j * 4 + q]);
                    for (int j = 0; j < 16 && jb * 16 + j < N; ++j) {
                        const int64_t n = jb * 16 + j;
                        crow[n] = (int32_t)(acc[j] + colterm[n] - zbv[n] * rowsum[i]);
                    }
                }
            }
#endif
        }
        free(au);
        free(rowsum);
    }
    free(colterm);
    free(zbv);
    return status;
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
