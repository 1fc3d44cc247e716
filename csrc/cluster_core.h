/* The simulator's event core (marllb.sim.cluster): processor-sharing servers
 * fed by the real data-plane core, in C so a simulated flow costs well under
 * a microsecond.
 *
 * Read verbatim by cffi's cdef after vpp_plugin/core/dp_core_api.h (it uses
 * mlb_dp_t): plain typedefs and prototypes only, so no include guard: C
 * includes it once, after vpp_plugin/core/dp_core.h.
 *
 * Every array is owned by the caller (numpy in marllb.sim.cluster) and must
 * outlive the core; the core allocates only its heaps and queues.
 *
 * Model: a job of work w core-seconds enters service on server j if fewer
 * than workers[j] jobs are in service there, else waits (FIFO) if fewer than
 * backlog[j] wait, else is rejected (the LB sees an RST).  In service, jobs
 * share cores[j] x speed[j] x factor[j] unit cores: each gets
 * speed x factor x min(1, cores / n).  Virtual time per server: V grows at
 * that per-job rate; a job entering at V0 leaves when V = V0 + w.
 *
 * Event order (ties): a tick at t runs before anything at t; an arrival
 * before a server event at the same time; a capacity change before a
 * completion; completions by server index; jobs on one server by
 * (finish V, flow index).
 */

/* mlb_dp_packet's signature: the core is reached through a pointer so this
 * file links without the data-plane core (tests build csrc/ alone). */
typedef int32_t (*mlb_cl_packet_fn)(mlb_dp_t *dp, uint32_t worker, uint64_t flow_hash,
                                    uint64_t now_ns, uint32_t bytes, uint32_t flags);

typedef struct {
    /* flows, sorted by arrival time */
    uint64_t n_flows;
    const double *arr_t;          /* arrival, simulated s */
    const double *work;           /* core-seconds */
    const int32_t *lb;            /* LB index (unused by the oracle) */
    const uint32_t *worker;       /* worker within the LB */
    const uint64_t *hash;         /* flow hash */
    const uint64_t *arr_ns;       /* arrival, data-plane ns */
    double *done;                 /* out: completion s (callers pre-fill NaN) */
    int32_t *server;              /* out: server, -1 if none (pre-filled) */
    uint8_t *rejected;            /* out: 1 if rejected (pre-filled 0) */
    /* servers */
    uint32_t n_servers;
    uint32_t n_lbs;               /* 0: the oracle (global SED on the true state) */
    const double *cores;
    const double *speed;
    double *factor;               /* interference factor in force (updated) */
    const uint32_t *workers;      /* jobs in service at most */
    const uint32_t *backlog;      /* jobs waiting at most */
    uint32_t *in_service;         /* out: jobs in service now */
    uint32_t *waiting;            /* out: jobs waiting now */
    double *cap_int;              /* out: integral of capacity up to cap_last */
    double *cap_last;             /* out: time of the last capacity change */
    /* capacity changes, sorted by (time, server, factor) */
    uint64_t n_changes;
    const double *chg_t;
    const int32_t *chg_server;
    const double *chg_factor;
    /* one data-plane core per LB (n_lbs of them), and mlb_dp_packet */
    mlb_dp_t **dps;
    mlb_cl_packet_fn packet;
    uint64_t t0_ns;               /* data-plane clock at simulated time 0 */
} mlb_cl_config_t;

typedef struct mlb_cl mlb_cl_t;

/* NULL on a bad config or out of memory. */
mlb_cl_t *mlb_cl_create(const mlb_cl_config_t *cfg);
void mlb_cl_destroy(mlb_cl_t *cl);
/* Run every arrival, capacity change and completion strictly before t_stop
 * (a tick at t_stop comes first).  Returns 0, or -1 out of memory. */
int mlb_cl_advance(mlb_cl_t *cl, double t_stop);
/* Arrivals taken so far (flow index of the next one). */
uint64_t mlb_cl_arrived(const mlb_cl_t *cl);
/* Jobs in service or waiting, all servers. */
uint64_t mlb_cl_in_system(const mlb_cl_t *cl);
