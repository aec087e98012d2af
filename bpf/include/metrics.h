/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Datapath counters, layout version 2: a per-CPU array indexed by SL_M_*.
 * Every reject and every drop has its own reason here; the CLI names them
 * (crates/sluice-datapath/src/lbmaps.rs, METRIC_NAMES, same order).
 * Version 2 raised max_entries from 16 to 64 (the pod and host paths).
 */
#ifndef SLUICE_METRICS_H
#define SLUICE_METRICS_H

#include "common.h"

enum sl_metric {
	SL_M_TRANSLATED_CONNECT = 0,	/* connect rewritten to a backend */
	SL_M_TRANSLATED_SENDMSG = 1,	/* unconnected UDP send rewritten */
	SL_M_REVNAT_RECVMSG = 2,	/* recvmsg source rewritten to the VIP */
	SL_M_REVNAT_GETPEERNAME = 3,	/* getpeername rewritten to the VIP */
	SL_M_REJECT_NO_BACKEND = 4,	/* service has no active backend */
	SL_M_REJECT_BACKEND_MISSING = 5,/* slot names a backend not in the map */
	SL_M_AFFINITY_HIT = 6,		/* ClientIP affinity reused a backend */
	SL_M_REVNAT_MAP_FULL = 7,	/* could not record socket reverse NAT */
	SL_M_FAMILY_MISMATCH = 8,	/* IPv6 backend for an IPv4 socket */
	SL_M_SOCK_STORAGE_FULL = 9,	/* could not record a socket's service */
	/* Pod devices and the node's external devices (tc). */
	SL_M_POD_REDIRECT_PEER = 10,	/* pod to local pod, bpf_redirect_peer */
	SL_M_SVC_DNAT = 11,		/* packet to a frontend sent to a backend */
	SL_M_SVC_REV_DNAT = 12,		/* reply's source restored to the frontend */
	SL_M_SNAT = 13,			/* pod source masqueraded */
	SL_M_REV_SNAT = 14,		/* reply's destination restored to the pod */
	SL_M_CT_REPICK = 15,		/* flow's backend gone: picked again */
	SL_M_SNAT_NO_ADDR = 16,		/* masquerade on, no address of that family: passed */
	SL_M_DROP_MALFORMED = 17,	/* truncated or inconsistent headers */
	SL_M_DROP_NO_BACKEND = 18,	/* packet to a frontend with no backend */
	SL_M_DROP_BACKEND_MISSING = 19,	/* slot names a backend not in the map */
	SL_M_DROP_FAMILY_MISMATCH = 20,	/* backend of the other address family */
	SL_M_DROP_CT_MAP_FULL = 21,	/* could not create a conntrack entry */
	SL_M_DROP_SNAT_PORTS_EXHAUSTED = 22, /* no free source port in the range */
	SL_M_DROP_NAT_MAP_FULL = 23,	/* could not create a NAT entry */
	SL_M_DROP_REWRITE_FAILED = 24,	/* a header or checksum write failed */
	SL_M_HOST_MALFORMED_PASSED = 25,/* unparsable at a node device: passed untouched */
	SL_M_MAGLEV_PICK = 26,		/* backend chosen by the frontend's Maglev table */
	SL_M_MAGLEV_FALLBACK = 27,	/* Maglev frontend without a usable table: random */
	SL_M_MAX = 64,
};

struct sl_metric_val {
	__u64 count;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct sl_metric_val);
	__uint(max_entries, SL_M_MAX);
} sl_metrics_v2 SEC(".maps");

static __always_inline void sl_count(enum sl_metric m)
{
	__u32 key = m;
	struct sl_metric_val *v = bpf_map_lookup_elem(&sl_metrics_v2, &key);

	if (v)
		v->count++;
}

#endif /* SLUICE_METRICS_H */
