/* lb_rl binary API handlers. */
#include <vlibapi/api.h>
#include <vlibmemory/api.h>
#include <vnet/format_fns.h>
#include <vnet/ip/ip_types_api.h>

#include "lb_rl.h"

#include "lb_rl.api_enum.h"
#include "lb_rl.api_types.h"

#define REPLY_MSG_ID_BASE lrm->msg_id_base
#include <vlibapi/api_helper_macros.h>

static lb_rl_vip_t *
lb_rl_api_vip (vl_api_ip4_address_t a, u32 table_id)
{
  ip4_address_t vip;
  ip4_address_decode (a, &vip);
  return lb_rl_vip_find (&vip, ntohl (table_id));
}

static void
vl_api_lb_rl_add_del_vip_t_handler (vl_api_lb_rl_add_del_vip_t *mp)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  vl_api_lb_rl_add_del_vip_reply_t *rmp;
  lb_rl_vip_args_t a = {};
  u32 vip_index = ~0;
  char region[64];
  f64 idle = clib_net_to_host_f64 (mp->idle_timeout);
  f64 close = clib_net_to_host_f64 (mp->close_timeout);
  u32 publish_ms = ntohl (mp->publish_ms);
  int rv = 0;
  clib_error_t *err;

  ip4_address_decode (mp->vip, &a.vip);
  a.table_id = ntohl (mp->table_id);
  if (!mp->is_add)
    {
      rv = lb_rl_vip_del (&a.vip, a.table_id);
      goto reply;
    }
  mlb_dp_config_default (&a.cfg, ntohl (mp->n_servers), vlib_get_n_threads ());
  a.cfg.mode = ntohl (mp->mode) ? ntohl (mp->mode) : MLB_MODE_SED;
  if (ntohl (mp->flows))
    a.cfg.flow_capacity = ntohl (mp->flows);
  /* every number checked before anything changes */
  if ((idle != 0 && mlb_dp_check_seconds (idle, MLB_DP_IDLE_MAX_S,
					  &a.cfg.idle_timeout_ns) != MLB_OK) ||
      (close != 0 && mlb_dp_check_seconds (close, MLB_DP_IDLE_MAX_S,
					   &a.cfg.close_timeout_ns) != MLB_OK) ||
      publish_ms > MLB_DP_PUBLISH_MAX_MS)
    {
      rv = VNET_API_ERROR_INVALID_VALUE;
      goto reply;
    }
  if (publish_ms)
    a.cfg.publish_interval_ns = (u64) publish_ms * 1000000;
  a.encap = mp->encap;
  ip4_address_decode (mp->src, &a.src);
  a.dscp = mp->dscp;
  clib_memcpy (region, mp->region, sizeof (region));
  region[sizeof (region) - 1] = 0;
  a.region_name = region;
  err = lb_rl_vip_add (&a, &vip_index);
  if (err)
    {
      clib_error_free (err);
      rv = VNET_API_ERROR_INVALID_VALUE;
    }
reply:
  REPLY_MACRO2 (VL_API_LB_RL_ADD_DEL_VIP_REPLY,
		({ rmp->vip_index = htonl (vip_index); }));
}

static void
vl_api_lb_rl_set_server_t_handler (vl_api_lb_rl_set_server_t *mp)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  vl_api_lb_rl_set_server_reply_t *rmp;
  ip4_address_t addr;
  int rv;

  ip4_address_decode (mp->address, &addr);
  rv = lb_rl_set_server (lb_rl_api_vip (mp->vip, mp->table_id),
			 ntohl (mp->index), ntohl (mp->id),
			 addr.as_u32 ? &addr : 0, mp->admin_state,
			 clib_net_to_host_f64 (mp->weight));
  REPLY_MACRO (VL_API_LB_RL_SET_SERVER_REPLY);
}

static void
vl_api_lb_rl_set_mode_t_handler (vl_api_lb_rl_set_mode_t *mp)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  vl_api_lb_rl_set_mode_reply_t *rmp;
  int rv = lb_rl_set_mode (lb_rl_api_vip (mp->vip, mp->table_id),
			   ntohl (mp->mode));
  REPLY_MACRO (VL_API_LB_RL_SET_MODE_REPLY);
}

static void
lb_rl_send_vip_details (vl_api_registration_t *reg, u32 context,
			lb_rl_vip_t *v)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  vl_api_lb_rl_vip_details_t *rmp = vl_msg_api_alloc (sizeof (*rmp));
  mlb_dp_stats_t st;

  mlb_dp_get_stats (v->dp, &st);
  clib_memset (rmp, 0, sizeof (*rmp));
  rmp->_vl_msg_id = htons (VL_API_LB_RL_VIP_DETAILS + lrm->msg_id_base);
  rmp->context = context;
  rmp->vip_index = htonl (v - lrm->vips);
  ip4_address_encode (&v->vip, rmp->vip);
  rmp->table_id = htonl (v->table_id);
  strncpy ((char *) rmp->region, (char *) v->region_name + 1,
	   sizeof (rmp->region) - 1);
  rmp->dp_generation = clib_host_to_net_u64 (v->dp_generation);
  rmp->n_servers = htonl (v->cfg.n_servers);
  rmp->n_workers = htonl (v->cfg.n_workers);
  rmp->configured_mode = htonl (v->cfg.mode);
  rmp->active_mode = htonl (st.active_mode);
  rmp->weights_source = st.weights_source;
  rmp->encap = v->encap;
  ip4_address_encode (&v->src, rmp->src);
  rmp->dscp = v->dscp;
  rmp->flows = clib_host_to_net_u64 (st.flows);
  rmp->closing = clib_host_to_net_u64 (st.closing);
  rmp->untracked_flows = clib_host_to_net_u64 (st.untracked_flows);
  rmp->no_server_drops = clib_host_to_net_u64 (st.no_server_drops);
  rmp->frames_published = clib_host_to_net_u64 (st.frames_published);
  rmp->msg_in_accepted = clib_host_to_net_u64 (st.msg_in_accepted);
  rmp->fallbacks = clib_host_to_net_u64 (st.fallbacks);
  vl_api_send_msg (reg, (u8 *) rmp);
}

static void
vl_api_lb_rl_vip_dump_t_handler (vl_api_lb_rl_vip_dump_t *mp)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  vl_api_registration_t *reg =
    vl_api_client_index_to_registration (mp->client_index);
  lb_rl_vip_t *v;
  if (!reg)
    return;
  pool_foreach (v, lrm->vips)
    lb_rl_send_vip_details (reg, mp->context, v);
}

static void
vl_api_lb_rl_server_dump_t_handler (vl_api_lb_rl_server_dump_t *mp)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  vl_api_registration_t *reg =
    vl_api_client_index_to_registration (mp->client_index);
  lb_rl_vip_t *v = lb_rl_api_vip (mp->vip, mp->table_id);
  if (!reg || !v)
    return;
  for (u32 i = 0; i < v->cfg.n_servers; i++)
    {
      vl_api_lb_rl_server_details_t *rmp = vl_msg_api_alloc (sizeof (*rmp));
      mlb_server_stats_t s;
      mlb_dp_get_server (v->dp, i, &s);
      clib_memset (rmp, 0, sizeof (*rmp));
      rmp->_vl_msg_id = htons (VL_API_LB_RL_SERVER_DETAILS + lrm->msg_id_base);
      rmp->context = mp->context;
      rmp->vip_index = htonl (v - lrm->vips);
      rmp->index = htonl (i);
      rmp->id = htonl (s.id);
      ip4_address_encode (&v->servers[i].address, rmp->address);
      rmp->admin_state = s.admin_state;
      rmp->static_weight = clib_host_to_net_f64 (s.static_weight);
      rmp->weight = clib_host_to_net_f64 (s.weight);
      rmp->active_flows = clib_host_to_net_u64 (s.active_flows);
      rmp->new_flows = clib_host_to_net_u64 (s.new_flows);
      rmp->completed_flows = clib_host_to_net_u64 (s.completed_flows);
      rmp->packets = clib_host_to_net_u64 (s.packets);
      rmp->bytes = clib_host_to_net_u64 (s.bytes);
      rmp->timeouts = clib_host_to_net_u64 (s.timeouts);
      vl_api_send_msg (reg, (u8 *) rmp);
    }
}

#include "lb_rl.api.c"

static clib_error_t *
lb_rl_api_init (vlib_main_t *vm)
{
  lb_rl_main.msg_id_base = setup_message_id_table ();
  return 0;
}

VLIB_INIT_FUNCTION (lb_rl_api_init);
