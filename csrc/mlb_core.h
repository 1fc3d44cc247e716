/* C entry point to the portable core (reservoir sampler, region publish and
 * snapshot).  Used by the cffi module, the data-plane core and the VPP glue. */
#ifndef MLB_CORE_H
#define MLB_CORE_H

#include <math.h>
#include "../shm_layout/mlb_abi.h"
#include "mlb_core_api.h"

/* splitmix64: tiny, fast, passes BigCrush; one state word per stream */
static inline uint64_t mlb_rng_u64(mlb_rng_t *rng)
{
    uint64_t z = (rng->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* uniform double in (0, 1]: never 0, so log() is finite */
static inline double mlb_rng_unit(mlb_rng_t *rng)
{
    return (double)((mlb_rng_u64(rng) >> 11) + 1) * (1.0 / 9007199254740992.0);
}

/* uniform integer in [0, n), n < 2^32 (Lemire's multiply-shift) */
static inline uint32_t mlb_rng_below(mlb_rng_t *rng, uint32_t n)
{
    return (uint32_t)(((mlb_rng_u64(rng) >> 32) * (uint64_t)n) >> 32);
}

/* Algorithm L: how many items to skip before the next one enters. */
static inline uint64_t mlb_sampler_skip_(mlb_sampler_t *s)
{
    double d = floor(log(mlb_rng_unit(&s->rng)) / log1p(-s->w));
    if (!(d >= 0.0))             /* NaN when w == 1: take the next item */
        return 0;
    return d > 1e18 ? (uint64_t)1e18 : (uint64_t)d;
}

/* The compact sample (ABI 2): float32 seconds and the time in units of
 * 2^MLB_SAMPLE_T_SHIFT ns, modulo 2^32 (see mlb_shm.h).  Only items that
 * enter the reservoir pay for the conversion. */
static inline void mlb_sample_set(mlb_sample_t *slot, uint64_t t_ns, double value)
{
    slot->value = (float)value;     /* IEEE: out of range -> inf, NaN stays NaN */
    slot->t = (uint32_t)(t_ns >> MLB_SAMPLE_T_SHIFT);
}

/* Called with n_seen already counting this item, when n_seen == next. */
static inline void mlb_sampler_take_(mlb_sampler_t *s, uint64_t t_ns, double value)
{
    mlb_sample_t *slot;
    if (s->r.count < MLB_RESERVOIR_K) {
        slot = &s->r.s[s->r.count++];
        mlb_sample_set(slot, t_ns, value);
        if (s->r.count < MLB_RESERVOIR_K) {
            s->next = s->r.n_seen + 1;
            return;
        }
        s->w = exp(log(mlb_rng_unit(&s->rng)) / MLB_RESERVOIR_K);
    } else {
        slot = &s->r.s[mlb_rng_below(&s->rng, MLB_RESERVOIR_K)];
        mlb_sample_set(slot, t_ns, value);
        s->w *= exp(log(mlb_rng_unit(&s->rng)) / MLB_RESERVOIR_K);
    }
    s->next = s->r.n_seen + mlb_sampler_skip_(s) + 1;
}

/* Hot-path add: one increment and one compare for skipped items. Fully
 * inline so a caller's loop can keep the counter in a register. */
static inline void mlb_sampler_add_inline(mlb_sampler_t *s, uint64_t t_ns, double value)
{
    if (__builtin_expect(++s->r.n_seen < s->next, 1))
        return;
    mlb_sampler_take_(s, t_ns, value);
}

#endif
