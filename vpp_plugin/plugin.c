/* lb_rl plugin registration, VIP and region lifetime, FIB and DPO glue, and
 * the configuration actions shared by the CLI and the binary API. */
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vnet/plugin/plugin.h>
#include <vpp/app/version.h>
#include <vnet/fib/fib_source.h>
#include <vnet/fib/fib_entry_track.h>

#include "lb_rl.h"

lb_rl_main_t lb_rl_main;

const char *
lb_rl_mode_name (u32 mode)
{
  /* the spellings lbd, lbctl and lbsim use */
  static const char *names[] = { "none", "sed", "wcmp", "lsq", "hash", "p2c" };
  return mode < MLB_MODE_COUNT ? names[mode] : "?";
}

const char *
lb_rl_admin_name (u32 admin_state)
{
  static const char *names[] = { "up", "drain", "down" };
  return admin_state <= MLB_ADMIN_DOWN ? names[admin_state] : "?";
}

const char *
lb_rl_encap_name (lb_rl_encap_t encap)
{
  static const char *names[] = { "l2dsr", "l3dsr", "gre4" };
  return encap < LB_RL_N_ENCAP ? names[encap] : "?";
}

/* sed, wcmp, lsq, hash, p2c; the older spellings stay as aliases */
uword
unformat_lb_rl_mode (unformat_input_t *input, va_list *args)
{
  u32 *mode = va_arg (*args, u32 *);
  if (unformat (input, "sed"))
    *mode = MLB_MODE_SED;
  else if (unformat (input, "wcmp") || unformat (input, "wrandom"))
    *mode = MLB_MODE_WRANDOM;
  else if (unformat (input, "lsq") || unformat (input, "least_active") ||
	   unformat (input, "least-active"))
    *mode = MLB_MODE_LEAST_ACTIVE;
  else if (unformat (input, "hash") || unformat (input, "maglev"))
    *mode = MLB_MODE_HASH;
  else if (unformat (input, "p2c"))
    *mode = MLB_MODE_P2C;
  else
    return 0;
  return 1;
}

/* ---------- region ---------- */

static void
lb_rl_region_close (lb_rl_vip_t *v)
{
  if (v->region)
    {
      munmap (v->region, v->region_size);
      shm_unlink ((char *) v->region_name);
    }
  v->region = 0;
  vec_free (v->region_name);
}

/* The data plane owns the region: a restart replaces it with a new
 * generation, so a daemon still attached to the old one notices.  Mode
 * 0660 whatever the umask (fchmod, as daemon/shm.py does), so the lbd
 * service user in VPP's group can attach. */
static clib_error_t *
lb_rl_region_open (lb_rl_vip_t *v, const char *name)
{
  uword size = mlb_region_size ();
  int fd;
  void *p;

  v->region_name = format (0, "%s%s%c", name[0] == '/' ? "" : "/", name, 0);
  shm_unlink ((char *) v->region_name);
  fd = shm_open ((char *) v->region_name, O_CREAT | O_EXCL | O_RDWR, 0660);
  if (fd < 0)
    return clib_error_return_unix (0, "shm_open %s", v->region_name);
  if (fchmod (fd, 0660) < 0 || ftruncate (fd, size) < 0)
    {
      close (fd);
      shm_unlink ((char *) v->region_name);
      return clib_error_return_unix (0, "fchmod/ftruncate %s", v->region_name);
    }
  p = mmap (0, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close (fd);
  if (p == MAP_FAILED)
    {
      shm_unlink ((char *) v->region_name);
      return clib_error_return_unix (0, "mmap %s", v->region_name);
    }
  v->region = p;
  v->region_size = size;
  v->dp_generation = clib_cpu_time_now () ^ ((u64) getpid () << 32);
  if (v->dp_generation == 0)
    v->dp_generation = 1;
  if (mlb_region_init (v->region, size, v->cfg.n_servers, v->cfg.n_workers,
		       v->dp_generation, v->cfg.publish_interval_ns,
		       (char *) v->region_name + 1, getpid ()) != MLB_OK)
    return clib_error_return (0, "region init failed (servers %u workers %u)",
			      v->cfg.n_servers, v->cfg.n_workers);
  return 0;
}

/* ---------- server forwarding: FIB child of the server's /32 ---------- */

static lb_rl_server_t *
lb_rl_server_from_fib_node (fib_node_t *node)
{
  return (lb_rl_server_t *) ((char *) node -
			     STRUCT_OFFSET_OF (lb_rl_server_t, fib_node));
}

/* (Re)stack the server's DPO on what its /32 forwards through now. */
static void
lb_rl_server_stack (lb_rl_server_t *s)
{
  dpo_stack_from_node (lb_rl_ip4_node.index, &s->dpo,
		       fib_entry_contribute_ip_forwarding (s->fib_entry_index));
}

static fib_node_t *
lb_rl_fib_node_get (fib_node_index_t index)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  u32 vi = index / MLB_MAX_SERVERS, si = index % MLB_MAX_SERVERS;
  lb_rl_vip_t *v = pool_elt_at_index (lrm->vips, vi);
  return &v->servers[si].fib_node;
}

static void
lb_rl_fib_node_last_lock_gone (fib_node_t *node)
{
  /* servers live as long as their VIP; nothing to free here */
}

/* A route to a server changed: follow it (no per-packet lookup). */
static fib_node_back_walk_rc_t
lb_rl_fib_node_back_walk (fib_node_t *node, fib_node_back_walk_ctx_t *ctx)
{
  lb_rl_server_stack (lb_rl_server_from_fib_node (node));
  return FIB_NODE_BACK_WALK_CONTINUE;
}

static void
lb_rl_server_untrack (lb_rl_vip_t *v, lb_rl_server_t *s)
{
  if (!s->configured)
    return;
  fib_entry_untrack (s->fib_entry_index, s->sibling_index);
  dpo_reset (&s->dpo);
  s->configured = 0;
}

static void
lb_rl_server_track (lb_rl_vip_t *v, lb_rl_server_t *s, ip4_address_t *addr)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  fib_prefix_t pfx = {
    .fp_proto = FIB_PROTOCOL_IP4,
    .fp_len = 32,
    .fp_addr.ip4 = *addr,
  };
  lb_rl_server_untrack (v, s);
  s->address = *addr;
  s->fib_entry_index =
    fib_entry_track (v->fib_index, &pfx, lrm->fib_node_type,
		     lb_rl_server_counter_index (s->vip_index, s->server_index),
		     &s->sibling_index);
  lb_rl_server_stack (s);
  s->configured = 1;
}

/* ---------- the VIP's DPO ---------- */

static void
lb_rl_dpo_lock (dpo_id_t *dpo)
{
}

static void
lb_rl_dpo_unlock (dpo_id_t *dpo)
{
}

static u8 *
format_lb_rl_dpo (u8 *s, va_list *va)
{
  index_t index = va_arg (*va, index_t);
  CLIB_UNUSED (u32 indent) = va_arg (*va, u32);
  lb_rl_main_t *lrm = &lb_rl_main;
  if (pool_is_free_index (lrm->vips, index))
    return format (s, "lb-rl: vip %u (deleted)", index);
  lb_rl_vip_t *v = pool_elt_at_index (lrm->vips, index);
  return format (s, "lb-rl: vip %U table %u", format_ip4_address, &v->vip,
		 v->table_id);
}

static const dpo_vft_t lb_rl_dpo_vft = {
  .dv_lock = lb_rl_dpo_lock,
  .dv_unlock = lb_rl_dpo_unlock,
  .dv_format = format_lb_rl_dpo,
};

static const char *const lb_rl_dpo_ip4_nodes[] = { "lb-rl-ip4", NULL };
static const char *const *const lb_rl_dpo_nodes[DPO_PROTO_NUM] = {
  [DPO_PROTO_IP4] = lb_rl_dpo_ip4_nodes,
};

static fib_prefix_t
lb_rl_vip_prefix (const lb_rl_vip_t *v)
{
  fib_prefix_t pfx = {
    .fp_proto = FIB_PROTOCOL_IP4,
    .fp_len = 32,
    .fp_addr.ip4 = v->vip,
  };
  return pfx;
}

/* ---------- VIPs ---------- */

lb_rl_vip_t *
lb_rl_vip_find (ip4_address_t *vip, u32 table_id)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  lb_rl_vip_t *v;
  pool_foreach (v, lrm->vips)
    {
      if (v->vip.as_u32 == vip->as_u32 && v->table_id == table_id)
	return v;
    }
  return 0;
}

static void
lb_rl_vip_free (lb_rl_vip_t *v)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  fib_prefix_t pfx = lb_rl_vip_prefix (v);
  lb_rl_server_t *s;
  if (v->installed)
    fib_table_entry_special_remove (v->fib_index, &pfx, lrm->fib_src);
  vec_foreach (s, v->servers)
    lb_rl_server_untrack (v, s);
  vec_free (v->servers);
  fib_table_unlock (v->fib_index, FIB_PROTOCOL_IP4, lrm->fib_src);
  if (v->dp)
    mlb_dp_destroy (v->dp);
  lb_rl_region_close (v);
  pool_put (lrm->vips, v);
}

static clib_error_t *
lb_rl_vip_check (const lb_rl_vip_args_t *a)
{
  const char *field = 0;
  if (mlb_dp_config_check (&a->cfg, &field) != MLB_OK)
    return clib_error_return (0, "invalid %s", field);
  if (a->cfg.n_workers < vlib_get_n_threads ())
    return clib_error_return (0, "%u threads, at most %u supported",
			      vlib_get_n_threads (), MLB_MAX_WORKERS);
  if (a->encap >= LB_RL_N_ENCAP)
    return clib_error_return (0, "unknown encapsulation %u", a->encap);
  if (a->encap == LB_RL_ENCAP_GRE4 && a->src.as_u32 == 0)
    return clib_error_return (0, "gre4 needs 'src <ip4>' (the outer source)");
  if (a->dscp > 63)
    return clib_error_return (0, "dscp %u: 0 .. 63", a->dscp);
  if (!a->region_name || !a->region_name[0] ||
      strlen (a->region_name) >= MLB_NAME_LEN - 1)
    return clib_error_return (0, "region name: 1 .. %u characters",
			      MLB_NAME_LEN - 2);
  return 0;
}

/* Re-running 'lb rl vip' for an existing VIP with the same shape changes
 * only its configured mode: its flows stay.  Another shape needs 'del'. */
static clib_error_t *
lb_rl_vip_update (lb_rl_vip_t *v, const lb_rl_vip_args_t *a)
{
  const mlb_dp_config_t *c = &a->cfg, *o = &v->cfg;
  if (c->n_servers != o->n_servers || c->flow_capacity != o->flow_capacity ||
      c->idle_timeout_ns != o->idle_timeout_ns ||
      c->close_timeout_ns != o->close_timeout_ns ||
      c->publish_interval_ns != o->publish_interval_ns ||
      a->encap != v->encap || a->src.as_u32 != v->src.as_u32 ||
      a->dscp != v->dscp ||
      strcmp (a->region_name + (a->region_name[0] == '/'),
	      (char *) v->region_name + 1))
    return clib_error_return (0, "vip %U exists with another shape: "
			      "'lb rl vip %U del' first (drops its flows)",
			      format_ip4_address, &v->vip, format_ip4_address,
			      &v->vip);
  if (lb_rl_set_mode (v, c->mode))
    return clib_error_return (0, "bad mode");
  return 0;
}

clib_error_t *
lb_rl_vip_add (const lb_rl_vip_args_t *a, u32 *vip_index)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  clib_error_t *err;
  lb_rl_vip_t *v, tmp = {};
  dpo_id_t dpo = DPO_INVALID;
  u32 vi;

  if ((err = lb_rl_vip_check (a)))
    return err;
  if ((v = lb_rl_vip_find ((ip4_address_t *) &a->vip, a->table_id)))
    {
      *vip_index = v - lrm->vips;
      return lb_rl_vip_update (v, a);
    }
  /* flow tables and region before the barrier: workers wait only for
   * the pool, FIB and counter updates */
  tmp.cfg = a->cfg;
  tmp.dp = mlb_dp_create (&a->cfg);
  if (!tmp.dp)
    return clib_error_return (0, "out of memory for the flow tables");
  /* a server is unusable until it has an address */
  for (u32 i = 0; i < a->cfg.n_servers; i++)
    mlb_dp_set_server (tmp.dp, i, i, MLB_ADMIN_DOWN, 1.0);
  if ((err = lb_rl_region_open (&tmp, a->region_name)))
    {
      mlb_dp_destroy (tmp.dp);
      lb_rl_region_close (&tmp);
      return err;
    }
  tmp.vip = a->vip;
  tmp.table_id = a->table_id;
  tmp.encap = a->encap;
  tmp.src = a->src;
  tmp.dscp = a->dscp;

  /* the pool may move: workers must not be reading it */
  vlib_worker_thread_barrier_sync (lrm->vlib_main);
  pool_get_zero (lrm->vips, v);
  *v = tmp;
  vi = v - lrm->vips;
  v->fib_index = fib_table_find_or_create_and_lock (FIB_PROTOCOL_IP4,
						    a->table_id, lrm->fib_src);
  vec_validate (v->servers, a->cfg.n_servers - 1);
  for (u32 i = 0; i < a->cfg.n_servers; i++)
    {
      lb_rl_server_t *s = &v->servers[i];
      fib_node_init (&s->fib_node, lrm->fib_node_type);
      s->vip_index = vi;
      s->server_index = i;
      s->fib_entry_index = FIB_NODE_INDEX_INVALID;
    }
  for (u32 i = 0; i < LB_RL_N_VIP_CTR; i++)
    {
      vlib_validate_combined_counter (&lrm->vip_counters[i], vi);
      vlib_zero_combined_counter (&lrm->vip_counters[i], vi);
    }
  for (u32 i = 0; i < a->cfg.n_servers; i++)
    {
      u32 ci = lb_rl_server_counter_index (vi, i);
      vlib_validate_combined_counter (&lrm->server_counters, ci);
      vlib_zero_combined_counter (&lrm->server_counters, ci);
    }
  /* the VIP's /32 leads to lb-rl-ip4, as VPP's lb installs its VIPs */
  fib_prefix_t pfx = lb_rl_vip_prefix (v);
  dpo_set (&dpo, lrm->dpo_type, DPO_PROTO_IP4, vi);
  fib_table_entry_special_dpo_add (v->fib_index, &pfx, lrm->fib_src,
				   FIB_ENTRY_FLAG_EXCLUSIVE, &dpo);
  dpo_reset (&dpo);
  v->installed = 1;
  *vip_index = vi;
  vlib_worker_thread_barrier_release (lrm->vlib_main);
  vlib_process_signal_event (lrm->vlib_main, lb_rl_process_node.index, 1, 0);
  return 0;
}

int
lb_rl_vip_del (ip4_address_t *vip, u32 table_id)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  lb_rl_vip_t *v = lb_rl_vip_find (vip, table_id);
  if (!v)
    return VNET_API_ERROR_NO_SUCH_ENTRY;
  vlib_worker_thread_barrier_sync (lrm->vlib_main);
  lb_rl_vip_free (v);
  vlib_worker_thread_barrier_release (lrm->vlib_main);
  return 0;
}

int
lb_rl_set_server (lb_rl_vip_t *v, u32 idx, u32 id, ip4_address_t *addr,
		  u32 admin_state, f64 weight)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  lb_rl_server_t *s;
  int rv = 0;

  if (!v)
    return VNET_API_ERROR_NO_SUCH_ENTRY;
  /* weight: finite, 0 .. 1e9 (NaN fails both tests) */
  if (idx >= v->cfg.n_servers || admin_state > MLB_ADMIN_DOWN ||
      !(weight >= 0) || !(weight <= 1e9))
    return VNET_API_ERROR_INVALID_VALUE;
  s = &v->servers[idx];
  if (!addr && !s->configured)
    return VNET_API_ERROR_INVALID_VALUE;
  if (addr && addr->as_u32 == 0)
    return VNET_API_ERROR_INVALID_VALUE;

  vlib_worker_thread_barrier_sync (lrm->vlib_main);
  if (addr && (!s->configured || s->address.as_u32 != addr->as_u32))
    lb_rl_server_track (v, s, addr);
  if (mlb_dp_set_server (v->dp, idx, id, admin_state, weight) != MLB_OK)
    rv = VNET_API_ERROR_INVALID_VALUE;
  vlib_worker_thread_barrier_release (lrm->vlib_main);
  return rv;
}

int
lb_rl_set_mode (lb_rl_vip_t *v, u32 mode)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  int rv;
  if (!v)
    return VNET_API_ERROR_NO_SUCH_ENTRY;
  if (mode == MLB_MODE_NONE || mode >= MLB_MODE_COUNT)
    return VNET_API_ERROR_INVALID_VALUE;
  vlib_worker_thread_barrier_sync (lrm->vlib_main);
  rv = mlb_dp_set_mode (v->dp, mode) == MLB_OK ? 0 : VNET_API_ERROR_INVALID_VALUE;
  if (!rv)
    v->cfg.mode = mode;
  vlib_worker_thread_barrier_release (lrm->vlib_main);
  return rv;
}

int
lb_rl_set_timer_ms (f64 ms)
{
  if (mlb_dp_check_timer_ms (ms) != MLB_OK)
    return VNET_API_ERROR_INVALID_VALUE;
  lb_rl_main.timer_interval = ms * 1e-3;
  return 0;
}

/* ---------- init / exit ---------- */

static clib_error_t *
lb_rl_init (vlib_main_t *vm)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  static const fib_node_vft_t fib_vft = {
    .fnv_get = lb_rl_fib_node_get,
    .fnv_last_lock = lb_rl_fib_node_last_lock_gone,
    .fnv_back_walk = lb_rl_fib_node_back_walk,
  };
  lrm->vlib_main = vm;
  lrm->vnet_main = vnet_get_main ();
  lrm->timer_interval = 0.05;
  lrm->fib_node_type = fib_node_register_new_type ("lb-rl", &fib_vft);
  lrm->dpo_type = dpo_register_new_type (&lb_rl_dpo_vft, lb_rl_dpo_nodes);
  lrm->fib_src = fib_source_allocate ("lb-rl", FIB_SOURCE_PRIORITY_HI,
				      FIB_SOURCE_BH_SIMPLE);
#define _(sym, str, path)                                                     \
  lrm->vip_counters[LB_RL_VIP_CTR_##sym].name = str;                          \
  lrm->vip_counters[LB_RL_VIP_CTR_##sym].stat_segment_name = path;
  foreach_lb_rl_vip_counter
#undef _
  lrm->server_counters.name = "server";
  lrm->server_counters.stat_segment_name = "/lb_rl/server";
  return 0;
}

static clib_error_t *
lb_rl_exit (vlib_main_t *vm)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  lb_rl_vip_t *v;
  /* the regions are the data plane's: remove their names */
  pool_foreach (v, lrm->vips)
    lb_rl_region_close (v);
  return 0;
}

VLIB_INIT_FUNCTION (lb_rl_init);
VLIB_MAIN_LOOP_EXIT_FUNCTION (lb_rl_exit);

VLIB_PLUGIN_REGISTER () = {
  .version = VPP_BUILD_VER,
  .description = "marllb: load balancing with weights from a learning daemon",
};
