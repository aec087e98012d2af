/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ICMP errors about translated flows (destination unreachable, time
 * exceeded, parameter problem; packet too big for IPv6): the error quotes
 * the packet as the backend side saw it, so the quote and the error's own
 * addresses are translated back the way a reply would be, or the client's
 * stack cannot match it to its socket (a "port unreachable" for a UDP
 * service, a "fragmentation needed" for path MTU discovery).
 *
 *  - at the pod device, an error from a backend pod to a client: outer
 *    source backend -> frontend, quoted destination backend -> frontend;
 *  - at the external device, an error about a flow SNATed here (NodePort
 *    to a remote backend, or masquerade): outer destination node -> client
 *    (or pod), quoted source node:port -> client:port, and for NodePort
 *    flows the quoted destination backend -> frontend (and the outer
 *    source too if the backend itself sent the error).
 *
 * The ICMP checksum and the quoted IPv4 header's checksum are updated; the
 * quoted L4 checksum is not (the quote may be truncated; receivers do not
 * check it).
 */
#ifndef SLUICE_LIB_ICMP_H
#define SLUICE_LIB_ICMP_H

#include "../include/common.h"
#include "../include/ct.h"
#include "../include/nat.h"
#include "../include/metrics.h"
#include "pkt.h"

struct sl_icmp_quote {
	union sl_addr saddr;	/* as quoted, network order */
	union sl_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8  proto;
	__u8  pad[3];
	__u32 ip_off;		/* the quoted IP header */
	__u32 l4_off;		/* the quoted L4 header (ports) */
};

/* Is @p an ICMP error quoting a TCP or UDP packet? Fills @q. */
static __always_inline bool sl_icmp_quote(struct __sk_buff *skb, const struct sl_pkt *p,
					  struct sl_icmp_quote *q)
{
	__u8 type;

	if (p->has_l4 || p->icmp_echo || p->proto != (p->v6 ? IPPROTO_ICMPV6_ : IPPROTO_ICMP_))
		return false;
	if (bpf_skb_load_bytes(skb, p->l4_off, &type, 1))
		return false;
	if (p->v6 ? (type < 1 || type > 4) : (type != 3 && type != 11 && type != 12))
		return false;
	q->ip_off = p->l4_off + 8;
	if (!p->v6) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, q->ip_off, &ip, sizeof(ip)) || ip.version != 4 || ip.ihl < 5)
			return false;
		sl_addr_from_v4(&q->saddr, ip.saddr);
		sl_addr_from_v4(&q->daddr, ip.daddr);
		q->proto = ip.protocol;
		q->l4_off = q->ip_off + ip.ihl * 4;
	} else {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, q->ip_off, &ip6, sizeof(ip6)) || ip6.version != 6)
			return false;
		__builtin_memcpy(q->saddr.b, &ip6.saddr, 16);
		__builtin_memcpy(q->daddr.b, &ip6.daddr, 16);
		q->proto = ip6.nexthdr;
		q->l4_off = q->ip_off + sizeof(ip6);
	}
	if (q->proto != IPPROTO_TCP_ && q->proto != IPPROTO_UDP_)
		return false;
	if (bpf_skb_load_bytes(skb, q->l4_off, &q->sport, 2) ||
	    bpf_skb_load_bytes(skb, q->l4_off + 2, &q->dport, 2))
		return false;
	return true;
}

/* The outer source (@src) or destination of an ICMP error. */
static __always_inline int sl_icmp_outer(struct __sk_buff *skb, struct sl_pkt *p, bool src,
					 const union sl_addr *addr)
{
	union sl_addr *old = src ? &p->saddr : &p->daddr;
	union sl_addr n = *addr;

	if (sl_addr_eq(old, &n))
		return 0;
	if (!p->v6) {
		__u32 off = ETH_HLEN_ + (src ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr));

		if (bpf_l3_csum_replace(skb, ETH_HLEN_ + offsetof(struct iphdr, check), old->w[3], n.w[3], 4) ||
		    bpf_skb_store_bytes(skb, off, &n.w[3], 4, 0))
			return -1;
	} else {
		__u32 off = ETH_HLEN_ + (src ? offsetof(struct ipv6hdr, saddr) : offsetof(struct ipv6hdr, daddr));
		__s64 diff = bpf_csum_diff(old->w, 16, n.w, 16, 0);

		/* ICMPv6's checksum covers the pseudo header. */
		if (diff < 0 ||
		    bpf_l4_csum_replace(skb, p->l4_off + 2, 0, (__u64)diff, BPF_F_PSEUDO_HDR) ||
		    bpf_skb_store_bytes(skb, off, n.b, 16, 0))
			return -1;
	}
	*old = n;
	return 0;
}

/* The quoted source (@src) or destination address and port. */
static __always_inline int sl_icmp_inner(struct __sk_buff *skb, const struct sl_pkt *p,
					 struct sl_icmp_quote *q, bool src,
					 const union sl_addr *addr, __be16 port)
{
	__u32 csum = p->l4_off + 2;
	union sl_addr *old = src ? &q->saddr : &q->daddr;
	__be16 *old_port = src ? &q->sport : &q->dport;
	union sl_addr n = *addr;

	if (!p->v6) {
		__u32 off = q->ip_off + (src ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr));
		__u32 ck = q->ip_off + offsetof(struct iphdr, check);
		__be16 c0, c1;

		if (bpf_skb_load_bytes(skb, ck, &c0, 2) ||
		    bpf_l3_csum_replace(skb, ck, old->w[3], n.w[3], 4) ||
		    bpf_skb_load_bytes(skb, ck, &c1, 2) ||
		    bpf_l4_csum_replace(skb, csum, old->w[3], n.w[3], 4) ||
		    bpf_l4_csum_replace(skb, csum, c0, c1, 2) ||
		    bpf_skb_store_bytes(skb, off, &n.w[3], 4, 0))
			return -1;
	} else {
		__u32 off = q->ip_off + (src ? offsetof(struct ipv6hdr, saddr) : offsetof(struct ipv6hdr, daddr));
		__s64 diff = bpf_csum_diff(old->w, 16, n.w, 16, 0);

		if (diff < 0 ||
		    bpf_l4_csum_replace(skb, csum, 0, (__u64)diff, 0) ||
		    bpf_skb_store_bytes(skb, off, n.b, 16, 0))
			return -1;
	}
	if (*old_port != port &&
	    (bpf_l4_csum_replace(skb, csum, *old_port, port, 2) ||
	     bpf_skb_store_bytes(skb, q->l4_off + (src ? 0 : 2), &port, 2, 0)))
		return -1;
	*old = n;
	*old_port = port;
	return 0;
}

/*
 * At the pod device: an ICMP error a pod sends about a flow it served as a
 * backend. Returns SL_XLATE_PASS, SL_XLATE_DONE (with *@flags the flow's
 * conntrack flags) or SL_XLATE_DROP.
 */
static __always_inline int sl_icmp_from_backend(struct __sk_buff *skb, struct sl_pkt *p, __u16 *flags)
{
	struct sl_icmp_quote q = {};
	struct sl_ct_key rk = {};
	struct sl_ct_val *rv;
	union sl_addr vip;
	__be16 vport;

	if (!sl_icmp_quote(skb, p, &q))
		return SL_XLATE_PASS;
	/* The quote is client -> backend: the reply direction's key. */
	rk.saddr = q.daddr;
	rk.daddr = q.saddr;
	rk.sport = q.dport;
	rk.dport = q.sport;
	rk.proto = q.proto;
	rk.dir = SL_CT_DIR_REV;
	rv = bpf_map_lookup_elem(&sl_ct_v1, &rk);
	if (!rv)
		return SL_XLATE_PASS;
	vip = rv->nat_addr;
	vport = rv->nat_port;
	*flags = rv->flags;
	if ((sl_addr_eq(&p->saddr, &q.daddr) && sl_icmp_outer(skb, p, true, &vip)) ||
	    sl_icmp_inner(skb, p, &q, false, &vip, vport)) {
		sl_count(SL_M_DROP_REWRITE_FAILED);
		return SL_XLATE_DROP;
	}
	sl_count(SL_M_ICMP_ERROR_XLATE);
	return SL_XLATE_DONE;
}

/*
 * At the external device: an ICMP error about a flow SNATed by this node
 * (the quote is node:port -> remote). Returns SL_XLATE_PASS, SL_XLATE_DONE
 * (masquerade: now to the pod) or SL_XLATE_DONE_NODEPORT (to the client),
 * or SL_XLATE_DROP.
 */
static __always_inline int sl_icmp_to_node(struct __sk_buff *skb, struct sl_pkt *p)
{
	struct sl_icmp_quote q = {};
	struct sl_nat_key ik = {};
	struct sl_ct_key rk = {};
	struct sl_nat_val *iv;
	struct sl_ct_val *rv;
	union sl_addr orig, remote, vip;
	__be16 orig_port, vport;
	bool nodeport;

	if (!sl_icmp_quote(skb, p, &q))
		return SL_XLATE_PASS;
	ik.saddr = q.daddr;
	ik.daddr = q.saddr;
	ik.sport = q.dport;
	ik.dport = q.sport;
	ik.proto = q.proto;
	ik.dir = SL_NAT_DIR_IN;
	iv = bpf_map_lookup_elem(&sl_snat_v1, &ik);
	if (!iv)
		return SL_XLATE_PASS;
	orig = iv->addr;
	orig_port = iv->port;
	nodeport = iv->flags & SL_CT_F_NODEPORT;
	remote = q.daddr;
	if (nodeport) {
		rk.saddr = q.daddr;
		rk.daddr = orig;
		rk.sport = q.dport;
		rk.dport = orig_port;
		rk.proto = q.proto;
		rk.dir = SL_CT_DIR_REV;
		rv = bpf_map_lookup_elem(&sl_ct_v1, &rk);
		if (!rv)
			return SL_XLATE_PASS;
		vip = rv->nat_addr;
		vport = rv->nat_port;
	}
	if (sl_icmp_outer(skb, p, false, &orig) ||
	    sl_icmp_inner(skb, p, &q, true, &orig, orig_port))
		goto fail;
	if (nodeport) {
		if ((sl_addr_eq(&p->saddr, &remote) && sl_icmp_outer(skb, p, true, &vip)) ||
		    sl_icmp_inner(skb, p, &q, false, &vip, vport))
			goto fail;
	}
	sl_count(SL_M_ICMP_ERROR_XLATE);
	return nodeport ? 3 /* SL_XLATE_DONE_NODEPORT */ : SL_XLATE_DONE;
fail:
	sl_count(SL_M_DROP_REWRITE_FAILED);
	return SL_XLATE_DROP;
}

#endif /* SLUICE_LIB_ICMP_H */
