/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Helpers for the 16-byte address form (union sl_addr, common.h), shared
 * by every attach point.
 */
#ifndef SLUICE_LIB_ADDR_H
#define SLUICE_LIB_ADDR_H

#include "../include/common.h"

static __always_inline void sl_addr_from_v4(union sl_addr *a, __be32 ip4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0x0000ffff);
	a->w[3] = ip4;
}

static __always_inline bool sl_addr_is_v4(const union sl_addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0x0000ffff);
}

static __always_inline bool sl_addr_is_loopback(const union sl_addr *a)
{
	if (sl_addr_is_v4(a))
		return (bpf_ntohl(a->w[3]) >> 24) == 127;
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == 0 &&
	       a->w[3] == bpf_htonl(1);
}

static __always_inline bool sl_addr_eq(const union sl_addr *a, const union sl_addr *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] &&
	       a->w[2] == b->w[2] && a->w[3] == b->w[3];
}

static __always_inline bool sl_addr_is_zero(const union sl_addr *a)
{
	return (a->w[0] | a->w[1] | a->w[2] | a->w[3]) == 0;
}

#endif /* SLUICE_LIB_ADDR_H */
