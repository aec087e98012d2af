/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Common definitions for every Sluice datapath object.
 *
 * Layout rules for anything that crosses into userspace: fixed-width fields,
 * explicit padding, no bitfields, byte order stated per field. The Rust side
 * uses the skeleton types generated from this BTF, so there is one definition.
 */
#ifndef SLUICE_COMMON_H
#define SLUICE_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET		2
#define AF_INET6	10
#define IPPROTO_TCP_	6
#define IPPROTO_UDP_	17

#define ECONNREFUSED_	111

/* Verdicts of cgroup sock_addr programs. */
#define SYS_REJECT	0
#define SYS_PROCEED	1

/*
 * Addresses are kept in one 16-byte form for both families so that one map
 * serves IPv4 and IPv6: IPv4 is stored as the IPv4-mapped IPv6 address
 * ::ffff:a.b.c.d. Network byte order throughout.
 */
union sl_addr {
	__u8  b[16];
	__u32 w[4];
};

#endif /* SLUICE_COMMON_H */
