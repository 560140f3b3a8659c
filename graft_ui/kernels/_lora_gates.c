/* Graft's gate statistics of two LoRA deltas Tb = sb * Bb @ Ab and Tg = sg * Bg @ Ag, computed
 * tile by tile (2 rows x 64 columns in registers), never stored. Built on first use by
 * graft_ui/kernels/lora_gates.py through graft_ui/native.py.
 *
 *   lora_gate_scan:  rowl1[i] = sum_j |Tb[i,j] - Tg[i,j]| (double),  range = {min Tb, max Tb, min Tg, max Tg}
 *   lora_gate_hist:  counts[0..bins) of Tb and counts[bins..2 bins) of Tg over the given ranges, with
 *                    torch.histc's rule: bin = (int)(((v - lo) * bins) / (hi - lo)) in float32, the
 *                    maximum folded into the last bin (kernels/entropy.py `histc_bins`)
 *
 * Both passes compute every entry with the same code (same products, same order), so the
 * histogram bins exactly the values whose min/max the scan found. A row's L1 sum is added in
 * float over one 1024-column block (<= 64 values per lane) and then in double. NaN/inf make
 * rowl1 non-finite (the caller checks). B is (M, r) and A (r, N), both row-major float32.
 * target_clones picks AVX-512/AVX2 at load time and keeps the library runnable on any x86-64.
 */
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));

#define LANES 16
#define W 4                  /* vectors per tile row: 64 columns */
#define TC (LANES * W)
#define JB 1024              /* columns per block: the A slices stay in L2 */
#define MAXV 16              /* bins counted with vector compares; more bins count per element */

static inline vf ldu(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline vf vmin(vf a, vf b) { vi m = a < b; return (vf)(((vi)a & m) | ((vi)b & ~m)); }
static inline vf vmax(vf a, vf b) { vi m = a > b; return (vf)(((vi)a & m) | ((vi)b & ~m)); }
static inline vf vabs(vf a) { return (vf)((vi)a & 0x7fffffff); }
static inline float hsum(vf a) { float s = 0; for (int l = 0; l < LANES; l++) s += a[l]; return s; }

/* t[rho][w] = s * (B[rho] @ A)[j0 + 16 w ...] for the rows B0, B1 (r values each) */
static inline void tile2(const float *B0, const float *B1, int64_t r, const float *A, int64_t N, int64_t j0,
                         float s, vf t[2][W]) {
    vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};
    for (int64_t k = 0; k < r; k++) {
        const float *a = A + k * N + j0;
        const vf x0 = ldu(a), x1 = ldu(a + 16), x2 = ldu(a + 32), x3 = ldu(a + 48);
        const float b0 = B0[k], b1 = B1[k];
        a0 += b0 * x0; a1 += b0 * x1; a2 += b0 * x2; a3 += b0 * x3;
        c0 += b1 * x0; c1 += b1 * x1; c2 += b1 * x2; c3 += b1 * x3;
    }
    t[0][0] = a0 * s; t[0][1] = a1 * s; t[0][2] = a2 * s; t[0][3] = a3 * s;
    t[1][0] = c0 * s; t[1][1] = c1 * s; t[1][2] = c2 * s; t[1][3] = c3 * s;
}

/* one entry past the 64-column tiles (N % 64 tail), the same sum order as tile2 */
static inline float entry(const float *B, int64_t r, const float *A, int64_t N, int64_t j, float s) {
    float acc = 0;
    for (int64_t k = 0; k < r; k++) acc += B[k] * A[k * N + j];
    return acc * s;
}

typedef struct { const float *B, *A; int64_t r; float s; } Lora;

CLONES void lora_gate_scan(const float *Bb, const float *Ab, int64_t rb, float sb,
                           const float *Bg, const float *Ag, int64_t rg, float sg,
                           int64_t M, int64_t N, double *rowl1, float *range) {
    const Lora L[2] = {{Bb, Ab, rb, sb}, {Bg, Ag, rg, sg}};
    const int64_t Nv = N - N % TC;
    float x0[2];
    for (int e = 0; e < 2; e++) x0[e] = entry(L[e].B, L[e].r, L[e].A, N, 0, L[e].s);
    vf lo[2], hi[2];
    float slo[2] = {x0[0], x0[1]}, shi[2] = {x0[0], x0[1]};
    for (int e = 0; e < 2; e++) { lo[e] = (vf){0} + x0[e]; hi[e] = lo[e]; }
    for (int64_t i = 0; i < M; i++) rowl1[i] = 0.0;
    for (int64_t jb = 0; jb < N; jb += JB) {
        const int64_t je = jb + JB < Nv ? jb + JB : Nv;
        for (int64_t i = 0; i < M; i += 2) {
            const int64_t i1 = i + 1 < M ? i + 1 : i;
            vf acc0 = {0}, acc1 = {0};
            for (int64_t j = jb; j < je; j += TC) {
                vf t[2][2][W];
                for (int e = 0; e < 2; e++)
                    tile2(L[e].B + i * L[e].r, L[e].B + i1 * L[e].r, L[e].r, L[e].A, N, j, L[e].s, t[e]);
                for (int e = 0; e < 2; e++)
                    for (int w = 0; w < W; w++) {
                        lo[e] = vmin(lo[e], vmin(t[e][0][w], t[e][1][w]));
                        hi[e] = vmax(hi[e], vmax(t[e][0][w], t[e][1][w]));
                    }
                acc0 += vabs(t[0][0][0] - t[1][0][0]) + vabs(t[0][0][1] - t[1][0][1])
                      + vabs(t[0][0][2] - t[1][0][2]) + vabs(t[0][0][3] - t[1][0][3]);
                acc1 += vabs(t[0][1][0] - t[1][1][0]) + vabs(t[0][1][1] - t[1][1][1])
                      + vabs(t[0][1][2] - t[1][1][2]) + vabs(t[0][1][3] - t[1][1][3]);
            }
            rowl1[i] += hsum(acc0);
            if (i1 != i) rowl1[i1] += hsum(acc1);
            if (jb + JB >= N) {  /* the last block: the tail columns */
                for (int64_t ii = i; ii <= i1; ii++) {
                    float tail = 0;
                    for (int64_t j = Nv; j < N; j++) {
                        float v[2];
                        for (int e = 0; e < 2; e++) {
                            v[e] = entry(L[e].B + ii * L[e].r, L[e].r, L[e].A, N, j, L[e].s);
                            slo[e] = v[e] < slo[e] ? v[e] : slo[e];
                            shi[e] = v[e] > shi[e] ? v[e] : shi[e];
                        }
                        const float d = v[0] - v[1];
                        tail += d < 0 ? -d : d;
                    }
                    rowl1[ii] += tail;
                }
            }
        }
    }
    for (int e = 0; e < 2; e++) {
        float a = slo[e], b = shi[e];
        for (int l = 0; l < LANES; l++) {
            a = lo[e][l] < a ? lo[e][l] : a;
            b = hi[e][l] > b ? hi[e][l] : b;
        }
        range[2 * e] = a;
        range[2 * e + 1] = b;
    }
}

static inline int64_t bin_of(float v, float lo, float fb, float span, int64_t bins) {
    const float p = ((v - lo) * fb) / span;
    int64_t b = (int64_t)p;
    return b < 0 ? 0 : (b >= bins ? bins - 1 : b);
}

CLONES void lora_gate_hist(const float *Bb, const float *Ab, int64_t rb, float sb,
                           const float *Bg, const float *Ag, int64_t rg, float sg,
                           int64_t M, int64_t N, int64_t bins, const float *range, double *counts) {
    const Lora L[2] = {{Bb, Ab, rb, sb}, {Bg, Ag, rg, sg}};
    const int64_t Nv = N - N % TC;
    const float fb = (float)bins;
    const int vec = bins <= MAXV;
    vi ge[2][MAXV];           /* ge[e][k]: lanes' counts of p >= k (k = 1 .. bins-1) */
    int64_t scalar[2][4097];  /* per-element counts: the tails, and every entry when bins > MAXV */
    memset(ge, 0, sizeof ge);
    memset(scalar, 0, sizeof scalar);
    float lo[2], span[2];
    for (int e = 0; e < 2; e++) { lo[e] = range[2 * e]; span[e] = range[2 * e + 1] - range[2 * e]; }
    for (int64_t jb = 0; jb < N; jb += JB) {
        const int64_t je = jb + JB < Nv ? jb + JB : Nv;
        for (int64_t i = 0; i < M; i += 2) {
            const int64_t i1 = i + 1 < M ? i + 1 : i;
            const int nrows = i1 != i ? 2 : 1;
            for (int64_t j = jb; j < je; j += TC) {
                for (int e = 0; e < 2; e++) {
                    vf t[2][W];
                    tile2(L[e].B + i * L[e].r, L[e].B + i1 * L[e].r, L[e].r, L[e].A, N, j, L[e].s, t);
                    for (int rho = 0; rho < nrows; rho++)
                        for (int w = 0; w < W; w++) {
                            const vf p = ((t[rho][w] - lo[e]) * fb) / span[e];
                            if (vec) {
                                for (int k = 1; k < bins; k++) ge[e][k] -= (vi)(p >= (float)k);
                            } else {
                                for (int l = 0; l < LANES; l++)
                                    scalar[e][bin_of(t[rho][w][l], lo[e], fb, span[e], bins)]++;
                            }
                        }
                }
            }
            if (jb + JB >= N)
                for (int64_t ii = i; ii <= i1; ii++)
                    for (int64_t j = Nv; j < N; j++)
                        for (int e = 0; e < 2; e++) {
                            const float v = entry(L[e].B + ii * L[e].r, L[e].r, L[e].A, N, j, L[e].s);
                            scalar[e][bin_of(v, lo[e], fb, span[e], bins)]++;
                        }
        }
    }
    for (int e = 0; e < 2; e++) {
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
