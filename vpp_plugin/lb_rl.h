/* lb_rl: VPP glue around the marllb data-plane core (core/).
 *
 * Several VIPs (IPv4, one shared-memory region and one core instance each),
 * each in its own FIB table.  A VIP is installed in its FIB as a /32 whose
 * DPO leads to the node "lb-rl-ip4" (as VPP's lb does: no per-interface
 * enable).  The node hashes the 5-tuple (IP pair for fragments and other
 * protocols), mlb_dp_packet() picks the server (pinned per flow, per
 * worker), and the packet goes to that server by the VIP's encapsulation:
 * L2 DSR (unchanged, to the server's adjacency: same L2 segment), L3 DSR
 * (destination rewritten to the server, DSCP marked) or GRE4.  Each server's
 * forwarding is a FIB child of its /32, re-stacked on every back-walk.
 *
 * Timer, with no stop-the-world: the process node "lb-rl-timer" runs
 * mlb_dp_control (msg_in, policy swap by pointer, msg_out from the workers'
 * snapshots) beside the workers and wakes the interrupt node "lb-rl-tick" on
 * each worker, which sweeps and publishes that worker's own state.  After a
 * policy swap the process node waits one worker loop before the next swap
 * may reuse the old copy.  The worker barrier is taken only for
 * configuration changes.
 */
#ifndef included_lb_rl_h
#define included_lb_rl_h

#include <vnet/vnet.h>
#include <vnet/ip/ip.h>
#include <vnet/fib/fib_table.h>
#include <vnet/fib/fib_entry.h>
#include <vnet/fib/fib_node.h>
#include <vnet/dpo/dpo.h>
#include <vlib/counter.h>

#include "core/dp_core.h"

typedef enum
{
  LB_RL_ENCAP_L2DSR = 0,	/* packet unchanged to the server's adjacency */
  LB_RL_ENCAP_L3DSR = 1,	/* dst := server, DSCP := vip dscp */
  LB_RL_ENCAP_GRE4 = 2,		/* IPv4/GRE to the server, outer src := vip src */
  LB_RL_N_ENCAP,
} lb_rl_encap_t;

typedef struct
{
  fib_node_t fib_node;		/* child of the server's /32: back-walks */
  ip4_address_t address;
  fib_node_index_t fib_entry_index;
  u32 sibling_index;
  u32 vip_index;
  u32 server_index;
  dpo_id_t dpo;			/* stacked on the server's forwarding */
  u8 configured;
} lb_rl_server_t;

typedef struct
{
  ip4_address_t vip;
  u32 table_id;
  u32 fib_index;
  lb_rl_encap_t encap;
  ip4_address_t src;		/* GRE4 outer source */
  u8 dscp;			/* L3 DSR mark */
  u8 installed;			/* the VIP's /32 is in its FIB */
  u8 *region_name;		/* vec, NUL-terminated, e.g. "/mlb-vip0" */
  mlb_dp_t *dp;
  mlb_region_t *region;		/* mmap of the POSIX shm region */
  uword region_size;
  u64 dp_generation;
  mlb_dp_config_t cfg;
  lb_rl_server_t *servers;	/* vec, cfg.n_servers */
} lb_rl_vip_t;

#define foreach_lb_rl_vip_counter                                             \
  _ (STEERED, "steered", "/lb_rl/vip/steered")                               \
  _ (DROPPED, "dropped", "/lb_rl/vip/dropped")

typedef enum
{
#define _(sym, str, path) LB_RL_VIP_CTR_##sym,
  foreach_lb_rl_vip_counter
#undef _
    LB_RL_N_VIP_CTR,
} lb_rl_vip_counter_t;

typedef struct
{
  u16 msg_id_base;
  lb_rl_vip_t *vips;		/* pool */
  f64 timer_interval;		/* seconds between control calls */
  fib_node_type_t fib_node_type;
  dpo_type_t dpo_type;
  fib_source_t fib_src;
  /* stats segment: per VIP, and per (vip, server) at
   * vip_index * MLB_MAX_SERVERS + server */
  vlib_combined_counter_main_t vip_counters[LB_RL_N_VIP_CTR];
  vlib_combined_counter_main_t server_counters;
  vlib_main_t *vlib_main;
  vnet_main_t *vnet_main;
} lb_rl_main_t;

extern lb_rl_main_t lb_rl_main;
extern vlib_node_registration_t lb_rl_ip4_node;
extern vlib_node_registration_t lb_rl_tick_node;
extern vlib_node_registration_t lb_rl_process_node;

/* data-plane clock (ns) shared by packets, timer, msg_out and heartbeat */
static_always_inline u64
lb_rl_now_ns (vlib_main_t *vm)
{
  return (u64) (vlib_time_now (vm) * 1e9);
}

static_always_inline u32
lb_rl_server_counter_index (u32 vip_index, u32 server)
{
  return vip_index * MLB_MAX_SERVERS + server;
}

/* configuration (CLI and binary API); every check runs before anything
 * changes, so a failing command changes nothing */
typedef struct
{
  ip4_address_t vip;
  u32 table_id;
  lb_rl_encap_t encap;
  ip4_address_t src;
  u8 dscp;
  const char *region_name;
  mlb_dp_config_t cfg;
} lb_rl_vip_args_t;

clib_error_t *lb_rl_vip_add (const lb_rl_vip_args_t *a, u32 *vip_index);
int lb_rl_vip_del (ip4_address_t *vip, u32 table_id);
lb_rl_vip_t *lb_rl_vip_find (ip4_address_t *vip, u32 table_id);
int lb_rl_set_server (lb_rl_vip_t *v, u32 idx, u32 id, ip4_address_t *addr,
		      u32 admin_state, f64 weight);
int lb_rl_set_mode (lb_rl_vip_t *v, u32 mode);
int lb_rl_set_timer_ms (f64 ms);
const char *lb_rl_mode_name (u32 mode);
const char *lb_rl_admin_name (u32 admin_state);
const char *lb_rl_encap_name (lb_rl_encap_t encap);
unformat_function_t unformat_lb_rl_mode;

#endif /* included_lb_rl_h */
