/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Maglev lookup tables, layout version 1.
 *
 * One table per frontend that uses Maglev (SL_SVC_F_MAGLEV in its master
 * entry): an array of M backend ids, M prime, computed by the agent
 * (crates/sluice-lb/src/maglev.rs). The outer map goes from the frontend's
 * id (rev_nat_id) to its table.
 *
 * Why a hash of maps: a table is M entries (64 KiB at the default 16381);
 * a flat array of (frontend, slot) would have to be sized for every
 * possible frontend up front, and a hash of (frontend, slot) keys would
 * cost a hash lookup per packet into a map of millions of entries. With
 * one inner array per frontend, a new table is built off to the side and
 * published with one write to the outer map, and a deleted frontend frees
 * its table at once.
 *
 * M is fixed per agent run: the loader sets the inner template's size and
 * the programs' sl_maglev_m from --maglev-table-size. The template carries
 * BPF_F_INNER_MAP so that tables of another size can still be stored: after
 * a restart with a new M, the agent rewrites every table, and until then a
 * lookup past the end of an old table falls back to random selection
 * (counted as maglev_fallback).
 */
#ifndef SLUICE_MAGLEV_H
#define SLUICE_MAGLEV_H

#include "common.h"

#define SL_LB_MAGLEV_MAX	(1 << 16)	/* frontends using Maglev */
#define SL_MAGLEV_DEFAULT_SIZE	16381		/* overridden by the loader */

struct sl_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);		/* slot, host order */
	__type(value, __u32);		/* backend id, host order; 0: none */
	__uint(max_entries, SL_MAGLEV_DEFAULT_SIZE);
	__uint(map_flags, BPF_F_INNER_MAP);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32);		/* frontend id (rev_nat_id), host order */
	__uint(max_entries, SL_LB_MAGLEV_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__array(values, struct sl_maglev_inner);
} sl_lb_maglev_v1 SEC(".maps");

#endif /* SLUICE_MAGLEV_H */
