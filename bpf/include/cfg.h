/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Runtime node configuration of the pod and host datapaths, layout
 * version 1: one entry of an array map, so that the agent can change it
 * without reloading a program. An all-zero entry (the state right after
 * loading) means: no masquerade, no pod CIDR.
 */
#ifndef SLUICE_CFG_H
#define SLUICE_CFG_H

#include "common.h"

#define SL_CFG_POD_CIDRS	4	/* both families together */
#define SL_CFG_NO_MASQ_CIDRS	8	/* both families together */

/* Flags (host order). */
#define SL_CFG_F_MASQUERADE	(1 << 0)

/*
 * A CIDR in the 16-byte form: an IPv4 prefix /n is stored as the
 * IPv4-mapped address with prefix_len 96 + n, so that an IPv4 CIDR can
 * never match an IPv6 address and the other way round.
 */
struct sl_cidr {
	union sl_addr addr;	/* network order, host bits zero */
	__u32 prefix_len;	/* 0..128 over the 16-byte form, host order */
};

struct sl_node_cfg {
	union sl_addr masq_addr4;	/* IPv4 mapped; zero: none */
	union sl_addr masq_addr6;	/* zero: none */
	struct sl_cidr pod_cidrs[SL_CFG_POD_CIDRS];
	struct sl_cidr no_masq_cidrs[SL_CFG_NO_MASQ_CIDRS];
	__u32 flags;			/* SL_CFG_F_*, host order */
	__u16 snat_port_min;		/* host order, inclusive */
	__u16 snat_port_max;		/* host order, inclusive */
	__u8  n_pod_cidrs;		/* entries used in pod_cidrs */
	__u8  n_no_masq_cidrs;		/* entries used in no_masq_cidrs */
	__u16 pad;
	__u32 pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct sl_node_cfg);
	__uint(max_entries, 1);
} sl_cfg_v1 SEC(".maps");

#endif /* SLUICE_CFG_H */
