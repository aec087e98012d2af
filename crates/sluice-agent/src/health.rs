//! Health check node ports, as kube-proxy serves them: for a LoadBalancer
//! Service with `externalTrafficPolicy: Local`, an HTTP endpoint on its
//! `healthCheckNodePort` at every node address, answering `200` when this
//! node has endpoints of the service and `503` when it has none, so that the
//! load balancer in front sends traffic only to nodes that can serve it
//! (the others drop it: see the datapath's `drop_no_local_backend`).
//!
//! The body is kube-proxy's JSON:
//! `{"service":{"namespace":"NS","name":"NAME"},"localEndpoints":N,"serviceProxyHealthy":true}`.
//!
//! One listener thread per port, in the agent's network namespace (the
//! node's); the answer is read from shared state, so an apply changes it
//! without touching the listener.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One health check port and what it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub port: u16,
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

type Table = Arc<Mutex<BTreeMap<u16, HealthCheck>>>;

struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The health check listeners of the agent.
pub struct HealthServer {
    table: Table,
    listeners: BTreeMap<u16, Listener>,
    /// `[::]` (every node address, both families); tests use loopback.
    bind: std::net::IpAddr,
}

impl Default for HealthServer {
    fn default() -> Self {
        HealthServer::binding(Ipv6Addr::UNSPECIFIED.into())
    }
}

/// The HTTP response for `hc`.
pub fn response(hc: &HealthCheck) -> String {
    let body = format!(
        "{{\"service\":{{\"namespace\":{},\"name\":{}}},\"localEndpoints\":{},\"serviceProxyHealthy\":true}}",
        serde_json::Value::from(hc.namespace.as_str()),
        serde_json::Value::from(hc.name.as_str()),
        hc.local_endpoints
    );
    let status = if hc.local_endpoints > 0 { "200 OK" } else { "503 Service Unavailable" };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n\
         X-Load-Balancing-Endpoint-Weight: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        hc.local_endpoints,
        body.len()
    )
}

fn serve(listener: TcpListener, port: u16, table: Table, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                // The request itself does not matter (any path, any method).
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let hc = table.lock().unwrap_or_else(|p| p.into_inner()).get(&port).cloned();
                if let Some(hc) = hc {
                    let _ = s.write_all(response(&hc).as_bytes());
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl HealthServer {
    /// Listeners on `bind` instead of every address.
    pub fn binding(bind: std::net::IpAddr) -> Self {
        HealthServer { table: Table::default(), listeners: BTreeMap::new(), bind }
    }

    /// Serve exactly `desired`: new ports get a listener, gone ones lose
    /// theirs, the others only change their answer. Returns one message per
    /// port that could not be bound (the rest are served).
    pub fn reconcile(&mut self, desired: Vec<HealthCheck>) -> Vec<String> {
        let mut problems = Vec::new();
        {
            let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
            *t = desired.iter().map(|h| (h.port, h.clone())).collect();
        }
        self.listeners.retain(|port, _| desired.iter().any(|h| h.port == *port));
        for hc in &desired {
            if self.listeners.contains_key(&hc.port) {
                continue;
            }
            // [::] takes IPv4 too (dual-stack), at every node address.
            let bound = TcpListener::bind(SocketAddr::from((self.bind, hc.port)))
                .and_then(|l| l.set_nonblocking(true).map(|_| l));
            match bound {
                Ok(l) => {
                    let stop = Arc::new(AtomicBool::new(false));
                    let (table, s2, port) = (self.table.clone(), stop.clone(), hc.port);
                    let thread = std::thread::Builder::new()
                        .name(format!("health-{port}"))
                        .spawn(move || serve(l, port, table, s2))
                        .ok();
                    self.listeners.insert(hc.port, Listener { stop, thread });
                }
                Err(e) => problems.push(format!(
                    "health check node port {} of Service {}/{}: {e}",
                    hc.port, hc.namespace, hc.name
                )),
            }
        }
        problems
    }

    /// Ports served now.
    pub fn ports(&self) -> Vec<u16> {
        self.listeners.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(port: u16, n: usize) -> HealthCheck {
        HealthCheck { port, namespace: "ns".into(), name: "web".into(), local_endpoints: n }
    }

    #[test]
    fn answers_as_kube_proxy_does() {
        let ok = response(&hc(1, 2));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with(r#"{"service":{"namespace":"ns","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}"#), "{ok}");
        assert!(ok.contains("X-Load-Balancing-Endpoint-Weight: 2\r\n"));
        let none = response(&hc(1, 0));
        assert!(none.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{none}");
        assert!(none.contains("\"localEndpoints\":0"));
        let body = none.split("\r\n\r\n").nth(1).unwrap();
        assert!(none.contains(&format!("Content-Length: {}\r\n", body.len())));
    }

    #[test]
    fn reconcile_serves_changes_and_stops() {
        // Loopback only: a unit test touches no network.
        let port = TcpListener::bind("[::1]:0").unwrap().local_addr().unwrap().port();
        let mut s = HealthServer::binding(Ipv6Addr::LOCALHOST.into());
        assert!(s.reconcile(vec![hc(port, 0)]).is_empty());
        let get = || {
            let mut c = std::net::TcpStream::connect(("::1", port)).unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        };
        assert!(get().starts_with("HTTP/1.1 503"));
        assert!(s.reconcile(vec![hc(port, 1)]).is_empty());
        assert!(get().starts_with("HTTP/1.1 200"));
        assert_eq!(s.ports(), vec![port]);
        s.reconcile(vec![]);
        assert!(s.ports().is_empty());
        assert!(std::net::TcpStream::connect(("::1", port)).is_err(), "the listener is gone");
        // A port someone else holds: reported, not fatal.
        let held = TcpListener::bind("[::1]:0").unwrap();
        let p2 = held.local_addr().unwrap().port();
        let problems = s.reconcile(vec![hc(p2, 1)]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains(&p2.to_string()) && problems[0].contains("ns/web"));
    }
}
