//! The running cameras and their finalize tasks, reconciled against the config on SIGHUP.
//!
//! A camera whose settings did not change keeps streaming through a reload: only added cameras
//! start, removed ones stop, and changed ones (URL, rate, transport, the model's input size)
//! restart. A camera keeps its finalize task across a restart, so an open violation episode
//! carries on instead of ending and starting again.

use std::collections::HashMap;

use helmet_pipelines::ingest::{Camera, FrameHook};
use tokio::sync::mpsc;

use super::finalize::{Finalize, Inferred};
use super::settings::camera_settings;
use crate::config::{CameraConfig, Config};
use crate::worker::Dispatcher;

/// What a camera's stream depends on; a difference means a restart.
#[derive(Debug, Clone, PartialEq)]
struct StreamKey {
    camera: CameraConfig,
    input: [u32; 2],
}

impl StreamKey {
    fn of(cfg: &Config, camera: &CameraConfig) -> Self {
        Self {
            camera: camera.clone(),
            input: cfg.edge.model.input,
        }
    }
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
    queues: HashMap<String, mpsc::Sender<Inferred>>,
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
                    changes.stopped.push(name);
                }
            }
        }
        self.cameras = kept_cameras;
        self.keys = kept_keys;
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
        let camera = Camera::start(camera_settings(cfg, cam, self.on_frame.clone())?)?;
        self.queues
            .entry(cam.name.clone())
            .or_insert_with(|| self.finalize.spawn_camera(&cam.name));
        dispatcher.add_camera(cam.name.as_str());
        self.cameras.push(camera);
        self.keys.push(StreamKey::of(cfg, cam));
        Ok(())
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

    pub fn queues(&self) -> &HashMap<String, mpsc::Sender<Inferred>> {
        &self.queues
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
