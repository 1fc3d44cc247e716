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
        mlb_sample_set(&s->r.s[mlb_rng_below(&s->rng, K)], t_ns ? t_ns[j] : t_default,
                       values[j]);
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

/* One step of Floyd's algorithm: draw t uniform in [0, j] from 32 random
 * bits (multiply-shift); take t, or j when t is taken already. */
static inline void floyd_step(uint64_t *used, uint32_t j, uint32_t r32)
{
    uint32_t t = (uint32_t)(((uint64_t)r32 * (j + 1)) >> 32);
    t = (used[t / 64] >> (t % 64) & 1) ? j : t;
    used[t / 64] |= 1ULL << (t % 64);
}

_Static_assert((K & (K - 1)) == 0, "MLB_RESERVOIR_K must be a power of two");

/* Merge into one sample of the union in which every item of the union has
 * the same inclusion probability m/N (m = min(K, N), N = sum of n_seen).
 * Per-source counts use systematic rounding of m*n_i/N (unbiased, lower
 * variance than the hypergeometric draw).  Within a source, `take` of its
 * `live` slots:
 *  - a full source (live == K, the steady state): the first `take` slots of
 *    a random affine permutation j -> (a*j + b) mod K (a odd, b uniform).
 *    Every slot is taken with probability take/K exactly, one random draw
 *    per source.  Algorithm L writes each entering item to a uniformly
 *    random slot, so a full reservoir's slots are (after the first fill)
 *    exchangeable and any fixed-size slot subset is a uniform sample of its
 *    items; the permutation also breaks up the fill order.
 *  - otherwise a uniform `take`-subset by Floyd's algorithm into a bitmap,
 *    copied in slot order.
 * The Floyd bookkeeping (a dependent chain per draw) made the merge, not the
 * memory reads, the cost of a snapshot. */
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
        const mlb_sample_t *s = src[i]->s;
        if ((uint32_t)take == live[i]) {
            memcpy(&dst->s[out], s, take * sizeof(mlb_sample_t));
            out += (uint32_t)take;
            continue;
        }
        if (live[i] == K) {
            uint64_t r = mlb_rng_u64(rng);
            uint32_t a = ((uint32_t)r & (K - 1)) | 1, b = (uint32_t)(r >> 32) & (K - 1);
            for (uint32_t j = 0; j < (uint32_t)take; j++)
                dst->s[out + j] = s[(b + a * j) & (K - 1)];
            out += (uint32_t)take;
            continue;
        }
        uint64_t used[K / 64] = {0};
        uint32_t j = live[i] - (uint32_t)take;
        if (take & 1)
            floyd_step(used, j++, (uint32_t)(mlb_rng_u64(rng) >> 32));
        for (; j < live[i]; j += 2) {   /* one 64-bit draw serves two steps */
            uint64_t b = mlb_rng_u64(rng);
            floyd_step(used, j, (uint32_t)(b >> 32));
            floyd_step(used, j + 1, (uint32_t)b);
        }
        for (uint32_t w = 0; w < K / 64; w++)
            for (uint64_t bits = used[w]; bits; bits &= bits - 1)
                dst->s[out++] = s[w * 64 + (uint32_t)__builtin_ctzll(bits)];
    }
    *rng_io = local;
    dst->count = out;
    dst->n_seen = total;
    dst->_pad = 0;
    return MLB_OK;
}

/* Seconds per unit of a sample's time stamp. */
#define T_UNIT_S ((double)(1ULL << MLB_SAMPLE_T_SHIFT) * 1e-9)

/* decay^age by table: an age of a stamp units (0 <= a < 2^31) is split into
 * 10 + 10 + 11 bits, weight = t0[a & 1023] * t1[a >> 10 & 1023] * t2[a >> 20],
 * each entry from libm's exp2, so a weight is within a few ulp of
 * decay^(a * unit) (or underflows to 0 with it).  The tables are rebuilt
 * only when the decay changes, per thread (the daemon uses one decay for
 * its lifetime; 4096 exp2 calls then). */
#define DECAY_BITS 10
#define DECAY_N (1u << DECAY_BITS)
typedef struct {
    double decay;
    double t0[DECAY_N], t1[DECAY_N], t2[2 * DECAY_N];
} decay_table_t;

static _Thread_local decay_table_t decay_tab;

static const decay_table_t *decay_table(double decay_per_s)
{
    decay_table_t *t = &decay_tab;
    if (t->decay != decay_per_s) {
        double c = log2(decay_per_s) * T_UNIT_S;    /* log2 weight per unit, <= 0 */
        for (uint32_t a = 0; a < DECAY_N; a++) {
            t->t0[a] = exp2(c * a);
            t->t1[a] = exp2(c * (double)a * DECAY_N);
        }
        for (uint32_t a = 0; a < 2 * DECAY_N; a++)
            t->t2[a] = exp2(c * (double)a * DECAY_N * DECAY_N);
        t->decay = decay_per_s;
    }
    return t;
}

/* A sample's sort key: its float32 value's bits made order-preserving as an
 * unsigned integer (negative floats flipped whole, others get the sign bit
 * set) in the high half, its slot index in the low half.  One integer
 * compare orders values, and moving a key moves value and weight together. */
static inline uint64_t sort_key(float value, uint32_t i)
{
    union { float f; uint32_t u; } b = { .f = value };
    uint32_t mask = (uint32_t)-(int32_t)(b.u >> 31) | 0x80000000u;
    return (uint64_t)(b.u ^ mask) << 32 | i;
}

/* Insert x into the ascending buffer top[0..*len) that keeps the m largest. */
static inline void top_insert(uint64_t *top, uint32_t *len, uint32_t m, uint64_t x)
{
    uint32_t j;
    if (*len == m) {
        if (x < top[0])
            return;
        for (j = 0; j + 1 < m && top[j + 1] < x; j++)    /* drop top[0], insert x */
            top[j] = top[j + 1];
    } else {
        for (j = (*len)++; j > 0 && top[j - 1] > x; j--)
            top[j] = top[j - 1];
    }
    top[j] = x;
}

/* The m largest keys of key[0..n), ascending in top (1 <= m <= n).  The
 * maxima of groups of four go in first: they fill the buffer with large
 * keys, so that most of the others are rejected by one compare (about 40%
 * fewer insertions than in slot order). */
static void top_m(const uint64_t *key, uint32_t n, uint32_t m, uint64_t *top)
{
    uint32_t len = 0, g = n / 4, i = 0;
    if (g >= m) {
        uint64_t gmax[K / 4];
        for (uint32_t q = 0; q < g; q++) {
            uint64_t a = key[4 * q] > key[4 * q + 1] ? key[4 * q] : key[4 * q + 1];
            uint64_t b = key[4 * q + 2] > key[4 * q + 3] ? key[4 * q + 2] : key[4 * q + 3];
            gmax[q] = a > b ? a : b;
            top_insert(top, &len, m, gmax[q]);
        }
        for (; i < 4 * g; i++)             /* keys are distinct: skip each group's max */
            if (key[i] != gmax[i / 4])
                top_insert(top, &len, m, key[i]);
    }
    for (; i < n; i++)
        top_insert(top, &len, m, key[i]);
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

/* dp90 from the top buffer: walk down the groups of equal values while the
 * weight at or below the group still reaches target.  Decided there unless
 * the walk gets to the buffer's least group and the buffer is not all the
 * values (lower values may qualify too, and ties of top[0] may be missing):
 * then *done = 0. */
static double top_weighted(const uint64_t *top, uint32_t m, int all, const double *v,
                           const double *w, double wsum, double target, int *done)
{
    double above = 0.0, best = v[(uint32_t)top[m - 1]];
    uint32_t j = m;
    *done = 1;
    while (j > 0) {
        uint32_t hi = (uint32_t)(top[j - 1] >> 32), g = j;
        double gw = 0.0;
        while (g > 0 && (uint32_t)(top[g - 1] >> 32) == hi)
            gw += w[(uint32_t)top[--g]];
        if (!(wsum - above >= target))
            return best;        /* this group is too low: the one above is the answer */
        best = v[(uint32_t)top[g]];
        if (g == 0) {
            *done = all;
            return best;
        }
        above += gw;
        j = g;
    }
    return best;
}

/* Extra slots beyond what p90 needs, so that dp90 is decided in the top
 * buffer unless the weight sits far below the top (old large samples). */
#define TOP_EXTRA 6

void mlb_reservoir_stats(const mlb_reservoir_t *r, uint64_t now_ns,
                         double decay_per_s, mlb_stats_t *out)
{
    uint64_t n_seen;
    uint32_t n = live_of(r, &n_seen);
    double v[K], w[K];
    uint64_t key[K], top[K];
    out->count = n;
    out->_pad = 0;
    if (n == 0) {
        out->mean = out->std = out->p90 = out->dmean = out->dp90 = NAN;
        return;
    }
    if (!(decay_per_s > 0.0 && decay_per_s <= 1.0))
        decay_per_s = 1.0;
    /* weight = decay^age = 2^(age_units * c): c <= 0, so the exponent is <= 0 */
    const decay_table_t *dt = decay_table(decay_per_s);
    const uint32_t now_u = (uint32_t)(now_ns >> MLB_SAMPLE_T_SHIFT);
    for (uint32_t i = 0; i < n; i++) {
        float x = r->s[i].value;
        int32_t age = (int32_t)(now_u - r->s[i].t);          /* signed: stamps wrap */
        uint32_t a = age > 0 ? (uint32_t)age : 0;           /* stamped after now: age 0 */
        v[i] = (double)x;
        key[i] = sort_key(x, i);
        w[i] = dt->t0[a & (DECAY_N - 1)] * dt->t1[a >> DECAY_BITS & (DECAY_N - 1)]
             * dt->t2[a >> (2 * DECAY_BITS)];
    }
    /* One pass for all sums; four lanes break the add chains.  The spread
     * is summed about v[0] (shifted data: no cancellation for a tight one). */
    const double x0 = v[0];
    double s0[4] = {0}, s2[4] = {0}, sw[4] = {0}, sx[4] = {0};
    uint32_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (uint32_t j = 0; j < 4; j++) {
            double x = v[i + j], d = x - x0;
            s0[j] += x;
            s2[j] += d * d;
            sw[j] += w[i + j];
            sx[j] += w[i + j] * x;
        }
    for (; i < n; i++) {
        double x = v[i], d = x - x0;
        s0[0] += x;
        s2[0] += d * d;
        sw[0] += w[i];
        sx[0] += w[i] * x;
    }
    double sum = (s0[0] + s0[1]) + (s0[2] + s0[3]);
    double wsum = (sw[0] + sw[1]) + (sw[2] + sw[3]);
    double wxsum = (sx[0] + sx[1]) + (sx[2] + sx[3]);
    double d1 = sum / n - x0;
    double var = ((s2[0] + s2[1]) + (s2[2] + s2[3])) / n - d1 * d1;
    double mean = sum / n;
    out->mean = mean;
    out->std = sqrt(var < 0.0 ? 0.0 : var);     /* NaN stays NaN */
    /* all weights underflow to 0 for very old samples: fall back to plain */
    out->dmean = wsum > 0.0 ? wxsum / wsum : mean;

    double h = 0.9 * (n - 1);                   /* numpy's linear rule */
    uint32_t k = (uint32_t)h;
    uint32_t m = n - k + TOP_EXTRA;             /* p90 needs the n - k largest */
    if (m > n)
        m = n;
    top_m(key, n, m, top);
    double lo = v[(uint32_t)top[m - (n - k)]];
    double hi = n - k > 1 ? v[(uint32_t)top[m - (n - k) + 1]] : lo;
    out->p90 = lo + (h - k) * (hi - lo);
    if (!(wsum > 0.0)) {
        out->dp90 = out->p90;
        return;
    }
    int done;
    double target = 0.9 * wsum;
    double dp = top_weighted(top, m, m == n, v, w, wsum, target, &done);
    out->dp90 = done ? dp : weighted_select(v, w, n, target);   /* reorders v and w */
}

void mlb_reservoir_stats_many(const mlb_reservoir_t *r, size_t n, uint64_t now_ns,
                              double decay_per_s, mlb_stats_t *out)
{
    for (size_t i = 0; i < n; i++)
        mlb_reservoir_stats(&r[i], now_ns, decay_per_s, &out[i]);
}
