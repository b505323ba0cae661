//! Sedna's environment contract: the variables the GM injects into an edge worker (and the helmet
//! example's own ones) turned into config overrides, so that helmetd's image can replace Sedna's
//! little-model image in a JointInferenceService template (docs/sedna.md).
//!
//! The overrides are `--set` strings applied by the config loader, so a value that the config
//! refuses is reported like any other problem; [`SednaEnv::attribute`] then names the variable
//! instead of a `--set` nobody typed. Precedence: file < environment < explicit `--set`.

use std::path::Path;

use helmet_pipelines::output::{ALL_EXAMPLES, HARD_EXAMPLE_CLOUD, HARD_EXAMPLE_EDGE};
use helmet_pipelines::redact::redact;
use toml_edit::{Array, InlineTable, Value};

use crate::config::ConfigError;

/// Variables only a Sedna edge worker has: in `auto` mode one of them switches the contract on.
/// The others (`NAMESPACE`, `JOB_NAME`, `MODEL_URL`, …) are common names that another
/// environment (a CI job, a shell) may well have, so alone they do not.
pub const TRIGGERS: [&str; 6] = [
    "BIG_MODEL_IP",
    "BIG_MODEL_PORT",
    "HEM_NAME",
    "HEM_PARAMETERS",
    "LC_SERVER",
    "LC_PERIOD",
];

/// Sedna's default `BIG_MODEL_PORT`.
const DEFAULT_BIG_MODEL_PORT: u16 = 5000;

/// The one camera that `video_url` becomes.
pub const CAMERA_NAME: &str = "video";

/// Variables Sedna or its example defines that have no helmetd equivalent, and why.
const WITHOUT_EQUIVALENT: [(&str, &str); 9] = [
    (
        "input_shape",
        "Sedna's code does not read it either; [edge.model] input is checked against the model file",
    ),
    (
        "BACKEND_TYPE",
        "helmetd always runs ONNX models with ONNX Runtime",
    ),
    (
        "DEVICE_CATEGORY",
        "helmetd runs on the CPU; [edge.worker] resources size each worker",
    ),
    (
        "MODEL_LOAD_MODE",
        "the model is always a file ([edge.model] path, or MODEL_URL)",
    ),
    (
        "DATA_PATH_PREFIX",
        "MODEL_URL already carries the mounted path",
    ),
    (
        "MODEL_HOT_UPDATE",
        "not supported: restart the daemon to load another model",
    ),
    ("LOG_LEVEL", "use RUST_LOG (and --log-format) instead"),
    (
        "BIG_MODEL_BIND_PORT",
        "a cloud worker's variable; see `helmetd cloud --sedna-http`",
    ),
    ("PARAMETERS", "no helmetd equivalent"),
];

/// When the contract applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SednaEnvMode {
    /// When BIG_MODEL_IP, BIG_MODEL_PORT, HEM_NAME, HEM_PARAMETERS, LC_SERVER or LC_PERIOD is set.
    #[default]
    Auto,
    /// Always: any of the variables that is set is applied.
    On,
    /// Never: the environment is ignored.
    Off,
}

/// A variable whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("env {var}: {message}")]
pub struct EnvError {
    /// The variable(s), as named in the environment.
    pub var: String,
    pub message: String,
}

impl EnvError {
    /// A bad variable is a bad config: EX_CONFIG, like [`ConfigError`].
    pub const EXIT_CODE: i32 = ConfigError::EXIT_CODE;

    /// The message quotes the value, which for `video_url` may carry a camera's password.
    fn new(var: &str, message: impl Into<String>) -> Self {
        Self {
            var: var.to_string(),
            message: redact(&message.into()).into_owned(),
        }
    }
}

/// One config key set from the environment.
#[derive(Debug, Clone)]
pub struct EnvOverride {
    /// The variable(s) it comes from, for messages: `BIG_MODEL_IP, BIG_MODEL_PORT`.
    pub vars: String,
    /// Dotted config key.
    pub key: &'static str,
    pub value: Value,
}

impl EnvOverride {
    /// The `--set` form, `key=<TOML value>`: quoted, so a string never turns into a number.
    pub fn set_arg(&self) -> String {
        format!("{}={}", self.key, self.value)
    }
}

/// A variable that was seen but changes nothing, or changes something in a way worth telling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvNote {
    pub var: String,
    pub value: String,
    pub note: String,
}

/// What the environment asks for.
#[derive(Debug, Clone, Default)]
pub struct SednaEnv {
    pub overrides: Vec<EnvOverride>,
    pub notes: Vec<EnvNote>,
}

/// Sedna's lookup (`Context.get_parameters`): `name`, else `NAME`; an empty value is unset.
fn lookup(vars: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    let set = |n: &str| vars(n).filter(|v| !v.is_empty());
    set(name).or_else(|| {
        let upper = name.to_uppercase();
        if upper == name { None } else { set(&upper) }
    })
}

/// The contract if `mode` (and, in `auto`, the environment) switches it on; else nothing.
pub fn from_env(
    mode: SednaEnvMode,
    vars: impl Fn(&str) -> Option<String>,
) -> Result<SednaEnv, EnvError> {
    let active = match mode {
        SednaEnvMode::Off => false,
        SednaEnvMode::On => true,
        SednaEnvMode::Auto => TRIGGERS.iter().any(|t| lookup(&vars, t).is_some()),
    };
    if active {
        overrides_from_env(vars)
    } else {
        Ok(SednaEnv::default())
    }
}

/// [`from_env`] on this process's environment.
pub fn from_process(mode: SednaEnvMode) -> Result<SednaEnv, EnvError> {
    from_env(mode, |name| std::env::var(name).ok())
}

/// The overrides and notes for every contract variable `vars` has (the mapping table is in
/// docs/sedna.md). Pure: tests pass a closure over a map.
pub fn overrides_from_env(vars: impl Fn(&str) -> Option<String>) -> Result<SednaEnv, EnvError> {
    let get = |name: &str| lookup(&vars, name);
    let mut env = SednaEnv::default();

    match (get("BIG_MODEL_IP"), get("BIG_MODEL_PORT")) {
        (Some(ip), port) => {
            let url = cloud_url(&ip, port.as_deref())?;
            let vars = "BIG_MODEL_IP, BIG_MODEL_PORT";
            env.set(vars, "cloud.protocol", "sedna-http");
            env.set(vars, "cloud.url", url);
        }
        (None, Some(_)) => {
            // Sedna would guess the host's own address; a port alone is a broken template.
            return Err(EnvError::new(
                "BIG_MODEL_PORT",
                "is set without BIG_MODEL_IP (the cloud worker's address)",
            ));
        }
        (None, None) => {}
    }

    match (get("HEM_NAME"), get("HEM_PARAMETERS")) {
        (Some(name), parameters) => {
            let mut table = InlineTable::new();
            table.insert("name", name.into());
            let parameters = match parameters {
                Some(json) => hem_parameters(&json)?,
                None => InlineTable::new(),
            };
            table.insert("parameters", Value::InlineTable(parameters));
            env.set(
                "HEM_NAME, HEM_PARAMETERS",
                "edge.hard_example_mining",
                Value::InlineTable(table),
            );
        }
        (None, Some(parameters)) => env.note(
            "HEM_PARAMETERS",
            parameters,
            "ignored without HEM_NAME; the config's [edge.hard_example_mining] stays",
        ),
        (None, None) => {}
    }

    if let Some(mode) = get("MINING_MODE")
        && mode != "inference-then-mining"
    {
        return Err(EnvError::new(
            "MINING_MODE",
            format!(
                "{mode:?}: helmetd mines after inference (\"inference-then-mining\", Sedna v0.7.0's only mode)"
            ),
        ));
    }

    if let Some(model) = get("MODEL_URL") {
        if model.contains(';') {
            return Err(EnvError::new(
                "MODEL_URL",
                format!("{model:?} names several models; the edge runs one"),
            ));
        }
        env.set("MODEL_URL", "edge.model.path", model);
    }

    if let Some(video) = get("video_url") {
        let url = camera_url(&video).map_err(|m| EnvError::new("video_url", m))?;
        let mut camera = InlineTable::new();
        camera.insert("name", CAMERA_NAME.into());
        camera.insert("url", url.into());
        let mut cameras = Array::new();
        cameras.push(Value::InlineTable(camera));
        env.set("video_url", "camera", Value::Array(cameras));
    }

    output_dir(&get, &mut env)?;

    if let Some(server) = get("LC_SERVER") {
        match url::Url::parse(&server) {
            Ok(u) if u.scheme() == "http" && u.has_host() => {}
            _ => {
                return Err(EnvError::new(
                    "LC_SERVER",
                    format!("{server:?} is not an http:// URL (the LC serves plain HTTP)"),
                ));
            }
        }
        env.set("LC_SERVER", "sedna.lc_server", server);
    }
    if let Some(period) = get("LC_PERIOD") {
        match period.trim().parse::<u32>() {
            Ok(s) if s > 0 => env.set("LC_PERIOD", "sedna.lc_period_s", i64::from(s)),
            _ => {
                return Err(EnvError::new(
                    "LC_PERIOD",
                    format!("{period:?} is not a positive whole number of seconds"),
                ));
            }
        }
    }
    for (var, key) in [
        ("NAMESPACE", "sedna.namespace"),
        ("SERVICE_NAME", "sedna.service_name"),
        ("WORKER_NAME", "sedna.worker_name"),
        ("JOB_NAME", "sedna.job_name"),
    ] {
        if let Some(value) = get(var) {
            env.set(var, key, value);
        }
    }

    for (var, why) in WITHOUT_EQUIVALENT {
        if let Some(value) = get(var) {
            env.note(var, value, why);
        }
    }
    Ok(env)
}

/// `http://<ip>:<port>`; an IPv6 address gets its brackets.
fn cloud_url(ip: &str, port: Option<&str>) -> Result<String, EnvError> {
    let port = match port {
        None => DEFAULT_BIG_MODEL_PORT,
        Some(p) => match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(EnvError::new(
                    "BIG_MODEL_PORT",
                    format!("{p:?} is not a port number"),
                ));
            }
        },
    };
    let host = if ip.contains(':') && !ip.starts_with('[') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let url = format!("http://{host}:{port}");
    // Anything that is not a bare host (a path, credentials, a second port) shows up here.
    match url::Url::parse(&url) {
        Ok(u) if u.has_host() && u.path() == "/" && u.username().is_empty() => Ok(url),
        _ => Err(EnvError::new(
            "BIG_MODEL_IP",
            format!("{ip:?} is not a host name or IP address"),
        )),
    }
}

/// `HEM_PARAMETERS` as the GM writes it (`json.Marshal` of the CR list): `[{"key": …, "value":
/// …}, …]` or `null`. Values stay strings, as Sedna passes them; a missing value is `""` and a
/// repeated key keeps the last, as Sedna's dict comprehension does. Unlike Sedna, which falls back
/// to no parameters on any parse error, a malformed list is refused: a typo in a threshold must
/// not silently become the default threshold.
fn hem_parameters(json: &str) -> Result<InlineTable, EnvError> {
    let error = |why: String| {
        EnvError::new(
            "HEM_PARAMETERS",
            format!(
                "{why}; expected a JSON list like [{{\"key\":\"threshold_img\",\"value\":\"0.9\"}}] or null"
            ),
        )
    };
    let parsed: serde_json::Value =
        serde_json::from_str(json).map_err(|e| error(format!("not JSON ({e})")))?;
    let mut table = InlineTable::new();
    let items = match parsed {
        serde_json::Value::Null => return Ok(table),
        serde_json::Value::Array(items) => items,
        other => return Err(error(format!("{other} is not a list"))),
    };
    for item in items {
        let key = item
            .get("key")
            .and_then(|k| k.as_str())
            .filter(|k| !k.is_empty());
        let Some(key) = key else {
            return Err(error(format!("{item} has no \"key\" string")));
        };
        let value = match item.get("value") {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v @ serde_json::Value::Number(_)) => v.to_string(),
            Some(other) => return Err(error(format!("value {other} of {key:?} is not a string"))),
        };
        table.insert(key, value.into());
    }
    Ok(table)
}

/// A camera URL from `video_url`, which OpenCV (FFmpeg) opened in Sedna: an absolute path is
/// a file, and `file://video/v.mp4` (Sedna's sample) is read by FFmpeg as `/video/v.mp4`.
fn camera_url(raw: &str) -> Result<String, String> {
    if raw.starts_with('/') {
        return Ok(format!("file://{raw}"));
    }
    match url::Url::parse(raw) {
        Ok(u) if u.scheme() == "file" => match u.host_str() {
            Some(host) if !host.is_empty() => Ok(format!("file:///{host}{}", u.path())),
            _ => Ok(raw.to_string()),
        },
        Ok(_) => Ok(raw.to_string()),
        Err(e) => Err(format!(
            "{raw:?} is neither a URL nor an absolute path ({e})"
        )),
    }
}

/// The helmet example's three output folders → `output.dir`. helmetd writes its folders (named
/// like Sedna's) under one directory, so the three must share a parent; a folder named otherwise
/// (the example's `/data/output`) is noted.
fn output_dir(get: &impl Fn(&str) -> Option<String>, env: &mut SednaEnv) -> Result<(), EnvError> {
    // Each variable is named like the folder it configures.
    let set: Vec<(&str, String)> = [ALL_EXAMPLES, HARD_EXAMPLE_EDGE, HARD_EXAMPLE_CLOUD]
        .into_iter()
        .filter_map(|folder| get(folder).map(|path| (folder, path)))
        .collect();
    let Some((_, first)) = set.first() else {
        return Ok(());
    };
    let vars = set.iter().map(|(v, _)| *v).collect::<Vec<_>>().join(", ");
    let parent = |path: &str| {
        Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
    };
    let Some(dir) = parent(first) else {
        return Err(EnvError::new(
            &vars,
            format!("{first:?} has no parent directory"),
        ));
    };
    for (folder, path) in &set {
        if parent(path).as_deref() != Some(dir.as_path()) {
            return Err(EnvError::new(
                &vars,
                format!(
                    "helmetd writes the three folders under one directory, but {path:?} is not in {}",
                    dir.display()
                ),
            ));
        }
        if Path::new(path).file_name() != Some(std::ffi::OsStr::new(folder)) {
            env.note(
                folder,
                path.clone(),
                &format!("helmetd writes {}", dir.join(folder).display()),
            );
        }
    }
    env.set(&vars, "output.dir", dir.display().to_string());
    Ok(())
}

impl SednaEnv {
    pub fn is_empty(&self) -> bool {
        self.overrides.is_empty() && self.notes.is_empty()
    }

    fn set(&mut self, vars: &str, key: &'static str, value: impl Into<Value>) {
        self.overrides.push(EnvOverride {
            vars: vars.to_string(),
            key,
            value: value.into(),
        });
    }

    fn note(&mut self, var: &str, value: String, note: &str) {
        self.notes.push(EnvNote {
            var: var.to_string(),
            value,
            note: note.to_string(),
        });
    }

    /// The overrides to load with: the environment's first, then the explicit ones, which win.
    /// An environment override whose key (or a table holding it) is set explicitly is dropped,
    /// so that an error in that key is blamed on the `--set` that really set it.
    pub fn merge(&mut self, explicit: &[String]) -> Vec<String> {
        let explicit_keys: Vec<&str> = explicit
            .iter()
            .filter_map(|raw| raw.split_once('=').map(|(k, _)| k.trim()))
            .collect();
        self.overrides.retain(|o| {
            !explicit_keys
                .iter()
                .any(|k| o.key == *k || o.key.starts_with(&format!("{k}.")))
        });
        self.overrides
            .iter()
            .map(EnvOverride::set_arg)
            .chain(explicit.iter().cloned())
            .collect()
    }

    /// Names the variable in a problem an environment override caused:
    /// `env HEM_NAME, HEM_PARAMETERS (edge.hard_example_mining={…}): …`.
    pub fn attribute(&self, error: ConfigError) -> ConfigError {
        let ConfigError::Invalid(mut problems) = error else {
            return error;
        };
        for problem in &mut problems {
            let by_env = problem.place.strip_prefix("--set ").and_then(|raw| {
                self.overrides
                    .iter()
                    .find(|o| o.set_arg() == raw)
                    .map(|o| format!("env {} ({raw})", o.vars))
            });
            if let Some(place) = by_env {
                problem.place = place;
            }
        }
        ConfigError::Invalid(problems)
    }

    /// One line per variable used or ignored, so the effective config can be traced; camera
    /// passwords (`video_url`) are masked.
    pub fn log(&self) {
        for o in &self.overrides {
            tracing::info!(env = %o.vars, set = %redact(&o.set_arg()), "Sedna environment");
        }
        for n in &self.notes {
            tracing::info!(env = %n.var, value = %redact(&n.value), note = %n.note, "Sedna environment");
        }
    }
}
