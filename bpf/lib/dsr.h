/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Direct server return: the node that balances a flow to a backend on
 * another node sends the packet there with the frontend it was addressed
 * to carried in the packet itself (an IPv4 option or an IPv6 destination
 * options header, lib/pkt.h), and the backend's node remembers it in a
 * conntrack entry, so that the backend's reply leaves with the frontend as
 * its source, straight to the client, without coming back through the
 * first node.
 *
 * TCP carries the option on SYNs only (the backend's node keeps the
 * frontend for the flow's life); UDP on every datagram, since any of them
 * may be the first the backend's node sees. The option adds 8 (IPv4) or
 * 24 (IPv6) bytes: a full-size UDP datagram that no longer fits the path
 * is dropped by the stack on the way (the MTU is not lowered for it).
 */
#ifndef SLUICE_LIB_DSR_H
#define SLUICE_LIB_DSR_H

#include "../include/common.h"
#include "pkt.h"

static __always_inline __u16 sl_csum_fold(__u64 csum)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		csum = (csum & 0xffff) + (csum >> 16);
	return (__u16)~csum;
}

/* Does this packet of a DSR flow carry the option? */
static __always_inline bool sl_dsr_wants_option(const struct sl_pkt *p)
{
	if (p->proto == IPPROTO_UDP_)
		return true;
	return p->proto == IPPROTO_TCP_ && (p->tcp_flags & TCP_FLAG_SYN_);
}

/*
 * Insert the option naming @vip:@vport after the IP header. The packet's
 * L4 checksum does not change (neither the pseudo header's addresses nor
 * the upper-layer length do). Updates p->l4_off. Returns 0 or a negative
 * error.
 */
static __always_inline int sl_dsr_insert(struct __sk_buff *skb, struct sl_pkt *p,
					 const union sl_addr *vip, __be16 vport)
{
	if (!p->v6) {
		struct {
			struct iphdr ip;
			struct sl_dsr_opt4 opt;
		} h;
		__s64 sum;

		if (bpf_skb_load_bytes(skb, ETH_HLEN_, &h.ip, sizeof(h.ip)) || h.ip.ihl != 5)
			return -1;
		if (bpf_skb_adjust_room(skb, SL_DSR_OPT4_LEN, BPF_ADJ_ROOM_NET, 0))
			return -1;
		h.opt.type = SL_DSR_OPT4_TYPE;
		h.opt.len = SL_DSR_OPT4_LEN;
		h.opt.port = vport;
		h.opt.addr = vip->w[3];
		h.ip.ihl = 7;
		h.ip.tot_len = bpf_htons(bpf_ntohs(h.ip.tot_len) + SL_DSR_OPT4_LEN);
		h.ip.check = 0;
		sum = bpf_csum_diff(NULL, 0, (__be32 *)&h, sizeof(h), 0);
		if (sum < 0)
			return -1;
		h.ip.check = sl_csum_fold((__u64)sum);
		if (bpf_skb_store_bytes(skb, ETH_HLEN_, &h, sizeof(h), 0))
			return -1;
		p->l4_off += SL_DSR_OPT4_LEN;
	} else {
		struct ipv6hdr ip6;
		struct sl_dsr_ext6 e = {};

		if (bpf_skb_load_bytes(skb, ETH_HLEN_, &ip6, sizeof(ip6)))
			return -1;
		if (bpf_skb_adjust_room(skb, SL_DSR_EXT6_LEN, BPF_ADJ_ROOM_NET, 0))
			return -1;
		e.nexthdr = ip6.nexthdr;
		e.hdrlen = SL_DSR_EXT6_LEN / 8 - 1;
		e.type = SL_DSR_OPT6_TYPE;
		e.len = SL_DSR_OPT6_DATA;
		e.port = vport;
		__builtin_memcpy(e.addr, vip->b, 16);
		e.pad_type = 1;
		e.pad_len = 0;
		ip6.nexthdr = IPPROTO_DSTOPTS_;
		ip6.payload_len = bpf_htons(bpf_ntohs(ip6.payload_len) + SL_DSR_EXT6_LEN);
		if (bpf_skb_store_bytes(skb, ETH_HLEN_, &ip6, sizeof(ip6), 0) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN_ + sizeof(ip6), &e, sizeof(e), 0))
			return -1;
		p->l4_off += SL_DSR_EXT6_LEN;
	}
	return 0;
}

/*
 * On the backend's node: read the frontend from the option sl_parse()
 * found, and remove the option, so that the backend sees an ordinary
 * packet. Returns 0 or a negative error.
 */
static __always_inline int sl_dsr_take(struct __sk_buff *skb, struct sl_pkt *p,
				       union sl_addr *vip, __be16 *vport)
{
	if (p->dsr == SL_DSR_IN_OPT4) {
		struct iphdr ip;
		struct sl_dsr_opt4 o;
		__s64 sum;

		if (bpf_skb_load_bytes(skb, ETH_HLEN_, &ip, sizeof(ip)) ||
		    bpf_skb_load_bytes(skb, ETH_HLEN_ + sizeof(ip), &o, sizeof(o)))
			return -1;
		sl_addr_from_v4(vip, o.addr);
		*vport = o.port;
		if (bpf_skb_adjust_room(skb, -SL_DSR_OPT4_LEN, BPF_ADJ_ROOM_NET, 0))
			return -1;
		ip.ihl = 5;
		ip.tot_len = bpf_htons(bpf_ntohs(ip.tot_len) - SL_DSR_OPT4_LEN);
		ip.check = 0;
		sum = bpf_csum_diff(NULL, 0, (__be32 *)&ip, sizeof(ip), 0);
		if (sum < 0)
			return -1;
		ip.check = sl_csum_fold((__u64)sum);
		if (bpf_skb_store_bytes(skb, ETH_HLEN_, &ip, sizeof(ip), 0))
			return -1;
		p->l4_off -= SL_DSR_OPT4_LEN;
	} else if (p->dsr == SL_DSR_IN_EXT6) {
		struct ipv6hdr ip6;
		struct sl_dsr_ext6 e;

		if (bpf_skb_load_bytes(skb, ETH_HLEN_, &ip6, sizeof(ip6)) ||
		    bpf_skb_load_bytes(skb, ETH_HLEN_ + sizeof(ip6), &e, sizeof(e)))
			return -1;
		__builtin_memcpy(vip->b, e.addr, 16);
		*vport = e.port;
		if (bpf_skb_adjust_room(skb, -SL_DSR_EXT6_LEN, BPF_ADJ_ROOM_NET, 0))
			return -1;
		ip6.nexthdr = e.nexthdr;
		ip6.payload_len = bpf_htons(bpf_ntohs(ip6.payload_len) - SL_DSR_EXT6_LEN);
		if (bpf_skb_store_bytes(skb, ETH_HLEN_, &ip6, sizeof(ip6), 0))
			return -1;
		p->l4_off -= SL_DSR_EXT6_LEN;
	} else {
		return -1;
	}
	p->dsr = SL_DSR_IN_NONE;
	return 0;
}

#endif /* SLUICE_LIB_DSR_H */
