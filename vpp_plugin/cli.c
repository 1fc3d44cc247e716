/* lb_rl CLI (every number checked before anything changes):
 *   lb rl vip <ip4> [table <id>] region <name> servers <n>
 *         [mode sed|wcmp|lsq|p2c|hash] [flows <per-worker>]
 *         [idle-timeout <s>] [close-timeout <s>] [publish-ms <ms>]
 *         [timer-ms <ms>] [encap l2dsr|l3dsr|gre4] [src <ip4>] [dscp <0-63>]
 *   lb rl vip <ip4> [table <id>] del
 *   lb rl server [<vip> [table <id>]] <idx> [address <ip4>] [id <n>]
 *         [weight <w>] [up|drain|down]
 *   lb rl mode [<vip> [table <id>]] sed|wcmp|lsq|p2c|hash
 *   lb rl timer-ms <ms>
 *   show lb rl [<vip> [table <id>]] [verbose]
 * The vip may be left out of 'server' and 'mode' when there is one VIP.
 */
#include <vnet/ip/ip4_packet.h>
#include <vnet/ip/format.h>

#include "lb_rl.h"

#define LB_RL_MODES "sed|wcmp|lsq|p2c|hash"

static uword
unformat_lb_rl_encap (unformat_input_t *input, va_list *args)
{
  lb_rl_encap_t *e = va_arg (*args, lb_rl_encap_t *);
  if (unformat (input, "l2dsr") || unformat (input, "dsr"))
    *e = LB_RL_ENCAP_L2DSR;
  else if (unformat (input, "l3dsr"))
    *e = LB_RL_ENCAP_L3DSR;
  else if (unformat (input, "gre4"))
    *e = LB_RL_ENCAP_GRE4;
  else
    return 0;
  return 1;
}

/* "<ip4> [table <id>]" at the start of the line, or the only VIP. */
static clib_error_t *
lb_rl_pick_vip (unformat_input_t *line, lb_rl_vip_t **vp)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  ip4_address_t vip;
  u32 table_id = 0;
  if (unformat (line, "%U", unformat_ip4_address, &vip))
    {
      if (unformat (line, "table %u", &table_id))
	;
      *vp = lb_rl_vip_find (&vip, table_id);
      if (!*vp)
	return clib_error_return (0, "no vip %U in table %u",
				  format_ip4_address, &vip, table_id);
      return 0;
    }
  if (pool_elts (lrm->vips) != 1)
    return clib_error_return (0, "%u vips: name one (<ip4> [table <id>])",
			      pool_elts (lrm->vips));
  pool_foreach (*vp, lrm->vips)
    break;
  return 0;
}

static clib_error_t *
lb_rl_vip_parse (unformat_input_t *line, lb_rl_vip_args_t *a, u8 **region,
		 f64 *timer_ms, int *del)
{
  u32 n_servers = 0, flows, dscp;
  f64 x;

  if (!unformat (line, "%U", unformat_ip4_address, &a->vip))
    return clib_error_return (0, "expected: lb rl vip <ip4> ...");
  while (unformat_check_input (line) != UNFORMAT_END_OF_INPUT)
    {
      if (unformat (line, "table %u", &a->table_id))
	;
      else if (unformat (line, "del"))
	*del = 1;
      else if (unformat (line, "region %s", region))
	;
      else if (unformat (line, "servers %u", &n_servers))
	{
	  if (n_servers == 0 || n_servers > MLB_MAX_SERVERS)
	    return clib_error_return (0, "servers %u: 1 .. %u", n_servers,
				      MLB_MAX_SERVERS);
	}
      else if (unformat (line, "mode %U", unformat_lb_rl_mode, &a->cfg.mode))
	;
      else if (unformat (line, "flows %u", &flows))
	a->cfg.flow_capacity = flows;
      else if (unformat (line, "idle-timeout %f", &x))
	{
	  if (mlb_dp_check_seconds (x, MLB_DP_IDLE_MAX_S,
				    &a->cfg.idle_timeout_ns) != MLB_OK)
	    return clib_error_return (0, "idle-timeout %g: (0, %u] s", x,
				      MLB_DP_IDLE_MAX_S);
	}
      else if (unformat (line, "close-timeout %f", &x))
	{
	  if (mlb_dp_check_seconds (x, MLB_DP_IDLE_MAX_S,
				    &a->cfg.close_timeout_ns) != MLB_OK)
	    return clib_error_return (0, "close-timeout %g: (0, %u] s", x,
				      MLB_DP_IDLE_MAX_S);
	}
      else if (unformat (line, "publish-ms %f", &x))
	{
	  if (mlb_dp_check_seconds (x * 1e-3, MLB_DP_PUBLISH_MAX_MS * 1e-3,
				    &a->cfg.publish_interval_ns) != MLB_OK ||
	      x < 1)
	    return clib_error_return (0, "publish-ms %g: 1 .. %u", x,
				      MLB_DP_PUBLISH_MAX_MS);
	}
      else if (unformat (line, "timer-ms %f", &x))
	{
	  if (mlb_dp_check_timer_ms (x) != MLB_OK)
	    return clib_error_return (0, "timer-ms %g: %u .. %u", x,
				      MLB_DP_TIMER_MIN_MS, MLB_DP_TIMER_MAX_MS);
	  *timer_ms = x;
	}
      else if (unformat (line, "encap %U", unformat_lb_rl_encap, &a->encap))
	;
      else if (unformat (line, "src %U", unformat_ip4_address, &a->src))
	;
      else if (unformat (line, "dscp %u", &dscp))
	{
	  if (dscp > 63)
	    return clib_error_return (0, "dscp %u: 0 .. 63", dscp);
	  a->dscp = dscp;
	}
      else
	return clib_error_return (0, "unknown input '%U'",
				  format_unformat_error, line);
    }
  if (!*del && (!*region || n_servers == 0))
    return clib_error_return (0, "region and servers are required");
  a->cfg.n_servers = n_servers;
  return 0;
}

static clib_error_t *
lb_rl_vip_command_fn (vlib_main_t *vm, unformat_input_t *input,
		      vlib_cli_command_t *cmd)
{
  unformat_input_t _line, *line = &_line;
  lb_rl_vip_args_t a = {};
  u8 *region = 0;
  f64 timer_ms = 0;
  int del = 0;
  u32 vip_index;
  clib_error_t *err;

  if (!unformat_user (input, unformat_line_input, line))
    return clib_error_return (0, "expected: lb rl vip <ip4> ...");
  mlb_dp_config_default (&a.cfg, 1, vlib_get_n_threads ());
  err = lb_rl_vip_parse (line, &a, &region, &timer_ms, &del);
  unformat_free (line);
  if (!err && del)
    {
      if (lb_rl_vip_del (&a.vip, a.table_id))
	err = clib_error_return (0, "no vip %U in table %u", format_ip4_address,
				 &a.vip, a.table_id);
    }
  else if (!err)
    {
      vec_add1 (region, 0);
      a.region_name = (char *) region;
      err = lb_rl_vip_add (&a, &vip_index);
      /* only a command that succeeded changes the timer */
      if (!err && timer_ms > 0)
	lb_rl_set_timer_ms (timer_ms);
    }
  vec_free (region);
  return err;
}

VLIB_CLI_COMMAND (lb_rl_vip_command, static) = {
  .path = "lb rl vip",
  .short_help = "lb rl vip <ip4> [table <id>] region <name> servers <n> "
		"[mode " LB_RL_MODES "] [flows <per-worker>] [idle-timeout <s>] "
		"[close-timeout <s>] [publish-ms <ms>] [timer-ms <ms>] "
		"[encap l2dsr|l3dsr|gre4] [src <ip4>] [dscp <0-63>] | "
		"lb rl vip <ip4> [table <id>] del",
  .function = lb_rl_vip_command_fn,
};

static clib_error_t *
lb_rl_server_parse (unformat_input_t *line, lb_rl_vip_t **vp, u32 *idx,
		    ip4_address_t *addr, int *have_addr, u32 *id, u32 *admin,
		    f64 *weight)
{
  clib_error_t *err = lb_rl_pick_vip (line, vp);
  mlb_server_stats_t st;
  if (err)
    return err;
  if (!unformat (line, "%u", idx) || *idx >= (*vp)->cfg.n_servers)
    return clib_error_return (0, "expected a server index 0 .. %u",
			      (*vp)->cfg.n_servers - 1);
  mlb_dp_get_server ((*vp)->dp, *idx, &st);
  *id = st.id;
  *admin = (*vp)->servers[*idx].configured ? st.admin_state : MLB_ADMIN_UP;
  *weight = st.static_weight;
  while (unformat_check_input (line) != UNFORMAT_END_OF_INPUT)
    {
      if (unformat (line, "address %U", unformat_ip4_address, addr))
	*have_addr = 1;
      else if (unformat (line, "id %u", id))
	;
      else if (unformat (line, "weight %f", weight))
	{
	  if (!(*weight >= 0) || !(*weight <= 1e9))
	    return clib_error_return (0, "weight %g: 0 .. 1e9", *weight);
	}
      else if (unformat (line, "up"))
	*admin = MLB_ADMIN_UP;
      else if (unformat (line, "drain"))
	*admin = MLB_ADMIN_DRAIN;
      else if (unformat (line, "down"))
	*admin = MLB_ADMIN_DOWN;
      else
	return clib_error_return (0, "unknown input '%U'",
				  format_unformat_error, line);
    }
  return 0;
}

static clib_error_t *
lb_rl_server_command_fn (vlib_main_t *vm, unformat_input_t *input,
			 vlib_cli_command_t *cmd)
{
  unformat_input_t _line, *line = &_line;
  lb_rl_vip_t *v = 0;
  ip4_address_t addr = {};
  u32 idx = 0, id = 0, admin = 0;
  int have_addr = 0, rv;
  f64 weight = 0;
  clib_error_t *err;

  if (!unformat_user (input, unformat_line_input, line))
    return clib_error_return (0, "expected: lb rl server [<vip>] <idx> ...");
  err = lb_rl_server_parse (line, &v, &idx, &addr, &have_addr, &id, &admin,
			    &weight);
  unformat_free (line);
  if (err)
    return err;
  rv = lb_rl_set_server (v, idx, id, have_addr ? &addr : 0, admin, weight);
  if (rv)
    return clib_error_return (0, "lb rl server %u: error %d (needs an address "
			      "first)", idx, rv);
  return 0;
}

VLIB_CLI_COMMAND (lb_rl_server_command, static) = {
  .path = "lb rl server",
  .short_help = "lb rl server [<vip> [table <id>]] <idx> [address <ip4>] "
		"[id <n>] [weight <w>] [up|drain|down]",
  .function = lb_rl_server_command_fn,
};

static clib_error_t *
lb_rl_mode_command_fn (vlib_main_t *vm, unformat_input_t *input,
		       vlib_cli_command_t *cmd)
{
  unformat_input_t _line, *line = &_line;
  lb_rl_vip_t *v = 0;
  u32 mode = 0;
  clib_error_t *err;

  if (!unformat_user (input, unformat_line_input, line))
    return clib_error_return (0, "expected: lb rl mode [<vip>] " LB_RL_MODES);
  err = lb_rl_pick_vip (line, &v);
  if (!err && !unformat (line, "%U", unformat_lb_rl_mode, &mode))
    err = clib_error_return (0, "expected: lb rl mode [<vip>] " LB_RL_MODES);
  if (!err && unformat_check_input (line) != UNFORMAT_END_OF_INPUT)
    err = clib_error_return (0, "unknown input '%U'", format_unformat_error,
			     line);
  unformat_free (line);
  if (!err && lb_rl_set_mode (v, mode))
    err = clib_error_return (0, "mode not set");
  return err;
}

VLIB_CLI_COMMAND (lb_rl_mode_command, static) = {
  .path = "lb rl mode",
  .short_help = "lb rl mode [<vip> [table <id>]] " LB_RL_MODES
		" (the static fallback mode)",
  .function = lb_rl_mode_command_fn,
};

static clib_error_t *
lb_rl_timer_command_fn (vlib_main_t *vm, unformat_input_t *input,
			vlib_cli_command_t *cmd)
{
  f64 ms;
  if (!unformat (input, "%f", &ms) || lb_rl_set_timer_ms (ms))
    return clib_error_return (0, "expected: lb rl timer-ms <%u .. %u>",
			      MLB_DP_TIMER_MIN_MS, MLB_DP_TIMER_MAX_MS);
  return 0;
}

VLIB_CLI_COMMAND (lb_rl_timer_command, static) = {
  .path = "lb rl timer-ms",
  .short_help = "lb rl timer-ms <ms> (control step interval, all VIPs)",
  .function = lb_rl_timer_command_fn,
};

static void
lb_rl_show_vip (vlib_main_t *vm, lb_rl_vip_t *v, int verbose)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  u32 vi = v - lrm->vips;
  vlib_counter_t steered, dropped;
  mlb_dp_stats_t st;

  mlb_dp_get_stats (v->dp, &st);
  vlib_get_combined_counter (&lrm->vip_counters[LB_RL_VIP_CTR_STEERED], vi,
			     &steered);
  vlib_get_combined_counter (&lrm->vip_counters[LB_RL_VIP_CTR_DROPPED], vi,
			     &dropped);
  u8 *encap_args = 0;
  if (v->encap == LB_RL_ENCAP_GRE4)
    encap_args = format (0, " src %U", format_ip4_address, &v->src);
  else if (v->encap == LB_RL_ENCAP_L3DSR)
    encap_args = format (0, " dscp %u", v->dscp);
  vlib_cli_output (vm, "[%u] vip %U table %u encap %s%v region %s "
		   "generation 0x%llx", vi, format_ip4_address, &v->vip,
		   v->table_id, lb_rl_encap_name (v->encap), encap_args,
		   v->region_name, v->dp_generation);
  vec_free (encap_args);
  vlib_cli_output (vm, "  mode %s (%s weights), steered %llu pkts %llu bytes, "
		   "dropped %llu", lb_rl_mode_name (st.active_mode),
		   st.weights_source == MLB_SRC_DAEMON ? "daemon" : "static",
		   steered.packets, steered.bytes, dropped.packets);
  if (!verbose)
    return;
  vlib_cli_output (vm, "  flows %llu open, %llu closing (capacity %u/worker), "
		   "untracked %llu flows %llu pkts, no-server %llu",
		   st.flows, st.closing, st.flow_capacity, st.untracked_flows,
		   st.untracked_packets, st.no_server_drops);
  vlib_cli_output (vm, "  frames %llu, msg_in accepted %llu, rejected stale "
		   "%llu gen %llu invalid %llu, fallbacks %llu, daemon gen %llu "
		   "seq %llu, policy epoch %llu, publish waits %llu",
		   st.frames_published, st.msg_in_accepted, st.msg_in_rej_stale,
		   st.msg_in_rej_gen, st.msg_in_rej_invalid, st.fallbacks,
		   st.applied_daemon_gen, st.applied_msg_seq, st.policy_epoch,
		   st.publish_waits);
  vlib_cli_output (vm, "  %4s %6s %-15s %-5s %9s %9s %8s %10s %10s %12s %8s",
		   "idx", "id", "address", "state", "static", "weight",
		   "active", "new", "completed", "packets", "timeouts");
  for (u32 i = 0; i < v->cfg.n_servers; i++)
    {
      mlb_server_stats_t s;
      mlb_dp_get_server (v->dp, i, &s);
      vlib_cli_output (vm, "  %4u %6u %-15U %-5s %9.3f %9.3f %8llu %10llu "
		       "%10llu %12llu %8llu", i, s.id, format_ip4_address,
		       &v->servers[i].address, lb_rl_admin_name (s.admin_state),
		       s.static_weight, s.weight, s.active_flows, s.new_flows,
		       s.completed_flows, s.packets, s.timeouts);
      if (v->servers[i].configured)
	vlib_cli_output (vm, "       via %U", format_dpo_id,
			 &v->servers[i].dpo, 7);
    }
}

static clib_error_t *
show_lb_rl_command_fn (vlib_main_t *vm, unformat_input_t *input,
		       vlib_cli_command_t *cmd)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  ip4_address_t vip;
  u32 table_id = 0;
  int verbose = 0, one = 0;
  lb_rl_vip_t *v;

  while (unformat_check_input (input) != UNFORMAT_END_OF_INPUT)
    {
      if (unformat (input, "verbose"))
	verbose = 1;
      else if (unformat (input, "%U", unformat_ip4_address, &vip))
	one = 1;
      else if (unformat (input, "table %u", &table_id))
	;
      else
	return clib_error_return (0, "unknown input '%U'",
				  format_unformat_error, input);
    }
  vlib_cli_output (vm, "lb rl: %u vips, timer %.0f ms", pool_elts (lrm->vips),
		   lrm->timer_interval * 1e3);
  pool_foreach (v, lrm->vips)
    {
      if (!one || (v->vip.as_u32 == vip.as_u32 && v->table_id == table_id))
	lb_rl_show_vip (vm, v, verbose);
    }
  return 0;
}

VLIB_CLI_COMMAND (show_lb_rl_command, static) = {
  .path = "show lb rl",
  .short_help = "show lb rl [<vip> [table <id>]] [verbose]",
  .function = show_lb_rl_command_fn,
};
