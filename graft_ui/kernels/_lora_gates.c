/* Graft's gate statistics of two LoRA deltas Tb = sb * Bb @ Ab and Tg = sg * Bg @ Ag, computed
 * tile by tile (2 rows x 4 vectors of columns in registers), never stored. Built on first use by
 * graft_ui/kernels/lora_gates.py through graft_ui/native.py, for the CPU it runs on
 * (-march=native): the vectors are as wide as the target's (16 floats with AVX-512, 8 with
 * AVX/AVX2, else 4: SSE, NEON), and a * b + c is one fused multiply-add where the target has it.
 *
 *   lora_gate_range: {min T, max T} of one delta, from few of its entries: rows in order of
 *                    falling norm, and a 2 x TC tile only where Cauchy-Schwarz,
 *                    |T[i,j]| <= |s| ||B[i]|| ||A[:,j]||, cannot rule out a value outside the
 *                    range found so far. Returns how many entries it computed.
 *   lora_gate_pass:  one pass over every entry of both deltas: rowl1[i] = sum_j |Tb[i,j] - Tg[i,j]|
 *                    (double) and, with bins > 0, counts[0..bins) of Tb and [bins..2 bins) of Tg
 *                    over the given ranges, with torch.histc's rule: bin = (int)(((v - lo) * bins)
 *                    / (hi - lo)) in float32, the maximum folded into the last bin
 *                    (kernels/entropy.py `histc_bins`).
 *   lora_gate_lanes, lora_gate_fma: the build's vector width in floats, and whether it fuses.
 *
 * What it promises, on any CPU and vector width (u = 2^-24, e[i,j] = (r + 2) u |s| sum_k |B[i,k] A[k,j]|):
 *   - an entry v' it computes is the float32 sum of the r products in some order, times s:
 *     |v' - v| <= e[i,j] for the exact v = s B[i] A[:,j] (the classic dot-product bound; it
 *     holds for every summation order, with or without fused multiply-adds). Which v' within
 *     that bound depends on the order and the fusing, so it differs between AVX2, AVX-512 and
 *     NEON builds and from torch's BLAS by an ulp or so: nothing here is bit-equal across CPUs;
 *   - the range is the exact min/max of the entries it computes, and no entry it skips lies
 *     outside it (the skip bound has room for e): lo lies in [min (v - e), min (v + e)], hi
 *     likewise;
 *   - the histogram counts are exact for its own entries and range: every entry, computed as
 *     the range pass computed it (same code, same order), binned by histc's rule over [lo, hi];
 *     so sum(counts) = M N, and an entry can only sit in another bin than its exact value's if
 *     it lies within e of a bin edge. Entries that float32 holds exactly (small integers) bin
 *     as torch.histc bins them on every CPU;
 *   - rowl1[i] is within sum_j (eb[i,j] + eg[i,j]) + 2^-15 sum_j |Tb - Tg| of the exact row L1:
 *     the float32 subtraction, then float32 sums whose longest chain of additions is a lane's
 *     JB / LANES values plus the LANES lanes (<= 260, or a tail's < TC), then double:
 *     (260 + 2) u < 2^-15.
 * NaN/inf make rowl1 non-finite (the caller checks). B is (M, r) and A (r, N), both row-major float32.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* one vector register of the target: the compiler maps these types onto it, never splits them */
#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif
#if defined(__FMA__) || defined(__AVX512F__) || defined(__aarch64__) || defined(__ARM_FEATURE_FMA)
#define FUSED 1
#else
#define FUSED 0
#endif

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));

#define W 4                  /* vectors per tile row: 2 x 4 accumulators + 4 loads fit 16 registers */
#define TC (LANES * W)
#define JB 1024              /* columns per block: the A slices stay in L2 */
#define MAXV 16              /* bins counted with vector compares; more bins count per element */

static inline vf ldu(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline vf vmin(vf a, vf b) { vi m = a < b; return (vf)(((vi)a & m) | ((vi)b & ~m)); }
static inline vf vmax(vf a, vf b) { vi m = a > b; return (vf)(((vi)a & m) | ((vi)b & ~m)); }
static inline vf vabs(vf a) { return (vf)((vi)a & 0x7fffffff); }
static inline float hsum(vf a) { float s = 0; for (int l = 0; l < LANES; l++) s += a[l]; return s; }

int64_t lora_gate_lanes(void) { return LANES; }
int64_t lora_gate_fma(void) { return FUSED; }

/* t[rho][w] = s * (B[rho] @ A)[j0 + LANES w ...] for the rows B0, B1 (r values each) */
static inline void tile2(const float *B0, const float *B1, int64_t r, const float *A, int64_t N, int64_t j0,
                         float s, vf t[2][W]) {
    vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};
    for (int64_t k = 0; k < r; k++) {
        const float *a = A + k * N + j0;
        const vf x0 = ldu(a), x1 = ldu(a + LANES), x2 = ldu(a + 2 * LANES), x3 = ldu(a + 3 * LANES);
        const float b0 = B0[k], b1 = B1[k];
        a0 += b0 * x0; a1 += b0 * x1; a2 += b0 * x2; a3 += b0 * x3;
        c0 += b1 * x0; c1 += b1 * x1; c2 += b1 * x2; c3 += b1 * x3;
    }
    t[0][0] = a0 * s; t[0][1] = a1 * s; t[0][2] = a2 * s; t[0][3] = a3 * s;
    t[1][0] = c0 * s; t[1][1] = c1 * s; t[1][2] = c2 * s; t[1][3] = c3 * s;
}

/* one entry past the TC-column tiles (N % TC tail), the same sum order as tile2 */
static inline float entry(const float *B, int64_t r, const float *A, int64_t N, int64_t j, float s) {
    float acc = 0;
    for (int64_t k = 0; k < r; k++) acc += B[k] * A[k * N + j];
    return acc * s;
}

/* ---------------------------------------------------------------------------- the range */

typedef struct { double norm; int64_t row; } RowNorm;

static int by_falling_norm(const void *x, const void *y) {
    const double a = ((const RowNorm *)x)->norm, b = ((const RowNorm *)y)->norm;
    return a < b ? 1 : (a > b ? -1 : 0);
}

int64_t lora_gate_range(const float *B, const float *A, int64_t r, float s, int64_t M, int64_t N,
                        float *range) {
    const int64_t nblk = (N + TC - 1) / TC;
    RowNorm *rows = malloc(sizeof *rows * (M > 0 ? M : 1));
    double *col = calloc(N > 0 ? N : 1, sizeof *col), *blk = malloc(sizeof *blk * (nblk > 0 ? nblk : 1));
    float lo = INFINITY, hi = -INFINITY;
    int64_t computed = 0;
    if (!rows || !col || !blk) {  /* no memory for the bounds: the caller raises */
        free(rows); free(col); free(blk);
        return -1;
    }
    for (int64_t i = 0; i < M; i++) {
        double q = 0;
        for (int64_t k = 0; k < r; k++) q += (double)B[i * r + k] * B[i * r + k];
        rows[i].norm = fabs((double)s) * sqrt(q);
        rows[i].row = i;
    }
    for (int64_t k = 0; k < r; k++)
        for (int64_t j = 0; j < N; j++) col[j] += (double)A[k * N + j] * A[k * N + j];
    double top = 0;
    for (int64_t b = 0; b < nblk; b++) {
        double m = 0;
        for (int64_t j = b * TC; j < N && j < (b + 1) * TC; j++) m = col[j] > m ? col[j] : m;
        blk[b] = sqrt(m);
        top = blk[b] > top ? blk[b] : top;
    }
    qsort(rows, M, sizeof *rows, by_falling_norm);
    /* a computed entry exceeds the exact bound by at most the rounding of r products and sums
     * and the scale: (r + 2) units of 2^-24, with room to spare */
    const double margin = 1.0 + 1e-4 + 4.0 * (double)(r + 2) * 0x1p-24;
    for (int64_t p = 0; p < M; p += 2) {
        const int64_t i0 = rows[p].row, i1 = p + 1 < M ? rows[p + 1].row : i0;
        const double bound = rows[p].norm * margin;  /* the pair's larger norm */
        double inside = fmin((double)hi, -(double)lo);  /* |v| <= inside cannot move the range */
        if (bound * top <= inside) break;  /* nor can any later (smaller-norm) row */
        for (int64_t b = 0; b < nblk; b++) {
            if (bound * blk[b] <= inside) continue;
            const int64_t j0 = b * TC;
            if (j0 + TC <= N) {
                vf t[2][W];
                tile2(B + i0 * r, B + i1 * r, r, A, N, j0, s, t);
                vf l = vmin(t[0][0], t[1][0]), h = vmax(t[0][0], t[1][0]);
                for (int w = 1; w < W; w++) { l = vmin(l, vmin(t[0][w], t[1][w])); h = vmax(h, vmax(t[0][w], t[1][w])); }
                for (int q = 0; q < LANES; q++) { lo = l[q] < lo ? l[q] : lo; hi = h[q] > hi ? h[q] : hi; }
                computed += (i1 != i0 ? 2 : 1) * TC;
            } else {
                for (int64_t j = j0; j < N; j++)
                    for (int64_t i = i0;; i = i1) {
                        const float v = entry(B + i * r, r, A, N, j, s);
                        lo = v < lo ? v : lo;
                        hi = v > hi ? v : hi;
                        computed++;
                        if (i == i1) break;
                    }
            }
            inside = fmin((double)hi, -(double)lo);
        }
    }
    free(rows); free(col); free(blk);
    range[0] = lo;
    range[1] = hi;
    return computed;
}

/* ---------------------------------------------------------------------------- the pass */

static inline uint32_t key_of(float f) {  /* a uint32 order equal to the floats' (NaN aside) */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static inline float float_of(uint32_t k) {
    uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* torch.histc's position of v: its bin is this truncated (one expression for the edges and the bins) */
static inline float position(float v, float lo, float fb, float span) { return ((v - lo) * fb) / span; }

/* the smallest float v in [lo, hi] whose bin is >= k (k >= 1), +inf if none (span 0, inf or NaN) */
static float edge(float lo, float hi, float fb, float span, float k) {
    if (!(position(hi, lo, fb, span) >= k)) return INFINITY;
    uint32_t a = key_of(lo), b = key_of(hi);  /* lo's position is 0 < k; hi's is >= k */
    while (b - a > 1) {
        const uint32_t m = a + (b - a) / 2;
        if (position(float_of(m), lo, fb, span) >= k) b = m; else a = m;
    }
    return float_of(b);
}

static inline int64_t bin_of(float v, float lo, float fb, float span, int64_t bins) {
    int64_t b = (int64_t)position(v, lo, fb, span);
    return b < 0 ? 0 : (b >= bins ? bins - 1 : b);
}

typedef struct { const float *B, *A; int64_t r; float s; } Lora;

void lora_gate_pass(const float *Bb, const float *Ab, int64_t rb, float sb,
                    const float *Bg, const float *Ag, int64_t rg, float sg,
                    int64_t M, int64_t N, double *rowl1, int64_t bins, const float *range, double *counts) {
    const Lora L[2] = {{Bb, Ab, rb, sb}, {Bg, Ag, rg, sg}};
    const int64_t Nv = N - N % TC;
    const float fb = (float)bins;
    const int vec = bins > 0 && bins <= MAXV;
    vi ge[2][MAXV];           /* ge[e][k]: lanes' counts of v >= edge k (k = 1 .. bins-1) */
    vf edges[2][MAXV];        /* edge k of delta e, in every lane */
    int64_t scalar[2][4097];  /* per-element counts: the tails, and every entry when bins > MAXV */
    float lo[2] = {0, 0}, span[2] = {0, 0};
    memset(ge, 0, sizeof ge);
    memset(scalar, 0, sizeof scalar);
    for (int e = 0; e < 2 && bins > 0; e++) {
        lo[e] = range[2 * e];
        span[e] = range[2 * e + 1] - range[2 * e];
        for (int64_t k = 1; vec && k < bins; k++)
            edges[e][k] = (vf){0} + edge(lo[e], range[2 * e + 1], fb, span[e], (float)k);
    }
    for (int64_t i = 0; i < M; i++) rowl1[i] = 0.0;
    for (int64_t jb = 0; jb < N; jb += JB) {
        const int64_t je = jb + JB < Nv ? jb + JB : Nv;
        for (int64_t i = 0; i < M; i += 2) {
            const int64_t i1 = i + 1 < M ? i + 1 : i;
            const int nrows = i1 != i ? 2 : 1;
            vf acc0 = {0}, acc1 = {0};
            for (int64_t j = jb; j < je; j += TC) {
                vf t[2][2][W];
                for (int e = 0; e < 2; e++)
                    tile2(L[e].B + i * L[e].r, L[e].B + i1 * L[e].r, L[e].r, L[e].A, N, j, L[e].s, t[e]);
                acc0 += vabs(t[0][0][0] - t[1][0][0]) + vabs(t[0][0][1] - t[1][0][1])
                      + vabs(t[0][0][2] - t[1][0][2]) + vabs(t[0][0][3] - t[1][0][3]);
                acc1 += vabs(t[0][1][0] - t[1][1][0]) + vabs(t[0][1][1] - t[1][1][1])
                      + vabs(t[0][1][2] - t[1][1][2]) + vabs(t[0][1][3] - t[1][1][3]);
                if (vec) {
                    if (nrows == 1)  /* the odd last row: count its entries once */
                        for (int e = 0; e < 2; e++)
                            for (int w = 0; w < W; w++) t[e][1][w] = (vf){0} - INFINITY;
                    for (int e = 0; e < 2; e++)
                        for (int k = 1; k < bins; k++) {  /* the tile's counts in a register, then one add */
                            vi c = (t[e][0][0] >= edges[e][k]);
                            for (int w = 1; w < W; w++) c += (t[e][0][w] >= edges[e][k]);
                            for (int w = 0; w < W; w++) c += (t[e][1][w] >= edges[e][k]);
                            ge[e][k] -= c;
                        }
                } else if (bins) {
                    for (int e = 0; e < 2; e++)
                        for (int rho = 0; rho < nrows; rho++)
                            for (int w = 0; w < W; w++)
                                for (int l = 0; l < LANES; l++)
                                    scalar[e][bin_of(t[e][rho][w][l], lo[e], fb, span[e], bins)]++;
                }
            }
            rowl1[i] += hsum(acc0);
            if (i1 != i) rowl1[i1] += hsum(acc1);
            if (jb + JB >= N)  /* the last block: the tail columns */
                for (int64_t ii = i; ii <= i1; ii++) {
                    float tail = 0;
                    for (int64_t j = Nv; j < N; j++) {
                        float v[2];
                        for (int e = 0; e < 2; e++) {
                            v[e] = entry(L[e].B + ii * L[e].r, L[e].r, L[e].A, N, j, L[e].s);
                            if (bins) scalar[e][bin_of(v[e], lo[e], fb, span[e], bins)]++;
                        }
                        const float d = v[0] - v[1];
                        tail += d < 0 ? -d : d;
                    }
                    rowl1[ii] += tail;
                }
        }
    }
    for (int e = 0; e < 2 && bins > 0; e++) {
        double *c = counts + e * bins;
        for (int64_t k = 0; k < bins; k++) c[k] = (double)scalar[e][k];
        if (!vec) continue;
        const int64_t nv = M * Nv;  /* entries counted by the vector compares */
        int64_t g[MAXV + 1];
        g[0] = nv;
        g[bins] = 0;
        for (int64_t k = 1; k < bins; k++) {
            g[k] = 0;
            for (int l = 0; l < LANES; l++) g[k] += ge[e][k][l];
        }
        for (int64_t k = 0; k < bins; k++) c[k] += (double)(g[k] - g[k + 1]);
    }
}
