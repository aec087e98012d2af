/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Packet parsing and rewriting for tc programs (pod and node devices).
 *
 * Headers are copied out with bpf_skb_load_bytes() and written back with
 * bpf_skb_store_bytes() and the checksum helpers, so the same code copes
 * with non-linear skbs, IPv4 options and both families. Checksums are
 * updated incrementally: with CHECKSUM_PARTIAL (offloaded TCP from a pod)
 * the helpers update only the pseudo-header part, as the stack expects.
 */
#ifndef SLUICE_LIB_PKT_H
#define SLUICE_LIB_PKT_H

#include "../include/common.h"
#include "addr.h"

#define TC_ACT_OK		0
#define TC_ACT_SHOT		2
#define TC_ACT_REDIRECT		7

#define ETH_HLEN_		14
#define ETH_ALEN_		6
#define ETH_P_IP_		0x0800
#define ETH_P_IPV6_		0x86DD

#define IP_MF_			0x2000
#define IP_OFFSET_		0x1fff

#define IPPROTO_ICMP_		1
#define IPPROTO_ICMPV6_		58
#define ICMP_ECHO_REPLY_	0
#define ICMP_ECHO_REQUEST_	8
#define ICMPV6_ECHO_REQUEST_	128
#define ICMPV6_ECHO_REPLY_	129

#define TCP_FLAG_FIN_		0x01
#define TCP_FLAG_SYN_		0x02
#define TCP_FLAG_RST_		0x04
#define TCP_FLAG_ACK_		0x10

/* What sl_parse() found. Addresses and ports in network order. */
struct sl_pkt {
	union sl_addr saddr;
	union sl_addr daddr;
	__be16 sport;		/* valid if has_l4 */
	__be16 dport;		/* valid if has_l4 */
	__u8  proto;		/* IPv4 protocol / IPv6 next header */
	__u8  v6;
	__u8  has_l4;		/* TCP or UDP header present: ports valid */
	__u8  tcp_flags;	/* FIN, SYN, RST, ... (TCP only) */
	__u8  icmp_echo;	/* ICMP(v6) echo: the identifier stands in for a
				 * port, sport in a request, dport in a reply
				 * (the other is 0); has_l4 stays 0 */
	__u8  dsr;		/* a DSR option (lib/dsr.h): SL_DSR_IN_* */
	__u8  pad[2];
	__u32 l4_off;		/* offset of the L4 header from the frame start */
};

/* Where sl_parse() found a DSR option (lib/dsr.h). */
#define SL_DSR_IN_NONE		0
#define SL_DSR_IN_OPT4		1	/* IPv4 option right after the base header */
#define SL_DSR_IN_EXT6		2	/* IPv6 destination options header */

/* The DSR option: the frontend a packet was sent to, carried to the
 * backend's node. IPv4: an option of the experimental number 30 (RFC 4727)
 * with the copy bit, 8 bytes. IPv6: a destination options header holding
 * one option of the experimental type 0x1e (skip if unknown, immutable
 * en route) and a 2-byte PadN, 24 bytes. */
#define SL_DSR_OPT4_TYPE	0x9e
#define SL_DSR_OPT4_LEN		8
#define SL_DSR_OPT6_TYPE	0x1e
#define SL_DSR_OPT6_DATA	18
#define SL_DSR_EXT6_LEN		24
#define IPPROTO_DSTOPTS_	60

struct sl_dsr_opt4 {
	__u8   type;
	__u8   len;
	__be16 port;
	__be32 addr;
};

struct sl_dsr_ext6 {
	__u8   nexthdr;
	__u8   hdrlen;		/* in 8-byte units, not counting the first */
	__u8   type;
	__u8   len;
	__be16 port;
	__u8   addr[16];
	__u8   pad_type;	/* PadN: type 1, length 0 */
	__u8   pad_len;
};

#define SL_PARSE_OK		0
#define SL_PARSE_NOT_IP		1	/* ARP and the like: not ours */
#define SL_PARSE_MALFORMED	(-1)

/*
 * One parser for tc and XDP: @xdp is a constant at every call site, so after
 * inlining only the matching helper call is left in each program.
 */
static __always_inline long sl_load(void *ctx, bool xdp, __u32 off, void *to, __u32 len)
{
	if (xdp)
		return bpf_xdp_load_bytes(ctx, off, to, len);
	return bpf_skb_load_bytes(ctx, off, to, len);
}

static __always_inline int sl_parse_l4(void *skb, bool xdp, struct sl_pkt *p, __u32 l4_len)
{
	if (p->proto == IPPROTO_TCP_) {
		__u8 th[20];
		__u32 doff;

		if (l4_len < 20 || sl_load(skb, xdp, p->l4_off, th, sizeof(th)))
			return SL_PARSE_MALFORMED;
		doff = (th[12] >> 4) * 4;
		if (doff < 20 || doff > l4_len)
			return SL_PARSE_MALFORMED;
		__builtin_memcpy(&p->sport, &th[0], 2);
		__builtin_memcpy(&p->dport, &th[2], 2);
		p->tcp_flags = th[13];
		p->has_l4 = 1;
	} else if (p->proto == IPPROTO_UDP_) {
		__u8 uh[8];

		if (l4_len < 8 || sl_load(skb, xdp, p->l4_off, uh, sizeof(uh)))
			return SL_PARSE_MALFORMED;
		__builtin_memcpy(&p->sport, &uh[0], 2);
		__builtin_memcpy(&p->dport, &uh[2], 2);
		p->has_l4 = 1;
	} else if (p->proto == (p->v6 ? IPPROTO_ICMPV6_ : IPPROTO_ICMP_)) {
		__u8 ih[8];
		__u8 req = p->v6 ? ICMPV6_ECHO_REQUEST_ : ICMP_ECHO_REQUEST_;
		__u8 rep = p->v6 ? ICMPV6_ECHO_REPLY_ : ICMP_ECHO_REPLY_;

		if (l4_len < 8 || sl_load(skb, xdp, p->l4_off, ih, sizeof(ih)))
			return SL_PARSE_MALFORMED;
		if (ih[0] == req)
			__builtin_memcpy(&p->sport, &ih[4], 2);
		else if (ih[0] == rep)
			__builtin_memcpy(&p->dport, &ih[4], 2);
		else
			return SL_PARSE_OK;
		p->icmp_echo = 1;
	}
	return SL_PARSE_OK;
}

/*
 * Parse Ethernet, IPv4 or IPv6, and TCP or UDP. Fragments and other L4
 * protocols parse with has_l4 = 0 (addresses only). IPv6 extension headers
 * are not walked: a packet with one is treated as "other protocol".
 * A length of 0 in the IP header (BIG TCP) means "the rest of the skb".
 */
static __always_inline int sl_parse_any(void *skb, bool xdp, __u32 len, struct sl_pkt *p)
{
	__be16 eth_proto;

	if (len < ETH_HLEN_ || sl_load(skb, xdp, 12, &eth_proto, 2))
		return SL_PARSE_MALFORMED;

	if (eth_proto == bpf_htons(ETH_P_IP_)) {
		struct iphdr ip;
		__u32 hl, tot;

		if (sl_load(skb, xdp, ETH_HLEN_, &ip, sizeof(ip)))
			return SL_PARSE_MALFORMED;
		if (ip.version != 4 || ip.ihl < 5)
			return SL_PARSE_MALFORMED;
		hl = ip.ihl * 4;
		tot = bpf_ntohs(ip.tot_len);
		if (tot == 0)
			tot = len - ETH_HLEN_;
		if (tot < hl || ETH_HLEN_ + tot > len)
			return SL_PARSE_MALFORMED;
		sl_addr_from_v4(&p->saddr, ip.saddr);
		sl_addr_from_v4(&p->daddr, ip.daddr);
		p->proto = ip.protocol;
		p->v6 = 0;
		p->l4_off = ETH_HLEN_ + hl;
		if (ip.ihl == 7) {
			__u8 o[2];

			if (!sl_load(skb, xdp, ETH_HLEN_ + 20, o, 2) &&
			    o[0] == SL_DSR_OPT4_TYPE && o[1] == SL_DSR_OPT4_LEN)
				p->dsr = SL_DSR_IN_OPT4;
		}
		if (ip.frag_off & bpf_htons(IP_MF_ | IP_OFFSET_))
			return SL_PARSE_OK;
		return sl_parse_l4(skb, xdp, p, tot - hl);
	}
	if (eth_proto == bpf_htons(ETH_P_IPV6_)) {
		struct ipv6hdr ip6;
		__u32 plen;

		if (sl_load(skb, xdp, ETH_HLEN_, &ip6, sizeof(ip6)))
			return SL_PARSE_MALFORMED;
		if (ip6.version != 6)
			return SL_PARSE_MALFORMED;
		plen = bpf_ntohs(ip6.payload_len);
		if (plen == 0)
			plen = len - ETH_HLEN_ - sizeof(ip6);
		if (ETH_HLEN_ + sizeof(ip6) + plen > len)
			return SL_PARSE_MALFORMED;
		__builtin_memcpy(p->saddr.b, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr.b, &ip6.daddr, 16);
		p->proto = ip6.nexthdr;
		p->v6 = 1;
		p->l4_off = ETH_HLEN_ + sizeof(ip6);
		if (ip6.nexthdr == IPPROTO_DSTOPTS_ && plen >= SL_DSR_EXT6_LEN) {
			__u8 e[4];

			if (!sl_load(skb, xdp, p->l4_off, e, 4) && e[1] == 2 &&
			    e[2] == SL_DSR_OPT6_TYPE && e[3] == SL_DSR_OPT6_DATA) {
				p->dsr = SL_DSR_IN_EXT6;
				p->proto = e[0];
				p->l4_off += SL_DSR_EXT6_LEN;
				plen -= SL_DSR_EXT6_LEN;
			}
		}
		return sl_parse_l4(skb, xdp, p, plen);
	}
	return SL_PARSE_NOT_IP;
}

static __always_inline int sl_parse(struct __sk_buff *skb, struct sl_pkt *p)
{
	return sl_parse_any(skb, false, skb->len, p);
}

static __always_inline int sl_xdp_parse(struct xdp_md *ctx, struct sl_pkt *p)
{
	return sl_parse_any(ctx, true, (__u32)bpf_xdp_get_buff_len(ctx), p);
}

static __always_inline __u32 sl_l4_csum_off(const struct sl_pkt *p)
{
	if (p->icmp_echo)
		return p->l4_off + 2;
	return p->l4_off + (p->proto == IPPROTO_TCP_ ? 16 : 6);
}

/* Where the "port" of @src (or the destination) is: for ICMP echo the
 * identifier, whichever side holds it. */
static __always_inline __u32 sl_port_off(const struct sl_pkt *p, bool src)
{
	if (p->icmp_echo)
		return p->l4_off + 4;
	return p->l4_off + (src ? 0 : 2);
}

/*
 * Replace the source (@src) or destination address and port of a parsed
 * TCP/UDP packet (or ICMP echo: the identifier), with the IP and L4
 * checksums. A UDP/IPv4 checksum of 0 ("none") stays 0
 * (BPF_F_MARK_MANGLED_0). The ICMPv4 checksum has no pseudo header.
 * Updates @p. Returns 0 or a negative error from a helper.
 */
static __always_inline int sl_rewrite(struct __sk_buff *skb, struct sl_pkt *p, bool src,
				      const union sl_addr *addr, __be16 port)
{
	__u32 csum_off = sl_l4_csum_off(p);
	__u64 l4f = p->proto == IPPROTO_UDP_ ? BPF_F_MARK_MANGLED_0 : 0;
	union sl_addr *old = src ? &p->saddr : &p->daddr;
	__be16 *old_port = src ? &p->sport : &p->dport;
	union sl_addr new_addr = *addr;
	int err;

	if (!p->v6) {
		__u32 off = ETH_HLEN_ + (src ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr));
		__be32 o = old->w[3], n = new_addr.w[3];

		if (o != n) {
			if (!p->icmp_echo) {
				err = bpf_l4_csum_replace(skb, csum_off, o, n, l4f | BPF_F_PSEUDO_HDR | 4);
				if (err)
					return err;
			}
			err = bpf_l3_csum_replace(skb, ETH_HLEN_ + offsetof(struct iphdr, check), o, n, 4);
			if (err)
				return err;
			err = bpf_skb_store_bytes(skb, off, &n, 4, 0);
			if (err)
				return err;
		}
	} else if (!sl_addr_eq(old, &new_addr)) {
		__u32 off = ETH_HLEN_ + (src ? offsetof(struct ipv6hdr, saddr) : offsetof(struct ipv6hdr, daddr));
		union sl_addr o = *old;
		__s64 diff = bpf_csum_diff(o.w, 16, new_addr.w, 16, 0);

		if (diff < 0)
			return (int)diff;
		err = bpf_l4_csum_replace(skb, csum_off, 0, (__u64)diff, l4f | BPF_F_PSEUDO_HDR);
		if (err)
			return err;
		err = bpf_skb_store_bytes(skb, off, new_addr.b, 16, 0);
		if (err)
			return err;
	}
	*old = new_addr;

	if (*old_port != port) {
		err = bpf_l4_csum_replace(skb, csum_off, *old_port, port, l4f | 2);
		if (err)
			return err;
		err = bpf_skb_store_bytes(skb, sl_port_off(p, src), &port, 2, 0);
		if (err)
			return err;
		*old_port = port;
	}
	return 0;
}

/* Ethernet destination and source, for delivery into a pod. */
static __always_inline int sl_set_macs(struct __sk_buff *skb, const __u8 *dst, const __u8 *src)
{
	__u8 h[2 * ETH_ALEN_];

	__builtin_memcpy(h, dst, ETH_ALEN_);
	__builtin_memcpy(h + ETH_ALEN_, src, ETH_ALEN_);
	return bpf_skb_store_bytes(skb, 0, h, sizeof(h), 0);
}

#endif /* SLUICE_LIB_PKT_H */
