/* marllb data-plane core: flow table, new-flow selection, counters,
 * reservoir feed, msg_in apply and msg_out publish.  Plain C11, no VPP.
 *
 * Per-packet path (mlb_dp_packet): one bucket probe in the calling
 * worker's flow table (8 keys = one cache line), and for a new flow one
 * selection over the current policy.  No locks, no allocation, no logging.
 *
 * The policy (weights in force, SED inverse weights, alias table, Maglev
 * table) is double-buffered: the control thread builds the idle copy and
 * then swaps the index, so weight changes never touch the packet path and
 * never move a pinned flow. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "dp_core.h"

#define BUCKET 8
#define MIN_SLOTS 64
#define MAX_SLOTS (1u << 26)
#define NONE16 0xFFFFu

typedef struct {
    uint64_t first_ns;
    uint64_t last_ns;
    uint32_t server;
    uint32_t _pad;
} flow_t;

typedef struct {
    uint64_t new_flows;
    uint64_t completed;
    uint64_t packets;
    uint64_t bytes;
    uint64_t timeouts;
} wctr_t;

typedef struct {
    _Alignas(64) uint64_t *keys;   /* n_slots, 0 = empty */
    flow_t *flows;                 /* n_slots, parallel to keys */
    uint32_t bucket_mask;
    uint32_t n_flows;
    mlb_rng_t rng;
    uint64_t untracked;
    uint64_t down_evictions;
    mlb_sampler_t *samp;           /* [server][MLB_RES_KINDS] */
    uint32_t active[MLB_MAX_SERVERS];
    wctr_t ctr[MLB_MAX_SERVERS];
    /* SED/LSQ tournament tree over this worker's scores: leaf i holds
     * sc[i] = (active[i] + 1) * inv[i]; win[node] is the winning server of
     * the subtree (lower score, then lower index); win[1] is the argmin. */
    double sc[MLB_MAX_SERVERS];
    uint16_t win[2 * MLB_MAX_SERVERS];
} worker_t;

typedef struct {
    uint64_t thresh;               /* take this index iff r32 < thresh (0 .. 2^32) */
    uint32_t alias;
    uint32_t _pad;
} alias_t;

typedef struct {
    uint32_t mode;
    uint32_t n_elig;
    uint32_t tree;                    /* mode selects by the tournament tree */
    uint32_t _pad;
    uint8_t elig[MLB_MAX_SERVERS];
    double weight[MLB_MAX_SERVERS];   /* weight in force (raw) */
    double inv[MLB_MAX_SERVERS];      /* score multiplier; INFINITY if not eligible */
    double inv_sed[MLB_MAX_SERVERS];  /* 1/w for P2C comparisons */
    alias_t alias[MLB_MAX_SERVERS];
    uint16_t *maglev;                 /* maglev_size entries, NONE16 = no server */
    uint64_t maglev_ids;              /* id_epoch the Maglev table was built for */
} policy_t;

struct mlb_dp {
    mlb_dp_config_t cfg;
    uint32_t n_servers;
    uint32_t n_workers;
    uint32_t n_slots;
    uint32_t maglev_size;
    uint32_t tree_leaves;             /* power of two >= n_servers */
    uint32_t _pad;
    _Atomic uint32_t cur;             /* index of the policy in force */
    uint32_t source;                  /* MLB_SRC_* */
    policy_t pol[2];
    /* per-server configuration */
    uint32_t id[MLB_MAX_SERVERS];
    uint32_t admin[MLB_MAX_SERVERS];
    double static_w[MLB_MAX_SERVERS];
    uint32_t cfg_mode;
    uint64_t id_epoch;                /* bumped when a server id changes */
    /* daemon weights */
    double daemon_w[MLB_MAX_SERVERS];
    uint32_t daemon_mode;
    uint64_t daemon_dp_t_ns;
    uint64_t daemon_ttl_ns;
    /* msg_in bookkeeping */
    uint64_t in_seen_p;
    int have_seen;
    uint64_t seen_gen;
    uint64_t seen_seq;
    mlb_msg_in_t in_buf;
    /* counters */
    uint64_t accepted, rej_stale, rej_gen, rej_invalid, fallbacks;
    uint64_t applied_gen, applied_seq;
    uint64_t frames;
    uint64_t last_pub_ns;
    uint64_t last_age_ns;
    int aged_once;
    uint32_t last_apply;
    worker_t *wk;
};

/* ---------- helpers ---------- */

static uint64_t mix64(uint64_t x)
{
    mlb_rng_t r = {x};
    return mlb_rng_u64(&r);
}

static int is_prime(uint32_t n)
{
    if (n < 2)
        return 0;
    for (uint32_t d = 2; (uint64_t)d * d <= n; d++)
        if (n % d == 0)
            return 0;
    return 1;
}

static uint32_t next_prime(uint32_t n)
{
    while (!is_prime(n))
        n++;
    return n;
}

static uint32_t pow2_at_least(uint32_t n)
{
    uint32_t p = MIN_SLOTS;
    while (p < n)
        p <<= 1;
    return p;
}

static uint32_t maglev_size_for(const mlb_dp_config_t *cfg)
{
    uint32_t want = 100 * cfg->n_servers;
    if (cfg->maglev_size > want)
        want = cfg->maglev_size;
    return next_prime(want < 101 ? 101 : want);
}

void mlb_dp_config_default(mlb_dp_config_t *cfg, uint32_t n_servers, uint32_t n_workers)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->n_servers = n_servers;
    cfg->n_workers = n_workers;
    cfg->flow_capacity = 1u << 16;
    cfg->mode = MLB_MODE_SED;
    cfg->idle_timeout_ns = 40ull * 1000000000ull;
    cfg->publish_interval_ns = 250ull * 1000000ull;
    cfg->seed = 0x6d6c6c62ull;
}

int mlb_dp_config_check(const mlb_dp_config_t *cfg, const char **field)
{
    const char *bad = NULL;
    if (!cfg)
        bad = "cfg";
    else if (cfg->n_servers == 0 || cfg->n_servers > MLB_MAX_SERVERS)
        bad = "n_servers";
    else if (cfg->n_workers == 0 || cfg->n_workers > MLB_MAX_WORKERS)
        bad = "n_workers";
    else if (cfg->flow_capacity == 0 || cfg->flow_capacity > MAX_SLOTS)
        bad = "flow_capacity";
    else if (cfg->mode == MLB_MODE_NONE || cfg->mode >= MLB_MODE_COUNT)
        bad = "mode";
    else if (cfg->idle_timeout_ns == 0)
        bad = "idle_timeout_ns";
    else if (cfg->publish_interval_ns == 0)
        bad = "publish_interval_ns";
    else if (cfg->maglev_size > (1u << 24))
        bad = "maglev_size";
    if (field)
        *field = bad;
    return bad ? MLB_ERR_ARG : MLB_OK;
}

/* ---------- policy build (control thread only) ---------- */

/* Vose's alias method over w[0..n-1] (w >= 0, ineligible entries 0). */
static void build_alias(alias_t *a, const double *w, const uint8_t *elig, uint32_t n)
{
    double p[MLB_MAX_SERVERS], sum = 0.0, max = 0.0;
    uint32_t small[MLB_MAX_SERVERS], large[MLB_MAX_SERVERS], ns = 0, nl = 0;
    uint32_t first_elig = NONE16;
    for (uint32_t i = 0; i < n; i++)
        if (elig[i] && w[i] > max)
            max = w[i];
    for (uint32_t i = 0; i < n; i++) {
        double x = elig[i] ? w[i] / max : 0.0;   /* scaled: no overflow */
        sum += x;
        if (elig[i] && first_elig == NONE16)
            first_elig = i;
    }
    for (uint32_t i = 0; i < n; i++) {
        a[i].alias = i;
        a[i]._pad = 0;
        if (sum <= 0.0) {
            a[i].thresh = 0;
            continue;
        }
        p[i] = (elig[i] ? w[i] / max : 0.0) * (double)n / sum;
        if (p[i] < 1.0)
            small[ns++] = i;
        else
            large[nl++] = i;
    }
    if (sum <= 0.0)
        return;
    while (ns && nl) {
        uint32_t s = small[--ns], l = large[nl - 1];
        a[s].thresh = (uint64_t)(p[s] * 4294967296.0);
        a[s].alias = l;
        p[l] -= 1.0 - p[s];
        if (p[l] < 1.0) {
            nl--;
            small[ns++] = l;
        }
    }
    /* leftovers are 1 up to rounding; a zero-weight one must never be taken */
    while (nl) {
        uint32_t l = large[--nl];
        a[l].thresh = 1ull << 32;
    }
    while (ns) {
        uint32_t s = small[--ns];
        if (elig[s] && w[s] > 0.0) {
            a[s].thresh = 1ull << 32;
        } else {
            a[s].thresh = 0;
            a[s].alias = first_elig;
        }
    }
}

/* Maglev population: each eligible server walks its own permutation of the
 * table (offset, skip from its id) taking the next free slot in turn. */
static void build_maglev(uint16_t *t, uint32_t m, const uint32_t *ids,
                         const uint8_t *elig, uint32_t n)
{
    uint32_t pos[MLB_MAX_SERVERS], skip[MLB_MAX_SERVERS], list[MLB_MAX_SERVERS], k = 0;
    for (uint32_t i = 0; i < m; i++)
        t[i] = NONE16;
    for (uint32_t i = 0; i < n; i++) {
        if (!elig[i])
            continue;
        uint64_t h = mix64(0x4d41474c45560000ull ^ ids[i]);
        list[k] = i;
        pos[k] = (uint32_t)((h >> 32) % m);
        skip[k] = (uint32_t)((h & 0xffffffffu) % (m - 1)) + 1;
        k++;
    }
    if (k == 0)
        return;
    uint32_t filled = 0;
    for (;;) {
        for (uint32_t j = 0; j < k; j++) {
            uint32_t c = pos[j];
            while (t[c] != NONE16) {
                c += skip[j];
                if (c >= m)
                    c -= m;
            }
            t[c] = (uint16_t)list[j];
            c += skip[j];
            if (c >= m)
                c -= m;
            pos[j] = c;
            if (++filled == m)
                return;
        }
    }
}

static inline uint32_t tree_better(const double *sc, uint32_t a, uint32_t b)
{
    return (sc[b] < sc[a] || (sc[b] == sc[a] && b < a)) ? b : a;
}

/* Leaf s changed: replay the matches on its path to the root. */
static inline void tree_update(worker_t *wk, const policy_t *p, uint32_t leaves, uint32_t s)
{
    wk->sc[s] = (double)(wk->active[s] + 1u) * p->inv[s];
    for (uint32_t node = (leaves + s) >> 1; node; node >>= 1)
        wk->win[node] = (uint16_t)tree_better(wk->sc, wk->win[2 * node], wk->win[2 * node + 1]);
}

static void tree_build(worker_t *wk, const policy_t *p, uint32_t n, uint32_t leaves)
{
    for (uint32_t i = 0; i < leaves; i++) {
        wk->sc[i] = i < n ? (double)(wk->active[i] + 1u) * p->inv[i] : INFINITY;
        wk->win[leaves + i] = (uint16_t)i;
    }
    for (uint32_t node = leaves - 1; node; node--)
        wk->win[node] = (uint16_t)tree_better(wk->sc, wk->win[2 * node], wk->win[2 * node + 1]);
}

static void rebuild(mlb_dp_t *dp)
{
    uint32_t cur = atomic_load_explicit(&dp->cur, memory_order_relaxed);
    const policy_t *old = &dp->pol[cur];
    policy_t *p = &dp->pol[cur ^ 1];
    const double *w = dp->source == MLB_SRC_DAEMON ? dp->daemon_w : dp->static_w;
    uint32_t n = dp->n_servers;
    p->mode = dp->source == MLB_SRC_DAEMON ? dp->daemon_mode : dp->cfg_mode;
    p->n_elig = 0;
    for (uint32_t i = 0; i < n; i++) {
        double x = w[i];
        p->weight[i] = x;
        p->elig[i] = dp->admin[i] == MLB_ADMIN_UP && x > 0.0;
        p->n_elig += p->elig[i];
        p->inv_sed[i] = p->elig[i] ? 1.0 / x : INFINITY;
        p->inv[i] = p->mode == MLB_MODE_LEAST_ACTIVE ? (p->elig[i] ? 1.0 : INFINITY)
                                                     : p->inv_sed[i];
    }
    build_alias(p->alias, w, p->elig, n);
    if (memcmp(p->elig, old->elig, n) == 0 && old->maglev[0] != NONE16 &&
        old->maglev_ids == dp->id_epoch)
        memcpy(p->maglev, old->maglev, dp->maglev_size * sizeof(uint16_t));
    else
        build_maglev(p->maglev, dp->maglev_size, dp->id, p->elig, n);
    p->maglev_ids = dp->id_epoch;
    p->tree = p->mode == MLB_MODE_SED || p->mode == MLB_MODE_LEAST_ACTIVE;
    /* control thread, no worker inside mlb_dp_packet: safe to rebuild */
    if (p->tree)
        for (uint32_t w = 0; w < dp->n_workers; w++)
            tree_build(&dp->wk[w], p, n, dp->tree_leaves);
    atomic_store_explicit(&dp->cur, cur ^ 1, memory_order_release);
}

/* ---------- create / destroy ---------- */

void mlb_dp_destroy(mlb_dp_t *dp)
{
    if (!dp)
        return;
    if (dp->wk) {
        for (uint32_t w = 0; w < dp->n_workers; w++) {
            free(dp->wk[w].keys);
            free(dp->wk[w].flows);
            free(dp->wk[w].samp);
        }
        free(dp->wk);
    }
    free(dp->pol[0].maglev);
    free(dp->pol[1].maglev);
    free(dp);
}

mlb_dp_t *mlb_dp_create(const mlb_dp_config_t *cfg)
{
    if (mlb_dp_config_check(cfg, NULL) != MLB_OK)
        return NULL;
    mlb_dp_t *dp = calloc(1, sizeof(*dp));
    if (!dp)
        return NULL;
    dp->cfg = *cfg;
    dp->n_servers = cfg->n_servers;
    dp->n_workers = cfg->n_workers;
    dp->n_slots = pow2_at_least(cfg->flow_capacity);
    dp->maglev_size = maglev_size_for(cfg);
    dp->tree_leaves = 1;
    while (dp->tree_leaves < cfg->n_servers)
        dp->tree_leaves <<= 1;
    dp->cfg_mode = cfg->mode;
    dp->source = MLB_SRC_STATIC;
    for (int i = 0; i < 2; i++) {
        dp->pol[i].maglev = malloc(dp->maglev_size * sizeof(uint16_t));
        if (!dp->pol[i].maglev)
            goto fail;
        dp->pol[i].maglev[0] = NONE16;
    }
    dp->wk = aligned_alloc(64, ((sizeof(worker_t) * cfg->n_workers + 63) / 64) * 64);
    if (!dp->wk)
        goto fail;
    memset(dp->wk, 0, sizeof(worker_t) * cfg->n_workers);
    for (uint32_t w = 0; w < cfg->n_workers; w++) {
        worker_t *wk = &dp->wk[w];
        wk->keys = aligned_alloc(64, (size_t)dp->n_slots * sizeof(uint64_t));
        wk->flows = calloc(dp->n_slots, sizeof(flow_t));
        wk->samp = calloc((size_t)cfg->n_servers * MLB_RES_KINDS, sizeof(mlb_sampler_t));
        if (!wk->keys || !wk->flows || !wk->samp)
            goto fail;
        memset(wk->keys, 0, (size_t)dp->n_slots * sizeof(uint64_t));
        wk->bucket_mask = dp->n_slots / BUCKET - 1;
        mlb_rng_seed(&wk->rng, mix64(cfg->seed ^ (0x5745524bull + w)));
        for (uint32_t i = 0; i < cfg->n_servers * MLB_RES_KINDS; i++)
            mlb_sampler_init(&wk->samp[i], mix64(cfg->seed + 0x100000ull * (w + 1) + i));
    }
    for (uint32_t i = 0; i < cfg->n_servers; i++) {
        dp->id[i] = i;
        dp->admin[i] = MLB_ADMIN_UP;
        dp->static_w[i] = 1.0;
    }
    rebuild(dp);
    return dp;
fail:
    mlb_dp_destroy(dp);
    return NULL;
}

/* ---------- control ---------- */

int mlb_dp_set_server(mlb_dp_t *dp, uint32_t idx, uint32_t id, uint32_t admin_state,
                      double static_weight)
{
    if (idx >= dp->n_servers || admin_state > MLB_ADMIN_DOWN ||
        !isfinite(static_weight) || static_weight < 0.0)
        return MLB_ERR_ARG;
    if (dp->id[idx] != id)
        dp->id_epoch++;
    dp->id[idx] = id;
    dp->admin[idx] = admin_state;
    dp->static_w[idx] = static_weight;
    rebuild(dp);
    return MLB_OK;
}

int mlb_dp_set_mode(mlb_dp_t *dp, uint32_t mode)
{
    if (mode == MLB_MODE_NONE || mode >= MLB_MODE_COUNT)
        return MLB_ERR_ARG;
    dp->cfg_mode = mode;
    rebuild(dp);
    return MLB_OK;
}

/* ---------- selection ---------- */

static inline uint32_t alias_draw(const policy_t *p, mlb_rng_t *rng, uint32_t n)
{
    uint64_t r = mlb_rng_u64(rng);
    uint32_t i = (uint32_t)(((r >> 32) * (uint64_t)n) >> 32);
    return (r & 0xffffffffu) < p->alias[i].thresh ? i : p->alias[i].alias;
}

static inline int32_t maglev_pick(const policy_t *p, uint32_t m, uint64_t h)
{
    uint16_t s = p->maglev[((h >> 32) * (uint64_t)m) >> 32];
    return s == NONE16 ? MLB_DP_NO_SERVER : (int32_t)s;
}

static inline int32_t select_new(const mlb_dp_t *dp, const policy_t *p, worker_t *wk,
                                 uint64_t h)
{
    uint32_t n = dp->n_servers;
    if (p->n_elig == 0)
        return MLB_DP_NO_SERVER;
    switch (p->mode) {
    case MLB_MODE_WRANDOM:
        return (int32_t)alias_draw(p, &wk->rng, n);
    case MLB_MODE_HASH:
        return maglev_pick(p, dp->maglev_size, h);
    case MLB_MODE_P2C: {
        uint32_t a = alias_draw(p, &wk->rng, n), b = alias_draw(p, &wk->rng, n);
        double sa = (double)(wk->active[a] + 1u) * p->inv_sed[a];
        double sb = (double)(wk->active[b] + 1u) * p->inv_sed[b];
        if (sb < sa || (sb == sa && b < a))
            return (int32_t)b;
        return (int32_t)a;
    }
    default: { /* SED, LEAST_ACTIVE: the tree's root, O(1) */
        uint32_t b = wk->win[1];
        return wk->sc[b] < INFINITY ? (int32_t)b : MLB_DP_NO_SERVER;
    }
    }
}

static inline const policy_t *policy_now(const mlb_dp_t *dp)
{
    return &dp->pol[atomic_load_explicit(&dp->cur, memory_order_acquire)];
}

int32_t mlb_dp_select(mlb_dp_t *dp, uint32_t worker, uint64_t flow_hash)
{
    if (worker >= dp->n_workers)
        return MLB_DP_BAD_ARG;
    return select_new(dp, policy_now(dp), &dp->wk[worker], flow_hash);
}

int32_t mlb_dp_hash_lookup(const mlb_dp_t *dp, uint64_t flow_hash)
{
    return maglev_pick(policy_now(dp), dp->maglev_size, flow_hash);
}

/* ---------- flow table ---------- */

#define END_FIN 0
#define END_TIMEOUT 1
#define END_DOWN 2

static void end_flow(const mlb_dp_t *dp, const policy_t *p, worker_t *wk, uint32_t slot,
                     uint64_t now_ns, int why)
{
    flow_t *f = &wk->flows[slot];
    uint32_t s = f->server;
    wk->active[s]--;
    if (p->tree)
        tree_update(wk, p, dp->tree_leaves, s);
    wk->ctr[s].completed++;
    if (why == END_TIMEOUT)
        wk->ctr[s].timeouts++;
    if (why == END_DOWN) {
        wk->down_evictions++;
    } else {
        uint64_t end = why == END_FIN ? now_ns : f->last_ns;
        double fct = end > f->first_ns ? (double)(end - f->first_ns) * 1e-9 : 0.0;
        mlb_sampler_add_inline(&wk->samp[s * MLB_RES_KINDS + MLB_RES_FCT], now_ns, fct);
    }
    wk->keys[slot] = 0;
    wk->n_flows--;
}

/* Fibonacci hashing: the bucket comes from all bits of the key, so callers
 * may use any bits of flow_hash (RSS, worker choice) without crowding. */
static inline uint32_t bucket_of(uint64_t key, uint32_t mask)
{
    return (uint32_t)((key * 0x9e3779b97f4a7c15ull) >> 32) & mask;
}

static inline int idle(const flow_t *f, uint64_t now_ns, uint64_t timeout)
{
    return now_ns > f->last_ns && now_ns - f->last_ns >= timeout;
}

int32_t mlb_dp_packet(mlb_dp_t *dp, uint32_t worker, uint64_t flow_hash,
                      uint64_t now_ns, uint32_t bytes, uint32_t flags)
{
    if (worker >= dp->n_workers)
        return MLB_DP_BAD_ARG;
    worker_t *wk = &dp->wk[worker];
    uint64_t key = flow_hash ? flow_hash : 1;
    uint32_t base = bucket_of(key, wk->bucket_mask) * BUCKET;
    uint64_t *keys = wk->keys + base;
    uint64_t timeout = dp->cfg.idle_timeout_ns;
    const policy_t *p = policy_now(dp);
    int end = (flags & (MLB_PKT_FIN | MLB_PKT_RST)) != 0;

    for (uint32_t i = 0; i < BUCKET; i++) {
        if (keys[i] != key)
            continue;
        uint32_t slot = base + i;
        flow_t *f = &wk->flows[slot];
        uint32_t s = f->server;
        if (idle(f, now_ns, timeout)) {
            end_flow(dp, p, wk, slot, now_ns, END_TIMEOUT);
        } else if (dp->admin[s] == MLB_ADMIN_DOWN) {
            end_flow(dp, p, wk, slot, now_ns, END_DOWN);
        } else {
            f->last_ns = now_ns;
            wk->ctr[s].packets++;
            wk->ctr[s].bytes += bytes;
            if (end)
                end_flow(dp, p, wk, slot, now_ns, END_FIN);
            return (int32_t)s;
        }
        break;
    }

    int32_t s = select_new(dp, p, wk, key);
    if (s < 0)
        return s;
    wk->ctr[s].packets++;
    wk->ctr[s].bytes += bytes;
    if (end)                 /* a lone FIN/RST: forward, do not pin */
        return s;
    wk->ctr[s].new_flows++;
    uint32_t free_slot = UINT32_MAX;
    for (uint32_t i = 0; i < BUCKET; i++)
        if (keys[i] == 0) {
            free_slot = base + i;
            break;
        }
    if (free_slot == UINT32_MAX)
        for (uint32_t i = 0; i < BUCKET; i++)
            if (idle(&wk->flows[base + i], now_ns, timeout)) {
                end_flow(dp, p, wk, base + i, now_ns, END_TIMEOUT);
                free_slot = base + i;
                break;
            }
    if (free_slot == UINT32_MAX) {
        wk->untracked++;
        return s;
    }
    wk->keys[free_slot] = key;
    flow_t *f = &wk->flows[free_slot];
    f->first_ns = now_ns;
    f->last_ns = now_ns;
    f->server = (uint32_t)s;
    wk->active[s]++;
    if (p->tree)
        tree_update(wk, p, dp->tree_leaves, (uint32_t)s);
    wk->n_flows++;
    return s;
}

void mlb_dp_sweep(mlb_dp_t *dp, uint32_t worker, uint64_t now_ns, int sample_ages)
{
    if (worker >= dp->n_workers)
        return;
    worker_t *wk = &dp->wk[worker];
    const policy_t *p = policy_now(dp);
    uint64_t timeout = dp->cfg.idle_timeout_ns;
    if (sample_ages)
        for (uint32_t i = 0; i < dp->n_servers; i++)
            mlb_sampler_reset(&wk->samp[i * MLB_RES_KINDS + MLB_RES_AGE]);
    if (wk->n_flows == 0)
        return;
    for (uint32_t slot = 0; slot < dp->n_slots; slot++) {
        if (wk->keys[slot] == 0)
            continue;
        flow_t *f = &wk->flows[slot];
        if (idle(f, now_ns, timeout))
            end_flow(dp, p, wk, slot, now_ns, END_TIMEOUT);
        else if (dp->admin[f->server] == MLB_ADMIN_DOWN)
            end_flow(dp, p, wk, slot, now_ns, END_DOWN);
        else if (sample_ages)
            mlb_sampler_add_inline(&wk->samp[f->server * MLB_RES_KINDS + MLB_RES_AGE], now_ns,
                                   now_ns > f->first_ns ? (double)(now_ns - f->first_ns) * 1e-9
                                                        : 0.0);
    }
}

int32_t mlb_dp_flow_server(const mlb_dp_t *dp, uint32_t worker, uint64_t flow_hash)
{
    if (worker >= dp->n_workers)
        return MLB_DP_BAD_ARG;
    const worker_t *wk = &dp->wk[worker];
    uint64_t key = flow_hash ? flow_hash : 1;
    uint32_t base = bucket_of(key, wk->bucket_mask) * BUCKET;
    for (uint32_t i = 0; i < BUCKET; i++)
        if (wk->keys[base + i] == key)
            return (int32_t)wk->flows[base + i].server;
    return MLB_DP_NO_FLOW;
}

/* ---------- msg_in apply ---------- */

static void fall_back(mlb_dp_t *dp)
{
    if (dp->source != MLB_SRC_DAEMON)
        return;
    dp->source = MLB_SRC_STATIC;
    dp->fallbacks++;
    rebuild(dp);
}

static int weights_ok(const mlb_dp_t *dp, const mlb_msg_in_t *m)
{
    int any = 0, any_up = 0, have_up = 0;
    if (m->n_servers != dp->n_servers || m->mode >= MLB_MODE_COUNT)
        return 0;
    for (uint32_t i = 0; i < dp->n_servers; i++) {
        double x = m->weight[i];
        if (!isfinite(x) || x < 0.0)
            return 0;
        any |= x > 0.0;
        if (dp->admin[i] == MLB_ADMIN_UP) {
            have_up = 1;
            any_up |= x > 0.0;
        }
    }
    return have_up ? any_up : any;
}

int mlb_dp_apply(mlb_dp_t *dp, mlb_region_t *region, uint64_t now_ns)
{
    uint64_t p = mlb_region_load_u64(&region->hdr.in_published);
    if (p == 0 || p == dp->in_seen_p)
        return MLB_APPLY_NONE;
    mlb_msg_in_t *m = &dp->in_buf;
    if (mlb_in_snapshot(region, m, 4, NULL) != MLB_OK)
        return MLB_APPLY_NONE;          /* busy: try again next timer */
    dp->in_seen_p = p;
    int rc;
    if (dp->have_seen && m->daemon_gen == dp->seen_gen) {
        if (m->msg_seq == dp->seen_seq)
            return MLB_APPLY_NONE;      /* the same message again */
        if (m->msg_seq < dp->seen_seq) {
            dp->rej_stale++;
            fall_back(dp);
            return MLB_APPLY_REJ_STALE;
        }
    }
    dp->have_seen = 1;
    dp->seen_gen = m->daemon_gen;
    dp->seen_seq = m->msg_seq;
    if (m->dp_gen != region->hdr.dp_generation) {
        dp->rej_gen++;
        rc = MLB_APPLY_REJ_GEN;
    } else if (m->dp_t_ns > now_ns || !weights_ok(dp, m)) {
        dp->rej_invalid++;
        rc = MLB_APPLY_REJ_INVALID;
    } else if (now_ns - m->dp_t_ns > m->ttl_ns) {
        dp->rej_stale++;
        rc = MLB_APPLY_REJ_STALE;
    } else {
        memcpy(dp->daemon_w, m->weight, dp->n_servers * sizeof(double));
        dp->daemon_mode = m->mode == MLB_MODE_NONE ? dp->cfg_mode : m->mode;
        dp->daemon_dp_t_ns = m->dp_t_ns;
        dp->daemon_ttl_ns = m->ttl_ns;
        dp->applied_gen = m->daemon_gen;
        dp->applied_seq = m->msg_seq;
        dp->accepted++;
        dp->source = MLB_SRC_DAEMON;
        rebuild(dp);
        return MLB_APPLY_ACCEPTED;
    }
    fall_back(dp);
    return rc;
}

/* ---------- msg_out publish ---------- */

int mlb_dp_get_server(const mlb_dp_t *dp, uint32_t idx, mlb_server_stats_t *out)
{
    if (idx >= dp->n_servers)
        return MLB_ERR_ARG;
    memset(out, 0, sizeof(*out));
    out->id = dp->id[idx];
    out->admin_state = dp->admin[idx];
    out->static_weight = dp->static_w[idx];
    out->weight = policy_now(dp)->weight[idx];
    for (uint32_t w = 0; w < dp->n_workers; w++) {
        const worker_t *wk = &dp->wk[w];
        out->new_flows += wk->ctr[idx].new_flows;
        out->completed_flows += wk->ctr[idx].completed;
        out->active_flows += wk->active[idx];
        out->packets += wk->ctr[idx].packets;
        out->bytes += wk->ctr[idx].bytes;
        out->timeouts += wk->ctr[idx].timeouts;
    }
    return MLB_OK;
}

void mlb_dp_publish(mlb_dp_t *dp, mlb_region_t *region, uint64_t now_ns)
{
    mlb_msg_out_t *f = mlb_out_begin(region);
    mlb_dp_stats_t st;
    mlb_dp_get_stats(dp, &st);
    mlb_out_meta_t *mt = &f->meta;
    mt->t_ns = now_ns;
    mt->dp_gen = region->hdr.dp_generation;
    mt->n_servers = dp->n_servers;
    mt->n_workers = dp->n_workers;
    mt->active_mode = st.active_mode;
    mt->weights_source = st.weights_source;
    mt->applied_daemon_gen = st.applied_daemon_gen;
    mt->applied_msg_seq = st.applied_msg_seq;
    mt->msg_in_accepted = st.msg_in_accepted;
    mt->msg_in_rej_stale = st.msg_in_rej_stale;
    mt->msg_in_rej_gen = st.msg_in_rej_gen;
    mt->msg_in_rej_invalid = st.msg_in_rej_invalid;
    mt->fallbacks = st.fallbacks;
    mt->untracked_flows = st.untracked_flows;
    for (uint32_t i = 0; i < dp->n_servers; i++)
        mlb_dp_get_server(dp, i, &f->servers[i]);
    for (uint32_t w = 0; w < dp->n_workers; w++)
        for (uint32_t i = 0; i < dp->n_servers; i++)
            for (uint32_t k = 0; k < MLB_RES_KINDS; k++)
                f->res[w][i][k] = dp->wk[w].samp[i * MLB_RES_KINDS + k].r;
    mlb_out_commit(region, f);
    /* FCT reservoirs track recent flows: keep the samples, forget the count */
    for (uint32_t w = 0; w < dp->n_workers; w++)
        for (uint32_t i = 0; i < dp->n_servers; i++)
            mlb_sampler_forget(&dp->wk[w].samp[i * MLB_RES_KINDS + MLB_RES_FCT]);
    dp->frames++;
    dp->last_pub_ns = now_ns;
}

int mlb_dp_timer(mlb_dp_t *dp, mlb_region_t *region, uint64_t now_ns)
{
    if (region && (region->hdr.n_servers != dp->n_servers ||
                   region->hdr.n_workers != dp->n_workers))
        return MLB_DP_BAD_ARG;
    int due = !dp->aged_once || now_ns - dp->last_age_ns >= dp->cfg.publish_interval_ns;
    if (due) {
        dp->aged_once = 1;
        dp->last_age_ns = now_ns;
    }
    if (due)    /* idle and DOWN eviction + ages, once per publish interval */
        for (uint32_t w = 0; w < dp->n_workers; w++)
            mlb_dp_sweep(dp, w, now_ns, 1);
    int rc = MLB_APPLY_NONE;
    if (region)
        rc = mlb_dp_apply(dp, region, now_ns);
    if (dp->source == MLB_SRC_DAEMON &&
        (now_ns < dp->daemon_dp_t_ns || now_ns - dp->daemon_dp_t_ns > dp->daemon_ttl_ns))
        fall_back(dp);
    dp->last_apply = (uint32_t)rc;
    if (region) {
        if (due)
            mlb_dp_publish(dp, region, now_ns);
        mlb_region_heartbeat(region, now_ns);
    }
    return rc;
}

int mlb_dp_timer_due(const mlb_dp_t *dp, const mlb_region_t *region, uint64_t now_ns)
{
    if (!dp->aged_once || now_ns - dp->last_age_ns >= dp->cfg.publish_interval_ns)
        return 1;
    if (region && mlb_region_load_u64(&region->hdr.in_published) != dp->in_seen_p)
        return 1;
    return dp->source == MLB_SRC_DAEMON &&
           (now_ns < dp->daemon_dp_t_ns || now_ns - dp->daemon_dp_t_ns > dp->daemon_ttl_ns);
}

/* ---------- read helpers ---------- */

uint64_t mlb_dp_server_active(const mlb_dp_t *dp, uint32_t idx)
{
    uint64_t a = 0;
    if (idx >= dp->n_servers)
        return 0;
    for (uint32_t w = 0; w < dp->n_workers; w++)
        a += dp->wk[w].active[idx];
    return a;
}

double mlb_dp_weight(const mlb_dp_t *dp, uint32_t idx)
{
    return idx < dp->n_servers ? policy_now(dp)->weight[idx] : 0.0;
}

void mlb_dp_get_stats(const mlb_dp_t *dp, mlb_dp_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    out->frames_published = dp->frames;
    out->msg_in_accepted = dp->accepted;
    out->msg_in_rej_stale = dp->rej_stale;
    out->msg_in_rej_gen = dp->rej_gen;
    out->msg_in_rej_invalid = dp->rej_invalid;
    out->fallbacks = dp->fallbacks;
    for (uint32_t w = 0; w < dp->n_workers; w++) {
        out->untracked_flows += dp->wk[w].untracked;
        out->down_evictions += dp->wk[w].down_evictions;
        out->flows += dp->wk[w].n_flows;
    }
    out->applied_daemon_gen = dp->applied_gen;
    out->applied_msg_seq = dp->applied_seq;
    out->active_mode = policy_now(dp)->mode;
    out->weights_source = dp->source;
    out->last_apply = dp->last_apply;
    out->maglev_size = dp->maglev_size;
    out->flow_capacity = dp->n_slots;
}

const mlb_reservoir_t *mlb_dp_reservoir(const mlb_dp_t *dp, uint32_t worker,
                                        uint32_t idx, uint32_t kind)
{
    if (worker >= dp->n_workers || idx >= dp->n_servers || kind >= MLB_RES_KINDS)
        return NULL;
    return &dp->wk[worker].samp[idx * MLB_RES_KINDS + kind].r;
}
