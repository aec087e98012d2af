//! The diff: minimal writes, safe ordering, adoption after a restart, and
//! the golden dump from manifests to map entries.

use std::collections::BTreeSet;
use std::net::IpAddr;

use sluice_lb::*;
use sluice_model::{parse_documents, Protocol};

fn be(last: u8, port: u16) -> BackendKey {
    BackendKey { addr: IpAddr::from([198, 18, 1, last]), port, proto: Protocol::TCP }
}

fn fe(last: u8) -> FrontendKey {
    FrontendKey { addr: IpAddr::from([198, 19, 0, last]), port: 80, proto: Protocol::TCP, scope: Scope::Vip }
}

fn desired(vip: u8, backends: &[u8]) -> DesiredFrontend {
    DesiredFrontend {
        key: fe(vip),
        flags: 0,
        affinity_timeout: 0,
        port_name: String::new(),
        backends: backends.iter().map(|b| be(*b, 8080)).collect(),
        serving: backends.iter().map(|b| be(*b, 8080)).collect(),
    }
}

/// The invariants the datapath relies on, checked on the maps' contents.
fn check_consistent(d: &LbDump) {
    let mut referenced = BTreeSet::new();
    for (k, v) in d.services.iter().filter(|(k, _)| k.slot == 0) {
        for slot in 1..=v.count as u16 {
            let s = d.services.get(&SvcKey { frontend: k.frontend, slot }).unwrap_or_else(|| {
                panic!("{}: master counts {} slots, slot {slot} missing", k.frontend, v.count)
            });
            assert!(d.backends.contains_key(&s.backend_id), "slot names missing backend {}", s.backend_id);
            referenced.insert(s.backend_id);
        }
        assert_eq!(d.revnat.get(&v.rev_nat_id), Some(&k.frontend));
    }
    for k in d.services.keys().filter(|k| k.slot > 0) {
        let m = d.services.get(&SvcKey { frontend: k.frontend, slot: 0 }).expect("slot without master");
        assert!(k.slot as u32 <= m.count, "stale slot {} of {}", k.slot, k.frontend);
    }
    let all: BTreeSet<u32> = d.backends.keys().copied().collect();
    assert_eq!(all, referenced, "backends not referenced by any slot");
    // A Maglev frontend with backends has a table naming exactly them; no
    // other frontend has one.
    for (k, v) in d.services.iter().filter(|(k, _)| k.slot == 0) {
        let table = d.maglev.get(&v.rev_nat_id);
        if v.flags & SVC_F_MAGLEV != 0 && v.count > 0 {
            let table = table.unwrap_or_else(|| panic!("{}: Maglev frontend without a table", k.frontend));
            let in_table: BTreeSet<u32> = table.iter().copied().collect();
            let in_slots: BTreeSet<u32> = (1..=v.count as u16).map(|s| d.services[&SvcKey { frontend: k.frontend, slot: s }].backend_id).collect();
            assert_eq!(in_table, in_slots, "{}: table and slots disagree", k.frontend);
        } else {
            assert!(table.is_none(), "{}: table without Maglev", k.frontend);
        }
    }
    let ids: BTreeSet<u32> = d.services.iter().filter(|(k, _)| k.slot == 0).map(|(_, v)| v.rev_nat_id).collect();
    assert!(d.maglev.keys().all(|id| ids.contains(id)), "table of a deleted frontend");
}

/// What the datapath may observe between any two writes: every counted
/// slot exists and names a backend that exists.
fn check_safe(d: &LbDump, after: &MapOp) {
    for (k, v) in d.services.iter().filter(|(k, _)| k.slot == 0) {
        for slot in 1..=v.count as u16 {
            let s = d.services.get(&SvcKey { frontend: k.frontend, slot });
            let ok = s.map(|s| d.backends.contains_key(&s.backend_id)).unwrap_or(false);
            assert!(ok, "after {after:?}: {} slot {slot} of {} is missing or dangling", k.frontend, v.count);
        }
    }
    // An ordinary master flagged externalTrafficPolicy: Local has its local
    // twin's master: the external devices look it up on seeing the flag.
    for (k, v) in d.services.iter().filter(|(k, v)| k.slot == 0 && !k.frontend.scope.is_local() && v.flags & SVC_F_ETP_LOCAL != 0) {
        let twin = d.services.get(&SvcKey { frontend: k.frontend.local_twin(), slot: 0 });
        assert!(twin.is_some(), "after {}: {} is flagged etp-local without its twin", after.describe(), k.frontend);
        assert_ne!(twin.unwrap().rev_nat_id, v.rev_nat_id, "a twin has its own id");
    }
    // Every slot of every table names a backend that exists.
    for (id, t) in &d.maglev {
        for (i, b) in t.iter().enumerate() {
            assert!(d.backends.contains_key(b), "after {}: table {id} slot {i} names missing backend {b}", after.describe());
        }
    }
}

fn apply(maps: &mut MemMaps, ops: &[MapOp]) {
    for op in ops {
        maps.apply(std::slice::from_ref(op)).unwrap();
        check_safe(&maps.maps, op);
    }
    check_consistent(&maps.maps);
}

#[test]
fn adding_one_backend_writes_three_entries() {
    let mut st = LbState::new();
    let mut maps = MemMaps::default();
    apply(&mut maps, &st.set_service("a/web", &[desired(1, &[10, 11])]));
    let ops = st.set_service("a/web", &[desired(1, &[10, 11, 12])]);
    // the backend, its slot, the master's count
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(matches!(ops[0], MapOp::UpsertBackend(_, _)));
    assert!(matches!(ops[2], MapOp::UpsertService(SvcKey { slot: 0, .. }, _)));
    apply(&mut maps, &ops);
    assert!(st.set_service("a/web", &[desired(1, &[10, 11, 12])]).is_empty(), "no change, no write");
}

#[test]
fn removing_a_middle_backend_moves_the_last_slot() {
    let mut st = LbState::new();
    let mut maps = MemMaps::default();
    apply(&mut maps, &st.set_service("a/web", &[desired(1, &[10, 11, 12])]));
    let ops = st.set_service("a/web", &[desired(1, &[10, 12])]);
    let kinds: Vec<String> = ops.iter().map(|o| format!("{o:?}").split('(').next().unwrap().to_string()).collect();
    // slot 2 takes slot 3's backend, count drops, slot 3 goes, the backend goes
    assert_eq!(kinds, ["UpsertService", "UpsertService", "DeleteService", "DeleteBackend"]);
    apply(&mut maps, &ops);
}

#[test]
fn services_share_backends_and_conflicts_are_found() {
    let mut st = LbState::new();
    let mut maps = MemMaps::default();
    apply(&mut maps, &st.set_service("a/one", &[desired(1, &[10, 11])]));
    apply(&mut maps, &st.set_service("a/two", &[desired(2, &[11, 12])]));
    assert_eq!(maps.maps.backends.len(), 3);
    let c = st.check("a/three", &[desired(2, &[13])]).unwrap_err();
    assert_eq!(c.owner, "a/two");
    assert!(st.check("a/two", &[desired(2, &[13])]).is_ok());
    apply(&mut maps, &st.remove_service("a/one"));
    assert_eq!(maps.maps.backends.len(), 2, "backend 10 released, 11 still used by two");
    apply(&mut maps, &st.remove_service("a/two"));
    assert_eq!(maps.maps, LbDump::default());
}

#[test]
fn a_frontend_can_move_between_services_in_either_order() {
    for order in [["a/one", "a/two"], ["a/two", "a/one"]] {
        let mut st = LbState::new();
        let mut maps = MemMaps::default();
        apply(&mut maps, &st.set_service("a/one", &[desired(1, &[10])]));
        for s in order {
            let ds = if s == "a/two" { vec![desired(1, &[11])] } else { vec![] };
            apply(&mut maps, &st.set_service(s, &ds));
        }
        let v = st.view();
        assert_eq!(v.len(), 1, "{order:?}");
        assert_eq!(v[0].service.as_deref(), Some("a/two"));
        assert_eq!(v[0].backends[0].1, be(11, 8080));
    }
}

#[test]
fn affinity_match_entries_follow_slots() {
    let mut st = LbState::new();
    let mut maps = MemMaps::default();
    let mut d = desired(1, &[10, 11]);
    d.flags = SVC_F_AFFINITY;
    d.affinity_timeout = 30;
    apply(&mut maps, &st.set_service("a/web", &[d.clone()]));
    assert_eq!(maps.maps.affinity_match.len(), 2);
    d.backends.pop();
    apply(&mut maps, &st.set_service("a/web", &[d.clone()]));
    assert_eq!(maps.maps.affinity_match.len(), 1);
    d.flags = 0;
    apply(&mut maps, &st.set_service("a/web", &[d]));
    assert!(maps.maps.affinity_match.is_empty());
}

/// A small deterministic generator: no dependency needed for a shuffle.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn random_changes_keep_the_maps_consistent_and_adoption_is_a_no_op() {
    let mut rng = Lcg(7);
    let mut st = LbState::new();
    let small = maglev::TableSize::new(251).unwrap();
    st.set_maglev_size(small);
    let mut maps = MemMaps::default();
    let mut wanted: std::collections::BTreeMap<String, Vec<DesiredFrontend>> = Default::default();
    for _ in 0..2000 {
        let svc = rng.next(20);
        let name = format!("ns/s{svc}");
        let n = rng.next(6) as usize;
        let backends: Vec<u8> = (0..n).map(|_| 10 + rng.next(12) as u8).collect::<BTreeSet<_>>().into_iter().collect();
        let mut d = desired(svc as u8, &backends);
        if rng.next(3) == 0 {
            d.flags = SVC_F_AFFINITY;
            d.affinity_timeout = 10;
        }
        if rng.next(2) == 0 {
            d.flags |= SVC_F_MAGLEV;
        }
        if rng.next(4) == 0 {
            d.flags |= SVC_F_DSR;
        }
        let ds = match rng.next(8) {
            0 => vec![],
            // externalTrafficPolicy: Local: the twin holds some of the backends
            // (or none), and has the same flags.
            1..=3 => {
                d.flags |= SVC_F_ETP_LOCAL | SVC_F_EXTERNAL_IP;
                let mut twin = d.clone();
                twin.key = d.key.local_twin();
                let keep = rng.next(4);
                twin.backends.retain(|b| matches!(b.addr, IpAddr::V4(a) if u64::from(a.octets()[3]) % 4 >= keep));
                twin.serving = twin.backends.clone();
                vec![d, twin]
            }
            _ => vec![d],
        };
        apply(&mut maps, &st.set_service(&name, &ds));
        wanted.insert(name, ds);
    }
    assert!(!maps.maps.maglev.is_empty());
    assert!(maps.maps.services.keys().any(|k| k.frontend.scope == Scope::VipLocal));
    // A restarted agent adopts the maps and finds nothing to write.
    let dump = maps.dump().unwrap();
    let mut adopted = LbState::adopt(&dump);
    adopted.set_maglev_size(small);
    let mut ops = Vec::new();
    for (name, ds) in &wanted {
        ops.extend(adopted.set_service(name, ds));
    }
    ops.extend(adopted.finish_adoption());
    ops.extend(adopted.repair_ops(&dump));
    assert!(ops.is_empty(), "adoption rewrote {ops:?}");
}

#[test]
fn adoption_removes_what_nobody_claims_and_repairs_debris() {
    let mut st = LbState::new();
    let mut maps = MemMaps::default();
    apply(&mut maps, &st.set_service("a/keep", &[desired(1, &[10, 11])]));
    apply(&mut maps, &st.set_service("a/gone", &[desired(2, &[12])]));
    // An interrupted write left a slot past the count.
    let stray = SvcKey { frontend: fe(1), slot: 3 };
    maps.maps.services.insert(stray, SvcVal { backend_id: 11, count: 0, rev_nat_id: 1, affinity_timeout: 0, flags: 0 });
    let dump = maps.dump().unwrap();
    let mut adopted = LbState::adopt(&dump);
    let mut ops = adopted.set_service("a/keep", &[desired(1, &[10, 11])]);
    ops.extend(adopted.finish_adoption());
    maps.apply(&ops).unwrap();
    let repair = adopted.repair_ops(&maps.dump().unwrap());
    apply(&mut maps, &repair);
    assert!(!maps.maps.services.contains_key(&stray));
    assert_eq!(maps.maps.services.len(), 3, "master + two slots of a/keep");
    assert_eq!(maps.maps.backends.len(), 2);
}

#[test]
fn golden_manifests_to_map_entries() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut cat = Catalog::new();
        // `# node-name: NAME` and `# lb-mode: snat|dsr` lines set what the
        // agent's --node-name and --lb-mode would.
        let mut ctx = ResolveContext::default();
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("# node-name: ") {
                ctx.node_name = n.trim().to_string();
            }
            if let Some(m) = line.strip_prefix("# lb-mode: ") {
                ctx.default_mode = m.trim().parse().unwrap();
            }
        }
        cat.set_context(ctx);
        let mut touched = BTreeSet::new();
        for m in parse_documents(&path.display().to_string(), &text).unwrap() {
            touched.extend(cat.upsert(&m.object_ref, m.object));
        }
        let mut st = LbState::new();
        let mut maps = MemMaps::default();
        for s in &touched {
            let ds = cat.resolve(s).unwrap();
            st.check(s, &ds).unwrap();
            apply(&mut maps, &st.set_service(s, &ds));
        }
        let got = maps.maps.to_text();
        let golden = path.with_extension("txt");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &got).unwrap();
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", golden.display()));
        assert_eq!(got, want, "{} differs from {}", path.display(), golden.display());
    }
}

#[test]
fn batched_changes_across_services_keep_the_maps_consistent() {
    let mut rng = Lcg(11);
    let mut st = LbState::new();
    let mut maps = MemMaps::default();
    for _ in 0..300 {
        // A batch touches several services at once, sharing backends.
        let mut batch: Vec<(String, Vec<DesiredFrontend>)> = Vec::new();
        for svc in 0..rng.next(6) {
            let n = rng.next(5) as usize;
            let backends: Vec<u8> = (0..n).map(|_| 10 + rng.next(8) as u8).collect::<BTreeSet<_>>().into_iter().collect();
            let ds = if rng.next(6) == 0 { vec![] } else { vec![desired((svc * 3 + rng.next(3)) as u8, &backends)] };
            let name = format!("ns/s{svc}");
            if batch.iter().all(|(n, _)| *n != name) && ds.iter().all(|d| st.check(&name, std::slice::from_ref(d)).is_ok()) {
                batch.push((name, ds));
            }
        }
        let ops = st.set_services(batch.iter().map(|(n, d)| (n.as_str(), d.as_slice())));
        apply(&mut maps, &ops);
    }
}

#[test]
fn backends_that_stop_serving_are_doomed_and_draining_ones_are_not() {
    let mut st = LbState::new();
    st.set_service("a/web", &[desired(1, &[10, 11, 12])]);
    assert!(st.take_doomed().is_empty());
    // 12 terminates but still serves: out of the slots, sockets kept.
    let mut d = desired(1, &[10, 11]);
    d.serving.push(be(12, 8080));
    st.set_service("a/web", &[d]);
    assert!(st.take_doomed().is_empty());
    // 11 is removed and 12 stops serving: both doomed, with the frontend id.
    st.set_service("a/web", &[desired(1, &[10])]);
    let doomed: Vec<BackendKey> = st.take_doomed().into_iter().map(|(s, id, b)| {
        assert_eq!((s.as_str(), id), ("a/web", 1));
        b
    }).collect();
    assert_eq!(doomed, vec![be(11, 8080), be(12, 8080)]);
    // Deleting the service dooms what is left.
    st.remove_service("a/web");
    assert_eq!(st.take_doomed().len(), 1);
}

fn maglev(vip: u8, backends: &[u8]) -> DesiredFrontend {
    let mut d = desired(vip, backends);
    d.flags = SVC_F_MAGLEV;
    d
}

/// The table `LbState` should hold: the pure computation, as backend ids.
fn expected_table(d: &LbDump, backends: &[u8]) -> Vec<u32> {
    let keys: Vec<BackendKey> = backends.iter().map(|b| be(*b, 8080)).collect();
    let t = maglev::compute(&keys, maglev::TableSize::default());
    let id_of = |k: &BackendKey| *d.backends.iter().find(|(_, b)| *b == k).unwrap().0;
    t.slots.iter().map(|i| id_of(&t.backends[*i as usize])).collect()
}

#[test]
fn maglev_tables_are_written_whole_once_then_only_changed_slots() {
    let m = maglev::DEFAULT_TABLE_SIZE as usize;
    let mut st = LbState::new();
    let mut maps = MemMaps::default();
    let all: Vec<u8> = (10..20).collect();
    let ops = st.set_service("a/web", &[maglev(1, &all)]);
    // Backends, revnat, then the table before the master that turns it on.
    let t = ops.iter().position(|o| matches!(o, MapOp::SetMaglev { .. })).expect("a whole table");
    let master = ops.iter().position(|o| matches!(o, MapOp::UpsertService(SvcKey { slot: 0, .. }, _))).unwrap();
    assert!(t < master, "{:?}", ops.iter().map(|o| o.describe()).collect::<Vec<_>>());
    apply(&mut maps, &ops);
    let id = maps.maps.services[&SvcKey { frontend: fe(1), slot: 0 }].rev_nat_id;
    assert_eq!(maps.maps.maglev[&id], expected_table(&maps.maps, &all));
    assert_eq!(st.maglev_table(&fe(1)).map(|t| t.len()), Some(m));

    // Setting the same thing again writes nothing.
    assert!(st.set_service("a/web", &[maglev(1, &all)]).is_empty());

    // One of ten backends leaves: only the slots that changed are written,
    // before the backend is deleted.
    let nine: Vec<u8> = (10..19).collect();
    let ops = st.set_service("a/web", &[maglev(1, &nine)]);
    let changed = match ops.iter().find(|o| matches!(o, MapOp::UpdateMaglevSlots { .. })) {
        Some(MapOp::UpdateMaglevSlots { slots, .. }) => slots.len(),
        _ => panic!("no slot update in {:?}", ops.iter().map(|o| o.describe()).collect::<Vec<_>>()),
    };
    assert!(!ops.iter().any(|o| matches!(o, MapOp::SetMaglev { .. })));
    let frac = changed as f64 / m as f64;
    // Measured: 10.6% of the slots (1/N = 10%).
    assert!((0.10..0.12).contains(&frac), "{changed} of {m} slots changed");
    let upd = ops.iter().position(|o| matches!(o, MapOp::UpdateMaglevSlots { .. })).unwrap();
    let del = ops.iter().position(|o| matches!(o, MapOp::DeleteBackend(_))).unwrap();
    assert!(upd < del);
    apply(&mut maps, &ops);
    assert_eq!(maps.maps.maglev[&id], expected_table(&maps.maps, &nine));

    // Adding one back: about 1/10 of the slots.
    let ops = st.set_service("a/web", &[maglev(1, &all)]);
    apply(&mut maps, &ops);
    assert_eq!(maps.maps.maglev[&id], expected_table(&maps.maps, &all));

    // To random: the master first, the table after; back: the other way round.
    let ops = st.set_service("a/web", &[desired(1, &all)]);
    let master = ops.iter().position(|o| matches!(o, MapOp::UpsertService(SvcKey { slot: 0, .. }, _))).unwrap();
    let gone = ops.iter().position(|o| matches!(o, MapOp::DeleteMaglev(_))).unwrap();
    assert!(master < gone);
    apply(&mut maps, &ops);
    assert!(maps.maps.maglev.is_empty());
    apply(&mut maps, &st.set_service("a/web", &[maglev(1, &all)]));
    // No backends: no table (the datapath drops before looking); deleting
    // the service deletes the table.
    apply(&mut maps, &st.set_service("a/web", &[maglev(1, &[])]));
    assert!(maps.maps.maglev.is_empty());
    apply(&mut maps, &st.set_service("a/web", &[maglev(1, &all)]));
    apply(&mut maps, &st.remove_service("a/web"));
    assert!(maps.maps.maglev.is_empty() && maps.maps.services.is_empty() && maps.maps.backends.is_empty());
}

#[test]
fn maglev_tables_do_not_depend_on_backend_ids_or_order() {
    // Two nodes learn the same backends in different orders (and with other
    // services in between, so their ids differ): the tables name the same
    // backends slot by slot.
    let mut a = LbState::new();
    let mut b = LbState::new();
    let (mut ma, mut mb) = (MemMaps::default(), MemMaps::default());
    apply(&mut mb, &b.set_service("a/other", &[desired(9, &[40, 41, 42])]));
    apply(&mut ma, &a.set_service("a/web", &[maglev(1, &[10, 11, 12, 13])]));
    let mut rev = maglev(1, &[13, 12, 11, 10]);
    rev.backends.reverse();
    apply(&mut mb, &b.set_service("a/web", &[rev]));
    let keys = |m: &MemMaps| -> Vec<BackendKey> {
        let id = m.maps.services[&SvcKey { frontend: fe(1), slot: 0 }].rev_nat_id;
        m.maps.maglev[&id].iter().map(|b| m.maps.backends[b]).collect()
    };
    assert_ne!(ma.maps.backends.keys().collect::<Vec<_>>(), mb.maps.backends.keys().collect::<Vec<_>>());
    assert_eq!(keys(&ma), keys(&mb));
}

#[test]
fn maglev_adoption_writes_nothing_when_equal_and_rewrites_tables_of_another_size() {
    let mut st = LbState::new();
    let mut maps = MemMaps::default();
    apply(&mut maps, &st.set_service("a/web", &[maglev(1, &[10, 11, 12])]));
    apply(&mut maps, &st.set_service("a/db", &[maglev(2, &[12, 13])]));
    let dump = maps.dump().unwrap();

    let mut same = LbState::adopt(&dump);
    let mut ops = same.set_service("a/web", &[maglev(1, &[10, 11, 12])]);
    ops.extend(same.set_service("a/db", &[maglev(2, &[12, 13])]));
    ops.extend(same.finish_adoption());
    ops.extend(same.repair_ops(&dump));
    assert!(ops.is_empty(), "{:?}", ops.iter().map(|o| o.describe()).collect::<Vec<_>>());

    // An interrupted slot update: adoption writes back just that slot.
    let id = dump.services[&SvcKey { frontend: fe(1), slot: 0 }].rev_nat_id;
    let mut torn = dump.clone();
    let other = *torn.backends.keys().find(|b| **b != torn.maglev[&id][5]).unwrap();
    torn.maglev.get_mut(&id).unwrap()[5] = other;
    let mut st2 = LbState::adopt(&torn);
    let ops = st2.set_service("a/web", &[maglev(1, &[10, 11, 12])]);
    assert_eq!(ops.len(), 1, "{:?}", ops.iter().map(|o| o.describe()).collect::<Vec<_>>());
    assert!(matches!(&ops[0], MapOp::UpdateMaglevSlots { slots, .. } if slots.len() == 1 && slots[0].0 == 5));

    // Restarted with another size: every table is rewritten whole, nothing else.
    let mut resized = LbState::adopt(&dump);
    resized.set_maglev_size(maglev::TableSize::new(4093).unwrap());
    let mut ops = resized.set_service("a/web", &[maglev(1, &[10, 11, 12])]);
    ops.extend(resized.set_service("a/db", &[maglev(2, &[12, 13])]));
    ops.extend(resized.finish_adoption());
    assert_eq!(ops.len(), 2);
    assert!(ops.iter().all(|o| matches!(o, MapOp::SetMaglev { table, .. } if table.len() == 4093)));
    apply(&mut maps, &ops);

    // A table left by a deleted frontend (or a frontend no longer Maglev) goes.
    let mut debris = maps.dump().unwrap();
    debris.maglev.insert(999, vec![1; 7]);
    let mut st3 = LbState::adopt(&debris);
    st3.set_maglev_size(maglev::TableSize::new(4093).unwrap());
    st3.set_service("a/web", &[maglev(1, &[10, 11, 12])]);
    st3.set_service("a/db", &[desired(2, &[12, 13])]);
    let repair = st3.repair_ops(&debris);
    assert!(repair.contains(&MapOp::DeleteMaglev(999)));
}

/// A NodePort service with externalTrafficPolicy: Local, endpoints on two
/// nodes; `policy`, `mode` (annotation) and the node's name vary.
fn etp_service(policy: &str, mode: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop, annotations: {{sluice.io/lb-mode: {mode}}}}}
spec:
  type: NodePort
  externalTrafficPolicy: {policy}
  clusterIP: 198.19.0.10
  externalIPs: [198.19.9.10]
  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- {{addresses: [198.18.1.10], nodeName: node-a}}
- {{addresses: [198.18.1.11], nodeName: node-a}}
- {{addresses: [198.18.2.10], nodeName: node-b}}
"#
    )
}

/// Apply `text` to the catalog under `node`, and the service's resolution
/// to the state and maps; returns the writes.
fn set_etp(cat: &mut Catalog, st: &mut LbState, maps: &mut MemMaps, text: &str, node: &str) -> Vec<MapOp> {
    cat.set_context(ResolveContext { node_name: node.into(), ..Default::default() });
    for m in parse_documents("etp.yaml", text).unwrap() {
        cat.upsert(&m.object_ref, m.object);
    }
    let ds = cat.resolve("shop/web").unwrap();
    let ops = st.set_service("shop/web", &ds);
    apply(maps, &ops);
    ops
}

fn master(maps: &MemMaps, f: FrontendKey) -> Option<SvcVal> {
    maps.maps.services.get(&SvcKey { frontend: f, slot: 0 }).copied()
}

#[test]
fn local_policy_twins_follow_policy_node_and_mode_with_minimal_writes() {
    let np = FrontendKey::node_port(false, 30080, Protocol::TCP);
    let ext = FrontendKey { addr: IpAddr::from([198, 19, 9, 10]), port: 80, proto: Protocol::TCP, scope: Scope::Vip };
    let cip = FrontendKey { addr: IpAddr::from([198, 19, 0, 10]), port: 80, proto: Protocol::TCP, scope: Scope::Vip };
    let (mut cat, mut st, mut maps) = (Catalog::new(), LbState::new(), MemMaps::default());
    set_etp(&mut cat, &mut st, &mut maps, &etp_service("Local", "snat"), "node-a");
    // Two twins with node-a's two backends, the ordinary entries with all three.
    for f in [np, ext] {
        let (m, t) = (master(&maps, f).unwrap(), master(&maps, f.local_twin()).unwrap());
        assert_eq!((m.count, t.count), (3, 2), "{f}");
        assert_eq!(m.flags & SVC_F_ETP_LOCAL, SVC_F_ETP_LOCAL);
        assert_eq!(t.flags, m.flags);
        assert_ne!(t.rev_nat_id, m.rev_nat_id);
        assert_eq!(maps.maps.revnat[&t.rev_nat_id], f.local_twin());
        assert_eq!(f.local_twin().scope.number(), f.scope.number() | 2);
    }
    assert_eq!(master(&maps, cip).unwrap().flags, 0);
    assert!(master(&maps, cip.local_twin()).is_none(), "no twin for the cluster IP");
    assert!(st.take_doomed().is_empty());

    // Same again: nothing to write. Another node: only the twins' entries.
    assert!(set_etp(&mut cat, &mut st, &mut maps, &etp_service("Local", "snat"), "node-a").is_empty());
    let ops = set_etp(&mut cat, &mut st, &mut maps, &etp_service("Local", "snat"), "node-b");
    for op in &ops {
        let touches_twin = match op {
            MapOp::UpsertService(k, _) | MapOp::DeleteService(k) => k.frontend.scope.is_local(),
            MapOp::UpsertBackend(..) | MapOp::DeleteBackend(_) => false,
            other => panic!("unexpected {other:?}"),
        };
        assert!(touches_twin || matches!(op, MapOp::UpsertBackend(..) | MapOp::DeleteBackend(_)), "{op:?}");
    }
    // Per twin: slot 1 rewritten, master count, slot 2 deleted; no backend
    // is created or deleted (they are all still used by the ordinary entries).
    assert_eq!(ops.len(), 6, "{ops:?}");
    assert_eq!(master(&maps, np.local_twin()).unwrap().count, 1);
    assert!(st.take_doomed().is_empty(), "the twins are never used by sockets");

    // A node with no endpoint: twins with count 0 (the datapath drops).
    set_etp(&mut cat, &mut st, &mut maps, &etp_service("Local", "snat"), "node-c");
    for f in [np, ext] {
        assert_eq!(master(&maps, f.local_twin()).unwrap().count, 0);
        assert_eq!(master(&maps, f).unwrap().count, 3);
    }

    // DSR by annotation: the flag on the four external masters, nothing else.
    let ops = set_etp(&mut cat, &mut st, &mut maps, &etp_service("Local", "dsr"), "node-c");
    assert_eq!(ops.len(), 4, "{ops:?}");
    for f in [np, ext, np.local_twin(), ext.local_twin()] {
        assert_ne!(master(&maps, f).unwrap().flags & SVC_F_DSR, 0, "{f}");
    }
    assert_eq!(master(&maps, cip).unwrap().flags & SVC_F_DSR, 0);

    // Local -> Cluster: the twins' entries go (master, slots, revnat), the
    // ordinary masters lose the flag first.
    set_etp(&mut cat, &mut st, &mut maps, &etp_service("Local", "snat"), "node-a");
    let twin_ids: Vec<u32> = [np, ext].iter().map(|f| master(&maps, f.local_twin()).unwrap().rev_nat_id).collect();
    let ops = set_etp(&mut cat, &mut st, &mut maps, &etp_service("Cluster", "snat"), "node-a");
    let first_twin_delete = ops.iter().position(|o| matches!(o, MapOp::DeleteService(k) if k.frontend.scope.is_local())).unwrap();
    let last_flag_clear = ops.iter().rposition(|o| matches!(o, MapOp::UpsertService(k, _) if k.slot == 0 && !k.frontend.scope.is_local())).unwrap();
    assert!(last_flag_clear < first_twin_delete, "{ops:?}");
    assert!(maps.maps.services.keys().all(|k| !k.frontend.scope.is_local()));
    assert!(maps.maps.revnat.values().all(|f| !f.scope.is_local()));
    for id in twin_ids {
        assert!(!maps.maps.revnat.contains_key(&id));
    }
    assert!(maps.maps.services.values().all(|v| v.flags & SVC_F_ETP_LOCAL == 0));
    assert_eq!(maps.maps.backends.len(), 3);

    // Cluster -> Local again, then a restart: adoption writes nothing.
    set_etp(&mut cat, &mut st, &mut maps, &etp_service("Local", "dsr"), "node-a");
    let dump = maps.dump().unwrap();
    let mut adopted = LbState::adopt(&dump);
    let mut ops = adopted.set_service("shop/web", &cat.resolve("shop/web").unwrap());
    ops.extend(adopted.finish_adoption());
    ops.extend(adopted.repair_ops(&dump));
    assert!(ops.is_empty(), "adoption rewrote {ops:?}");
    // The service gone: everything goes, ordinary masters before twins.
    let ops = adopted.remove_service("shop/web");
    let masters: Vec<bool> = ops.iter().filter_map(|o| match o {
        MapOp::DeleteService(k) if k.slot == 0 => Some(k.frontend.scope.is_local()),
        _ => None,
    }).collect();
    assert_eq!(masters, [false, false, false, true, true]);
    apply(&mut maps, &ops);
    assert!(maps.maps.services.is_empty() && maps.maps.revnat.is_empty() && maps.maps.backends.is_empty());
}

#[test]
fn local_twins_of_maglev_services_have_their_own_tables() {
    let text = etp_service("Local", "snat").replace("sluice.io/lb-mode: snat", "sluice.io/lb-algorithm: maglev");
    let (mut cat, mut st, mut maps) = (Catalog::new(), LbState::new(), MemMaps::default());
    st.set_maglev_size(maglev::TableSize::new(251).unwrap());
    set_etp(&mut cat, &mut st, &mut maps, &text, "node-b");
    let np = FrontendKey::node_port(false, 30080, Protocol::TCP);
    let twin = master(&maps, np.local_twin()).unwrap();
    let table = &maps.maps.maglev[&twin.rev_nat_id];
    let only = maps.maps.services[&SvcKey { frontend: np.local_twin(), slot: 1 }].backend_id;
    assert!(table.iter().all(|b| *b == only), "the twin's table holds its one local backend");
    assert_eq!(maps.maps.maglev.len(), 5, "cluster IP, external IP, node port and two twins");
    // No local backend: no table (as for any Maglev frontend without backends).
    set_etp(&mut cat, &mut st, &mut maps, &text, "node-c");
    assert_eq!(maps.maps.maglev.len(), 3);
}
