/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Masquerade at the node's external devices (include/nat.h): pod sources
 * leaving the node become the node's address and a port from the
 * configured range; replies get the pod's address and port back.
 */
#ifndef SLUICE_LIB_NAT_H
#define SLUICE_LIB_NAT_H

#include "../include/common.h"
#include "../include/cfg.h"
#include "../include/ct.h"
#include "../include/metrics.h"
#include "../include/nat.h"
#include "cfg.h"
#include "ct.h"
#include "pkt.h"

static __always_inline bool sl_nat_alive(const struct sl_nat_val *v, __u64 now)
{
	return now < v->last_seen_ns + (__u64)v->lifetime_s * 1000000000ULL;
}

static __always_inline void sl_nat_touch(struct sl_nat_val *v, const struct sl_pkt *p, __u64 now)
{
	v->last_seen_ns = now;
	if (sl_tcp_closing(p))
		sl_mark_closing(&v->flags, &v->lifetime_s);
}

/* The NAT key of @p's tuple as it is, in direction @dir. */
static __always_inline struct sl_nat_key sl_nat_key_of(const struct sl_pkt *p, __u8 dir)
{
	struct sl_nat_key k = {
		.saddr = p->saddr,
		.daddr = p->daddr,
		.sport = p->sport,
		.dport = p->dport,
		.proto = p->proto,
		.dir = dir,
	};

	return k;
}

/*
 * Find or allocate the source (node address, port) of the flow in @p and
 * write it into @out. Returns SL_M_SNAT, or the drop reason.
 */
static __always_inline enum sl_metric
sl_snat_lookup(const struct sl_node_cfg *cfg, const struct sl_pkt *p,
	       const union sl_addr *masq, struct sl_nat_val *out, __u16 flags)
{
	struct sl_nat_key ok = sl_nat_key_of(p, SL_NAT_DIR_OUT);
	struct sl_nat_key ik = {
		.saddr = p->daddr,
		.daddr = *masq,
		.sport = p->dport,
		.proto = p->proto,
		.dir = SL_NAT_DIR_IN,
	};
	struct sl_nat_val *ov, *iv, nv = {};
	__u64 now = bpf_ktime_get_ns();
	__u32 min = cfg->snat_port_min, max = cfg->snat_port_max, range, start;
	int i;

	ov = bpf_map_lookup_elem(&sl_snat_v1, &ok);
	if (ov && sl_nat_alive(ov, now) && sl_addr_eq(&ov->addr, masq)) {
		/* Still ours only if the way back still points here: the
		 * ingress entry may have been evicted and its port reused. */
		ik.dport = ov->port;
		iv = bpf_map_lookup_elem(&sl_snat_v1, &ik);
		if (iv && iv->port == p->sport && sl_addr_eq(&iv->addr, &p->saddr)) {
			sl_nat_touch(ov, p, now);
			iv->last_seen_ns = now;
			*out = *ov;
			return SL_M_SNAT;
		}
	}

	if (min == 0 || max < min)
		return SL_M_DROP_SNAT_PORTS_EXHAUSTED;
	range = max - min + 1;
	start = bpf_get_prandom_u32() % range;

	nv.addr = p->saddr;
	nv.port = p->sport;
	nv.flags = flags;
	nv.lifetime_s = p->proto == IPPROTO_TCP_ ? SL_CT_LIFETIME_TCP_S : SL_CT_LIFETIME_OTHER_S;
	nv.last_seen_ns = now;
	if (sl_tcp_closing(p))
		sl_mark_closing(&nv.flags, &nv.lifetime_s);
	/* Consecutive ports from a random start: a taken port is one whose
	 * ingress entry exists (BPF_NOEXIST) and is alive. */
	for (i = 0; i < SL_SNAT_TRIES; i++) {
		ik.dport = bpf_htons((__u16)(min + (start + i) % range));
		if (!bpf_map_update_elem(&sl_snat_v1, &ik, &nv, BPF_NOEXIST))
			break;
		iv = bpf_map_lookup_elem(&sl_snat_v1, &ik);
		if (iv && !sl_nat_alive(iv, now)) {
			bpf_map_delete_elem(&sl_snat_v1, &ik);
			if (!bpf_map_update_elem(&sl_snat_v1, &ik, &nv, BPF_NOEXIST))
				break;
		}
	}
	if (i == SL_SNAT_TRIES)
		return SL_M_DROP_SNAT_PORTS_EXHAUSTED;

	nv.addr = *masq;
	nv.port = ik.dport;
	if (bpf_map_update_elem(&sl_snat_v1, &ok, &nv, BPF_ANY)) {
		bpf_map_delete_elem(&sl_snat_v1, &ik);
		return SL_M_DROP_NAT_MAP_FULL;
	}
	*out = nv;
	return SL_M_SNAT;
}

/* Leaving the node: masquerade pod sources unless the destination is exempt. */
static __always_inline int sl_host_out(struct __sk_buff *skb)
{
	struct sl_pkt p = {};
	struct sl_node_cfg *cfg;
	struct sl_nat_val nat = {};
	union sl_addr masq;
	enum sl_metric m;
	int r = sl_parse(skb, &p);

	if (r == SL_PARSE_NOT_IP)
		return TC_ACT_OK;
	if (r != SL_PARSE_OK) {
		/* The node's own traffic is never dropped by this parser. */
		sl_count(SL_M_HOST_MALFORMED_PASSED);
		return TC_ACT_OK;
	}
	if (p.has_l4) {
		/* A reply of a backend in the node's own network namespace to a
		 * client outside: the frontend goes back as its source. */
		__u16 cf = 0;

		r = sl_ct_reply(skb, &p, &cf);
		if (r == SL_XLATE_DROP)
			return TC_ACT_SHOT;
		if (r == SL_XLATE_DONE)
			return TC_ACT_OK;
	}
	cfg = sl_cfg();
	if (!cfg || !(cfg->flags & SL_CFG_F_MASQUERADE) || !(p.has_l4 || p.icmp_echo))
		return TC_ACT_OK;
	/* An echo reply leaving the node answers a request that came in: not
	 * a flow the pod started. */
	if (p.icmp_echo && !p.sport)
		return TC_ACT_OK;
	if (!sl_in_pod_cidrs(cfg, &p.saddr) || sl_in_no_masq_cidrs(cfg, &p.daddr))
		return TC_ACT_OK;
	masq = p.v6 ? cfg->masq_addr6 : cfg->masq_addr4;
	if (sl_addr_is_zero(&masq) || (!p.v6 && masq.w[3] == 0)) {
		sl_count(SL_M_SNAT_NO_ADDR);
		return TC_ACT_OK;
	}
	m = sl_snat_lookup(cfg, &p, &masq, &nat, 0);
	if (m != SL_M_SNAT) {
		sl_count(m);
		return TC_ACT_SHOT;
	}
	if (sl_rewrite(skb, &p, true, &nat.addr, nat.port)) {
		sl_count(SL_M_DROP_REWRITE_FAILED);
		return TC_ACT_SHOT;
	}
	sl_count(SL_M_SNAT);
	return TC_ACT_OK;
}

#endif /* SLUICE_LIB_NAT_H */
