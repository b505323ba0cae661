//! helmetd's configuration: one TOML file, typed, validated before anything starts.
//!
//! Loading is in [`load`]: the file is parsed, `--set` overrides are applied to the document, then
//! it is deserialised into [`Config`] with unknown keys refused, and [`Config::validate`] checks
//! what types cannot (ranges, URLs, files, the model's declared input). Every error names the file,
//! line, column and key.

mod load;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::autoscaler::{HpaSpec, Quantity};

pub use load::{ConfigError, ConfigSource, DEFAULT_CONFIG, KeyPath, load, load_with_checks};
pub use validate::{MAX_POLYGON_POINTS, PolygonProblem, polygon_points};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub inference: InferenceConfig,
    pub mqtt: MqttConfig,
    #[serde(default, rename = "camera")]
    pub cameras: Vec<CameraConfig>,
    pub edge: EdgeConfig,
    pub alerts: AlertsConfig,
    pub cloud: CloudConfig,
    pub kubeedge: KubeEdgeConfig,
    pub sedna: SednaConfig,
    pub output: OutputConfig,
    pub http: HttpConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceConfig {
    pub onnxruntime: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub url: String,
    pub client_id: String,
    pub username: String,
    pub password_file: PathBuf,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub topic_prefix: String,
    pub keep_alive_s: u64,
    pub spool_dir: PathBuf,
    pub spool_max_mb: u64,
    pub spool_max_age_s: u64,
    pub stats_interval_s: u64,
    /// Which messages go through the crash-safe spool (the rest are sent once, at most).
    pub spool_kinds: Vec<SpoolKind>,
}

/// A kind of message the spool can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolKind {
    Alerts,
    Snapshots,
    HardExamples,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
    Auto,
}

/// `[[camera]] decoder`: the H.264 decoder of an RTSP camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Decoder {
    #[default]
    Libav,
    Openh264,
}

impl std::fmt::Display for Decoder {
    /// The name the config file and the command line give it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decoder::Libav => "libav",
            Decoder::Openh264 => "openh264",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub name: String,
    pub url: String,
    #[serde(default = "CameraConfig::default_detect_fps")]
    pub detect_fps: f64,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "CameraConfig::default_transport")]
    pub transport: Transport,
    #[serde(default)]
    pub decoder: Decoder,
    #[serde(default)]
    pub credentials_file: PathBuf,
    #[serde(default = "CameraConfig::default_stall_timeout_s")]
    pub stall_timeout_s: f64,
    /// Only a person whose foot point is inside one of these zones counts; empty: anywhere.
    #[serde(default)]
    pub required_zones: Vec<String>,
    /// `[[camera.zone]]`: named areas of the frame, reported with the detections in them.
    #[serde(default)]
    pub zone: Vec<ZoneConfig>,
    /// `[[camera.mask]]`: areas whose detections are ignored (a street, a poster).
    #[serde(default)]
    pub mask: Vec<ZoneConfig>,
    /// `[[camera.schedule]]`: when the camera raises alerts, in local time; none: always.
    #[serde(default)]
    pub schedule: Vec<ScheduleWindowConfig>,
    /// `[camera.motion]`: the model runs only where something moved (`motion/`).
    #[serde(default)]
    pub motion: MotionConfig,
}

/// `[camera.motion]`; see [`crate::motion`] for what the numbers mean.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MotionConfig {
    pub enabled: bool,
    /// Grey levels (0–255) a grid cell's average must move from its background.
    pub threshold: f64,
    /// Share of the unmasked frame (0–1) that must change.
    pub min_area: f64,
    /// Seconds after which a still camera's frame is analysed anyway.
    pub max_skip_s: f64,
}

impl Default for MotionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 15.0,
            min_area: 0.003,
            max_skip_s: 5.0,
        }
    }
}

/// A named polygon in fractions of the frame (`[x, y]`, 0–1), so it survives a resolution change.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub name: String,
    pub polygon: Vec<[f64; 2]>,
}

/// One weekly window: `days` (`"mon"`..`"sun"`, ranges like `"mon-fri"`, or `"daily"`) from
/// `start` to `end` (`HH:MM`). An `end` before `start` runs overnight and belongs to the day it
/// starts on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleWindowConfig {
    pub days: Vec<String>,
    pub start: String,
    pub end: String,
}

/// Minutes in a day: the largest time of day (`"24:00"`, only as a window's end).
pub const MINUTES_PER_DAY: u16 = 24 * 60;

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// One entry of a schedule's `days` as a set of weekdays, bit 0 Monday .. bit 6 Sunday. A range
/// may wrap the week (`"fri-mon"`), as a night shift's would.
pub fn parse_days(spec: &str) -> Result<u8, String> {
    let spec = spec.trim().to_ascii_lowercase();
    let day = |name: &str| DAY_NAMES.iter().position(|d| *d == name.trim());
    let mask = if spec == "daily" {
        Some(0x7f)
    } else if let Some((from, to)) = spec.split_once('-') {
        day(from).zip(day(to)).map(|(from, to)| {
            let len = (to + 7 - from) % 7;
            (0..=len).fold(0u8, |m, k| m | 1 << ((from + k) % 7))
        })
    } else {
        day(&spec).map(|d| 1u8 << d)
    };
    mask.ok_or_else(|| {
        format!(
            "{spec:?} is not a day: use \"mon\"..\"sun\", a range like \"mon-fri\", or \"daily\""
        )
    })
}

/// A time of day `HH:MM` as minutes since midnight: 00:00–23:59, and 24:00 when `end` is true
/// (a window to midnight).
pub fn parse_time_of_day(text: &str, end: bool) -> Result<u16, String> {
    let parsed = text.split_once(':').and_then(|(h, m)| {
        let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
        if !two_digits(h) || !two_digits(m) {
            return None;
        }
        Some((h.parse::<u16>().ok()?, m.parse::<u16>().ok()?))
    });
    match parsed {
        Some((h, m)) if h < 24 && m < 60 => Ok(h * 60 + m),
        Some((24, 0)) if end => Ok(MINUTES_PER_DAY),
        _ if end => Err(format!("{text:?} is not a time HH:MM from 00:00 to 24:00")),
        _ => Err(format!("{text:?} is not a time HH:MM from 00:00 to 23:59")),
    }
}

impl CameraConfig {
    fn default_detect_fps() -> f64 {
        2.0
    }
    fn default_transport() -> Transport {
        Transport::Tcp
    }
    fn default_stall_timeout_s() -> f64 {
        5.0
    }
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    pub model: ModelConfig,
    pub hard_example_mining: helmet_pipelines::hem::HemConfig,
    pub worker: WorkerConfig,
    pub hpa: Option<HpaSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub path: PathBuf,
    /// `[height, width]`, the order Sedna's `input_shape` and the model's NCHW use.
    pub input: [u32; 2],
    pub classes: Vec<String>,
    pub score_threshold: f32,
    pub nms_iou: f32,
    pub intra_threads: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub replicas: u32,
    pub resources: Resources,
    pub restart_backoff_initial_s: f64,
    pub restart_backoff_max_s: f64,
    /// The bound on a worker's model load; a load that stops heartbeating ends sooner.
    pub ready_timeout_s: f64,
    pub cgroup_root: PathBuf,
    /// Warm standby workers kept loaded and frozen while `[edge.hpa]` runs fewer than
    /// `maxReplicas` (ignored without it).
    pub standby: u32,
}

/// Kubernetes' `resources` block, limited to what a worker cgroup can honour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub requests: ResourceRequests,
    #[serde(default)]
    pub limits: ResourceLimits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRequests {
    pub cpu: Quantity,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    pub cpu: Option<Quantity>,
    pub memory: Option<Quantity>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    pub classes: Vec<String>,
    pub min_score: f32,
    pub confirm_frames: u32,
    pub end_after_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloudProtocol {
    Mqtt,
    SednaHttp,
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    pub protocol: CloudProtocol,
    pub url: String,
    pub timeout_ms: u64,
    /// Hard examples asked per second per camera, at most; 0 for no limit.
    pub budget_per_s: f64,
    /// A person the cloud answered about is not asked about again for this long while the edge
    /// model sees them the same; 0 asks about every hard frame.
    pub ask_again_after_s: f64,
    /// Which hard frames the budget goes to.
    pub budget_order: BudgetOrder,
    pub model: PathBuf,
    pub model_input: [u32; 2],
    pub intra_threads: usize,
    pub share_group: String,
    pub jpeg_quality: u8,
    /// The largest JPEG side `helmetd cloud` decodes, checked in the header first.
    pub max_image_side: u32,
}

/// Which hard frames a camera's cloud budget is spent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetOrder {
    /// The first hard frames of each second.
    First,
    /// The hardest of the recent hard frames (`hem::margin_hardness`).
    Hardest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeEdgeConfig {
    pub enabled: bool,
    /// Empty: the `[node]` name.
    pub node_name: String,
    pub cloudcore_host: String,
    pub cert_port: u16,
    pub websocket_port: u16,
    pub token_file: PathBuf,
    pub cert_dir: PathBuf,
    pub keepalive_seconds: u64,
    pub lease_seconds: u64,
}

/// What a Sedna deployment expects of its workers (docs/sedna.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SednaConfig {
    /// Sedna's job name: the first path segment of `/<job>/predict`.
    pub job_name: String,
    /// The Local Controller's base URL for worker reports. Empty: no reports.
    pub lc_server: String,
    pub lc_period_s: u64,
    pub namespace: String,
    pub service_name: String,
    pub worker_name: String,
    /// The largest request body `helmetd cloud --sedna-http` accepts, in MiB.
    pub max_body_mb: u64,
    /// `helmetd cloud --sedna-http`'s connection cap and deadlines (the HTTP connection guard's limits).
    pub max_connections: usize,
    pub header_timeout_s: u64,
    pub body_timeout_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    pub dir: PathBuf,
    pub jpeg_quality: u8,
    /// The folders under `dir` together, in MiB; the oldest files are removed beyond it.
    pub max_mb: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    /// The endpoint's connection cap and deadlines (the HTTP connection guard's limits).
    pub max_connections: usize,
    pub header_timeout_s: u64,
    pub body_timeout_s: u64,
}

/// The ceiling of `cloud.max_image_side` and of any image side a peer of the cloud may declare:
/// JPEG itself allows 65535, and 8192² RGB is already 192 MiB. Here, not in the cloud protocol,
/// because checking the config must not need the modules that use it.
pub const MAX_IMAGE_SIDE: u32 = 8192;

/// Where `[sedna]` sends the Local Controller's worker reports: the one reading of
/// `lc_server` and the worker name, shared by check-config and the reporter so both refuse the
/// same values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LcEndpoint {
    /// `host:port` of the LC.
    pub authority: String,
    /// `/sedna/workers/<worker>/info`, under `lc_server`'s own path.
    pub path: String,
    pub worker_name: String,
    /// The service name, else the job name.
    pub owner_name: String,
}

/// `[sedna]` cannot be used for reports.
#[derive(Debug, thiserror::Error)]
#[error("sedna.{key} {value:?}: {reason}")]
pub struct LcConfigError {
    pub key: &'static str,
    pub value: String,
    pub reason: String,
}

impl SednaConfig {
    /// `None` when `lc_server` is empty: no reports. The worker name defaults to the job name
    /// (Sedna's default) and the owner to the service name, else the job name.
    pub fn lc_endpoint(&self) -> Result<Option<LcEndpoint>, LcConfigError> {
        if self.lc_server.is_empty() {
            return Ok(None);
        }
        let error = |key, value: &str, reason: &str| LcConfigError {
            key,
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let url = url::Url::parse(&self.lc_server)
            .map_err(|e| error("lc_server", &self.lc_server, &e.to_string()))?;
        let host = match url.host_str() {
            Some(host) if url.scheme() == "http" => host,
            _ => return Err(error("lc_server", &self.lc_server, "not an http:// URL")),
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let or_job = |name: &str| {
            if name.is_empty() {
                self.job_name.clone()
            } else {
                name.to_string()
            }
        };
        let worker_name = or_job(&self.worker_name);
        if worker_name.is_empty() || worker_name.contains(['/', '?', '#', ' ']) {
            return Err(error(
                "worker_name",
                &worker_name,
                "must be one non-empty URL path segment",
            ));
        }
        if self.lc_period_s == 0 {
            return Err(error("lc_period_s", "0", "must be at least 1"));
        }
        Ok(Some(LcEndpoint {
            authority: format!("{host}:{port}"),
            path: format!(
                "{}/sedna/workers/{worker_name}/info",
                url.path().trim_end_matches('/')
            ),
            owner_name: or_job(&self.service_name),
            worker_name,
        }))
    }
}

/// Where relative paths in the config are looked up, after the current directory.
pub const SHARE_DIR: &str = "/usr/share/helmetd";

/// Resolves a configured path: absolute as given; relative against the current directory, then
/// [`SHARE_DIR`] (an installed gateway keeps its models there). Returns the first that exists, or
/// the path as given so the caller's error names what the user wrote.
pub fn resolve_path(path: &std::path::Path) -> PathBuf {
    if path.is_absolute() || path.exists() {
        return path.to_path_buf();
    }
    let shared = std::path::Path::new(SHARE_DIR).join(path);
    if shared.exists() {
        shared
    } else {
        path.to_path_buf()
    }
}

impl Config {
    /// The embedded default as it is, deserialised but not validated (its model paths are
    /// relative): a base for settings built in code, which then name only what differs.
    pub fn embedded_default() -> Result<Config, toml::de::Error> {
        toml::from_str(DEFAULT_CONFIG)
    }

    /// The node name: configured, else the host name, else "helmetd".
    pub fn node_name(&self) -> String {
        if !self.node.name.is_empty() {
            return self.node.name.clone();
        }
        nix_hostname().unwrap_or_else(|| "helmetd".to_string())
    }
}

fn nix_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}
