/* lb_rl nodes: the per-packet node behind the VIP's DPO, the per-worker
 * tick (interrupt) node and the timer process node.  All load-balancing
 * logic lives in the core (core/dp_core.c). */
#include <vnet/tcp/tcp_packet.h>
#include <vnet/udp/udp_packet.h>
#include <vnet/gre/packet.h>
#include <vppinfra/xxhash.h>

#include "lb_rl.h"

/* Only real drops are errors (counted once, by error-drop through
 * b->error); steered packets go to the stats segment counters. */
#define foreach_lb_rl_error                                                   \
  _ (NO_SERVER, "no usable server: dropped")

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
  u32 vip_index;
  u32 flags;
  u64 flow_hash;
  i32 server;
} lb_rl_trace_t;

static u8 *
format_lb_rl_trace (u8 *s, va_list *args)
{
  CLIB_UNUSED (vlib_main_t * vm) = va_arg (*args, vlib_main_t *);
  CLIB_UNUSED (vlib_node_t * node) = va_arg (*args, vlib_node_t *);
  lb_rl_trace_t *t = va_arg (*args, lb_rl_trace_t *);
  return format (s, "lb-rl: vip %u flow 0x%016llx flags 0x%x -> server %d",
		 t->vip_index, t->flow_hash, t->flags, t->server);
}

/* Flow hash of a client -> VIP packet and its MLB_PKT_* flags: the 5-tuple
 * for TCP/UDP; the IP pair and protocol for a fragment (only the first
 * carries ports, and all fragments must go to one server) or any other
 * protocol, sent by the consistent hash without a flow entry. */
static_always_inline u64
lb_rl_flow_hash (ip4_header_t *ip, u32 *flags)
{
  u64 pair = (u64) ip->src_address.as_u32 << 32 | ip->dst_address.as_u32;
  u64 ports;
  *flags = 0;
  if (PREDICT_FALSE (ip4_is_fragment (ip)) ||
      (ip->protocol != IP_PROTOCOL_TCP && ip->protocol != IP_PROTOCOL_UDP))
    {
      *flags = MLB_PKT_NOFLOW;
      return clib_xxhash (pair ^ clib_xxhash (ip->protocol));
    }
  if (ip->protocol == IP_PROTOCOL_TCP)
    {
      tcp_header_t *tcp = ip4_next_header (ip);
      ports = ((u64) tcp->src_port << 16) | tcp->dst_port;
      /* without SYN: a connection under way (pinned to the consistent
       * hash if the table lost or never held it) */
      *flags |= (tcp->flags & TCP_FLAG_SYN) ? MLB_PKT_SYN : MLB_PKT_MIDFLOW;
      if (tcp->flags & TCP_FLAG_FIN)
	*flags |= MLB_PKT_FIN;
      if (tcp->flags & TCP_FLAG_RST)
	*flags |= MLB_PKT_RST;
    }
  else
    {
      udp_header_t *udp = ip4_next_header (ip);
      ports = ((u64) udp->src_port << 16) | udp->dst_port;
    }
  return clib_xxhash (pair ^ clib_xxhash (ports << 8 | ip->protocol));
}

/* L3 DSR: the server's address as destination and the VIP's DSCP (the
 * server maps it back to the VIP); the L4 checksum stays the client's. */
static_always_inline void
lb_rl_encap_l3dsr (ip4_header_t *ip, lb_rl_vip_t *v, lb_rl_server_t *srv)
{
  ip->dst_address = srv->address;
  ip->tos = (ip->tos & 0x3) | (v->dscp << 2);
  ip->checksum = ip4_header_checksum (ip);
}

/* GRE4: IPv4 + GRE in front, from the VIP's src to the server. */
static_always_inline void
lb_rl_encap_gre4 (vlib_main_t *vm, vlib_buffer_t *b, lb_rl_vip_t *v,
		  lb_rl_server_t *srv)
{
  ip4_header_t *o;
  gre_header_t *g;
  vlib_buffer_advance (b, -(word) (sizeof (ip4_header_t) + sizeof (gre_header_t)));
  o = vlib_buffer_get_current (b);
  g = (gre_header_t *) (o + 1);
  o->ip_version_and_header_length = 0x45;
  o->tos = 0;
  o->length = clib_host_to_net_u16 (vlib_buffer_length_in_chain (vm, b));
  o->fragment_id = 0;
  o->flags_and_fragment_offset = 0;
  o->ttl = 64;
  o->protocol = IP_PROTOCOL_GRE;
  o->src_address = v->src;
  o->dst_address = srv->address;
  o->checksum = ip4_header_checksum (o);
  g->flags_and_version = 0;
  g->protocol = clib_host_to_net_u16 (GRE_PROTOCOL_ip4);
}

VLIB_NODE_FN (lb_rl_ip4_node)
(vlib_main_t *vm, vlib_node_runtime_t *node, vlib_frame_t *frame)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  u32 n_left = frame->n_vectors, *from = vlib_frame_vector_args (frame);
  vlib_buffer_t *bufs[VLIB_FRAME_SIZE], **b = bufs;
  u16 nexts[VLIB_FRAME_SIZE], *next = nexts;
  u32 thread = vm->thread_index;
  u64 now = lb_rl_now_ns (vm);

  vlib_get_buffers (vm, from, bufs, n_left);
  while (n_left > 0)
    {
      u32 vi = vnet_buffer (b[0])->ip.adj_index[VLIB_TX];
      lb_rl_vip_t *v = pool_elt_at_index (lrm->vips, vi);
      ip4_header_t *ip = vlib_buffer_get_current (b[0]);
      u32 len = clib_net_to_host_u16 (ip->length), flags;
      u64 h = lb_rl_flow_hash (ip, &flags);
      i32 s = mlb_dp_packet (v->dp, thread, h, now, len, flags);

      if (PREDICT_TRUE (s >= 0))
	{
	  lb_rl_server_t *srv = &v->servers[s];
	  if (v->encap == LB_RL_ENCAP_L3DSR)
	    lb_rl_encap_l3dsr (ip, v, srv);
	  else if (v->encap == LB_RL_ENCAP_GRE4)
	    lb_rl_encap_gre4 (vm, b[0], v, srv);
	  vnet_buffer (b[0])->ip.adj_index[VLIB_TX] = srv->dpo.dpoi_index;
	  next[0] = srv->dpo.dpoi_next_node;
	  vlib_increment_combined_counter (
	    &lrm->server_counters, thread, lb_rl_server_counter_index (vi, s),
	    1, len);
	  vlib_increment_combined_counter (
	    &lrm->vip_counters[LB_RL_VIP_CTR_STEERED], thread, vi, 1, len);
	}
      else
	{
	  next[0] = LB_RL_NEXT_DROP;
	  b[0]->error = node->errors[LB_RL_ERROR_NO_SERVER];
	  vlib_increment_combined_counter (
	    &lrm->vip_counters[LB_RL_VIP_CTR_DROPPED], thread, vi, 1, len);
	}
      if (PREDICT_FALSE (b[0]->flags & VLIB_BUFFER_IS_TRACED))
	{
	  lb_rl_trace_t *t = vlib_add_trace (vm, node, b[0], sizeof (*t));
	  t->vip_index = vi;
	  t->flags = flags;
	  t->flow_hash = h;
	  t->server = s;
	}
      b++;
      next++;
      n_left--;
    }
  vlib_buffer_enqueue_to_next (vm, node, from, nexts, frame->n_vectors);
  return frame->n_vectors;
}

VLIB_REGISTER_NODE (lb_rl_ip4_node) = {
  .name = "lb-rl-ip4",
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

/* Per worker, woken by the timer process: sweep and publish this worker's
 * own state (mlb_dp_worker_tick), a bounded step per call; re-arms itself
 * while a sweep goes on, so no packet frame waits long behind it. */
VLIB_NODE_FN (lb_rl_tick_node)
(vlib_main_t *vm, vlib_node_runtime_t *node, vlib_frame_t *frame)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  u64 now = lb_rl_now_ns (vm);
  int more = 0;
  lb_rl_vip_t *v;

  pool_foreach (v, lrm->vips)
    {
      if (mlb_dp_worker_tick (v->dp, vm->thread_index, now) == 2)
	more = 1;
    }
  if (more)
    vlib_node_set_interrupt_pending (vm, node->node_index);
  return 0;
}

VLIB_REGISTER_NODE (lb_rl_tick_node) = {
  .name = "lb-rl-tick",
  .type = VLIB_NODE_TYPE_INPUT,
  .state = VLIB_NODE_STATE_INTERRUPT,
};

#ifndef CLIB_MARCH_VARIANT
/* Timer: never on packet arrival, so frames and weight expiry go on with
 * no traffic.  No worker barrier: mlb_dp_control reads only the workers'
 * released snapshots and swaps the policy by pointer; after a swap, one
 * worker loop passes before the next control call may rebuild the copy
 * the workers were using. */
/* One control step for every VIP; returns non-zero while some worker has
 * a tick to do (a publish is open). */
static int
lb_rl_control_all (vlib_main_t *vm)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  u64 now = lb_rl_now_ns (vm);
  int swapped = 0, pending = 0;
  lb_rl_vip_t *v;

  pool_foreach (v, lrm->vips)
    {
      u64 epoch = mlb_dp_policy_epoch (v->dp);
      mlb_dp_control (v->dp, v->region, now);
      swapped |= mlb_dp_policy_epoch (v->dp) != epoch;
      for (u32 t = 0; t < vlib_get_n_threads (); t++)
	if (mlb_dp_worker_pending (v->dp, t))
	  {
	    vlib_node_set_interrupt_pending (vlib_get_main_by_index (t),
					     lb_rl_tick_node.index);
	    pending = 1;
	  }
    }
  if (swapped)
    {
      /* wake sleeping (interrupt-mode) workers so their loops turn */
      for (u32 t = 1; t < vlib_get_n_threads (); t++)
	vlib_node_set_interrupt_pending (vlib_get_main_by_index (t),
					 lb_rl_tick_node.index);
      vlib_worker_wait_one_loop ();
    }
  return pending;
}

static uword
lb_rl_process (vlib_main_t *vm, vlib_node_runtime_t *rt, vlib_frame_t *f)
{
  lb_rl_main_t *lrm = &lb_rl_main;
  uword *event_data = 0;

  while (1)
    {
      vlib_process_wait_for_event_or_clock (vm, lrm->timer_interval);
      vlib_process_get_events (vm, &event_data);
      vec_reset_length (event_data);
      /* a publish was opened: commit it as soon as the workers ticked,
       * not a whole timer interval later */
      if (lb_rl_control_all (vm))
	{
	  vlib_process_suspend (vm, 1e-3);
	  lb_rl_control_all (vm);
	}
    }
  return 0;
}

VLIB_REGISTER_NODE (lb_rl_process_node) = {
  .function = lb_rl_process,
  .type = VLIB_NODE_TYPE_PROCESS,
  .name = "lb-rl-timer",
};
#endif
