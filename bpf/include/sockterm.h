/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Socket termination, layout version 1: what the socket iterators report
 * back to userspace, one record per matching socket, and the filter they
 * are loaded with.
 */
#ifndef SLUICE_SOCKTERM_H
#define SLUICE_SOCKTERM_H

#include "common.h"

/* Filter, set by the loader (read-only data). */
struct sl_term_filter {
	union sl_addr dst;	/* network order; IPv4 mapped */
	__be16 dport;		/* network order; 0 = any port */
	__u8  dry_run;		/* 1 = report only */
	__u8  mode;		/* SL_TERM_BY_* */
	__u32 pad2;
};

/* By destination (the filter's dst/dport), or by service backend: sockets
 * whose record says they went through a frontend, and whose destination is
 * a backend that left it (the doomed map). */
#define SL_TERM_BY_DST		0
#define SL_TERM_BY_SERVICE	1

struct sl_term_doomed_key {
	__u32 rev_nat_id;	/* host order */
	__be16 port;		/* backend port, network order */
	__u16 pad;
	union sl_addr addr;	/* backend address, network order */
};

/* One matching socket, written to the iterator's output. */
struct sl_term_record {
	union sl_addr src;	/* network order */
	union sl_addr dst;	/* network order */
	__u16 sport;		/* host order (the kernel keeps the local port so) */
	__be16 dport;		/* network order */
	__u8  proto;		/* IPPROTO_TCP or IPPROTO_UDP */
	__u8  state;		/* TCP state (connected UDP: TCP_ESTABLISHED) */
	__u8  destroyed;	/* 1 if bpf_sock_destroy() succeeded */
	__u8  pad;
	__s32 err;		/* bpf_sock_destroy()'s result, 0 in a dry run */
	__u32 rev_nat_id;	/* the frontend the socket went through, or 0 */
	__u32 pad2;
};

#endif /* SLUICE_SOCKTERM_H */
