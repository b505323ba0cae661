//! `helmetd bench joint`: what joint inference is worth, as quality against uploaded frames.
//!
//! Every frame of the bundled photos and of the test video (sampled) goes through the little
//! model, and through the big model the way the cloud sees it: the letterbox content as a JPEG
//! at `cloud.jpeg_quality`, decoded and letterboxed by the cloud service's own code, boxes mapped
//! back to frame pixels. The big model's boxes at `alerts.min_score` are the pseudo ground truth.
//! For each hard-example rule setting the joint result of a frame is the big model's boxes when
//! the rule calls it hard and the little model's otherwise, as if every hard frame were answered
//! in time; scored at IoU 0.5 per class (box F1) and as the alert decision per frame (a box of an
//! alert class at `min_score` or not). The curve is upload ratio against F1.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use helmet_pipelines::detect::Detector;
use helmet_pipelines::hem::{HardExampleMining, margin_hardness};
use helmet_pipelines::ingest::{Camera, CameraSettings, Pace};
use helmet_pipelines::output::{content_image, encode_jpeg};
use helmet_pipelines::still::load_still;
use helmet_pipelines::{Detection, Frame};
use rand::SeedableRng;

use crate::alerts::{AlertSettings, DecisionSource, EpisodeTracker, FrameInput};
use crate::cloud::service::{cloud_model_spec, letterbox_jpeg};
use crate::commands::detect::{edge_model_spec, is_image};
use crate::config::{BudgetOrder, Config};
use crate::joint::budget::Budget;
use crate::joint::protocol::HardExampleMeta;
use crate::run::HardestFirst;
use crate::track::Evidence;
use crate::zones::CameraRules;

/// Boxes of different frames never match; within a frame, greedy by score, same class.
const MATCH_IOU: f32 = 0.5;
/// Upload budget of the headline figure.
const BUDGET: f64 = 0.30;
/// The quality the issue asks for within that budget.
const TARGET_F1: f64 = 0.95;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchJointArgs {
    /// Folders of photos (what `helmetd detect` reads as images) to score besides media/.
    #[arg(long)]
    pub photos: Vec<PathBuf>,
    /// Video sampled for frames (default: the bundled media/helmet-test.mp4).
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// Frames per second taken from the video.
    #[arg(long, default_value_t = 1.0)]
    pub video_fps: f64,
    /// At most this many video frames.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_video_frames: u32,
    /// Write the upload-ratio vs F1 chart here (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Both models' boxes of one frame, in frame pixels.
struct Scored {
    little: Vec<Detection>,
    big: Vec<Detection>,
}

/// True/false positives and misses.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Counts {
    tp: u64,
    fp: u64,
    missed: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.missed += other.missed;
    }

    /// 1.0 when there was nothing to find and nothing was found.
    fn f1(&self) -> f64 {
        let denominator = 2 * self.tp + self.fp + self.missed;
        if denominator == 0 {
            1.0
        } else {
            (2 * self.tp) as f64 / denominator as f64
        }
    }
}

/// One hard-example setting's point on the curve.
#[derive(Debug, Clone)]
struct Point {
    rule: String,
    family: &'static str,
    upload: f64,
    box_f1: f64,
    alert_f1: f64,
}

/// The boxes of `found` at `min_score` matched to `truth` (already at `min_score`): greedy by
/// score, same class, IoU ≥ [`MATCH_IOU`].
fn match_boxes(found: &[Detection], truth: &[Detection], min_score: f32) -> Counts {
    let mut found: Vec<&Detection> = found.iter().filter(|d| d.score >= min_score).collect();
    found.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut used = vec![false; truth.len()];
    let mut counts = Counts::default();
    for d in found {
        let best = truth
            .iter()
            .enumerate()
            .filter(|(i, t)| !used[*i] && t.class == d.class)
            .map(|(i, t)| (i, d.iou(t)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((i, iou)) if iou >= MATCH_IOU => {
                used[i] = true;
                counts.tp += 1;
            }
            _ => counts.fp += 1,
        }
    }
    counts.missed = used.iter().filter(|u| !**u).count() as u64;
    counts
}

/// What scoring needs besides the frames.
struct Scoring<'a> {
    alert_classes: &'a [u16],
    min_score: f32,
    num_classes: usize,
}

/// Scores one rule over every frame.
fn evaluate(
    rule: &HardExampleMining,
    family: &'static str,
    frames: &[Scored],
    scoring: &Scoring<'_>,
) -> Point {
    // Random draws from a fixed seed, so a run can be repeated.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let hard: Vec<bool> = frames
        .iter()
        .map(|f| rule.is_hard(&f.little, scoring.num_classes, &mut rng))
        .collect();
    score(rule.to_string(), family, frames, &hard, scoring)
}

/// The hardest `ratio` of the frames by [`margin_hardness`]: what a per-camera budget spends
/// on when it ranks frames instead of taking the first ones. Ranked over the whole set here, so
/// this is the bound an online ranking (a threshold at a quantile of recent hardness) aims at.
fn evaluate_ranked(ratio: f64, frames: &[Scored], scoring: &Scoring<'_>) -> Point {
    let hardness: Vec<f64> = frames
        .iter()
        .map(|f| margin_hardness(&f.little, scoring.min_score))
        .collect();
    let mut order: Vec<usize> = (0..frames.len()).collect();
    order.sort_by(|&a, &b| hardness[b].total_cmp(&hardness[a]).then(a.cmp(&b)));
    let take = (ratio * frames.len() as f64).round() as usize;
    let mut hard = vec![false; frames.len()];
    for &i in order.iter().take(take).filter(|&&i| hardness[i] > 0.0) {
        hard[i] = true;
    }
    score(
        format!("Ranked:ratio={ratio}"),
        "Ranked",
        frames,
        &hard,
        scoring,
    )
}

/// A camera's cloud budget as `helmetd run` spends it (`run::finalize::within_budget`): the
/// token bucket of `per_s` questions a second, behind the [`HardestFirst`] ranking when
/// `hardest`.
#[derive(Clone, Copy)]
struct CameraBudget {
    per_s: f64,
    hardest: bool,
}

impl CameraBudget {
    fn name(self) -> &'static str {
        if self.hardest { "hardest" } else { "first" }
    }
}

/// One camera's [`CameraBudget`] in play, on the bench's clock.
struct BudgetGate {
    ranking: Option<HardestFirst>,
    bucket: Budget,
    start: std::time::Instant,
}

impl BudgetGate {
    fn new(budget: CameraBudget) -> Self {
        Self {
            ranking: budget.hardest.then(|| HardestFirst::new(budget.per_s)),
            bucket: Budget::per_second(budget.per_s),
            start: std::time::Instant::now(),
        }
    }

    /// Whether a question about a frame captured `at` into the camera's life is asked.
    fn admits(&mut self, at: Duration, little: &[Detection], min_score: f32) -> bool {
        let ranked = self.ranking.as_mut().is_none_or(|ranking| {
            ranking.admits(
                SystemTime::UNIX_EPOCH + at,
                margin_hardness(little, min_score),
            )
        });
        ranked && self.bucket.take(self.start + at)
    }
}

/// The frames as a camera at [`CAMERA_FPS`] would send them with the daemon's `rule` and a
/// per-camera `budget`: the token bucket alone (the first hard frames of each second), or
/// behind the [`HardestFirst`] ranking, as `helmetd run` does.
fn evaluate_budgeted(
    rule: &HardExampleMining,
    budget: CameraBudget,
    frames: &[Scored],
    scoring: &Scoring<'_>,
) -> Point {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut gate = BudgetGate::new(budget);
    // A camera runs for hours: the set is played WARM_UP_PASSES times first, so the ranking
    // has its history, and only the pass after that is scored.
    let passes = WARM_UP_PASSES + 1;
    let hard: Vec<bool> = frames
        .iter()
        .cycle()
        .take(frames.len() * passes)
        .enumerate()
        .map(|(i, f)| {
            let at = Duration::from_secs_f64(i as f64 / CAMERA_FPS);
            rule.is_hard(&f.little, scoring.num_classes, &mut rng)
                && gate.admits(at, &f.little, scoring.min_score)
        })
        .skip(frames.len() * WARM_UP_PASSES)
        .collect();
    let family = if budget.hardest {
        "Budget, hardest first"
    } else {
        "Budget, first come"
    };
    score(
        format!("{rule}+budget={}/s,{}", budget.per_s, budget.name()),
        family,
        frames,
        &hard,
        scoring,
    )
}

/// What a frame the cloud was not asked about takes from its people's tracks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Carry {
    /// The helmet state by the track's votes, what alerts are decided on: the big model's
    /// latest answer while the track's last boxes include one, else their weighted majority.
    Votes,
    /// The class of the cloud's latest answer about the person, while the track holds it;
    /// the edge box as it is otherwise.
    CloudAnswer,
}

/// How [`evaluate_tracked`] asks: the rule, the tracker's ask-once interval (zero asks every
/// hard frame), what unasked frames carry, and the cameras' budget if any.
#[derive(Clone, Copy)]
struct Asking<'a> {
    rule: &'a HardExampleMining,
    ask_again: Duration,
    carry: Carry,
    budget: Option<CameraBudget>,
}

/// The video as a camera running `helmetd run` decides it: the little model's boxes followed
/// by the daemon's tracker ([`EpisodeTracker`]); a frame the rule calls hard is asked about
/// unless everyone in it was answered about within `ask_again` (ask once per person), then
/// only within the camera's budget if there is one; an asked frame's joint result is the big
/// model's. Every other frame's boxes take their person's class as `carry` says. The photos
/// (frames `..video.start`) have no neighbours to track: the rule (and their own camera's
/// budget, at [`CAMERA_FPS`]) alone decides them. With a budget the cameras run
/// [`WARM_UP_PASSES`] passes first, so the ranking has a history; each pass tracks afresh.
fn evaluate_tracked(
    asking: Asking<'_>,
    frames: &[Scored],
    video: Tracked<'_>,
    scoring: &Scoring<'_>,
) -> Point {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut gates = asking
        .budget
        .map(|b| [BudgetGate::new(b), BudgetGate::new(b)]);
    let passes = if asking.budget.is_some() {
        WARM_UP_PASSES + 1
    } else {
        1
    };
    let mut played = (Vec::new(), Vec::new());
    for pass in 0..passes {
        played = play_tracked(asking, pass, &mut gates, &mut rng, frames, video, scoring);
    }
    let (hard, decided) = played;
    let ask = if asking.ask_again.is_zero() {
        "every hard frame".to_owned()
    } else {
        format!("once/{}s", asking.ask_again.as_secs_f64())
    };
    let budget = asking
        .budget
        .map(|b| format!(",budget={}/s,{}", b.per_s, b.name()))
        .unwrap_or_default();
    let joint: Vec<Scored> = frames
        .iter()
        .zip(decided)
        .map(|(f, little)| Scored {
            little,
            big: f.big.clone(),
        })
        .collect();
    // The decided boxes stand in as the "little" result, so the upload marks only say what
    // was uploaded: hard frames already carry the big model's boxes.
    let (carried, family) = match (asking.carry, asking.budget) {
        (Carry::Votes, None) => ("votes", "Tracked, votes"),
        (Carry::CloudAnswer, None) => ("cloud answer", "Tracked, cloud answer carried"),
        (carry, Some(b)) => (
            if carry == Carry::Votes {
                "votes"
            } else {
                "cloud answer"
            },
            if b.hardest {
                "Tracked + budget, hardest first"
            } else {
                "Tracked + budget, first come"
            },
        ),
    };
    let mut point = score(
        format!("{}+track,ask {ask}{budget},{carried}", asking.rule),
        family,
        &joint,
        &vec![false; frames.len()],
        scoring,
    );
    point.upload = hard.iter().filter(|h| **h).count() as f64 / frames.len().max(1) as f64;
    point
}

/// One pass of [`evaluate_tracked`] over the frames: which were asked about, and each frame's
/// decided boxes. Pass `pass` starts where the previous one ended on the budgets' clocks.
fn play_tracked(
    asking: Asking<'_>,
    pass: usize,
    gates: &mut Option<[BudgetGate; 2]>,
    rng: &mut rand::rngs::StdRng,
    frames: &[Scored],
    video: Tracked<'_>,
    scoring: &Scoring<'_>,
) -> (Vec<bool>, Vec<Vec<Detection>>) {
    let mut people = EpisodeTracker::new(
        "bench-joint",
        video.settings.clone(),
        Arc::new(CameraRules::default()),
    );
    let clean_class = (0..scoring.num_classes as u16).find(|c| !scoring.alert_classes.contains(c));
    let video_len = frames.len() - video.start;
    let mut hard = Vec::with_capacity(frames.len());
    let mut decided = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let by_rule = asking.rule.is_hard(&f.little, scoring.num_classes, rng);
        let mut within_budget = |camera: usize, at: f64| {
            gates.as_mut().is_none_or(|g| {
                g[camera].admits(Duration::from_secs_f64(at), &f.little, scoring.min_score)
            })
        };
        let Some(n) = i.checked_sub(video.start) else {
            let asked = by_rule && within_budget(0, (pass * video.start + i) as f64 / CAMERA_FPS);
            hard.push(asked);
            decided.push(if asked {
                f.big.clone()
            } else {
                f.little.clone()
            });
            continue;
        };
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(n as f64 / video.fps);
        let asked = by_rule
            && people
                .no_question(time, &f.little, video.frame_size, asking.ask_again)
                .is_none()
            && within_budget(1, (pass * video_len + n) as f64 / video.fps);
        let source = if asked {
            DecisionSource::Cloud
        } else {
            DecisionSource::Edge
        };
        let boxes = if asked { &f.big } else { &f.little };
        people.observe(&FrameInput {
            time,
            seq: n as u64,
            width: video.frame_size.0,
            height: video.frame_size.1,
            detections: boxes,
            source,
        });
        if asked {
            people.remember_cloud_answer(time, &f.little);
            decided.push(f.big.clone());
        } else {
            let by_person = |d: &Detection| {
                let track = people.tracks().iter().find(|t| t.matched && t.bbox == *d)?;
                let answer = track
                    .votes()
                    .filter(|v| v.evidence == Evidence::Cloud)
                    .last();
                let class = match asking.carry {
                    Carry::Votes if people.violating_by_votes(track) => {
                        scoring.alert_classes.first().copied()
                    }
                    Carry::Votes => clean_class,
                    Carry::CloudAnswer => answer.map(|v| v.class),
                };
                // A person the big model answered about is decided, however unsure the
                // little model's box of them is now: alerts count them (their state is the
                // answer's), and so does the score.
                let score = answer.map_or(d.score, |v| d.score.max(v.score));
                Some(Detection {
                    class: class?,
                    score,
                    ..*d
                })
            };
            decided.push(
                f.little
                    .iter()
                    .map(|d| by_person(d).unwrap_or(*d))
                    .collect(),
            );
        }
        hard.push(asked);
    }
    (hard, decided)
}

/// helmetd's own rules on tracked video: the daemon's rule, the IBT and Threshold sweeps
/// (edge only too), each with both ways of carrying, asking once per person (every
/// `ask_again`) and asking every hard frame.
fn tracked_points(
    daemon_rule: &HardExampleMining,
    ask_again: Duration,
    scored: &[Scored],
    tracked: Tracked<'_>,
    scoring: &Scoring<'_>,
) -> Vec<Point> {
    let mut tracked_rules = vec![HardExampleMining::EdgeOnly, *daemon_rule];
    for (rule, family) in rules() {
        let sweep = family == "Threshold"
            || matches!(rule, HardExampleMining::Ibt { threshold_img, .. } if threshold_img == 0.9);
        if sweep && !tracked_rules.contains(&rule) {
            tracked_rules.push(rule);
        }
    }
    let mut asks = vec![ask_again];
    if !ask_again.is_zero() {
        asks.push(Duration::ZERO);
    }
    let mut points = Vec::new();
    for rule in &tracked_rules {
        for carry in [Carry::Votes, Carry::CloudAnswer] {
            for &again in &asks {
                let asking = Asking {
                    rule,
                    ask_again: again,
                    carry,
                    budget: None,
                };
                points.push(evaluate_tracked(asking, scored, tracked, scoring));
            }
        }
    }
    // The daemon's whole path: its rule, ask once per person, then each camera's budget.
    for share in RANKED_RATIOS {
        for hardest in [false, true] {
            let asking = Asking {
                rule: daemon_rule,
                ask_again,
                carry: Carry::Votes,
                budget: Some(CameraBudget {
                    per_s: share * CAMERA_FPS,
                    hardest,
                }),
            };
            points.push(evaluate_tracked(asking, scored, tracked, scoring));
        }
    }
    points
}

/// What [`evaluate_tracked`] needs of the video part of the frames.
#[derive(Clone, Copy)]
struct Tracked<'a> {
    /// Index of the first video frame; the ones before are photos.
    start: usize,
    fps: f64,
    frame_size: (u32, u32),
    settings: &'a AlertSettings,
}

/// The rate at which [`evaluate_budgeted`] plays the frames, the daemon's default detect rate.
const CAMERA_FPS: f64 = 2.0;
/// Passes over the frames before the scored one.
const WARM_UP_PASSES: usize = 2;

/// Box and alert F1 of the joint result when the frames marked in `hard` get the big model's
/// boxes.
fn score(
    rule: String,
    family: &'static str,
    frames: &[Scored],
    hard: &[bool],
    scoring: &Scoring<'_>,
) -> Point {
    let Scoring {
        alert_classes,
        min_score,
        ..
    } = *scoring;
    let (mut boxes, mut alerts) = (Counts::default(), Counts::default());
    let alarms = |ds: &[Detection]| {
        ds.iter()
            .any(|d| d.score >= min_score && alert_classes.contains(&d.class))
    };
    for (frame, &is_hard) in frames.iter().zip(hard) {
        let joint = if is_hard { &frame.big } else { &frame.little };
        let truth: Vec<Detection> = frame
            .big
            .iter()
            .filter(|d| d.score >= min_score)
            .copied()
            .collect();
        boxes.add(match_boxes(joint, &truth, min_score));
        match (alarms(joint), alarms(&truth)) {
            (true, true) => alerts.tp += 1,
            (true, false) => alerts.fp += 1,
            (false, true) => alerts.missed += 1,
            (false, false) => {}
        }
    }
    let uploaded = hard.iter().filter(|h| **h).count();
    Point {
        rule,
        family,
        upload: uploaded as f64 / frames.len().max(1) as f64,
        box_f1: boxes.f1(),
        alert_f1: alerts.f1(),
    }
}

/// Upload ratios at which the ranked frames are scored.
const RANKED_RATIOS: [f64; 6] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];

/// The settings swept: Sedna's rules over their thresholds, Random at fixed ratios, and the two
/// ends.
fn rules() -> Vec<(HardExampleMining, &'static str)> {
    let mut out = vec![
        (HardExampleMining::EdgeOnly, "EdgeOnly"),
        (HardExampleMining::CloudOnly, "CloudOnly"),
    ];
    for threshold_img in [0.5, 0.7, 0.9] {
        for threshold_box in [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] {
            out.push((
                HardExampleMining::Ibt {
                    threshold_img,
                    threshold_box,
                },
                "IBT",
            ));
        }
    }
    for threshold in [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] {
        out.push((HardExampleMining::Threshold { threshold }, "Threshold"));
    }
    for threshold_cross_entropy in [0.5, 0.6, 0.7, 0.8, 0.9, 0.95] {
        out.push((
            HardExampleMining::CrossEntropy {
                threshold_cross_entropy,
            },
            "CrossEntropy",
        ));
    }
    for random_ratio in [0.1, 0.2, 0.3, 0.5, 0.7] {
        out.push((HardExampleMining::Random { random_ratio }, "Random"));
    }
    out
}

/// Both models' boxes for `frame`, the big model's through the cloud service's path.
fn score_frame(
    frame: &Frame,
    little: &mut Detector,
    big: &mut Detector,
    jpeg_quality: u8,
    max_side: u32,
) -> anyhow::Result<Scored> {
    let little_boxes = little.detect(frame)?.into_iter().collect();
    let jpeg = encode_jpeg(&content_image(frame), jpeg_quality)?;
    let (w, h) = big.input_size();
    let cloud_frame = letterbox_jpeg(&jpeg, w, h, max_side).map_err(anyhow::Error::msg)?;
    let big_boxes: Vec<Detection> = big.detect(&cloud_frame)?.into_iter().collect();
    Ok(Scored {
        little: little_boxes,
        big: HardExampleMeta::for_frame(frame, &[]).to_original(&big_boxes),
    })
}

fn photos_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_image(p))
        .collect();
    found.sort();
    Ok(found)
}

/// The sampled frames of `video`, letterboxed for the little model.
pub(crate) fn video_frames(
    video: &Path,
    w: u32,
    h: u32,
    fps: f64,
    max: u32,
) -> anyhow::Result<Vec<Frame>> {
    let url = url::Url::from_file_path(video.canonicalize()?)
        .map_err(|()| anyhow::anyhow!("{}: not a usable path", video.display()))?;
    let mut settings = CameraSettings::new("bench-joint", url.as_str(), w, h);
    settings.detect_fps = fps;
    settings.pace = Pace::AsFastAsPossible;
    let camera = Camera::start(settings)?;
    let mut frames = Vec::new();
    while frames.len() < max as usize {
        match camera.next_frame(Duration::from_secs(10)) {
            Some(frame) => frames.push(frame),
            None => break,
        }
    }
    camera.stop();
    Ok(frames)
}

/// The bundled photos and those of `--photos`, then the video's sampled frames: the frames
/// and the index of the first video frame.
fn load_frames(args: &BenchJointArgs, w: u32, h: u32) -> anyhow::Result<(Vec<Frame>, usize)> {
    let mut photo_paths = photos_in(&crate::config::resolve_path(Path::new("media")))?;
    for dir in &args.photos {
        photo_paths.extend(photos_in(dir)?);
    }
    let mut frames: Vec<Frame> = Vec::new();
    for path in &photo_paths {
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        frames.push(load_still(path, &name, w, h)?.0);
    }
    let video = args
        .video
        .clone()
        .unwrap_or_else(|| crate::config::resolve_path(Path::new("media/helmet-test.mp4")));
    let from_video = video_frames(&video, w, h, args.video_fps, args.max_video_frames)?;
    ensure!(
        !from_video.is_empty(),
        "{}: no frames decoded",
        video.display()
    );
    let video_start = frames.len();
    frames.extend(from_video);
    Ok((frames, video_start))
}

/// Prints progress and the curve, writes the plot, and returns the `RESULT` line.
/// Both models' boxes of every frame, with a progress line every 10 frames.
fn score_frames(
    frames: &[Frame],
    little: &mut Detector,
    big: &mut Detector,
    cfg: &Config,
) -> anyhow::Result<Vec<Scored>> {
    let mut scored = Vec::with_capacity(frames.len());
    for (i, frame) in frames.iter().enumerate() {
        scored.push(score_frame(
            frame,
            little,
            big,
            cfg.cloud.jpeg_quality,
            cfg.cloud.max_image_side,
        )?);
        if (i + 1) % 10 == 0 || i + 1 == frames.len() {
            eprintln!("  {} of {} frames through both models", i + 1, frames.len());
        }
    }
    Ok(scored)
}

/// What the configuration decides: the whole path as `helmetd run` takes it (the rule, ask
/// once per person, the camera's budget in its order).
fn evaluate_configured(
    cfg: &Config,
    rule: &HardExampleMining,
    scored: &[Scored],
    tracked: Tracked<'_>,
    scoring: &Scoring<'_>,
) -> Point {
    let asking = Asking {
        rule,
        ask_again: Duration::from_secs_f64(cfg.cloud.ask_again_after_s),
        carry: Carry::Votes,
        budget: (cfg.cloud.budget_per_s > 0.0).then_some(CameraBudget {
            per_s: cfg.cloud.budget_per_s,
            hardest: cfg.cloud.budget_order == BudgetOrder::Hardest,
        }),
    };
    let configured = evaluate_tracked(asking, scored, tracked, scoring);
    eprintln!(
        "as configured ({}): {:.1} % uploaded, box F1 {:.3}, alert F1 {:.3}",
        configured.rule,
        configured.upload * 100.0,
        configured.box_f1,
        configured.alert_f1
    );
    configured
}

pub fn run(cfg: &Config, args: &BenchJointArgs) -> anyhow::Result<String> {
    let little_spec = edge_model_spec(cfg, None, None);
    let mut little = Detector::load(&little_spec)?;
    let mut big = Detector::load(&cloud_model_spec(cfg))?;
    let (w, h) = little.input_size();
    let alert_settings =
        crate::alerts::AlertSettings::from_config(&cfg.alerts, &cfg.edge.model.classes)?;
    let min_score = alert_settings.min_score;

    let (frames, video_start) = load_frames(args, w, h)?;
    eprintln!(
        "bench joint: {} photos, {} video frames; little {}, big {}",
        video_start,
        frames.len() - video_start,
        little_spec.path.display(),
        cfg.cloud.model.display()
    );
    let video_frame_size = (
        frames[video_start].letterbox.orig_w,
        frames[video_start].letterbox.orig_h,
    );

    let scored = score_frames(&frames, &mut little, &mut big, cfg)?;

    let scoring = Scoring {
        alert_classes: &alert_settings.classes,
        min_score,
        num_classes: cfg.edge.model.classes.len(),
    };
    let mut points: Vec<Point> = rules()
        .iter()
        .map(|(rule, family)| evaluate(rule, family, &scored, &scoring))
        .collect();
    points.extend(
        RANKED_RATIOS
            .iter()
            .map(|&ratio| evaluate_ranked(ratio, &scored, &scoring)),
    );
    let daemon_rule = cfg.edge.hard_example_mining.build()?;
    for share in RANKED_RATIOS {
        for hardest in [false, true] {
            let budget = CameraBudget {
                per_s: share * CAMERA_FPS,
                hardest,
            };
            points.push(evaluate_budgeted(&daemon_rule, budget, &scored, &scoring));
        }
    }
    let tracked = Tracked {
        start: video_start,
        fps: args.video_fps,
        frame_size: video_frame_size,
        settings: &alert_settings,
    };
    let ask_again = Duration::from_secs_f64(cfg.cloud.ask_again_after_s);
    let configured = evaluate_configured(cfg, &daemon_rule, &scored, tracked, &scoring);
    points.extend(tracked_points(
        &daemon_rule,
        ask_again,
        &scored,
        tracked,
        &scoring,
    ));
    println!("{}", table(&points));
    if let Some(path) = &args.plot {
        std::fs::write(path, curve_svg(&points))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("plot: {}", path.display());
    }
    let mut best_crop: Option<CropResult> = None;
    for shape in CROP_SHAPES {
        let settings = CropSettings::from_config(cfg, min_score, shape);
        let crops = evaluate_crops(
            &frames,
            &scored,
            &daemon_rule,
            &mut big,
            &settings,
            &scoring,
        )?;
        println!("{}", crops.summary(&settings));
        if best_crop
            .as_ref()
            .is_none_or(|b| crops.f1_crops > b.f1_crops)
        {
            best_crop = Some(crops);
        }
    }
    let crop_fields = best_crop.map(|c| c.result_fields()).unwrap_or_default();
    Ok(format!(
        "{} f1_configured={:.3} upload_configured={:.3} {crop_fields}",
        result_line(&points, scored.len()),
        configured.box_f1,
        configured.upload
    ))
}

fn table(points: &[Point]) -> String {
    let mut sorted: Vec<&Point> = points.iter().collect();
    sorted.sort_by(|a, b| {
        a.upload
            .total_cmp(&b.upload)
            .then(b.box_f1.total_cmp(&a.box_f1))
    });
    let mut out = format!(
        "{:<52} {:>7} {:>7} {:>8}\n",
        "rule", "upload", "box F1", "alert F1"
    );
    for p in sorted {
        let _ = writeln!(
            out,
            "{:<52} {:>6.1}% {:>7.3} {:>8.3}",
            p.rule,
            p.upload * 100.0,
            p.box_f1,
            p.alert_f1
        );
    }
    out
}

fn result_line(points: &[Point], frames: usize) -> String {
    let edge_only = points
        .iter()
        .find(|p| p.family == "EdgeOnly")
        .map_or(0.0, |p| p.box_f1);
    // The best F1 within the budget; of equals the one uploading least, then the first.
    let within_budget = points.iter().filter(|p| p.upload <= BUDGET).min_by(|a, b| {
        b.box_f1
            .total_cmp(&a.box_f1)
            .then(a.upload.total_cmp(&b.upload))
    });
    let upload_at_target = points
        .iter()
        .filter(|p| p.box_f1 >= TARGET_F1)
        .map(|p| p.upload)
        .min_by(f64::total_cmp)
        .unwrap_or(1.0);
    format!(
        "RESULT f1_edge_only={edge_only:.3} f1_at_30pct={:.3} rule_at_30pct={} upload_at_f1_95={upload_at_target:.3} frames={frames}",
        within_budget.map_or(edge_only, |p| p.box_f1),
        within_budget.map_or_else(|| "EdgeOnly".to_string(), |p| p.rule.replace(' ', "")),
    )
}

/// Upload ratio (x) against box F1 (y), one colour per rule family.
fn curve_svg(points: &[Point]) -> String {
    const W: f64 = 640.0;
    const H: f64 = 420.0;
    const LEFT: f64 = 60.0;
    const BOTTOM: f64 = 50.0;
    const TOP: f64 = 20.0;
    const RIGHT: f64 = 150.0;
    let x = |upload: f64| LEFT + upload * (W - LEFT - RIGHT);
    // F1 from 0.5 to 1.0: below that the curve says nothing new.
    let y = |f1: f64| TOP + (1.0 - f1.clamp(0.5, 1.0)) / 0.5 * (H - TOP - BOTTOM);
    let families = [
        ("IBT", "#1f77b4"),
        ("Threshold", "#ff7f0e"),
        ("CrossEntropy", "#2ca02c"),
        ("Random", "#7f7f7f"),
        ("Ranked", "#e377c2"),
        ("Budget, first come", "#bcbd22"),
        ("Budget, hardest first", "#17becf"),
        ("Tracked, votes", "#8c564b"),
        ("Tracked, cloud answer carried", "#000000"),
        ("Tracked + budget, first come", "#aec7e8"),
        ("Tracked + budget, hardest first", "#98df8a"),
        ("EdgeOnly", "#d62728"),
        ("CloudOnly", "#9467bd"),
    ];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>",
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.0}%</text>",
            x(tick),
            H - BOTTOM + 16.0,
            tick * 100.0
        );
    }
    for tick in [0.5, 0.6, 0.7, 0.8, 0.9, 1.0] {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{tick:.1}</text>",
            LEFT - 6.0,
            y(tick) + 4.0
        );
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{:.1}\" y1=\"{TOP}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#aaa\" stroke-dasharray=\"4 3\"/>",
        x(BUDGET),
        x(BUDGET),
        H - BOTTOM
    );
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">frames uploaded to the big model</text>",
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        svg,
        "<text x=\"16\" y=\"{:.1}\" transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\">box F1 vs the big model</text>",
        TOP + (H - TOP - BOTTOM) / 2.0,
        TOP + (H - TOP - BOTTOM) / 2.0
    );
    for (i, (family, colour)) in families.iter().enumerate() {
        for p in points.iter().filter(|p| p.family == *family) {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{colour}\"><title>{} {:.1}% F1 {:.3}</title></circle>",
                x(p.upload),
                y(p.box_f1),
                p.rule,
                p.upload * 100.0,
                p.box_f1
            );
        }
        let ly = TOP + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{ly:.1}\" r=\"4\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\">{family}</text>",
            W - RIGHT + 16.0,
            W - RIGHT + 26.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A box whose score is this close to `alerts.min_score` is one the big model should settle:
/// the band `hem::margin_hardness` weighs most.
const CROP_UNCERTAIN: f32 = 0.15;
/// The crop shapes tried: context around an uncertain box in box sizes on each side (the big
/// model sees the person's shoulders and neighbours, not a head cut out of its scene), and the
/// smallest crop side in letterbox-content pixels (smaller crops are blown up by the big
/// model's letterbox far beyond anything it was trained on).
const CROP_SHAPES: [(f64, f64); 3] = [(1.0, 128.0), (2.0, 256.0), (3.0, 360.0)];

/// How "crop, don't ship" is played.
struct CropSettings {
    min_score: f32,
    jpeg_quality: u8,
    max_side: u32,
    context: f64,
    min_side: f64,
}

impl CropSettings {
    fn from_config(cfg: &Config, min_score: f32, (context, min_side): (f64, f64)) -> Self {
        Self {
            min_score,
            jpeg_quality: cfg.cloud.jpeg_quality,
            max_side: cfg.cloud.max_image_side,
            context,
            min_side,
        }
    }
}

/// A rectangle of the letterbox content, in its pixels: `[x, y, w, h]`.
type Region = [u32; 4];

/// The regions of a frame worth the big model's look: each uncertain box of the little model
/// with `context` box sizes around it, at least `min_side` a side, merged where they touch.
fn crop_regions(little: &[Detection], frame: &Frame, settings: &CropSettings) -> Vec<Region> {
    let (min_score, context, min_side) = (settings.min_score, settings.context, settings.min_side);
    let lb = &frame.letterbox;
    let (cw, ch) = (f64::from(lb.content_w), f64::from(lb.content_h));
    let mut regions: Vec<[f64; 4]> = little
        .iter()
        .filter(|d| (d.score - min_score).abs() <= CROP_UNCERTAIN)
        .map(|d| {
            let [x1, y1, x2, y2] = [d.x1, d.y1, d.x2, d.y2].map(|v| f64::from(v) * lb.scale);
            let (w, h) = (x2 - x1, y2 - y1);
            let half_w = (w * (0.5 + context)).max(min_side / 2.0);
            let half_h = (h * (0.5 + context)).max(min_side / 2.0);
            let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
            [
                (cx - half_w).max(0.0),
                (cy - half_h).max(0.0),
                (cx + half_w).min(cw),
                (cy + half_h).min(ch),
            ]
        })
        .filter(|r| r[2] > r[0] && r[3] > r[1])
        .collect();
    // Union of overlapping regions until none overlap; each pass removes one, so at most n.
    'merge: for _ in 0..regions.len() {
        for a in 0..regions.len() {
            for b in a + 1..regions.len() {
                let (p, q) = (regions[a], regions[b]);
                if p[0] < q[2] && q[0] < p[2] && p[1] < q[3] && q[1] < p[3] {
                    regions[a] = [
                        p[0].min(q[0]),
                        p[1].min(q[1]),
                        p[2].max(q[2]),
                        p[3].max(q[3]),
                    ];
                    regions.swap_remove(b);
                    continue 'merge;
                }
            }
        }
        break;
    }
    regions
        .iter()
        .map(|r| {
            let [x1, y1, x2, y2] = r.map(|v| v.round() as u32);
            [x1, y1, (x2 - x1).max(1), (y2 - y1).max(1)]
        })
        .collect()
}

/// Whether a box (frame pixels) has its centre in a region (content pixels).
fn centred_in(d: &Detection, region: &Region, scale: f64) -> bool {
    let cx = f64::from(d.x1 + d.x2) / 2.0 * scale;
    let cy = f64::from(d.y1 + d.y2) / 2.0 * scale;
    let [x, y, w, h] = region.map(f64::from);
    cx >= x && cx < x + w && cy >= y && cy < y + h
}

/// The joint result of a frame whose regions went to the big model instead of the whole frame:
/// the little model's boxes outside the regions and the big model's inside them; and the bytes
/// sent.
fn crop_answer(
    frame: &Frame,
    little: &[Detection],
    regions: &[Region],
    big: &mut Detector,
    settings: &CropSettings,
) -> anyhow::Result<(Vec<Detection>, usize)> {
    let scale = frame.letterbox.scale;
    let content = content_image(frame);
    let (bw, bh) = big.input_size();
    let mut joint: Vec<Detection> = little
        .iter()
        .filter(|d| !regions.iter().any(|r| centred_in(d, r, scale)))
        .copied()
        .collect();
    let mut bytes = 0;
    for region in regions {
        let [x, y, w, h] = *region;
        let crop = image::imageops::crop_imm(&content, x, y, w, h).to_image();
        let jpeg = encode_jpeg(&crop, settings.jpeg_quality)?;
        bytes += jpeg.len();
        let cloud_frame =
            letterbox_jpeg(&jpeg, bw, bh, settings.max_side).map_err(anyhow::Error::msg)?;
        for d in big.detect(&cloud_frame)? {
            let to_frame =
                |v: f32, offset: u32| ((f64::from(v) + f64::from(offset)) / scale) as f32;
            let mapped = Detection {
                x1: to_frame(d.x1, x),
                y1: to_frame(d.y1, y),
                x2: to_frame(d.x2, x),
                y2: to_frame(d.y2, y),
                ..d
            };
            if centred_in(&mapped, region, scale) {
                joint.push(mapped);
            }
        }
    }
    Ok((joint, bytes))
}

/// "Crop, don't ship" against shipping the whole frame, for the daemon's rule's hard frames.
struct CropResult {
    hard: usize,
    /// Hard frames without an uncertain box: nothing to send, the edge decides.
    nothing_to_crop: usize,
    regions: usize,
    bytes_full: usize,
    bytes_crops: usize,
    /// Box F1 against the big model on the whole frame, over all frames.
    f1_full: f64,
    f1_crops: f64,
    f1_edge: f64,
}

impl CropResult {
    fn bytes_ratio(&self) -> f64 {
        self.bytes_crops as f64 / self.bytes_full.max(1) as f64
    }

    fn summary(&self, settings: &CropSettings) -> String {
        format!(
            "crop, don't ship (context {} box sizes, at least {} px; {} hard frames by the daemon's rule; {} without an uncertain box send nothing; {} regions): \
             {} bytes instead of {} ({:.1} %); box F1 {:.3} with crops, {:.3} with whole frames, {:.3} edge only",
            settings.context,
            settings.min_side,
            self.hard,
            self.nothing_to_crop,
            self.regions,
            self.bytes_crops,
            self.bytes_full,
            self.bytes_ratio() * 100.0,
            self.f1_crops,
            self.f1_full,
            self.f1_edge,
        )
    }

    /// The best crop shape's figures.
    fn result_fields(&self) -> String {
        format!(
            "crop_bytes_ratio={:.3} f1_crops={:.3} f1_whole_frames={:.3}",
            self.bytes_ratio(),
            self.f1_crops,
            self.f1_full
        )
    }
}

fn evaluate_crops(
    frames: &[Frame],
    scored: &[Scored],
    rule: &HardExampleMining,
    big: &mut Detector,
    settings: &CropSettings,
    scoring: &Scoring<'_>,
) -> anyhow::Result<CropResult> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut result = CropResult {
        hard: 0,
        nothing_to_crop: 0,
        regions: 0,
        bytes_full: 0,
        bytes_crops: 0,
        f1_full: 0.0,
        f1_crops: 0.0,
        f1_edge: 0.0,
    };
    let (mut full, mut crops, mut edge) = (Counts::default(), Counts::default(), Counts::default());
    for (frame, s) in frames.iter().zip(scored) {
        let truth: Vec<Detection> = s
            .big
            .iter()
            .filter(|d| d.score >= settings.min_score)
            .copied()
            .collect();
        edge.add(match_boxes(&s.little, &truth, settings.min_score));
        if !rule.is_hard(&s.little, scoring.num_classes, &mut rng) {
            full.add(match_boxes(&s.little, &truth, settings.min_score));
            crops.add(match_boxes(&s.little, &truth, settings.min_score));
            continue;
        }
        result.hard += 1;
        result.bytes_full += encode_jpeg(&content_image(frame), settings.jpeg_quality)?.len();
        full.add(match_boxes(&s.big, &truth, settings.min_score));
        let regions = crop_regions(&s.little, frame, settings);
        result.regions += regions.len();
        if regions.is_empty() {
            result.nothing_to_crop += 1;
            crops.add(match_boxes(&s.little, &truth, settings.min_score));
            continue;
        }
        let (joint, bytes) = crop_answer(frame, &s.little, &regions, big, settings)?;
        result.bytes_crops += bytes;
        crops.add(match_boxes(&joint, &truth, settings.min_score));
    }
    result.f1_full = full.f1();
    result.f1_crops = crops.f1();
    result.f1_edge = edge.f1();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x1: f32, score: f32, class: u16) -> Detection {
        Detection {
            x1,
            y1: 0.0,
            x2: x1 + 10.0,
            y2: 10.0,
            score,
            class,
        }
    }

    #[test]
    fn boxes_match_once_by_class_and_overlap() {
        let truth = [det(0.0, 0.9, 1), det(100.0, 0.8, 0)];
        // One hit, one box of the wrong class on a truth box, one low box ignored, one miss.
        let found = [det(1.0, 0.7, 1), det(100.0, 0.6, 1), det(200.0, 0.2, 0)];
        let counts = match_boxes(&found, &truth, 0.5);
        assert_eq!(
            counts,
            Counts {
                tp: 1,
                fp: 1,
                missed: 1
            }
        );
        assert!((counts.f1() - 0.5).abs() < 1e-9);
        // Two boxes on one truth box: the better one counts, the other is a false positive.
        let twice = match_boxes(&[det(0.0, 0.9, 1), det(0.5, 0.8, 1)], &truth[..1], 0.5);
        assert_eq!((twice.tp, twice.fp, twice.missed), (1, 1, 0));
        assert_eq!(Counts::default().f1(), 1.0);
    }

    #[test]
    fn the_ends_of_the_curve_are_the_edge_and_the_big_model() {
        // The little model misses a person without a helmet on the second frame.
        let frames = vec![
            Scored {
                little: vec![det(0.0, 0.8, 0)],
                big: vec![det(0.0, 0.9, 0)],
            },
            Scored {
                little: vec![det(0.0, 0.3, 1)],
                big: vec![det(0.0, 0.9, 1)],
            },
        ];
        let scoring = Scoring {
            alert_classes: &[1],
            min_score: 0.5,
            num_classes: 2,
        };
        let edge = evaluate(&HardExampleMining::EdgeOnly, "EdgeOnly", &frames, &scoring);
        assert_eq!(edge.upload, 0.0);
        assert!((edge.box_f1 - 2.0 / 3.0).abs() < 1e-9, "{edge:?}");
        assert_eq!(edge.alert_f1, 0.0);
        let cloud = evaluate(
            &HardExampleMining::CloudOnly,
            "CloudOnly",
            &frames,
            &scoring,
        );
        assert_eq!(
            (cloud.upload, cloud.box_f1, cloud.alert_f1),
            (1.0, 1.0, 1.0)
        );
        // IBT sends only the unsure frame and reaches the big model's result with half the frames.
        let ibt = HardExampleMining::Ibt {
            threshold_img: 0.5,
            threshold_box: 0.5,
        };
        let joint = evaluate(&ibt, "IBT", &frames, &scoring);
        assert_eq!(
            (joint.upload, joint.box_f1, joint.alert_f1),
            (0.5, 1.0, 1.0)
        );
        // Ranking by the margin to min_score picks the same frame at half the uploads.
        let ranked = evaluate_ranked(0.5, &frames, &scoring);
        assert_eq!(
            (ranked.upload, ranked.box_f1, ranked.alert_f1),
            (0.5, 1.0, 1.0)
        );
        let line = result_line(&[edge, cloud, joint], 2);
        assert!(
            line.starts_with("RESULT f1_edge_only=0.667 f1_at_30pct=0.667 rule_at_30pct=EdgeOnly upload_at_f1_95=0.500 frames=2"),
            "{line}"
        );
    }

    /// One photo, then three video frames of one person without a helmet whom the little
    /// model sees just under `min_score` and the big model surely.
    fn person_frames() -> Vec<Scored> {
        let unsure = Scored {
            little: vec![det(100.0, 0.45, 1)],
            big: vec![det(100.0, 0.9, 1)],
        };
        (0..4)
            .map(|_| Scored {
                little: unsure.little.clone(),
                big: unsure.big.clone(),
            })
            .collect()
    }

    #[test]
    fn a_person_answered_about_once_is_decided_on_the_frames_not_asked() {
        let config = Config::embedded_default().unwrap();
        let settings =
            AlertSettings::from_config(&config.alerts, &config.edge.model.classes).unwrap();
        let scoring = Scoring {
            alert_classes: &settings.classes,
            min_score: 0.5,
            num_classes: 2,
        };
        let video = Tracked {
            start: 1,
            fps: 2.0,
            frame_size: (1280, 720),
            settings: &settings,
        };
        let frames = person_frames();
        let rule = HardExampleMining::Ibt {
            threshold_img: 0.9,
            threshold_box: 0.9,
        };
        let asking = Asking {
            rule: &rule,
            ask_again: Duration::from_secs(10),
            carry: Carry::Votes,
            budget: None,
        };
        // The photo and the video's first frame are asked about; the answer carries the
        // person through the next two frames, their 0.45 boxes counting as the answer.
        let once = evaluate_tracked(asking, &frames, video, &scoring);
        assert_eq!((once.upload, once.box_f1, once.alert_f1), (0.5, 1.0, 1.0));
        let edge = Asking {
            rule: &HardExampleMining::EdgeOnly,
            ..asking
        };
        let alone = evaluate_tracked(edge, &frames, video, &scoring);
        assert_eq!((alone.upload, alone.box_f1), (0.0, 0.0));
        // A budget of one question in 10 s: after the warm-up passes spent it, nothing is asked.
        let starved = Asking {
            budget: Some(CameraBudget {
                per_s: 0.1,
                hardest: false,
            }),
            ..asking
        };
        let budgeted = evaluate_tracked(starved, &frames, video, &scoring);
        assert_eq!(
            (budgeted.upload, budgeted.box_f1),
            (0.0, 0.0),
            "{budgeted:?}"
        );
        assert_eq!(budgeted.family, "Tracked + budget, first come");
    }

    /// A 1280×720 camera frame letterboxed into 640×384: content 640×360, scale 0.5.
    fn camera_frame() -> Frame {
        let letterbox = helmet_pipelines::letterbox::Letterbox::new(1280, 720, 640, 384);
        Frame {
            camera: "c".into(),
            seq: 0,
            pts: None,
            capture_time: std::time::UNIX_EPOCH,
            letterbox,
            pixels: vec![0; 640 * 384 * 3],
        }
    }

    fn head(x1: f32, y1: f32, side: f32, score: f32) -> Detection {
        Detection {
            x1,
            y1,
            x2: x1 + side,
            y2: y1 + side,
            score,
            class: 1,
        }
    }

    #[test]
    fn crops_hold_the_uncertain_boxes_with_context_merged_and_clamped() {
        let frame = camera_frame();
        let settings = CropSettings {
            min_score: 0.5,
            jpeg_quality: 90,
            max_side: 2048,
            context: 1.0,
            min_side: 128.0,
        };
        // Confident boxes need no second look.
        assert!(crop_regions(&[head(100.0, 100.0, 40.0, 0.9)], &frame, &settings).is_empty());
        // 80 px in the frame is 40 in the content: 3 box sizes is 120, less than the minimum.
        let one = crop_regions(&[head(400.0, 400.0, 80.0, 0.55)], &frame, &settings);
        assert_eq!(one, [[156, 156, 128, 128]]);
        // Two uncertain heads side by side: one region; a corner one is clamped to the content.
        let regions = crop_regions(
            &[
                head(400.0, 400.0, 80.0, 0.45),
                head(480.0, 400.0, 80.0, 0.6),
                head(1180.0, 620.0, 100.0, 0.5),
            ],
            &frame,
            &settings,
        );
        assert_eq!(regions.len(), 2, "{regions:?}");
        assert!(regions.contains(&[540, 260, 100, 100]), "{regions:?}");
        assert!(regions.contains(&[156, 156, 168, 128]), "{regions:?}");
        let inside = head(410.0, 410.0, 60.0, 0.9);
        assert!(centred_in(&inside, &[156, 156, 128, 128], 0.5));
        assert!(!centred_in(
            &head(900.0, 410.0, 60.0, 0.9),
            &[156, 156, 128, 128],
            0.5
        ));
    }
}
