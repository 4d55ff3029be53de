//! The egress forwarder: runs inside the sandbox (under every layer the program gets), listens
//! on loopback and carries each connection to Warden's egress proxy over the Unix socket bound
//! into the sandbox. It decides nothing: the proxy outside does.

use std::io::Write as _;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Listens on `127.0.0.1:port`, prints one byte on stdout once it does, and forwards forever.
///
/// # Errors
/// The port cannot be bound.
pub fn run(port: u16, socket: &Path) -> std::io::Result<()> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    let mut out = std::io::stdout();
    out.write_all(b"R")?;
    out.flush()?;
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        let socket = socket.to_path_buf();
        // At the task's process cap a thread cannot start: that connection is dropped, the
        // forwarder goes on.
        let _ = std::thread::Builder::new().spawn(move || carry(tcp, &socket));
    }
    Ok(())
}

fn carry(tcp: TcpStream, socket: &PathBuf) {
    // A relay adds no Nagle wait to what it carries.
    let _ = tcp.set_nodelay(true);
    let Ok(unix) = UnixStream::connect(socket) else {
        let _ = tcp.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(mut tcp_r), Ok(mut unix_w)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let Ok(up) = std::thread::Builder::new().spawn(move || {
        let _ = std::io::copy(&mut tcp_r, &mut unix_w);
        let _ = unix_w.shutdown(Shutdown::Write);
    }) else {
        return;
    };
    let (mut unix_r, mut tcp_w) = (unix, tcp);
    let _ = std::io::copy(&mut unix_r, &mut tcp_w);
    let _ = tcp_w.shutdown(Shutdown::Write);
    let _ = up.join();
}
