//! A TCP link between a test's client and a server, which the test cuts and mends to stage
//! a network outage while the server stays up.

use super::free_local_address;

/// A TCP link to a server that a test can cut and mend: the server stays up, the network
/// between fails (connections refused, open ones reset), as in an outage of a remote store.
pub struct Link {
    /// `127.0.0.1:<port>` to connect to instead of the server.
    pub address: String,
    target: String,
    state: std::sync::Arc<LinkState>,
}

#[derive(Default)]
struct LinkState {
    up: std::sync::atomic::AtomicBool,
    open: std::sync::Mutex<Vec<std::net::TcpStream>>,
}

impl Link {
    /// A link to `target` (`host:port`), up.
    pub fn to(target: &str) -> Link {
        let link = Link {
            address: free_local_address(),
            target: target.to_owned(),
            state: Default::default(),
        };
        link.mend();
        link
    }

    /// Refuses new connections and resets the open ones.
    pub fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.state.up.store(false, Ordering::SeqCst);
        // Wake the accept loop so it drops the listener.
        let _ = std::net::TcpStream::connect(&self.address);
        let mut open = self.state.open.lock().unwrap_or_else(|p| p.into_inner());
        for stream in open.drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accepts and forwards connections again, on the same address.
    pub fn mend(&self) {
        use std::sync::atomic::Ordering;
        let listener = loop {
            match std::net::TcpListener::bind(&self.address) {
                Ok(listener) => break listener,
                // The previous accept loop may still hold the port for a moment.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        };
        self.state.up.store(true, Ordering::SeqCst);
        let (state, target) = (self.state.clone(), self.target.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if !state.up.load(Ordering::SeqCst) {
                    return;
                }
                let (Ok(client), Ok(server)) = (client, std::net::TcpStream::connect(&target))
                else {
                    continue;
                };
                let mut open = state.open.lock().unwrap_or_else(|p| p.into_inner());
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
                open.extend([client, server]);
            }
        });
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cut();
    }
}
