//! Circuit breaker for the cloud.
//!
//! Sedna had none: with the cloud down, every hard frame paid 5 attempts × 3 s, and a cloud that
//! accepted connections but never answered hung the edge loop. Here, after a few failures in a
//! row the edge stops asking for a while (asking costs nothing then), and afterwards lets one
//! probe through; the probe's fate decides whether normal traffic resumes or the pause doubles.
//!
//! A pure state machine: time comes in as an argument, so it is tested without clocks.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures (errors or timeouts) that open the breaker.
    pub failure_threshold: u32,
    /// First open interval; doubles after each failed probe.
    pub open_initial: Duration,
    pub open_max: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            open_initial: Duration::from_secs(5),
            open_max: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open {
        until: Instant,
    },
    /// One probe is in flight; everything else is refused until it ends.
    HalfOpen,
}

impl BreakerState {
    /// The state's name in `/metrics`, `/status` and the stats topic.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// What the breaker lets a request do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Allowed as the single probe of a half-open breaker: report its outcome with `probe`.
    Probe,
    Refused,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    state: BreakerState,
    failures: u32,
    open_for: Duration,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: BreakerState::Closed,
            failures: 0,
            open_for: settings.open_initial,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                Admission::Probe
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => Admission::Refused,
        }
    }

    /// Any answer is evidence the cloud works, probe or not.
    pub fn record_success(&mut self) {
        self.state = BreakerState::Closed;
        self.failures = 0;
        self.open_for = self.settings.open_initial;
    }

    /// `probe`: whether the failed request was admitted as [`Admission::Probe`]. Failures of
    /// requests admitted before the breaker opened do not count twice, and only the probe
    /// decides a half-open breaker.
    pub fn record_failure(&mut self, now: Instant, probe: bool) {
        match self.state {
            BreakerState::HalfOpen if probe => {
                self.open_for = (self.open_for * 2).min(self.settings.open_max);
                self.state = BreakerState::Open {
                    until: now + self.open_for,
                };
            }
            BreakerState::Closed => {
                self.failures += 1;
                if self.failures >= self.settings.failure_threshold {
                    self.state = BreakerState::Open {
                        until: now + self.open_for,
                    };
                }
            }
            BreakerState::HalfOpen | BreakerState::Open { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings::default())
    }

    fn fail(b: &mut Breaker, now: Instant, n: u32) {
        for _ in 0..n {
            assert_eq!(b.admit(now), Admission::Allowed);
            b.record_failure(now, false);
        }
    }

    #[test]
    fn opens_after_three_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut b = breaker();
        fail(&mut b, t0, 2);
        b.record_success();
        fail(&mut b, t0, 2);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a success resets the count"
        );
        fail(&mut b, t0, 1);
        assert_eq!(b.state(), BreakerState::Open { until: t0 + 5 * S });
        assert_eq!(b.admit(t0 + 4 * S), Admission::Refused);
    }

    #[test]
    fn half_open_admits_one_probe_and_its_success_closes() {
        let t0 = Instant::now();
        let mut b = breaker();
        fail(&mut b, t0, 3);
        assert_eq!(b.admit(t0 + 5 * S), Admission::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(
            b.admit(t0 + 5 * S),
            Admission::Refused,
            "one probe at a time"
        );
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(t0 + 6 * S), Admission::Allowed);
        fail(&mut b, t0 + 7 * S, 3);
        assert_eq!(
            b.state(),
            BreakerState::Open { until: t0 + 12 * S },
            "success restored the initial interval"
        );
    }

    #[test]
    fn failed_probes_double_the_interval_up_to_the_cap() {
        let mut now = Instant::now();
        let mut b = breaker();
        fail(&mut b, now, 3);
        let mut intervals = Vec::new();
        for _ in 0..6 {
            let BreakerState::Open { until } = b.state() else {
                panic!("not open: {:?}", b.state())
            };
            now = until;
            assert_eq!(b.admit(now), Admission::Probe);
            b.record_failure(now, true);
            let BreakerState::Open { until } = b.state() else {
                panic!("probe failure must reopen")
            };
            intervals.push((until - now).as_secs());
        }
        assert_eq!(intervals, [10, 20, 40, 60, 60, 60]);
    }

    #[test]
    fn stragglers_do_not_decide() {
        let t0 = Instant::now();
        let mut b = breaker();
        // A request admitted while closed fails after the breaker opened.
        fail(&mut b, t0, 3);
        b.record_failure(t0 + S, false);
        assert_eq!(b.state(), BreakerState::Open { until: t0 + 5 * S });
        assert_eq!(b.admit(t0 + 5 * S), Admission::Probe);
        b.record_failure(t0 + 5 * S, false);
        assert_eq!(b.state(), BreakerState::HalfOpen, "only the probe decides");
    }
}
