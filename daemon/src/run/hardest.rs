//! Spending a camera's cloud budget on its hardest frames.
//!
//! The token bucket (`joint::budget`) says how many questions a camera may ask a second; on its
//! own it takes the first hard frames of each second, however little they have to settle. This
//! gate ranks instead: it remembers the hardness (`hem::margin_hardness`) of the camera's recent
//! hard frames and lets a frame compete for a token only when it is among the hardest share of
//! them that the budget can pay for. `helmetd bench joint` measured the ranking against Sedna's
//! rules at equal uploads (docs/benchmarks.md).

use std::time::{Duration, SystemTime};

/// Recent hard frames remembered; at 2–5 frames/s, half a minute to two.
const WINDOW: usize = 64;
/// Older frames say little about the scene now.
const WINDOW_SPAN: Duration = Duration::from_secs(30);
/// Fewer frames than this are not a ranking: until then every frame may compete.
const MIN_FRAMES: usize = 8;

#[derive(Debug)]
pub struct HardestFirst {
    budget_per_s: f64,
    /// (capture time, hardness), oldest first.
    recent: heapless::Deque<(SystemTime, f64), WINDOW>,
}

impl HardestFirst {
    /// `budget_per_s` is `cloud.budget_per_s`; 0 (no budget) admits every frame.
    pub fn new(budget_per_s: f64) -> Self {
        Self {
            budget_per_s,
            recent: heapless::Deque::new(),
        }
    }

    /// Records a hard frame and says whether it ranks among those the budget can pay for: at
    /// least as hard as the `1 − budget ÷ rate` quantile of the recent hard frames, where the
    /// rate is theirs over the window.
    pub fn admits(&mut self, time: SystemTime, hardness: f64) -> bool {
        let hardness = if hardness.is_finite() { hardness } else { 0.0 };
        while self.recent.front().is_some_and(|(t, _)| {
            self.recent.is_full() || time.duration_since(*t).unwrap_or(Duration::ZERO) > WINDOW_SPAN
        }) {
            self.recent.pop_front();
        }
        // Room was just made: this cannot fail.
        let _ = self.recent.push_back((time, hardness));
        if self.budget_per_s <= 0.0 || self.recent.len() < MIN_FRAMES {
            return true;
        }
        let (Some((first, _)), Some((last, _))) = (self.recent.front(), self.recent.back()) else {
            return true;
        };
        let span = last
            .duration_since(*first)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64();
        if span <= 0.0 {
            return true;
        }
        let rate = (self.recent.len() - 1) as f64 / span;
        let share = self.budget_per_s / rate;
        if share >= 1.0 {
            return true;
        }
        let mut sorted: heapless::Vec<f64, WINDOW> = self.recent.iter().map(|(_, h)| *h).collect();
        sorted.sort_unstable_by(f64::total_cmp);
        // The hardness below which the `1 − share` least hard frames lie.
        let rank = ((1.0 - share) * sorted.len() as f64).floor() as usize;
        let threshold = sorted[rank.min(sorted.len() - 1)];
        hardness >= threshold
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_800_000_000_000 + ms)
    }

    #[test]
    fn without_a_budget_or_a_history_every_frame_competes() {
        let mut free = HardestFirst::new(0.0);
        assert!((0..20).all(|i| free.admits(at(i * 500), 0.0)));
        let mut fresh = HardestFirst::new(0.5);
        assert!((0..MIN_FRAMES as u64 - 1).all(|i| fresh.admits(at(i * 500), 0.0)));
    }

    #[test]
    fn a_budget_below_the_hard_frame_rate_admits_the_hardest_share() {
        // Two hard frames a second against a budget of one: about the harder half competes.
        let mut gate = HardestFirst::new(1.0);
        let hardness = |i: u64| ((i * 7) % 10) as f64 / 10.0;
        let admitted: Vec<f64> = (0..60)
            .filter(|&i| gate.admits(at(i * 500), hardness(i)))
            .skip(MIN_FRAMES)
            .map(hardness)
            .collect();
        let later = 60 - MIN_FRAMES;
        assert!(
            (later * 4 / 10..=later * 6 / 10).contains(&admitted.len()),
            "{} of {later}",
            admitted.len()
        );
        assert!(admitted.iter().all(|&h| h >= 0.4), "{admitted:?}");
    }

    #[test]
    fn a_budget_above_the_hard_frame_rate_admits_everything() {
        let mut gate = HardestFirst::new(5.0);
        assert!((0..40).all(|i| gate.admits(at(i * 500), 0.0)));
    }

    #[test]
    fn nan_hardness_ranks_lowest_and_a_stepped_clock_does_not_panic() {
        let mut gate = HardestFirst::new(1.0);
        for i in 0..30 {
            gate.admits(at(i * 250), 1.0);
        }
        assert!(!gate.admits(at(7_500), f64::NAN));
        assert!(gate.admits(at(0), 2.0), "the hardest frame still competes");
    }
}
