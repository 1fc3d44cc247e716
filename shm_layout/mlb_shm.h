/* marllb shared-memory region: THE definition of the ABI.
 *
 * This file is read twice: by the C compiler (through mlb_abi.h, which adds
 * <stdint.h>, include guards and static asserts) and verbatim by cffi's cdef,
 * which does not run the preprocessor.  Keep it to plain typedef'd structs,
 * fixed-width integer types and integer #define constants.  No #if, no
 * macros with arguments, no packed structs.
 *
 * Layout of one region (one per VIP), created and owned by the data plane:
 *
 *   mlb_region_t { header | msg_out[2] | msg_in[2] }
 *
 * Each direction has one writer and is published through a two-copy latch:
 * the writer fills the copy that is NOT the latest, bracketing the writes with
 * that copy's seqcount (odd while writing), then stores the new frame number
 * into the header's *_published counter; the copy of frame p is p & 1.
 * Readers load *_published, read copy (p & 1), and accept it only if the
 * copy's seqcount was even and unchanged across the read.  A reader retries
 * only when the writer has lapped it (two frames during one read).  All of
 * that happens in C (csrc/region.c); Python never reads a live copy.
 *
 * Clocks: every *_t_ns in msg_out and the heartbeat are the DATA PLANE's
 * clock (CLOCK_MONOTONIC on a VPP host; simulated time in the simulator).
 * msg_in carries dp_t_ns, the data-plane frame time its weights were computed
 * from, so the data plane checks the TTL against its own clock.
 *
 * Changing anything here means bumping MLB_ABI_VERSION.
 */

#define MLB_MAGIC 0x4D4C4C42    /* "MLLB" */
#define MLB_ABI_VERSION 2

#define MLB_MAX_SERVERS 256
#define MLB_MAX_WORKERS 16
#define MLB_RESERVOIR_K 128
#define MLB_NAME_LEN 64
#define MLB_POLICY_NAME_LEN 32

/* reservoir kinds, the last index of mlb_msg_out_t.res */
#define MLB_RES_FCT 0
#define MLB_RES_AGE 1
#define MLB_RES_KINDS 2

/* per-server admin state */
#define MLB_ADMIN_UP 0
#define MLB_ADMIN_DRAIN 1
#define MLB_ADMIN_DOWN 2

/* new-flow selection modes */
#define MLB_MODE_NONE 0
#define MLB_MODE_SED 1
#define MLB_MODE_WRANDOM 2
#define MLB_MODE_LEAST_ACTIVE 3
#define MLB_MODE_HASH 4
#define MLB_MODE_P2C 5
#define MLB_MODE_COUNT 6

/* where the weights in force come from (mlb_msg_out_t.weights_source) */
#define MLB_SRC_STATIC 0
#define MLB_SRC_DAEMON 1

/* snapshot / validate return codes */
#define MLB_OK 0
#define MLB_ERR_NODATA -1
#define MLB_ERR_BUSY -2
#define MLB_ERR_SHORT -3
#define MLB_ERR_MAGIC -4
#define MLB_ERR_VERSION -5
#define MLB_ERR_LAYOUT -6
#define MLB_ERR_ARG -7

/* Sample time stamps count units of 2^MLB_SAMPLE_T_SHIFT ns (16.384 us). */
#define MLB_SAMPLE_T_SHIFT 14

/* One flow sample: a completed flow's duration (FCT) or an in-progress
 * flow's age, in seconds, stamped with the data-plane time it was taken.
 * 8 bytes (ABI 2; was 16): the daemon's merge reads the frame's samples,
 * so their size is its memory traffic.  value: float32 seconds (24-bit
 * mantissa: 6e-8 relative; NaN/inf pass through for the daemon to reject).
 * t: (t_ns >> MLB_SAMPLE_T_SHIFT) modulo 2^32; a reader takes the age as
 * the signed 32-bit difference from its own time, exact to one unit for
 * samples up to 2^31 units (~9.8 hours) old; an older sample aliases (with
 * the default decay its weight was ~0 hours before that). */
typedef struct {
    float value;
    uint32_t t;
} mlb_sample_t;

/* The published image of a reservoir: a uniform sample of n_seen items.
 * Only s[0 .. count-1] are live; count == min(n_seen, K). */
typedef struct {
    uint64_t n_seen;
    uint32_t count;
    uint32_t _pad;
    mlb_sample_t s[MLB_RESERVOIR_K];
} mlb_reservoir_t;

/* Per-server state and cumulative counters (u64, never reset while the
 * data-plane generation lives). */
typedef struct {
    uint32_t id;
    uint32_t admin_state;
    double static_weight;
    double weight;          /* the weight in force for new flows */
    uint64_t new_flows;
    uint64_t completed_flows;
    uint64_t active_flows;
    uint64_t packets;
    uint64_t bytes;
    uint64_t timeouts;      /* flows ended by idle timeout (also completed) */
} mlb_server_stats_t;

/* What a msg_out frame says about itself and the data plane's state. */
typedef struct {
    uint64_t frame_no;         /* 1, 2, 3, ... within a data-plane generation */
    uint64_t t_ns;             /* data-plane clock at publish */
    uint64_t dp_gen;           /* copy of the header's dp_generation */
    uint32_t n_servers;
    uint32_t n_workers;
    uint32_t active_mode;      /* MLB_MODE_* in force for new flows */
    uint32_t weights_source;   /* MLB_SRC_* */
    uint64_t applied_daemon_gen;
    uint64_t applied_msg_seq;
    uint64_t msg_in_accepted;
    uint64_t msg_in_rej_stale;     /* older than its TTL */
    uint64_t msg_in_rej_gen;       /* computed for another data-plane generation */
    uint64_t msg_in_rej_invalid;   /* non-finite, negative, all zero, bad mode */
    uint64_t fallbacks;            /* switches from daemon to static weights */
    uint64_t untracked_flows;      /* flow table full: flow not pinned */
    uint64_t _reserved[4];
} mlb_out_meta_t;

/* msg_out: data plane -> daemon, one frame per publish interval. */
typedef struct {
    uint64_t seq;              /* seqcount of this copy: odd while written */
    uint64_t _pad;
    mlb_out_meta_t meta;
    mlb_server_stats_t servers[MLB_MAX_SERVERS];
    mlb_reservoir_t res[MLB_MAX_WORKERS][MLB_MAX_SERVERS][MLB_RES_KINDS];
} mlb_msg_out_t;

/* msg_in: daemon -> data plane. */
typedef struct {
    uint64_t seq;              /* seqcount of this copy */
    uint64_t daemon_gen;       /* changes on every daemon start */
    uint64_t msg_seq;          /* 1, 2, 3, ... within a daemon generation */
    uint64_t dp_gen;           /* data-plane generation the weights are for */
    uint64_t dp_t_ns;          /* msg_out frame time the decision used */
    uint64_t ttl_ns;           /* weights expire at dp_t_ns + ttl_ns */
    uint64_t wall_ns;          /* daemon CLOCK_REALTIME, for humans only */
    uint32_t policy_id;
    uint32_t mode;             /* MLB_MODE_* the weights are meant for */
    uint32_t n_servers;
    uint32_t flags;
    char policy_name[MLB_POLICY_NAME_LEN];
    double weight[MLB_MAX_SERVERS];
} mlb_msg_in_t;

/* Region header.  The creator writes magic LAST. */
typedef struct {
    uint32_t magic;
    uint32_t abi_version;
    uint32_t header_size;
    uint32_t sizeof_server_stats;
    uint32_t sizeof_reservoir;
    uint32_t sizeof_msg_out;
    uint32_t sizeof_msg_in;
    uint32_t reservoir_k;
    uint64_t region_size;
    uint64_t off_msg_out;
    uint64_t off_msg_in;
    uint32_t max_servers;
    uint32_t max_workers;
    uint32_t n_servers;        /* active servers */
    uint32_t n_workers;        /* active workers */
    uint64_t dp_generation;    /* changes on every data-plane (re)start */
    uint64_t heartbeat_ns;     /* data-plane clock, updated every timer call */
    uint64_t publish_interval_ns;
    uint64_t created_wall_ns;
    uint32_t dp_pid;
    uint32_t _pad;
    char name[MLB_NAME_LEN];   /* VIP / region name, NUL-terminated */
    uint64_t out_published;    /* frame number of the latest msg_out copy */
    uint64_t in_published;     /* number of the latest msg_in copy */
    uint64_t _reserved[8];
} mlb_header_t;

typedef struct {
    mlb_header_t hdr;
    mlb_msg_out_t out[2];
    mlb_msg_in_t in[2];
} mlb_region_t;
