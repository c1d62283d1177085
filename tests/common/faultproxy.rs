//! A TCP fault proxy for tests: forwards connections to an upstream address and can make it
//! unreachable (every connection reset, new ones closed at once) and reachable again. Put
//! it between Sluice and a broker that advertises the proxy's address
//! (`TestBroker::start_tansu_advertising`), or clients bypass it after the first metadata
//! answer.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// A running proxy; stops (and closes every connection) when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    down: AtomicBool,
    stop: AtomicBool,
    /// Both ends of every open connection, to reset them.
    conns: Mutex<Vec<(TcpStream, TcpStream)>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:port` and forwards to `upstream`.
    pub fn start(port: u16, upstream: SocketAddr) -> Result<FaultProxy, String> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("proxy bind {port}: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let shared = Arc::new(Shared {
            upstream,
            down: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            pumps: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let acceptor = thread::spawn(move || accept_loop(&listener, &s));
        Ok(FaultProxy { addr, shared, acceptor: Some(acceptor) })
    }

    /// Makes the upstream unreachable: resets every open connection and closes new ones at
    /// once, until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.shared.down.store(true, Ordering::SeqCst);
        reset_all(&self.shared);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.shared.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        reset_all(&self.shared);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let pumps: Vec<_> = self.shared.pumps.lock().unwrap().drain(..).collect();
        for p in pumps {
            let _ = p.join();
        }
    }
}

fn reset_all(shared: &Shared) {
    for (a, b) in shared.conns.lock().unwrap().drain(..) {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if shared.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) =
                    TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(2))
                else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { continue };
                let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) else { continue };
                shared.conns.lock().unwrap().push((c3, s3));
                let mut pumps = shared.pumps.lock().unwrap();
                pumps.retain(|p| !p.is_finished());
                pumps.push(thread::spawn(move || pump(client, s2)));
                pumps.push(thread::spawn(move || pump(server, c2)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Copies `from` to `to` until either side closes.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
