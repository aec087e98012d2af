/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Forwarding a translated packet without the stack's input path: a FIB
 * lookup on the packet's (new) addresses, then a redirect to the device the
 * route names. The stack would refuse some of these packets on input (a
 * reply whose source became the node's own address is a "martian"), and
 * skipping it is faster anyway.
 */
#ifndef SLUICE_LIB_FIB_H
#define SLUICE_LIB_FIB_H

#include "../include/common.h"
#include "../include/metrics.h"
#include "pkt.h"

#ifndef BPF_FIB_LKUP_RET_SUCCESS
#define BPF_FIB_LKUP_RET_SUCCESS	0
#endif
#ifndef BPF_FIB_LKUP_RET_NO_NEIGH
#define BPF_FIB_LKUP_RET_NO_NEIGH	7
#endif

/* Fill @fib for the packet in @p as parsed (after its rewrites). */
static __always_inline void sl_fib_params(struct bpf_fib_lookup *fib, const struct sl_pkt *p,
					  __u32 ifindex, __u16 len)
{
	fib->ifindex = ifindex;
	fib->l4_protocol = p->proto;
	fib->sport = p->sport;
	fib->dport = p->dport;
	fib->tot_len = len;
	if (!p->v6) {
		fib->family = AF_INET;
		fib->ipv4_src = p->saddr.w[3];
		fib->ipv4_dst = p->daddr.w[3];
	} else {
		fib->family = AF_INET6;
		__builtin_memcpy(fib->ipv6_src, p->saddr.w, 16);
		__builtin_memcpy(fib->ipv6_dst, p->daddr.w, 16);
	}
}

/*
 * tc: route the packet and redirect it out of the device the route names,
 * with the neighbour's MAC when the kernel knows it (bpf_redirect) and
 * through bpf_redirect_neigh otherwise (which resolves it). When the FIB
 * has no answer the packet is handed to the stack (TC_ACT_OK) and counted.
 */
static __always_inline int sl_fib_redirect(struct __sk_buff *skb, const struct sl_pkt *p)
{
	struct bpf_fib_lookup fib = {};
	/* Both read unconditionally: the verifier refuses a context pointer
	 * that the compiler offsets by a branch. */
	__u32 in_ifindex = skb->ingress_ifindex;
	__u32 ifindex = skb->ifindex;
	__u32 len = skb->len;
	long r;

	sl_fib_params(&fib, p, in_ifindex ? in_ifindex : ifindex, (__u16)(len - ETH_HLEN_));
	r = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (r == BPF_FIB_LKUP_RET_SUCCESS) {
		if (sl_set_macs(skb, fib.dmac, fib.smac)) {
			sl_count(SL_M_DROP_REWRITE_FAILED);
			return TC_ACT_SHOT;
		}
		sl_count(SL_M_FIB_REDIRECT);
		return bpf_redirect(fib.ifindex, 0);
	}
	if (r == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = {};

		if (!p->v6) {
			nh.nh_family = AF_INET;
			nh.ipv4_nh = fib.ipv4_dst;
		} else {
			nh.nh_family = AF_INET6;
			__builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, 16);
		}
		sl_count(SL_M_FIB_REDIRECT);
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	sl_count(SL_M_FIB_PASS);
	return TC_ACT_OK;
}

#endif /* SLUICE_LIB_FIB_H */
