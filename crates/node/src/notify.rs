//! Readiness for systemd (`Type=notify`): `READY=1` once the node serves,
//! `STOPPING=1` when it begins to stop, sent as one datagram to the socket
//! `$NOTIFY_SOCKET` names (a path, or an abstract name written `@name`).
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd) these do nothing. A
//! failed send is logged, never an error: the node runs either way, and
//! systemd reports a start that never became ready by its own timeout.

use std::ffi::OsStr;
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::pin::Pin;
use std::task::Poll;

/// The variable systemd sets for a `Type=notify` service.
pub const SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Tells systemd the service is up (`READY=1`) with a one-line `STATUS=`
/// that `systemctl status` shows.
pub fn ready(status: &str) {
    notify(&ready_message(status));
}

/// Sends `READY=1` (as [`ready`]) once `shutdown`, the future that ends the
/// service on SIGTERM, has been polled once: [`crate::nbd::shutdown_signal`]
/// installs its handlers on its first poll, and a SIGTERM systemd sends the
/// moment it reads `READY=1` must find them (the default action would kill
/// the process uncleanly). Returns that poll: `Ready` if `shutdown` already
/// resolved (do not poll it again; no `READY=1` was sent).
pub async fn ready_when_stoppable<F: Future<Output = ()>>(
    mut shutdown: Pin<&mut F>,
    status: &str,
) -> Poll<()> {
    let polled = std::future::poll_fn(|cx| Poll::Ready(shutdown.as_mut().poll(cx))).await;
    if polled.is_pending() {
        ready(status);
    }
    polled
}

/// Tells systemd the service is stopping (`STOPPING=1`).
pub fn stopping() {
    notify("STOPPING=1");
}

fn ready_message(status: &str) -> String {
    // One assignment per line: a newline in the status would start another.
    format!("READY=1\nSTATUS={}", status.replace('\n', " "))
}

fn notify(message: &str) {
    let Some(socket) = std::env::var_os(SOCKET_ENV).filter(|s| !s.is_empty()) else {
        return;
    };
    if let Err(err) = send(&socket, message) {
        tracing::warn!(
            socket = %socket.to_string_lossy(),
            error = %err,
            message = %message.replace('\n', " "),
            "cannot notify systemd (${SOCKET_ENV})"
        );
    }
}

/// Sends `message` as one datagram to `socket`: a filesystem path, or an
/// abstract socket name after a leading '@'.
fn send(socket: &OsStr, message: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let sent = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(message.as_bytes(), &addr)?
        }
        None => sock.send_to(message.as_bytes(), socket)?,
    };
    if sent != message.len() {
        return Err(io::Error::other(format!(
            "sent {sent} of {} bytes",
            message.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{ready_message, send};
    use std::ffi::OsStr;
    use std::os::unix::net::UnixDatagram;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(
            path.as_os_str(),
            &ready_message("node a ready\nsecond line"),
        )
        .unwrap();
        assert_eq!(recv(&listener), "READY=1\nSTATUS=node a ready second line");
        send(path.as_os_str(), "STOPPING=1").unwrap();
        assert_eq!(recv(&listener), "STOPPING=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("driftless-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        assert_eq!(recv(&listener), "READY=1");
    }

    #[tokio::test]
    async fn readiness_waits_for_the_first_poll_of_shutdown() {
        let mut polls = 0;
        let mut pending = std::pin::pin!(std::future::poll_fn(|_| {
            polls += 1;
            std::task::Poll::<()>::Pending
        }));
        let polled = super::ready_when_stoppable(pending.as_mut(), "up").await;
        assert!(polled.is_pending());
        assert_eq!(polls, 1);
        let done = std::pin::pin!(std::future::ready(()));
        assert!(super::ready_when_stoppable(done, "up").await.is_ready());
    }

    #[test]
    fn a_missing_socket_is_an_error_to_log() {
        let dir = tempfile::tempdir().unwrap();
        assert!(send(dir.path().join("absent").as_os_str(), "READY=1").is_err());
    }
}
