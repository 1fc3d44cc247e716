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

void mlb_sampler_take_(mlb_sampler_t *s, uint64_t t_ns, double value);

/* Hot-path add: one increment and one compare for skipped items. */
static inline void mlb_sampler_add_inline(mlb_sampler_t *s, uint64_t t_ns, double value)
{
    if (++s->r.n_seen < s->next)
        return;
    mlb_sampler_take_(s, t_ns, value);
}

#endif
