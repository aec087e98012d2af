//! The probe: a server that answers with its name, and clients that
//! connect the way applications do and report what they saw.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use serde::Serialize;

const TIMEOUT: Duration = Duration::from_secs(3);

/// Serve TCP and UDP listeners forever, answering `NAME\n` to each request.
pub fn serve(name: &str, tcp: &[SocketAddr], udp: &[SocketAddr]) -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    for a in tcp {
        listeners.push(TcpListener::bind(a).map_err(|e| anyhow::anyhow!("tcp {a}: {e}"))?);
    }
    let mut sockets = Vec::new();
    for a in udp {
        sockets.push(UdpSocket::bind(a).map_err(|e| anyhow::anyhow!("udp {a}: {e}"))?);
    }
    println!("ready");
    std::io::stdout().flush()?;
    let reply = format!("{name}\n");
    let mut threads = Vec::new();
    // A fixed set of workers per listener, each accepting and serving
    // inline: no thread is started per connection, which would dominate
    // the latency being measured.
    for l in listeners {
        for _ in 0..8 {
            let l = l.try_clone()?;
            let reply = reply.clone();
            threads.push(std::thread::spawn(move || loop {
                let Ok((conn, _)) = l.accept() else { continue };
                let Ok(mut w) = conn.try_clone() else { continue };
                for line in BufReader::new(conn).lines() {
                    if line.is_err() || w.write_all(reply.as_bytes()).is_err() {
                        break;
                    }
                }
            }));
        }
    }
    for s in sockets {
        let reply = reply.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((_, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(reply.as_bytes(), from);
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// The name the server answered with.
    pub backend: Option<String>,
    /// getpeername() for TCP and connected UDP; the reply's source for unconnected UDP.
    pub peer: Option<String>,
    pub latency_ns: u64,
    /// errno name of the first failure, e.g. ECONNREFUSED.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tcp,
    Udp,
    ConnectedUdp,
}

pub fn errno_name(e: &std::io::Error) -> String {
    let names = [
        (libc::ECONNREFUSED, "ECONNREFUSED"),
        (libc::ECONNRESET, "ECONNRESET"),
        (libc::ECONNABORTED, "ECONNABORTED"),
        (libc::ETIMEDOUT, "ETIMEDOUT"),
        (libc::EPERM, "EPERM"),
        (libc::EACCES, "EACCES"),
        (libc::ENETUNREACH, "ENETUNREACH"),
        (libc::EHOSTUNREACH, "EHOSTUNREACH"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::EPIPE, "EPIPE"),
        (libc::EDESTADDRREQ, "EDESTADDRREQ"),
    ];
    match e.raw_os_error() {
        Some(n) => names.iter().find(|(c, _)| *c == n).map(|(_, s)| s.to_string()).unwrap_or(format!("errno {n}")),
        None if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => "ETIMEDOUT".into(),
        None => e.to_string(),
    }
}

fn fmt_addr(a: SocketAddr) -> String {
    // IPv4-mapped addresses on a dual-stack socket read as IPv4.
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{}", v6.port()),
            None => a.to_string(),
        },
        _ => a.to_string(),
    }
}

fn read_line(s: &mut TcpStream) -> std::io::Result<String> {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::from_raw_os_error(libc::ECONNRESET));
    }
    Ok(line.trim().to_string())
}

/// Close without TIME_WAIT, so that benchmarks can open many connections.
pub fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a descriptor we own with a properly sized value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// One TCP connection: connect, ask once, close.
pub fn tcp_once(to: SocketAddr) -> Attempt {
    let t0 = Instant::now();
    let r = (|| -> std::io::Result<(String, String)> {
        let mut s = TcpStream::connect_timeout(&to, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        let peer = fmt_addr(s.peer_addr()?);
        s.write_all(b"hi\n")?;
        let name = read_line(&mut s)?;
        set_linger_zero(&s);
        Ok((name, peer))
    })();
    finish(t0, r)
}

fn finish(t0: Instant, r: std::io::Result<(String, String)>) -> Attempt {
    let latency_ns = t0.elapsed().as_nanos() as u64;
    match r {
        Ok((name, peer)) => Attempt { backend: Some(name), peer: Some(peer), latency_ns, error: None },
        Err(e) => Attempt { backend: None, peer: None, latency_ns, error: Some(errno_name(&e)) },
    }
}

fn udp_socket(to: SocketAddr) -> std::io::Result<UdpSocket> {
    let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    Ok(s)
}

/// One unconnected UDP exchange: sendto, recvfrom.
pub fn udp_once(to: SocketAddr) -> Attempt {
    let t0 = Instant::now();
    let r = (|| -> std::io::Result<(String, String)> {
        let s = udp_socket(to)?;
        s.send_to(b"hi\n", to)?;
        let mut buf = [0u8; 512];
        let (n, from) = s.recv_from(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf[..n]).trim().to_string(), fmt_addr(from)))
    })();
    finish(t0, r)
}

/// One connected UDP exchange: connect, getpeername, send, recv.
pub fn connected_udp_once(to: SocketAddr) -> Attempt {
    let t0 = Instant::now();
    let r = (|| -> std::io::Result<(String, String)> {
        let s = udp_socket(to)?;
        s.connect(to)?;
        let peer = fmt_addr(s.peer_addr()?);
        s.send(b"hi\n")?;
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf[..n]).trim().to_string(), peer))
    })();
    finish(t0, r)
}

pub fn attempt(mode: Mode, to: SocketAddr) -> Attempt {
    match mode {
        Mode::Tcp => tcp_once(to),
        Mode::Udp => udp_once(to),
        Mode::ConnectedUdp => connected_udp_once(to),
    }
}

/// A long-lived TCP connection asking every 100 ms for `secs` seconds; one
/// JSON line per answer. Returns false if any request failed.
pub fn hold(to: SocketAddr, secs: f64) -> bool {
    let mut ok = true;
    let mut s = match TcpStream::connect_timeout(&to, TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            println!("{}", serde_json::json!({"error": errno_name(&e)}));
            return false;
        }
    };
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let peer = s.peer_addr().map(fmt_addr).unwrap_or_default();
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs {
        let r = s.write_all(b"hi\n").and_then(|_| read_line(&mut s));
        match r {
            Ok(name) => println!("{}", serde_json::json!({"backend": name, "peer": peer})),
            Err(e) => {
                println!("{}", serde_json::json!({"error": errno_name(&e)}));
                ok = false;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ok
}
