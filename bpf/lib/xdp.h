/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The XDP fast path of the external devices: the same decisions as the tcx
 * program (lib/nodeport.h, same maps), taken before the kernel allocates an
 * skb. XDP finishes what it can do completely, the forwarding of NodePort
 * flows to remote backends (SNAT, or DSR packets that need no option) and
 * their translated replies, and leaves everything else untouched to the tcx
 * program behind it (XDP_PASS): local backends (bpf_redirect_peer exists
 * only at tc), DSR packets that carry the option, masquerade replies, ICMP,
 * and any packet whose next hop has no neighbour entry yet. Decisions XDP
 * has recorded (conntrack, NAT) are found and followed by tc.
 *
 * Checksums are updated incrementally from the packet's own values: XDP
 * sees full checksums (a sender's partial checksum offload does not reach
 * a device's receive path over a real wire; over veth, see the README).
 */
#ifndef SLUICE_LIB_XDP_H
#define SLUICE_LIB_XDP_H

#include "../include/common.h"
#include "../include/metrics.h"
#include "dsr.h"
#include "fib.h"
#include "nodeport.h"
#include "pkt.h"

/*
 * Update the checksum at @off for the @n bytes (a multiple of 4) @from
 * becoming @to. @udp: a UDP checksum, where 0 means "none" (IPv4) and a
 * computed 0 is sent as 0xffff.
 */
static __always_inline int sl_xdp_csum(struct xdp_md *ctx, __u32 off, __be32 *from, __be32 *to,
				       __u32 n, bool udp)
{
	__u16 c;
	__s64 d;

	if (bpf_xdp_load_bytes(ctx, off, &c, 2))
		return -1;
	if (udp && c == 0)
		return 0;
	d = bpf_csum_diff(from, n, to, n, (__u16)~c);
	if (d < 0)
		return -1;
	c = sl_csum_fold((__u64)d);
	if (udp && c == 0)
		c = 0xffff;
	return bpf_xdp_store_bytes(ctx, off, &c, 2) ? -1 : 0;
}

/* Replace the source (@src) or destination address and port of a TCP/UDP
 * packet, with the IPv4 header and L4 checksums. Updates @p. */
static __always_inline int sl_xdp_rewrite(struct xdp_md *ctx, struct sl_pkt *p, bool src,
					  const union sl_addr *addr, __be16 port)
{
	union sl_addr *old = src ? &p->saddr : &p->daddr;
	__be16 *old_port = src ? &p->sport : &p->dport;
	__u32 csum_off = sl_l4_csum_off(p);
	bool udp = p->proto == IPPROTO_UDP_;
	__be32 ow[5] = {}, nw[5] = {};

	if (!p->v6) {
		__u32 off = ETH_HLEN_ + (src ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr));

		ow[0] = old->w[3];
		nw[0] = addr->w[3];
		/* The port in the upper half of a word: ones' complement
		 * sums over 16-bit words do not care which word it is. */
		((__be16 *)&ow[1])[0] = *old_port;
		((__be16 *)&nw[1])[0] = port;
		if (sl_xdp_csum(ctx, ETH_HLEN_ + offsetof(struct iphdr, check), ow, nw, 4, false) ||
		    bpf_xdp_store_bytes(ctx, off, &nw[0], 4) ||
		    sl_xdp_csum(ctx, csum_off, ow, nw, 8, udp))
			return -1;
	} else {
		__u32 off = ETH_HLEN_ + (src ? offsetof(struct ipv6hdr, saddr) : offsetof(struct ipv6hdr, daddr));

		__builtin_memcpy(ow, old->w, 16);
		__builtin_memcpy(nw, addr->w, 16);
		((__be16 *)&ow[4])[0] = *old_port;
		((__be16 *)&nw[4])[0] = port;
		/* No "no checksum" for UDP over IPv6: a 0 is never there. */
		if (bpf_xdp_store_bytes(ctx, off, &nw[0], 16) ||
		    sl_xdp_csum(ctx, csum_off, ow, nw, 20, udp))
			return -1;
	}
	if (bpf_xdp_store_bytes(ctx, sl_port_off(p, src), &port, 2))
		return -1;
	*old = *addr;
	*old_port = port;
	return 0;
}

/*
 * Route the packet @p will be once translated to @src:@sport -> @dst:@dport.
 * Returns the egress ifindex and fills the MACs, or 0 when XDP cannot send
 * it itself (no route, no neighbour entry yet, forwarding off...).
 */
static __always_inline __u32 sl_xdp_route(struct xdp_md *ctx, const struct sl_pkt *p,
					  const union sl_addr *src, __be16 sport,
					  const union sl_addr *dst, __be16 dport, __u8 macs[12])
{
	struct bpf_fib_lookup fib = {};
	__u32 len = (__u32)bpf_xdp_get_buff_len(ctx);

	fib.ifindex = ctx->ingress_ifindex;
	fib.l4_protocol = p->proto;
	fib.sport = sport;
	fib.dport = dport;
	fib.tot_len = (__u16)(len - ETH_HLEN_);
	if (!p->v6) {
		fib.family = AF_INET;
		fib.ipv4_src = src->w[3];
		fib.ipv4_dst = dst->w[3];
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, src->w, 16);
		__builtin_memcpy(fib.ipv6_dst, dst->w, 16);
	}
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return 0;
	__builtin_memcpy(macs, fib.dmac, 6);
	__builtin_memcpy(macs + 6, fib.smac, 6);
	return fib.ifindex;
}

static __always_inline int sl_xdp_send(struct xdp_md *ctx, __u32 ifindex, const __u8 macs[12])
{
	if (bpf_xdp_store_bytes(ctx, 0, (void *)macs, 12)) {
		sl_count(SL_M_DROP_REWRITE_FAILED);
		return XDP_DROP;
	}
	sl_count(SL_M_XDP_FORWARD);
	/* bpf_redirect even back out of the receiving device: on veth
	 * (6.18), frames sent with XDP_TX towards a bridge port with GRO did
	 * not arrive in our tests, while the redirect path delivers them. */
	return bpf_redirect(ifindex, 0);
}

static __always_inline int sl_xdp_pass(void)
{
	sl_count(SL_M_XDP_PASS);
	return XDP_PASS;
}

/* A reply to a NodePort flow SNATed here: back to the client. (Not
 * inlined: its stack and the forward path's are not needed at once.) */
static __noinline int sl_xdp_reply(struct xdp_md *ctx, struct sl_pkt *p, bool *mine)
{
	struct sl_nat_key ik = sl_nat_key_of(p, SL_NAT_DIR_IN);
	struct sl_ct_key rk = {};
	struct sl_nat_val *iv;
	struct sl_ct_val *rv;
	union sl_addr client, vip;
	__be16 client_port, vport;
	__u8 macs[12];
	__u32 ifindex;
	__u64 now;

	*mine = false;
	iv = bpf_map_lookup_elem(&sl_snat_v1, &ik);
	if (!iv || !(iv->flags & SL_CT_F_NODEPORT))
		return XDP_PASS;
	*mine = true;
	client = iv->addr;
	client_port = iv->port;
	rk.saddr = p->saddr;
	rk.daddr = client;
	rk.sport = p->sport;
	rk.dport = client_port;
	rk.proto = p->proto;
	rk.dir = SL_CT_DIR_REV;
	rv = bpf_map_lookup_elem(&sl_ct_v1, &rk);
	/* Closing flows and orphans are tc's (it keeps both tables in step). */
	if (!rv || sl_tcp_closing(p))
		return sl_xdp_pass();
	vip = rv->nat_addr;
	vport = rv->nat_port;
	ifindex = sl_xdp_route(ctx, p, &vip, vport, &client, client_port, macs);
	if (!ifindex)
		return sl_xdp_pass();
	now = bpf_ktime_get_ns();
	iv->last_seen_ns = now;
	rv->last_seen_ns = now;
	if (sl_xdp_rewrite(ctx, p, false, &client, client_port) ||
	    sl_xdp_rewrite(ctx, p, true, &vip, vport)) {
		sl_count(SL_M_DROP_REWRITE_FAILED);
		return XDP_DROP;
	}
	sl_count(SL_M_NODEPORT_REPLY);
	return sl_xdp_send(ctx, ifindex, macs);
}

/* The decision, in a frame of its own (the stack is 512 bytes for the
 * whole chain of calls). */
static __noinline int sl_xdp_decide(const struct sl_pkt *p, struct sl_np_flow *f)
{
	return sl_np_lookup(p, f);
}

/* A packet to a frontend: forward it if XDP can do all of it. */
static __noinline int sl_xdp_forward(struct xdp_md *ctx, struct sl_pkt *pp, const struct sl_np_flow *fp)
{
	struct sl_pkt p = *pp;
	struct sl_np_flow f = *fp;
	struct sl_nat_val nat = {};
	enum sl_metric m;
	__u8 macs[12];
	__u32 ifindex;
	if (f.path == SL_NP_SNAT && !sl_tcp_closing(&p)) {
		/* The NAT table is keyed by the tuple after DNAT. */
		union sl_addr vip = p.daddr;
		__be16 vport = p.dport;

		p.daddr = f.be.addr;
		p.dport = f.be.port;
		m = sl_np_snat(&p, &nat);
		p.daddr = vip;
		p.dport = vport;
		if (m != SL_M_SNAT) {
			sl_count(m);
			return XDP_DROP;
		}
		ifindex = sl_xdp_route(ctx, &p, &nat.addr, nat.port, &f.be.addr, f.be.port, macs);
		if (!ifindex)
			return sl_xdp_pass();
		if (sl_xdp_rewrite(ctx, &p, false, &f.be.addr, f.be.port) ||
		    sl_xdp_rewrite(ctx, &p, true, &nat.addr, nat.port)) {
			sl_count(SL_M_DROP_REWRITE_FAILED);
			return XDP_DROP;
		}
		sl_count(SL_M_NODEPORT_SNAT);
		return sl_xdp_send(ctx, ifindex, macs);
	}
	if (f.path == SL_NP_DSR && !sl_dsr_wants_option(&p)) {
		ifindex = sl_xdp_route(ctx, &p, &p.saddr, p.sport, &f.be.addr, f.be.port, macs);
		if (!ifindex)
			return sl_xdp_pass();
		if (sl_xdp_rewrite(ctx, &p, false, &f.be.addr, f.be.port)) {
			sl_count(SL_M_DROP_REWRITE_FAILED);
			return XDP_DROP;
		}
		sl_count(SL_M_NODEPORT_DSR);
		return sl_xdp_send(ctx, ifindex, macs);
	}
	return sl_xdp_pass();
}

/* Parsing in a frame of its own too: its header copies are not needed
 * once it returns. */
static __noinline int sl_xdp_parse_nl(struct xdp_md *ctx, struct sl_pkt *p)
{
	return sl_xdp_parse(ctx, p);
}

static __always_inline int sl_xdp_nodeport(struct xdp_md *ctx)
{
	struct sl_pkt p = {};
	struct sl_np_flow f = {};
	bool mine = false;
	int r = sl_xdp_parse_nl(ctx, &p);

	if (r != SL_PARSE_OK || !p.has_l4 || p.dsr)
		return XDP_PASS;
	r = sl_xdp_reply(ctx, &p, &mine);
	if (mine)
		return r;
	r = sl_xdp_decide(&p, &f);
	if (r == SL_XLATE_PASS)
		return XDP_PASS;
	if (r == SL_XLATE_DROP)
		return XDP_DROP;
	return sl_xdp_forward(ctx, &p, &f);
}

#endif /* SLUICE_LIB_XDP_H */
