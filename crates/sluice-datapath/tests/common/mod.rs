//! Packet fixtures for the tc programs: a small packet builder with correct
//! checksums, a checksum verifier that recomputes them from scratch, and a
//! runner that compares verdict and bytes and writes a pcap on mismatch.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use sluice_datapath::pod::{DeviceProgram, LoadedDevices, RunResult};

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("the datapath packet tests load BPF programs: run them as root (scripts/test.sh does)");
    }
}

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
/// ICMP echo, either family (58 on the wire for IPv6). As in the
/// datapath, the identifier is the source "port" of a request and the
/// destination "port" of a reply; the other port is 0.
pub const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// One TCP or UDP packet in an Ethernet frame.
#[derive(Debug, Clone)]
pub struct Pkt {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
}

impl Pkt {
    pub fn tcp(src: &str, dst: &str) -> Pkt {
        Pkt::new(src, dst, TCP)
    }
    pub fn udp(src: &str, dst: &str) -> Pkt {
        Pkt::new(src, dst, UDP)
    }
    pub fn new(src: &str, dst: &str, proto: u8) -> Pkt {
        Pkt {
            dst_mac: [0x02, 0, 0, 0, 0, 0xfe],
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            src: src.parse().unwrap_or_else(|e| panic!("{src}: {e}")),
            dst: dst.parse().unwrap_or_else(|e| panic!("{dst}: {e}")),
            proto,
            tcp_flags: if proto == TCP { PSH | ACK } else { 0 },
            payload: b"sluice pod datapath test payload".to_vec(),
        }
    }
    pub fn flags(mut self, f: u8) -> Pkt {
        self.tcp_flags = f;
        self
    }
    pub fn macs(mut self, dst: [u8; 6], src: [u8; 6]) -> Pkt {
        self.dst_mac = dst;
        self.src_mac = src;
        self
    }
    pub fn src(mut self, s: &str) -> Pkt {
        self.src = s.parse().unwrap();
        self
    }
    pub fn dst(mut self, s: &str) -> Pkt {
        self.dst = s.parse().unwrap();
        self
    }
    pub fn with_src(mut self, s: SocketAddr) -> Pkt {
        self.src = s;
        self
    }
    pub fn with_dst(mut self, s: SocketAddr) -> Pkt {
        self.dst = s;
        self
    }

    fn wire_proto(&self) -> u8 {
        if self.proto == ICMP && self.src.is_ipv6() {
            ICMPV6
        } else {
            self.proto
        }
    }

    fn icmp(&self) -> Vec<u8> {
        let request = self.src.port() != 0;
        let v6 = self.src.is_ipv6();
        let ty = match (v6, request) {
            (false, true) => 8,
            (false, false) => 0,
            (true, true) => 128,
            (true, false) => 129,
        };
        let id = if request { self.src.port() } else { self.dst.port() };
        let mut m = vec![ty, 0, 0, 0];
        m.extend(id.to_be_bytes());
        m.extend(7u16.to_be_bytes()); // sequence
        m.extend(&self.payload);
        let c = if v6 { checksum(&m, pseudo(self.src.ip(), self.dst.ip(), ICMPV6, m.len())) } else { checksum(&m, 0) };
        m[2..4].copy_from_slice(&c.to_be_bytes());
        m
    }

    fn l4(&self) -> Vec<u8> {
        if self.proto == ICMP {
            return self.icmp();
        }
        let mut l4 = Vec::new();
        l4.extend(self.src.port().to_be_bytes());
        l4.extend(self.dst.port().to_be_bytes());
        if self.proto == TCP {
            l4.extend(0x1000_0001u32.to_be_bytes()); // seq
            l4.extend(if self.tcp_flags & ACK != 0 { 0x2000_0001u32 } else { 0 }.to_be_bytes());
            l4.push(5 << 4); // data offset
            l4.push(self.tcp_flags);
            l4.extend(65535u16.to_be_bytes()); // window
            l4.extend([0, 0]); // checksum
            l4.extend([0, 0]); // urgent
        } else {
            l4.extend(((8 + self.payload.len()) as u16).to_be_bytes());
            l4.extend([0, 0]);
        }
        l4.extend(&self.payload);
        let sum = l4_checksum(self.src.ip(), self.dst.ip(), self.proto, &l4);
        let off = if self.proto == TCP { 16 } else { 6 };
        l4[off..off + 2].copy_from_slice(&sum.to_be_bytes());
        l4
    }

    pub fn build(&self) -> Vec<u8> {
        let l4 = self.l4();
        let mut f = Vec::new();
        f.extend(self.dst_mac);
        f.extend(self.src_mac);
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend(0x0800u16.to_be_bytes());
                let mut ip = vec![0x45, 0];
                ip.extend(((20 + l4.len()) as u16).to_be_bytes());
                ip.extend(0x1234u16.to_be_bytes());
                ip.extend(0x4000u16.to_be_bytes()); // DF
                ip.push(64);
                ip.push(self.wire_proto());
                ip.extend([0, 0]);
                ip.extend(s.octets());
                ip.extend(d.octets());
                let c = checksum(&ip, 0);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend(ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend(0x86ddu16.to_be_bytes());
                f.extend(0x6000_0000u32.to_be_bytes());
                f.extend((l4.len() as u16).to_be_bytes());
                f.push(self.wire_proto());
                f.push(64);
                f.extend(s.octets());
                f.extend(d.octets());
            }
            _ => panic!("mixed families"),
        }
        f.extend(l4);
        f
    }
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut i = 0;
    while i + 1 < data.len() {
        acc += u16::from_be_bytes([data[i], data[i + 1]]) as u32;
        i += 2;
    }
    if i < data.len() {
        acc += (data[i] as u32) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

pub fn checksum(data: &[u8], acc: u32) -> u16 {
    !fold(sum16(data, acc))
}

pub fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend(s.octets());
            p.extend(d.octets());
            p.extend([0, proto]);
            p.extend((len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend(s.octets());
            p.extend(d.octets());
            p.extend((len as u32).to_be_bytes());
            p.extend([0, 0, 0, proto]);
        }
        _ => panic!("mixed families"),
    }
    sum16(&p, 0)
}

pub fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> u16 {
    let c = checksum(l4, pseudo(src, dst, proto, l4.len()));
    if proto == UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// What a frame carries, read back from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
}

/// Parse a frame built by [`Pkt::build`] (or rewritten by the datapath)
/// and check every checksum by recomputing it from scratch.
pub fn parse_and_verify(f: &[u8]) -> Result<Parsed, String> {
    if f.len() < 14 {
        return Err("short frame".into());
    }
    let dst_mac: [u8; 6] = f[0..6].try_into().unwrap();
    let src_mac: [u8; 6] = f[6..12].try_into().unwrap();
    let et = u16::from_be_bytes([f[12], f[13]]);
    let (src_ip, dst_ip, proto, l4): (IpAddr, IpAddr, u8, &[u8]) = match et {
        0x0800 => {
            let ip = &f[14..34];
            if checksum(ip, 0) != 0 {
                return Err(format!("bad IPv4 header checksum {:#06x}", u16::from_be_bytes([ip[10], ip[11]])));
            }
            let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            let s: [u8; 4] = ip[12..16].try_into().unwrap();
            let d: [u8; 4] = ip[16..20].try_into().unwrap();
            (s.into(), d.into(), ip[9], &f[34..14 + tot])
        }
        0x86dd => {
            let ip = &f[14..54];
            let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            (s.into(), d.into(), ip[6], &f[54..54 + plen])
        }
        other => return Err(format!("ethertype {other:#06x}")),
    };
    if proto == ICMP || proto == ICMPV6 {
        let mut zeroed = l4.to_vec();
        zeroed[2] = 0;
        zeroed[3] = 0;
        let want = if proto == ICMPV6 { checksum(&zeroed, pseudo(src_ip, dst_ip, ICMPV6, l4.len())) } else { checksum(&zeroed, 0) };
        let stored = u16::from_be_bytes([l4[2], l4[3]]);
        if stored != want {
            return Err(format!("bad ICMP checksum {stored:#06x}, recomputed {want:#06x}"));
        }
        let id = u16::from_be_bytes([l4[4], l4[5]]);
        let request = l4[0] == 8 || l4[0] == 128;
        let (sp, dp) = if request { (id, 0) } else { (0, id) };
        return Ok(Parsed { dst_mac, src_mac, src: SocketAddr::new(src_ip, sp), dst: SocketAddr::new(dst_ip, dp), proto: ICMP });
    }
    let csum_off = if proto == TCP { 16 } else { 6 };
    let stored = u16::from_be_bytes([l4[csum_off], l4[csum_off + 1]]);
    let mut zeroed = l4.to_vec();
    zeroed[csum_off] = 0;
    zeroed[csum_off + 1] = 0;
    let want = l4_checksum(src_ip, dst_ip, proto, &zeroed);
    // 0x0000 and 0xffff are the same ones' complement value for TCP.
    if stored != want && !(proto == TCP && (stored ^ want) == 0xffff && (stored == 0 || want == 0)) {
        return Err(format!("bad L4 checksum {stored:#06x}, recomputed {want:#06x}"));
    }
    let sp = u16::from_be_bytes([l4[0], l4[1]]);
    let dp = u16::from_be_bytes([l4[2], l4[3]]);
    Ok(Parsed { dst_mac, src_mac, src: SocketAddr::new(src_ip, sp), dst: SocketAddr::new(dst_ip, dp), proto })
}

/// What a fixture expects of the program.
pub enum Expect {
    /// This exact frame.
    Bytes(Vec<u8>),
    /// The input frame, untouched.
    Unchanged,
    /// Only the verdict matters (dropped packets).
    Any,
}

pub struct Fixture {
    pub desc: String,
    pub prog: DeviceProgram,
    pub input: Vec<u8>,
    pub verdict: u32,
    pub expect: Expect,
}

impl Fixture {
    pub fn new(desc: impl Into<String>, prog: DeviceProgram, input: Vec<u8>, verdict: u32, expect: Expect) -> Fixture {
        Fixture { desc: desc.into(), prog, input, verdict, expect }
    }
}

/// Run a fixture; on any mismatch write input/expected/actual as a pcap
/// and panic with its path. Returns the program's result.
pub fn run(d: &LoadedDevices, fx: &Fixture) -> RunResult {
    let r = d.run(fx.prog, &fx.input).unwrap_or_else(|e| panic!("{}: test run failed: {e}", fx.desc));
    let expected: Option<&[u8]> = match &fx.expect {
        Expect::Bytes(b) => Some(b),
        Expect::Unchanged => Some(&fx.input),
        Expect::Any => None,
    };
    let mut problems = Vec::new();
    if r.verdict != fx.verdict {
        problems.push(format!("verdict {} (expected {})", verdict_name(r.verdict), verdict_name(fx.verdict)));
    }
    if let Some(e) = expected {
        if r.packet != e {
            problems.push(format!("output differs from the expected bytes{}", first_diff(&r.packet, e)));
        }
    }
    if !problems.is_empty() {
        let mut frames = vec![fx.input.clone()];
        if let Some(e) = expected {
            frames.push(e.to_vec());
        }
        frames.push(r.packet.clone());
        let path = write_pcap(&fx.desc, &frames);
        panic!(
            "{}: {}\n  pcap (input, expected, actual): {}",
            fx.desc,
            problems.join("; "),
            path.display()
        );
    }
    r
}

fn first_diff(a: &[u8], b: &[u8]) -> String {
    if a.len() != b.len() {
        return format!(" (length {} vs {})", a.len(), b.len());
    }
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(" (first at byte {i}: {:#04x} vs {:#04x})", a[i], b[i]),
        None => String::new(),
    }
}

pub fn verdict_name(v: u32) -> String {
    match v {
        0 => "TC_ACT_OK".into(),
        2 => "TC_ACT_SHOT".into(),
        7 => "TC_ACT_REDIRECT".into(),
        v => format!("{v}"),
    }
}

/// Classic pcap (LINKTYPE_ETHERNET) into the test target's tmp dir.
pub fn write_pcap(desc: &str, frames: &[Vec<u8>]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let name: String = desc.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let path = dir.join(format!("{name}.pcap"));
    let mut out = Vec::new();
    out.extend(0xa1b2c3d4u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    out.extend(0i32.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(65535u32.to_le_bytes());
    out.extend(1u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        out.extend((i as u32).to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend((f.len() as u32).to_le_bytes());
        out.extend((f.len() as u32).to_le_bytes());
        out.extend(f);
    }
    std::fs::write(&path, out).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// A counter's value by its CLI name.
pub fn metric(d: &LoadedDevices, name: &str) -> u64 {
    d.metrics()
        .unwrap()
        .into_iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no counter named {name}"))
        .value
}

/// `frame` (an Ethernet frame with an option-less IPv4 or extension-less
/// IPv6 header) with Sluice's DSR option naming `vip` inserted after the IP
/// header, as bpf/lib/pkt.h describes it: IPv4 option 0x9e, length 8, port,
/// address (header length, total length and header checksum fixed); IPv6
/// destination options header (next header 60) holding option 0x1e with 18
/// bytes (port, address) and a PadN. The L4 checksum does not change.
pub fn with_dsr_option(frame: &[u8], vip: SocketAddr) -> Vec<u8> {
    let mut out = frame[..14].to_vec();
    match vip.ip() {
        IpAddr::V4(a) => {
            let mut ip = frame[14..34].to_vec();
            assert_eq!(ip[0], 0x45, "an IPv4 header without options");
            ip[0] = 0x47;
            let tot = u16::from_be_bytes([ip[2], ip[3]]) + 8;
            ip[2..4].copy_from_slice(&tot.to_be_bytes());
            ip.extend([0x9e, 8]);
            ip.extend(vip.port().to_be_bytes());
            ip.extend(a.octets());
            ip[10] = 0;
            ip[11] = 0;
            let c = checksum(&ip, 0);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend(ip);
            out.extend(&frame[34..]);
        }
        IpAddr::V6(a) => {
            let mut ip = frame[14..54].to_vec();
            let next = ip[6];
            ip[6] = 60;
            let plen = u16::from_be_bytes([ip[4], ip[5]]) + 24;
            ip[4..6].copy_from_slice(&plen.to_be_bytes());
            out.extend(ip);
            out.extend([next, 2, 0x1e, 18]);
            out.extend(vip.port().to_be_bytes());
            out.extend(a.octets());
            out.extend([1, 0]);
            out.extend(&frame[54..]);
        }
    }
    out
}
