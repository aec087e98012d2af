/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Service lookup and backend selection, shared by every attach point.
 * Each helper takes plain values so that a test program can call it directly.
 */
#ifndef SLUICE_LIB_LB_H
#define SLUICE_LIB_LB_H

#include "../include/common.h"
#include "../include/lb.h"
#include "../include/metrics.h"
#include "addr.h"
#include "maglev.h"

/* Set by the loader: the node's own network namespace. Loopback addresses
 * reach NodePorts only from there; in a pod, 127.0.0.1 is the pod itself. */
const volatile __u64 sl_host_netns_cookie = 0;

/*
 * Find the master entry of the frontend the destination names. On success
 * @key is left pointing at the frontend (its scope and address as stored),
 * so that slot lookups can reuse it.
 */
static __always_inline struct sl_svc_val *
sl_lb_lookup_frontend(struct sl_svc_key *key, __u64 netns_cookie)
{
	struct sl_svc_val *master;
	union sl_addr dst = key->addr;

	key->slot = 0;
	key->scope = SL_SCOPE_VIP;
	key->pad = 0;
	master = bpf_map_lookup_elem(&sl_lb_svc_v1, key);
	if (master)
		return master;

	/* NodePort: any address of this node, or loopback from the node. */
	if (!bpf_map_lookup_elem(&sl_node_addr_v1, &dst) &&
	    !(sl_addr_is_loopback(&dst) && netns_cookie == sl_host_netns_cookie))
		return NULL;

	/* The wildcard key keeps the family: ::ffff:0.0.0.0 or ::. */
	key->addr.w[0] = 0;
	key->addr.w[1] = 0;
	if (!sl_addr_is_v4(&dst))
		key->addr.w[2] = 0;
	key->addr.w[3] = 0;
	key->scope = SL_SCOPE_NODEPORT;
	master = bpf_map_lookup_elem(&sl_lb_svc_v1, key);
	if (!master)
		key->addr = dst;
	return master;
}

/*
 * The one backend selection of every path. @per_packet: the caller has a
 * packet, and @flow_hash is its 5-tuple's sl_maglev_flow_hash(); false at
 * the socket layer.
 *
 * Order: ClientIP affinity (if the frontend has it and the client's entry
 * is fresh and its backend still active), then Maglev (per-packet paths,
 * frontends with SL_SVC_F_MAGLEV and a table), else a random slot.
 * Returns 0 and fills @be and @be_id, or a negative errno for the caller
 * to report.
 */
static __always_inline int
sl_lb_choose(struct sl_svc_key *key, const struct sl_svc_val *master,
	     bool per_packet, __u32 flow_hash, __u64 client,
	     struct sl_backend *be, __u32 *be_id)
{
	struct sl_affinity_key akey = {};
	struct sl_affinity_val *aval, anew = {};
	struct sl_svc_val *slot;
	struct sl_backend *b;
	__u32 count = master->count;
	__u32 id = 0;
	__u64 now = 0;

	if (count == 0) {
		sl_count(SL_M_REJECT_NO_BACKEND);
		return -ECONNREFUSED_;
	}

	if (master->flags & SL_SVC_F_AFFINITY) {
		akey.client = client;
		akey.rev_nat_id = master->rev_nat_id;
		now = bpf_ktime_get_ns();
		aval = bpf_map_lookup_elem(&sl_lb_aff_v1, &akey);
		if (aval && now - aval->last_used_ns <=
				(__u64)master->affinity_timeout * 1000000000ULL) {
			struct sl_affinity_match_key mkey = {
				.backend_id = aval->backend_id,
				.rev_nat_id = master->rev_nat_id,
			};

			if (bpf_map_lookup_elem(&sl_lb_affm_v1, &mkey)) {
				b = bpf_map_lookup_elem(&sl_lb_be_v1, &mkey.backend_id);
				if (b) {
					aval->last_used_ns = now;
					*be = *b;
					*be_id = mkey.backend_id;
					sl_count(SL_M_AFFINITY_HIT);
					return 0;
				}
			}
		}
	}

	if (per_packet && (master->flags & SL_SVC_F_MAGLEV)) {
		__u32 *mid = sl_maglev_slot(&master->rev_nat_id, flow_hash);

		b = mid ? bpf_map_lookup_elem(&sl_lb_be_v1, mid) : NULL;
		if (b) {
			id = *mid;
			sl_count(SL_M_MAGLEV_PICK);
			goto found;
		}
		/* No table (yet), or a slot past its end: still serve. */
		sl_count(SL_M_MAGLEV_FALLBACK);
	}

	key->slot = (bpf_get_prandom_u32() % count) + 1;
	slot = bpf_map_lookup_elem(&sl_lb_svc_v1, key);
	key->slot = 0;
	if (!slot) {
		sl_count(SL_M_REJECT_BACKEND_MISSING);
		return -ECONNREFUSED_;
	}
	b = bpf_map_lookup_elem(&sl_lb_be_v1, &slot->backend_id);
	if (!b) {
		sl_count(SL_M_REJECT_BACKEND_MISSING);
		return -ECONNREFUSED_;
	}
	id = slot->backend_id;
found:
	*be = *b;
	*be_id = id;

	if (master->flags & SL_SVC_F_AFFINITY) {
		anew.last_used_ns = now;
		anew.backend_id = id;
		bpf_map_update_elem(&sl_lb_aff_v1, &akey, &anew, BPF_ANY);
	}
	return 0;
}

/*
 * Socket layer (connect, sendmsg): random or ClientIP affinity. There is no
 * 5-tuple at connect (the source port may not be bound yet, and the flow's
 * packets never pass a tc program of ours on the socket path), so Maglev
 * does not apply; a frontend flagged SL_SVC_F_MAGLEV is balanced at random
 * here and by Maglev on the per-packet paths.
 */
static __always_inline int
sl_lb_select_backend(struct sl_svc_key *key, const struct sl_svc_val *master,
		     __u64 client, struct sl_backend *be, __u32 *be_id)
{
	return sl_lb_choose(key, master, false, 0, client, be, be_id);
}

/*
 * sl_lb_pick - backend selection for the per-packet paths (pod devices;
 * the node's external devices for NodePort traffic).
 * @key:	the frontend's service key, as sl_lb_lookup_frontend() left it
 *		(slot is used as scratch and left 0)
 * @master:	its master entry
 * @flow_hash:	sl_maglev_flow_hash() of the packet's 5-tuple as it arrived
 *		(before any translation); every node computes the same
 *		value, so every node picks the same backend for the flow
 * @client:	the client for ClientIP affinity (see sl_ct_client())
 * @be, @be_id:	filled on success
 *
 * Maglev when the master entry has SL_SVC_F_MAGLEV, random otherwise;
 * affinity first when the frontend has it. Returns 0, or -ECONNREFUSED_
 * with the reason counted (no backend, a slot naming a missing backend).
 */
static __always_inline int
sl_lb_pick(struct sl_svc_key *key, const struct sl_svc_val *master,
	   __u32 flow_hash, __u64 client,
	   struct sl_backend *be, __u32 *be_id)
{
	return sl_lb_choose(key, master, true, flow_hash, client, be, be_id);
}

/* Remember, for this socket, that @be stands for the frontend in @key. */
static __always_inline void
sl_lb_record_sock_revnat(__u64 cookie, const struct sl_backend *be,
			 const union sl_addr *vip, __be16 vport, __u32 rev_nat_id)
{
	struct sl_sock_revnat_key k = {
		.cookie = cookie,
		.addr = be->addr,
		.port = be->port,
	};
	struct sl_sock_revnat_val v = {
		.addr = *vip,
		.port = vport,
		.rev_nat_id = rev_nat_id,
	};
	struct sl_sock_revnat_val *old;

	old = bpf_map_lookup_elem(&sl_lb_skrn_v1, &k);
	if (old && old->rev_nat_id == rev_nat_id && old->port == vport)
		return;
	if (bpf_map_update_elem(&sl_lb_skrn_v1, &k, &v, BPF_ANY))
		sl_count(SL_M_REVNAT_MAP_FULL);
}

static __always_inline struct sl_sock_revnat_val *
sl_lb_lookup_sock_revnat(__u64 cookie, const union sl_addr *addr, __be16 port)
{
	struct sl_sock_revnat_key k = {
		.cookie = cookie,
		.addr = *addr,
		.port = port,
	};

	return bpf_map_lookup_elem(&sl_lb_skrn_v1, &k);
}

#endif /* SLUICE_LIB_LB_H */
