/*
 * Selective scan (mamba-ssm ``selective_scan_fn`` semantics) on the CPU, forward and backward.
 *
 * Built at first use by vmunet_monai/ops/cpu_kernel.py and called through ctypes with the data
 * pointers of contiguous tensors. Layouts (row-major):
 *   u, delta, z, y, du, ddelta, dz: (batch, dim, L)
 *   A: (dim, N)      D, delta_bias: (dim,)
 *   B, C: (dim, N) when their group count is 0 ("constant"), else (batch, G, N, L)
 *   last_state: (batch, dim, N)   checkpoints: (batch, dim, nchunks, N), the state before each chunk
 * Cross mode (SS2D): dim = 4 * Di scan channels, direction k owning channels k*Di .. k*Di+Di-1 and
 * group k of B/C; u, dy, y, du are (batch, Di, L) maps read in direction k's order (0: row-major,
 * 1: column-major, 2 and 3: those reversed), delta/B/C are per direction but laid out on the map,
 * and y is the sum of the four directions' outputs put back on the map (no z, no last state).
 *
 * Work is split into (batch, tile) items, a tile being up to SS_TILE channels that share one group
 * of B and of C. Inside a tile every time step is computed for all its channels at once, so the
 * inner loops run over channels with unit stride and the compiler turns them into SIMD code; the
 * N state vectors are independent, which hides the latency of the recurrence. The exponentials
 * use our own range-reduced polynomial so they vectorise without -ffast-math or a vector libm.
 *
 * Threads: plain pthreads take items from a shared atomic counter. Gradients that several items
 * add into (grouped B/C rows, per-channel A/D/bias) are accumulated locally per item and added to
 * the output under a mutex of that output block, so the result is race-free.
 *
 * This file includes itself twice (float and double); the part below SS_BODY is the generic body.
 */
#ifndef SS_BODY

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SS_ABI_VERSION 2
#define SS_TILE 16 /* channels per tile: one 512-bit vector of floats */
#define SS_LN2 0.693147180559945309417232121458
#define SS_LOG2E 1.44269504088896340735992468100
#define SS_SQRT2 1.41421356237309504880168872421

typedef struct {
    int64_t batch, dim, length, nstate;
    int64_t b_groups, c_groups; /* 0: constant (dim, N); else (batch, G, N, L) */
    int64_t chunk;              /* time steps per chunk (checkpoint spacing) */
    int64_t softplus;           /* apply softplus to delta + delta_bias */
    int64_t nthreads;
    int64_t cross, height, width; /* cross: SS2D's four directions of a height x width map (see below) */
    const void *u, *delta, *A, *B, *C, *D, *z, *delta_bias; /* D, z, delta_bias may be NULL */
    void *y, *last_state, *checkpoints;                      /* last_state, checkpoints may be NULL */
    const void *dy, *dlast;                                  /* backward only; dlast may be NULL */
    void *du, *ddelta, *dz, *dA, *dB, *dC, *dD, *ddelta_bias; /* backward; accumulated ones are zeroed */
} ss_args;

typedef struct {
    int64_t d0, width;
} ss_tile;

/* ln(2)^i / i!: Taylor coefficients of 2^f = e^(f ln 2) */
#define SS_C1 SS_LN2
#define SS_C2 (SS_C1 * SS_LN2 / 2.0)
#define SS_C3 (SS_C2 * SS_LN2 / 3.0)
#define SS_C4 (SS_C3 * SS_LN2 / 4.0)
#define SS_C5 (SS_C4 * SS_LN2 / 5.0)
#define SS_C6 (SS_C5 * SS_LN2 / 6.0)
#define SS_C7 (SS_C6 * SS_LN2 / 7.0)
#define SS_C8 (SS_C7 * SS_LN2 / 8.0)
#define SS_C9 (SS_C8 * SS_LN2 / 9.0)
#define SS_C10 (SS_C9 * SS_LN2 / 10.0)
#define SS_C11 (SS_C10 * SS_LN2 / 11.0)
#define SS_C12 (SS_C11 * SS_LN2 / 12.0)
#define SS_C13 (SS_C12 * SS_LN2 / 13.0)
static const double ss_exp2_coef[14] = {1.0,   SS_C1, SS_C2, SS_C3,  SS_C4,  SS_C5,  SS_C6,
                                        SS_C7, SS_C8, SS_C9, SS_C10, SS_C11, SS_C12, SS_C13};
/* 1 / (2i + 1): the series atanh(s) / s = sum s^(2i) / (2i + 1) */
static const double ss_atanh_coef[12] = {1.0,       1.0 / 3,  1.0 / 5,  1.0 / 7,  1.0 / 9,  1.0 / 11,
                                         1.0 / 13,  1.0 / 15, 1.0 / 17, 1.0 / 19, 1.0 / 21, 1.0 / 23};

typedef struct ss_job ss_job;
typedef void (*ss_item_fn)(ss_job *job, char *scratch, int64_t b, int64_t tile_index);

struct ss_job {
    const ss_args *a;
    ss_tile *tiles;
    int64_t ntiles, nitems, next;
    int failed;
    size_t scratch_bytes;
    pthread_mutex_t *locks; /* [batch*gB (B rows)] [batch*gC (C rows)] [ntiles] */
    ss_item_fn fn;
    int64_t map_dim; /* channels of u / y: Di in cross mode, else dim */
    int32_t *pos;    /* cross mode: map position of step s of direction k at pos[k * L + s] */
    /* B, C as the items read them and dB, dC as they write them: the arguments' buffers, or in cross
     * mode copies in scan order (made once here instead of once per channel tile) */
    const void *B, *C;
    void *dB, *dC;
    size_t real_size;
};

int ss_abi_version(void) { return SS_ABI_VERSION; }

int ss_tile_width(void) { return SS_TILE; }

static void *ss_worker(void *arg) {
    ss_job *job = (ss_job *)arg;
    void *scratch = NULL;
    if (posix_memalign(&scratch, 64, job->scratch_bytes) != 0) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    for (;;) {
        int64_t item = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (item >= job->nitems) break;
        job->fn(job, (char *)scratch, item / job->ntiles, item % job->ntiles);
    }
    free(scratch);
    return NULL;
}

/* Per (batch, direction) block of N rows of length L: to_scan != 0 copies map-ordered src into scan
 * order (dst[s] = src[pos[s]]); else adds scan-ordered src back onto the map (dst[pos[s]] += src[s]). */
static void ss_reorder(const void *src, void *dst, const int32_t *pos, int64_t blocks, int64_t N, int64_t L,
                       size_t real_size, int to_scan) {
    for (int64_t blk = 0; blk < blocks; blk++) {
        const int32_t *p = pos + (blk % 4) * L;
        for (int64_t n = 0; n < N; n++) {
            int64_t off = (blk * N + n) * L;
            if (real_size == sizeof(float)) {
                const float *x = (const float *)src + off;
                float *y = (float *)dst + off;
                if (to_scan)
                    for (int64_t s = 0; s < L; s++) y[s] = x[p[s]];
                else
                    for (int64_t s = 0; s < L; s++) y[p[s]] += x[s];
            } else {
                const double *x = (const double *)src + off;
                double *y = (double *)dst + off;
                if (to_scan)
                    for (int64_t s = 0; s < L; s++) y[s] = x[p[s]];
                else
                    for (int64_t s = 0; s < L; s++) y[p[s]] += x[s];
            }
        }
    }
}

/* Runs fn over every (batch, tile) item on up to a->nthreads threads (the caller is one of them).
 * Returns 0, or 1 when memory could not be had. */
static int ss_run(const ss_args *a, size_t real_size, size_t scratch_bytes, ss_item_fn fn, int with_locks) {
    /* tiles cover the map channels; in cross mode each item walks the four directions of its tile,
     * so the outputs summed over directions are written by one thread only */
    int64_t dim = a->cross ? a->dim / 4 : a->dim;
    int64_t per_b = (a->b_groups && !a->cross) ? dim / a->b_groups : dim;
    int64_t per_c = (a->c_groups && !a->cross) ? dim / a->c_groups : dim;
    ss_tile *tiles = (ss_tile *)malloc(sizeof(ss_tile) * (size_t)(dim > 0 ? dim : 1));
    if (!tiles) return 1;
    int64_t ntiles = 0;
    for (int64_t d = 0; d < dim;) {
        int64_t w = dim - d < SS_TILE ? dim - d : SS_TILE;
        if (per_b - d % per_b < w) w = per_b - d % per_b; /* a tile never straddles two groups */
        if (per_c - d % per_c < w) w = per_c - d % per_c;
        tiles[ntiles].d0 = d;
        tiles[ntiles].width = w;
        ntiles++;
        d += w;
    }
    ss_job job;
    memset(&job, 0, sizeof job);
    job.a = a;
    job.tiles = tiles;
    job.ntiles = ntiles;
    job.nitems = a->batch * ntiles;
    job.scratch_bytes = scratch_bytes;
    job.fn = fn;
    job.map_dim = dim;
    job.real_size = real_size;
    job.B = a->B;
    job.C = a->C;
    job.dB = a->dB;
    job.dC = a->dC;
    char *scan_bc = NULL;
    const int64_t bc_count = a->batch * 4 * a->nstate * a->length; /* elements of one (batch, 4, N, L) copy */
    if (a->cross) {
        const int64_t L = a->length, H = a->height, W = a->width;
        job.pos = (int32_t *)malloc(sizeof(int32_t) * (size_t)(4 * L + 1));
        if (!job.pos) {
            free(tiles);
            return 1;
        }
        for (int64_t s = 0; s < L; s++) {
            job.pos[s] = (int32_t)s;
            job.pos[L + s] = (int32_t)((s % H) * W + s / H);
            job.pos[2 * L + s] = (int32_t)(L - 1 - s);
        }
        for (int64_t s = 0; s < L; s++) job.pos[3 * L + s] = job.pos[L + (L - 1 - s)];
        /* B and C in scan order (and zeroed dB, dC in scan order for the backward) */
        int with_grads = a->dB != NULL;
        scan_bc = (char *)calloc((size_t)bc_count * (with_grads ? 4 : 2), real_size);
        if (!scan_bc) {
            free(job.pos);
            free(tiles);
            return 1;
        }
        job.B = scan_bc;
        job.C = scan_bc + bc_count * real_size;
        if (with_grads) {
            job.dB = scan_bc + 2 * bc_count * real_size;
            job.dC = scan_bc + 3 * bc_count * real_size;
        }
        ss_reorder(a->B, (void *)job.B, job.pos, a->batch * 4, a->nstate, L, real_size, 1);
        ss_reorder(a->C, (void *)job.C, job.pos, a->batch * 4, a->nstate, L, real_size, 1);
    }
    int64_t nlocks = 0;
    if (with_locks) {
        nlocks = a->batch * a->b_groups + a->batch * a->c_groups + ntiles;
        job.locks = (pthread_mutex_t *)malloc(sizeof(pthread_mutex_t) * (size_t)nlocks);
        if (!job.locks) {
            free(scan_bc);
            free(job.pos);
            free(tiles);
            return 1;
        }
        for (int64_t i = 0; i < nlocks; i++) pthread_mutex_init(&job.locks[i], NULL);
    }
    int64_t nthreads = a->nthreads < 1 ? 1 : a->nthreads;
    if (nthreads > job.nitems) nthreads = job.nitems > 0 ? job.nitems : 1;
    pthread_t *threads = (pthread_t *)malloc(sizeof(pthread_t) * (size_t)nthreads);
    int64_t started = 0;
    if (threads) {
        for (int64_t i = 1; i < nthreads; i++) {
            /* a thread that cannot be started only means fewer workers: the others take its items */
            if (pthread_create(&threads[started], NULL, ss_worker, &job) == 0) started++;
        }
    }
    ss_worker(&job);
    for (int64_t i = 0; i < started; i++) pthread_join(threads[i], NULL);
    free(threads);
    int failed = job.failed || job.next < job.nitems;
    if (job.locks) {
        for (int64_t i = 0; i < nlocks; i++) pthread_mutex_destroy(&job.locks[i]);
        free(job.locks);
    }
    if (a->cross && a->dB) {
        ss_reorder(job.dB, a->dB, job.pos, a->batch * 4, a->nstate, a->length, real_size, 0);
        ss_reorder(job.dC, a->dC, job.pos, a->batch * 4, a->nstate, a->length, real_size, 0);
    }
    free(scan_bc);
    free(job.pos);
    free(tiles);
    return failed;
}

/* ---- float instantiation ---- */
#define SS_BODY
#define R float
#define SFX f32
#define SS_EXP2_LO (-125.0f)
#define SS_EXP2_HI 127.0f
#define SS_EXP2_TERMS 7 /* Taylor degree of 2^f on [-1/2, 1/2]: error < 1e-8 */
#define SS_LOG_TERMS 5  /* atanh series terms: relative error < 1e-9 */
#define SS_BITS_T int32_t
#define SS_MANT 23
#define SS_BIAS 127
#include "selective_scan_cpu.c"
#undef R
#undef SFX
#undef SS_EXP2_LO
#undef SS_EXP2_HI
#undef SS_EXP2_TERMS
#undef SS_LOG_TERMS
#undef SS_BITS_T
#undef SS_MANT
#undef SS_BIAS

/* ---- double instantiation ---- */
#define R double
#define SFX f64
#define SS_EXP2_LO (-1021.0)
#define SS_EXP2_HI 1023.0
#define SS_EXP2_TERMS 13 /* error < 1e-17 */
#define SS_LOG_TERMS 11  /* error < 1e-17 */
#define SS_BITS_T int64_t
#define SS_MANT 52
#define SS_BIAS 1023
#include "selective_scan_cpu.c"

#else /* ===================== generic body, R = float or double ===================== */

#define SS_CAT2(a, b) a##_##b
#define SS_CAT(a, b) SS_CAT2(a, b)
#define FN(name) SS_CAT(name, SFX)

/* 2^x for x clamped to the normal range: x = k + f with k integer, |f| <= 1/2; 2^f by its Taylor
 * polynomial, 2^k by writing the exponent bits. Branch-free so loops over it vectorise. */
static inline R FN(exp2)(R x) {
    x = x < SS_EXP2_LO ? SS_EXP2_LO : x;
    x = x > SS_EXP2_HI ? SS_EXP2_HI : x;
    /* floor(x + 1/2) through truncation of a positive number */
    SS_BITS_T k = (SS_BITS_T)(x + (R)2048.5) - 2048;
    R f = x - (R)k;
    R p = (R)ss_exp2_coef[SS_EXP2_TERMS];
    for (int i = SS_EXP2_TERMS - 1; i >= 0; i--) p = p * f + (R)ss_exp2_coef[i];
    union {
        SS_BITS_T i;
        R r;
    } scale;
    scale.i = (SS_BITS_T)(k + SS_BIAS) << SS_MANT;
    return p * scale.r;
}

static inline R FN(exp)(R x) { return FN(exp2)(x * (R)SS_LOG2E); }

/* log(1 + y) for y in [0, 1]: log of w = 1 + y from the atanh series, corrected for the rounding of w. */
static inline R FN(log1p_unit)(R y) {
    R w = (R)1 + y;
    int big = w > (R)SS_SQRT2;
    R m = big ? w * (R)0.5 : w;
    R s = (m - (R)1) / (m + (R)1);
    R s2 = s * s;
    R p = (R)0;
    for (int i = SS_LOG_TERMS - 1; i >= 0; i--) p = p * s2 + (R)ss_atanh_coef[i];
    R lw = (big ? (R)SS_LN2 : (R)0) + (R)2 * s * p;
    R dw = w - (R)1;
    R safe = dw == (R)0 ? (R)1 : dw;
    return dw == (R)0 ? y : lw * (y / safe);
}

/* torch.nn.functional.softplus with beta 1, threshold 20 */
static inline R FN(softplus)(R x) {
    R ax = x < 0 ? -x : x;
    R pos = x > 0 ? x : (R)0;
    R v = pos + FN(log1p_unit)(FN(exp)(-ax));
    return x > (R)20 ? x : v;
}

static inline R FN(sigmoid)(R x) { return (R)1 / ((R)1 + FN(exp)(-x)); }

/* rows (c = 0..width-1) of src with stride L, steps t0..t0+len-1 (through pos when given)
 * -> buf[t * SS_TILE + c]; lanes past width are 0 */
static inline void FN(gather)(R *buf, const R *src, const int32_t *pos, int64_t t0, int64_t L, int64_t width,
                              int64_t len) {
    for (int64_t c = 0; c < width; c++) {
        const R *row = src + c * L;
        if (pos)
            for (int64_t t = 0; t < len; t++) buf[t * SS_TILE + c] = row[pos[t0 + t]];
        else
            for (int64_t t = 0; t < len; t++) buf[t * SS_TILE + c] = row[t0 + t];
    }
    for (int64_t c = width; c < SS_TILE; c++)
        for (int64_t t = 0; t < len; t++) buf[t * SS_TILE + c] = (R)0;
}

static inline void FN(scatter)(R *dst, const R *buf, const int32_t *pos, int64_t t0, int64_t L, int64_t width,
                               int64_t len, int accumulate) {
    for (int64_t c = 0; c < width; c++) {
        R *row = dst + c * L;
        if (pos && accumulate)
            for (int64_t t = 0; t < len; t++) row[pos[t0 + t]] += buf[t * SS_TILE + c];
        else if (pos)
            for (int64_t t = 0; t < len; t++) row[pos[t0 + t]] = buf[t * SS_TILE + c];
        else if (accumulate)
            for (int64_t t = 0; t < len; t++) row[t0 + t] += buf[t * SS_TILE + c];
        else
            for (int64_t t = 0; t < len; t++) row[t0 + t] = buf[t * SS_TILE + c];
    }
}

/* dst (N, L) += loc (len, N) for the chunk's steps (through pos when given) */
static inline void FN(add_bc_grad)(R *dst, const R *loc, const int32_t *pos, int64_t t0, int64_t len, int64_t N,
                                   int64_t L) {
    for (int64_t n = 0; n < N; n++) {
        R *row = dst + n * L;
        if (pos)
            for (int64_t t = 0; t < len; t++) row[pos[t0 + t]] += loc[t * N + n];
        else
            for (int64_t t = 0; t < len; t++) row[t0 + t] += loc[t * N + n];
    }
}

/* the per-tile constants: A * log2(e) (and raw A), constant B/C, D, bias, lanes past width = 0 */
static inline void FN(tile_params)(const ss_args *a, int64_t d0, int64_t width, R *A2, R *Araw, R *Bc, R *Cc,
                                   R *Dv, R *biasv) {
    const int64_t N = a->nstate;
    const R *A = (const R *)a->A, *B = (const R *)a->B, *C = (const R *)a->C;
    const R *D = (const R *)a->D, *bias = (const R *)a->delta_bias;
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < SS_TILE; c++) {
            int in = c < width;
            R av = in ? A[(d0 + c) * N + n] : (R)0;
            A2[n * SS_TILE + c] = av * (R)SS_LOG2E;
            if (Araw) Araw[n * SS_TILE + c] = av;
            if (!a->b_groups) Bc[n * SS_TILE + c] = in ? B[(d0 + c) * N + n] : (R)0;
            if (!a->c_groups) Cc[n * SS_TILE + c] = in ? C[(d0 + c) * N + n] : (R)0;
        }
    for (int64_t c = 0; c < SS_TILE; c++) {
        int in = c < width;
        Dv[c] = (in && D) ? D[d0 + c] : (R)0;
        biasv[c] = (in && bias) ? bias[d0 + c] : (R)0;
    }
}

/* delta (+ bias) of the chunk -> x (pre-activation) and dt; the softplus derivative into sg if asked */
static inline void FN(chunk_dt)(const ss_args *a, const R *biasv, int64_t len, R *xbuf, R *dtbuf, R *sgbuf) {
    for (int64_t t = 0; t < len; t++)
        for (int64_t c = 0; c < SS_TILE; c++) xbuf[t * SS_TILE + c] += biasv[c];
    int64_t m = len * SS_TILE;
    if (a->softplus) {
        for (int64_t i = 0; i < m; i++) dtbuf[i] = FN(softplus)(xbuf[i]);
        if (sgbuf)
            for (int64_t i = 0; i < m; i++) sgbuf[i] = xbuf[i] > (R)20 ? (R)1 : FN(sigmoid)(xbuf[i]);
    } else {
        for (int64_t i = 0; i < m; i++) dtbuf[i] = xbuf[i];
        if (sgbuf)
            for (int64_t i = 0; i < m; i++) sgbuf[i] = (R)1;
    }
}

/* One chunk of the recurrence for one tile. B/C are per-step scalars (variable) or per-lane vectors
 * (constant); the flags are compile-time constants at every call site, so each case gets its own
 * loop. With store != 0 the decays and states of every step go to abuf/hbuf (for the backward). */
static inline __attribute__((always_inline)) void FN(scan_chunk)(int64_t len, int64_t N, int64_t L, const R *dtbuf,
                                                                 const R *ubuf, const R *A2, const R *Bsrc,
                                                                 const R *Csrc, int b_var, int c_var, R *h, R *ybuf,
                                                                 R *abuf, R *hbuf, int store) {
    for (int64_t t = 0; t < len; t++) {
        const R *dtv = dtbuf + t * SS_TILE;
        R du[SS_TILE], y[SS_TILE];
        for (int c = 0; c < SS_TILE; c++) {
            du[c] = dtv[c] * ubuf[t * SS_TILE + c];
            y[c] = (R)0;
        }
        for (int64_t n = 0; n < N; n++) {
            R *hn = h + n * SS_TILE;
            const R *an = A2 + n * SS_TILE;
            R *as = abuf + (t * N + n) * SS_TILE, *hs = hbuf + (t * N + n) * SS_TILE;
            if (b_var && c_var) {
                const R bn = Bsrc[n * L + t], cn = Csrc[n * L + t];
                for (int c = 0; c < SS_TILE; c++) {
                    R dA = FN(exp2)(dtv[c] * an[c]);
                    R hv = dA * hn[c] + du[c] * bn;
                    hn[c] = hv;
                    y[c] += cn * hv;
                    if (store) {
                        as[c] = dA;
                        hs[c] = hv;
                    }
                }
            } else {
                const R *bv = Bsrc + (b_var ? n * L + t : n * SS_TILE);
                const R *cv = Csrc + (c_var ? n * L + t : n * SS_TILE);
                for (int c = 0; c < SS_TILE; c++) {
                    R dA = FN(exp2)(dtv[c] * an[c]);
                    R hv = dA * hn[c] + du[c] * bv[b_var ? 0 : c];
                    hn[c] = hv;
                    y[c] += cv[c_var ? 0 : c] * hv;
                    if (store) {
                        as[c] = dA;
                        hs[c] = hv;
                    }
                }
            }
        }
        for (int c = 0; c < SS_TILE; c++) ybuf[t * SS_TILE + c] = y[c];
    }
}

/* the common case (both variable: Mamba, SS2D) gets its own loop; other layouts share a generic one */
static inline void FN(scan_chunk_any)(int b_var, int c_var, int store, int64_t len, int64_t N, int64_t L,
                                      const R *dtbuf, const R *ubuf, const R *A2, const R *Bsrc, const R *Csrc, R *h,
                                      R *ybuf, R *abuf, R *hbuf) {
    if (store) {
        if (b_var && c_var) FN(scan_chunk)(len, N, L, dtbuf, ubuf, A2, Bsrc, Csrc, 1, 1, h, ybuf, abuf, hbuf, 1);
        else FN(scan_chunk)(len, N, L, dtbuf, ubuf, A2, Bsrc, Csrc, b_var, c_var, h, ybuf, abuf, hbuf, 1);
    } else {
        if (b_var && c_var) FN(scan_chunk)(len, N, L, dtbuf, ubuf, A2, Bsrc, Csrc, 1, 1, h, ybuf, abuf, hbuf, 0);
        else FN(scan_chunk)(len, N, L, dtbuf, ubuf, A2, Bsrc, Csrc, b_var, c_var, h, ybuf, abuf, hbuf, 0);
    }
}

static inline const R *FN(bc_row)(const ss_args *a, const R *base, int64_t groups, int64_t b, int64_t d0) {
    /* start of the (N, L) block of the group channel d0 belongs to, or NULL for constant B/C */
    if (!groups) return NULL;
    int64_t g = d0 / (a->dim / groups);
    return base + (b * groups + g) * a->nstate * a->length;
}

/* ------------------------------------------------------------------ forward */

static size_t FN(forward_scratch)(const ss_args *a) {
    size_t T = (size_t)a->chunk, N = (size_t)a->nstate;
    return sizeof(R) * (5 * T * SS_TILE + 4 * N * SS_TILE + 2 * SS_TILE) + 64;
}

static void FN(forward_item)(ss_job *job, char *scratch, int64_t b, int64_t ti) {
    const ss_args *a = job->a;
    const int64_t N = a->nstate, L = a->length, T = a->chunk, dim = a->dim, mdim = job->map_dim;
    const int64_t d0 = job->tiles[ti].d0, width = job->tiles[ti].width;
    const int64_t nchunks = (L + T - 1) / T, ndir = a->cross ? 4 : 1;
    R *p = (R *)scratch;
    R *ubuf = p, *xbuf = ubuf + T * SS_TILE, *dtbuf = xbuf + T * SS_TILE, *ybuf = dtbuf + T * SS_TILE;
    R *zbuf = ybuf + T * SS_TILE, *h = zbuf + T * SS_TILE, *A2 = h + N * SS_TILE, *Bc = A2 + N * SS_TILE;
    R *Cc = Bc + N * SS_TILE, *Dv = Cc + N * SS_TILE, *biasv = Dv + SS_TILE;
    const R *u = (const R *)a->u + (b * mdim + d0) * L;
    const R *z = a->z ? (const R *)a->z + (b * mdim + d0) * L : NULL;
    R *y = (R *)a->y + (b * mdim + d0) * L;
    for (int64_t dir = 0; dir < ndir; dir++) {
        const int64_t sd = dir * mdim + d0; /* first scan channel of the tile */
        const int32_t *pos = a->cross ? job->pos + dir * L : NULL;
        FN(tile_params)(a, sd, width, A2, NULL, Bc, Cc, Dv, biasv);
        const R *Brow = FN(bc_row)(a, (const R *)job->B, a->b_groups, b, sd);
        const R *Crow = FN(bc_row)(a, (const R *)job->C, a->c_groups, b, sd);
        const R *delta = (const R *)a->delta + (b * dim + sd) * L;
        R *ck = a->checkpoints ? (R *)a->checkpoints + (b * dim + sd) * nchunks * N : NULL;
        memset(h, 0, sizeof(R) * N * SS_TILE);
        for (int64_t k = 0; k < nchunks; k++) {
            const int64_t t0 = k * T, len = L - t0 < T ? L - t0 : T;
            if (ck)
                for (int64_t c = 0; c < width; c++)
                    for (int64_t n = 0; n < N; n++) ck[(c * nchunks + k) * N + n] = h[n * SS_TILE + c];
            FN(gather)(ubuf, u, pos, t0, L, width, len);
            FN(gather)(xbuf, delta, pos, t0, L, width, len);
            FN(chunk_dt)(a, biasv, len, xbuf, dtbuf, NULL);
            const R *Bs = Brow ? Brow + t0 : Bc, *Cs = Crow ? Crow + t0 : Cc;
            FN(scan_chunk_any)(Brow != NULL, Crow != NULL, 0, len, N, L, dtbuf, ubuf, A2, Bs, Cs, h, ybuf, NULL,
                               NULL);
            for (int64_t t = 0; t < len; t++)
                for (int c = 0; c < SS_TILE; c++) ybuf[t * SS_TILE + c] += Dv[c] * ubuf[t * SS_TILE + c];
            if (z) {
                FN(gather)(zbuf, z, pos, t0, L, width, len);
                for (int64_t i = 0; i < len * SS_TILE; i++) ybuf[i] *= zbuf[i] * FN(sigmoid)(zbuf[i]);
            }
            FN(scatter)(y, ybuf, pos, t0, L, width, len, dir > 0);
        }
        if (a->last_state) {
            R *ls = (R *)a->last_state + (b * dim + sd) * N;
            for (int64_t c = 0; c < width; c++)
                for (int64_t n = 0; n < N; n++) ls[c * N + n] = h[n * SS_TILE + c];
        }
    }
}

int FN(ss_forward)(const ss_args *a) { return ss_run(a, sizeof(R), FN(forward_scratch)(a), FN(forward_item), 0); }

/* One step of the reverse recurrence for a tile, all N states. On entry dh holds the gradient reaching
 * h_t from later steps; on exit the part reaching h_{t-1}. For variable B (C) the per-lane terms of
 * dB (dC) overwrite as (hs), whose decays (states) are no longer needed; constant ones accumulate. */
static inline __attribute__((always_inline)) void FN(reverse_step)(
    int64_t N, int64_t L, int b_var, int c_var, const R *__restrict gv, const R *__restrict dtv,
    const R *__restrict uv, const R *__restrict sg, const R *__restrict Dv, const R *__restrict Araw,
    const R *__restrict Bsrc, const R *__restrict Csrc, const R *__restrict hp, R *__restrict as, R *__restrict hs,
    R *__restrict dh, R *__restrict dAacc, R *__restrict dBacc, R *__restrict dCacc, R *__restrict dDacc,
    R *__restrict dbacc, R *__restrict du_out, R *__restrict dd_out) {
    R dut[SS_TILE], ddt[SS_TILE], dua[SS_TILE];
    for (int c = 0; c < SS_TILE; c++) {
        dut[c] = dtv[c] * uv[c];
        ddt[c] = (R)0;
        dua[c] = (R)0;
    }
    for (int64_t n = 0; n < N; n++) {
        const int64_t o = n * SS_TILE;
        const R bs = b_var ? Bsrc[n * L] : (R)0, cs = c_var ? Csrc[n * L] : (R)0;
        for (int c = 0; c < SS_TILE; c++) {
            const R bn = b_var ? bs : Bsrc[o + c], cn = c_var ? cs : Csrc[o + c];
            const R a = as[o + c], hc = hs[o + c];
            const R d = dh[o + c] + gv[c] * cn;
            const R da = d * hp[o + c] * a;
            ddt[c] += da * Araw[o + c] + d * bn * uv[c];
            dAacc[o + c] += da * dtv[c];
            dua[c] += d * dtv[c] * bn;
            dh[o + c] = d * a;
            if (b_var) as[o + c] = d * dut[c];
            else dBacc[o + c] += d * dut[c];
            if (c_var) hs[o + c] = gv[c] * hc;
            else dCacc[o + c] += gv[c] * hc;
        }
    }
    for (int c = 0; c < SS_TILE; c++) {
        R g = gv[c], dd = ddt[c] * sg[c];
        du_out[c] = dua[c] + g * Dv[c];
        dd_out[c] = dd;
        dDacc[c] += g * uv[c];
        dbacc[c] += dd;
    }
}

/* out[j] = sum over the SS_TILE lanes of row j */
static inline void FN(row_sums)(const R *__restrict buf, int64_t rows, R *__restrict out) {
    for (int64_t j = 0; j < rows; j++) {
        R s = (R)0;
        for (int c = 0; c < SS_TILE; c++) s += buf[j * SS_TILE + c];
        out[j] = s;
    }
}

/* ------------------------------------------------------------------ backward */

static size_t FN(backward_scratch)(const ss_args *a) {
    size_t T = (size_t)a->chunk, N = (size_t)a->nstate;
    return sizeof(R) * (2 * T * N * SS_TILE + 10 * T * SS_TILE + 10 * N * SS_TILE + 4 * SS_TILE + 2 * N * T) + 64;
}

static void FN(backward_item)(ss_job *job, char *scratch, int64_t b, int64_t ti) {
    const ss_args *a = job->a;
    const int64_t N = a->nstate, L = a->length, T = a->chunk, dim = a->dim, mdim = job->map_dim;
    const int64_t d0 = job->tiles[ti].d0, width = job->tiles[ti].width;
    const int64_t nchunks = (L + T - 1) / T, ndir = a->cross ? 4 : 1;
    const int b_var = a->b_groups != 0, c_var = a->c_groups != 0;
    const int64_t TS = T * SS_TILE, NS = N * SS_TILE;
    R *p = (R *)scratch;
    R *abuf = p, *hbuf = abuf + T * NS;
    R *ubuf = hbuf + T * NS, *xbuf = ubuf + TS, *dtbuf = xbuf + TS, *sgbuf = dtbuf + TS, *zbuf = sgbuf + TS;
    R *gbuf = zbuf + TS, *ybuf = gbuf + TS, *dubuf = ybuf + TS, *ddbuf = dubuf + TS, *dzbuf = ddbuf + TS;
    R *hin = dzbuf + TS, *hrun = hin + NS, *dh = hrun + NS, *A2 = dh + NS, *Araw = A2 + NS, *Bc = Araw + NS;
    R *Cc = Bc + NS, *dAacc = Cc + NS, *dBacc = dAacc + NS, *dCacc = dBacc + NS;
    R *Dv = dCacc + NS, *biasv = Dv + SS_TILE, *dDacc = biasv + SS_TILE, *dbacc = dDacc + SS_TILE;
    R *dBloc = dbacc + SS_TILE, *dCloc = dBloc + N * T;

    const R *u = (const R *)a->u + (b * mdim + d0) * L, *dy = (const R *)a->dy + (b * mdim + d0) * L;
    const R *z = a->z ? (const R *)a->z + (b * mdim + d0) * L : NULL;
    R *du_out = (R *)a->du + (b * mdim + d0) * L, *dz_out = a->dz ? (R *)a->dz + (b * mdim + d0) * L : NULL;
    for (int64_t dir = 0; dir < ndir; dir++) {
        const int64_t sd = dir * mdim + d0; /* first scan channel of the tile */
        const int32_t *pos = a->cross ? job->pos + dir * L : NULL;
        FN(tile_params)(a, sd, width, A2, Araw, Bc, Cc, Dv, biasv);
        const R *Brow = FN(bc_row)(a, (const R *)job->B, a->b_groups, b, sd);
        const R *Crow = FN(bc_row)(a, (const R *)job->C, a->c_groups, b, sd);
        const R *delta = (const R *)a->delta + (b * dim + sd) * L;
        R *dd_out = (R *)a->ddelta + (b * dim + sd) * L;
        const R *ck = (const R *)a->checkpoints + (b * dim + sd) * nchunks * N;
        memset(dAacc, 0, sizeof(R) * 3 * NS);
        memset(dDacc, 0, sizeof(R) * 2 * SS_TILE);
        memset(dh, 0, sizeof(R) * NS);
        if (a->dlast) {
            const R *dl = (const R *)a->dlast + (b * dim + sd) * N;
            for (int64_t c = 0; c < width; c++)
                for (int64_t n = 0; n < N; n++) dh[n * SS_TILE + c] = dl[c * N + n];
        }
        for (int64_t k = nchunks - 1; k >= 0; k--) {
            const int64_t t0 = k * T, len = L - t0 < T ? L - t0 : T;
            memset(hin, 0, sizeof(R) * NS);
            for (int64_t c = 0; c < width; c++)
                for (int64_t n = 0; n < N; n++) hin[n * SS_TILE + c] = ck[(c * nchunks + k) * N + n];
            FN(gather)(ubuf, u, pos, t0, L, width, len);
            FN(gather)(xbuf, delta, pos, t0, L, width, len);
            FN(gather)(gbuf, dy, pos, t0, L, width, len);
            FN(chunk_dt)(a, biasv, len, xbuf, dtbuf, sgbuf);
            const R *Bsrc = b_var ? Brow + t0 : Bc, *Csrc = c_var ? Crow + t0 : Cc;
            /* recompute this chunk's decays and states from its checkpoint */
            memcpy(hrun, hin, sizeof(R) * NS);
            FN(scan_chunk_any)(b_var, c_var, 1, len, N, L, dtbuf, ubuf, A2, Bsrc, Csrc, hrun, ybuf, abuf, hbuf);
            /* the gate: g = dy * silu(z) flows into the scan, dz = dy * y0 * silu'(z) */
            if (z) {
                for (int64_t t = 0; t < len; t++)
                    for (int c = 0; c < SS_TILE; c++) ybuf[t * SS_TILE + c] += Dv[c] * ubuf[t * SS_TILE + c];
                FN(gather)(zbuf, z, pos, t0, L, width, len);
                for (int64_t i = 0; i < len * SS_TILE; i++) {
                    R zv = zbuf[i], s = FN(sigmoid)(zv), g = gbuf[i];
                    dzbuf[i] = g * ybuf[i] * s * ((R)1 + zv * ((R)1 - s));
                    gbuf[i] = g * zv * s;
                }
                FN(scatter)(dz_out, dzbuf, pos, t0, L, width, len, dir > 0);
            }
            /* reverse recurrence; per-lane dB/dC terms of variable B/C replace the used decays/states */
            for (int64_t t = len - 1; t >= 0; t--) {
                const R *hp = t > 0 ? hbuf + (t - 1) * NS : hin;
                R *as = abuf + t * NS, *hs = hbuf + t * NS;
                if (b_var && c_var)
                    FN(reverse_step)(N, L, 1, 1, gbuf + t * SS_TILE, dtbuf + t * SS_TILE, ubuf + t * SS_TILE,
                                     sgbuf + t * SS_TILE, Dv, Araw, Bsrc + t, Csrc + t, hp, as, hs, dh, dAacc, dBacc,
                                     dCacc, dDacc, dbacc, dubuf + t * SS_TILE, ddbuf + t * SS_TILE);
                else
                    FN(reverse_step)(N, L, b_var, c_var, gbuf + t * SS_TILE, dtbuf + t * SS_TILE,
                                     ubuf + t * SS_TILE, sgbuf + t * SS_TILE, Dv, Araw, b_var ? Bsrc + t : Bc,
                                     c_var ? Csrc + t : Cc, hp, as, hs, dh, dAacc, dBacc, dCacc, dDacc, dbacc,
                                     dubuf + t * SS_TILE, ddbuf + t * SS_TILE);
            }
            FN(scatter)(du_out, dubuf, pos, t0, L, width, len, dir > 0);
            FN(scatter)(dd_out, ddbuf, pos, t0, L, width, len, 0);
            if (b_var) {
                FN(row_sums)(abuf, len * N, dBloc);
                int64_t g = sd / (dim / a->b_groups);
                pthread_mutex_t *lock = &job->locks[b * a->b_groups + g];
                pthread_mutex_lock(lock);
                FN(add_bc_grad)((R *)job->dB + (b * a->b_groups + g) * N * L, dBloc, NULL, t0, len, N, L);
                pthread_mutex_unlock(lock);
            }
            if (c_var) {
                FN(row_sums)(hbuf, len * N, dCloc);
                int64_t g = sd / (dim / a->c_groups);
                pthread_mutex_t *lock = &job->locks[a->batch * a->b_groups + b * a->c_groups + g];
                pthread_mutex_lock(lock);
                FN(add_bc_grad)((R *)job->dC + (b * a->c_groups + g) * N * L, dCloc, NULL, t0, len, N, L);
                pthread_mutex_unlock(lock);
            }
        }
        /* per-channel parameters: several batch items add into the same rows */
        pthread_mutex_t *lock = &job->locks[a->batch * (a->b_groups + a->c_groups) + ti];
        pthread_mutex_lock(lock);
        R *dA = (R *)a->dA, *dB = (R *)a->dB, *dC = (R *)a->dC;
        for (int64_t c = 0; c < width; c++) {
            for (int64_t n = 0; n < N; n++) {
                dA[(sd + c) * N + n] += dAacc[n * SS_TILE + c];
                if (!b_var) dB[(sd + c) * N + n] += dBacc[n * SS_TILE + c];
                if (!c_var) dC[(sd + c) * N + n] += dCacc[n * SS_TILE + c];
            }
            if (a->dD) ((R *)a->dD)[sd + c] += dDacc[c];
            if (a->ddelta_bias) ((R *)a->ddelta_bias)[sd + c] += dbacc[c];
        }
        pthread_mutex_unlock(lock);
    }
}

int FN(ss_backward)(const ss_args *a) { return ss_run(a, sizeof(R), FN(backward_scratch)(a), FN(backward_item), 1); }

#undef SS_CAT2
#undef SS_CAT
#undef FN
#endif /* SS_BODY */
