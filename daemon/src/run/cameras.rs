//! The running cameras and their finalize tasks, reconciled against the config on SIGHUP.
//!
//! A camera whose settings did not change keeps streaming through a reload: only added cameras
//! start, removed ones stop, and changed ones (URL, rate, transport, the model's input size)
//! restart. A camera keeps its finalize task across a restart, so an open violation episode
//! carries on instead of ending and starting again. Zones, masks and schedules are not part of
//! the stream: a change to them reaches the camera's finalize task on a `watch`, and the stream
//! and its tracks carry on. Nor is motion gating: each camera's [`MotionGate`] sits here, between
//! its stream and dispatch, and a reload changes its settings and masks in place.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use helmet_pipelines::ingest::{Camera, FrameHook};
use tokio::sync::{mpsc, watch};

use super::finalize::{self, CameraFrame, Finalize};
use super::settings::camera_settings;
use crate::config::{CameraConfig, Config, MotionConfig};
use crate::motion::{MotionGate, MotionSettings};
use crate::telemetry::Counters;
use crate::worker::Dispatcher;
use crate::zones::CameraRules;

/// What a camera's stream depends on; a difference means a restart.
#[derive(Debug, Clone, PartialEq)]
struct StreamKey {
    camera: CameraConfig,
    input: [u32; 2],
}

impl StreamKey {
    /// The camera's table without the rules and motion settings, which change without a restart.
    fn of(cfg: &Config, camera: &CameraConfig) -> Self {
        Self {
            camera: CameraConfig {
                zone: Vec::new(),
                mask: Vec::new(),
                required_zones: Vec::new(),
                schedule: Vec::new(),
                motion: MotionConfig::default(),
                ..camera.clone()
            },
            input: cfg.edge.model.input,
        }
    }
}

fn replace_if_changed(current: &mut Arc<CameraRules>, new: Arc<CameraRules>) -> bool {
    if **current == *new {
        return false;
    }
    *current = new;
    true
}

/// What a reconcile did, by camera name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CameraChanges {
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    pub restarted: Vec<String>,
    /// Cameras the config asks for that could not start, with why.
    pub failed: Vec<(String, String)>,
}

impl CameraChanges {
    pub fn is_empty(&self) -> bool {
        self.started.is_empty()
            && self.stopped.is_empty()
            && self.restarted.is_empty()
            && self.failed.is_empty()
    }
}

pub struct CameraSet {
    /// In config order; parallel to `keys`.
    cameras: Vec<Camera>,
    keys: Vec<StreamKey>,
    queues: HashMap<String, mpsc::Sender<CameraFrame>>,
    /// Each camera's zones, masks and schedule, as its finalize task sees them.
    rules: HashMap<String, watch::Sender<Arc<CameraRules>>>,
    /// Each camera's motion gate; kept across a stream restart, as its finalize task is.
    gates: HashMap<String, MotionGate>,
    finalize: Finalize,
    /// Given to every camera: wakes the control loop when a frame is waiting.
    on_frame: Option<FrameHook>,
}

impl CameraSet {
    /// Starts every enabled camera; any that cannot start fails the start-up.
    pub fn start(
        cfg: &Config,
        finalize: Finalize,
        on_frame: Option<FrameHook>,
        dispatcher: &mut Dispatcher,
    ) -> anyhow::Result<Self> {
        let mut set = Self {
            cameras: Vec::new(),
            keys: Vec::new(),
            queues: HashMap::new(),
            rules: HashMap::new(),
            gates: HashMap::new(),
            finalize,
            on_frame,
        };
        for cam in cfg.cameras.iter().filter(|c| c.enabled) {
            set.start_one(cfg, cam, dispatcher)
                .map_err(|e| anyhow::anyhow!("camera {}: {e:#}", cam.name))?;
        }
        Ok(set)
    }

    /// Brings the running cameras in line with `cfg`. A camera that fails to start is
    /// reported and left out; the others are not disturbed.
    pub fn reconcile(&mut self, cfg: &Config, dispatcher: &mut Dispatcher) -> CameraChanges {
        let wanted: Vec<StreamKey> = cfg
            .cameras
            .iter()
            .filter(|c| c.enabled)
            .map(|c| StreamKey::of(cfg, c))
            .collect();
        let mut changes = CameraChanges::default();
        let mut kept_cameras = Vec::new();
        let mut kept_keys = Vec::new();
        for (camera, key) in self.cameras.drain(..).zip(self.keys.drain(..)) {
            let name = key.camera.name.clone();
            match wanted.iter().find(|w| w.camera.name == name) {
                Some(w) if *w == key => {
                    kept_cameras.push(camera);
                    kept_keys.push(key);
                }
                Some(_) => {
                    camera.stop();
                    changes.restarted.push(name);
                }
                None => {
                    camera.stop();
                    dispatcher.remove_camera(&name);
                    // Its task finishes what is queued, then ends.
                    self.queues.remove(&name);
                    self.rules.remove(&name);
                    self.gates.remove(&name);
                    changes.stopped.push(name);
                }
            }
        }
        self.cameras = kept_cameras;
        self.keys = kept_keys;
        for name in self
            .keys
            .iter()
            .map(|k| k.camera.name.clone())
            .collect::<Vec<_>>()
        {
            self.update_rules(cfg, &name);
        }
        for want in &wanted {
            let name = &want.camera.name;
            if self.keys.iter().any(|k| k.camera.name == *name) {
                continue;
            }
            let restarted = changes.restarted.contains(name);
            match self.start_one(cfg, &want.camera, dispatcher) {
                Ok(()) if restarted => {}
                Ok(()) => changes.started.push(name.clone()),
                Err(e) => {
                    if restarted {
                        changes.restarted.retain(|n| n != name);
                        dispatcher.remove_camera(name);
                        self.queues.remove(name);
                        self.rules.remove(name);
                        self.gates.remove(name);
                    }
                    changes.failed.push((name.clone(), format!("{e:#}")));
                }
            }
        }
        self.reorder(&wanted);
        changes
    }

    fn start_one(
        &mut self,
        cfg: &Config,
        cam: &CameraConfig,
        dispatcher: &mut Dispatcher,
    ) -> anyhow::Result<()> {
        let rules = Arc::new(CameraRules::from_config(cam)?);
        let camera = Camera::start(camera_settings(cfg, cam, self.on_frame.clone())?)?;
        match self.gates.get_mut(&cam.name) {
            Some(gate) => gate.update(MotionSettings::from_config(&cam.motion), rules.clone()),
            None => {
                let gate = MotionGate::new(MotionSettings::from_config(&cam.motion), rules.clone());
                self.gates.insert(cam.name.clone(), gate);
            }
        }
        if let Some(sender) = self.rules.get(&cam.name) {
            sender.send_if_modified(|current| replace_if_changed(current, rules));
        } else {
            let (sender, receiver) = watch::channel(rules);
            self.queues.insert(
                cam.name.clone(),
                self.finalize.spawn_camera(&cam.name, receiver),
            );
            self.rules.insert(cam.name.clone(), sender);
        }
        dispatcher.add_camera(cam.name.as_str());
        self.cameras.push(camera);
        self.keys.push(StreamKey::of(cfg, cam));
        Ok(())
    }

    /// Hands a kept camera its rules and motion settings from the new config when they changed.
    fn update_rules(&mut self, cfg: &Config, name: &str) {
        let (Some(sender), Some(cam)) = (
            self.rules.get(name),
            cfg.cameras.iter().find(|c| c.name == name),
        ) else {
            return;
        };
        match CameraRules::from_config(cam) {
            Ok(rules) => {
                let rules = Arc::new(rules);
                if let Some(gate) = self.gates.get_mut(name) {
                    gate.update(MotionSettings::from_config(&cam.motion), rules.clone());
                }
                if sender.send_if_modified(|current| replace_if_changed(current, rules)) {
                    tracing::info!(camera = name, "zones, masks and schedule reloaded");
                }
            }
            // Validated with the config, so this is a bug; the camera keeps its old rules.
            Err(e) => tracing::warn!(camera = name, error = %e, "rules not reloaded"),
        }
    }

    /// Whether the camera's schedule is open at `now`; a camera without one always is.
    pub fn in_schedule(&self, camera: &str, now: SystemTime) -> bool {
        self.rules
            .get(camera)
            .is_none_or(|rules| rules.borrow().schedule.is_active(now))
    }

    /// Config order, so logs, stats and metrics list cameras as the file does.
    fn reorder(&mut self, wanted: &[StreamKey]) {
        let position = |key: &StreamKey| {
            wanted
                .iter()
                .position(|w| w.camera.name == key.camera.name)
                .unwrap_or(usize::MAX)
        };
        let mut pairs: Vec<(Camera, StreamKey)> =
            self.cameras.drain(..).zip(self.keys.drain(..)).collect();
        pairs.sort_by_key(|(_, k)| position(k));
        (self.cameras, self.keys) = pairs.into_iter().unzip();
    }

    pub fn cameras(&self) -> &[Camera] {
        &self.cameras
    }

    pub fn queues(&self) -> &HashMap<String, mpsc::Sender<CameraFrame>> {
        &self.queues
    }

    /// Takes each camera's waiting frame: to dispatch when its motion gate lets it through,
    /// else straight to its finalize task, where the camera's last result stands for it.
    pub fn hand_over_frames(&mut self, dispatcher: &mut Dispatcher, counters: &Counters) {
        for camera in &self.cameras {
            let Some(frame) = camera.take_latest() else {
                continue;
            };
            let analyse = self
                .gates
                .get_mut(camera.name())
                .is_none_or(|gate| gate.check(&frame).analyses());
            if !analyse {
                Counters::add(&counters.frames_still);
                finalize::hand_over(&self.queues, CameraFrame::Still(frame), counters);
            } else if let Err(e) = dispatcher.offer(frame) {
                tracing::warn!(error = %e, "frame refused by dispatch");
            }
        }
    }

    /// Frames of the camera its motion gate kept from the model.
    pub fn still_frames(&self, camera: &str) -> u64 {
        self.gates.get(camera).map_or(0, MotionGate::skipped)
    }

    /// Stops every stream; the finalize queues stay open, so results still on the workers can
    /// be finalized.
    pub fn stop_streams(&self) {
        for camera in &self.cameras {
            camera.stop();
        }
    }

    /// Closes the finalize queues (no result comes any more) and hands the tasks over, to be
    /// joined.
    pub fn close(self) -> Finalize {
        self.finalize
    }
}
