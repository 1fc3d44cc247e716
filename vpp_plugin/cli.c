/* lb_rl CLI:
 *   lb rl vip <ip4> region <name> servers <n> [mode sed|wcmp|lsq|hash|p2c]
 *         [flows <per-worker>] [idle-timeout <s>] [publish-ms <ms>] [timer-ms <ms>]
 *   lb rl server <idx> [address <ip4>] [id <n>] [weight <w>] [up|drain|down]
 *   lb rl mode sed|wcmp|lsq|hash|p2c
 *   lb rl interface <interface> [disable]
 *   show lb rl
 */
#include <vnet/ip/ip4_packet.h>
#include <vnet/ip/format.h>

#include "lb_rl.h"

static uword
unformat_lb_rl_mode (unformat_input_t *input, va_list *args)
{
  u32 *mode = va_arg (*args, u32 *);
  if (unformat (input, "sed"))
    *mode = MLB_MODE_SED;
  else if (unformat (input, "wcmp"))
    *mode = MLB_MODE_WRANDOM;
  else if (unformat (input, "lsq"))
    *mode = MLB_MODE_LEAST_ACTIVE;
  else if (unformat (input, "hash"))
    *mode = MLB_MODE_HASH;
  else if (unformat (input, "p2c"))
    *mode = MLB_MODE_P2C;
  else
    return 0;
  return 1;
}

static clib_error_t *
lb_rl_vip_command_fn (vlib_main_t *vm, unformat_input_t *input,
		      vlib_cli_command_t *cmd)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  ip4_address_t vip = {};
  u8 *region = 0;
  u32 n_servers = 0, flows = 0, ms = 0, have_vip = 0;
  f64 idle = 0;
  mlb_dp_config_t cfg;
  clib_error_t *err;

  mlb_dp_config_default (&cfg, 1, vlib_get_n_threads ());
  if (!unformat (input, "%U", unformat_ip4_address, &vip))
    return clib_error_return (0, "expected: lb rl vip <ip4> region <name> servers <n> ...");
  have_vip = 1;
  while (unformat_check_input (input) != UNFORMAT_END_OF_INPUT)
    {
      if (unformat (input, "region %s", &region))
	;
      else if (unformat (input, "servers %u", &n_servers))
	;
      else if (unformat (input, "mode %U", unformat_lb_rl_mode, &cfg.mode))
	;
      else if (unformat (input, "flows %u", &flows))
	cfg.flow_capacity = flows;
      else if (unformat (input, "idle-timeout %f", &idle))
	cfg.idle_timeout_ns = (u64) (idle * 1e9);
      else if (unformat (input, "publish-ms %u", &ms))
	cfg.publish_interval_ns = (u64) ms * 1000000;
      else if (unformat (input, "timer-ms %u", &ms))
	lrm->timer_interval = ms * 1e-3;
      else
	{
	  vec_free (region);
	  return clib_error_return (0, "unknown input '%U'",
				    format_unformat_error, input);
	}
    }
  if (!have_vip || !region || n_servers == 0)
    {
      vec_free (region);
      return clib_error_return (0, "vip, region and servers are required");
    }
  cfg.n_servers = n_servers;
  vec_add1 (region, 0);
  err = lb_rl_vip_config (&vip, (char *) region, &cfg);
  vec_free (region);
  return err;
}

VLIB_CLI_COMMAND (lb_rl_vip_command, static) = {
  .path = "lb rl vip",
  .short_help = "lb rl vip <ip4> region <name> servers <n> "
		"[mode sed|wcmp|lsq|hash|p2c] [flows <per-worker>] "
		"[idle-timeout <s>] [publish-ms <ms>] [timer-ms <ms>]",
  .function = lb_rl_vip_command_fn,
};

static clib_error_t *
lb_rl_server_command_fn (vlib_main_t *vm, unformat_input_t *input,
			 vlib_cli_command_t *cmd)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  ip4_address_t addr;
  u32 idx, id, admin, have_addr = 0;
  f64 weight;
  int rv;

  if (!unformat (input, "%u", &idx))
    return clib_error_return (0, "expected: lb rl server <idx> ...");
  if (!lrm->dp || idx >= lrm->n_servers)
    return clib_error_return (0, "no server %u (configure 'lb rl vip' first)", idx);
  {
    mlb_server_stats_t st;
    mlb_dp_get_server (lrm->dp, idx, &st);
    id = st.id;
    admin = st.admin_state;
    weight = st.static_weight;
    if (!lrm->servers[idx].configured)
      admin = MLB_ADMIN_UP;
  }
  while (unformat_check_input (input) != UNFORMAT_END_OF_INPUT)
    {
      if (unformat (input, "address %U", unformat_ip4_address, &addr))
	have_addr = 1;
      else if (unformat (input, "id %u", &id))
	;
      else if (unformat (input, "weight %f", &weight))
	;
      else if (unformat (input, "up"))
	admin = MLB_ADMIN_UP;
      else if (unformat (input, "drain"))
	admin = MLB_ADMIN_DRAIN;
      else if (unformat (input, "down"))
	admin = MLB_ADMIN_DOWN;
      else
	return clib_error_return (0, "unknown input '%U'",
				  format_unformat_error, input);
    }
  rv = lb_rl_set_server (idx, id, have_addr ? &addr : 0, admin, weight);
  if (rv)
    return clib_error_return (0, "lb rl server %u: error %d (needs an address "
			      "first; weight >= 0)", idx, rv);
  return 0;
}

VLIB_CLI_COMMAND (lb_rl_server_command, static) = {
  .path = "lb rl server",
  .short_help = "lb rl server <idx> [address <ip4>] [id <n>] [weight <w>] "
		"[up|drain|down]",
  .function = lb_rl_server_command_fn,
};

static clib_error_t *
lb_rl_mode_command_fn (vlib_main_t *vm, unformat_input_t *input,
		       vlib_cli_command_t *cmd)
{
  u32 mode;
  if (!unformat (input, "%U", unformat_lb_rl_mode, &mode))
    return clib_error_return (0, "expected: lb rl mode sed|wcmp|lsq|hash|p2c");
  if (lb_rl_set_mode (mode))
    return clib_error_return (0, "configure 'lb rl vip' first");
  return 0;
}

VLIB_CLI_COMMAND (lb_rl_mode_command, static) = {
  .path = "lb rl mode",
  .short_help = "lb rl mode sed|wcmp|lsq|hash|p2c (the static fallback mode)",
  .function = lb_rl_mode_command_fn,
};

static clib_error_t *
lb_rl_interface_command_fn (vlib_main_t *vm, unformat_input_t *input,
			    vlib_cli_command_t *cmd)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  u32 sw_if_index = ~0;
  int enable = 1;
  while (unformat_check_input (input) != UNFORMAT_END_OF_INPUT)
    {
      if (unformat (input, "disable"))
	enable = 0;
      else if (unformat (input, "%U", unformat_vnet_sw_interface,
			 lrm->vnet_main, &sw_if_index))
	;
      else
	return clib_error_return (0, "unknown input '%U'",
				  format_unformat_error, input);
    }
  if (sw_if_index == ~0)
    return clib_error_return (0, "expected: lb rl interface <interface> [disable]");
  if (lb_rl_enable_disable (sw_if_index, enable))
    return clib_error_return (0, "cannot %s lb-rl on that interface",
			      enable ? "enable" : "disable");
  return 0;
}

VLIB_CLI_COMMAND (lb_rl_interface_command, static) = {
  .path = "lb rl interface",
  .short_help = "lb rl interface <interface> [disable]",
  .function = lb_rl_interface_command_fn,
};

static clib_error_t *
show_lb_rl_command_fn (vlib_main_t *vm, unformat_input_t *input,
		       vlib_cli_command_t *cmd)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  mlb_dp_stats_t st;

  if (!lrm->dp)
    {
      vlib_cli_output (vm, "lb rl: not configured");
      return 0;
    }
  mlb_dp_get_stats (lrm->dp, &st);
  vlib_cli_output (vm, "vip %U region %s generation 0x%llx", format_ip4_address,
		   &lrm->vip, lrm->region_name, lrm->dp_generation);
  vlib_cli_output (vm, "mode %s (%s weights), frames %llu, flows %llu "
		   "(capacity %u/worker), untracked %llu",
		   lb_rl_mode_name (st.active_mode),
		   st.weights_source == MLB_SRC_DAEMON ? "daemon" : "static",
		   st.frames_published, st.flows, st.flow_capacity,
		   st.untracked_flows);
  vlib_cli_output (vm, "msg_in: accepted %llu, rejected stale %llu gen %llu "
		   "invalid %llu, fallbacks %llu, daemon gen %llu seq %llu",
		   st.msg_in_accepted, st.msg_in_rej_stale, st.msg_in_rej_gen,
		   st.msg_in_rej_invalid, st.fallbacks, st.applied_daemon_gen,
		   st.applied_msg_seq);
  vlib_cli_output (vm, "%4s %6s %-15s %-5s %9s %9s %8s %10s %10s %12s %8s",
		   "idx", "id", "address", "state", "static", "weight",
		   "active", "new", "completed", "packets", "timeouts");
  for (u32 i = 0; i < lrm->n_servers; i++)
    {
      mlb_server_stats_t s;
      mlb_dp_get_server (lrm->dp, i, &s);
      vlib_cli_output (vm, "%4u %6u %-15U %-5s %9.3f %9.3f %8llu %10llu %10llu "
		       "%12llu %8llu", i, s.id, format_ip4_address,
		       &lrm->servers[i].address, lb_rl_admin_name (s.admin_state),
		       s.static_weight, s.weight, s.active_flows, s.new_flows,
		       s.completed_flows, s.packets, s.timeouts);
    }
  return 0;
}

VLIB_CLI_COMMAND (show_lb_rl_command, static) = {
  .path = "show lb rl",
  .short_help = "show lb rl",
  .function = show_lb_rl_command_fn,
};
