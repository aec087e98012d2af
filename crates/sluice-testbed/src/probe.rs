//! The probe: a server that answers every request with its name, and
//! clients that connect the way applications do and report what they saw
//! (which backend answered, what `getpeername()` said, how long it took, or
//! which errno it failed with). The `sluice-probe` binary is a thin CLI over
//! this module.
//!
//! Protocol: a TCP request is a line (`hi\n`), answered with `NAME\n`; a
//! connection may carry any number of requests, until EOF (a final request
//! without newline is answered too). A UDP request is any datagram, answered
//! with `NAME\n` sent to its sender, from the address it was sent to.

use std::collections::{BTreeMap, HashMap};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::socket::{
    self, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use serde::Serialize;

/// Default time allowed for a connect, or for an answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

// ================================================================ server

/// Bound listeners, ready to serve.
pub struct Server {
    reply: Arc<[u8]>,
    listeners: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

impl Server {
    /// Bind every address (port 0 picks a free port; `[::]` is dual-stack).
    pub fn bind(name: &str, tcp: &[SocketAddr], udp: &[SocketAddr]) -> anyhow::Result<Server> {
        let mut listeners = Vec::new();
        for a in tcp {
            let l = TcpListener::bind(a).with_context(|| format!("binding tcp {a}"))?;
            l.set_nonblocking(true)?;
            listeners.push(l);
        }
        let mut socks = Vec::new();
        for a in udp {
            let s = UdpSocket::bind(a).with_context(|| format!("binding udp {a}"))?;
            s.set_nonblocking(true)?;
            // Learn each datagram's destination address, to answer from it.
            match a {
                SocketAddr::V4(_) => socket::setsockopt(&s, sockopt::Ipv4PacketInfo, &true),
                SocketAddr::V6(_) => socket::setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true),
            }
            .with_context(|| format!("enabling packet info on udp {a}"))?;
            socks.push(s);
        }
        Ok(Server {
            reply: format!("{name}\n").into_bytes().into(),
            listeners,
            udp: socks,
        })
    }

    /// The bound TCP addresses (with the ports chosen for port 0).
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The bound UDP addresses.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Serve on `threads` event-loop threads until stopped (the returned
    /// handle stops them when dropped).
    pub fn spawn(self, threads: usize) -> anyhow::Result<RunningServer> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors that we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: fresh descriptors from pipe2.
        let (stop_r, stop_w) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let shared = Arc::new(self);
        let stop_r = Arc::new(stop_r);
        let mut handles = Vec::new();
        for _ in 0..threads.max(1) {
            let worker = Worker::new(shared.clone(), Some(stop_r.clone()))?;
            handles.push(std::thread::spawn(move || worker.run()));
        }
        Ok(RunningServer {
            stop: Some(stop_w),
            handles,
        })
    }

    /// Serve forever on `threads` event-loop threads.
    pub fn run(self, threads: usize) -> anyhow::Result<()> {
        let shared = Arc::new(self);
        let mut handles = Vec::new();
        for _ in 1..threads.max(1) {
            let worker = Worker::new(shared.clone(), None)?;
            handles.push(std::thread::spawn(move || worker.run()));
        }
        Worker::new(shared, None)?.run();
        for h in handles {
            let _ = h.join();
        }
        Ok(())
    }
}

/// Serve `name` on the given addresses forever; prints `ready` on stdout
/// once everything is bound. What `sluice-probe serve` runs.
pub fn serve(
    name: &str,
    tcp: &[SocketAddr],
    udp: &[SocketAddr],
    threads: usize,
) -> anyhow::Result<()> {
    let server = Server::bind(name, tcp, udp)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);
    server.run(threads)
}

/// A server running on background threads; dropping it stops them.
pub struct RunningServer {
    stop: Option<OwnedFd>,
    handles: Vec<JoinHandle<()>>,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        // Closing the write end makes the pipe readable (EOF) for every worker.
        self.stop.take();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

const TOKEN_KIND: u64 = 0xffff_0000_0000;
const TOKEN_LISTENER: u64 = 1 << 32;
const TOKEN_UDP: u64 = 2 << 32;
const TOKEN_STOP: u64 = 3 << 32;
const MAX_LINE: usize = 64 * 1024;

struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> std::io::Result<Epoll> {
        // SAFETY: plain system call returning a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor we own.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, token: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: valid epoll descriptor and event struct.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, evs: &mut [libc::epoll_event]) -> std::io::Result<usize> {
        // SAFETY: the buffer is valid for evs.len() events.
        let n =
            unsafe { libc::epoll_wait(self.0.as_raw_fd(), evs.as_mut_ptr(), evs.len() as i32, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    want_out: bool,
}

struct Worker {
    server: Arc<Server>,
    epoll: Epoll,
    conns: HashMap<RawFd, Conn>,
    _stop: Option<Arc<OwnedFd>>,
}

impl Worker {
    fn new(server: Arc<Server>, stop: Option<Arc<OwnedFd>>) -> anyhow::Result<Worker> {
        let epoll = Epoll::new()?;
        // Shared sockets wake one worker per event (EPOLLEXCLUSIVE).
        let shared = (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32;
        for (i, l) in server.listeners.iter().enumerate() {
            epoll.ctl(
                libc::EPOLL_CTL_ADD,
                l.as_raw_fd(),
                shared,
                TOKEN_LISTENER | i as u64,
            )?;
        }
        for (i, s) in server.udp.iter().enumerate() {
            epoll.ctl(
                libc::EPOLL_CTL_ADD,
                s.as_raw_fd(),
                shared,
                TOKEN_UDP | i as u64,
            )?;
        }
        if let Some(s) = &stop {
            epoll.ctl(
                libc::EPOLL_CTL_ADD,
                s.as_raw_fd(),
                libc::EPOLLIN as u32,
                TOKEN_STOP,
            )?;
        }
        Ok(Worker {
            server,
            epoll,
            conns: HashMap::new(),
            _stop: stop,
        })
    }

    fn run(mut self) {
        let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            let n = match self.epoll.wait(&mut evs) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("sluice-probe: epoll_wait: {e}");
                    return;
                }
            };
            for ev in evs.iter().take(n) {
                let (events, token) = (ev.events, ev.u64);
                match token & TOKEN_KIND {
                    TOKEN_STOP => return,
                    TOKEN_LISTENER => self.accept((token & 0xffff_ffff) as usize),
                    TOKEN_UDP => self.udp((token & 0xffff_ffff) as usize),
                    _ => self.conn(token as RawFd, events),
                }
            }
        }
    }

    fn accept(&mut self, i: usize) {
        let server = self.server.clone();
        loop {
            match server.listeners[i].accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(true);
                    let _ = stream.set_nodelay(true);
                    let fd = stream.as_raw_fd();
                    if self
                        .epoll
                        .ctl(
                            libc::EPOLL_CTL_ADD,
                            fd,
                            (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                            fd as u64,
                        )
                        .is_ok()
                    {
                        self.conns.insert(
                            fd,
                            Conn {
                                stream,
                                inbuf: Vec::new(),
                                outbuf: Vec::new(),
                                want_out: false,
                            },
                        );
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // ECONNABORTED and the like: that connection is gone.
                Err(e)
                    if e.raw_os_error() == Some(libc::EMFILE)
                        || e.raw_os_error() == Some(libc::ENFILE) =>
                {
                    eprintln!("sluice-probe: accept: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    return;
                }
                Err(_) => continue,
            }
        }
    }

    fn conn(&mut self, fd: RawFd, events: u32) {
        let reply = self.server.reply.clone();
        let Some(c) = self.conns.get_mut(&fd) else {
            return;
        };
        let mut close = false;
        if events & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
        {
            let mut buf = [0u8; 4096];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        // EOF: a final request without newline still counts.
                        if !c.inbuf.is_empty() {
                            c.outbuf.extend_from_slice(&reply);
                            c.inbuf.clear();
                        }
                        close = true;
                        break;
                    }
                    Ok(n) => {
                        for &b in &buf[..n] {
                            if b == b'\n' {
                                c.outbuf.extend_from_slice(&reply);
                                c.inbuf.clear();
                            } else {
                                c.inbuf.push(b);
                            }
                        }
                        if c.inbuf.len() > MAX_LINE {
                            c.outbuf.extend_from_slice(&reply);
                            c.inbuf.clear();
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        close = true;
                        c.outbuf.clear();
                        break;
                    }
                }
            }
        }
        // Write what is pending.
        while !c.outbuf.is_empty() {
            match c.stream.write(&c.outbuf) {
                Ok(n) => {
                    c.outbuf.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    close = true;
                    c.outbuf.clear();
                    break;
                }
            }
        }
        if close {
            // Anything still unsent to a closing peer is dropped.
            let _ = self.epoll.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
            self.conns.remove(&fd);
            return;
        }
        let want_out = !c.outbuf.is_empty();
        if want_out != c.want_out {
            let mut ev = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
            if want_out {
                ev |= libc::EPOLLOUT as u32;
            }
            let _ = self.epoll.ctl(libc::EPOLL_CTL_MOD, fd, ev, fd as u64);
            c.want_out = want_out;
        }
    }

    fn udp(&mut self, i: usize) {
        let sock = &self.server.udp[i];
        let fd = sock.as_raw_fd();
        let mut buf = [0u8; 2048];
        loop {
            let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo, libc::in_pktinfo);
            let (from, info4, info6) = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = match socket::recvmsg::<SockaddrStorage>(
                    fd,
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(m) => m,
                    Err(nix::errno::Errno::EINTR) => continue,
                    // EAGAIN, or an error queued by an earlier send: stop here.
                    Err(_) => return,
                };
                let mut info4 = None;
                let mut info6 = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        match c {
                            ControlMessageOwned::Ipv4PacketInfo(pi) => info4 = Some(pi),
                            ControlMessageOwned::Ipv6PacketInfo(pi) => info6 = Some(pi),
                            _ => {}
                        }
                    }
                }
                (msg.address, info4, info6)
            };
            let Some(from) = from else { continue };
            // Answer from the address the datagram was sent to.
            let reply = [IoSlice::new(&self.server.reply)];
            let r = if let Some(pi) = info4 {
                let out = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: pi.ipi_addr,
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                socket::sendmsg(
                    fd,
                    &reply,
                    &[ControlMessage::Ipv4PacketInfo(&out)],
                    MsgFlags::MSG_DONTWAIT,
                    Some(&from),
                )
            } else if let Some(pi) = info6 {
                let dst = Ipv6Addr::from(pi.ipi6_addr.s6_addr);
                let link_local = dst.segments()[0] & 0xffc0 == 0xfe80;
                let out = libc::in6_pktinfo {
                    ipi6_addr: pi.ipi6_addr,
                    ipi6_ifindex: if link_local { pi.ipi6_ifindex } else { 0 },
                };
                socket::sendmsg(
                    fd,
                    &reply,
                    &[ControlMessage::Ipv6PacketInfo(&out)],
                    MsgFlags::MSG_DONTWAIT,
                    Some(&from),
                )
            } else {
                socket::sendmsg(fd, &reply, &[], MsgFlags::MSG_DONTWAIT, Some(&from))
            };
            let _ = r;
        }
    }
}

// ================================================================ client

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// The name the server answered with.
    pub backend: Option<String>,
    /// `getpeername()` for TCP and connected UDP; the reply's source address
    /// for unconnected UDP.
    pub peer: Option<String>,
    /// `getsockname()`: our own address and port.
    pub local: Option<String>,
    /// From just before `connect()` (or the first send) until the answer was
    /// read (for [`latency`]: until the socket was closed).
    pub latency_ns: u64,
    /// The errno name of the failure (`ECONNREFUSED`, `ETIMEDOUT` for a
    /// connect or answer that did not come in time, `EOF` if the server
    /// closed without answering), or null.
    pub error: Option<String>,
}

/// How to talk to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// New TCP connection, one request, close.
    Tcp,
    /// Unconnected UDP socket: sendto, recvfrom.
    Udp,
    /// Connected UDP socket: connect, getpeername, send, recv.
    ConnectedUdp,
}

/// The errno name of an I/O error, e.g. `ECONNREFUSED`.
pub fn errno_name(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.raw_os_error() {
        // A receive timeout (SO_RCVTIMEO) surfaces as EAGAIN.
        Some(n) if n == libc::EAGAIN => "ETIMEDOUT".to_string(),
        Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
        None => match e.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => "ETIMEDOUT".to_string(),
            ErrorKind::UnexpectedEof => "EOF".to_string(),
            _ => e.to_string(),
        },
    }
}

/// `ip:port`, with IPv4-mapped IPv6 addresses shown as IPv4.
pub fn fmt_addr(a: SocketAddr) -> String {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()).to_string(),
            None => a.to_string(),
        },
        _ => a.to_string(),
    }
}

/// Read up to and including a newline; the line without it.
fn read_line<R: Read>(r: &mut R) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(pos) = line.iter().position(|&b| b == b'\n') {
            line.truncate(pos);
            return Ok(String::from_utf8_lossy(&line).trim().to_string());
        }
        if line.len() > MAX_LINE {
            return Ok(String::from_utf8_lossy(&line).trim().to_string());
        }
    }
}

/// Close with RST instead of FIN (no TIME_WAIT left behind), so that many
/// connections in a row do not use up the ephemeral ports.
pub fn set_linger_zero(s: &TcpStream) {
    let _ = socket::setsockopt(
        s,
        sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
}

fn finish(t0: Instant, r: std::io::Result<(String, String, String)>) -> Attempt {
    let latency_ns = t0.elapsed().as_nanos() as u64;
    match r {
        Ok((backend, peer, local)) => Attempt {
            backend: Some(backend),
            peer: Some(peer),
            local: Some(local),
            latency_ns,
            error: None,
        },
        Err(e) => Attempt {
            backend: None,
            peer: None,
            local: None,
            latency_ns,
            error: Some(errno_name(&e)),
        },
    }
}

fn tcp_exchange(
    to: SocketAddr,
    timeout: Duration,
    rst: bool,
) -> std::io::Result<(String, String, String)> {
    let mut s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    let peer = fmt_addr(s.peer_addr()?);
    let local = fmt_addr(s.local_addr()?);
    s.write_all(b"hi\n")?;
    let name = read_line(&mut s)?;
    if rst {
        set_linger_zero(&s);
    }
    Ok((name, peer, local))
}

/// One TCP connection: connect, getpeername, send `hi`, read the answer.
/// The latency covers connect + request + answer; then the socket is closed
/// normally.
pub fn tcp_once(to: SocketAddr, timeout: Duration) -> Attempt {
    let t0 = Instant::now();
    let r = tcp_exchange(to, timeout, false);
    finish(t0, r)
}

fn udp_socket(to: SocketAddr, timeout: Duration) -> std::io::Result<UdpSocket> {
    let bind: SocketAddr = match to {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(timeout))?;
    Ok(s)
}

fn text(buf: &[u8]) -> String {
    String::from_utf8_lossy(buf).trim().to_string()
}

/// One exchange on an unconnected UDP socket: sendto, recvfrom; `peer` is
/// where the answer came from.
pub fn udp_once(to: SocketAddr, timeout: Duration) -> Attempt {
    let t0 = Instant::now();
    let r = (|| {
        let s = udp_socket(to, timeout)?;
        s.send_to(b"hi\n", to)?;
        let mut buf = [0u8; 512];
        let (n, from) = s.recv_from(&mut buf)?;
        Ok((text(&buf[..n]), fmt_addr(from), fmt_addr(s.local_addr()?)))
    })();
    finish(t0, r)
}

/// One exchange on a connected UDP socket: connect, getpeername, send, recv.
pub fn connected_udp_once(to: SocketAddr, timeout: Duration) -> Attempt {
    let t0 = Instant::now();
    let r = (|| {
        let s = udp_socket(to, timeout)?;
        s.connect(to)?;
        let peer = fmt_addr(s.peer_addr()?);
        s.send(b"hi\n")?;
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf)?;
        Ok((text(&buf[..n]), peer, fmt_addr(s.local_addr()?)))
    })();
    finish(t0, r)
}

/// One request in the given mode.
pub fn attempt(mode: Mode, to: SocketAddr, timeout: Duration) -> Attempt {
    match mode {
        Mode::Tcp => tcp_once(to, timeout),
        Mode::Udp => udp_once(to, timeout),
        Mode::ConnectedUdp => connected_udp_once(to, timeout),
    }
}

/// What `sluice-probe connect` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub results: Vec<Attempt>,
    /// How many attempts failed, by errno name.
    pub errors: BTreeMap<String, usize>,
    /// How many attempts each backend answered.
    pub backends: BTreeMap<String, usize>,
}

impl Report {
    pub fn new(results: Vec<Attempt>) -> Report {
        let mut errors = BTreeMap::new();
        let mut backends = BTreeMap::new();
        for r in &results {
            if let Some(e) = &r.error {
                *errors.entry(e.clone()).or_insert(0) += 1;
            }
            if let Some(b) = &r.backend {
                *backends.entry(b.clone()).or_insert(0) += 1;
            }
        }
        Report {
            results,
            errors,
            backends,
        }
    }
}

/// `count` attempts in a row; failures are recorded, not fatal.
pub fn connect(mode: Mode, to: SocketAddr, count: usize, timeout: Duration) -> Report {
    Report::new((0..count).map(|_| attempt(mode, to, timeout)).collect())
}

/// What `sluice-probe latency` prints (nanoseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LatencyReport {
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub mean_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
    /// Successful measured samples.
    pub n: usize,
    /// Failed attempts (warm-up included), by errno name.
    pub errors: BTreeMap<String, usize>,
    /// Every successful sample in order, if asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples_ns: Option<Vec<u64>>,
}

/// New-connection latency: `warmup` unmeasured rounds, then `count` rounds
/// of connect + one request/answer + close (with RST, so no TIME_WAIT piles
/// up). Failed rounds are counted in `errors`, not in the percentiles.
pub fn latency(
    to: SocketAddr,
    count: usize,
    warmup: usize,
    timeout: Duration,
    keep_samples: bool,
) -> LatencyReport {
    let mut samples = Vec::with_capacity(count);
    let mut errors = BTreeMap::new();
    for i in 0..warmup + count {
        let t0 = Instant::now();
        let r = tcp_exchange(to, timeout, true); // the stream is closed when dropped inside
        let ns = t0.elapsed().as_nanos() as u64;
        match r {
            Ok(_) if i >= warmup => samples.push(ns),
            Ok(_) => {}
            Err(e) => *errors.entry(errno_name(&e)).or_insert(0) += 1,
        }
    }
    let raw = keep_samples.then(|| samples.clone());
    let s = crate::stats::summary(&mut samples);
    LatencyReport {
        p50_ns: s.p50,
        p90_ns: s.p90,
        p99_ns: s.p99,
        mean_ns: s.mean,
        min_ns: s.min,
        max_ns: s.max,
        n: s.n,
        errors,
        samples_ns: raw,
    }
}

/// One line of [`hold`]'s output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HoldLine {
    /// Milliseconds since the hold began.
    pub t_ms: u64,
    pub backend: Option<String>,
    pub peer: Option<String>,
    pub latency_ns: u64,
    pub error: Option<String>,
}

enum HeldSocket {
    Tcp(TcpStream),
    Udp(UdpSocket, bool),
}

/// One long-lived connection (or UDP socket) kept for `duration`, sending a
/// request every `interval`; each answer or error goes to `out`. Stops at
/// the first error and returns false; true if every request was answered.
pub fn hold(
    mode: Mode,
    to: SocketAddr,
    duration: Duration,
    interval: Duration,
    timeout: Duration,
    mut out: impl FnMut(&HoldLine),
) -> bool {
    let start = Instant::now();
    let line = |t0: Instant, r: std::io::Result<(String, String)>| -> HoldLine {
        let t_ms = start.elapsed().as_millis() as u64;
        let latency_ns = t0.elapsed().as_nanos() as u64;
        match r {
            Ok((b, p)) => HoldLine {
                t_ms,
                backend: Some(b),
                peer: Some(p),
                latency_ns,
                error: None,
            },
            Err(e) => HoldLine {
                t_ms,
                backend: None,
                peer: None,
                latency_ns,
                error: Some(errno_name(&e)),
            },
        }
    };
    let t0 = Instant::now();
    let opened: std::io::Result<(HeldSocket, String)> = (|| match mode {
        Mode::Tcp => {
            let s = TcpStream::connect_timeout(&to, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_nodelay(true)?;
            let peer = fmt_addr(s.peer_addr()?);
            Ok((HeldSocket::Tcp(s), peer))
        }
        Mode::ConnectedUdp => {
            let s = udp_socket(to, timeout)?;
            s.connect(to)?;
            let peer = fmt_addr(s.peer_addr()?);
            Ok((HeldSocket::Udp(s, true), peer))
        }
        Mode::Udp => Ok((
            HeldSocket::Udp(udp_socket(to, timeout)?, false),
            String::new(),
        )),
    })();
    let (mut sock, peer) = match opened {
        Ok(x) => x,
        Err(e) => {
            out(&line(t0, Err(e)));
            return false;
        }
    };
    let mut next = Instant::now();
    while start.elapsed() < duration {
        let t0 = Instant::now();
        let r = match &mut sock {
            HeldSocket::Tcp(s) => s
                .write_all(b"hi\n")
                .and_then(|_| read_line(s))
                .map(|b| (b, peer.clone())),
            HeldSocket::Udp(s, true) => s.send(b"hi\n").and_then(|_| {
                let mut buf = [0u8; 512];
                let n = s.recv(&mut buf)?;
                Ok((text(&buf[..n]), peer.clone()))
            }),
            HeldSocket::Udp(s, false) => s.send_to(b"hi\n", to).and_then(|_| {
                let mut buf = [0u8; 512];
                let (n, from) = s.recv_from(&mut buf)?;
                Ok((text(&buf[..n]), fmt_addr(from)))
            }),
        };
        let failed = r.is_err();
        out(&line(t0, r));
        if failed {
            return false;
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names() {
        assert_eq!(
            errno_name(&std::io::Error::from_raw_os_error(libc::ECONNREFUSED)),
            "ECONNREFUSED"
        );
        assert_eq!(
            errno_name(&std::io::Error::from_raw_os_error(libc::EAGAIN)),
            "ETIMEDOUT"
        );
        assert_eq!(
            errno_name(&std::io::ErrorKind::TimedOut.into()),
            "ETIMEDOUT"
        );
        assert_eq!(errno_name(&std::io::ErrorKind::UnexpectedEof.into()), "EOF");
    }

    #[test]
    fn maps_v4_mapped_peers() {
        let a: SocketAddr = "[::ffff:198.18.1.10]:80".parse().unwrap();
        assert_eq!(fmt_addr(a), "198.18.1.10:80");
        let b: SocketAddr = "[fd00:5c:1::10]:80".parse().unwrap();
        assert_eq!(fmt_addr(b), "[fd00:5c:1::10]:80");
    }

    /// On loopback inside a throwaway namespace (never the host's): the
    /// server answers TCP (many requests per connection) and UDP (from the
    /// address the datagram went to). Needs root; skipped otherwise.
    #[test]
    fn serves_tcp_and_udp_on_loopback() {
        if !crate::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = crate::netns::Netns::new("tb-probe").unwrap();
        ns.enter(loopback_checks);
    }

    fn loopback_checks() {
        let server = Server::bind(
            "alpha",
            &["127.0.0.1:0".parse().unwrap()],
            &["127.0.0.1:0".parse().unwrap()],
        )
        .unwrap();
        let (t, u) = (server.tcp_addrs()[0], server.udp_addrs()[0]);
        let running = server.spawn(2).unwrap();
        let a = tcp_once(t, DEFAULT_TIMEOUT);
        assert_eq!(a.backend.as_deref(), Some("alpha"), "{a:?}");
        assert_eq!(a.peer, Some(t.to_string()));
        let a = udp_once(u, DEFAULT_TIMEOUT);
        assert_eq!(
            (a.backend.as_deref(), a.peer.as_deref()),
            (Some("alpha"), Some(u.to_string().as_str())),
            "{a:?}"
        );
        let a = connected_udp_once(u, DEFAULT_TIMEOUT);
        assert_eq!(a.backend.as_deref(), Some("alpha"), "{a:?}");
        let mut lines = Vec::new();
        assert!(hold(
            Mode::Tcp,
            t,
            Duration::from_millis(50),
            Duration::from_millis(10),
            DEFAULT_TIMEOUT,
            |l| lines.push(l.clone())
        ));
        assert!(
            lines.len() >= 3 && lines.iter().all(|l| l.backend.as_deref() == Some("alpha")),
            "{lines:?}"
        );
        // Pipelined requests on one connection, and a final one without newline.
        let mut s = TcpStream::connect(t).unwrap();
        s.write_all(b"a\nb\nc").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        assert_eq!(all, "alpha\nalpha\nalpha\n");
        let l = latency(t, 20, 2, DEFAULT_TIMEOUT, true);
        assert_eq!((l.n, l.errors.len()), (20, 0), "{l:?}");
        assert!(l.p50_ns > 0 && l.p50_ns <= l.p99_ns && l.samples_ns.unwrap().len() == 20);
        drop(running);
        let a = tcp_once(t, Duration::from_millis(500));
        assert_eq!(a.error.as_deref(), Some("ECONNREFUSED"), "{a:?}");
    }
}
