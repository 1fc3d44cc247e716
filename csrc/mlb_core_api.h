/* Functions of the portable C core that Python sees through cffi.
 * Like shm_layout/mlb_shm.h this is read verbatim by cffi's cdef: plain
 * typedefs and prototypes only.  C code includes csrc/mlb_core.h instead. */

/* splitmix64 state; any value is a valid seed */
typedef struct {
    uint64_t s;
} mlb_rng_t;

/* A writer-private reservoir sampler (Algorithm L: skip-based, so most
 * items cost one increment and one compare).  r is the publishable image. */
typedef struct {
    mlb_reservoir_t r;
    uint64_t next;     /* 1-based index of the next item that enters */
    double w;          /* Algorithm L's W */
    mlb_rng_t rng;
} mlb_sampler_t;

/* Summary of a reservoir's live slots.  Empty reservoir: count 0, all NaN. */
typedef struct {
    double mean;
    double std;        /* population std (ddof 0) */
    double p90;        /* linear interpolation, like numpy.percentile */
    double dmean;      /* time-decayed mean: weights decay^(age seconds) */
    double dp90;       /* smallest x with decayed weight of {<= x} >= 90% */
    uint32_t count;
    uint32_t _pad;
} mlb_stats_t;

/* A consistent read of msg_out with per-server reservoirs merged across
 * workers: what the daemon works on each tick. */
typedef struct {
    mlb_out_meta_t meta;
    mlb_server_stats_t servers[MLB_MAX_SERVERS];
    mlb_reservoir_t merged[MLB_MAX_SERVERS][MLB_RES_KINDS];
} mlb_out_view_t;

void mlb_rng_seed(mlb_rng_t *rng, uint64_t seed);
uint64_t mlb_rng_next(mlb_rng_t *rng);

void mlb_sampler_init(mlb_sampler_t *s, uint64_t seed);
void mlb_sampler_reset(mlb_sampler_t *s);
void mlb_sampler_forget(mlb_sampler_t *s);
void mlb_sampler_add(mlb_sampler_t *s, uint64_t t_ns, double value);
void mlb_sampler_add_batch(mlb_sampler_t *s, const double *values,
                           const uint64_t *t_ns, uint64_t t_default, size_t n);

int mlb_reservoir_merge(const mlb_reservoir_t **src, size_t nsrc,
                        mlb_reservoir_t *dst, mlb_rng_t *rng);
void mlb_reservoir_stats(const mlb_reservoir_t *r, uint64_t now_ns,
                         double decay_per_s, mlb_stats_t *out);
void mlb_reservoir_stats_many(const mlb_reservoir_t *r, size_t n, uint64_t now_ns,
                              double decay_per_s, mlb_stats_t *out);

uint64_t mlb_region_size(void);
int mlb_region_init(mlb_region_t *r, uint64_t mapped_size, uint32_t n_servers,
                    uint32_t n_workers, uint64_t dp_generation,
                    uint64_t publish_interval_ns, const char *name, uint32_t pid);
int mlb_region_validate(const void *base, uint64_t mapped_size);
void mlb_region_heartbeat(mlb_region_t *r, uint64_t now_ns);
uint64_t mlb_region_load_u64(const uint64_t *p);

mlb_msg_out_t *mlb_out_begin(mlb_region_t *r);
void mlb_out_commit(mlb_region_t *r, mlb_msg_out_t *f);
int mlb_out_snapshot(const mlb_region_t *r, mlb_msg_out_t *dst,
                     uint32_t max_tries, uint32_t *retries);
int mlb_out_snapshot_view(const mlb_region_t *r, mlb_out_view_t *dst, mlb_rng_t *rng,
                          uint32_t max_tries, uint32_t *retries);

mlb_msg_in_t *mlb_in_begin(mlb_region_t *r);
void mlb_in_commit(mlb_region_t *r, mlb_msg_in_t *m);
int mlb_in_snapshot(const mlb_region_t *r, mlb_msg_in_t *dst,
                    uint32_t max_tries, uint32_t *retries);
