//! One request to the agent, with a deadline.
//!
//! The wire protocol is `sluice_api::call`'s (write the JSON request, shut
//! down the write side, read the JSON reply to EOF); that function has no
//! timeout, and a CNI plugin must not hang its runtime, so this is a copy
//! with one: every write and read gets the time left until the deadline.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_api::{Request, Response};

#[derive(Debug)]
pub enum CallError {
    /// Nothing listens at the socket (no file, refused, no permission).
    Unreachable { path: PathBuf, source: std::io::Error },
    /// The agent did not answer in time.
    Timeout(Duration),
    /// The agent closed the connection without a reply (it crashed or restarted).
    NoReply,
    Io(std::io::Error),
    /// The reply is not a `Response` this plugin knows.
    Decode(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable { path, source } => write!(
                f,
                "cannot connect to the Sluice agent at {}: {source} (is `sluice agent` running, \
                 with this --api-socket? see agentSocket in the network configuration)",
                path.display()
            ),
            CallError::Timeout(t) => {
                write!(f, "the Sluice agent did not answer within {:.1} s (timeoutSeconds)", t.as_secs_f64())
            }
            CallError::NoReply => {
                f.write_str("the Sluice agent closed the connection without answering (did it crash or restart?)")
            }
            CallError::Io(e) => write!(f, "talking to the Sluice agent: {e}"),
            CallError::Decode(e) => write!(f, "the Sluice agent's reply is not one this plugin understands: {e}"),
        }
    }
}

pub struct Agent {
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl Agent {
    pub fn new(socket: &Path, timeout: Duration) -> Agent {
        Agent { socket: socket.to_path_buf(), timeout }
    }

    pub fn call(&self, req: &Request) -> Result<Response, CallError> {
        let deadline = Instant::now() + self.timeout;
        let mut s = UnixStream::connect(&self.socket)
            .map_err(|source| CallError::Unreachable { path: self.socket.clone(), source })?;
        let body = serde_json::to_vec(req).map_err(|e| CallError::Decode(e.to_string()))?;
        let left = |d: Instant| -> Result<Duration, CallError> {
            let now = Instant::now();
            if now >= d {
                return Err(CallError::Timeout(self.timeout));
            }
            Ok(d - now)
        };
        s.set_write_timeout(Some(left(deadline)?)).map_err(CallError::Io)?;
        s.write_all(&body).map_err(|e| io_error(e, self.timeout))?;
        match s.shutdown(std::net::Shutdown::Write) {
            Ok(()) => {}
            // The agent went away between accept and our shutdown.
            Err(e) if e.kind() == ErrorKind::NotConnected => return Err(CallError::NoReply),
            Err(e) => return Err(CallError::Io(e)),
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            s.set_read_timeout(Some(left(deadline)?)).map_err(CallError::Io)?;
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(e, self.timeout)),
            }
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            return Err(CallError::NoReply);
        }
        serde_json::from_slice(&buf).map_err(|e| CallError::Decode(e.to_string()))
    }
}

fn io_error(e: std::io::Error, timeout: Duration) -> CallError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => CallError::Timeout(timeout),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof => CallError::NoReply,
        _ => CallError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    fn temp_socket(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-cni-client-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("agent.sock")
    }

    /// A fake agent answering one connection with `reply` after `delay`.
    fn fake(path: &Path, reply: &'static str, delay: Duration) -> std::thread::JoinHandle<String> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = String::new();
            c.read_to_string(&mut req).unwrap();
            std::thread::sleep(delay);
            let _ = c.write_all(reply.as_bytes());
            req
        })
    }

    #[test]
    fn request_and_reply_on_the_wire() {
        let p = temp_socket("ok");
        let t = fake(&p, r#"{"result":"cni-done","message":"ok"}"#, Duration::ZERO);
        let r = Agent::new(&p, Duration::from_secs(5)).call(&Request::CniStatus).unwrap();
        assert!(matches!(r, Response::CniDone { ref message } if message == "ok"), "{r:?}");
        assert_eq!(t.join().unwrap(), r#"{"op":"cni-status"}"#);
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }

    #[test]
    fn slow_agent_times_out() {
        let p = temp_socket("slow");
        let _t = fake(&p, r#"{"result":"cni-done","message":"ok"}"#, Duration::from_secs(3));
        let t0 = Instant::now();
        let e = Agent::new(&p, Duration::from_millis(300)).call(&Request::CniStatus).unwrap_err();
        assert!(matches!(e, CallError::Timeout(_)), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }

    #[test]
    fn empty_reply_is_no_reply_and_garbage_is_decode() {
        let p = temp_socket("empty");
        let t = fake(&p, "", Duration::ZERO);
        let e = Agent::new(&p, Duration::from_secs(5)).call(&Request::CniStatus).unwrap_err();
        assert!(matches!(e, CallError::NoReply), "{e}");
        t.join().unwrap();
        std::fs::remove_file(&p).unwrap();
        let _t = fake(&p, r#"{"result":"what"}"#, Duration::ZERO);
        let e = Agent::new(&p, Duration::from_secs(5)).call(&Request::CniStatus).unwrap_err();
        assert!(matches!(e, CallError::Decode(_)), "{e}");
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }

    #[test]
    fn no_socket_is_unreachable() {
        let p = temp_socket("none");
        let e = Agent::new(&p, Duration::from_secs(5)).call(&Request::CniStatus).unwrap_err();
        assert!(matches!(e, CallError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains(p.to_str().unwrap()));
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}
