/* lb_rl: VPP glue around the marllb data-plane core (core/).
 *
 * One VIP per VPP instance in this version.  The ip4-unicast feature node
 * "lb-rl" steers TCP/UDP packets to the VIP: mlb_dp_packet() picks the
 * server (pinned per flow, per worker), the packet keeps its destination and
 * is forwarded to that server's next hop (direct server return: servers own
 * the VIP on a loopback).  The process node "lb-rl-timer" runs the core's
 * timer (apply msg_in, publish msg_out, idle sweep) under the worker barrier.
 */
#ifndef included_lb_rl_h
#define included_lb_rl_h

#include <vnet/vnet.h>
#include <vnet/ip/ip.h>
#include <vnet/fib/fib_table.h>
#include <vnet/fib/fib_entry.h>
#include <vnet/dpo/dpo.h>

#include "core/dp_core.h"

typedef struct
{
  ip4_address_t address;
  fib_node_index_t fib_entry_index;
  dpo_id_t dpo;			/* stacked on the server's forwarding */
  u8 configured;
} lb_rl_server_t;

typedef struct
{
  u16 msg_id_base;
  ip4_address_t vip;
  u8 *region_name;		/* vec, NUL-terminated, e.g. "/mlb-vip0" */
  mlb_dp_t *dp;
  mlb_region_t *region;		/* mmap of the POSIX shm region */
  uword region_size;
  u64 dp_generation;
  f64 timer_interval;		/* seconds between timer calls */
  u32 n_servers;
  u32 n_workers;
  lb_rl_server_t servers[MLB_MAX_SERVERS];
  vlib_main_t *vlib_main;
  vnet_main_t *vnet_main;
} lb_rl_main_t;

extern lb_rl_main_t lb_rl_main;
extern vlib_node_registration_t lb_rl_node;
extern vlib_node_registration_t lb_rl_process_node;

/* data-plane clock (ns) shared by packets, timer, msg_out and heartbeat */
static_always_inline u64
lb_rl_now_ns (vlib_main_t *vm)
{
  return (u64) (vlib_time_now (vm) * 1e9);
}

clib_error_t *lb_rl_vip_config (ip4_address_t *vip, const char *region_name,
				const mlb_dp_config_t *cfg);
int lb_rl_set_server (u32 idx, u32 id, ip4_address_t *addr, u32 admin_state,
		      f64 weight);
int lb_rl_set_mode (u32 mode);
int lb_rl_enable_disable (u32 sw_if_index, int enable);
const char *lb_rl_mode_name (u32 mode);
const char *lb_rl_admin_name (u32 admin_state);

#endif /* included_lb_rl_h */
