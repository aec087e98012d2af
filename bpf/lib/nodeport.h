/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Traffic from outside the node, at the node's external devices (tcx
 * ingress): NodePort, ExternalIP and LoadBalancer-IP frontends balanced per
 * packet, and what comes back.
 *
 * A packet to a frontend (first packet of a flow: pick a backend, Maglev
 * or random, and record the flow in conntrack with NODEPORT set; later
 * packets follow the entry):
 *  - backend in a pod on this node: DNAT, then bpf_redirect_peer into the
 *    pod; the pod's reply gets the frontend back as its source at the pod
 *    device (lib/pod.h) and leaves through a FIB lookup;
 *  - backend in the node's own network namespace: DNAT, to the stack; the
 *    reply is translated back at the external device's egress (lib/nat.h);
 *  - backend on another node: DNAT and SNAT to the node's address with a
 *    port from the SNAT range (the masquerade table, lib/nat.h, entries
 *    flagged NODEPORT), FIB lookup and redirect. The reply comes back to
 *    that address and port: the NAT entry gives the client back as the
 *    destination, the conntrack entry the frontend as the source, and a
 *    FIB lookup sends it to the client;
 *  - DSR (the frontend's master has SL_SVC_F_DSR): DNAT only, the frontend
 *    carried in the packet (lib/dsr.h); the backend's node takes the option
 *    out, remembers the frontend in a conntrack entry (DSR_BACKEND) and the
 *    backend answers the client directly.
 * externalTrafficPolicy: Local (SL_SVC_F_ETP_LOCAL) selects among the local
 * twin's backends only (include/lb.h), none of which is SNATed, so the
 * client's address reaches the backend; with no local backend the packet is
 * dropped, as Kubernetes defines for such nodes.
 *
 * Ties between tables: a NodePort SNAT flow has a FWD/REV conntrack pair
 * and an OUT/IN NAT pair. Every forward packet revalidates both (a missing
 * NAT pair is made again); a reply whose NAT entry has lost its conntrack
 * partner deletes the NAT pair and is dropped (DROP_NAT_ORPHAN), so neither
 * outlives the other; the agent's sweep removes expired pairs together.
 */
#ifndef SLUICE_LIB_NODEPORT_H
#define SLUICE_LIB_NODEPORT_H

#include "../include/common.h"
#include "../include/ep.h"
#include "../include/metrics.h"
#include "cfg.h"
#include "ct.h"
#include "deliver.h"
#include "dsr.h"
#include "fib.h"
#include "icmp.h"
#include "nat.h"
#include "pkt.h"

/* Where a flow from outside goes (struct sl_np_flow.path). */
#define SL_NP_LOCAL_POD		1
#define SL_NP_LOCAL_HOST	2
#define SL_NP_SNAT		3
#define SL_NP_DSR		4
#define SL_NP_ROUTE		5	/* a local-twin backend that is neither: routed as is */

struct sl_np_flow {
	struct sl_backend be;
	__u16 ct_flags;
	__u8  path;
	__u8  pad;
};

static __always_inline __u8 sl_np_path(const struct sl_backend *be, __u16 ct_flags)
{
	union sl_addr a = be->addr;

	/* A flow that was sent to a remote backend stays so (no lookups per
	 * packet for it). */
	if (ct_flags & SL_CT_F_SNAT)
		return SL_NP_SNAT;
	if (ct_flags & SL_CT_F_DSR)
		return SL_NP_DSR;
	if (bpf_map_lookup_elem(&sl_ep_v1, &a))
		return SL_NP_LOCAL_POD;
	if (bpf_map_lookup_elem(&sl_node_addr_v1, &a))
		return SL_NP_LOCAL_HOST;
	return SL_NP_ROUTE;
}

/*
 * Find the flow of @p (client -> frontend) or start it. Changes no packet
 * byte. Returns SL_XLATE_PASS (no frontend reachable from outside),
 * SL_XLATE_DONE with @f filled, or SL_XLATE_DROP (reason counted).
 */
static __always_inline int sl_np_lookup(const struct sl_pkt *p, struct sl_np_flow *f)
{
	struct sl_svc_key key = {};
	struct sl_svc_val *master;
	__u32 be_id = 0;
	__u16 flags = SL_CT_F_NODEPORT;
	bool local_only = false;
	__u64 now = bpf_ktime_get_ns();
	int followed = sl_ct_follow(p, SL_CT_F_NODEPORT, now, &f->be);

	if (followed >= 0) {
		f->ct_flags = (__u16)followed;
		f->path = sl_np_path(&f->be, f->ct_flags);
		return SL_XLATE_DONE;
	}

	key.addr = p->daddr;
	key.dport = p->dport;
	key.proto = p->proto;
	master = sl_lb_lookup_frontend(&key, SL_NETNS_NONE);
	if (!master)
		return SL_XLATE_PASS;
	if (key.scope != SL_SCOPE_NODEPORT &&
	    !(master->flags & (SL_SVC_F_EXTERNAL_IP | SL_SVC_F_LOADBALANCER | SL_SVC_F_NODEPORT))) {
		sl_count(SL_M_CLUSTERIP_FROM_OUTSIDE);
		return SL_XLATE_PASS;
	}
	if (master->flags & SL_SVC_F_ETP_LOCAL) {
		key.scope |= SL_SCOPE_LOCAL;
		master = bpf_map_lookup_elem(&sl_lb_svc_v1, &key);
		if (!master || master->count == 0) {
			sl_count(SL_M_DROP_NO_LOCAL_BACKEND);
			return SL_XLATE_DROP;
		}
		local_only = true;
	}
	if (sl_ct_choose(p, &key, master, &f->be, &be_id) != SL_XLATE_DONE)
		return SL_XLATE_DROP;
	f->path = sl_np_path(&f->be, 0);
	if (f->path == SL_NP_ROUTE && !local_only) {
		if (master->flags & SL_SVC_F_DSR) {
			flags |= SL_CT_F_DSR;
			f->path = SL_NP_DSR;
		} else {
			flags |= SL_CT_F_SNAT;
			f->path = SL_NP_SNAT;
		}
	}
	f->ct_flags = flags;
	return sl_ct_create(p, &f->be, be_id, master->rev_nat_id, flags, now);
}

/* The node's address of the packet's family, to SNAT to; NULL if none. */
static __always_inline bool sl_np_node_addr(const struct sl_node_cfg *cfg, bool v6, union sl_addr *out)
{
	*out = v6 ? cfg->masq_addr6 : cfg->masq_addr4;
	return !(sl_addr_is_zero(out) || (!v6 && out->w[3] == 0));
}

/*
 * SNAT of a NodePort flow to a remote backend: @p is already DNATed
 * (client -> backend). Returns 0, or the drop reason (counted by the caller).
 */
static __always_inline enum sl_metric sl_np_snat(const struct sl_pkt *p, struct sl_nat_val *nat)
{
	struct sl_node_cfg *cfg = sl_cfg();
	union sl_addr node;

	if (!cfg || !sl_np_node_addr(cfg, p->v6, &node))
		return SL_M_DROP_NO_NODE_ADDR;
	return sl_snat_lookup(cfg, p, &node, nat, SL_CT_F_NODEPORT);
}

/* Results of sl_np_reply() besides SL_XLATE_*. */
#define SL_XLATE_DONE_NODEPORT	3	/* a NodePort reply: now backend(VIP) -> client */

/*
 * A packet to the node's SNAT address and a port from the range: the reply
 * of a masqueraded pod flow, or of a NodePort flow to a remote backend.
 */
static __always_inline int sl_np_reply(struct __sk_buff *skb, struct sl_pkt *p)
{
	struct sl_nat_key ik = sl_nat_key_of(p, SL_NAT_DIR_IN);
	struct sl_nat_val *iv;
	union sl_addr dst;
	__be16 dst_port;
	__u16 nflags, cf = 0;
	int r;

	iv = bpf_map_lookup_elem(&sl_snat_v1, &ik);
	if (!iv)
		return SL_XLATE_PASS;
	dst = iv->addr;
	dst_port = iv->port;
	nflags = iv->flags;
	sl_nat_touch(iv, p, bpf_ktime_get_ns());
	if (sl_tcp_closing(p)) {
		struct sl_nat_key ok = {
			.saddr = dst,
			.daddr = p->saddr,
			.sport = dst_port,
			.dport = p->sport,
			.proto = p->proto,
			.dir = SL_NAT_DIR_OUT,
		};
		struct sl_nat_val *ov = bpf_map_lookup_elem(&sl_snat_v1, &ok);

		if (ov)
			sl_mark_closing(&ov->flags, &ov->lifetime_s);
	}
	if (sl_rewrite(skb, p, false, &dst, dst_port)) {
		sl_count(SL_M_DROP_REWRITE_FAILED);
		return SL_XLATE_DROP;
	}
	if (!(nflags & SL_CT_F_NODEPORT)) {
		sl_count(SL_M_REV_SNAT);
		return SL_XLATE_DONE;
	}
	/* Now backend -> client: the conntrack entry gives the frontend. */
	r = sl_ct_reply(skb, p, &cf);
	if (r == SL_XLATE_PASS) {
		struct sl_nat_key ok = {
			.saddr = p->daddr,
			.daddr = p->saddr,
			.sport = p->dport,
			.dport = p->sport,
			.proto = p->proto,
			.dir = SL_NAT_DIR_OUT,
		};

		bpf_map_delete_elem(&sl_snat_v1, &ik);
		bpf_map_delete_elem(&sl_snat_v1, &ok);
		sl_count(SL_M_DROP_NAT_ORPHAN);
		return SL_XLATE_DROP;
	}
	if (r == SL_XLATE_DROP)
		return r;
	sl_count(SL_M_NODEPORT_REPLY);
	return SL_XLATE_DONE_NODEPORT;
}

/*
 * On the backend's node: a packet carrying a DSR option to a pod here.
 * Remember the frontend for the pod's reply, take the option out.
 */
static __always_inline int sl_np_dsr_accept(struct __sk_buff *skb, struct sl_pkt *p)
{
	union sl_addr dst = p->daddr, vip = {};
	__be16 vport = 0;
	struct sl_ct_key rk = {};
	struct sl_ct_val rv = {};
	__u64 now = bpf_ktime_get_ns();

	if (!p->has_l4 || !bpf_map_lookup_elem(&sl_ep_v1, &dst))
		return SL_XLATE_PASS;
	if (sl_dsr_take(skb, p, &vip, &vport)) {
		sl_count(SL_M_DROP_REWRITE_FAILED);
		return SL_XLATE_DROP;
	}
	rk.saddr = p->daddr;
	rk.daddr = p->saddr;
	rk.sport = p->dport;
	rk.dport = p->sport;
	rk.proto = p->proto;
	rk.dir = SL_CT_DIR_REV;
	rv.nat_addr = vip;
	rv.nat_port = vport;
	rv.flags = SL_CT_F_NODEPORT | SL_CT_F_DSR_BACKEND;
	rv.lifetime_s = p->proto == IPPROTO_TCP_ ? SL_CT_LIFETIME_TCP_S : SL_CT_LIFETIME_OTHER_S;
	rv.last_seen_ns = now;
	rv.created_ns = now;
	if (bpf_map_update_elem(&sl_ct_v1, &rk, &rv, BPF_ANY)) {
		sl_count(SL_M_DROP_CT_MAP_FULL);
		return SL_XLATE_DROP;
	}
	sl_count(SL_M_DSR_BACKEND);
	return SL_XLATE_DONE;
}

/* Apply the decision of sl_np_lookup() to the packet and send it on. */
static __always_inline int sl_np_forward(struct __sk_buff *skb, struct sl_pkt *p, const struct sl_np_flow *f)
{
	union sl_addr vip = p->daddr;
	__be16 vport = p->dport;
	struct sl_nat_val nat = {};
	enum sl_metric m;

	if (sl_rewrite(skb, p, false, &f->be.addr, f->be.port)) {
		sl_count(SL_M_DROP_REWRITE_FAILED);
		return TC_ACT_SHOT;
	}
	switch (f->path) {
	case SL_NP_LOCAL_POD:
		sl_count(SL_M_NODEPORT_LOCAL);
		return sl_deliver_local(skb, p);
	case SL_NP_LOCAL_HOST:
		sl_count(SL_M_NODEPORT_LOCAL);
		return TC_ACT_OK;
	case SL_NP_SNAT:
		m = sl_np_snat(p, &nat);
		if (m != SL_M_SNAT) {
			sl_count(m);
			return TC_ACT_SHOT;
		}
		if (sl_rewrite(skb, p, true, &nat.addr, nat.port)) {
			sl_count(SL_M_DROP_REWRITE_FAILED);
			return TC_ACT_SHOT;
		}
		sl_count(SL_M_NODEPORT_SNAT);
		break;
	case SL_NP_DSR:
		if (sl_dsr_wants_option(p) && sl_dsr_insert(skb, p, &vip, vport)) {
			sl_count(SL_M_DROP_DSR_INSERT);
			return TC_ACT_SHOT;
		}
		sl_count(SL_M_NODEPORT_DSR);
		break;
	default:
		break;
	}
	return sl_fib_redirect(skb, p);
}

/* Where a packet translated back (sl_np_reply(), sl_icmp_to_node()) goes:
 * to the client through the FIB, into a pod here, or on to the stack. */
static __always_inline int sl_np_back(struct __sk_buff *skb, const struct sl_pkt *p, int r)
{
	if (r == SL_XLATE_DROP)
		return TC_ACT_SHOT;
	if (r == SL_XLATE_DONE_NODEPORT)
		return sl_fib_redirect(skb, p);
	return sl_deliver_local(skb, p);
}

/* tcx ingress of an external device. */
static __always_inline int sl_host_in(struct __sk_buff *skb)
{
	struct sl_pkt p = {};
	struct sl_np_flow f = {};
	int r = sl_parse(skb, &p);

	if (r == SL_PARSE_NOT_IP)
		return TC_ACT_OK;
	if (r != SL_PARSE_OK) {
		sl_count(SL_M_HOST_MALFORMED_PASSED);
		return TC_ACT_OK;
	}
	if (!p.has_l4 && !p.icmp_echo) {
		/* An ICMP error about a flow this node SNATed. */
		r = sl_icmp_to_node(skb, &p);
		return r == SL_XLATE_PASS ? TC_ACT_OK : sl_np_back(skb, &p, r);
	}

	r = sl_np_reply(skb, &p);
	if (r != SL_XLATE_PASS)
		return sl_np_back(skb, &p, r);
	if (!p.has_l4)
		return TC_ACT_OK;

	if (p.dsr) {
		r = sl_np_dsr_accept(skb, &p);
		if (r == SL_XLATE_DROP)
			return TC_ACT_SHOT;
		if (r == SL_XLATE_DONE)
			return sl_deliver_local(skb, &p);
	}

	r = sl_np_lookup(&p, &f);
	if (r == SL_XLATE_DROP)
		return TC_ACT_SHOT;
	if (r == SL_XLATE_DONE)
		return sl_np_forward(skb, &p, &f);
	/* Routed traffic to a pod here (from another node, say). */
	sl_ct_forget_stale(&p);
	return sl_deliver_local(skb, &p);
}

#endif /* SLUICE_LIB_NODEPORT_H */
