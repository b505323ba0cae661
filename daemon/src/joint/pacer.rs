//! Pacing for a cloud that is slow, as opposed to down.
//!
//! The breaker ([`super::breaker`]) is for a cloud that does not answer at all: it stops asking
//! and probes with back-off. A loaded cloud is different: it answers, only not fast enough for
//! everyone. Treating that like an outage made the edge stop asking, the queue drain, then every
//! edge ask again at once: an on/off stampede in which few answers came in time. Here a slow
//! cloud gets a steady share instead. The edge admits requests at a pace (requests a second)
//! and decides the rest itself:
//!
//! - *slow signals*: a refusal as busy (`overloaded`, `expired`), an answer that came after the
//!   timeout, a timeout while the cloud answered other requests, or an answer whose reported
//!   load (queue × recent inference time) says the next request would not make the deadline.
//!   The pace is halved, or set to what the reported load allows when that is lower; at most
//!   once per timeout, since the requests already in flight report the same congestion.
//! - *answers in time* raise the pace by a little, or halfway to what the reported load allows
//!   when that is higher (AIMD, as TCP), until it is fast enough that pacing ends.
//! - a timeout with no sign of life since the request left is *down*: the caller gives it to
//!   the breaker.
//!
//! A pure state machine: time comes in as an argument, so it is tested without clocks.

use std::time::Duration;

use tokio::time::Instant;

use super::protocol::CloudLoad;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacerSettings {
    /// The guard's timeout: an answer expected later than this is of no use.
    pub deadline: Duration,
    /// The slowest pace, requests a second: a slow cloud is still asked this often, so the
    /// edge sees it recover soon.
    pub min_rate: f64,
    /// At this pace or above the edge stops pacing.
    pub max_rate: f64,
    /// Added to the pace by each answer in time.
    pub increase: f64,
    /// The pace is multiplied by this on a slow signal.
    pub decrease: f64,
    /// Without a slow signal for this long pacing ends: what was learnt is stale.
    pub forget_after: Duration,
    /// Without a reported load, an answer that took longer than this share of the deadline says
    /// the next request may not make it.
    pub near_deadline: f64,
}

/// Fixed for now: the floor and ceiling would be `cloud.pace_min_per_s` and
/// `cloud.pace_max_per_s` if an operator ever needs to change them; the rest are the shape of
/// the control loop, not a policy.
impl Default for PacerSettings {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(1),
            min_rate: 0.2,
            max_rate: 20.0,
            increase: 0.2,
            decrease: 0.5,
            forget_after: Duration::from_secs(60),
            near_deadline: 0.8,
        }
    }
}

/// What an answer in time says about the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    InTime,
    /// The next request would likely come too late: the pace was lowered.
    Slow,
}

/// What a timeout says about the cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// The cloud answered something while this request waited: it lives, it is slow.
    Slow,
    /// No sign of life since the request left: for the breaker.
    Down,
}

/// The pacer's state, for the snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PacingState {
    /// Requests a second admitted; `None` while not pacing.
    pub admitted_per_s: Option<f64>,
    /// The load the cloud reported last.
    pub load: Option<CloudLoad>,
    /// The smoothed round trip of answers in time.
    pub round_trip: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Pacer {
    settings: PacerSettings,
    /// `None`: not pacing.
    rate: Option<f64>,
    last_admitted: Option<Instant>,
    last_slow: Option<Instant>,
    /// When the pace was last lowered: signals within one deadline after it are about requests
    /// sent before it.
    lowered_at: Option<Instant>,
    /// When the cloud last answered or refused as busy.
    last_life: Option<Instant>,
    load: Option<CloudLoad>,
    round_trip: Option<Duration>,
}

impl Pacer {
    pub fn new(settings: PacerSettings) -> Self {
        Self {
            settings,
            rate: None,
            last_admitted: None,
            last_slow: None,
            lowered_at: None,
            last_life: None,
            load: None,
            round_trip: None,
        }
    }

    pub fn state(&self) -> PacingState {
        PacingState {
            admitted_per_s: self.rate,
            load: self.load,
            round_trip: self.round_trip,
        }
    }

    /// Whether a request may go at `now`; counts it as sent if so.
    pub fn admit(&mut self, now: Instant) -> bool {
        if self
            .last_slow
            .is_some_and(|t| now.saturating_duration_since(t) >= self.settings.forget_after)
        {
            self.rate = None;
        }
        let due = match (self.rate, self.last_admitted) {
            (Some(rate), Some(last)) => now.saturating_duration_since(last) >= interval(rate),
            _ => true,
        };
        if due {
            self.last_admitted = Some(now);
        }
        due
    }

    /// A request sent whatever the pace (the breaker's probe): counted, so the pace holds after it.
    pub fn sent(&mut self, now: Instant) {
        self.last_admitted = Some(now);
    }

    /// An answer in time, after `rtt`, with the load its replica reported if any.
    pub fn on_answer(&mut self, now: Instant, rtt: Duration, load: Option<CloudLoad>) -> Verdict {
        self.last_life = Some(now);
        self.round_trip = Some(match self.round_trip {
            Some(smoothed) => (smoothed * 3 + rtt) / 4,
            None => rtt,
        });
        if load.is_some() {
            self.load = load;
        }
        // A reported load is the cloud's own account: only a wait past the whole deadline is
        // too late (the cloud also skips what it cannot finish in time). A round trip is a
        // guess from outside and every answer in time is shorter than the deadline, so it is
        // judged against a share of it.
        let next_too_late = match load {
            Some(load) => load.expected_wait() > self.settings.deadline,
            None => rtt > self.settings.deadline.mul_f64(self.settings.near_deadline),
        };
        if next_too_late {
            self.on_slow(now, load);
            return Verdict::Slow;
        }
        if let Some(rate) = self.rate {
            let step = load
                .and_then(|load| capacity(load, self.settings.deadline))
                .map_or(self.settings.increase, |target| {
                    ((target - rate) / 2.0).max(self.settings.increase)
                });
            let raised = rate + step;
            self.rate = (raised < self.settings.max_rate).then_some(raised);
        }
        Verdict::InTime
    }

    /// A slow signal at `at`: a refusal as busy, or an answer that came after its timeout.
    pub fn on_slow(&mut self, at: Instant, load: Option<CloudLoad>) {
        self.last_life = Some(self.last_life.map_or(at, |t| t.max(at)));
        self.last_slow = Some(self.last_slow.map_or(at, |t| t.max(at)));
        if load.is_some() {
            self.load = load;
        }
        if self
            .lowered_at
            .is_some_and(|t| at.saturating_duration_since(t) < self.settings.deadline)
        {
            return;
        }
        self.lowered_at = Some(at);
        let allowed = load.and_then(|load| capacity(load, self.settings.deadline));
        let rate = match self.rate {
            Some(rate) => {
                let halved = rate * self.settings.decrease;
                allowed.map_or(halved, |allowed| halved.min(allowed))
            }
            // The first slow signal: the reported load, else the round trips seen, else one
            // request per deadline.
            None => allowed
                .or_else(|| self.round_trip.and_then(per_second))
                .or_else(|| per_second(self.settings.deadline))
                .unwrap_or(self.settings.min_rate),
        };
        self.rate = Some(rate.clamp(self.settings.min_rate, self.settings.max_rate));
    }

    /// The request sent at `started` got no answer within the deadline.
    pub fn on_timeout(&mut self, now: Instant, started: Instant) -> Timeout {
        if self.last_life.is_some_and(|t| t >= started) {
            self.on_slow(now, None);
            Timeout::Slow
        } else {
            Timeout::Down
        }
    }
}

/// The pace a replica so loaded can give this edge: its throughput (it runs one inference at a
/// time), scaled down by as much as the wait it reports overshoots `deadline`, so that its queue
/// drains back within the deadline. Not `1 ÷ wait`: that waits for each answer before the next
/// request, a third of what a replica with a short queue serves, and cost a third of the cloud's
/// decisions in the demo.
fn capacity(load: CloudLoad, deadline: Duration) -> Option<f64> {
    let throughput = per_second(load.recent_infer)?;
    let wait = load.expected_wait().as_secs_f64();
    Some(throughput * (deadline.as_secs_f64() / wait).min(1.0))
}

fn per_second(every: Duration) -> Option<f64> {
    (!every.is_zero()).then(|| 1.0 / every.as_secs_f64())
}

/// Rates are clamped to at least `min_rate` > 0; a zero or negative one (bad settings) admits
/// one request a day rather than dividing by zero.
fn interval(rate: f64) -> Duration {
    if rate > 0.0 && rate.is_finite() {
        Duration::from_secs_f64((1.0 / rate).min(86_400.0))
    } else {
        Duration::from_secs(86_400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    fn pacer() -> Pacer {
        Pacer::new(PacerSettings::default())
    }

    fn load(queue: u32, infer_ms: u64) -> Option<CloudLoad> {
        Some(CloudLoad {
            queue,
            recent_infer: Duration::from_millis(infer_ms),
        })
    }

    /// How many of `n` requests, one every `every` from `t0`, are admitted.
    fn admitted(p: &mut Pacer, t0: Instant, every: Duration, n: u32) -> usize {
        (0..n).filter(|&i| p.admit(t0 + every * i)).count()
    }

    #[test]
    fn unpaced_until_the_cloud_says_it_is_slow() {
        let t0 = Instant::now();
        let mut p = pacer();
        assert_eq!(admitted(&mut p, t0, MS, 100), 100);
        assert_eq!(p.on_answer(t0, 200 * MS, load(0, 150)), Verdict::InTime);
        assert_eq!(p.state().admitted_per_s, None);
        assert_eq!(admitted(&mut p, t0 + S, MS, 100), 100);
    }

    #[test]
    fn a_busy_refusal_paces_at_what_the_load_allows() {
        let t0 = Instant::now();
        let mut p = pacer();
        // Four waiting at 500 ms each, a wait of 2.5 s against a 1 s deadline: 2.5 times too
        // long, so 1 ÷ 2.5 of the replica's 2 inferences a second, and its queue drains.
        p.on_slow(t0, load(4, 500));
        assert_eq!(p.state().admitted_per_s, Some(0.8));
        assert!(p.admit(t0));
        assert!(!p.admit(t0 + S));
        assert!(p.admit(t0 + 1250 * MS));
        assert_eq!(
            admitted(&mut p, t0 + 3 * S, 100 * MS, 100),
            8,
            "10 s at 0.8/s"
        );
        // A wait within the deadline: the replica's throughput, not one request per wait.
        let mut q = pacer();
        q.on_slow(t0, load(1, 400));
        assert_eq!(q.state().admitted_per_s, Some(2.5));
    }

    #[test]
    fn slow_signals_halve_once_per_deadline_down_to_the_floor() {
        let t0 = Instant::now();
        let mut p = pacer();
        p.on_slow(t0, None);
        assert_eq!(p.state().admitted_per_s, Some(1.0), "one per deadline");
        // The requests in flight report the same congestion: one decrease for them.
        p.on_slow(t0 + 500 * MS, None);
        assert_eq!(p.state().admitted_per_s, Some(1.0));
        let mut rates = Vec::new();
        for k in 1..=5 {
            p.on_slow(t0 + S * k, None);
            rates.push(p.state().admitted_per_s.unwrap());
        }
        assert_eq!(rates, [0.5, 0.25, 0.2, 0.2, 0.2], "bounded below");
        // Even at the floor the cloud is asked every 5 s: its recovery is seen soon.
        assert_eq!(admitted(&mut p, t0 + 10 * S, S, 20), 4);
    }

    #[test]
    fn answers_in_time_raise_the_pace_until_pacing_ends() {
        let t0 = Instant::now();
        let mut p = pacer();
        p.on_slow(t0, load(4, 500));
        // Answers with an empty queue: halfway to the replica's throughput (2/s) each time.
        let mut now = t0;
        let mut rates = Vec::new();
        for _ in 0..3 {
            now += S;
            assert_eq!(p.on_answer(now, 600 * MS, load(0, 500)), Verdict::InTime);
            rates.push((p.state().admitted_per_s.unwrap() * 1000.0).round() / 1000.0);
        }
        assert_eq!(rates, [1.4, 1.7, 1.9], "never less than the additive step");
        // Without a load report, a little each time, and above max_rate pacing ends.
        let mut answers = 0;
        while p.state().admitted_per_s.is_some() {
            now += 100 * MS;
            p.on_answer(now, 300 * MS, None);
            answers += 1;
            assert!(answers < 1000, "never ended: {:?}", p.state());
        }
        // (20 - 1.9) / 0.2, give or take the rounding of the sums.
        assert!((91..=92).contains(&answers), "{answers}");
    }

    #[test]
    fn an_answer_in_time_can_still_say_slow() {
        let t0 = Instant::now();
        let mut p = pacer();
        // Two waiting at 400 ms: the next would be answered after 1.2 s, past the 1 s deadline.
        assert_eq!(p.on_answer(t0, 500 * MS, load(2, 400)), Verdict::Slow);
        // 2.5 inferences a second, 1.2 times too long a wait.
        assert!((p.state().admitted_per_s.unwrap() - 2.5 / 1.2).abs() < 1e-9);
        // Without a report (Sedna HTTP), the round trip alone: 900 ms of a 1 s deadline.
        let mut q = pacer();
        assert_eq!(q.on_answer(t0, 700 * MS, None), Verdict::InTime);
        assert_eq!(q.on_answer(t0, 900 * MS, None), Verdict::Slow);
        let rate = q.state().admitted_per_s.unwrap();
        assert!(
            (rate - 1.0 / 0.75).abs() < 1e-9,
            "from the round trips seen: {rate}"
        );
    }

    #[test]
    fn a_timeout_is_slow_if_the_cloud_answered_meanwhile_and_down_otherwise() {
        let t0 = Instant::now();
        let mut p = pacer();
        assert_eq!(p.on_timeout(t0 + S, t0), Timeout::Down, "never heard of");
        p.on_answer(t0 + 2 * S, 300 * MS, None);
        // Sent before that answer, timed out after it: the cloud lives.
        assert_eq!(p.on_timeout(t0 + 2500 * MS, t0 + 1500 * MS), Timeout::Slow);
        assert!(p.state().admitted_per_s.is_some());
        // Sent after the last sign of life: down, and the pace is not touched.
        let paced = p.state();
        assert_eq!(p.on_timeout(t0 + 4 * S, t0 + 3 * S), Timeout::Down);
        assert_eq!(p.state(), paced);
        // A late answer (a slow signal) is a sign of life for the requests still waiting.
        p.on_slow(t0 + 5 * S, load(1, 800));
        assert_eq!(p.on_timeout(t0 + 5500 * MS, t0 + 4500 * MS), Timeout::Slow);
    }

    #[test]
    fn pacing_is_forgotten_after_a_quiet_minute() {
        let t0 = Instant::now();
        let mut p = pacer();
        p.on_slow(t0, load(4, 1000));
        assert!(p.admit(t0));
        assert!(!p.admit(t0 + S));
        assert!(p.admit(t0 + 60 * S));
        assert_eq!(p.state().admitted_per_s, None);
        assert!(p.admit(t0 + 60 * S + MS));
    }

    #[test]
    fn a_probe_counts_against_the_pace() {
        let t0 = Instant::now();
        let mut p = pacer();
        p.on_slow(t0, None);
        p.sent(t0);
        assert!(!p.admit(t0 + 500 * MS));
        assert!(p.admit(t0 + S));
    }

    #[test]
    fn late_signals_from_the_past_do_not_move_time_backwards() {
        let t0 = Instant::now();
        let mut p = pacer();
        p.on_answer(t0 + 2 * S, 300 * MS, None);
        // A late answer seen now that arrived before the last answer.
        p.on_slow(t0 + S, None);
        assert_eq!(p.on_timeout(t0 + 3 * S, t0 + 1500 * MS), Timeout::Slow);
    }
}
