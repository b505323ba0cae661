//! How many hard examples a camera may send the cloud: a token bucket per camera.
//!
//! `cloud.budget_per_s` tokens a second, holding at most one second's worth (and at least one
//! token, so a budget under 1/s still lets a lone hard frame through at once). A busy scene then
//! sends at most the budget and an idle one can burst briefly; frames over it are decided by the
//! edge. Time is passed in, so tests need no clock.

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Budget {
    /// Tokens per second; `None`: no limit.
    rate: Option<f64>,
    capacity: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Budget {
    /// `per_second` ≤ 0 means no limit.
    pub fn per_second(per_second: f64) -> Self {
        let rate = (per_second > 0.0).then_some(per_second);
        let capacity = rate.map_or(0.0, |r| r.max(1.0));
        Self {
            rate,
            capacity,
            tokens: capacity,
            last: None,
        }
    }

    /// Whether a hard example may be sent at `now`; takes a token if so.
    pub fn take(&mut self, now: Instant) -> bool {
        let Some(rate) = self.rate else {
            return true;
        };
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * rate;
            self.tokens = (self.tokens + refill).min(self.capacity);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Hard frames every `every` for `seconds`; how many the budget lets through.
    fn sent(budget: &mut Budget, start: Instant, every: Duration, seconds: u64) -> usize {
        let frames = (Duration::from_secs(seconds).as_secs_f64() / every.as_secs_f64()) as u32;
        (0..frames)
            .filter(|&i| budget.take(start + every * i))
            .count()
    }

    #[test]
    fn a_busy_camera_sends_at_most_its_budget() {
        let t0 = Instant::now();
        // 4 hard frames a second for a minute against 0.5/s: 30 in the minute, +1 burst token.
        let mut budget = Budget::per_second(0.5);
        let n = sent(&mut budget, t0, Duration::from_millis(250), 60);
        assert!((30..=31).contains(&n), "{n}");
        // 2/s against 2/s: everything, after a burst of two.
        let mut budget = Budget::per_second(2.0);
        assert_eq!(sent(&mut budget, t0, Duration::from_millis(500), 60), 120);
    }

    #[test]
    fn an_idle_camera_bursts_at_most_one_seconds_worth() {
        let t0 = Instant::now();
        let mut budget = Budget::per_second(3.0);
        assert!(budget.take(t0));
        // A long quiet spell refills to 3, not to 3 × the spell.
        let later = t0 + Duration::from_secs(100);
        let burst = (0..10).filter(|_| budget.take(later)).count();
        assert_eq!(burst, 3);
        // Under 1/s a lone hard frame still goes at once.
        let mut slow = Budget::per_second(0.1);
        assert!(slow.take(t0));
        assert!(!slow.take(t0 + Duration::from_secs(5)));
        assert!(slow.take(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn zero_means_no_limit() {
        let t0 = Instant::now();
        let mut budget = Budget::per_second(0.0);
        assert!((0..1000).all(|_| budget.take(t0)));
    }
}
