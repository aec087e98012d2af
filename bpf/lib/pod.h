/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The pod device (host side of a pod's veth): what a pod sends
 * (sl_pod_from, tc ingress) and what the stack sends into it (sl_pod_to,
 * tc egress).
 */
#ifndef SLUICE_LIB_POD_H
#define SLUICE_LIB_POD_H

#include "../include/common.h"
#include "../include/ep.h"
#include "../include/metrics.h"
#include "ct.h"
#include "deliver.h"
#include "fib.h"
#include "icmp.h"
#include "pkt.h"

static __always_inline int sl_pod_from(struct __sk_buff *skb)
{
	struct sl_pkt p = {};
	int r = sl_parse(skb, &p);

	if (r == SL_PARSE_NOT_IP)
		return TC_ACT_OK;
	if (r != SL_PARSE_OK) {
		sl_count(SL_M_DROP_MALFORMED);
		return TC_ACT_SHOT;
	}
	if (!p.has_l4 && !p.icmp_echo) {
		/* An ICMP error this pod sends about a flow it served. */
		__u16 cf = 0;

		r = sl_icmp_from_backend(skb, &p, &cf);
		if (r == SL_XLATE_DROP)
			return TC_ACT_SHOT;
		if (r == SL_XLATE_DONE && (cf & SL_CT_F_NODEPORT)) {
			union sl_addr dst = p.daddr;

			if (!bpf_map_lookup_elem(&sl_ep_v1, &dst))
				return sl_fib_redirect(skb, &p);
		}
	}
	if (p.has_l4) {
		/* A reply from this pod as a service backend, else a packet
		 * to a service. */
		__u16 cf = 0;

		r = sl_ct_reply(skb, &p, &cf);
		if (r == SL_XLATE_DONE && (cf & SL_CT_F_NODEPORT)) {
			/* To a client outside the node, with the frontend
			 * (maybe the node's own address) as its source: the
			 * stack's input path would call that a martian. */
			union sl_addr dst = p.daddr;

			if (!bpf_map_lookup_elem(&sl_ep_v1, &dst))
				return sl_fib_redirect(skb, &p);
		}
		if (r == SL_XLATE_PASS)
			r = sl_ct_service(skb, &p);
		if (r == SL_XLATE_DROP)
			return TC_ACT_SHOT;
	}
	return sl_deliver_local(skb, &p);
}

static __always_inline int sl_pod_to(struct __sk_buff *skb)
{
	struct sl_pkt p = {};
	int r = sl_parse(skb, &p);

	if (r == SL_PARSE_NOT_IP)
		return TC_ACT_OK;
	if (r != SL_PARSE_OK) {
		sl_count(SL_M_DROP_MALFORMED);
		return TC_ACT_SHOT;
	}
	/* A reply from a backend outside this node or in the host network. */
	if (p.has_l4) {
		__u16 cf = 0;

		if (sl_ct_reply(skb, &p, &cf) == SL_XLATE_DROP)
			return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

#endif /* SLUICE_LIB_POD_H */
