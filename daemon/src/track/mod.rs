//! Multi-object tracking of heads across the analysed frames of one camera.
//!
//! A [`Tracker`] turns each frame's detections into stable track ids, so that alerts, counts and
//! the helmet decision can be made per person rather than per box, and a box-level class flip
//! (helmet / no helmet) becomes a vote instead of a new event.
//!
//! - **Low, irregular frame rates.** Frames arrive at 1–5 frames/s and not on a fixed clock (the
//!   worker skips frames under load), so a walking head moves up to about a box width between
//!   frames and consecutive boxes often do not overlap at all. Plain IoU matching would break
//!   every such track, so association compares boxes with the track's *predicted* box (a
//!   constant-velocity model driven by elapsed time, not frame count) using a centre distance
//!   measured in box sizes, with IoU only as a tie-breaker.
//! - **Time-based loss.** A track dies when it has not been matched for
//!   [`TrackerSettings::lost_after`] of frame time, never after N frames: N frames are 2 s at
//!   5 frames/s and 10 s at 1 frame/s, and a person hidden for a moment must not become a new
//!   person just because the camera's rate changed. Frame time only moves forward: a capture time
//!   earlier than the previous one counts as no time passed, so a clock step never kills tracks.
//! - **Class-agnostic.** A head is a head: the model's class for the same head flips between
//!   frames, and that flip is exactly what the track's [`Vote`]s are for. Matching on class
//!   would split one person into two tracks at each flip.
//! - **Two rounds, ByteTrack style.** Boxes at or above [`TrackerSettings::high_score`] are
//!   matched first against every track and may start tracks. Boxes in `[low_score, high_score)`
//!   are then offered only to the tracks still unmatched: a partly hidden or blurred head keeps
//!   its track alive, but a weak box alone is too often a false positive to start one.
//! - **Bounded.** At most [`MAX_TRACKS`] live tracks, [`VOTES`] votes each, and `update` works on
//!   stack arrays only: a camera pointed at a crowd (or a broken model emitting
//!   `MAX_DETECTIONS` boxes) costs a fixed amount of memory, and boxes that would need a track
//!   beyond the bound are counted in [`Tracker::dropped_boxes`] instead of growing anything.
//!   Garbage boxes (non-finite, inverted, empty, absurdly far) are ignored, never trusted.

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant, SystemTime};

use helmet_pipelines::{Detection, MAX_DETECTIONS};

/// The most live tracks per camera.
pub const MAX_TRACKS: usize = 64;
/// How many of a track's latest class votes are kept.
pub const VOTES: usize = 8;

// Alpha-beta filter gains. An alpha-beta filter rather than a Kalman filter: with 1–5 frames/s
// a track gets few, irregularly spaced observations, too few for a covariance estimate to mean
// much, and fixed gains make the worst case of one bad match easy to bound (see MAX_SPEED).
// The pair is the critically damped one (beta = alpha² / (2 − alpha)): it follows a walking
// head within two or three frames without overshooting.
const ALPHA: f32 = 0.75;
const BETA: f32 = 0.45;
/// Box sizes jitter from frame to frame more than heads change size; smooth them.
const SIZE_ALPHA: f32 = 0.5;
/// Box sizes per second. A walking head covers up to about 5 box widths a second (a width per
/// frame at 5 frames/s); anything faster is a bad match, and the clamp is what keeps one from
/// flinging the track away.
const MAX_SPEED: f32 = 6.0;
/// Seconds. Two frames closer than this (a burst after a stall) would turn pixel jitter into a
/// huge velocity.
const MIN_VELOCITY_DT: f32 = 0.1;
/// Seconds. A constant-velocity guess is only good for a step or two; a track hidden for longer
/// is looked for around where it was last heading, not carried off-screen.
const MAX_EXTRAPOLATION: f32 = 2.0;
/// Gate on the centre distance, in box sizes: a new track has no velocity yet and its head may
/// be a whole width away in the next frame, and predictions miss by a fraction of a width.
const GATE_BASE: f32 = 1.5;
/// The gate widens while a track goes unseen: the longer the gap, the less the prediction knows.
const GATE_PER_SECOND: f32 = 0.5;
const GATE_MAX: f32 = 3.0;
/// Seconds. A track unseen for this long may also be found where it was last seen, not only
/// where it was heading: a person who steps out of view often comes back the way they left
/// (out of the frame and back, behind a stack and back), which the motion model cannot foresee.
/// Not sooner, so two people passing each other cannot trade tracks through it.
const RETURN_AFTER: f32 = 1.0;
/// The same head does not change size by more than this between two matches (per side).
const MAX_SCALE_CHANGE: f32 = 2.0;
/// Pixels. No camera frame is this large; a coordinate beyond it is a decoding bug, and
/// refusing it keeps every sum and product of coordinates finite.
const MAX_COORD: f32 = 1.0e6;

#[derive(Debug, Clone, PartialEq)]
pub struct TrackerSettings {
    /// Boxes at or above this score start tracks and are matched first (ByteTrack's first round).
    pub high_score: f32,
    /// Boxes in [low_score, high_score) only extend existing tracks (ByteTrack's second round);
    /// below: ignored.
    pub low_score: f32,
    /// A track not matched for longer than this (by frame time) is removed.
    pub lost_after: Duration,
    /// Weight of a vote from a frame decided by the cloud's big model (an edge vote weighs 1.0).
    pub cloud_weight: f32,
}

impl Default for TrackerSettings {
    fn default() -> Self {
        TrackerSettings {
            high_score: 0.5,
            low_score: 0.25,
            lost_after: Duration::from_secs(10),
            cloud_weight: 3.0,
        }
    }
}

/// One class observation of a track: the matched box's class and score, whose it is, and its
/// weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vote {
    pub class: u16,
    pub score: f32,
    pub evidence: Evidence,
    pub weight: f32,
}

/// Whose detections a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    Edge,
    Cloud,
}

/// Box centre, size and centre velocity (pixels per second) of one track.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Motion {
    cx: f32,
    cy: f32,
    w: f32,
    h: f32,
    vx: f32,
    vy: f32,
}

impl Motion {
    fn from_box(d: &Detection) -> Self {
        let (cx, cy, w, h) = centre_size(d);
        Motion {
            cx,
            cy,
            w,
            h,
            vx: 0.0,
            vy: 0.0,
        }
    }

    /// The state `dt` seconds after the last match (size is not extrapolated).
    fn predict(&self, dt: f32) -> Motion {
        let dt = dt.clamp(0.0, MAX_EXTRAPOLATION);
        Motion {
            cx: self.cx + self.vx * dt,
            cy: self.cy + self.vy * dt,
            ..*self
        }
    }

    /// Folds in a match observed `dt` seconds after the previous one.
    fn correct(&mut self, dt: f32, d: &Detection) {
        let predicted = self.predict(dt);
        let (zx, zy, zw, zh) = centre_size(d);
        let (rx, ry) = (zx - predicted.cx, zy - predicted.cy);
        self.cx = predicted.cx + ALPHA * rx;
        self.cy = predicted.cy + ALPHA * ry;
        // No time passed (a repeated or backwards timestamp): the residual says nothing about
        // speed.
        if dt > 0.0 {
            let gain = BETA / dt.max(MIN_VELOCITY_DT);
            self.vx += gain * rx;
            self.vy += gain * ry;
        }
        self.w += SIZE_ALPHA * (zw - self.w);
        self.h += SIZE_ALPHA * (zh - self.h);
        self.vx = self.vx.clamp(-MAX_SPEED * self.w, MAX_SPEED * self.w);
        self.vy = self.vy.clamp(-MAX_SPEED * self.h, MAX_SPEED * self.h);
    }

    fn as_box(&self) -> [f32; 4] {
        let (hw, hh) = (self.w / 2.0, self.h / 2.0);
        [self.cx - hw, self.cy - hh, self.cx + hw, self.cy + hh]
    }
}

#[derive(Debug, Clone)]
pub struct Track {
    /// Stable, unique per [`Tracker`], starting at 1, never reused.
    pub id: u64,
    /// The last matched box (class and score of that match).
    pub bbox: Detection,
    pub first_seen: SystemTime,
    /// Frame time of the last match.
    pub last_seen: SystemTime,
    /// Frames in which it was matched.
    pub hits: u32,
    /// Matched in the latest update.
    pub matched: bool,
    motion: Motion,
    votes: heapless::Deque<Vote, VOTES>,
}

impl Track {
    /// The latest [`VOTES`] class votes, oldest first.
    pub fn votes(&self) -> impl Iterator<Item = &Vote> {
        self.votes.iter()
    }

    /// The predicted `[x1, y1, x2, y2]` at `time` from the motion model (used for association;
    /// also handy for drawing). A time before `last_seen` gives the last estimate.
    pub fn predicted(&self, time: SystemTime) -> [f32; 4] {
        self.motion
            .predict(seconds_between(self.last_seen, time))
            .as_box()
    }

    fn start(id: u64, now: SystemTime, d: &Detection, evidence: Evidence, weight: f32) -> Self {
        let mut track = Track {
            id,
            bbox: *d,
            first_seen: now,
            last_seen: now,
            hits: 1,
            matched: true,
            motion: Motion::from_box(d),
            votes: heapless::Deque::new(),
        };
        track.vote(d, evidence, weight);
        track
    }

    fn observe(&mut self, now: SystemTime, d: &Detection, evidence: Evidence, weight: f32) {
        let gap = seconds_between(self.last_seen, now);
        if gap >= RETURN_AFTER {
            // Whatever the person did while unseen (stopped, turned back), the old velocity no
            // longer describes it: start the motion afresh from where they are.
            self.motion = Motion::from_box(d);
        } else {
            self.motion.correct(gap, d);
        }
        self.bbox = *d;
        self.last_seen = now;
        self.hits = self.hits.saturating_add(1);
        self.matched = true;
        self.vote(d, evidence, weight);
    }

    fn vote(&mut self, d: &Detection, evidence: Evidence, weight: f32) {
        if self.votes.is_full() {
            self.votes.pop_front();
        }
        // Room was just made: this cannot fail.
        let _ = self.votes.push_back(Vote {
            class: d.class,
            score: d.score,
            evidence,
            weight,
        });
    }

    fn gate(&self, now: SystemTime) -> Gate {
        let gap = seconds_between(self.last_seen, now);
        let motion = self.motion.predict(gap);
        let [x1, y1, x2, y2] = motion.as_box();
        Gate {
            motion,
            bbox: Detection {
                x1,
                y1,
                x2,
                y2,
                score: 0.0,
                class: 0,
            },
            max_distance: (GATE_BASE + GATE_PER_SECOND * gap).min(GATE_MAX),
            last_seen: (gap >= RETURN_AFTER).then(|| self.motion.predict(0.0)),
        }
    }
}

/// A track's predicted box for this frame and how far from it a match may be.
struct Gate {
    motion: Motion,
    bbox: Detection,
    /// In box sizes.
    max_distance: f32,
    /// Where the track was last seen, for a track unseen for [`RETURN_AFTER`].
    last_seen: Option<Motion>,
}

impl Gate {
    /// Lower is better; `None` outside the gate. The centre distance in box sizes carries the
    /// decision (boxes a width apart have no IoU to compare); IoU with the predicted box breaks
    /// ties between close candidates in favour of the one that also fits in size and shape.
    fn cost(&self, d: &Detection) -> Option<f32> {
        let ahead = centre_distance(&self.motion, d);
        let distance = match &self.last_seen {
            Some(last) => ahead.min(centre_distance(last, d)),
            None => ahead,
        };
        let (_, _, zw, zh) = centre_size(d);
        let p = &self.motion;
        let scale = ((zw * zh) / (p.w * p.h)).sqrt();
        let in_scale = (1.0 / MAX_SCALE_CHANGE..=MAX_SCALE_CHANGE).contains(&scale);
        // Written so that NaN anywhere falls outside the gate.
        let within = distance <= self.max_distance;
        if !within || !in_scale {
            return None;
        }
        let cost = distance + (1.0 - self.bbox.iou(d));
        cost.is_finite().then_some(cost)
    }
}

/// From a track's box (predicted or last seen) to a detection's centre, in their mean box size.
fn centre_distance(track: &Motion, d: &Detection) -> f32 {
    let (zx, zy, zw, zh) = centre_size(d);
    let (nw, nh) = ((track.w + zw) / 2.0, (track.h + zh) / 2.0);
    ((zx - track.cx) / nw).hypot((zy - track.cy) / nh)
}

/// Per-camera tracker; see the module documentation.
#[derive(Debug, Clone)]
pub struct Tracker {
    settings: TrackerSettings,
    /// In creation order (ascending ids): removal keeps the order, new tracks go last.
    tracks: heapless::Vec<Track, MAX_TRACKS>,
    next_id: u64,
    /// The latest frame time seen; frame time never goes back.
    clock: Option<SystemTime>,
    dropped: u64,
}

type Pairs = heapless::Vec<(usize, usize), MAX_TRACKS>;

impl Tracker {
    pub fn new(settings: TrackerSettings) -> Self {
        Tracker {
            settings,
            tracks: heapless::Vec::new(),
            next_id: 1,
            clock: None,
            dropped: 0,
        }
    }

    pub fn settings(&self) -> &TrackerSettings {
        &self.settings
    }

    /// Feeds one analysed frame captured at `time` (earlier than the previous frame's: treated
    /// as no time passed). Removes the tracks unmatched for longer than `lost_after`, matches
    /// high-score boxes to all tracks, then low-score boxes to the tracks left, and starts tracks
    /// for unmatched high-score boxes while there is room (the rest count in
    /// [`dropped_boxes`](Self::dropped_boxes)).
    ///
    /// Returns, for each detection, the id of its track (`None`: garbage, below `low_score`,
    /// unmatched low-score, or dropped). Same length as `detections`, except that boxes beyond
    /// `MAX_DETECTIONS` (more than any model output carries) are ignored and left out.
    pub fn update(
        &mut self,
        time: SystemTime,
        detections: &[Detection],
        evidence: Evidence,
    ) -> heapless::Vec<Option<u64>, MAX_DETECTIONS> {
        let now = self.advance_clock(time);
        let lost_after = self.settings.lost_after;
        self.tracks
            .retain(|t| now.duration_since(t.last_seen).unwrap_or(Duration::ZERO) <= lost_after);
        for track in &mut self.tracks {
            track.matched = false;
        }
        let detections = &detections[..detections.len().min(MAX_DETECTIONS)];
        let (high, low) = self.split_by_score(detections);

        let gates: heapless::Vec<Gate, MAX_TRACKS> =
            self.tracks.iter().map(|t| t.gate(now)).collect();
        let mut free = [false; MAX_TRACKS];
        free[..gates.len()].fill(true);
        let mut pairs = Pairs::new();
        greedy_match(&gates, &mut free, detections, &high, &mut pairs);
        greedy_match(&gates, &mut free, detections, &low, &mut pairs);

        let weight = match evidence {
            Evidence::Edge => 1.0,
            Evidence::Cloud => self.settings.cloud_weight,
        };
        let mut ids: heapless::Vec<Option<u64>, MAX_DETECTIONS> =
            detections.iter().map(|_| None).collect();
        for &(t, d) in &pairs {
            let track = &mut self.tracks[t];
            track.observe(now, &detections[d], evidence, weight);
            ids[d] = Some(track.id);
        }
        for &d in &high {
            let d = usize::from(d);
            if ids[d].is_none() {
                ids[d] = self.start_track(now, &detections[d], evidence, weight);
            }
        }
        ids
    }

    /// Live tracks in creation order (ascending ids).
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// High-score boxes that found no track and no room for a new one, since creation.
    pub fn dropped_boxes(&self) -> u64 {
        self.dropped
    }

    fn advance_clock(&mut self, time: SystemTime) -> SystemTime {
        let now = match self.clock {
            Some(clock) if time < clock => clock,
            _ => time,
        };
        self.clock = Some(now);
        now
    }

    /// Indices of the valid boxes of the first and of the second round.
    fn split_by_score(&self, detections: &[Detection]) -> (Candidates, Candidates) {
        let (mut high, mut low) = (Candidates::new(), Candidates::new());
        let indexed = detections.iter().enumerate().filter(|(_, d)| is_valid(d));
        for (i, d) in indexed {
            // `detections` holds at most MAX_DETECTIONS boxes, so both the index and the push fit.
            let i = u16::try_from(i).unwrap_or(u16::MAX);
            if d.score >= self.settings.high_score {
                let _ = high.push(i);
            } else if d.score >= self.settings.low_score {
                let _ = low.push(i);
            }
        }
        (high, low)
    }

    fn start_track(
        &mut self,
        now: SystemTime,
        d: &Detection,
        evidence: Evidence,
        weight: f32,
    ) -> Option<u64> {
        if self.tracks.is_full() {
            self.dropped += 1;
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        // Not full, checked above.
        let _ = self.tracks.push(Track::start(id, now, d, evidence, weight));
        Some(id)
    }
}

type Candidates = heapless::Vec<u16, MAX_DETECTIONS>;

/// Matches `candidates` to the `free` tracks, cheapest gated pair first, and appends the pairs
/// (track index, detection index).
///
/// Greedy rather than Hungarian: with a motion prediction and a gate of a box size or two, a
/// detection rarely has more than one plausible track, and where two heads truly overlap the
/// cheapest pair is also the right one often enough; greedy needs no cost matrix (64 × 300
/// floats would not fit the stack-only budget), no allocation and no integer cost scaling as
/// `pathfinding::kuhn_munkres` would. Each track remembers its best candidate and is only
/// re-scanned when that candidate is taken, so a frame costs about tracks × boxes gate checks.
fn greedy_match(
    gates: &[Gate],
    free: &mut [bool; MAX_TRACKS],
    detections: &[Detection],
    candidates: &[u16],
    pairs: &mut Pairs,
) {
    let mut taken = [false; MAX_DETECTIONS];
    let mut best: [Option<(f32, usize)>; MAX_TRACKS] = [None; MAX_TRACKS];
    for (t, gate) in gates.iter().enumerate() {
        if free[t] {
            best[t] = best_candidate(gate, detections, candidates, &taken);
        }
    }
    while let Some((t, d)) = cheapest(&best) {
        free[t] = false;
        best[t] = None;
        taken[d] = true;
        // One pair per track at most: the capacity is the number of tracks.
        let _ = pairs.push((t, d));
        for (other, slot) in best.iter_mut().enumerate() {
            if matches!(slot, Some((_, wanted)) if *wanted == d) {
                *slot = best_candidate(&gates[other], detections, candidates, &taken);
            }
        }
    }
}

fn best_candidate(
    gate: &Gate,
    detections: &[Detection],
    candidates: &[u16],
    taken: &[bool; MAX_DETECTIONS],
) -> Option<(f32, usize)> {
    let mut best: Option<(f32, usize)> = None;
    for &i in candidates {
        let i = usize::from(i);
        if taken[i] {
            continue;
        }
        if let Some(cost) = gate.cost(&detections[i])
            && best.is_none_or(|(lowest, _)| cost < lowest)
        {
            best = Some((cost, i));
        }
    }
    best
}

/// The (track, detection) pair of lowest cost; ties go to the older track.
fn cheapest(best: &[Option<(f32, usize)>; MAX_TRACKS]) -> Option<(usize, usize)> {
    let mut found: Option<(f32, usize, usize)> = None;
    for (t, slot) in best.iter().enumerate() {
        if let Some((cost, d)) = *slot
            && found.is_none_or(|(lowest, _, _)| cost < lowest)
        {
            found = Some((cost, t, d));
        }
    }
    found.map(|(_, t, d)| (t, d))
}

/// A box worth tracking: finite, of positive area, within any plausible frame.
fn is_valid(d: &Detection) -> bool {
    let coords = [d.x1, d.y1, d.x2, d.y2];
    coords.iter().all(|c| c.is_finite() && c.abs() <= MAX_COORD)
        && d.score.is_finite()
        && d.x2 > d.x1
        && d.y2 > d.y1
}

fn centre_size(d: &Detection) -> (f32, f32, f32, f32) {
    (
        (d.x1 + d.x2) / 2.0,
        (d.y1 + d.y2) / 2.0,
        d.x2 - d.x1,
        d.y2 - d.y1,
    )
}

/// Seconds from `from` to `to`; zero when `to` is earlier.
fn seconds_between(from: SystemTime, to: SystemTime) -> f32 {
    to.duration_since(from)
        .unwrap_or(Duration::ZERO)
        .as_secs_f32()
}

/// Mean time of one [`Tracker::update`] on a synthetic scene of `boxes` heads (at most
/// `MAX_DETECTIONS`) walking on a grid at 2 frames/s for `frames` frames; for the benchmark
/// command. Includes nothing but `update` itself.
pub fn cost_per_frame(boxes: usize, frames: usize) -> Duration {
    let mut tracker = Tracker::new(TrackerSettings::default());
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut detections: Vec<Detection> = Vec::with_capacity(boxes.min(MAX_DETECTIONS));
    let mut spent = Duration::ZERO;
    for frame in 0..frames {
        detections.clear();
        detections.extend((0..boxes.min(MAX_DETECTIONS)).map(|i| grid_head(i, frame)));
        let time = start + Duration::from_millis(500 * frame as u64);
        let began = Instant::now();
        std::hint::black_box(tracker.update(
            time,
            std::hint::black_box(&detections),
            Evidence::Edge,
        ));
        spent += began.elapsed();
    }
    spent / u32::try_from(frames.max(1)).unwrap_or(u32::MAX)
}

/// Head `i` of the benchmark scene in frame `frame`: 40 px heads, 10 a row, 4 widths apart,
/// each row walking one width per frame, alternate rows in opposite directions.
fn grid_head(i: usize, frame: usize) -> Detection {
    const SIZE: f32 = 40.0;
    let (row, col) = ((i / 10) as f32, (i % 10) as f32);
    let direction = if (i / 10).is_multiple_of(2) {
        1.0
    } else {
        -1.0
    };
    let x = col * 4.0 * SIZE + direction * SIZE * frame as f32;
    let y = row * 4.0 * SIZE;
    Detection {
        x1: x,
        y1: y,
        x2: x + SIZE,
        y2: y + SIZE,
        score: 0.9,
        class: (i % 2) as u16,
    }
}
