/* lb_rl plugin registration, region lifetime and configuration actions
 * shared by the CLI and the binary API. */
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vnet/plugin/plugin.h>
#include <vpp/app/version.h>
#include <vnet/feature/feature.h>

#include "lb_rl.h"

lb_rl_main_t lb_rl_main;

const char *
lb_rl_mode_name (u32 mode)
{
  static const char *names[] = { "none", "sed", "wcmp", "lsq", "hash", "p2c" };
  return mode < MLB_MODE_COUNT ? names[mode] : "?";
}

const char *
lb_rl_admin_name (u32 admin_state)
{
  static const char *names[] = { "up", "drain", "down" };
  return admin_state <= MLB_ADMIN_DOWN ? names[admin_state] : "?";
}

static void
lb_rl_region_close (lb_rl_main_t *lrm)
{
  if (lrm->region)
    {
      munmap (lrm->region, lrm->region_size);
      shm_unlink ((char *) lrm->region_name);
    }
  lrm->region = 0;
  vec_free (lrm->region_name);
}

/* The data plane owns the region: a restart replaces it with a new
 * generation, so a daemon still attached to the old one notices. */
static clib_error_t *
lb_rl_region_open (lb_rl_main_t *lrm, const char *name, u32 n_servers,
		   u32 n_workers, u64 publish_interval_ns)
{
  uword size = mlb_region_size ();
  int fd;
  void *p;

  lrm->region_name = format (0, "%s%s%c", name[0] == '/' ? "" : "/", name, 0);
  shm_unlink ((char *) lrm->region_name);
  fd = shm_open ((char *) lrm->region_name, O_CREAT | O_EXCL | O_RDWR, 0660);
  if (fd < 0)
    return clib_error_return_unix (0, "shm_open %s", lrm->region_name);
  if (ftruncate (fd, size) < 0)
    {
      close (fd);
      return clib_error_return_unix (0, "ftruncate %s", lrm->region_name);
    }
  p = mmap (0, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close (fd);
  if (p == MAP_FAILED)
    return clib_error_return_unix (0, "mmap %s", lrm->region_name);
  lrm->region = p;
  lrm->region_size = size;
  lrm->dp_generation = clib_cpu_time_now () ^ ((u64) getpid () << 32);
  if (lrm->dp_generation == 0)
    lrm->dp_generation = 1;
  if (mlb_region_init (lrm->region, size, n_servers, n_workers,
		       lrm->dp_generation, publish_interval_ns,
		       (char *) lrm->region_name + 1, getpid ()) != MLB_OK)
    return clib_error_return (0, "region init failed (servers %u workers %u)",
			      n_servers, n_workers);
  return 0;
}

clib_error_t *
lb_rl_vip_config (ip4_address_t *vip, const char *region_name,
		  const mlb_dp_config_t *cfg)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  const char *field = 0;
  clib_error_t *err;
  mlb_dp_t *dp;

  if (mlb_dp_config_check (cfg, &field) != MLB_OK)
    return clib_error_return (0, "invalid %s", field);
  if (cfg->n_workers < vlib_get_n_threads ())
    return clib_error_return (0, "%u threads, at most %u supported",
			      vlib_get_n_threads (), MLB_MAX_WORKERS);
  dp = mlb_dp_create (cfg);
  if (!dp)
    return clib_error_return (0, "out of memory for the flow tables");
  /* a server is unusable until it has an address */
  for (u32 i = 0; i < cfg->n_servers; i++)
    mlb_dp_set_server (dp, i, i, MLB_ADMIN_DOWN, 1.0);

  vlib_worker_thread_barrier_sync (lrm->vlib_main);
  if (lrm->dp)
    mlb_dp_destroy (lrm->dp);
  lb_rl_region_close (lrm);
  for (u32 i = 0; i < MLB_MAX_SERVERS; i++)
    {
      lb_rl_server_t *s = &lrm->servers[i];
      if (s->configured)
	fib_table_entry_special_remove (0, &(fib_prefix_t){
	  .fp_proto = FIB_PROTOCOL_IP4, .fp_len = 32,
	  .fp_addr.ip4 = s->address }, FIB_SOURCE_RR);
      dpo_reset (&s->dpo);
      s->configured = 0;
    }
  lrm->dp = dp;
  lrm->vip = *vip;
  lrm->n_servers = cfg->n_servers;
  lrm->n_workers = cfg->n_workers;
  err = lb_rl_region_open (lrm, region_name, cfg->n_servers, cfg->n_workers,
			   cfg->publish_interval_ns);
  vlib_worker_thread_barrier_release (lrm->vlib_main);
  if (err)
    return err;
  vlib_process_signal_event (lrm->vlib_main, lb_rl_process_node.index, 1, 0);
  return 0;
}

int
lb_rl_set_server (u32 idx, u32 id, ip4_address_t *addr, u32 admin_state,
		  f64 weight)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  lb_rl_server_t *s;
  int rv = 0;

  if (!lrm->dp)
    return VNET_API_ERROR_NO_SUCH_ENTRY;
  if (idx >= lrm->n_servers || admin_state > MLB_ADMIN_DOWN ||
      !(weight >= 0) || weight > 1e9)
    return VNET_API_ERROR_INVALID_VALUE;
  s = &lrm->servers[idx];
  if (!addr && !s->configured)
    return VNET_API_ERROR_INVALID_VALUE;

  vlib_worker_thread_barrier_sync (lrm->vlib_main);
  if (addr && (!s->configured || s->address.as_u32 != addr->as_u32))
    {
      fib_prefix_t pfx = { .fp_proto = FIB_PROTOCOL_IP4, .fp_len = 32 };
      if (s->configured)
	{
	  pfx.fp_addr.ip4 = s->address;
	  fib_table_entry_special_remove (0, &pfx, FIB_SOURCE_RR);
	}
      pfx.fp_addr.ip4 = *addr;
      s->address = *addr;
      s->fib_entry_index = fib_table_entry_special_add (0, &pfx, FIB_SOURCE_RR,
							FIB_ENTRY_FLAG_NONE);
      /* forward like the server's /32 does now; re-run after route changes */
      dpo_stack_from_node (lb_rl_node.index, &s->dpo,
			   fib_entry_contribute_ip_forwarding (s->fib_entry_index));
      s->configured = 1;
    }
  if (mlb_dp_set_server (lrm->dp, idx, id, admin_state, weight) != MLB_OK)
    rv = VNET_API_ERROR_INVALID_VALUE;
  vlib_worker_thread_barrier_release (lrm->vlib_main);
  return rv;
}

int
lb_rl_set_mode (u32 mode)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  int rv;
  if (!lrm->dp)
    return VNET_API_ERROR_NO_SUCH_ENTRY;
  vlib_worker_thread_barrier_sync (lrm->vlib_main);
  rv = mlb_dp_set_mode (lrm->dp, mode) == MLB_OK ? 0 : VNET_API_ERROR_INVALID_VALUE;
  vlib_worker_thread_barrier_release (lrm->vlib_main);
  return rv;
}

int
lb_rl_enable_disable (u32 sw_if_index, int enable)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  if (pool_is_free_index (lrm->vnet_main->interface_main.sw_interfaces,
			  sw_if_index))
    return VNET_API_ERROR_INVALID_SW_IF_INDEX;
  return vnet_feature_enable_disable ("ip4-unicast", "lb-rl", sw_if_index,
				      enable, 0, 0);
}

static clib_error_t *
lb_rl_init (vlib_main_t *vm)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  lrm->vlib_main = vm;
  lrm->vnet_main = vnet_get_main ();
  lrm->timer_interval = 0.05;
  return 0;
}

static clib_error_t *
lb_rl_exit (vlib_main_t *vm)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  (void) vm;
  lb_rl_region_close (lrm);
  return 0;
}

VLIB_INIT_FUNCTION (lb_rl_init);
VLIB_MAIN_LOOP_EXIT_FUNCTION (lb_rl_exit);

VNET_FEATURE_INIT (lb_rl_feature, static) = {
  .arc_name = "ip4-unicast",
  .node_name = "lb-rl",
  .runs_before = VNET_FEATURES ("ip4-lookup"),
};

VLIB_PLUGIN_REGISTER () = {
  .version = VPP_BUILD_VER,
  .description = "marllb: load balancing with weights from a learning daemon",
};
