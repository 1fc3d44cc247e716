/* Uniform reservoir sampler (Algorithm L), merge, and summary statistics.
 * No allocation, no locks: safe on a data-plane worker's fast path. */
#include <string.h>
#include "mlb_core.h"

#define K MLB_RESERVOIR_K

void mlb_rng_seed(mlb_rng_t *rng, uint64_t seed) { rng->s = seed; }
uint64_t mlb_rng_next(mlb_rng_t *rng) { return mlb_rng_u64(rng); }

static void restart_skips(mlb_sampler_t *s)
{
    if (s->r.count < K) {
        s->next = s->r.n_seen + 1;
        return;
    }
    s->w = exp(log(mlb_rng_unit(&s->rng)) / K);
    s->next = s->r.n_seen + mlb_sampler_skip_(s) + 1;
}

void mlb_sampler_init(mlb_sampler_t *s, uint64_t seed)
{
    memset(s, 0, sizeof(*s));
    mlb_rng_seed(&s->rng, seed);
    s->next = 1;
}

void mlb_sampler_reset(mlb_sampler_t *s)
{
    s->r.n_seen = 0;
    s->r.count = 0;
    s->next = 1;
}

/* Keep the samples but forget how many items they stand for, so that new
 * items enter with probability K/(K+j): the reservoir tracks recent flows
 * instead of a uniform sample of all history. */
void mlb_sampler_forget(mlb_sampler_t *s)
{
    s->r.n_seen = s->r.count;
    restart_skips(s);
}

void mlb_sampler_add(mlb_sampler_t *s, uint64_t t_ns, double value)
{
    mlb_sampler_add_inline(s, t_ns, value);
}

void mlb_sampler_add_batch(mlb_sampler_t *s, const double *values,
                           const uint64_t *t_ns, uint64_t t_default, size_t n)
{
    size_t i = 0;
    for (; i < n && s->r.count < K; i++)
        mlb_sampler_add_inline(s, t_ns ? t_ns[i] : t_default, values[i]);
    if (i == n)
        return;
    /* Full: jump straight to the items that enter. Item i has 1-based
     * index n_seen + 1, so the entering one is i + (next - n_seen - 1). */
    uint64_t seen = s->r.n_seen;
    uint64_t end = seen + (n - i);
    while (s->next <= end) {
        size_t j = i + (size_t)(s->next - seen - 1);
        mlb_sample_t *slot = &s->r.s[mlb_rng_below(&s->rng, K)];
        slot->t_ns = t_ns ? t_ns[j] : t_default;
        slot->value = values[j];
        s->w *= exp(log(mlb_rng_unit(&s->rng)) / K);
        s->next = s->next + mlb_sampler_skip_(s) + 1;
    }
    s->r.n_seen = end;
}

/* Live slots and the stream size they stand for, made consistent even when
 * the image is garbage (a torn or corrupted region must not crash us). */
static uint32_t live_of(const mlb_reservoir_t *r, uint64_t *n_seen)
{
    uint32_t c = r->count > K ? K : r->count;
    uint64_t n = r->n_seen;
    if (n < c || (c < K && n != c))
        n = c;
    *n_seen = n;
    return c;
}

/* Merge into one sample of the union in which every item of the union has
 * the same inclusion probability m/N (m = min(K, N), N = sum of n_seen).
 * Per-source counts use systematic rounding of m*n_i/N (unbiased, lower
 * variance than the hypergeometric draw); within a source a uniform subset
 * of its live slots is taken by a partial Fisher-Yates shuffle. */
int mlb_reservoir_merge(const mlb_reservoir_t **src, size_t nsrc,
                        mlb_reservoir_t *dst, mlb_rng_t *rng_io)
{
    mlb_rng_t local = *rng_io, *rng = &local;   /* keep the state in a register */
    uint64_t n[MLB_MAX_WORKERS], total = 0;
    uint32_t live[MLB_MAX_WORKERS];
    if (nsrc > MLB_MAX_WORKERS)
        return MLB_ERR_ARG;
    for (size_t i = 0; i < nsrc; i++) {
        live[i] = live_of(src[i], &n[i]);
        total += n[i];
    }
    uint32_t m = total < K ? (uint32_t)total : K;
    uint32_t out = 0;
    double u = mlb_rng_unit(rng) - 0x1p-53, cum = 0.0;  /* u in [0, 1) */
    long prev = 0;
    for (size_t i = 0; i < nsrc; i++) {
        cum += (double)m * (double)n[i] / (double)total;
        long upto = (i + 1 == nsrc) ? (long)m : (long)floor(cum + u);
        long take = upto - prev;
        prev = upto;
        if (take <= 0)
            continue;
        if (take > (long)live[i])
            take = live[i];
        if (out + take > m)
            take = m - out;
        if ((uint32_t)take == live[i]) {
            memcpy(&dst->s[out], src[i]->s, take * sizeof(mlb_sample_t));
            out += (uint32_t)take;
            continue;
        }
        /* Floyd's algorithm: a uniform `take`-subset of the live slots
         * with `take` draws into a bitmap; then copy in slot order, so the
         * reads of the shared frame are sequential (prefetch-friendly). */
        uint64_t used[K / 64] = {0};
        for (uint32_t j = live[i] - (uint32_t)take; j < live[i]; j++) {
            uint32_t t = mlb_rng_below(rng, j + 1);
            t = (used[t / 64] >> (t % 64) & 1) ? j : t;
            used[t / 64] |= 1ULL << (t % 64);
        }
        for (uint32_t b = 0; b < K / 64; b++)
            for (uint64_t bits = used[b]; bits; bits &= bits - 1)
                dst->s[out++] = src[i]->s[b * 64 + (uint32_t)__builtin_ctzll(bits)];
    }
    *rng_io = local;
    dst->count = out;
    dst->n_seen = total;
    dst->_pad = 0;
    return MLB_OK;
}

/* exp(x) for x <= 0 to ~1e-12 relative error, branch-free so the compiler
 * vectorises the per-sample decay loop (libm's exp was 80% of stats). */
static inline double exp_nonpos(double x)  /* x in [-700, 0] */
{
    const double magic = 6755399441055744.0;          /* 1.5 * 2^52 */
    union { double d; uint64_t u; } y, scale;
    y.d = x * 1.4426950408889634 + magic;   /* low bits: round(x / ln 2) */
    double k = y.d - magic;
    double r = (x - k * 0.6931471803691238) - k * 1.9082149292705877e-10;
    /* |r| <= ln2/2: the degree-10 Taylor remainder is below 1e-12 */
    double p = 1.0 + r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120
             + r * (1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880
             + r * (1.0 / 3628800))))))))));
    scale.u = (y.u + 1023) << 52;           /* 2^k from the low 12 bits */
    return p * scale.d;
}

/* The k-th and (k+1)-th smallest (0-based) of v[0..n), k + 1 < n, keeping
 * only the n - k largest values in a small sorted buffer: for p90 of 128
 * that is 14 slots, and most values are rejected by one compare. */
static void kth_pair(const double *v, uint32_t n, uint32_t k, double *kth, double *next)
{
    double top[MLB_RESERVOIR_K];
    uint32_t m = n - k, len = 0;
    for (uint32_t i = 0; i < n; i++) {
        double x = v[i];
        if (len == m) {
            if (!(x > top[0]))
                continue;
            uint32_t j = 0;                      /* drop top[0], insert x */
            while (j + 1 < m && top[j + 1] < x) { top[j] = top[j + 1]; j++; }
            top[j] = x;
        } else {
            uint32_t j = len++;
            while (j > 0 && top[j - 1] > x) { top[j] = top[j - 1]; j--; }
            top[j] = x;
        }
    }
    *kth = top[0];
    *next = m > 1 ? top[1] : top[0];
}

/* Smallest x with weight(values <= x) >= target: weighted quickselect. */
static double weighted_select(double *v, double *w, uint32_t n, double target)
{
    uint32_t lo = 0, hi = n;       /* half-open */
    double below = 0.0;
    while (hi - lo > 1) {
        double pivot = v[lo + (hi - lo) / 2];
        uint32_t lt = lo, gt = hi, i = lo;  /* [lo,lt) <, [lt,gt) ==, [gt,hi) > */
        double wl = 0.0, we = 0.0;
        while (i < gt) {
            if (v[i] < pivot) {
                double tv = v[i], tw = w[i];
                v[i] = v[lt]; w[i] = w[lt]; v[lt] = tv; w[lt] = tw;
                wl += tw; lt++; i++;
            } else if (v[i] > pivot) {
                gt--;
                double tv = v[i], tw = w[i];
                v[i] = v[gt]; w[i] = w[gt]; v[gt] = tv; w[gt] = tw;
            } else {
                we += w[i]; i++;
            }
        }
        if (below + wl >= target && lt > lo)
            hi = lt;
        else if (below + wl + we >= target || gt == hi)
            return pivot;
        else {
            below += wl + we;
            lo = gt;
        }
    }
    return v[lo];
}

void mlb_reservoir_stats(const mlb_reservoir_t *r, uint64_t now_ns,
                         double decay_per_s, mlb_stats_t *out)
{
    uint64_t n_seen;
    uint32_t n = live_of(r, &n_seen);
    double v[K], w[K];
    double sum = 0.0, wsum = 0.0, wxsum = 0.0;
    double ln_decay = log(decay_per_s);
    out->count = n;
    out->_pad = 0;
    if (n == 0) {
        out->mean = out->std = out->p90 = out->dmean = out->dp90 = NAN;
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        double x = r->s[i].value;
        uint64_t t = r->s[i].t_ns;
        double age_s = t < now_ns ? (double)(int64_t)(now_ns - t) * 1e-9 : 0.0;
        v[i] = x;
        double e = ln_decay * age_s;          /* decay in (0, 1]: e <= 0 */
        w[i] = e < -700.0 ? -700.0 : (e > 0.0 ? 0.0 : e);
    }
    for (uint32_t i = 0; i < n; i++)   /* no reduction here: vectorises */
        w[i] = exp_nonpos(w[i]);
    for (uint32_t i = 0; i < n; i++) {
        sum += v[i];
        wsum += w[i];
        wxsum += w[i] * v[i];
    }
    double mean = sum / n, ss = 0.0;
    for (uint32_t i = 0; i < n; i++)
        ss += (v[i] - mean) * (v[i] - mean);
    out->mean = mean;
    out->std = sqrt(ss / n);
    /* all weights underflow to 0 for very old samples: fall back to plain */
    out->dmean = wsum > 0.0 ? wxsum / wsum : mean;


    double h = 0.9 * (n - 1);                   /* numpy's linear rule */
    uint32_t k = (uint32_t)h;
    double lo, hi;
    kth_pair(v, n, k, &lo, &hi);
    out->p90 = lo + (h - k) * (hi - lo);
    /* last: it reorders v and w */
    out->dp90 = wsum > 0.0 ? weighted_select(v, w, n, 0.9 * wsum) : out->p90;
}

void mlb_reservoir_stats_many(const mlb_reservoir_t *r, size_t n, uint64_t now_ns,
                              double decay_per_s, mlb_stats_t *out)
{
    for (size_t i = 0; i < n; i++)
        mlb_reservoir_stats(&r[i], now_ns, decay_per_s, &out[i]);
}
