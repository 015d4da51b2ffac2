//! The original destination of a connection redirected by iptables (`SO_ORIGINAL_DST`), and
//! whether an address is this pod's own.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

/// Where the client meant to connect before a NAT `REDIRECT` rule sent it here.
///
/// Linux answers from its connection-tracking table: for a redirected connection, the address
/// the client dialled; for one that was not redirected, the listener's own address (which the
/// caller must refuse, or it would dial itself). Without connection tracking (no NAT rule
/// loaded at all) the call fails with `NotFound`.
///
/// An IPv4 connection accepted by a dual-stack listener is tracked as IPv4, so its original
/// destination is asked of the IPv4 table.
pub(crate) fn original_destination(tcp: &TcpStream) -> io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(tcp);
    let original = match tcp.local_addr()? {
        SocketAddr::V4(_) => socket.original_dst_v4()?,
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => socket.original_dst_v4()?,
        SocketAddr::V6(_) => socket.original_dst_v6()?,
    };
    original.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the original destination is not an IP socket address",
        )
    })
}

/// Whether `ip` is one of this host's (this pod's) own addresses: only then can a socket be
/// bound to it.
pub(crate) fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_direct_connection_reports_itself_or_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        match original_destination(&accepted) {
            // Connection tracking is active: the "original" destination is the listener.
            Ok(original) => assert_eq!(original, addr),
            // No NAT table is loaded on this machine.
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}"),
        }
    }
}
