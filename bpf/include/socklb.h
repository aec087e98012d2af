/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The socket-to-service record, shared by the socket hooks (which write it)
 * and the socket iterators (which read it). Layout version 1. */
#ifndef SLUICE_SOCKLB_H
#define SLUICE_SOCKLB_H

#include "common.h"

/*
 * Which service a connected socket went through, kept with the socket
 * itself (socket local storage): it lives exactly as long as the socket and
 * survives agent restarts. The socket's own destination is the backend.
 * The socket iterators read it to end the sockets of a backend that left.
 */
struct sl_sock_lb {
	__u32 rev_nat_id;	/* host order; the frontend's id */
	__u32 backend_id;	/* host order; informational */
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sl_sock_lb);
} sl_sock_lb_v1 SEC(".maps");

#endif /* SLUICE_SOCKLB_H */
