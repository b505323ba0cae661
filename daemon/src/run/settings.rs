//! What the daemon's parts are made of, read from the config: worker arguments and pools, the
//! supervisor's timings, the cgroup root, camera settings, the autoscaler.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use helmet_pipelines::ingest::{CameraSettings, FrameHook, H264Decoder, Transport};

use crate::autoscaler::{Autoscaler, FsReader};
use crate::config::{self, Config};
use crate::supervisor::{CgroupRoot, Layout, PoolName, PoolSpec, SupervisorConfig};
use crate::worker::{InputSize, WorkerArgs};

/// The only worker pool so far: the edge model.
pub const EDGE_POOL: &str = "edge";

pub(super) fn worker_template(cfg: &Config) -> WorkerArgs {
    let m = &cfg.edge.model;
    WorkerArgs {
        pool: String::new(),
        id: 0,
        model: config::resolve_path(&m.path),
        input: InputSize {
            height: m.input[0],
            width: m.input[1],
        },
        classes: m.classes.len() as u16,
        score_threshold: m.score_threshold,
        nms_iou: m.nms_iou,
        intra_threads: m.intra_threads,
        onnxruntime: (!cfg.inference.onnxruntime.as_os_str().is_empty())
            .then(|| cfg.inference.onnxruntime.clone()),
        socket_fd: 3,
        shm_fd: 4,
        heartbeat_ms: 500,
        fake_infer_ms: None,
    }
}

/// The worker pools the config asks for. The generation changes when a running worker could
/// not pick a change up (model, thresholds): the supervisor then replaces workers one by one.
pub(super) fn desired_pools(
    cfg: &Config,
    replicas: Option<u32>,
) -> anyhow::Result<BTreeMap<PoolName, PoolSpec>> {
    let m = &cfg.edge.model;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        m.path.as_os_str(),
        m.input,
        &m.classes,
        m.score_threshold.to_bits(),
        m.nms_iou.to_bits(),
        m.intra_threads,
    )
        .hash(&mut hasher);
    let replicas = replicas.unwrap_or_else(|| initial_replicas(cfg));
    let limits = &cfg.edge.worker.resources.limits;
    let standby = cfg.edge.hpa.as_ref().map_or(0, |hpa| {
        let room = u32::try_from(hpa.max_replicas)
            .unwrap_or(0)
            .saturating_sub(replicas);
        cfg.edge.worker.standby.min(room)
    });
    let spec = PoolSpec {
        replicas,
        standby,
        cpu_limit_millis: limits.cpu.as_ref().map(|q| q.milli_value().max(1) as u64),
        memory_limit_bytes: limits.memory.as_ref().map(|q| q.as_f64() as u64),
        generation: hasher.finish(),
    };
    Ok(BTreeMap::from([(PoolName::new(EDGE_POOL)?, spec)]))
}

/// Fixed replicas without `[edge.hpa]`; its minimum with it, until the first decision.
pub(super) fn initial_replicas(cfg: &Config) -> u32 {
    cfg.edge
        .hpa
        .as_ref()
        .map_or(cfg.edge.worker.replicas, |h| h.min_replicas.max(1) as u32)
}

pub(super) type EdgeAutoscaler = Autoscaler<FsReader>;

/// Where the workers' CPU and pressure figures are read: the supervisor's cgroup root, through a
/// reader rooted at `/` in the daemon (elsewhere in tests, which write the files themselves).
#[derive(Debug, Clone)]
pub struct CgroupFiles {
    pub reader: FsReader,
    pub cgroup_root: PathBuf,
}

impl CgroupFiles {
    pub fn of_host(cgroup_root: &Path) -> Self {
        Self {
            reader: FsReader::new("/"),
            cgroup_root: cgroup_root.to_path_buf(),
        }
    }
}

pub(super) fn new_autoscaler(
    cfg: &Config,
    files: &CgroupFiles,
    replicas: u32,
    now: Instant,
) -> anyhow::Result<Option<EdgeAutoscaler>> {
    let Some(spec) = cfg.edge.hpa.clone() else {
        return Ok(None);
    };
    let pool = PoolName::new(EDGE_POOL)?;
    Ok(Some(Autoscaler::new(
        spec,
        pool,
        files.cgroup_root.clone(),
        files.reader.clone(),
        replicas,
        now,
    )?))
}

pub(super) fn supervisor_config(cfg: &Config) -> SupervisorConfig {
    SupervisorConfig {
        backoff_initial: Duration::from_secs_f64(cfg.edge.worker.restart_backoff_initial_s),
        backoff_max: Duration::from_secs_f64(cfg.edge.worker.restart_backoff_max_s),
        ready_timeout: Duration::from_secs_f64(cfg.edge.worker.ready_timeout_s),
        ..SupervisorConfig::default()
    }
}

/// The cgroup the workers go under: configured, or chosen from the host's layout.
pub(super) fn cgroup_root(cfg: &Config) -> anyhow::Result<CgroupRoot> {
    if !cfg.edge.worker.cgroup_root.as_os_str().is_empty() {
        return Ok(CgroupRoot::Path(cfg.edge.worker.cgroup_root.clone()));
    }
    let layout = Layout::detect(Path::new("/sys/fs/cgroup"))?;
    Ok(match layout {
        Layout::Unified { .. } => CgroupRoot::Delegated {
            daemon_leaf: "daemon".into(),
        },
        Layout::Hybrid { unified, .. } => CgroupRoot::Path(unified.join("helmetd")),
    })
}

/// `on_frame` wakes the control loop when the camera has a frame for it.
pub(super) fn camera_settings(
    cfg: &Config,
    cam: &config::CameraConfig,
    on_frame: Option<FrameHook>,
) -> anyhow::Result<CameraSettings> {
    let [h, w] = cfg.edge.model.input;
    let mut s = ingest_settings(cam, w, h)?;
    s.on_frame = on_frame;
    Ok(s)
}

/// A camera's ingest settings from its table, letterboxed to `w × h`: a plain path is a file
/// camera that loops like a camera; credentials come from the credentials file.
pub fn ingest_settings(
    cam: &config::CameraConfig,
    w: u32,
    h: u32,
) -> anyhow::Result<CameraSettings> {
    let url = if cam.url.contains("://") {
        cam.url.clone()
    } else {
        let path = config::resolve_path(Path::new(&cam.url)).canonicalize()?;
        url::Url::from_file_path(&path)
            .map_err(|()| anyhow::anyhow!("{}: not a usable path", path.display()))?
            .to_string()
    };
    let mut s = CameraSettings::new(&cam.name, &url, w, h);
    s.detect_fps = cam.detect_fps;
    s.stall_timeout = Duration::from_secs_f64(cam.stall_timeout_s);
    s.transport = match cam.transport {
        config::Transport::Tcp => Transport::Tcp,
        config::Transport::Udp => Transport::Udp,
        config::Transport::Auto => Transport::Auto,
    };
    s.decoder = match cam.decoder {
        config::Decoder::Libav => H264Decoder::Libav,
        config::Decoder::Openh264 => H264Decoder::OpenH264,
    };
    // A file camera plays like a camera: in real time, over and over.
    s.loop_file = url.starts_with("file://");
    if !cam.credentials_file.as_os_str().is_empty() {
        let path = config::resolve_path(&cam.credentials_file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let (user, password) = text
            .trim_end_matches(['\n', '\r'])
            .split_once(':')
            .with_context(|| format!("{}: expected user:password", path.display()))?;
        s.credentials = Some((user.to_string(), password.to_string()));
    }
    Ok(s)
}
