/* The simulator's event core; the model and its tie rules are in
 * cluster_core.h.  Simulator only: it allocates (heaps grow), never runs in
 * the data plane. */
#if defined(__GNUC__) && !defined(__clang__)
/* the same double arithmetic as the model's definition: no fused multiply-add */
#pragma GCC optimize("fp-contract=off")
#endif

#include <stdlib.h>
#include <string.h>

#include "../vpp_plugin/core/dp_core.h"
#include "cluster_core.h"

typedef struct {
    double v;                     /* virtual finish time */
    uint64_t f;                   /* flow index (tie-break) */
} cl_job_t;

typedef struct {
    double vt;                    /* V: service per job so far */
    double last;                  /* time of the last V update */
    double rate;                  /* per-job service rate now */
    cl_job_t *jobs;               /* min-heap by (v, f) */
    uint32_t n_jobs, cap_jobs;
    uint64_t *queue;              /* FIFO ring of waiting flows */
    uint32_t q_head, q_cap;
} cl_server_t;

struct mlb_cl {
    mlb_cl_config_t c;
    cl_server_t *srv;
    /* indexed min-heap of servers by (next completion time, index) */
    uint32_t *heap;
    int32_t *pos;                 /* -1: no completion pending */
    double *next_t;
    uint32_t heap_n;
    uint64_t next_flow;
    uint64_t next_change;
    uint64_t in_system;
};

/* ---- per-server job heap ------------------------------------------------ */

static int job_less(const cl_job_t *a, const cl_job_t *b)
{
    return a->v < b->v || (a->v == b->v && a->f < b->f);
}

static int jobs_push(cl_server_t *s, double v, uint64_t f)
{
    if (s->n_jobs == s->cap_jobs) {
        uint32_t cap = s->cap_jobs ? 2 * s->cap_jobs : 16;
        cl_job_t *p = realloc(s->jobs, (size_t)cap * sizeof(*p));
        if (!p)
            return -1;
        s->jobs = p;
        s->cap_jobs = cap;
    }
    uint32_t i = s->n_jobs++;
    cl_job_t x = { v, f };
    while (i > 0) {
        uint32_t up = (i - 1) / 2;
        if (!job_less(&x, &s->jobs[up]))
            break;
        s->jobs[i] = s->jobs[up];
        i = up;
    }
    s->jobs[i] = x;
    return 0;
}

static uint64_t jobs_pop(cl_server_t *s)
{
    uint64_t f = s->jobs[0].f;
    cl_job_t x = s->jobs[--s->n_jobs];
    uint32_t n = s->n_jobs, i = 0;
    for (;;) {
        uint32_t k = 2 * i + 1;
        if (k >= n)
            break;
        if (k + 1 < n && job_less(&s->jobs[k + 1], &s->jobs[k]))
            k++;
        if (!job_less(&s->jobs[k], &x))
            break;
        s->jobs[i] = s->jobs[k];
        i = k;
    }
    if (n)
        s->jobs[i] = x;
    return f;
}

/* ---- indexed heap of pending completions --------------------------------- */

static int srv_less(const mlb_cl_t *cl, uint32_t a, uint32_t b)
{
    return cl->next_t[a] < cl->next_t[b] || (cl->next_t[a] == cl->next_t[b] && a < b);
}

static void heap_place(mlb_cl_t *cl, uint32_t i, uint32_t j)
{
    cl->heap[i] = j;
    cl->pos[j] = (int32_t)i;
}

static void heap_up(mlb_cl_t *cl, uint32_t i)
{
    uint32_t j = cl->heap[i];
    while (i > 0) {
        uint32_t up = (i - 1) / 2;
        if (!srv_less(cl, j, cl->heap[up]))
            break;
        heap_place(cl, i, cl->heap[up]);
        i = up;
    }
    heap_place(cl, i, j);
}

static void heap_down(mlb_cl_t *cl, uint32_t i)
{
    uint32_t j = cl->heap[i], n = cl->heap_n;
    for (;;) {
        uint32_t k = 2 * i + 1;
        if (k >= n)
            break;
        if (k + 1 < n && srv_less(cl, cl->heap[k + 1], cl->heap[k]))
            k++;
        if (!srv_less(cl, cl->heap[k], j))
            break;
        heap_place(cl, i, cl->heap[k]);
        i = k;
    }
    heap_place(cl, i, j);
}

static void heap_set(mlb_cl_t *cl, uint32_t j, double t)
{
    cl->next_t[j] = t;
    if (cl->pos[j] < 0) {
        heap_place(cl, cl->heap_n++, j);
        heap_up(cl, cl->heap_n - 1);
    } else {
        heap_up(cl, (uint32_t)cl->pos[j]);
        heap_down(cl, (uint32_t)cl->pos[j]);
    }
}

static void heap_remove(mlb_cl_t *cl, uint32_t j)
{
    int32_t p = cl->pos[j];
    if (p < 0)
        return;
    cl->pos[j] = -1;
    uint32_t last = cl->heap[--cl->heap_n];
    if ((uint32_t)p < cl->heap_n) {
        heap_place(cl, (uint32_t)p, last);
        heap_up(cl, (uint32_t)p);
        heap_down(cl, (uint32_t)cl->pos[last]);
    }
}

/* ---- processor sharing: the one update --------------------------------- */

/* Bring V up to t (jobs in service received their share since `last`). */
static void ps_advance(cl_server_t *s, double t, uint32_t n)
{
    if (n)
        s->vt += s->rate * (t - s->last);
    s->last = t;
}

/* New per-job rate for the jobs now in service; (re)schedule the next completion. */
static void ps_reschedule(mlb_cl_t *cl, uint32_t j, double t)
{
    cl_server_t *s = &cl->srv[j];
    uint32_t n = cl->c.in_service[j];
    if (!n) {
        heap_remove(cl, j);
        return;
    }
    double c = cl->c.cores[j];
    s->rate = cl->c.speed[j] * cl->c.factor[j] * ((double)n <= c ? 1.0 : c / (double)n);
    heap_set(cl, j, t + (s->jobs[0].v - s->vt) / s->rate);
}

/* ---- the three kinds of event -------------------------------------------- */

static int32_t pick_server(mlb_cl_t *cl, uint64_t f)
{
    const mlb_cl_config_t *c = &cl->c;
    if (c->n_lbs)
        return c->packet(c->dps[c->lb[f]], c->worker[f], c->hash[f], c->arr_ns[f],
                             100, MLB_PKT_SYN);
    /* oracle: argmin (in system + 1) / capacity, lowest index on ties */
    int32_t best = 0;
    double bv = 0.0;
    for (uint32_t j = 0; j < c->n_servers; j++) {
        double cap = c->cores[j] * c->speed[j] * c->factor[j];
        double v = (double)(c->in_service[j] + c->waiting[j] + 1) / cap;
        if (j == 0 || v < bv) {
            bv = v;
            best = (int32_t)j;
        }
    }
    return best;
}

static void reject(mlb_cl_t *cl, uint64_t f, int sent_syn)
{
    const mlb_cl_config_t *c = &cl->c;
    c->rejected[f] = 1;
    if (sent_syn && c->n_lbs)
        c->packet(c->dps[c->lb[f]], c->worker[f], c->hash[f], c->arr_ns[f], 0,
                      MLB_PKT_RST);
}

static int on_arrival(mlb_cl_t *cl)
{
    const mlb_cl_config_t *c = &cl->c;
    uint64_t f = cl->next_flow++;
    double t = c->arr_t[f];
    int32_t j = pick_server(cl, f);
    if (j < 0) {
        reject(cl, f, 0);
        return 0;
    }
    c->server[f] = j;
    cl_server_t *s = &cl->srv[j];
    uint32_t n = c->in_service[j];
    if (n < c->workers[j]) {
        ps_advance(s, t, n);
        if (jobs_push(s, s->vt + c->work[f], f))
            return -1;
        c->in_service[j] = n + 1;
        ps_reschedule(cl, (uint32_t)j, t);
        cl->in_system++;
    } else if (c->waiting[j] < c->backlog[j] && c->waiting[j] < s->q_cap) {
        s->queue[(s->q_head + c->waiting[j]) % s->q_cap] = f;
        c->waiting[j]++;
        cl->in_system++;
    } else {
        reject(cl, f, 1);
    }
    return 0;
}

static void on_change(mlb_cl_t *cl)
{
    const mlb_cl_config_t *c = &cl->c;
    uint64_t k = cl->next_change++;
    double t = c->chg_t[k];
    uint32_t j = (uint32_t)c->chg_server[k];
    c->cap_int[j] += c->cores[j] * c->speed[j] * c->factor[j] * (t - c->cap_last[j]);
    c->cap_last[j] = t;
    ps_advance(&cl->srv[j], t, c->in_service[j]);
    c->factor[j] = c->chg_factor[k];
    ps_reschedule(cl, j, t);
}

static int on_completion(mlb_cl_t *cl)
{
    const mlb_cl_config_t *c = &cl->c;
    uint32_t j = cl->heap[0];
    double t = cl->next_t[j];
    cl_server_t *s = &cl->srv[j];
    uint32_t n = c->in_service[j];
    ps_advance(s, t, n);
    uint64_t f = jobs_pop(s);
    c->done[f] = t;
    cl->in_system--;
    if (c->n_lbs)
        c->packet(c->dps[c->lb[f]], c->worker[f], c->hash[f],
                      (uint64_t)(int64_t)(t * 1e9) + c->t0_ns, 1000, MLB_PKT_FIN);
    n--;
    if (c->waiting[j]) {
        uint64_t f2 = s->queue[s->q_head];
        s->q_head = (s->q_head + 1) % s->q_cap;
        c->waiting[j]--;
        if (jobs_push(s, s->vt + c->work[f2], f2))
            return -1;
        n++;
    }
    c->in_service[j] = n;
    ps_reschedule(cl, j, t);
    return 0;
}

/* ---- driver ------------------------------------------------------------------ */

int mlb_cl_advance(mlb_cl_t *cl, double t_stop)
{
    const mlb_cl_config_t *c = &cl->c;
    for (;;) {
        double ta = cl->next_flow < c->n_flows ? c->arr_t[cl->next_flow] : INFINITY;
        double tc = cl->next_change < c->n_changes ? c->chg_t[cl->next_change] : INFINITY;
        double td = cl->heap_n ? cl->next_t[cl->heap[0]] : INFINITY;
        double te = tc <= td ? tc : td;
        if (t_stop <= ta && t_stop <= te)
            return 0;
        if (ta <= te) {
            if (on_arrival(cl))
                return -1;
        } else if (tc <= td) {
            on_change(cl);
        } else if (on_completion(cl)) {
            return -1;
        }
    }
}

uint64_t mlb_cl_arrived(const mlb_cl_t *cl)
{
    return cl->next_flow;
}

uint64_t mlb_cl_in_system(const mlb_cl_t *cl)
{
    return cl->in_system;
}

void mlb_cl_destroy(mlb_cl_t *cl)
{
    if (!cl)
        return;
    if (cl->srv) {
        for (uint32_t j = 0; j < cl->c.n_servers; j++) {
            free(cl->srv[j].jobs);
            free(cl->srv[j].queue);
        }
    }
    free(cl->srv);
    free(cl->heap);
    free(cl->pos);
    free(cl->next_t);
    free(cl);
}

mlb_cl_t *mlb_cl_create(const mlb_cl_config_t *cfg)
{
    if (!cfg || cfg->n_servers == 0 || (cfg->n_lbs && (!cfg->dps || !cfg->packet)))
        return NULL;
    mlb_cl_t *cl = calloc(1, sizeof(*cl));
    if (!cl)
        return NULL;
    cl->c = *cfg;
    uint32_t m = cfg->n_servers;
    cl->srv = calloc(m, sizeof(*cl->srv));
    cl->heap = calloc(m, sizeof(*cl->heap));
    cl->pos = malloc(m * sizeof(*cl->pos));
    cl->next_t = calloc(m, sizeof(*cl->next_t));
    if (!cl->srv || !cl->heap || !cl->pos || !cl->next_t) {
        mlb_cl_destroy(cl);
        return NULL;
    }
    for (uint32_t j = 0; j < m; j++) {
        cl->pos[j] = -1;
        /* a queue longer than the trace never fills */
        uint64_t q = cfg->backlog[j] < cfg->n_flows ? cfg->backlog[j] : cfg->n_flows;
        cl->srv[j].q_cap = (uint32_t)q;
        if (q) {
            cl->srv[j].queue = malloc(q * sizeof(uint64_t));
            if (!cl->srv[j].queue) {
                mlb_cl_destroy(cl);
                return NULL;
            }
        }
    }
    for (uint64_t i = 0; i < cfg->n_flows; i++)
        if (cfg->n_lbs && (cfg->lb[i] < 0 || (uint32_t)cfg->lb[i] >= cfg->n_lbs)) {
            mlb_cl_destroy(cl);
            return NULL;
        }
    return cl;
}
