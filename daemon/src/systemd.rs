//! Talking to systemd as a `Type=notify` service (sd_notify(3)): readiness, a one-line status,
//! stopping and reloading, and the watchdog keep-alive sent from the main loop, so that a hung
//! loop gets the service restarted (`WatchdogSec=` in systemd/helmetd.service).
//!
//! The message vocabulary and the `WATCHDOG_USEC`/`WATCHDOG_PID` rules come from the `sd-notify`
//! crate. Its `notify()` reads `NOTIFY_SOCKET` from the environment at every call, so the socket
//! is resolved once here instead ([`Notifier::from_env`]) or handed in ([`Notifier::new`]): tests
//! aim a notifier at their own socket without touching process-wide variables.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op. A failed send is logged once and
//! otherwise ignored: the daemon's work does not depend on its supervisor hearing about it.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Where the notifications go, resolved once.
#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
}

/// The service's line to systemd. Cheap to call from the control loop: every method is one
/// datagram at most, and nothing when not running under systemd.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
    /// Half of systemd's watchdog timeout: sd_watchdog_enabled(3) recommends pinging at least
    /// that often, so one late loop iteration is not yet a restart.
    watchdog_every: Option<Duration>,
    last_watchdog: Option<Instant>,
    warned: AtomicBool,
}

impl Notifier {
    /// The notifier systemd set up for this process: `NOTIFY_SOCKET`, and the watchdog timeout
    /// when `WATCHDOG_USEC` is set and `WATCHDOG_PID` (if any) is this process. A no-op notifier
    /// when not started by systemd, or when the socket cannot be used (logged).
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        Notifier::new(socket.as_deref(), sd_notify::watchdog_enabled()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "NOTIFY_SOCKET unusable: systemd will not hear from helmetd");
            Notifier::with_target(None, None)
        })
    }

    /// A notifier sending to `socket` (a path, or `@name` for an abstract socket; `None` or
    /// empty: no-op), with systemd's watchdog timeout `watchdog` (`WATCHDOG_USEC`).
    pub fn new(socket: Option<&OsStr>, watchdog: Option<Duration>) -> io::Result<Notifier> {
        let target = match socket.filter(|s| !s.is_empty()) {
            Some(name) => Some(Target {
                addr: socket_addr(name)?,
                socket: UnixDatagram::unbound()?,
            }),
            None => None,
        };
        Ok(Notifier::with_target(target, watchdog))
    }

    fn with_target(target: Option<Target>, watchdog: Option<Duration>) -> Notifier {
        Notifier {
            watchdog_every: watchdog
                .filter(|w| !w.is_zero() && target.is_some())
                .map(|w| w / 2),
            target,
            last_watchdog: None,
            warned: AtomicBool::new(false),
        }
    }

    /// Whether systemd listens (the process was started by a `Type=notify` unit).
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often [`Notifier::watchdog_tick`] pings, when the unit has `WatchdogSec=`.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// `READY=1`: start-up is complete (systemd then counts the unit as started), or a reload
    /// announced with [`Notifier::reloading`] is done.
    pub fn ready(&self) {
        self.report(&[NotifyState::Ready]);
    }

    /// `STATUS=…`: one line shown by `systemctl status`. Line breaks would end the assignment
    /// early, so control characters become spaces.
    pub fn status(&self, line: &str) {
        let line: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        self.report(&[NotifyState::Status(&line)]);
    }

    /// `EXTEND_TIMEOUT_USEC=…`: start-up is still making progress; systemd's start timeout now
    /// ends `by` from now (at most about 71 minutes, the field's range).
    pub fn extend_start_timeout(&self, by: Duration) {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.report(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) {
        self.report(&[NotifyState::Stopping]);
    }

    /// `RELOADING=1` with the monotonic timestamp systemd 253+ expects beside it; follow with
    /// [`Notifier::ready`] once the new configuration is in force (or refused).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.report(&[NotifyState::Reloading, now]),
            Err(_) => self.report(&[NotifyState::Reloading]),
        }
    }

    /// Call on every iteration of the main loop: sends `WATCHDOG=1` when half the watchdog
    /// timeout has passed since the last one (at once on the first call). Returns whether it
    /// sent. A loop that stops calling this is killed and restarted by systemd.
    pub fn watchdog_tick(&mut self, now: Instant) -> bool {
        let Some(every) = self.watchdog_every else {
            return false;
        };
        if self
            .last_watchdog
            .is_some_and(|last| now.saturating_duration_since(last) < every)
        {
            return false;
        }
        self.last_watchdog = Some(now);
        self.report(&[NotifyState::Watchdog]);
        true
    }

    fn report(&self, states: &[NotifyState<'_>]) {
        if let Err(e) = self.send(states)
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(error = %e, "cannot notify systemd (further failures not logged)");
        }
    }

    /// One datagram with one `KEY=value` line per state.
    fn send(&self, states: &[NotifyState<'_>]) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let message = states
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        let sent = target
            .socket
            .send_to_addr(message.as_bytes(), &target.addr)?;
        if sent == message.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "notification truncated to {sent} of {} bytes",
                    message.len()
                ),
            ))
        }
    }
}

/// `NOTIFY_SOCKET` is a path, or `@name` for a socket in the abstract namespace.
fn socket_addr(name: &OsStr) -> io::Result<SocketAddr> {
    match name.as_encoded_bytes().strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name),
        None => SocketAddr::from_pathname(OsString::from(name)),
    }
}

/// systemd fails a start that has not sent READY=1 within `TimeoutStartSec=` (90 s in the unit),
/// but a slow gateway's workers may load their model for minutes (`edge.worker.ready_timeout_s`).
/// While a worker is still loading, the daemon asks for more time (`EXTEND_TIMEOUT_USEC`), never
/// past the load bound plus a margin: a start that cannot succeed still fails.
pub struct StartTimeout {
    started: Instant,
    give_up: Duration,
    last_extended: Option<Instant>,
}

impl StartTimeout {
    const EVERY: Duration = Duration::from_secs(10);
    /// Each extension covers three periods, so one late loop tick does not let the timeout pass.
    const BY: Duration = Duration::from_secs(30);
    const MARGIN: Duration = Duration::from_secs(60);

    /// `load_bound`: how long a worker may load its model.
    pub fn new(started: Instant, load_bound: Duration) -> Self {
        Self {
            started,
            give_up: load_bound + Self::MARGIN,
            last_extended: None,
        }
    }

    /// Call until READY=1 with whether a worker is still loading; returns whether it extended.
    pub fn tick(&mut self, notifier: &Notifier, now: Instant, loading: bool) -> bool {
        let due = self
            .last_extended
            .is_none_or(|at| now.saturating_duration_since(at) >= Self::EVERY);
        if loading && due && now.saturating_duration_since(self.started) < self.give_up {
            notifier.extend_start_timeout(Self::BY);
            self.last_extended = Some(now);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    /// A stand-in for systemd's notify socket: a real datagram socket in a temp dir.
    fn listener() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        (dir, path, socket)
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).expect("utf-8")
    }

    fn nothing_waiting(socket: &UnixDatagram) -> bool {
        socket.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 64];
        let empty =
            matches!(socket.recv(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        socket.set_nonblocking(false).expect("blocking");
        empty
    }

    #[test]
    fn each_state_is_one_datagram_in_sd_notify_syntax() {
        let (_dir, path, socket) = listener();
        let notifier = Notifier::new(Some(path.as_os_str()), None).unwrap();
        assert!(notifier.is_enabled());
        notifier.ready();
        assert_eq!(receive(&socket), "READY=1");
        notifier.status("2 cameras streaming, 1 worker ready");
        assert_eq!(
            receive(&socket),
            "STATUS=2 cameras streaming, 1 worker ready"
        );
        notifier.extend_start_timeout(Duration::from_secs(30));
        assert_eq!(receive(&socket), "EXTEND_TIMEOUT_USEC=30000000");
        notifier.stopping();
        assert_eq!(receive(&socket), "STOPPING=1");
    }

    #[test]
    fn the_start_timeout_is_extended_while_workers_load_and_not_past_the_bound() {
        let (_dir, path, socket) = listener();
        let notifier = Notifier::new(Some(path.as_os_str()), None).unwrap();
        let t0 = Instant::now();
        let mut timeout = StartTimeout::new(t0, Duration::from_secs(120));
        assert!(!timeout.tick(&notifier, t0, false), "nothing loading");
        assert!(timeout.tick(&notifier, t0, true));
        assert_eq!(receive(&socket), "EXTEND_TIMEOUT_USEC=30000000");
        assert!(!timeout.tick(&notifier, t0 + Duration::from_secs(5), true));
        let mut extended = 1;
        for s in (10..=300).step_by(10) {
            if timeout.tick(&notifier, t0 + Duration::from_secs(s), true) {
                extended += 1;
                // Read as we go: a datagram socket queues only a few messages.
                assert_eq!(receive(&socket), "EXTEND_TIMEOUT_USEC=30000000");
            }
        }
        // Up to 120 s of loading plus 60 s: at 0, 10, …, 170 s.
        assert_eq!(extended, 18);
        assert!(nothing_waiting(&socket));
    }

    #[test]
    fn a_status_with_line_breaks_stays_one_assignment() {
        let (_dir, path, socket) = listener();
        let notifier = Notifier::new(Some(path.as_os_str()), None).unwrap();
        notifier.status("one\nREADY=1\rtwo");
        assert_eq!(receive(&socket), "STATUS=one READY=1 two");
    }

    #[test]
    fn reloading_carries_the_monotonic_timestamp() {
        let (_dir, path, socket) = listener();
        let notifier = Notifier::new(Some(path.as_os_str()), None).unwrap();
        notifier.reloading();
        let message = receive(&socket);
        let mut lines = message.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(usec.is_some_and(|u| u > 0), "{message:?}");
    }

    #[test]
    fn watchdog_pings_at_half_the_timeout() {
        let (_dir, path, socket) = listener();
        let mut notifier =
            Notifier::new(Some(path.as_os_str()), Some(Duration::from_secs(10))).unwrap();
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(5)));
        let t0 = Instant::now();
        assert!(notifier.watchdog_tick(t0), "the first tick pings at once");
        assert_eq!(receive(&socket), "WATCHDOG=1");
        assert!(!notifier.watchdog_tick(t0 + Duration::from_millis(4_999)));
        assert!(nothing_waiting(&socket));
        assert!(notifier.watchdog_tick(t0 + Duration::from_secs(5)));
        assert_eq!(receive(&socket), "WATCHDOG=1");
        // A clock that seems to go back (another caller's older Instant) does not ping early.
        assert!(!notifier.watchdog_tick(t0));
        assert!(nothing_waiting(&socket));
    }

    #[test]
    fn abstract_socket_names_are_understood() {
        let name = format!("helmetd-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).expect("bind abstract socket");
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        let notifier = Notifier::new(Some(OsStr::new(&format!("@{name}"))), None).unwrap();
        notifier.ready();
        assert_eq!(receive(&socket), "READY=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_no_watchdog_runs() {
        for socket in [None, Some(OsStr::new(""))] {
            let mut notifier = Notifier::new(socket, Some(Duration::from_secs(10))).unwrap();
            assert!(!notifier.is_enabled());
            assert_eq!(notifier.watchdog_interval(), None);
            assert!(!notifier.watchdog_tick(Instant::now()));
            assert!(notifier.send(&[NotifyState::Ready]).is_ok());
        }
    }

    #[test]
    fn a_vanished_socket_is_an_error_not_a_panic() {
        let (dir, path, socket) = listener();
        let notifier = Notifier::new(Some(path.as_os_str()), None).unwrap();
        drop(socket);
        drop(dir);
        assert!(notifier.send(&[NotifyState::Ready]).is_err());
        notifier.ready(); // logged once, never fatal
    }

    #[test]
    fn a_path_too_long_for_a_socket_is_refused_at_construction() {
        let long = "/".to_string() + &"x".repeat(200);
        assert!(Notifier::new(Some(OsStr::new(&long)), None).is_err());
    }
}
