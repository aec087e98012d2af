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
	/* Traffic from outside the node (NodePort, ExternalIP, LB IP). */
	SL_M_NODEPORT_LOCAL = 28,		/* sent to a backend on this node */
	SL_M_NODEPORT_SNAT = 29,		/* sent to a remote backend, source NATed to the node */
	SL_M_NODEPORT_DSR = 30,		/* sent to a remote backend that answers directly */
	SL_M_NODEPORT_REPLY = 31,		/* reply of a remote backend translated back */
	SL_M_DSR_BACKEND = 32,		/* DSR packet taken in for a local backend */
	SL_M_FIB_REDIRECT = 33,		/* forwarded after a FIB lookup */
	SL_M_FIB_PASS = 34,		/* FIB lookup failed: handed to the stack */
	SL_M_DROP_NO_LOCAL_BACKEND = 35,/* externalTrafficPolicy: Local, none here */
	SL_M_DROP_DSR_INSERT = 36,	/* could not add the DSR option */
	SL_M_DROP_NO_NODE_ADDR = 37,	/* remote backend, no node address to SNAT to */
	SL_M_DROP_NAT_ORPHAN = 38,	/* NAT entry without its conntrack entry */
	SL_M_XDP_FORWARD = 39,		/* translated and forwarded at XDP */
	SL_M_XDP_PASS = 40,		/* left to tc (local backend, DSR option, no neighbour) */
	SL_M_ICMP_ERROR_XLATE = 41,		/* ICMP error about a translated flow translated back */
	SL_M_CLUSTERIP_FROM_OUTSIDE = 42,/* ClusterIP-only frontend from outside: passed */
	SL_M_CT_STALE_REMOVED = 43,	/* a new connection replaced an old flow's entries */
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
