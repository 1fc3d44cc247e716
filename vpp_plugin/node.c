/* lb_rl nodes: the per-packet feature node and the timer process node.
 * All load-balancing logic lives in the core (core/dp_core.c). */
#include <vnet/feature/feature.h>
#include <vnet/tcp/tcp_packet.h>
#include <vnet/udp/udp_packet.h>
#include <vppinfra/xxhash.h>

#include "lb_rl.h"

#define foreach_lb_rl_error                                                   \
  _ (STEERED, "packets steered to a server")                                  \
  _ (NO_SERVER, "no usable server: dropped")                                  \
  _ (PASSED, "not for the VIP: passed on")

typedef enum
{
#define _(sym, str) LB_RL_ERROR_##sym,
  foreach_lb_rl_error
#undef _
    LB_RL_N_ERROR,
} lb_rl_error_t;

static char *lb_rl_error_strings[] = {
#define _(sym, string) string,
  foreach_lb_rl_error
#undef _
};

typedef enum
{
  LB_RL_NEXT_DROP,
  LB_RL_N_NEXT,
} lb_rl_next_t;

typedef struct
{
  u64 flow_hash;
  i32 server;
} lb_rl_trace_t;

static u8 *
format_lb_rl_trace (u8 *s, va_list *args)
{
  CLIB_UNUSED (vlib_main_t * vm) = va_arg (*args, vlib_main_t *);
  CLIB_UNUSED (vlib_node_t * node) = va_arg (*args, vlib_node_t *);
  lb_rl_trace_t *t = va_arg (*args, lb_rl_trace_t *);
  return format (s, "lb-rl: flow 0x%016llx -> server %d", t->flow_hash,
		 t->server);
}

/* 5-tuple hash of a client -> VIP packet; 0 when it is not TCP/UDP. */
static_always_inline u64
lb_rl_flow_hash (ip4_header_t *ip, u32 *flags)
{
  u64 ports;
  *flags = 0;
  if (ip->protocol == IP_PROTOCOL_TCP)
    {
      tcp_header_t *tcp = ip4_next_header (ip);
      ports = ((u64) tcp->src_port << 16) | tcp->dst_port;
      if (tcp->flags & TCP_FLAG_SYN)
	*flags |= MLB_PKT_SYN;
      if (tcp->flags & TCP_FLAG_FIN)
	*flags |= MLB_PKT_FIN;
      if (tcp->flags & TCP_FLAG_RST)
	*flags |= MLB_PKT_RST;
    }
  else if (ip->protocol == IP_PROTOCOL_UDP)
    {
      udp_header_t *udp = ip4_next_header (ip);
      ports = ((u64) udp->src_port << 16) | udp->dst_port;
    }
  else
    return 0;
  return clib_xxhash (((u64) ip->src_address.as_u32 << 32 |
		       ip->dst_address.as_u32) ^
		      clib_xxhash (ports << 8 | ip->protocol));
}

VLIB_NODE_FN (lb_rl_node)
(vlib_main_t *vm, vlib_node_runtime_t *node, vlib_frame_t *frame)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  u32 n_left = frame->n_vectors, *from = vlib_frame_vector_args (frame);
  vlib_buffer_t *bufs[VLIB_FRAME_SIZE], **b = bufs;
  u16 nexts[VLIB_FRAME_SIZE], *next = nexts;
  u32 worker = vm->thread_index, steered = 0, dropped = 0, passed = 0;
  u64 now = lb_rl_now_ns (vm);
  mlb_dp_t *dp = lrm->dp;

  vlib_get_buffers (vm, from, bufs, n_left);
  while (n_left > 0)
    {
      ip4_header_t *ip = vlib_buffer_get_current (b[0]);
      u32 flags, next0;
      u64 h = 0;
      i32 s = MLB_DP_NO_SERVER;

      vnet_feature_next (&next0, b[0]);
      if (dp && ip->dst_address.as_u32 == lrm->vip.as_u32 &&
	  (h = lb_rl_flow_hash (ip, &flags)) != 0)
	{
	  s = mlb_dp_packet (dp, worker, h, now,
			     clib_net_to_host_u16 (ip->length), flags);
	  if (s >= 0)
	    {
	      lb_rl_server_t *srv = &lrm->servers[s];
	      vnet_buffer (b[0])->ip.adj_index[VLIB_TX] = srv->dpo.dpoi_index;
	      next0 = srv->dpo.dpoi_next_node;
	      steered++;
	    }
	  else
	    {
	      next0 = LB_RL_NEXT_DROP;
	      b[0]->error = node->errors[LB_RL_ERROR_NO_SERVER];
	      dropped++;
	    }
	}
      else
	passed++;
      next[0] = next0;
      if (PREDICT_FALSE (b[0]->flags & VLIB_BUFFER_IS_TRACED))
	{
	  lb_rl_trace_t *t = vlib_add_trace (vm, node, b[0], sizeof (*t));
	  t->flow_hash = h;
	  t->server = s;
	}
      b++;
      next++;
      n_left--;
    }
  vlib_buffer_enqueue_to_next (vm, node, from, nexts, frame->n_vectors);
  vlib_node_increment_counter (vm, node->node_index, LB_RL_ERROR_STEERED,
			       steered);
  vlib_node_increment_counter (vm, node->node_index, LB_RL_ERROR_NO_SERVER,
			       dropped);
  vlib_node_increment_counter (vm, node->node_index, LB_RL_ERROR_PASSED,
			       passed);
  return frame->n_vectors;
}

VLIB_REGISTER_NODE (lb_rl_node) = {
  .name = "lb-rl",
  .vector_size = sizeof (u32),
  .format_trace = format_lb_rl_trace,
  .type = VLIB_NODE_TYPE_INTERNAL,
  .n_errors = ARRAY_LEN (lb_rl_error_strings),
  .error_strings = lb_rl_error_strings,
  .n_next_nodes = LB_RL_N_NEXT,
  .next_nodes = {
    [LB_RL_NEXT_DROP] = "error-drop",
  },
};

#ifndef CLIB_MARCH_VARIANT
/* Timer: apply msg_in, publish msg_out, idle sweep; never on packet arrival,
 * so frames and weight expiry go on with no traffic.  Runs under the worker
 * barrier because it reads the workers' flow tables and counters and swaps
 * the policy; calls with nothing to do only beat the heartbeat. */
static uword
lb_rl_process (vlib_main_t *vm, vlib_node_runtime_t *rt, vlib_frame_t *f)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  uword *event_data = 0;
  u64 now;

  while (1)
    {
      vlib_process_wait_for_event_or_clock (vm, lrm->timer_interval);
      vlib_process_get_events (vm, &event_data);
      vec_reset_length (event_data);
      if (!lrm->dp || !lrm->region)
	continue;
      now = lb_rl_now_ns (vm);
      if (!mlb_dp_timer_due (lrm->dp, lrm->region, now))
	{
	  mlb_region_heartbeat (lrm->region, now);
	  continue;
	}
      vlib_worker_thread_barrier_sync (vm);
      mlb_dp_timer (lrm->dp, lrm->region, now);
      vlib_worker_thread_barrier_release (vm);
    }
  return 0;
}

VLIB_REGISTER_NODE (lb_rl_process_node) = {
  .function = lb_rl_process,
  .type = VLIB_NODE_TYPE_PROCESS,
  .name = "lb-rl-timer",
};
#endif
