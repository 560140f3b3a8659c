/* The activation hooks' per-call reductions on the CPU, in one pass over the activation.
 * Built on first use by graft_ui/analysis/_native_stats.py with the system C compiler.
 *
 *   out[0] = sum |x|      out[1] = x0 = x[0]      out[2] = sum (x - x0)
 *   out[3] = sum (x - x0)^2                       out[4] = count(|x| >= thr)
 *   out[5] = n            out[6] = module         out[7] = scale
 * (one row of the accumulator's call table: the caller's tags are stored here so that
 * recording a call costs Python nothing beyond this one foreign call)
 *
 * Float32 partial sums over blocks of BLK elements (vectorised by `omp simd`, which
 * permits reordering the block's sum without -ffast-math), added up in double, so the
 * result is at least as accurate as a float32 BLAS dot. Counts stay exact: a block's
 * count is at most BLK < 2^24. graft_ui/native.py builds it for the CPU it runs on
 * (-march=native), so `omp simd` uses that CPU's vector width.
 *
 * What it promises on any CPU: out[4], out[5] exact; each sum within (BLK + n / BLK) 2^-24
 * times the sum of its terms' magnitudes of the exact sum (any order of the float32 block
 * sums: the vector width picks it, so the sums differ between AVX2, AVX-512 and NEON builds
 * and from numpy's by a few ulps).
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

#define BLK 2048

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

#define STATS_BODY(LOAD)                                                   \
    double l1 = 0, sd = 0, sq = 0, big = 0;                                \
    const float x0 = LOAD(x[0]);                                           \
    for (int64_t s = 0; s < n; s += BLK) {                                 \
        const int64_t e = s + BLK < n ? s + BLK : n;                       \
        float a = 0, b = 0, c = 0, g = 0;                                  \
        _Pragma("omp simd reduction(+:a,b,c,g)")                           \
        for (int64_t i = s; i < e; i++) {                                  \
            const float v = LOAD(x[i]);                                    \
            const float av = fabsf(v), d = v - x0;                         \
            a += av;                                                       \
            b += d;                                                        \
            c += d * d;                                                    \
            g += av >= thr ? 1.0f : 0.0f;                                  \
        }                                                                  \
        l1 += a; sd += b; sq += c; big += g;                               \
    }                                                                      \
    out[0] = l1; out[1] = x0; out[2] = sd; out[3] = sq; out[4] = big;         \
    out[5] = (double)n; out[6] = module; out[7] = scale;

#define AS_F32(v) (v)

void graft_stats_f32(const float *x, int64_t n, float thr, double *out, double module, double scale) { STATS_BODY(AS_F32) }

void graft_stats_bf16(const uint16_t *x, int64_t n, float thr, double *out, double module, double scale) { STATS_BODY(bf16_to_f32) }
