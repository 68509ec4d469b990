//! The accept side of the listeners beside the proxy (the admin API, forward-auth, ext_authz):
//! they share the process's file descriptors with the proxy, so each holds at most
//! `max_connections` connections at once. A full listener stops accepting until one of its
//! connections ends — further clients wait in the kernel's backlog, as with nginx's
//! `worker_connections` — instead of taking descriptors the proxy's clients need.
//!
//! The proxy's own listeners have their limits in the proxy crate (`ConnectionGate`); the doors'
//! HTTP servers add their header and idle timeouts themselves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How a door beside the proxy treats its clients: its own connection limit, and the proxy's
/// `[server]` timeouts for reading a request.
#[derive(Debug, Clone, Copy)]
pub struct DoorLimits {
    pub max_connections: usize,
    /// Longest time a client may take to send a request head, and the longest an idle
    /// keep-alive connection waits for its next one (HTTP/1; `server.header_read_timeout`).
    pub header_read_timeout: Duration,
    /// Longest wait for the next bytes of a request body (`server.body_read_timeout`).
    pub body_read_timeout: Duration,
}

impl DoorLimits {
    pub fn of(server: &crate::config::ServerConfig, max_connections: usize) -> Self {
        DoorLimits {
            max_connections,
            header_read_timeout: server.header_read_timeout,
            body_read_timeout: server.body_read_timeout,
        }
    }
}

impl Default for DoorLimits {
    /// `[server]`'s defaults, with the admin listener's connection limit.
    fn default() -> Self {
        DoorLimits {
            max_connections: crate::config::listeners::default_admin_max_connections(),
            header_read_timeout: crate::config::listeners::default_header_read_timeout(),
            body_read_timeout: crate::config::listeners::default_body_read_timeout(),
        }
    }
}

/// A listener that accepts while fewer than its limit of connections are open.
pub struct CappedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// The listener's name in log lines (`admin`, `forward-auth`, `ext_authz`).
    name: &'static str,
}

/// A connection's place under its listener's limit, given back when dropped: keep it alive as
/// long as the connection is served.
#[derive(Debug)]
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
}

impl CappedListener {
    /// Takes over a bound standard listener (made non-blocking here). `max_connections` is
    /// validated by each door's config section (at least 1).
    pub fn new(
        listener: std::net::TcpListener,
        max_connections: usize,
        name: &'static str,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(CappedListener {
            listener: TcpListener::from_std(listener)?,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            max_connections: max_connections.max(1),
            name,
        })
    }

    /// The next connection, once one of the limit's slots is free. Accept errors (out of file
    /// descriptors, a connection reset before it was accepted) are logged and waited out, never
    /// returned: the listener keeps serving.
    pub async fn accept(&self) -> (TcpStream, SocketAddr, ConnectionSlot) {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::warn!(
                    listener = self.name,
                    max_connections = self.max_connections,
                    "connection limit reached: new connections wait until one closes"
                );
                match self.slots.clone().acquire_owned().await {
                    Ok(slot) => slot,
                    // The semaphore is never closed; should it be, stop accepting.
                    Err(_) => std::future::pending().await,
                }
            }
        };
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    // Answers are small and must not wait for the client's delayed ACK.
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(listener = self.name, %error, "TCP_NODELAY");
                    }
                    return (stream, peer, ConnectionSlot { _permit: slot });
                }
                Err(error) => {
                    tracing::warn!(listener = self.name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepts_no_more_than_its_limit_until_a_connection_closes() {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listener = CappedListener::new(std_listener, 2, "test").unwrap();
        let addr = listener.local_addr().unwrap();
        let _clients: Vec<TcpStream> =
            futures_util::future::join_all((0..3).map(|_| TcpStream::connect(addr)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();

        let (_first, _, first_slot) = listener.accept().await;
        let (_second, _, _second_slot) = listener.accept().await;
        // The third client is connected (in the backlog) but not accepted while two are open.
        let third = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(
            third.is_err(),
            "a third connection was accepted over the limit of 2"
        );

        drop(first_slot);
        let third = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await;
        assert!(
            third.is_ok(),
            "the freed slot was not used for the waiting connection"
        );
    }
}
