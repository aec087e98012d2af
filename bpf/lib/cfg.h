/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Reading the node configuration (include/cfg.h): CIDR membership. */
#ifndef SLUICE_LIB_CFG_H
#define SLUICE_LIB_CFG_H

#include "../include/common.h"
#include "../include/cfg.h"
#include "addr.h"

static __always_inline struct sl_node_cfg *sl_cfg(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sl_cfg_v1, &zero);
}

/* Network-order mask of word @word (0..3) of a /@prefix over 128 bits. */
static __always_inline __be32 sl_prefix_mask(__u32 prefix, __u32 word)
{
	__s32 bits = (__s32)prefix - (__s32)(word * 32);

	if (bits <= 0)
		return 0;
	if (bits >= 32)
		return 0xffffffff;
	return bpf_htonl(0xffffffffU << (32 - bits));
}

/* A CIDR matches only addresses of its own family, even at /0. */
static __always_inline bool sl_cidr_match(const struct sl_cidr *c, const union sl_addr *a)
{
	__u32 plen = c->prefix_len;

	if (plen > 128 || sl_addr_is_v4(&c->addr) != sl_addr_is_v4(a))
		return false;
	return ((a->w[0] ^ c->addr.w[0]) & sl_prefix_mask(plen, 0)) == 0 &&
	       ((a->w[1] ^ c->addr.w[1]) & sl_prefix_mask(plen, 1)) == 0 &&
	       ((a->w[2] ^ c->addr.w[2]) & sl_prefix_mask(plen, 2)) == 0 &&
	       ((a->w[3] ^ c->addr.w[3]) & sl_prefix_mask(plen, 3)) == 0;
}

static __always_inline bool sl_in_pod_cidrs(const struct sl_node_cfg *cfg, const union sl_addr *a)
{
#pragma unroll
	for (int i = 0; i < SL_CFG_POD_CIDRS; i++) {
		if (i < cfg->n_pod_cidrs && sl_cidr_match(&cfg->pod_cidrs[i], a))
			return true;
	}
	return false;
}

static __always_inline bool sl_in_no_masq_cidrs(const struct sl_node_cfg *cfg, const union sl_addr *a)
{
#pragma unroll
	for (int i = 0; i < SL_CFG_NO_MASQ_CIDRS; i++) {
		if (i < cfg->n_no_masq_cidrs && sl_cidr_match(&cfg->no_masq_cidrs[i], a))
			return true;
	}
	return false;
}

#endif /* SLUICE_LIB_CFG_H */
