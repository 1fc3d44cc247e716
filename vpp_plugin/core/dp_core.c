/* marllb data-plane core: flow table, new-flow selection, counters,
 * reservoir feed, msg_in apply and msg_out publish.  Plain C11, no VPP.
 *
 * Per-packet path (mlb_dp_packet): one bucket probe in the calling
 * worker's flow table (8 keys = one cache line), and for a new flow one
 * selection over the current policy.  No locks, no allocation, no logging.
 *
 * The policy (weights in force, SED inverse weights, alias table, Maglev
 * tables) is double-buffered: the control thread builds the idle copy and
 * then swaps the index, so weight changes never touch the packet path and
 * never move a pinned flow.  Each worker rebuilds its own SED tournament
 * tree when it first sees a new policy (its epoch), so the control thread
 * never writes worker state.
 *
 * No stop-the-world per tick: a worker sweeps its own table and publishes
 * its own snapshot (counters, reservoirs straight into the open msg_out
 * copy) in mlb_dp_worker_tick; the control thread only reads snapshots a
 * worker has released (acquire/release on done_seq). */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "dp_core.h"

#define BUCKET 8
#define MIN_SLOTS 64
#define MAX_SLOTS (1u << 26)
#define NONE16 0xFFFFu
/* slots one worker-tick step sweeps: bounds a worker's own pause */
#define SWEEP_CHUNK 4096u

typedef struct {
    uint64_t first_ns;
    uint64_t last_ns;
    uint32_t server;
    uint32_t closed;               /* FIN/RST seen: counted, kept for affinity */
} flow_t;

typedef struct {
    uint64_t new_flows;
    uint64_t completed;
    uint64_t packets;
    uint64_t bytes;
    uint64_t timeouts;
} wctr_t;

/* What a worker's tick publishes for the control thread. */
typedef struct {
    uint64_t untracked;
    uint64_t untracked_pkts;
    uint64_t down_evictions;
    uint64_t no_server;
    uint32_t n_flows;
    uint32_t n_closed;
    uint32_t active[MLB_MAX_SERVERS];
    wctr_t ctr[MLB_MAX_SERVERS];
} wsnap_t;

typedef struct {
    _Alignas(64) uint64_t *keys;   /* n_slots, 0 = empty */
    flow_t *flows;                 /* n_slots, parallel to keys */
    uint8_t *cmask;                /* per bucket: which slots hold closed entries */
    uint8_t *chand;                /* per bucket: where the next eviction looks */
    uint32_t bucket_mask;
    uint32_t n_flows;              /* open flows */
    uint32_t n_closed;             /* closed entries still held */
    uint32_t _pad;
    uint64_t tree_epoch;           /* policy epoch the tree was built for */
    uint32_t sweep_pos;            /* next slot of the tick in progress */
    uint32_t sweeping;             /* a tick is in progress */
    mlb_rng_t rng;
    uint64_t untracked;
    uint64_t untracked_pkts;
    uint64_t down_evictions;
    uint64_t no_server;
    mlb_sampler_t *samp;           /* [server][MLB_RES_KINDS] */
    wsnap_t *snap;                 /* last tick's snapshot */
    _Alignas(64) _Atomic uint64_t done_seq;   /* last tick request served */
    _Alignas(64) uint32_t active[MLB_MAX_SERVERS];
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
    uint16_t *maglev_w;               /* the same, shares by weight: untracked flows */
    uint64_t maglev_ids;              /* id_epoch the Maglev tables were built for */
    uint64_t epoch;                   /* bumped on every build */
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
    uint64_t close_timeout_ns;
    uint64_t epoch;                   /* policy builds so far */
    /* publish in progress (mlb_dp_control): the msg_out copy the workers
     * write their reservoirs into, and the tick request they answer */
    _Atomic uint64_t req_seq;
    mlb_msg_out_t *_Atomic pending;
    uint64_t pending_ns;
    int publishing;
    uint64_t publish_waits;
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
    cfg->close_timeout_ns = 10ull * 1000000000ull;
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
    else if (cfg->idle_timeout_ns == 0 ||
             cfg->idle_timeout_ns > (uint64_t)MLB_DP_IDLE_MAX_S * 1000000000ull)
        bad = "idle_timeout_ns";
    else if (cfg->close_timeout_ns == 0 ||
             cfg->close_timeout_ns > (uint64_t)MLB_DP_IDLE_MAX_S * 1000000000ull)
        bad = "close_timeout_ns";
    else if (cfg->publish_interval_ns == 0 ||
             cfg->publish_interval_ns > (uint64_t)MLB_DP_PUBLISH_MAX_MS * 1000000ull)
        bad = "publish_interval_ns";
    else if (cfg->maglev_size > (1u << 24))
        bad = "maglev_size";
    if (field)
        *field = bad;
    return bad ? MLB_ERR_ARG : MLB_OK;
}

int mlb_dp_check_seconds(double seconds, double max_s, uint64_t *ns)
{
    /* written so NaN fails too */
    if (!(seconds > 0.0) || !(seconds <= max_s) || !(max_s <= 1e9))
        return MLB_ERR_ARG;
    uint64_t v = (uint64_t)(seconds * 1e9);
    if (v == 0)
        return MLB_ERR_ARG;
    if (ns)
        *ns = v;
    return MLB_OK;
}

int mlb_dp_check_timer_ms(double ms)
{
    return ms >= MLB_DP_TIMER_MIN_MS && ms <= MLB_DP_TIMER_MAX_MS ? MLB_OK : MLB_ERR_ARG;
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
 * table (offset, skip from its id) taking the next free slot in turn.  With
 * weights w (NULL: equal shares) a server takes a turn each time its credit
 * w / max(w) adds up to one, so the heaviest takes every turn and the table
 * fills in proportion to the weights; the same inputs give the same table. */
static void build_maglev(uint16_t *t, uint32_t m, const uint32_t *ids,
                         const uint8_t *elig, const double *w, uint32_t n)
{
    uint32_t pos[MLB_MAX_SERVERS], skip[MLB_MAX_SERVERS], list[MLB_MAX_SERVERS], k = 0;
    double share[MLB_MAX_SERVERS], credit[MLB_MAX_SERVERS], wmax = 0.0;
    for (uint32_t i = 0; i < m; i++)
        t[i] = NONE16;
    for (uint32_t i = 0; i < n; i++)
        if (elig[i] && w && w[i] > wmax)
            wmax = w[i];
    for (uint32_t i = 0; i < n; i++) {
        if (!elig[i])
            continue;
        uint64_t h = mix64(0x4d41474c45560000ull ^ ids[i]);
        list[k] = i;
        pos[k] = (uint32_t)((h >> 32) % m);
        skip[k] = (uint32_t)((h & 0xffffffffu) % (m - 1)) + 1;
        share[k] = w && wmax > 0.0 ? w[i] / wmax : 1.0;
        credit[k] = 0.0;
        k++;
    }
    if (k == 0)
        return;
    uint32_t filled = 0;
    for (;;) {
        for (uint32_t j = 0; j < k; j++) {
            credit[j] += share[j];
            if (credit[j] < 1.0)
                continue;
            credit[j] -= 1.0;
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
    int same_set = memcmp(p->elig, old->elig, n) == 0 && old->maglev[0] != NONE16 &&
                   old->maglev_ids == dp->id_epoch;
    if (same_set)
        memcpy(p->maglev, old->maglev, dp->maglev_size * sizeof(uint16_t));
    else
        build_maglev(p->maglev, dp->maglev_size, dp->id, p->elig, NULL, n);
    /* weights unchanged: the same table (untracked flows stay put) */
    if (same_set && memcmp(p->weight, old->weight, n * sizeof(double)) == 0)
        memcpy(p->maglev_w, old->maglev_w, dp->maglev_size * sizeof(uint16_t));
    else
        build_maglev(p->maglev_w, dp->maglev_size, dp->id, p->elig, p->weight, n);
    p->maglev_ids = dp->id_epoch;
    p->tree = p->mode == MLB_MODE_SED || p->mode == MLB_MODE_LEAST_ACTIVE;
    p->epoch = ++dp->epoch;
    /* workers rebuild their trees when they first see this epoch */
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
            free(dp->wk[w].snap);
            free(dp->wk[w].cmask);
            free(dp->wk[w].chand);
        }
        free(dp->wk);
    }
    for (int i = 0; i < 2; i++) {
        free(dp->pol[i].maglev);
        free(dp->pol[i].maglev_w);
    }
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
    dp->close_timeout_ns = cfg->close_timeout_ns < cfg->idle_timeout_ns
                               ? cfg->close_timeout_ns : cfg->idle_timeout_ns;
    for (int i = 0; i < 2; i++) {
        dp->pol[i].maglev = malloc(dp->maglev_size * sizeof(uint16_t));
        dp->pol[i].maglev_w = malloc(dp->maglev_size * sizeof(uint16_t));
        if (!dp->pol[i].maglev || !dp->pol[i].maglev_w)
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
        wk->snap = calloc(1, sizeof(wsnap_t));
        wk->cmask = calloc(dp->n_slots / BUCKET, 1);
        wk->chand = calloc(dp->n_slots / BUCKET, 1);
        if (!wk->keys || !wk->flows || !wk->samp || !wk->snap || !wk->cmask || !wk->chand)
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

static inline int32_t maglev_pick(const uint16_t *t, uint32_t m, uint64_t h)
{
    uint16_t s = t[((h >> 32) * (uint64_t)m) >> 32];
    return s == NONE16 ? MLB_DP_NO_SERVER : (int32_t)s;
}

/* Where a flow the table does not hold goes: the same server for the same
 * hash while weights and admin states stay (HASH mode: its own table). */
static inline int32_t fallback_pick(const mlb_dp_t *dp, const policy_t *p, uint64_t h)
{
    if (p->n_elig == 0)
        return MLB_DP_NO_SERVER;
    return maglev_pick(p->mode == MLB_MODE_HASH ? p->maglev : p->maglev_w,
                       dp->maglev_size, h);
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
        return maglev_pick(p->maglev, dp->maglev_size, h);
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

/* The policy for this worker's next step, its tree rebuilt (by the worker
 * itself) the first time it sees a new policy. */
static inline const policy_t *worker_policy(const mlb_dp_t *dp, worker_t *wk)
{
    const policy_t *p = policy_now(dp);
    if (__builtin_expect(wk->tree_epoch != p->epoch, 0)) {
        if (p->tree)
            tree_build(wk, p, dp->n_servers, dp->tree_leaves);
        wk->tree_epoch = p->epoch;
    }
    return p;
}

int32_t mlb_dp_select(mlb_dp_t *dp, uint32_t worker, uint64_t flow_hash)
{
    if (worker >= dp->n_workers)
        return MLB_DP_BAD_ARG;
    worker_t *wk = &dp->wk[worker];
    return select_new(dp, worker_policy(dp, wk), wk, flow_hash);
}

int32_t mlb_dp_hash_lookup(const mlb_dp_t *dp, uint64_t flow_hash)
{
    return maglev_pick(policy_now(dp)->maglev, dp->maglev_size, flow_hash);
}

int32_t mlb_dp_fallback_lookup(const mlb_dp_t *dp, uint64_t flow_hash)
{
    return fallback_pick(dp, policy_now(dp), flow_hash ? flow_hash : 1);
}

/* ---------- flow table ---------- */

#define END_FIN 0
#define END_TIMEOUT 1
#define END_DOWN 2

/* An open flow ends (counted once): active, tree, counters, FCT sample.
 * The entry itself stays (closed) until free_entry. */
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
    f->closed = 1;
    wk->cmask[slot / BUCKET] |= (uint8_t)(1u << (slot % BUCKET));
    wk->n_flows--;
    wk->n_closed++;
}

static inline void free_entry(worker_t *wk, uint32_t slot)
{
    wk->keys[slot] = 0;
    wk->cmask[slot / BUCKET] &= (uint8_t)~(1u << (slot % BUCKET));
    wk->n_closed--;
}

/* Fibonacci hashing: the bucket comes from all bits of the key, so callers
 * may use any bits of flow_hash (RSS, worker choice) without crowding. */
static inline uint32_t bucket_of(uint64_t key, uint32_t mask)
{
    return (uint32_t)((key * 0x9e3779b97f4a7c15ull) >> 32) & mask;
}

static inline int expired(const mlb_dp_t *dp, const flow_t *f, uint64_t now_ns)
{
    uint64_t timeout = f->closed ? dp->close_timeout_ns : dp->cfg.idle_timeout_ns;
    return now_ns > f->last_ns && now_ns - f->last_ns >= timeout;
}

/* Drop an entry that has run out or whose server is DOWN (ending it first
 * if it is open).  Returns 1 if the slot is now free. */
static inline int retire(const mlb_dp_t *dp, const policy_t *p, worker_t *wk, uint32_t slot,
                         uint64_t now_ns)
{
    flow_t *f = &wk->flows[slot];
    int why;
    if (expired(dp, f, now_ns))
        why = END_TIMEOUT;
    else if (dp->admin[f->server] == MLB_ADMIN_DOWN)
        why = END_DOWN;
    else
        return 0;
    if (!f->closed)
        end_flow(dp, p, wk, slot, now_ns, why);
    free_entry(wk, slot);
    return 1;
}

/* A slot in the bucket for a new flow: an empty one; else a closed entry,
 * taken in turn from a per-bucket hand (about the oldest closed, without
 * reading the flow records: its connection's last packets lose nothing but
 * affinity, and only when the bucket is full of newer flows); else an open
 * flow that has run out or whose server is DOWN. */
static inline uint32_t find_slot(const mlb_dp_t *dp, const policy_t *p, worker_t *wk,
                                 uint32_t base, uint64_t now_ns)
{
    const uint64_t *keys = wk->keys + base;
    uint32_t b = base / BUCKET;
    for (uint32_t i = 0; i < BUCKET; i++)
        if (keys[i] == 0)
            return base + i;
    uint32_t m = wk->cmask[b];
    if (m) {
        uint32_t h = wk->chand[b];
        uint32_t rot = ((m >> h) | (m << (BUCKET - h))) & 0xFFu;
        uint32_t i = (h + (uint32_t)__builtin_ctz(rot)) % BUCKET;
        wk->chand[b] = (uint8_t)((i + 1) % BUCKET);
        free_entry(wk, base + i);
        return base + i;
    }
    for (uint32_t i = 0; i < BUCKET; i++)
        if (retire(dp, p, wk, base + i, now_ns))
            return base + i;
    return UINT32_MAX;
}

static inline void count_packet(worker_t *wk, int32_t s, uint32_t bytes)
{
    wk->ctr[s].packets++;
    wk->ctr[s].bytes += bytes;
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
    const policy_t *p = worker_policy(dp, wk);
    int end = (flags & (MLB_PKT_FIN | MLB_PKT_RST | MLB_PKT_NOFLOW)) != 0;
    uint32_t slot = UINT32_MAX;

    for (uint32_t i = 0; i < BUCKET && !(flags & MLB_PKT_NOFLOW); i++) {
        if (keys[i] != key)
            continue;
        if (retire(dp, p, wk, base + i, now_ns)) {
            slot = base + i;               /* reuse it for the new flow */
            break;
        }
        flow_t *f = &wk->flows[base + i];
        int32_t s = (int32_t)f->server;
        if (f->closed && (flags & MLB_PKT_SYN) && !end) {
            free_entry(wk, base + i);      /* a new connection on the same tuple */
            slot = base + i;
            break;
        }
        f->last_ns = now_ns;
        count_packet(wk, s, bytes);
        if (end && !f->closed)
            end_flow(dp, p, wk, base + i, now_ns, END_FIN);
        return s;
    }

    if (!end && slot == UINT32_MAX)
        slot = find_slot(dp, p, wk, base, now_ns);
    if (end || slot == UINT32_MAX) {
        /* a lone FIN/RST, or no room: the consistent hash, not pinned */
        int32_t s = fallback_pick(dp, p, key);
        if (s < 0) {
            wk->no_server++;
            return s;
        }
        if (!end) {
            wk->untracked++;
            wk->ctr[s].new_flows++;
        }
        wk->untracked_pkts++;
        count_packet(wk, s, bytes);
        return s;
    }
    int32_t s = (flags & (MLB_PKT_MIDFLOW | MLB_PKT_SYN)) == MLB_PKT_MIDFLOW
                    ? fallback_pick(dp, p, key) : select_new(dp, p, wk, key);
    if (s < 0) {
        wk->no_server++;
        return s;
    }
    count_packet(wk, s, bytes);
    wk->ctr[s].new_flows++;
    wk->keys[slot] = key;
    flow_t *f = &wk->flows[slot];
    f->first_ns = now_ns;
    f->last_ns = now_ns;
    f->server = (uint32_t)s;
    f->closed = 0;
    wk->active[s]++;
    if (p->tree)
        tree_update(wk, p, dp->tree_leaves, (uint32_t)s);
    wk->n_flows++;
    return s;
}

static void reset_ages(const mlb_dp_t *dp, worker_t *wk)
{
    for (uint32_t i = 0; i < dp->n_servers; i++)
        mlb_sampler_reset(&wk->samp[i * MLB_RES_KINDS + MLB_RES_AGE]);
}

/* Slots [from, to): retire what ran out or is DOWN, sample open flows' ages. */
static void sweep_range(const mlb_dp_t *dp, worker_t *wk, const policy_t *p, uint64_t now_ns,
                        int sample_ages, uint32_t from, uint32_t to)
{
    for (uint32_t slot = from; slot < to; slot++) {
        if (wk->keys[slot] == 0 || retire(dp, p, wk, slot, now_ns))
            continue;
        const flow_t *f = &wk->flows[slot];
        if (sample_ages && !f->closed)
            mlb_sampler_add_inline(&wk->samp[f->server * MLB_RES_KINDS + MLB_RES_AGE], now_ns,
                                   now_ns > f->first_ns ? (double)(now_ns - f->first_ns) * 1e-9
                                                        : 0.0);
    }
}

void mlb_dp_sweep(mlb_dp_t *dp, uint32_t worker, uint64_t now_ns, int sample_ages)
{
    if (worker >= dp->n_workers)
        return;
    worker_t *wk = &dp->wk[worker];
    if (sample_ages)
        reset_ages(dp, wk);
    if (wk->n_flows || wk->n_closed)
        sweep_range(dp, wk, worker_policy(dp, wk), now_ns, sample_ages, 0, dp->n_slots);
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

int mlb_dp_flow_state(const mlb_dp_t *dp, uint32_t worker, uint64_t flow_hash)
{
    if (worker >= dp->n_workers)
        return MLB_DP_BAD_ARG;
    const worker_t *wk = &dp->wk[worker];
    uint64_t key = flow_hash ? flow_hash : 1;
    uint32_t base = bucket_of(key, wk->bucket_mask) * BUCKET;
    for (uint32_t i = 0; i < BUCKET; i++)
        if (wk->keys[base + i] == key)
            return wk->flows[base + i].closed ? MLB_DP_FLOW_CLOSED : MLB_DP_FLOW_OPEN;
    return MLB_DP_FLOW_NONE;
}

/* ---------- msg_in apply (control thread) ---------- */

/* Switch to static weights; the caller rebuilds (once per call). */
static int fall_back(mlb_dp_t *dp)
{
    if (dp->source != MLB_SRC_DAEMON)
        return 0;
    dp->source = MLB_SRC_STATIC;
    dp->fallbacks++;
    return 1;
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

/* Apply the latest msg_in without rebuilding; *dirty set when the policy
 * must be rebuilt. */
static int apply_in(mlb_dp_t *dp, mlb_region_t *region, uint64_t now_ns, int *dirty)
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
            *dirty |= fall_back(dp);
            return MLB_APPLY_REJ_STALE;
        }
    }
    dp->have_seen = 1;
    dp->seen_gen = m->daemon_gen;
    dp->seen_seq = m->msg_seq;
    /* the daemon's TTL, but never longer than the compiled-in cap */
    uint64_t ttl = m->ttl_ns;
    if (ttl > (uint64_t)MLB_DP_TTL_MAX_MS * 1000000ull)
        ttl = (uint64_t)MLB_DP_TTL_MAX_MS * 1000000ull;
    if (m->dp_gen != region->hdr.dp_generation) {
        dp->rej_gen++;
        rc = MLB_APPLY_REJ_GEN;
    } else if (m->dp_t_ns > now_ns || !weights_ok(dp, m)) {
        dp->rej_invalid++;
        rc = MLB_APPLY_REJ_INVALID;
    } else if (now_ns - m->dp_t_ns > ttl) {
        dp->rej_stale++;
        rc = MLB_APPLY_REJ_STALE;
    } else {
        memcpy(dp->daemon_w, m->weight, dp->n_servers * sizeof(double));
        dp->daemon_mode = m->mode == MLB_MODE_NONE ? dp->cfg_mode : m->mode;
        dp->daemon_dp_t_ns = m->dp_t_ns;
        dp->daemon_ttl_ns = ttl;
        dp->applied_gen = m->daemon_gen;
        dp->applied_seq = m->msg_seq;
        dp->accepted++;
        dp->source = MLB_SRC_DAEMON;
        *dirty = 1;
        return MLB_APPLY_ACCEPTED;
    }
    *dirty |= fall_back(dp);
    return rc;
}

static int daemon_expired(const mlb_dp_t *dp, uint64_t now_ns)
{
    return dp->source == MLB_SRC_DAEMON &&
           (now_ns < dp->daemon_dp_t_ns || now_ns - dp->daemon_dp_t_ns > dp->daemon_ttl_ns);
}

/* msg_in and weight expiry: at most one policy swap per call. */
static int apply_and_expire(mlb_dp_t *dp, mlb_region_t *region, uint64_t now_ns)
{
    int dirty = 0, rc = MLB_APPLY_NONE;
    if (region)
        rc = apply_in(dp, region, now_ns, &dirty);
    if (daemon_expired(dp, now_ns))
        dirty |= fall_back(dp);
    if (dirty)
        rebuild(dp);
    dp->last_apply = (uint32_t)rc;
    return rc;
}

int mlb_dp_apply(mlb_dp_t *dp, mlb_region_t *region, uint64_t now_ns)
{
    int dirty = 0;
    int rc = apply_in(dp, region, now_ns, &dirty);
    if (dirty)
        rebuild(dp);
    return rc;
}

/* ---------- worker tick and msg_out publish ---------- */

static void snapshot(const mlb_dp_t *dp, const worker_t *wk, wsnap_t *o)
{
    uint32_t n = dp->n_servers;
    o->untracked = wk->untracked;
    o->untracked_pkts = wk->untracked_pkts;
    o->down_evictions = wk->down_evictions;
    o->no_server = wk->no_server;
    o->n_flows = wk->n_flows;
    o->n_closed = wk->n_closed;
    memcpy(o->active, wk->active, n * sizeof(uint32_t));
    memcpy(o->ctr, wk->ctr, n * sizeof(wctr_t));
}

/* The end of a worker's tick: snapshot, and with an open msg_out copy its
 * reservoirs, after which the FCT samplers forget their count so they
 * track recent flows. */
static void worker_publish(mlb_dp_t *dp, uint32_t w, mlb_msg_out_t *f)
{
    worker_t *wk = &dp->wk[w];
    snapshot(dp, wk, wk->snap);
    if (!f)
        return;
    for (uint32_t i = 0; i < dp->n_servers; i++)
        for (uint32_t k = 0; k < MLB_RES_KINDS; k++) {
            mlb_sampler_t *s = &wk->samp[i * MLB_RES_KINDS + k];
            f->res[w][i][k] = s->r;     /* whole image: any sample format */
            if (k == MLB_RES_FCT)
                mlb_sampler_forget(s);
        }
}

int mlb_dp_worker_pending(const mlb_dp_t *dp, uint32_t worker)
{
    if (worker >= dp->n_workers)
        return 0;
    return atomic_load_explicit(&dp->wk[worker].done_seq, memory_order_relaxed) !=
           atomic_load_explicit(&dp->req_seq, memory_order_relaxed);
}

int mlb_dp_worker_tick(mlb_dp_t *dp, uint32_t worker, uint64_t now_ns)
{
    if (worker >= dp->n_workers)
        return 0;
    worker_t *wk = &dp->wk[worker];
    uint64_t req = atomic_load_explicit(&dp->req_seq, memory_order_acquire);
    if (atomic_load_explicit(&wk->done_seq, memory_order_relaxed) == req)
        return 0;
    const policy_t *p = worker_policy(dp, wk);
    if (!wk->sweeping) {
        reset_ages(dp, wk);
        wk->sweep_pos = 0;
        wk->sweeping = 1;
    }
    uint32_t to = dp->n_slots;
    if (wk->n_flows == 0 && wk->n_closed == 0)
        wk->sweep_pos = to;             /* empty table: nothing to walk */
    else if (to - wk->sweep_pos > SWEEP_CHUNK)
        to = wk->sweep_pos + SWEEP_CHUNK;
    sweep_range(dp, wk, p, now_ns, 1, wk->sweep_pos, to);
    wk->sweep_pos = to;
    if (to < dp->n_slots)
        return 2;                       /* more next call */
    wk->sweeping = 0;
    worker_publish(dp, worker, atomic_load_explicit(&dp->pending, memory_order_relaxed));
    atomic_store_explicit(&wk->done_seq, req, memory_order_release);
    return 1;
}

static void tick_all(mlb_dp_t *dp, uint64_t now_ns)
{
    for (uint32_t w = 0; w < dp->n_workers; w++)
        while (mlb_dp_worker_tick(dp, w, now_ns) == 2)
            ;
}

static int ticks_done(const mlb_dp_t *dp)
{
    uint64_t req = atomic_load_explicit(&dp->req_seq, memory_order_relaxed);
    for (uint32_t w = 0; w < dp->n_workers; w++)
        if (atomic_load_explicit(&dp->wk[w].done_seq, memory_order_acquire) != req)
            return 0;
    return 1;
}

/* Open the next msg_out copy and ask every worker for a tick. */
static void publish_begin(mlb_dp_t *dp, mlb_region_t *region, uint64_t now_ns)
{
    atomic_store_explicit(&dp->pending, region ? mlb_out_begin(region) : NULL,
                          memory_order_relaxed);
    dp->pending_ns = now_ns;
    dp->publishing = 1;
    dp->aged_once = 1;
    dp->last_age_ns = now_ns;
    atomic_fetch_add_explicit(&dp->req_seq, 1, memory_order_release);
}

/* Every worker has ticked: meta and per-server rows from their snapshots. */
static void publish_end(mlb_dp_t *dp, mlb_region_t *region)
{
    mlb_msg_out_t *f = atomic_load_explicit(&dp->pending, memory_order_relaxed);
    dp->publishing = 0;
    atomic_store_explicit(&dp->pending, NULL, memory_order_relaxed);
    if (!f || !region)
        return;
    const policy_t *p = policy_now(dp);
    mlb_out_meta_t *mt = &f->meta;
    mt->t_ns = dp->pending_ns;
    mt->dp_gen = region->hdr.dp_generation;
    mt->n_servers = dp->n_servers;
    mt->n_workers = dp->n_workers;
    mt->active_mode = p->mode;
    mt->weights_source = dp->source;
    mt->applied_daemon_gen = dp->applied_gen;
    mt->applied_msg_seq = dp->applied_seq;
    mt->msg_in_accepted = dp->accepted;
    mt->msg_in_rej_stale = dp->rej_stale;
    mt->msg_in_rej_gen = dp->rej_gen;
    mt->msg_in_rej_invalid = dp->rej_invalid;
    mt->fallbacks = dp->fallbacks;
    mt->untracked_flows = 0;
    for (uint32_t w = 0; w < dp->n_workers; w++)
        mt->untracked_flows += dp->wk[w].snap->untracked;
    for (uint32_t i = 0; i < dp->n_servers; i++) {
        mlb_server_stats_t *o = &f->servers[i];
        memset(o, 0, sizeof(*o));
        o->id = dp->id[i];
        o->admin_state = dp->admin[i];
        o->static_weight = dp->static_w[i];
        o->weight = p->weight[i];
        for (uint32_t w = 0; w < dp->n_workers; w++) {
            const wsnap_t *sn = dp->wk[w].snap;
            o->new_flows += sn->ctr[i].new_flows;
            o->completed_flows += sn->ctr[i].completed;
            o->active_flows += sn->active[i];
            o->packets += sn->ctr[i].packets;
            o->bytes += sn->ctr[i].bytes;
            o->timeouts += sn->ctr[i].timeouts;
        }
    }
    mlb_out_commit(region, f);
    dp->frames++;
    dp->last_pub_ns = dp->pending_ns;
}

void mlb_dp_publish(mlb_dp_t *dp, mlb_region_t *region, uint64_t now_ns)
{
    publish_begin(dp, region, now_ns);
    tick_all(dp, now_ns);
    publish_end(dp, region);
}

static int region_fits(const mlb_dp_t *dp, const mlb_region_t *region)
{
    return !region || (region->hdr.n_servers == dp->n_servers &&
                       region->hdr.n_workers == dp->n_workers);
}

static int publish_due(const mlb_dp_t *dp, uint64_t now_ns)
{
    return !dp->aged_once || now_ns - dp->last_age_ns >= dp->cfg.publish_interval_ns;
}

int mlb_dp_timer(mlb_dp_t *dp, mlb_region_t *region, uint64_t now_ns)
{
    if (!region_fits(dp, region))
        return MLB_DP_BAD_ARG;
    if (dp->publishing)                 /* a control-form publish left open */
        publish_end(dp, region);
    int due = publish_due(dp, now_ns);
    if (due) {   /* every worker's tick: idle/DOWN eviction, ages, snapshot */
        publish_begin(dp, region, now_ns);
        tick_all(dp, now_ns);
    }
    int rc = apply_and_expire(dp, region, now_ns);
    if (due)
        publish_end(dp, region);
    if (region)
        mlb_region_heartbeat(region, now_ns);
    return rc;
}

int mlb_dp_control(mlb_dp_t *dp, mlb_region_t *region, uint64_t now_ns)
{
    if (!region_fits(dp, region))
        return MLB_DP_BAD_ARG;
    if (dp->publishing) {
        if (ticks_done(dp))
            publish_end(dp, region);
        else
            dp->publish_waits++;
    }
    int rc = apply_and_expire(dp, region, now_ns);
    if (!dp->publishing && publish_due(dp, now_ns))
        publish_begin(dp, region, now_ns);
    if (region)
        mlb_region_heartbeat(region, now_ns);
    return rc;
}

int mlb_dp_timer_due(const mlb_dp_t *dp, const mlb_region_t *region, uint64_t now_ns)
{
    if (publish_due(dp, now_ns) || dp->publishing)
        return 1;
    if (region && mlb_region_load_u64(&region->hdr.in_published) != dp->in_seen_p)
        return 1;
    return daemon_expired(dp, now_ns);
}

uint64_t mlb_dp_policy_epoch(const mlb_dp_t *dp)
{
    return policy_now(dp)->epoch;
}

/* ---------- read helpers ---------- */

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
        const worker_t *wk = &dp->wk[w];
        out->untracked_flows += wk->untracked;
        out->untracked_packets += wk->untracked_pkts;
        out->down_evictions += wk->down_evictions;
        out->no_server_drops += wk->no_server;
        out->flows += wk->n_flows;
        out->closing += wk->n_closed;
    }
    out->applied_daemon_gen = dp->applied_gen;
    out->applied_msg_seq = dp->applied_seq;
    out->active_mode = policy_now(dp)->mode;
    out->weights_source = dp->source;
    out->last_apply = dp->last_apply;
    out->maglev_size = dp->maglev_size;
    out->flow_capacity = dp->n_slots;
    out->policy_epoch = policy_now(dp)->epoch;
    out->publish_waits = dp->publish_waits;
}

const mlb_reservoir_t *mlb_dp_reservoir(const mlb_dp_t *dp, uint32_t worker,
                                        uint32_t idx, uint32_t kind)
{
    if (worker >= dp->n_workers || idx >= dp->n_servers || kind >= MLB_RES_KINDS)
        return NULL;
    return &dp->wk[worker].samp[idx * MLB_RES_KINDS + kind].r;
}
