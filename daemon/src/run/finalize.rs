//! What happens to a frame after the model: hard-example decision, the cloud's answer when it
//! comes in time, Sedna's output folders, and violation episodes.
//!
//! One task per camera takes that camera's results in order. Up to [`IN_FLIGHT`] of them may wait
//! for the cloud at once, but they are concluded (outputs, episodes) in capture order, so
//! episodes see frames in order even when a hard frame waits; the daemon loop hands results over
//! with `try_send` into a bounded queue and never waits for this stage.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use futures_util::future::{self, Either};
use futures_util::stream::FuturesOrdered;
use helmet_pipelines::hem::{HardExampleMining, margin_hardness};
use helmet_pipelines::output::{Outcome, content_image, encode_jpeg};
use helmet_pipelines::output_dir::CappedOutputs;
use helmet_pipelines::{Detection, Detections, Frame, MAX_DETECTIONS};
use rand::SeedableRng;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::hardest::HardestFirst;
use crate::alerts::{
    AlertEvent, AlertSettings, DecisionSource, EpisodeTracker, FrameInput, NoQuestion,
};
use crate::config::SpoolKind;
use crate::joint::budget::Budget;
use crate::joint::{AskError, CloudAnswer, HardExampleMeta, JointClient};
use crate::page::{Scene, TrackLabel, scene};
use crate::telemetry::Counters;
use crate::uplink::{MessageProperties, UplinkHandle};
use crate::zones::CameraRules;

/// A model result on its way to the final decision.
pub struct Inferred {
    pub frame: Frame,
    pub detections: Detections,
    pub infer: Duration,
    /// From dispatch to result.
    pub latency: Duration,
}

/// What reaches a camera's finalize task, in capture order.
pub enum CameraFrame {
    /// The model's result for a frame (boxed: its fixed-size detections are kilobytes, a
    /// still frame is not).
    Analysed(Box<Inferred>),
    /// A frame the motion gate kept from the model: nothing moved, so the camera's last final
    /// result stands for it, and tracks and episodes carry on through still stretches.
    Still(Frame),
}

impl CameraFrame {
    fn camera(&self) -> &str {
        match self {
            CameraFrame::Analysed(r) => &r.frame.camera,
            CameraFrame::Still(frame) => &frame.camera,
        }
    }
}

/// Called with every alert event, e.g. to print it (the demo).
pub type AlertWatcher = Arc<dyn Fn(&AlertEvent) + Send + Sync>;

/// What every camera task shares.
pub struct FinalizeShared {
    pub hem: HardExampleMining,
    pub num_classes: usize,
    pub class_names: Arc<[String]>,
    pub alert_settings: AlertSettings,
    pub outputs: Option<CappedOutputs>,
    /// Where hard examples go, `[cloud] protocol`'s way; answers in camera-frame pixels.
    pub cloud: Option<Arc<JointClient>>,
    /// `cloud.budget_per_s`: hard examples a camera may send per second; 0 for no limit.
    pub budget_per_s: f64,
    /// `cloud.ask_again_after_s`: a person the cloud answered about is not asked about again
    /// for this long while the edge model sees them the same; zero asks every hard frame.
    pub ask_again_after: Duration,
    /// `cloud.budget_order = "hardest"`: the budget goes to the hardest recent hard frames.
    pub budget_hardest_first: bool,
    /// Alerts and snapshots go out here, through the spool for the kinds `mqtt.spool_kinds` lists.
    pub uplink: Option<UplinkHandle>,
    pub watcher: Option<AlertWatcher>,
    pub snapshot_jpeg_quality: u8,
    pub counters: Arc<Counters>,
    /// Cloud round trips for `/metrics`, the latest frames and the alerts for the page; `None`
    /// without `[http] listen`.
    pub telemetry: Option<Arc<crate::http::Telemetry>>,
}

/// Bounded: a camera whose results pile up (cloud slow, disk slow) loses the newest results
/// rather than memory; each loss is counted.
const QUEUE: usize = 16;

/// The per-camera finalize tasks: started with their camera, joined at shutdown.
pub struct Finalize {
    runtime: tokio::runtime::Handle,
    shared: Arc<FinalizeShared>,
    tasks: TaskTracker,
    stopping: CancellationToken,
}

impl Finalize {
    pub fn new(runtime: &tokio::runtime::Handle, shared: Arc<FinalizeShared>) -> Self {
        Self {
            runtime: runtime.clone(),
            shared,
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
        }
    }

    /// Starts the task of one camera; it ends once its queue is closed and its work is done.
    /// `rules` are the camera's zones, masks and schedule; a new value (a reload) applies from
    /// the next frame, without disturbing tracks or open episodes.
    pub fn spawn_camera(
        &self,
        camera: &str,
        rules: watch::Receiver<Arc<CameraRules>>,
    ) -> mpsc::Sender<CameraFrame> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let tracker = EpisodeTracker::new(
            camera,
            self.shared.alert_settings.clone(),
            rules.borrow().clone(),
        );
        let task = camera_task(
            rx,
            tracker,
            rules,
            self.shared.clone(),
            self.stopping.clone(),
        );
        self.tasks.spawn_on(task, &self.runtime);
        tx
    }

    /// For shutdown, once every queue is closed: each task concludes what it holds (a cloud
    /// question waits at most its own timeout), ends its open episode and stops. Returns how
    /// many tasks were still running at `timeout`.
    pub async fn finish(&self, timeout: Duration) -> usize {
        self.stopping.cancel();
        self.tasks.close();
        if tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_err()
        {
            return self.tasks.len();
        }
        0
    }
}

/// Hands a frame to its camera's task without waiting.
pub fn hand_over(
    queues: &HashMap<String, mpsc::Sender<CameraFrame>>,
    frame: CameraFrame,
    counters: &Counters,
) {
    let delivered = queues
        .get(frame.camera())
        .is_some_and(|tx| tx.try_send(frame).is_ok());
    if !delivered {
        Counters::add(&counters.finalize_dropped);
    }
}

/// Hard frames of one camera that may wait for the cloud at once. The answers arrive in about a
/// round trip each; waiting for them one by one would cap a camera at one hard frame per round
/// trip and let its queue grow.
const IN_FLIGHT: usize = 8;

async fn camera_task(
    mut rx: mpsc::Receiver<CameraFrame>,
    mut tracker: EpisodeTracker,
    mut rules: watch::Receiver<Arc<CameraRules>>,
    shared: Arc<FinalizeShared>,
    stopping: CancellationToken,
) {
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut budget = Budget::per_second(shared.budget_per_s);
    let mut hardest = HardestFirst::new(shared.budget_per_s);
    let mut last = LastResult::default();
    // Frames whose final result is being decided (the cloud asked), concluded in capture order.
    let mut deciding = FuturesOrdered::new();
    let mut receiving = true;
    // Ends episodes of a camera that stopped sending frames altogether.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // A removed camera's task outlives its queue until its open episode has ended, so the
    // episode gets its `end` instead of staying open for whoever watches the topic.
    while receiving || !deciding.is_empty() || !tracker.is_idle() {
        if !receiving && deciding.is_empty() && stopping.is_cancelled() {
            // The daemon stops: episodes end now, with the last frame that showed them.
            for event in tracker.close() {
                emit(&shared, &event, None).await;
            }
            break;
        }
        tokio::select! {
            frame = rx.recv(), if receiving && deciding.len() < IN_FLIGHT => match frame {
                Some(CameraFrame::Analysed(result)) => {
                    let result = *result;
                    let hard = shared.hem.is_hard(&result.detections, shared.num_classes, &mut rng);
                    let ask = hard && shared.cloud.is_some()
                        && worth_asking(&shared, &tracker, &result)
                        && within_budget(&shared, &mut hardest, &mut budget, &result);
                    if let Some(cloud) = shared.cloud.as_ref().filter(|_| hard && !shared.ask_again_after.is_zero()) {
                        let (time, boxes) = (result.frame.capture_time, &result.detections);
                        match ask {
                            true => tracker.note_question(time, boxes, cloud.timeout()),
                            false => tracker.follow_questions(time, boxes),
                        }
                    }
                    deciding.push_back(Either::Left(decide(shared.clone(), result, hard, ask)));
                }
                // In the queue behind the frames still being decided: its result is the last
                // of those, known when it is concluded.
                Some(CameraFrame::Still(frame)) => {
                    deciding.push_back(Either::Right(future::ready(Decided::still(frame))));
                }
                None => receiving = false,
            },
            Some(decided) = deciding.next(), if !deciding.is_empty() => {
                refresh_rules(&mut rules, &mut tracker);
                conclude(&shared, &mut tracker, &mut last, decided).await;
            }
            // Not while frames are being decided: one of them may still show the violation.
            _ = tick.tick(), if deciding.is_empty() => {
                refresh_rules(&mut rules, &mut tracker);
                for event in tracker.tick(SystemTime::now()) {
                    emit(&shared, &event, None).await;
                }
            }
            _ = stopping.cancelled(), if !receiving && deciding.is_empty() => {}
        }
    }
}

/// Ask once per person, and not off schedule; each question not asked is counted by reason.
fn worth_asking(shared: &FinalizeShared, tracker: &EpisodeTracker, result: &Inferred) -> bool {
    let frame = &result.frame;
    let size = (frame.letterbox.orig_w, frame.letterbox.orig_h);
    let counter = match tracker.no_question(
        frame.capture_time,
        &result.detections,
        size,
        shared.ask_again_after,
    ) {
        None => return true,
        Some(NoQuestion::AlreadyAnswered) => &shared.counters.cloud_already_answered,
        Some(NoQuestion::OffSchedule) => &shared.counters.cloud_off_schedule,
    };
    Counters::add(counter);
    false
}

/// A token of the camera's budget; with `budget_order = "hardest"` only for a frame among the
/// hardest the budget can pay for.
fn within_budget(
    shared: &FinalizeShared,
    hardest: &mut HardestFirst,
    budget: &mut Budget,
    result: &Inferred,
) -> bool {
    let ranked = !shared.budget_hardest_first || {
        let hardness = margin_hardness(&result.detections, shared.alert_settings.min_score);
        hardest.admits(result.frame.capture_time, hardness)
    };
    let within = ranked && budget.take(Instant::now());
    if !within {
        Counters::add(&shared.counters.cloud_over_budget);
    }
    within
}

/// A reload's new zones, masks or schedule, from the next frame or tick on.
fn refresh_rules(rules: &mut watch::Receiver<Arc<CameraRules>>, tracker: &mut EpisodeTracker) {
    if rules.has_changed().unwrap_or(false) {
        tracker.set_rules(rules.borrow_and_update().clone());
    }
}

/// A frame with its final result: the cloud's when it answered in time, else the edge's, and
/// for a still frame the camera's last one.
struct Decided {
    result: Inferred,
    hard: bool,
    cloud_result: Option<Vec<Detection>>,
    /// Kept from the model by the motion gate.
    still: bool,
}

impl Decided {
    fn still(frame: Frame) -> Self {
        Self {
            result: Inferred {
                frame,
                detections: Detections::new(),
                infer: Duration::ZERO,
                latency: Duration::ZERO,
            },
            hard: false,
            cloud_result: None,
            still: true,
        }
    }
}

/// The camera's last final result, which its still frames reuse.
struct LastResult {
    boxes: Detections,
    source: DecisionSource,
}

impl Default for LastResult {
    fn default() -> Self {
        Self {
            boxes: Detections::new(),
            source: DecisionSource::Edge,
        }
    }
}

/// `ask`: the frame is hard and within the camera's budget.
async fn decide(shared: Arc<FinalizeShared>, result: Inferred, hard: bool, ask: bool) -> Decided {
    let counters = &shared.counters;
    Counters::add(&counters.frames);
    if hard {
        Counters::add(&counters.hard);
    }
    let mut cloud_result = None;
    if ask && let Some(cloud) = &shared.cloud {
        cloud_result = ask_cloud(&shared, cloud, &result).await;
    }
    Decided {
        result,
        hard,
        cloud_result,
        still: false,
    }
}

/// Outputs and violation episodes, in capture order.
async fn conclude(
    shared: &FinalizeShared,
    tracker: &mut EpisodeTracker,
    last: &mut LastResult,
    decided: Decided,
) {
    let Decided {
        result: r,
        hard,
        cloud_result,
        still,
    } = decided;
    let counters = &shared.counters;
    let (final_result, source): (&[Detection], _) = match (&cloud_result, still) {
        (_, true) => (&last.boxes, last.source),
        (Some(boxes), false) => (boxes, DecisionSource::Cloud),
        (None, false) => (&r.detections, DecisionSource::Edge),
    };
    // A still frame was not analysed: Sedna's folders hold what the models said.
    if let Some(outputs) = shared.outputs.as_ref().filter(|_| !still) {
        let outcome = Outcome {
            is_hard: hard,
            final_result,
            edge_result: &r.detections,
            cloud_result: cloud_result.as_deref(),
        };
        if let Err(e) = outputs.write(&r.frame, &outcome) {
            if Counters::get(&counters.output_errors) == 0 {
                tracing::warn!(error = %e, "cannot write output images; counting further failures silently");
            }
            Counters::add(&counters.output_errors);
        }
    }
    let frame = FrameInput {
        time: r.frame.capture_time,
        seq: r.frame.seq,
        width: r.frame.letterbox.orig_w,
        height: r.frame.letterbox.orig_h,
        detections: final_result,
        source,
    };
    let events = tracker.observe(&frame);
    if cloud_result.is_some() {
        tracker.remember_cloud_answer(r.frame.capture_time, &r.detections);
    }
    for event in events {
        let snapshot = event
            .snapshot
            .then(|| snapshot_jpeg(shared, &r.frame, final_result, &event, tracker.rules()))
            .flatten();
        emit(shared, &event, snapshot).await;
    }
    let boxes: Detections = final_result.iter().copied().take(MAX_DETECTIONS).collect();
    if let Some(telemetry) = &shared.telemetry {
        let scene = Scene {
            labels: tracker
                .tracks()
                .iter()
                .filter(|t| t.matched)
                .map(TrackLabel::of)
                .collect(),
            boxes: boxes.clone(),
            frame: r.frame,
            rules: tracker.rules().clone(),
            class_names: shared.class_names.clone(),
        };
        let camera = scene.frame.camera.clone();
        telemetry.page.show(&camera, scene);
    }
    *last = LastResult { boxes, source };
}

/// Asks about the frame's letterbox content; each protocol encodes it its own way.
async fn ask_cloud(
    shared: &FinalizeShared,
    cloud: &JointClient,
    r: &Inferred,
) -> Option<Vec<Detection>> {
    let counters = &shared.counters;
    let image = content_image(&r.frame);
    let meta = HardExampleMeta::for_frame(&r.frame, &r.detections);
    match cloud.ask(&image, &meta).await {
        CloudAnswer::Answered(boxes, rtt) => {
            Counters::add(&counters.cloud_answered);
            if let Some(t) = &shared.telemetry {
                t.metrics.observe_cloud_rtt(rtt);
            }
            Some(boxes)
        }
        CloudAnswer::Late => {
            Counters::add(&counters.cloud_late);
            None
        }
        CloudAnswer::Failed(e) => {
            if let AskError::Encode(e) = e {
                tracing::warn!(error = %e, "cannot encode a hard example");
            }
            Counters::add(&counters.cloud_failed);
            None
        }
        CloudAnswer::BreakerOpen => {
            Counters::add(&counters.cloud_skipped);
            None
        }
        CloudAnswer::Paced => {
            Counters::add(&counters.cloud_paced);
            None
        }
    }
}

/// The frame with its boxes, the person's box labelled with the track id, and the camera's
/// zones and masks, so whoever reads the alert sees whom it is about and where.
fn snapshot_jpeg(
    shared: &FinalizeShared,
    frame: &Frame,
    boxes: &[Detection],
    event: &AlertEvent,
    rules: &CameraRules,
) -> Option<Vec<u8>> {
    let person = TrackLabel {
        track_id: event.track_id,
        bbox: event.bbox,
    };
    let image = scene::draw(frame, boxes, &[person], rules, &shared.class_names);
    encode_jpeg(&image, shared.snapshot_jpeg_quality).ok()
}

async fn emit(shared: &FinalizeShared, event: &AlertEvent, snapshot: Option<Vec<u8>>) {
    Counters::add(&shared.counters.alerts);
    let json = match serde_json::to_vec(event) {
        Ok(json) => json,
        Err(e) => {
            tracing::warn!(error = %e, "cannot serialise an alert event");
            return;
        }
    };
    tracing::info!(target: "helmetd::alert", "{}", String::from_utf8_lossy(&json));
    if let Some(telemetry) = &shared.telemetry {
        telemetry.page.record_alert(event, snapshot.as_deref());
    }
    if let Some(watch) = &shared.watcher {
        watch(event);
    }
    let Some(uplink) = &shared.uplink else { return };
    let topics = uplink.topics();
    let json_props = MessageProperties {
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    if let Err(e) = uplink
        .publish(
            SpoolKind::Alerts,
            topics.alert_topic(&event.camera),
            json,
            json_props,
            false,
        )
        .await
    {
        tracing::warn!(error = %e, "alert not published");
    }
    if let Some(jpeg) = snapshot {
        let props = MessageProperties {
            content_type: Some("image/jpeg".into()),
            ..Default::default()
        };
        // Retained: a dashboard that connects later still sees the latest violation.
        if let Err(e) = uplink
            .publish(
                SpoolKind::Snapshots,
                topics.snapshot_topic(&event.camera),
                jpeg,
                props,
                true,
            )
            .await
        {
            tracing::warn!(error = %e, "snapshot not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use helmet_pipelines::hem::HemConfig;
    use helmet_pipelines::letterbox::Letterbox;

    use super::*;
    use crate::alerts::EventKind;

    type Seen = Arc<Mutex<Vec<EventKind>>>;

    /// Edge-only, no outputs, no uplink; episodes open on one violating frame and end 800 ms
    /// after the last; every event's kind goes into the returned list.
    fn shared() -> (Arc<FinalizeShared>, Seen) {
        let events: Seen = Arc::default();
        let seen = events.clone();
        let shared = Arc::new(FinalizeShared {
            hem: HemConfig {
                name: "EdgeOnly".into(),
                parameters: Default::default(),
            }
            .build()
            .unwrap(),
            num_classes: 2,
            class_names: ["With Helmet".to_string(), "Without Helmet".to_string()].into(),
            alert_settings: AlertSettings {
                classes: vec![1],
                class_names: vec!["With Helmet".into(), "Without Helmet".into()],
                min_score: 0.5,
                confirm_frames: 1,
                end_after: Duration::from_millis(800),
            },
            outputs: None,
            cloud: None,
            budget_per_s: 0.0,
            ask_again_after: Duration::ZERO,
            budget_hardest_first: false,
            uplink: None,
            watcher: Some(Arc::new(move |e: &AlertEvent| {
                seen.lock().unwrap().push(e.kind)
            })),
            snapshot_jpeg_quality: 85,
            counters: Arc::default(),
            telemetry: None,
        });
        (shared, events)
    }

    fn frame(at: SystemTime) -> Frame {
        Frame {
            camera: "gate".into(),
            seq: 0,
            pts: None,
            capture_time: at,
            letterbox: Letterbox::new(64, 64, 64, 64),
            pixels: vec![114; 64 * 64 * 3],
        }
    }

    /// A frame in which one person has no helmet.
    fn violation(at: SystemTime) -> CameraFrame {
        let mut detections = Detections::new();
        let violation = Detection {
            x1: 1.0,
            y1: 1.0,
            x2: 20.0,
            y2: 30.0,
            score: 0.9,
            class: 1,
        };
        detections.push(violation).unwrap();
        CameraFrame::Analysed(Box::new(Inferred {
            frame: frame(at),
            detections,
            infer: Duration::from_millis(300),
            latency: Duration::from_millis(300),
        }))
    }

    async fn wait_for(events: &Seen, kind: EventKind) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !events.lock().unwrap().contains(&kind) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {kind:?} event: {:?}",
                events.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_removed_cameras_open_episode_still_ends() {
        let (shared, events) = shared();
        let finalize = Finalize::new(&tokio::runtime::Handle::current(), shared);
        let (_rules, rules) = watch::channel(Arc::default());
        let queue = finalize.spawn_camera("gate", rules);
        queue.send(violation(SystemTime::now())).await.unwrap();
        // The camera is removed: its queue closes with the episode open.
        drop(queue);
        wait_for(&events, EventKind::End).await;
        assert_eq!(*events.lock().unwrap(), [EventKind::New, EventKind::End]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn still_frames_carry_the_last_result() {
        let (shared, events) = shared();
        let finalize = Finalize::new(&tokio::runtime::Handle::current(), shared);
        let (_rules, rules) = watch::channel(Arc::default());
        let queue = finalize.spawn_camera("gate", rules);
        let t0 = SystemTime::now();
        queue.send(violation(t0)).await.unwrap();
        wait_for(&events, EventKind::New).await;
        // Two seconds of a still scene, well past the 800 ms after which an unseen person's
        // episode ends: the person is still there, as the last analysed frame showed.
        for i in 1..=6 {
            let at = t0 + Duration::from_millis(300 * i);
            queue.send(CameraFrame::Still(frame(at))).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            *events.lock().unwrap(),
            [EventKind::New],
            "the episode ended although the scene did not change"
        );
    }
}
