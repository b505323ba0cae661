//! Multi-object tracking metrics: CLEAR-MOT counts (FP, FN, ID switches) and IDF1.
//!
//! Per frame, ground-truth boxes are matched to tracker boxes at IoU ≥ [`MATCH_IOU`]: first the
//! pairs that continue the previous frame's correspondence (CLEAR-MOT keeps a match as long as it
//! is still valid), then the rest greedily by IoU, highest first. Greedy rather than optimal: at
//! IoU ≥ 0.5 two boxes rarely compete for the same partner, and the scenes here are small.
//!
//! IDF1 (Ristani et al. 2016) uses the single global one-to-one assignment of ground-truth ids to
//! track ids that maximises the frames where both ids' boxes overlap at IoU ≥ [`MATCH_IOU`]
//! (IDTP); it is solved exactly with the Hungarian method on the id-pair count matrix.

use std::collections::{BTreeMap, BTreeSet};

/// Intersection over union at which two boxes are the same head.
pub const MATCH_IOU: f32 = 0.5;

/// Intersection over union of `[x1, y1, x2, y2]` boxes; 0 for empty ones.
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: [f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Totals over one or more sequences.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MotSummary {
    pub gt_boxes: u64,
    pub track_boxes: u64,
    pub matches: u64,
    pub false_positives: u64,
    pub misses: u64,
    pub id_switches: u64,
    pub idtp: u64,
}

impl MotSummary {
    pub fn idfp(&self) -> u64 {
        self.track_boxes - self.idtp.min(self.track_boxes)
    }

    pub fn idfn(&self) -> u64 {
        self.gt_boxes - self.idtp.min(self.gt_boxes)
    }

    /// 2·IDTP / (2·IDTP + IDFP + IDFN); 1 when there was nothing to find and nothing was found.
    pub fn idf1(&self) -> f64 {
        let denominator = self.gt_boxes + self.track_boxes;
        if denominator == 0 {
            1.0
        } else {
            (2 * self.idtp) as f64 / denominator as f64
        }
    }

    /// 1 − (FN + FP + IDSW) / GT, for information.
    pub fn mota(&self) -> f64 {
        if self.gt_boxes == 0 {
            return 1.0;
        }
        1.0 - (self.misses + self.false_positives + self.id_switches) as f64 / self.gt_boxes as f64
    }

    pub fn add(&mut self, o: &MotSummary) {
        self.gt_boxes += o.gt_boxes;
        self.track_boxes += o.track_boxes;
        self.matches += o.matches;
        self.false_positives += o.false_positives;
        self.misses += o.misses;
        self.id_switches += o.id_switches;
        self.idtp += o.idtp;
    }
}

/// Metrics of one sequence, fed frame by frame. Ids are per sequence.
#[derive(Debug, Default)]
pub struct MotAccumulator {
    summary: MotSummary,
    /// The track each ground-truth id was last matched to.
    last_match: BTreeMap<u32, u64>,
    /// Frames where a ground-truth id and a track id overlap at IoU ≥ [`MATCH_IOU`].
    overlaps: BTreeMap<(u32, u64), u64>,
}

impl MotAccumulator {
    /// One frame: ground truth `(gt id, box)` and tracker output `(track id, box)`.
    pub fn add_frame(&mut self, truth: &[(u32, [f32; 4])], tracks: &[(u64, [f32; 4])]) {
        self.summary.gt_boxes += truth.len() as u64;
        self.summary.track_boxes += tracks.len() as u64;
        let mut pairs: Vec<(usize, usize, f32, bool)> = Vec::new();
        for (gi, (g, gb)) in truth.iter().enumerate() {
            for (ti, (t, tb)) in tracks.iter().enumerate() {
                let overlap = iou(*gb, *tb);
                if overlap >= MATCH_IOU {
                    *self.overlaps.entry((*g, *t)).or_default() += 1;
                    let continues = self.last_match.get(g) == Some(t);
                    pairs.push((gi, ti, overlap, continues));
                }
            }
        }
        // Continuing correspondences first, then by IoU.
        pairs.sort_by(|a, b| b.3.cmp(&a.3).then(b.2.total_cmp(&a.2)));
        let mut gt_used = vec![false; truth.len()];
        let mut track_used = vec![false; tracks.len()];
        for (gi, ti, _, _) in pairs {
            if gt_used[gi] || track_used[ti] {
                continue;
            }
            gt_used[gi] = true;
            track_used[ti] = true;
            self.summary.matches += 1;
            let (g, t) = (truth[gi].0, tracks[ti].0);
            if self.last_match.insert(g, t).is_some_and(|prev| prev != t) {
                self.summary.id_switches += 1;
            }
        }
        self.summary.misses += gt_used.iter().filter(|u| !**u).count() as u64;
        self.summary.false_positives += track_used.iter().filter(|u| !**u).count() as u64;
    }

    /// The totals, with IDTP from the best global id assignment.
    pub fn summary(&self) -> MotSummary {
        let gts: Vec<u32> = self
            .overlaps
            .keys()
            .map(|k| k.0)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let tracks: Vec<u64> = self
            .overlaps
            .keys()
            .map(|k| k.1)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let weights: Vec<Vec<u64>> = gts
            .iter()
            .map(|g| {
                tracks
                    .iter()
                    .map(|t| self.overlaps.get(&(*g, *t)).copied().unwrap_or(0))
                    .collect()
            })
            .collect();
        let mut s = self.summary;
        s.idtp = max_weight_assignment(&weights);
        s
    }
}

/// The largest total weight of a one-to-one assignment of rows to columns (Hungarian method,
/// O(n³) on the matrix padded square with zeros).
pub fn max_weight_assignment(weights: &[Vec<u64>]) -> u64 {
    let rows = weights.len();
    let cols = weights.iter().map(Vec::len).max().unwrap_or(0);
    let n = rows.max(cols);
    if n == 0 {
        return 0;
    }
    let top = weights.iter().flatten().copied().max().unwrap_or(0) as i64;
    // Minimise (top − weight); padding cells cost `top` (weight 0).
    let cost = |i: usize, j: usize| -> i64 {
        top - weights.get(i).and_then(|r| r.get(j)).copied().unwrap_or(0) as i64
    };
    // Potentials u (rows), v (columns) and p[j] = row assigned to column j, 1-based with 0 as
    // the virtual start (the classic e-maxx formulation).
    let (mut u, mut v) = (vec![0i64; n + 1], vec![0i64; n + 1]);
    let (mut p, mut way) = (vec![0usize; n + 1], vec![0usize; n + 1]);
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![i64::MAX; n + 1];
        let mut used = vec![false; n + 1];
        // Each pass marks one more column used, so at most n + 1 passes.
        for _ in 0..=n {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = i64::MAX;
            let mut j1 = 0usize;
            for j in 1..=n {
                if used[j] {
                    continue;
                }
                let cur = cost(i0 - 1, j - 1) - u[i0] - v[j];
                if cur < minv[j] {
                    minv[j] = cur;
                    way[j] = j0;
                }
                if minv[j] < delta {
                    delta = minv[j];
                    j1 = j;
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        // Unwind the augmenting path; it is at most n steps long.
        for _ in 0..=n {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    (1..=n)
        .filter(|&j| p[j] >= 1)
        .map(|j| {
            weights
                .get(p[j] - 1)
                .and_then(|r| r.get(j - 1))
                .copied()
                .unwrap_or(0)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(x: f32) -> [f32; 4] {
        [x, 0.0, x + 10.0, 10.0]
    }

    #[test]
    fn a_perfect_tracker_scores_one() {
        let mut acc = MotAccumulator::default();
        for k in 0..10 {
            let x = k as f32 * 3.0;
            acc.add_frame(
                &[(1, bx(x)), (2, bx(x + 100.0))],
                &[(7, bx(x)), (9, bx(x + 100.0))],
            );
        }
        let s = acc.summary();
        assert_eq!((s.id_switches, s.misses, s.false_positives), (0, 0, 0));
        assert_eq!(s.idtp, 20);
        assert_eq!(s.idf1(), 1.0);
        assert_eq!(s.mota(), 1.0);
    }

    #[test]
    fn a_swap_halfway_is_one_switch_per_person() {
        // Two people far apart; at frame 5 the tracker swaps their ids.
        let mut acc = MotAccumulator::default();
        for k in 0..10 {
            let (a, b) = if k < 5 { (7, 9) } else { (9, 7) };
            acc.add_frame(
                &[(1, bx(0.0)), (2, bx(100.0))],
                &[(a, bx(0.0)), (b, bx(100.0))],
            );
        }
        let s = acc.summary();
        assert_eq!(s.id_switches, 2);
        // Best assignment keeps 5 of 10 frames per person: IDTP 10 of 20 → IDF1 0.5.
        assert_eq!(s.idtp, 10);
        assert!((s.idf1() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn a_new_id_for_one_person_after_a_gap() {
        // Person 1 seen 6 frames as track 3, hidden 2 frames, then 4 frames as track 4.
        let mut acc = MotAccumulator::default();
        for k in 0..12 {
            match k {
                0..=5 => acc.add_frame(&[(1, bx(0.0))], &[(3, bx(0.0))]),
                6 | 7 => acc.add_frame(&[], &[]),
                _ => acc.add_frame(&[(1, bx(0.0))], &[(4, bx(0.0))]),
            }
        }
        let s = acc.summary();
        assert_eq!(s.id_switches, 1);
        // IDTP 6, IDFN 4, IDFP 4: 12 / 20.
        assert_eq!((s.idtp, s.idfn(), s.idfp()), (6, 4, 4));
        assert!((s.idf1() - 0.6).abs() < 1e-12);
    }

    #[test]
    fn misses_and_false_positives_are_counted() {
        let mut acc = MotAccumulator::default();
        // A miss, a box nowhere near the truth (FP + FN), a match.
        acc.add_frame(&[(1, bx(0.0))], &[]);
        acc.add_frame(&[(1, bx(0.0))], &[(5, bx(50.0))]);
        acc.add_frame(&[(1, bx(0.0))], &[(5, bx(1.0))]);
        let s = acc.summary();
        assert_eq!((s.misses, s.false_positives, s.matches), (2, 1, 1));
        assert_eq!(s.idtp, 1);
        assert!((s.idf1() - 2.0 / 5.0).abs() < 1e-12);
        assert_eq!(MotSummary::default().idf1(), 1.0);
    }

    #[test]
    fn continuing_matches_win_over_a_slightly_better_overlap() {
        let mut acc = MotAccumulator::default();
        acc.add_frame(&[(1, bx(0.0))], &[(5, bx(0.0))]);
        // Track 6 overlaps better now, but track 5 still matches: no switch, 6 is a FP.
        acc.add_frame(&[(1, bx(0.0))], &[(5, bx(2.0)), (6, bx(0.5))]);
        let s = acc.summary();
        assert_eq!((s.id_switches, s.false_positives), (0, 1));
    }

    fn brute_force(w: &[Vec<u64>], row: usize, used: &mut Vec<bool>) -> u64 {
        if row == w.len() {
            return 0;
        }
        let mut best = brute_force(w, row + 1, used);
        for j in 0..w[row].len() {
            if !used[j] {
                used[j] = true;
                best = best.max(w[row][j] + brute_force(w, row + 1, used));
                used[j] = false;
            }
        }
        best
    }

    #[test]
    fn hungarian_matches_brute_force() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..300 {
            let rows = rng.gen_range(0..6);
            let cols = rng.gen_range(0..6);
            let w: Vec<Vec<u64>> = (0..rows)
                .map(|_| (0..cols).map(|_| rng.gen_range(0..20)).collect())
                .collect();
            let expected = brute_force(&w, 0, &mut vec![false; cols]);
            assert_eq!(max_weight_assignment(&w), expected, "{w:?}");
        }
        assert_eq!(max_weight_assignment(&[vec![5, 1], vec![4, 0]]), 5);
        assert_eq!(max_weight_assignment(&[vec![3, 2], vec![3, 0]]), 5);
    }
}
