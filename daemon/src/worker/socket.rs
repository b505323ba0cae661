//! A connected `AF_UNIX`/`SOCK_SEQPACKET` socket: one datagram per message, boundaries kept,
//! and, unlike `SOCK_DGRAM`, a read of 0 bytes when the peer has gone, which is how each side
//! notices that the other died.
//!
//! Raw libc calls because the workspace enables nix without its `socket` feature; with it, these
//! few `unsafe` blocks would become `nix::sys::socket::{socketpair, send, recv}`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::poll::PollTimeout;

/// What one `recv` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recv {
    /// A whole message of this many bytes is at the start of the buffer.
    Message(usize),
    /// The message was this long, more than the buffer; it has been consumed and is lost.
    TooLong(usize),
    /// The peer closed its end (or exited). Our protocol never sends empty messages, so a
    /// 0-byte read is unambiguous.
    Closed,
    /// Nothing to read right now (non-blocking receive only).
    Empty,
}

#[derive(Debug)]
pub(crate) struct SeqPacket {
    fd: OwnedFd,
}

impl SeqPacket {
    /// Both ends are close-on-exec: the spawner decides which end a child gets, by `dup2`,
    /// so no other child of a multi-threaded daemon inherits one by accident.
    pub(crate) fn pair() -> io::Result<(SeqPacket, SeqPacket)> {
        let mut fds = [-1; 2];
        // SAFETY: `fds` is a valid, writable array of two c_ints, as socketpair(2) requires.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socketpair succeeded, so both are fresh descriptors that nothing else owns.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((SeqPacket { fd: a }, SeqPacket { fd: b }))
    }

    pub(crate) fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Sends one message. `MSG_NOSIGNAL`: a dead peer must be an `EPIPE` error, not a SIGPIPE
    /// that kills the daemon. Non-blocking sends return `WouldBlock` when the peer's queue is full.
    pub(crate) fn send(&self, message: &[u8], blocking: bool) -> io::Result<()> {
        let flags = libc::MSG_NOSIGNAL | if blocking { 0 } else { libc::MSG_DONTWAIT };
        loop {
            // SAFETY: the pointer and length describe `message`, which outlives the call.
            let sent = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    message.as_ptr().cast(),
                    message.len(),
                    flags,
                )
            };
            match usize::try_from(sent) {
                // SEQPACKET sends are all-or-nothing; a short count would be a kernel bug.
                Ok(n) if n == message.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::other(format!(
                        "short seqpacket send: {n} of {} bytes",
                        message.len()
                    )));
                }
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Receives one message into `buf`. `MSG_TRUNC` makes the kernel report the real length of
    /// an oversized message, so it is detected instead of being silently cut.
    pub(crate) fn recv(&self, buf: &mut [u8], blocking: bool) -> io::Result<Recv> {
        let flags = libc::MSG_TRUNC | if blocking { 0 } else { libc::MSG_DONTWAIT };
        loop {
            // SAFETY: the pointer and length describe `buf`, which is writable and outlives the call.
            let got = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                )
            };
            match usize::try_from(got) {
                Ok(0) => return Ok(Recv::Closed),
                Ok(n) if n > buf.len() => return Ok(Recv::TooLong(n)),
                Ok(n) => return Ok(Recv::Message(n)),
                Err(_) => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted => {}
                        io::ErrorKind::WouldBlock => return Ok(Recv::Empty),
                        // The peer died with data unread on its side.
                        io::ErrorKind::ConnectionReset => return Ok(Recv::Closed),
                        _ => return Err(e),
                    }
                }
            }
        }
    }
}

impl From<OwnedFd> for SeqPacket {
    fn from(fd: OwnedFd) -> Self {
        SeqPacket { fd }
    }
}

impl AsFd for SeqPacket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A poll(2) timeout that never rounds a short non-zero wait down to a busy-looping 0.
pub(crate) fn poll_timeout(timeout: Duration) -> PollTimeout {
    PollTimeout::try_from(timeout.as_nanos().div_ceil(1_000_000)).unwrap_or(PollTimeout::MAX)
}

/// True for the errors a send gets when the peer has gone away.
pub(crate) fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_are_kept_and_close_reads_as_closed() {
        let (a, b) = SeqPacket::pair().unwrap();
        a.send(b"one", false).unwrap();
        a.send(b"three", false).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(b.recv(&mut buf, false).unwrap(), Recv::Message(3));
        assert_eq!(&buf[..3], b"one");
        assert_eq!(b.recv(&mut buf, false).unwrap(), Recv::Message(5));
        assert_eq!(b.recv(&mut buf, false).unwrap(), Recv::Empty);
        drop(a);
        assert_eq!(b.recv(&mut buf, true).unwrap(), Recv::Closed);
        let e = b.send(b"x", false).unwrap_err();
        assert!(is_disconnect(&e), "{e}");
    }

    #[test]
    fn poll_timeouts_round_up_and_saturate() {
        assert_eq!(poll_timeout(Duration::ZERO), PollTimeout::ZERO);
        assert_eq!(
            poll_timeout(Duration::from_micros(10)),
            PollTimeout::from(1u8)
        );
        assert_eq!(poll_timeout(Duration::MAX), PollTimeout::MAX);
    }

    #[test]
    fn oversized_messages_are_reported_not_cut() {
        let (a, b) = SeqPacket::pair().unwrap();
        a.send(&[7u8; 100], false).unwrap();
        a.send(b"ok", false).unwrap();
        let mut buf = [0u8; 10];
        assert_eq!(b.recv(&mut buf, false).unwrap(), Recv::TooLong(100));
        assert_eq!(b.recv(&mut buf, false).unwrap(), Recv::Message(2));
    }
}
