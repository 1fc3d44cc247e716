/* Region init/validate and the single-writer latch for both directions.
 *
 * Writer:  copy = p+1 & 1;  seq := odd;  release fence;  fill;
 *          seq := even (release);  published := p+1 (release).
 * Reader:  p := published (acquire);  s1 := copy.seq (acquire);  read;
 *          acquire fence;  s2 := copy.seq;  accept iff s1 even and s1 == s2.
 * The writer never touches the latest copy, so a reader only retries when
 * it was lapped by two publishes during one read. */
#include <stdatomic.h>
#include <string.h>
#include "mlb_core.h"

#define AT(p) ((_Atomic uint64_t *)(p))
#define LOAD_ACQ(p) atomic_load_explicit(AT(p), memory_order_acquire)
#define LOAD_RLX(p) atomic_load_explicit(AT(p), memory_order_relaxed)
#define STORE_REL(p, v) atomic_store_explicit(AT(p), (v), memory_order_release)
#define STORE_RLX(p, v) atomic_store_explicit(AT(p), (v), memory_order_relaxed)

uint64_t mlb_region_size(void) { return sizeof(mlb_region_t); }

uint64_t mlb_region_load_u64(const uint64_t *p) { return LOAD_ACQ(p); }

int mlb_region_init(mlb_region_t *r, uint64_t mapped_size, uint32_t n_servers,
                    uint32_t n_workers, uint64_t dp_generation,
                    uint64_t publish_interval_ns, const char *name, uint32_t pid)
{
    mlb_header_t *h = &r->hdr;
    if (mapped_size < sizeof(mlb_region_t))
        return MLB_ERR_SHORT;
    if (n_servers == 0 || n_servers > MLB_MAX_SERVERS ||
        n_workers == 0 || n_workers > MLB_MAX_WORKERS)
        return MLB_ERR_ARG;
    /* magic first goes to 0 so an attacher never sees a half-built header */
    atomic_store_explicit((_Atomic uint32_t *)&h->magic, 0, memory_order_release);
    memset((char *)h + sizeof(h->magic), 0, sizeof(*h) - sizeof(h->magic));
    h->abi_version = MLB_ABI_VERSION;
    h->header_size = sizeof(mlb_header_t);
    h->sizeof_server_stats = sizeof(mlb_server_stats_t);
    h->sizeof_reservoir = sizeof(mlb_reservoir_t);
    h->sizeof_msg_out = sizeof(mlb_msg_out_t);
    h->sizeof_msg_in = sizeof(mlb_msg_in_t);
    h->reservoir_k = MLB_RESERVOIR_K;
    h->region_size = sizeof(mlb_region_t);
    h->off_msg_out = offsetof(mlb_region_t, out);
    h->off_msg_in = offsetof(mlb_region_t, in);
    h->max_servers = MLB_MAX_SERVERS;
    h->max_workers = MLB_MAX_WORKERS;
    h->n_servers = n_servers;
    h->n_workers = n_workers;
    h->dp_generation = dp_generation;
    h->publish_interval_ns = publish_interval_ns;
    h->dp_pid = pid;
    if (name) {
        strncpy(h->name, name, MLB_NAME_LEN - 1);
        h->name[MLB_NAME_LEN - 1] = '\0';
    }
    for (int i = 0; i < 2; i++) {
        r->out[i].seq = 0;
        r->in[i].seq = 0;
        memset(&r->out[i].meta, 0, sizeof(r->out[i].meta));
        memset(&r->in[i], 0, sizeof(r->in[i]));
    }
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit((_Atomic uint32_t *)&h->magic, MLB_MAGIC, memory_order_release);
    return MLB_OK;
}

int mlb_region_validate(const void *base, uint64_t mapped_size)
{
    const mlb_header_t *h = base;
    if (mapped_size < sizeof(mlb_header_t))
        return MLB_ERR_SHORT;
    uint32_t magic = atomic_load_explicit((_Atomic uint32_t *)&h->magic, memory_order_acquire);
    if (magic != MLB_MAGIC)
        return MLB_ERR_MAGIC;
    if (h->abi_version != MLB_ABI_VERSION)
        return MLB_ERR_VERSION;
    if (h->header_size != sizeof(mlb_header_t) ||
        h->sizeof_server_stats != sizeof(mlb_server_stats_t) ||
        h->sizeof_reservoir != sizeof(mlb_reservoir_t) ||
        h->sizeof_msg_out != sizeof(mlb_msg_out_t) ||
        h->sizeof_msg_in != sizeof(mlb_msg_in_t) ||
        h->reservoir_k != MLB_RESERVOIR_K ||
        h->max_servers != MLB_MAX_SERVERS || h->max_workers != MLB_MAX_WORKERS ||
        h->off_msg_out != offsetof(mlb_region_t, out) ||
        h->off_msg_in != offsetof(mlb_region_t, in) ||
        h->region_size != sizeof(mlb_region_t) ||
        h->n_servers == 0 || h->n_servers > MLB_MAX_SERVERS ||
        h->n_workers == 0 || h->n_workers > MLB_MAX_WORKERS)
        return MLB_ERR_LAYOUT;
    if (mapped_size < h->region_size)
        return MLB_ERR_SHORT;
    return MLB_OK;
}

void mlb_region_heartbeat(mlb_region_t *r, uint64_t now_ns)
{
    STORE_REL(&r->hdr.heartbeat_ns, now_ns);
}

/* Make the copy's seqcount odd (and different), even if a writer that died
 * mid-write left it odd already. */
static void begin_write(uint64_t *seq)
{
    uint64_t s = LOAD_RLX(seq);
    STORE_RLX(seq, (s + 1) | 1);
    atomic_thread_fence(memory_order_release);
}

static void end_write(uint64_t *seq, uint64_t *published, uint64_t p)
{
    STORE_REL(seq, LOAD_RLX(seq) + 1);
    STORE_REL(published, p);
}

mlb_msg_out_t *mlb_out_begin(mlb_region_t *r)
{
    uint64_t p = LOAD_RLX(&r->hdr.out_published) + 1;
    mlb_msg_out_t *f = &r->out[p & 1];
    begin_write(&f->seq);
    f->meta.frame_no = p;
    return f;
}

void mlb_out_commit(mlb_region_t *r, mlb_msg_out_t *f)
{
    end_write(&f->seq, &r->hdr.out_published, f->meta.frame_no);
}

mlb_msg_in_t *mlb_in_begin(mlb_region_t *r)
{
    uint64_t p = LOAD_RLX(&r->hdr.in_published) + 1;
    mlb_msg_in_t *m = &r->in[p & 1];
    begin_write(&m->seq);
    return m;
}

void mlb_in_commit(mlb_region_t *r, mlb_msg_in_t *m)
{
    uint64_t p = LOAD_RLX(&r->hdr.in_published) + 1;
    end_write(&m->seq, &r->hdr.in_published, p);
}

/* Shared retry loop: pick the latest copy, run `read` on it, validate. */
typedef int (*read_fn)(const void *copy, void *dst, void *ctx);

static int latch_read(const uint64_t *published, const void *copy0, const void *copy1,
                      size_t seq_off, read_fn read, void *dst, void *ctx,
                      uint32_t max_tries, uint32_t *retries)
{
    uint32_t tries = 0;
    if (max_tries == 0)
        max_tries = 1;
    while (tries < max_tries) {
        uint64_t p = LOAD_ACQ(published);
        if (p == 0)
            return MLB_ERR_NODATA;
        const void *copy = (p & 1) ? copy1 : copy0;
        const uint64_t *seq = (const uint64_t *)((const char *)copy + seq_off);
        uint64_t s1 = LOAD_ACQ(seq);
        if (!(s1 & 1)) {
            int rc = read(copy, dst, ctx);
            atomic_thread_fence(memory_order_acquire);
            if (LOAD_RLX(seq) == s1) {
                if (retries) *retries += tries;
                return rc;
            }
        }
        tries++;
    }
    if (retries) *retries += tries;
    return MLB_ERR_BUSY;
}

static uint32_t clamp_u32(uint32_t v, uint32_t max) { return v > max ? max : v; }

static int read_out_copy(const void *copy, void *dst, void *ctx)
{
    const mlb_msg_out_t *f = copy;
    mlb_msg_out_t *d = dst;
    (void)ctx;
    d->seq = 0;
    d->meta = f->meta;
    uint32_t ns = clamp_u32(d->meta.n_servers, MLB_MAX_SERVERS);
    uint32_t nw = clamp_u32(d->meta.n_workers, MLB_MAX_WORKERS);
    memcpy(d->servers, f->servers, ns * sizeof(mlb_server_stats_t));
    for (uint32_t w = 0; w < nw; w++)
        memcpy(d->res[w], f->res[w], ns * sizeof(f->res[w][0]));
    return MLB_OK;
}

int mlb_out_snapshot(const mlb_region_t *r, mlb_msg_out_t *dst,
                     uint32_t max_tries, uint32_t *retries)
{
    return latch_read(&r->hdr.out_published, &r->out[0], &r->out[1],
                      offsetof(mlb_msg_out_t, seq), read_out_copy, dst, NULL,
                      max_tries, retries);
}

/* Merge each server's per-worker reservoirs straight from the stable copy:
 * only the chosen samples are read, then the seqcount validates the lot. */
static int read_out_view(const void *copy, void *dst, void *ctx)
{
    const mlb_msg_out_t *f = copy;
    mlb_out_view_t *v = dst;
    mlb_rng_t *rng = ctx;
    v->meta = f->meta;
    uint32_t ns = clamp_u32(v->meta.n_servers, MLB_MAX_SERVERS);
    uint32_t nw = clamp_u32(v->meta.n_workers, MLB_MAX_WORKERS);
    memcpy(v->servers, f->servers, ns * sizeof(mlb_server_stats_t));
    const mlb_reservoir_t *src[MLB_MAX_WORKERS];
    for (uint32_t s = 0; s < ns; s++)
        for (uint32_t k = 0; k < MLB_RES_KINDS; k++) {
            for (uint32_t w = 0; w < nw; w++)
                src[w] = &f->res[w][s][k];
            mlb_reservoir_merge(src, nw, &v->merged[s][k], rng);
        }
    return MLB_OK;
}

int mlb_out_snapshot_view(const mlb_region_t *r, mlb_out_view_t *dst, mlb_rng_t *rng,
                          uint32_t max_tries, uint32_t *retries)
{
    return latch_read(&r->hdr.out_published, &r->out[0], &r->out[1],
                      offsetof(mlb_msg_out_t, seq), read_out_view, dst, rng,
                      max_tries, retries);
}

static int read_in_copy(const void *copy, void *dst, void *ctx)
{
    (void)ctx;
    memcpy(dst, copy, sizeof(mlb_msg_in_t));
    ((mlb_msg_in_t *)dst)->seq = 0;
    return MLB_OK;
}

int mlb_in_snapshot(const mlb_region_t *r, mlb_msg_in_t *dst,
                    uint32_t max_tries, uint32_t *retries)
{
    return latch_read(&r->hdr.in_published, &r->in[0], &r->in[1],
                      offsetof(mlb_msg_in_t, seq), read_in_copy, dst, NULL,
                      max_tries, retries);
}
