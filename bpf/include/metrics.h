/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Datapath counters, layout version 1: a per-CPU array indexed by SL_M_*.
 * Every reject has its own reason here; the CLI names them.
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
	SL_M_MAX = 16,
};

struct sl_metric_val {
	__u64 count;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct sl_metric_val);
	__uint(max_entries, SL_M_MAX);
} sl_metrics_v1 SEC(".maps");

static __always_inline void sl_count(enum sl_metric m)
{
	__u32 key = m;
	struct sl_metric_val *v = bpf_map_lookup_elem(&sl_metrics_v1, &key);

	if (v)
		v->count++;
}

#endif /* SLUICE_METRICS_H */
