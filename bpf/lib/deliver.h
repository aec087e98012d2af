/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Delivery to a pod on this node (include/ep.h), from any tc program. */
#ifndef SLUICE_LIB_DELIVER_H
#define SLUICE_LIB_DELIVER_H

#include "../include/common.h"
#include "../include/ep.h"
#include "../include/metrics.h"
#include "pkt.h"

/*
 * If the destination is a pod on this node, hand the packet straight to
 * its eth0 with bpf_redirect_peer (tc ingress only), with the pod's and
 * its host veth's MACs; otherwise leave it to the stack.
 */
static __always_inline int sl_deliver_local(struct __sk_buff *skb, const struct sl_pkt *p)
{
	union sl_addr dst = p->daddr;
	struct sl_ep_val *ep = bpf_map_lookup_elem(&sl_ep_v1, &dst);

	if (!ep)
		return TC_ACT_OK;
	if (sl_set_macs(skb, ep->pod_mac, ep->host_mac)) {
		sl_count(SL_M_DROP_REWRITE_FAILED);
		return TC_ACT_SHOT;
	}
	sl_count(SL_M_POD_REDIRECT_PEER);
	return bpf_redirect_peer(ep->host_ifindex, 0);
}

#endif /* SLUICE_LIB_DELIVER_H */
