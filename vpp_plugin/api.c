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

static void
vl_api_lb_rl_set_server_t_handler (vl_api_lb_rl_set_server_t *mp)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  vl_api_lb_rl_set_server_reply_t *rmp;
  ip4_address_t addr;
  int rv;

  ip4_address_decode (mp->address, &addr);
  rv = lb_rl_set_server (ntohl (mp->index), ntohl (mp->id), &addr,
			 mp->admin_state, clib_net_to_host_f64 (mp->weight));
  REPLY_MACRO (VL_API_LB_RL_SET_SERVER_REPLY);
}

static void
vl_api_lb_rl_set_mode_t_handler (vl_api_lb_rl_set_mode_t *mp)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  vl_api_lb_rl_set_mode_reply_t *rmp;
  int rv = lb_rl_set_mode (ntohl (mp->mode));
  REPLY_MACRO (VL_API_LB_RL_SET_MODE_REPLY);
}

static void
vl_api_lb_rl_enable_disable_t_handler (vl_api_lb_rl_enable_disable_t *mp)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  vl_api_lb_rl_enable_disable_reply_t *rmp;
  int rv;

  VALIDATE_SW_IF_INDEX (mp);
  rv = lb_rl_enable_disable (ntohl (mp->sw_if_index), mp->enable);
  BAD_SW_IF_INDEX_LABEL;
  REPLY_MACRO (VL_API_LB_RL_ENABLE_DISABLE_REPLY);
}

#include "lb_rl.api.c"

static clib_error_t *
lb_rl_api_init (vlib_main_t *vm)
{
  lb_rl_main.msg_id_base = setup_message_id_table ();
  return 0;
}

VLIB_INIT_FUNCTION (lb_rl_api_init);
