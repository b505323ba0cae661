//! `helmetd import-sedna`: a JointInferenceService manifest (sedna.io/v1alpha1) → a complete
//! helmetd config for the edge side, run on the gateway as a host process.
//!
//! The output is the embedded default with values set through toml_edit, so every key is present
//! and keeps its explaining comment. The edge pod's environment is rebuilt as the GM would inject
//! it (cloud Service, HEM, LC, namespace and name) on top of the template's `env`, and goes
//! through the same mapping as `helmetd run` in such a pod ([`super::env`]); container paths are
//! translated to host paths through the pod's hostPath volumes. Every manifest field that has no
//! equivalent is listed in the header as a comment, with the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use helmet_pipelines::hem::HemConfig;
use serde::Deserialize;
use serde_norway::Value as Yaml;
use toml_edit::{ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

use super::env::{self, EnvOverride};
use crate::autoscaler::{HpaSpec, Quantity};
use crate::config::{ConfigError, DEFAULT_CONFIG};

/// The API version whose fields this import knows.
pub const API_VERSION: &str = "sedna.io/v1alpha1";
/// Port and LC address the GM injects (its Service port; `localController.server` default).
const GM_BIG_MODEL_PORT: &str = "5000";
const GM_LC_SERVER: &str = "http://localhost:9100";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Manifest { path: PathBuf, message: String },
}

impl ImportError {
    /// A manifest that cannot be imported is a bad config: EX_CONFIG.
    pub const EXIT_CODE: i32 = ConfigError::EXIT_CODE;
}

/// Reads `path` and imports the JointInferenceService in it.
pub fn import_file(path: &Path) -> Result<String, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    import_manifest(&text, &path.display().to_string()).map_err(|message| ImportError::Manifest {
        path: path.to_path_buf(),
        message,
    })
}

/// The helmetd config for the one JointInferenceService in `text` (other documents of the file,
/// such as Model CRs, are listed as not imported). `origin` is named in the header.
pub fn import_manifest(text: &str, origin: &str) -> Result<String, String> {
    let mut services = Vec::new();
    let mut others = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Yaml::deserialize(document).map_err(|e| format!("not valid YAML: {e}"))?;
        match value.get("kind").and_then(Yaml::as_str) {
            Some("JointInferenceService") => services.push(value),
            kind => others.push(format!(
                "document {} (kind {}) is not a JointInferenceService",
                i + 1,
                kind.unwrap_or("unknown")
            )),
        }
    }
    let service = match services.len() {
        1 => services.remove(0),
        0 => return Err("holds no JointInferenceService (kind: JointInferenceService)".into()),
        n => {
            return Err(format!(
                "holds {n} JointInferenceServices; import one at a time"
            ));
        }
    };
    let mut import = Import::new(&service)?;
    import.run(&service)?;
    let mut header = import.header(origin, &service);
    for other in others {
        header.push_str(&format!("# Not imported: {other}.\n"));
    }
    Ok(format!("{header}\n{}", import.doc))
}

fn get<'a>(value: &'a Yaml, path: &[&str]) -> Option<&'a Yaml> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

/// A scalar as text: strings unquoted, numbers and booleans as written.
fn text(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A value as a comment shows it.
fn shown(value: &Yaml) -> String {
    match value {
        Yaml::Null => "null".into(),
        Yaml::String(s) => format!("{s:?}"),
        Yaml::Sequence(_) => "[]".into(),
        Yaml::Mapping(_) => "{}".into(),
        Yaml::Tagged(t) => shown(&t.value),
        other => text(other).unwrap_or_default(),
    }
}

/// YAML → TOML; `None` for a null (TOML has none: the key is left out, as Kubernetes reads it).
fn toml_value(value: &Yaml) -> Option<Value> {
    Some(match value {
        Yaml::Null => return None,
        Yaml::Bool(b) => Value::from(*b),
        Yaml::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => Value::from(n.as_f64()?),
        },
        Yaml::String(s) => Value::from(s.as_str()),
        Yaml::Sequence(items) => Value::Array(items.iter().filter_map(toml_value).collect()),
        Yaml::Mapping(map) => {
            let mut table = InlineTable::new();
            for (k, v) in map {
                if let (Some(k), Some(v)) = (text(k), toml_value(v)) {
                    table.insert(&k, v);
                }
            }
            Value::InlineTable(table)
        }
        Yaml::Tagged(t) => return toml_value(&t.value),
    })
}

/// Reasons for fields without equivalent, by path prefix (indices written `[*]`); first match.
const REASONS: [(&str, &str); 13] = [
    ("metadata", "Kubernetes object metadata"),
    ("status", "the object's status, not configuration"),
    (
        "spec.edgeWorker.model",
        "a sedna.io Model CR: helmetd loads the ONNX file at [edge.model] path (in a pod, MODEL_URL)",
    ),
    (
        "spec.edgeWorker.template.spec.nodeName",
        "helmetd runs on the gateway itself ([node] name; empty: the host name)",
    ),
    (
        "spec.edgeWorker.template.spec.hostNetwork",
        "helmetd is a host process (Sedna's pod needed it to reach the LC on localhost:9100)",
    ),
    (
        "spec.edgeWorker.template.spec.volumes",
        "used only to turn container paths in env into host paths",
    ),
    (
        "spec.edgeWorker.template.spec.containers[*].volumeMounts",
        "used only to turn container paths in env into host paths",
    ),
    (
        "spec.edgeWorker.template.spec.containers[*].resources.requests.memory",
        "helmetd bounds a worker's memory by limits.memory only",
    ),
    (
        "spec.edgeWorker.template.spec.containers[*].resources",
        "helmetd's workers take cpu and memory only",
    ),
    (
        "spec.edgeWorker.template.spec.containers[*]",
        "container settings; helmetd runs as a host process",
    ),
    (
        "spec.edgeWorker.template",
        "pod settings; helmetd runs as a host process",
    ),
    (
        "spec.cloudWorker",
        "the cloud side: the Sedna cloud worker itself (cloud.protocol = \"sedna-http\") or `helmetd cloud`",
    ),
    ("", "no helmetd equivalent"),
];

/// `a.b[3].c` → `a.b[*].c`.
fn pattern_of(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[*");
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

fn under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || path.starts_with(&format!("{prefix}."))
        || path.starts_with(&format!("{prefix}["))
}

/// One field not carried over.
struct Unmapped {
    path: String,
    value: String,
    reason: String,
}

struct Import {
    doc: DocumentMut,
    name: String,
    namespace: String,
    /// Manifest paths carried over (whole subtrees).
    used: Vec<String>,
    /// Reasons found while importing, by exact path prefix; before [`REASONS`].
    reasons: Vec<(String, String)>,
    /// Fields listed directly (env entries).
    unmapped: Vec<Unmapped>,
    /// `key = value (source)` lines for the header.
    set: Vec<String>,
    notes: Vec<String>,
}

const EDGE: &str = "spec.edgeWorker";
const CONTAINER: &str = "spec.edgeWorker.template.spec.containers[0]";

impl Import {
    fn new(service: &Yaml) -> Result<Self, String> {
        let name = get(service, &["metadata", "name"])
            .and_then(Yaml::as_str)
            .ok_or("metadata.name is missing")?
            .to_string();
        let namespace = get(service, &["metadata", "namespace"])
            .and_then(Yaml::as_str)
            .unwrap_or("default")
            .to_string();
        let doc = DEFAULT_CONFIG
            .parse::<DocumentMut>()
            .map_err(|e| format!("the embedded default config does not parse: {e}"))?;
        let mut used = vec!["kind".to_string(), "metadata.name".into()];
        if get(service, &["metadata", "namespace"]).is_some() {
            used.push("metadata.namespace".into());
        }
        let mut reasons = Vec::new();
        match service.get("apiVersion").and_then(Yaml::as_str) {
            Some(API_VERSION) => used.push("apiVersion".into()),
            _ => reasons.push((
                "apiVersion".to_string(),
                format!("not {API_VERSION}: fields were read as that version's"),
            )),
        }
        Ok(Self {
            doc,
            name,
            namespace,
            used,
            reasons,
            unmapped: Vec::new(),
            set: Vec::new(),
            notes: Vec::new(),
        })
    }

    fn run(&mut self, service: &Yaml) -> Result<(), String> {
        let edge = get(service, &["spec", "edgeWorker"])
            .ok_or("spec.edgeWorker is missing (the CRD requires it)")?;
        let hem = self.hard_example_mining(edge);
        self.hpa(edge);
        let pod = get(edge, &["template", "spec"]);
        let containers = pod
            .and_then(|p| p.get("containers"))
            .and_then(Yaml::as_sequence);
        let container = containers.and_then(|c| c.first());
        for extra in 1..containers.map_or(0, Vec::len) {
            self.reasons.push((
                format!("{EDGE}.template.spec.containers[{extra}]"),
                "only the first container is the edge worker".into(),
            ));
        }
        if let Some(container) = container {
            self.resources(container);
        }
        let mounts = pod
            .zip(container)
            .map(|(pod, container)| host_mounts(pod, container))
            .unwrap_or_default();
        self.environment(container, &mounts, hem)?;
        self.collect_unmapped(service);
        Ok(())
    }

    /// `hardExampleMining` → `HEM_NAME` and `HEM_PARAMETERS` (as the GM marshals them), if
    /// helmetd has the rule; else the default rule stays and the reason is listed.
    fn hard_example_mining(&mut self, edge: &Yaml) -> Option<(String, String)> {
        let path = format!("{EDGE}.hardExampleMining");
        let hem = edge.get("hardExampleMining")?;
        let name = hem.get("name").and_then(text)?;
        let mut parameters = BTreeMap::new();
        let mut list = Vec::new();
        for p in hem
            .get("parameters")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
        {
            let key = p.get("key").and_then(text).unwrap_or_default();
            let value = p.get("value").and_then(text).unwrap_or_default();
            list.push(serde_json::json!({"key": key, "value": value}));
            parameters.insert(key, value);
        }
        match (HemConfig {
            name: name.clone(),
            parameters,
        })
        .build()
        {
            Ok(_) => {
                self.used.push(path);
                let json = if list.is_empty() {
                    "null".to_string()
                } else {
                    serde_json::Value::Array(list).to_string()
                };
                Some((name, json))
            }
            Err(e) => {
                self.reasons.push((
                    path,
                    format!("not carried over ({e}); the default rule stays"),
                ));
                None
            }
        }
    }

    /// `hpa` → `[edge.hpa]`, when helmetd's autoscaler accepts it.
    fn hpa(&mut self, edge: &Yaml) {
        let path = format!("{EDGE}.hpa");
        let Some(hpa) = edge.get("hpa").filter(|h| !h.is_null()) else {
            return;
        };
        let checked = HpaSpec::deserialize(hpa.clone())
            .map_err(|e| e.to_string())
            .and_then(|spec| spec.validate().map_err(|e| e.to_string()));
        if let Err(e) = checked {
            self.reasons.push((
                path,
                format!("not carried over ({e}); the worker count stays fixed"),
            ));
            return;
        }
        let mut table = Table::new();
        let mut keys = vec!["minReplicas", "maxReplicas", "metrics", "behavior"];
        let rest: Vec<&str> = hpa
            .as_mapping()
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.as_str())
            .filter(|k| !keys.contains(k))
            .collect();
        keys.extend(rest);
        for key in keys {
            if let Some(value) = hpa.get(key).and_then(toml_value) {
                table.insert(key, Item::Value(value));
            }
        }
        table.decor_mut().set_prefix(
            "\n# Autoscaling with the fields and algorithm of Kubernetes autoscaling/v2, from\n\
             # spec.edgeWorker.hpa (docs/architecture.md); edge.worker.replicas is then unused.\n",
        );
        strip_example(self.doc.as_table_mut(), "# [edge.hpa]");
        if let Some(edge) = self.doc.get_mut("edge").and_then(Item::as_table_mut) {
            edge.insert("hpa", Item::Table(table));
        }
        self.used.push(path);
        self.set
            .push("[edge.hpa] = spec.edgeWorker.hpa (checked by helmetd's autoscaler)".into());
    }

    /// The container's cpu request and limit and memory limit → `[edge.worker] resources`.
    fn resources(&mut self, container: &Yaml) {
        let Some(resources) = container.get("resources") else {
            return;
        };
        let mut parsed = |section: &str, name: &str| -> Option<String> {
            let value = get(resources, &[section, name])?;
            let path = format!("{CONTAINER}.resources.{section}.{name}");
            match text(value).map(|t| (Quantity::parse(&t), t)) {
                Some((Ok(_), t)) => {
                    self.used.push(path);
                    Some(t)
                }
                Some((Err(e), _)) => {
                    self.reasons.push((path, format!("not carried over: {e}")));
                    None
                }
                None => None,
            }
        };
        let limit_cpu = parsed("limits", "cpu");
        let limit_memory = parsed("limits", "memory");
        // Kubernetes: a limit without a request makes the request equal to the limit.
        let request_cpu = parsed("requests", "cpu").or_else(|| limit_cpu.clone());
        let Some(request_cpu) = request_cpu else {
            self.notes.push(
                "the container requests no cpu: [edge.worker] resources keeps its default".into(),
            );
            return;
        };
        let mut requests = InlineTable::new();
        requests.insert("cpu", request_cpu.into());
        let mut limits = InlineTable::new();
        if let Some(cpu) = limit_cpu {
            limits.insert("cpu", cpu.into());
        }
        if let Some(memory) = limit_memory {
            limits.insert("memory", memory.into());
        }
        let mut value = InlineTable::new();
        value.insert("requests", Value::InlineTable(requests));
        value.insert("limits", Value::InlineTable(limits));
        let value = Value::InlineTable(value);
        self.set.push(format!(
            "edge.worker.resources = {value} ({CONTAINER}.resources)"
        ));
        set_key(&mut self.doc, "edge.worker.resources", value);
    }

    /// The edge pod's environment as the GM would make it, through Sedna's env contract.
    fn environment(
        &mut self,
        container: Option<&Yaml>,
        mounts: &[(String, String)],
        hem: Option<(String, String)>,
    ) -> Result<(), String> {
        let env_path = format!("{CONTAINER}.env");
        let mut vars = BTreeMap::new();
        let mut declared = Vec::new();
        let entries = container
            .and_then(|c| c.get("env"))
            .and_then(Yaml::as_sequence);
        for (i, entry) in entries.into_iter().flatten().enumerate() {
            let name = entry.get("name").and_then(text).unwrap_or_default();
            let path = format!("{env_path}[{i}]");
            let Some(value) = entry.get("value").and_then(text) else {
                self.unmapped.push(Unmapped {
                    path,
                    value: name,
                    reason: "a value from elsewhere (valueFrom): set it in the config".into(),
                });
                continue;
            };
            let value = match host_path(&value, mounts) {
                Some(host) => {
                    self.notes.push(format!(
                        "env {name}: container path {value} is {host} on the host"
                    ));
                    host
                }
                None => value,
            };
            declared.push((i, name.clone(), value.clone()));
            vars.insert(name, value);
        }
        // What the GM injects, after (so over) the template's own variables.
        let mut injected = vec![
            (
                "BIG_MODEL_IP",
                format!("{}-cloud.{}", self.name.to_lowercase(), self.namespace),
            ),
            ("BIG_MODEL_PORT", GM_BIG_MODEL_PORT.to_string()),
            ("LC_SERVER", GM_LC_SERVER.to_string()),
            ("NAMESPACE", self.namespace.clone()),
            ("SERVICE_NAME", self.name.clone()),
        ];
        if let Some((name, parameters)) = hem {
            injected.push(("HEM_NAME", name));
            injected.push(("HEM_PARAMETERS", parameters));
        }
        for (name, value) in injected {
            vars.insert(name.to_string(), value);
        }
        let mapped = env::overrides_from_env(|n| vars.get(n).cloned())
            .map_err(|e| format!("{e} (the edge pod's environment, as the GM would set it)"))?;
        for EnvOverride { vars, key, value } in &mapped.overrides {
            self.set.push(format!("{key} = {value} (env {vars})"));
            if *key == "camera" {
                insert_cameras(&mut self.doc, value.clone());
            } else {
                set_key(&mut self.doc, key, value.clone());
            }
        }
        self.used.push(env_path.clone());
        let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        let overridden = |name: &str| {
            mapped
                .overrides
                .iter()
                .any(|o| o.vars.split(", ").any(|v| same(v, name)))
        };
        for note in &mapped.notes {
            if overridden(&note.var) {
                self.notes.push(format!(
                    "env {} = {:?}: {}",
                    note.var, note.value, note.note
                ));
            }
        }
        for (i, name, value) in declared {
            if overridden(&name) {
                continue;
            }
            let note = mapped.notes.iter().find(|n| same(&n.var, &name));
            self.unmapped.push(Unmapped {
                path: format!("{env_path}[{i}]"),
                value: format!("{name}={value:?}"),
                reason: note.map_or_else(
                    || "an environment variable helmetd does not read".to_string(),
                    |n| n.note.clone(),
                ),
            });
        }
        Ok(())
    }

    fn collect_unmapped(&mut self, service: &Yaml) {
        let mut leaves = Vec::new();
        collect_leaves(service, String::new(), &mut leaves);
        for (path, value) in leaves {
            if self.used.iter().any(|u| under(&path, u)) {
                continue;
            }
            let pattern = pattern_of(&path);
            let reason = self
                .reasons
                .iter()
                .find(|(prefix, _)| under(&path, prefix))
                .map(|(_, r)| r.clone())
                .or_else(|| {
                    REASONS
                        .iter()
                        .find(|(prefix, _)| under(&pattern, prefix))
                        .map(|(_, r)| r.to_string())
                })
                .unwrap_or_default();
            self.unmapped.push(Unmapped {
                path,
                value,
                reason,
            });
        }
    }

    fn header(&self, origin: &str, service: &Yaml) -> String {
        let api = service
            .get("apiVersion")
            .and_then(Yaml::as_str)
            .unwrap_or("?");
        let (origin, api) = (comment_safe(origin), comment_safe(api));
        let (namespace, name) = (comment_safe(&self.namespace), comment_safe(&self.name));
        let mut h = format!(
            "# Imported by `helmetd import-sedna` from {origin}:\n\
             # JointInferenceService {namespace}/{name} ({api}). Check it with `helmetd check-config`.\n\
             # Every key is present; the default's comments below explain them.\n#\n\
             # Set from the manifest (env: the edge pod's variables, as the GM sets them):\n"
        );
        for line in &self.set {
            h.push_str(&format!("#   {}\n", comment_safe(line)));
        }
        if !self.notes.is_empty() {
            h.push_str("#\n# Notes:\n");
            for note in &self.notes {
                h.push_str(&format!("#   {}\n", comment_safe(note)));
            }
        }
        if !self.unmapped.is_empty() {
            h.push_str("#\n# Manifest fields with no helmetd equivalent, by reason:\n");
            let mut by_reason: Vec<(&str, Vec<&Unmapped>)> = Vec::new();
            for u in &self.unmapped {
                match by_reason.iter_mut().find(|(r, _)| *r == u.reason) {
                    Some((_, list)) => list.push(u),
                    None => by_reason.push((&u.reason, vec![u])),
                }
            }
            for (reason, fields) in by_reason {
                h.push_str(&format!("#   {}:\n", comment_safe(reason)));
                for u in fields {
                    let (path, value) = (comment_safe(&u.path), comment_safe(&u.value));
                    h.push_str(&format!("#     {path} = {value}\n"));
                }
            }
        }
        h
    }
}

/// Manifest text as it may appear in a TOML comment, which cannot hold a line break or another
/// control character but a tab: a quoted YAML string can.
fn comment_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' => c.to_string(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn collect_leaves(value: &Yaml, path: String, out: &mut Vec<(String, String)>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Yaml::Mapping(map) if !map.is_empty() => {
            for (k, v) in map {
                collect_leaves(v, join(&text(k).unwrap_or_else(|| shown(k))), out);
            }
        }
        Yaml::Sequence(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                collect_leaves(v, format!("{path}[{i}]"), out);
            }
        }
        Yaml::Tagged(t) => collect_leaves(&t.value, path, out),
        other => out.push((path, shown(other))),
    }
}

/// `(mountPath, host path)` of the container's hostPath volumes, longest mount first.
fn host_mounts(pod: &Yaml, container: &Yaml) -> Vec<(String, String)> {
    let volumes = pod.get("volumes").and_then(Yaml::as_sequence);
    let host_of = |name: &str| {
        volumes.into_iter().flatten().find_map(|v| {
            (v.get("name").and_then(Yaml::as_str) == Some(name))
                .then(|| get(v, &["hostPath", "path"]).and_then(Yaml::as_str))
                .flatten()
        })
    };
    let mut mounts: Vec<(String, String)> = container
        .get("volumeMounts")
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let mount = m.get("mountPath").and_then(Yaml::as_str)?;
            let host = host_of(m.get("name").and_then(Yaml::as_str)?)?;
            Some((
                mount.trim_end_matches('/').to_string(),
                host.trim_end_matches('/').to_string(),
            ))
        })
        .collect();
    mounts.sort_by_key(|(mount, _)| std::cmp::Reverse(mount.len()));
    mounts
}

fn host_path(path: &str, mounts: &[(String, String)]) -> Option<String> {
    mounts.iter().find_map(|(mount, host)| {
        let rest = path.strip_prefix(mount.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then(|| format!("{host}{rest}"))
    })
}

/// Sets a dotted key of the default; an inline table over a standard table sets its keys one by
/// one, and a replaced value keeps its decor, so the default's comments stay in place.
fn set_key(doc: &mut DocumentMut, dotted: &str, value: Value) {
    let mut table = doc.as_table_mut();
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let Some(last) = parts.pop() else {
        return;
    };
    for part in parts {
        let Some(next) = table
            .entry(part)
            .or_insert(toml_edit::table())
            .as_table_mut()
        else {
            return;
        };
        table = next;
    }
    set_in(table, last, value);
}

fn set_in(table: &mut Table, key: &str, value: Value) {
    match (table.get_mut(key), value) {
        (Some(Item::Table(inner)), Value::InlineTable(values)) => {
            for (k, v) in values {
                set_in(inner, &k, v);
            }
        }
        (Some(Item::Value(old)), mut new) => {
            *new.decor_mut() = old.decor().clone();
            *old = new;
        }
        (_, new) => {
            table.insert(key, Item::Value(new));
        }
    }
}

/// `[[camera]]` tables from the env mapping's `camera = [...]`, placed where the default's
/// commented example is (after `[mqtt]`), which they replace.
fn insert_cameras(doc: &mut DocumentMut, cameras: Value) {
    let Value::Array(cameras) = cameras else {
        return;
    };
    let position = doc
        .get("mqtt")
        .and_then(Item::as_table)
        .and_then(Table::position);
    let mut tables = ArrayOfTables::new();
    for camera in cameras {
        if let Value::InlineTable(camera) = camera {
            let mut table = camera.into_table();
            table.fmt();
            if let Some(position) = position {
                table.set_position(position);
            }
            table
                .decor_mut()
                .set_prefix("\n# The camera of the manifest's video_url (docs/sedna.md).\n");
            tables.push(table);
        }
    }
    strip_example(doc.as_table_mut(), "# [[camera]]");
    doc.insert("camera", Item::ArrayOfTables(tables));
}

/// Removes the commented-out example whose first line is `first_line` from the comment above a
/// table: the real table replaces it.
fn strip_example(table: &mut Table, first_line: &str) -> bool {
    let prefix = table
        .decor()
        .prefix()
        .and_then(|p| p.as_str())
        .map(str::to_string);
    if let Some(prefix) = prefix
        && prefix.lines().any(|l| l.trim_end() == first_line)
    {
        table
            .decor_mut()
            .set_prefix(without_paragraph(&prefix, first_line));
        return true;
    }
    table.iter_mut().any(|(_, item)| match item {
        Item::Table(t) => strip_example(t, first_line),
        _ => false,
    })
}

/// `text` without the paragraph (lines between blank lines) that holds `line`, and without the
/// blank line that would then double another.
fn without_paragraph(text: &str, line: &str) -> String {
    let mut out = String::new();
    let mut paragraph: Vec<&str> = Vec::new();
    let mut last_blank = false;
    let mut lines = text.split_inclusive('\n').peekable();
    while let Some(l) = lines.next() {
        let blank = l.trim().is_empty();
        if !blank {
            paragraph.push(l);
        }
        if blank || lines.peek().is_none() {
            if !paragraph.is_empty() && !paragraph.iter().any(|p| p.trim_end() == line) {
                paragraph.iter().for_each(|p| out.push_str(p));
                last_blank = false;
            }
            paragraph.clear();
            if blank && !last_blank {
                out.push_str(l);
                last_blank = true;
            }
        }
    }
    out
}
