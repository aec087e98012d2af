/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Per-packet service translation with connection tracking (include/ct.h):
 * the first packet of a flow to a frontend picks a backend with
 * sl_lb_pick() (lib/lb.h: Maglev or random, per frontend); later packets
 * follow the conntrack entry, so a flow keeps its backend while the
 * service changes, and picks again only when that backend no longer exists.
 */
#ifndef SLUICE_LIB_CT_H
#define SLUICE_LIB_CT_H

#include "../include/common.h"
#include "../include/ct.h"
#include "../include/metrics.h"
#include "lb.h"
#include "pkt.h"

/* Results of the translation steps. */
#define SL_XLATE_PASS	0	/* nothing to translate */
#define SL_XLATE_DONE	1	/* translated; the sl_pkt holds the new tuple */
#define SL_XLATE_DROP	2	/* drop; the reason is counted */

/* Not a network namespace: loopback never reaches a NodePort from here. */
#define SL_NETNS_NONE	(~0ULL)

static __always_inline bool sl_ct_alive(const struct sl_ct_val *v, __u64 now)
{
	return now < v->last_seen_ns + (__u64)v->lifetime_s * 1000000000ULL;
}

static __always_inline bool sl_tcp_closing(const struct sl_pkt *p)
{
	return p->proto == IPPROTO_TCP_ && (p->tcp_flags & (TCP_FLAG_FIN_ | TCP_FLAG_RST_));
}

/* FIN or RST seen: the entry (conntrack or NAT, by its flags and lifetime)
 * lives SL_CT_LIFETIME_CLOSE_S more after its last packet. */
static __always_inline void sl_mark_closing(__u16 *flags, __u32 *lifetime_s)
{
	if (*flags & SL_CT_F_CLOSING)
		return;
	*flags |= SL_CT_F_CLOSING;
	*lifetime_s = SL_CT_LIFETIME_CLOSE_S;
}

static __always_inline void sl_ct_set_closing(struct sl_ct_val *v)
{
	sl_mark_closing(&v->flags, &v->lifetime_s);
}

static __always_inline void sl_ct_touch(struct sl_ct_val *v, const struct sl_pkt *p, __u64 now)
{
	v->last_seen_ns = now;
	if (sl_tcp_closing(p))
		sl_ct_set_closing(v);
}

/* The conntrack key of @p's tuple as it is, in direction @dir. */
static __always_inline struct sl_ct_key sl_ct_key_of(const struct sl_pkt *p, __u8 dir)
{
	struct sl_ct_key k = {
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
 * The client as session affinity sees it. The socket path uses the client's
 * netns cookie; here only the address is known, so it is folded into a
 * value with the top bit set, which netns cookies (a counter) never reach.
 */
static __always_inline __u64 sl_ct_client(const union sl_addr *a)
{
	return (1ULL << 63) | ((__u64)(a->w[0] ^ a->w[1] ^ a->w[2]) << 32) | a->w[3];
}

/*
 * A reply from a backend (backend -> client): put the frontend back as the
 * source. Used where the reply is first seen: leaving a local backend pod,
 * or entering the client pod from the stack.
 */
static __always_inline int sl_ct_reply(struct __sk_buff *skb, struct sl_pkt *p, __u16 *flags)
{
	struct sl_ct_key rk = sl_ct_key_of(p, SL_CT_DIR_REV);
	struct sl_ct_val *rv;
	union sl_addr vip;
	__be16 vport;

	rv = bpf_map_lookup_elem(&sl_ct_v1, &rk);
	if (!rv)
		return SL_XLATE_PASS;
	vip = rv->nat_addr;
	vport = rv->nat_port;
	*flags = rv->flags;
	rv->last_seen_ns = bpf_ktime_get_ns();
	if (sl_tcp_closing(p)) {
		/* The forward entry closes too: the client may never send
		 * another packet after the backend's RST. */
		struct sl_ct_key fk = {
			.saddr = p->daddr,
			.daddr = vip,
			.sport = p->dport,
			.dport = vport,
			.proto = p->proto,
			.dir = SL_CT_DIR_FWD,
		};
		struct sl_ct_val *fv = bpf_map_lookup_elem(&sl_ct_v1, &fk);

		sl_ct_set_closing(rv);
		if (fv)
			sl_ct_set_closing(fv);
	}
	if (sl_rewrite(skb, p, true, &vip, vport)) {
		sl_count(SL_M_DROP_REWRITE_FAILED);
		return SL_XLATE_DROP;
	}
	sl_count(SL_M_SVC_REV_DNAT);
	return SL_XLATE_DONE;
}

/*
 * The backend of a new flow of @p to the frontend whose master entry is
 * @master (@key as sl_lb_lookup_frontend() left it): count check, Maglev
 * or random pick, family check. Returns SL_XLATE_DONE with @be and @be_id
 * filled, or SL_XLATE_DROP (reason counted).
 */
static __always_inline int sl_ct_choose(const struct sl_pkt *p, struct sl_svc_key *key,
					const struct sl_svc_val *master,
					struct sl_backend *be, __u32 *be_id)
{
	__u32 hash;

	if (master->count == 0) {
		sl_count(SL_M_DROP_NO_BACKEND);
		return SL_XLATE_DROP;
	}
	hash = sl_maglev_flow_hash(&p->saddr, &p->daddr, p->sport, p->dport, p->proto);
	if (sl_lb_pick(key, master, hash, sl_ct_client(&p->saddr), be, be_id)) {
		sl_count(SL_M_DROP_BACKEND_MISSING);
		return SL_XLATE_DROP;
	}
	if (sl_addr_is_v4(&be->addr) == (bool)p->v6) {
		sl_count(SL_M_DROP_FAMILY_MISMATCH);
		return SL_XLATE_DROP;
	}
	return SL_XLATE_DONE;
}

/*
 * Record a new flow of @p (client -> frontend) sent to @be: the reverse
 * entry first (a reply must never find a forward entry's flow without its
 * way back), then the forward one. One key and one value serve both in
 * turn: this also runs in XDP's frame, where the stack is short. Returns
 * SL_XLATE_DONE or SL_XLATE_DROP (counted).
 */
static __always_inline int sl_ct_create(const struct sl_pkt *p, const struct sl_backend *be,
					__u32 be_id, __u32 rev_nat_id, __u16 flags, __u64 now)
{
	struct sl_ct_key k = {
		.saddr = be->addr,
		.daddr = p->saddr,
		.sport = be->port,
		.dport = p->sport,
		.proto = p->proto,
		.dir = SL_CT_DIR_REV,
	};
	struct sl_ct_val v = {
		.nat_addr = p->daddr,
		.nat_port = p->dport,
		.flags = flags,
		.rev_nat_id = rev_nat_id,
		.backend_id = be_id,
		.lifetime_s = p->proto == IPPROTO_TCP_ ? SL_CT_LIFETIME_TCP_S : SL_CT_LIFETIME_OTHER_S,
		.last_seen_ns = now,
		.created_ns = now,
	};

	if (sl_tcp_closing(p))
		sl_ct_set_closing(&v);
	if (bpf_map_update_elem(&sl_ct_v1, &k, &v, BPF_ANY)) {
		sl_count(SL_M_DROP_CT_MAP_FULL);
		return SL_XLATE_DROP;
	}
	v.nat_addr = be->addr;
	v.nat_port = be->port;
	k.saddr = p->saddr;
	k.daddr = p->daddr;
	k.sport = p->sport;
	k.dport = p->dport;
	k.dir = SL_CT_DIR_FWD;
	if (bpf_map_update_elem(&sl_ct_v1, &k, &v, BPF_ANY)) {
		k.saddr = be->addr;
		k.daddr = p->saddr;
		k.sport = be->port;
		k.dport = p->sport;
		k.dir = SL_CT_DIR_REV;
		bpf_map_delete_elem(&sl_ct_v1, &k);
		sl_count(SL_M_DROP_CT_MAP_FULL);
		return SL_XLATE_DROP;
	}
	return SL_XLATE_DONE;
}

/*
 * A new TCP connection (a SYN) that no translation applies to: a reverse
 * entry for its tuple belongs to an earlier, translated flow that used the
 * same addresses and ports (a client that went to a service per packet,
 * then connects straight to the backend, translated at its socket, from the
 * same port). Left there, it would give this connection's replies the
 * service's address. It goes, with its forward partner.
 */
static __always_inline void sl_ct_forget_stale(const struct sl_pkt *p)
{
	struct sl_ct_key rk = {
		.saddr = p->daddr,
		.daddr = p->saddr,
		.sport = p->dport,
		.dport = p->sport,
		.proto = p->proto,
		.dir = SL_CT_DIR_REV,
	};
	struct sl_ct_val *rv;
	struct sl_ct_key fk = {};

	if (p->proto != IPPROTO_TCP_ || (p->tcp_flags & (TCP_FLAG_SYN_ | TCP_FLAG_ACK_)) != TCP_FLAG_SYN_)
		return;
	rv = bpf_map_lookup_elem(&sl_ct_v1, &rk);
	if (!rv)
		return;
	fk.saddr = p->saddr;
	fk.daddr = rv->nat_addr;
	fk.sport = p->sport;
	fk.dport = rv->nat_port;
	fk.proto = p->proto;
	fk.dir = SL_CT_DIR_FWD;
	bpf_map_delete_elem(&sl_ct_v1, &fk);
	bpf_map_delete_elem(&sl_ct_v1, &rk);
	sl_count(SL_M_CT_STALE_REMOVED);
}

/*
 * The live flow of @p (client -> frontend) whose conntrack entry has every
 * flag of @need, if its backend still exists: touched, its flags returned
 * and @be filled. Otherwise 0 (and a re-pick counted when the entry was
 * there but its backend went); -1 when there is no such flow.
 */
static __always_inline int sl_ct_follow(const struct sl_pkt *p, __u16 need, __u64 now,
					struct sl_backend *be)
{
	struct sl_ct_key fk = sl_ct_key_of(p, SL_CT_DIR_FWD);
	struct sl_ct_val *fv = bpf_map_lookup_elem(&sl_ct_v1, &fk);
	struct sl_backend *bp;
	__u32 id;

	if (!fv || !sl_ct_alive(fv, now) || (fv->flags & need) != need)
		return -1;
	id = fv->backend_id;
	bp = bpf_map_lookup_elem(&sl_lb_be_v1, &id);
	if (bp && bp->port == fv->nat_port && sl_addr_eq(&bp->addr, &fv->nat_addr)) {
		sl_ct_touch(fv, p, now);
		*be = *bp;
		return fv->flags;
	}
	sl_count(SL_M_CT_REPICK);
	return -1;
}

/*
 * A packet from a pod (client -> frontend): send it to a backend. Existing
 * flows follow their conntrack entry; new ones (or flows whose backend is
 * gone) pick a backend and get a forward and a reverse entry.
 */
static __always_inline int sl_ct_service(struct __sk_buff *skb, struct sl_pkt *p)
{
	struct sl_svc_key key = {};
	struct sl_svc_val *master;
	struct sl_backend be = {};
	__u32 be_id = 0;
	__u64 now = bpf_ktime_get_ns();

	if (sl_ct_follow(p, 0, now, &be) >= 0)
		goto rewrite;

	key.addr = p->daddr;
	key.dport = p->dport;
	key.proto = p->proto;
	master = sl_lb_lookup_frontend(&key, SL_NETNS_NONE);
	if (!master) {
		sl_ct_forget_stale(p);
		return SL_XLATE_PASS;
	}
	if (sl_ct_choose(p, &key, master, &be, &be_id) != SL_XLATE_DONE ||
	    sl_ct_create(p, &be, be_id, master->rev_nat_id, 0, now) != SL_XLATE_DONE)
		return SL_XLATE_DROP;

rewrite:
	if (sl_rewrite(skb, p, false, &be.addr, be.port)) {
		sl_count(SL_M_DROP_REWRITE_FAILED);
		return SL_XLATE_DROP;
	}
	sl_count(SL_M_SVC_DNAT);
	return SL_XLATE_DONE;
}

#endif /* SLUICE_LIB_CT_H */
