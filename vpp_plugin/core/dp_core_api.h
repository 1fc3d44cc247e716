/* marllb data-plane core: the API the VPP glue and the simulator call.
 *
 * Read verbatim by cffi's cdef after shm_layout/mlb_shm.h and
 * csrc/mlb_core_api.h (so it may use their types): plain typedefs,
 * prototypes and integer #define constants only.  C includes
 * vpp_plugin/core/dp_core.h.
 *
 * Threading: mlb_dp_packet(dp, w, ...) and mlb_dp_worker_tick(dp, w, ...)
 * may run concurrently for DIFFERENT workers w (all per-packet state is per
 * worker; each worker sweeps its own table and publishes its own snapshot).
 * mlb_dp_control runs on the control thread CONCURRENTLY with the workers:
 * it reads only the workers' published snapshots and swaps the policy by
 * pointer; between two policy swaps (mlb_dp_policy_epoch changes) every
 * worker must finish the packet it is in (VPP: vlib_worker_wait_one_loop).
 * create/destroy, set_server, set_mode, mlb_dp_timer and the read helpers
 * run while no worker is inside the core (VPP: under the worker barrier,
 * configuration changes only; the simulator is single threaded).
 *
 * Flow end: a FIN or RST closes a pinned flow (active--, completed++, one
 * FCT sample) but its entry stays, so the connection's remaining packets
 * (the last ACKs, retransmissions) keep its server, until close_timeout_ns
 * without packets or until its bucket needs the slot for a new flow.
 * Untracked flows (bucket full of open flows, or a lone FIN/RST) go by a
 * consistent hash: the Maglev table weighted by the weights in force (in
 * HASH mode the HASH table), so they keep their server while the weights
 * and admin states do not change.
 *
 * Selection (new flows only; a pinned flow keeps its server):
 *   SED           argmin_j (active_j + 1) * (1 / w_j) over eligible servers,
 *                 computed in double; ties (equal doubles) -> LOWEST index.
 *                 active_j is the calling worker's own count of active flows
 *                 (a per-worker tournament tree: O(log n) per flow start or
 *                 end, O(1) per selection).
 *   LEAST_ACTIVE  argmin_j active_j over eligible servers; ties -> lowest index.
 *   WRANDOM       weighted random (Vose alias table, per-worker mlb_rng).
 *   P2C           two weighted-random draws, the lower SED score wins
 *                 (ties -> lower index).
 *   HASH          Maglev table (prime size >= 100 x n_servers), equal shares
 *                 among eligible servers, keyed by flow_hash (ECMP stand-in).
 * Eligible = admin state UP and weight in force > 0 (for HASH and
 * LEAST_ACTIVE the weight only decides eligibility).
 * Admin DRAIN: no new flows, pinned flows stay.  DOWN: no flows; a pinned
 * flow's next packet is re-homed as a new flow and the timer evicts the rest
 * (both counted as completed flows without an FCT sample).
 */

/* flag bits of mlb_dp_packet (client -> server direction) */
#define MLB_PKT_SYN 1
#define MLB_PKT_FIN 2
#define MLB_PKT_RST 4
/* not a trackable flow (an IP fragment without ports, ICMP): forwarded by
 * the consistent hash of flow_hash, counted, never pinned */
#define MLB_PKT_NOFLOW 8
/* a packet of a connection already under way (TCP without SYN): if the
 * table does not hold it, it was untracked (or its entry lost), so it is
 * pinned to the consistent hash's server, where its earlier packets went,
 * not to a fresh choice */
#define MLB_PKT_MIDFLOW 16

/* negative results of mlb_dp_packet / mlb_dp_select */
#define MLB_DP_NO_SERVER -1     /* no eligible server: drop */
#define MLB_DP_BAD_ARG -2       /* worker out of range */

/* mlb_dp_flow_server(): not in the table */
#define MLB_DP_NO_FLOW -1
/* mlb_dp_flow_state() */
#define MLB_DP_FLOW_NONE 0
#define MLB_DP_FLOW_OPEN 1
#define MLB_DP_FLOW_CLOSED 2      /* FIN/RST seen, entry kept for affinity */

/* Compiled-in bounds, whatever the daemon or an operator says.  A msg_in
 * TTL above MLB_DP_TTL_MAX_MS is cut to it; the glue refuses commands
 * outside the others (checked by mlb_dp_config_check / mlb_dp_check_*). */
#define MLB_DP_TTL_MAX_MS 10000
#define MLB_DP_IDLE_MAX_S 86400
#define MLB_DP_PUBLISH_MAX_MS 60000
#define MLB_DP_TIMER_MIN_MS 1
#define MLB_DP_TIMER_MAX_MS 10000

/* msg_in apply results (mlb_dp_stats_t.last_apply) */
#define MLB_APPLY_NONE 0         /* nothing new in msg_in */
#define MLB_APPLY_ACCEPTED 1
#define MLB_APPLY_REJ_STALE 2    /* TTL expired, or msg_seq not rising */
#define MLB_APPLY_REJ_GEN 3      /* computed for another dp generation */
#define MLB_APPLY_REJ_INVALID 4  /* NaN/inf/negative/all-zero, bad mode/n */

typedef struct {
    uint32_t n_servers;          /* 1 .. MLB_MAX_SERVERS */
    uint32_t n_workers;          /* 1 .. MLB_MAX_WORKERS */
    uint32_t flow_capacity;      /* per worker; rounded up to a power of two >= 64 */
    uint32_t mode;               /* configured (fallback) MLB_MODE_*, not NONE */
    uint64_t idle_timeout_ns;    /* a flow idle this long ends */
    uint64_t publish_interval_ns;
    uint64_t seed;               /* all randomness derives from it */
    uint32_t maglev_size;        /* 0: smallest prime >= 100 x n_servers */
    uint32_t _pad;
    uint64_t close_timeout_ns;   /* a closed (FIN/RST) entry idle this long is freed;
                                    cut to idle_timeout_ns */
} mlb_dp_config_t;

/* Data-plane-wide counters (the same numbers go into msg_out meta). */
typedef struct {
    uint64_t frames_published;
    uint64_t msg_in_accepted;
    uint64_t msg_in_rej_stale;
    uint64_t msg_in_rej_gen;
    uint64_t msg_in_rej_invalid;
    uint64_t fallbacks;          /* daemon -> static switches */
    uint64_t untracked_flows;    /* table (bucket) full: flow not pinned */
    uint64_t down_evictions;     /* flows ended because their server went DOWN */
    uint64_t flows;              /* open pinned flows now, all workers (= sum of active) */
    uint64_t applied_daemon_gen;
    uint64_t applied_msg_seq;
    uint32_t active_mode;        /* MLB_MODE_* in force */
    uint32_t weights_source;     /* MLB_SRC_* in force */
    uint32_t last_apply;         /* MLB_APPLY_* of the last timer call */
    uint32_t maglev_size;
    uint32_t flow_capacity;      /* per worker, after rounding */
    uint32_t _pad;
    uint64_t closing;            /* closed entries kept for their last packets */
    uint64_t no_server_drops;    /* packets with no eligible server (drop) */
    uint64_t untracked_packets;  /* packets sent by the consistent-hash fallback */
    uint64_t policy_epoch;       /* bumped on every policy swap */
    uint64_t publish_waits;      /* control calls that found a worker tick pending */
} mlb_dp_stats_t;

typedef struct mlb_dp mlb_dp_t;

/* Fill cfg with defaults for n_servers/n_workers (SED, 64 Ki flows per
 * worker, 40 s idle timeout, 10 s close timeout, 250 ms publish interval). */
void mlb_dp_config_default(mlb_dp_config_t *cfg, uint32_t n_servers, uint32_t n_workers);
/* NULL on a bad config (see mlb_dp_config_check) or out of memory.  All
 * servers start UP with static weight 1 and id = index. */
mlb_dp_t *mlb_dp_create(const mlb_dp_config_t *cfg);
void mlb_dp_destroy(mlb_dp_t *dp);
/* MLB_OK or MLB_ERR_ARG; *field (if not NULL) names the offending field.
 * Bounds: idle 1 ns .. MLB_DP_IDLE_MAX_S, publish 1 ns .. MLB_DP_PUBLISH_MAX_MS,
 * close timeout 1 ns .. MLB_DP_IDLE_MAX_S. */
int mlb_dp_config_check(const mlb_dp_config_t *cfg, const char **field);
/* Operator numbers, checked before anything changes (MLB_OK/MLB_ERR_ARG):
 * seconds in (0, max_s] (NaN, negative, zero, huge refused) -> *ns; a timer
 * interval in [MLB_DP_TIMER_MIN_MS, MLB_DP_TIMER_MAX_MS]. */
int mlb_dp_check_seconds(double seconds, double max_s, uint64_t *ns);
int mlb_dp_check_timer_ms(double ms);

/* Control (rebuilds the lookup tables off the packet path, then swaps). */
int mlb_dp_set_server(mlb_dp_t *dp, uint32_t idx, uint32_t id, uint32_t admin_state,
                      double static_weight);
int mlb_dp_set_mode(mlb_dp_t *dp, uint32_t mode);

/* One packet of a flow on worker `worker` at data-plane time now_ns.
 * Returns the server index, or MLB_DP_NO_SERVER / MLB_DP_BAD_ARG.
 * Unknown flow -> new flow (selected, or with MLB_PKT_MIDFLOW the consistent
 * hash's server; pinned, counted) unless it is a lone
 * FIN/RST (sent by the consistent hash, not pinned).  FIN or RST closes a
 * pinned flow: its FCT (now - first packet, in seconds) enters the server's
 * FCT reservoir exactly once; the entry keeps the server for the
 * connection's last packets; a SYN on a closed entry starts a new flow. */
int32_t mlb_dp_packet(mlb_dp_t *dp, uint32_t worker, uint64_t flow_hash,
                      uint64_t now_ns, uint32_t bytes, uint32_t flags);

/* Timer, single-threaded form (simulator, tests): once per publish
 * interval every worker's tick (sweep, ages, snapshot) then publish;
 * apply the latest msg_in and expire stale daemon weights every call;
 * heartbeat every call.  region may be NULL (no apply/publish).  Returns the
 * MLB_APPLY_* of this call, or MLB_DP_BAD_ARG for a region of another
 * server/worker count.  Same result as mlb_dp_control + every worker's tick
 * + mlb_dp_control, in one call. */
int mlb_dp_timer(mlb_dp_t *dp, mlb_region_t *region, uint64_t now_ns);

/* Timer, multi-threaded form (VPP), no worker barrier:
 * - mlb_dp_control (control thread, every few ms): finish a publish whose
 *   worker ticks are all done (msg_out from the workers' snapshots), apply
 *   msg_in / expire daemon weights (one policy swap at most), and when a
 *   publish is due open the next msg_out copy and ask every worker for a
 *   tick.  Returns like mlb_dp_timer.
 * - mlb_dp_worker_tick (each worker, in its own loop, when
 *   mlb_dp_worker_pending says so): sweep its own table (idle, closed and
 *   DOWN entries, one age sample per open flow) 4096 slots per call, then
 *   snapshot its counters and write its reservoirs into the open msg_out
 *   copy.  Returns 0 (nothing asked), 1 (tick done) or 2 (call again:
 *   the sweep goes on in the next call, so a worker never pauses long). */
int mlb_dp_control(mlb_dp_t *dp, mlb_region_t *region, uint64_t now_ns);
int mlb_dp_worker_tick(mlb_dp_t *dp, uint32_t worker, uint64_t now_ns);
int mlb_dp_worker_pending(const mlb_dp_t *dp, uint32_t worker);
uint64_t mlb_dp_policy_epoch(const mlb_dp_t *dp);
/* Non-zero when mlb_dp_timer has work now (publish due, a new msg_in,
 * daemon weights expired); read-only, so a caller can skip stopping
 * workers for a timer call that would do nothing but the heartbeat. */
int mlb_dp_timer_due(const mlb_dp_t *dp, const mlb_region_t *region, uint64_t now_ns);

/* Pieces of mlb_dp_timer (no-barrier callers use control/worker_tick):
 * sweep runs in the worker's context; apply on the control thread; publish
 * (single-threaded) = every worker's snapshot + msg_out. */
void mlb_dp_sweep(mlb_dp_t *dp, uint32_t worker, uint64_t now_ns, int sample_ages);
int mlb_dp_apply(mlb_dp_t *dp, mlb_region_t *region, uint64_t now_ns);
void mlb_dp_publish(mlb_dp_t *dp, mlb_region_t *region, uint64_t now_ns);

/* Pure selection for a new flow (no table, no counters): benchmarks. */
int32_t mlb_dp_select(mlb_dp_t *dp, uint32_t worker, uint64_t flow_hash);
/* Maglev lookup in the current table (any mode), MLB_DP_NO_SERVER if empty. */
int32_t mlb_dp_hash_lookup(const mlb_dp_t *dp, uint64_t flow_hash);
/* The untracked-flow fallback: the server an untracked flow goes to now. */
int32_t mlb_dp_fallback_lookup(const mlb_dp_t *dp, uint64_t flow_hash);

/* Read helpers (control thread). */
int32_t mlb_dp_flow_server(const mlb_dp_t *dp, uint32_t worker, uint64_t flow_hash);
int mlb_dp_flow_state(const mlb_dp_t *dp, uint32_t worker, uint64_t flow_hash);
uint64_t mlb_dp_server_active(const mlb_dp_t *dp, uint32_t idx);
double mlb_dp_weight(const mlb_dp_t *dp, uint32_t idx);
int mlb_dp_get_server(const mlb_dp_t *dp, uint32_t idx, mlb_server_stats_t *out);
void mlb_dp_get_stats(const mlb_dp_t *dp, mlb_dp_stats_t *out);
/* The worker's FCT/AGE sampler image (kind MLB_RES_*), NULL if out of range. */
const mlb_reservoir_t *mlb_dp_reservoir(const mlb_dp_t *dp, uint32_t worker,
                                        uint32_t idx, uint32_t kind);
