//! Listening sockets: one per worker, all on the same address with `SO_REUSEPORT`, so the
//! kernel spreads new connections across workers with no shared accept lock.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Accept backlog asked for each socket: as deep as the kernel allows (it caps the value
/// at `net.core.somaxconn`, 4,096 by default). In a surge, connections the workers cannot
/// take yet wait in this queue at no cost to the daemon; when it overflows, the kernel
/// drops SYNs or answers with SYN cookies that can fail, and clients are reset. At 3,300
/// new connections/s against one worker sustaining about 700/s, a queue of 4,096 reset 7%
/// of clients and one of 32,768 none (BENCHMARKS.md, "Overload").
pub const BACKLOG: i32 = 65535;

/// The accept queue each socket really gets: [`BACKLOG`] capped by `net.core.somaxconn`,
/// or `None` when that cannot be read (a sandbox without `/proc/sys`).
pub fn accept_queue_depth() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok()?;
    let somaxconn: u32 = text.trim().parse().ok()?;
    Some(somaxconn.min(BACKLOG as u32))
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    // Accepted connections inherit it (Linux copies the listener's TCP options): handshake
    // flights and answers are small writes that must not wait for an ACK, and no
    // connection pays a setsockopt of its own.
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Proof that this process alone serves a port: an abstract Unix socket named after the
/// port, which the kernel releases when the process ends (however it ends).
///
/// `SO_REUSEPORT` lets any process of the same user bind the same address and silently
/// take a share of new connections: a second gateway started by mistake (another data
/// directory, another CA) would enroll some devices into the wrong store. Holding this
/// name makes the second one refuse to start instead.
#[derive(Debug)]
pub struct PortLock(#[allow(dead_code)] std::os::unix::net::UnixListener);

impl PortLock {
    /// Takes the lock for `port` (in this network namespace).
    pub fn take(port: u16) -> io::Result<Self> {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("enrollgate-port-{port}");
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        std::os::unix::net::UnixListener::bind_addr(&addr)
            .map(Self)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AddrInUse => io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another enrollgate already serves port {port} on this host"),
                ),
                _ => e,
            })
    }
}

/// Binds `count` sockets on `addr`. When `addr` has port 0, the first socket picks the
/// port and the others join it. The returned [`PortLock`] must live as long as the
/// sockets serve.
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<(Vec<TcpListener>, PortLock)> {
    // A fixed port is claimed before binding, so a second gateway never receives any
    // connection; an ephemeral one is unique already and is claimed once known.
    let early = (addr.port() != 0)
        .then(|| PortLock::take(addr.port()))
        .transpose()?;
    let first = bind_one(addr)?;
    let actual = first.local_addr()?;
    let lock = match early {
        Some(lock) => lock,
        None => PortLock::take(actual.port())?,
    };
    let mut out = vec![first];
    for _ in 1..count.max(1) {
        out.push(bind_one(actual)?);
    }
    Ok((out, lock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_gateway_cannot_join_a_port() {
        let (ls, _lock) = bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let err = bind(addr, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("another enrollgate"), "{err}");
        // Released with its holder.
        drop((ls, _lock));
        assert!(bind(addr, 1).is_ok());
    }

    #[test]
    fn accepted_connections_inherit_no_delay() {
        let (ls, _lock) = bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        ls[0].set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(ls[0].local_addr().unwrap()).unwrap();
        let (accepted, _) = ls[0].accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn sockets_share_one_ephemeral_port() {
        let (ls, _lock) = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let ports: Vec<u16> = ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert!(ports[0] != 0);
        assert!(ports.iter().all(|p| *p == ports[0]));
    }
}
