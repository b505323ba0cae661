//! Checks the types cannot express. Each problem names its key path; `load` positions it.

use std::collections::BTreeSet;
use std::path::Path;

use super::load::KeyPath;
use super::{CloudProtocol, Config};

type Problems = Vec<(KeyPath, String)>;

fn key(dotted: &str) -> KeyPath {
    KeyPath::parse(dotted)
}

fn unit_interval(problems: &mut Problems, path: KeyPath, value: f64) {
    if !(0.0..=1.0).contains(&value) {
        problems.push((path, format!("must be within [0, 1], got {value}")));
    }
}

fn file_exists(problems: &mut Problems, path: KeyPath, file: &Path, what: &str) {
    if !file.as_os_str().is_empty() && !super::resolve_path(file).is_file() {
        problems.push((path, format!("{what} {} does not exist", file.display())));
    }
}

/// Names go into MQTT topics and file names: no separators, wildcards or spaces.
fn topic_safe_name(problems: &mut Problems, path: KeyPath, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        problems.push((
            path,
            format!("{name:?} must be 1–64 characters of A–Z, a–z, 0–9, '-', '_', '.'"),
        ));
    }
}

impl Config {
    /// Every semantic problem, in file order as far as practical. Empty means valid.
    pub fn validate(&self) -> Vec<(KeyPath, String)> {
        let mut p = Problems::new();
        if !self.node.name.is_empty() {
            topic_safe_name(&mut p, key("node.name"), &self.node.name);
        }
        file_exists(
            &mut p,
            key("inference.onnxruntime"),
            &self.inference.onnxruntime,
            "library",
        );
        self.validate_mqtt(&mut p);
        self.validate_cameras(&mut p);
        self.validate_edge(&mut p);
        self.validate_alerts(&mut p);
        self.validate_cloud(&mut p);
        // The LC reporter's own reading of [sedna], so check-config refuses what it would.
        if let Err(e) = crate::sedna::lc::LcSettings::from_config(self) {
            p.push((
                KeyPath::default().key("sedna").key(e.key),
                format!("{:?}: {}", e.value, e.reason),
            ));
        }
        if self.kubeedge.enabled {
            if self.kubeedge.cloudcore_host.is_empty() {
                p.push((
                    key("kubeedge.cloudcore_host"),
                    "is required when kubeedge is enabled".into(),
                ));
            }
            if self.kubeedge.token_file.as_os_str().is_empty() {
                p.push((
                    key("kubeedge.token_file"),
                    "is required when kubeedge is enabled".into(),
                ));
            }
            file_exists(
                &mut p,
                key("kubeedge.token_file"),
                &self.kubeedge.token_file,
                "token file",
            );
        }
        if !(1..=100).contains(&self.output.jpeg_quality) {
            p.push((key("output.jpeg_quality"), "must be within 1..=100".into()));
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            p.push((
                key("http.listen"),
                format!(
                    "{:?} is not an address like 127.0.0.1:9464",
                    self.http.listen
                ),
            ));
        }
        p
    }

    fn validate_mqtt(&self, p: &mut Problems) {
        let m = &self.mqtt;
        if !m.url.is_empty() {
            match url::Url::parse(&m.url) {
                Ok(u) if matches!(u.scheme(), "mqtt" | "mqtts") && u.host_str().is_some() => {}
                Ok(u) if !matches!(u.scheme(), "mqtt" | "mqtts") => p.push((
                    key("mqtt.url"),
                    format!("scheme {:?} is not mqtt:// or mqtts://", u.scheme()),
                )),
                Ok(_) => p.push((key("mqtt.url"), "has no host".into())),
                Err(e) => p.push((key("mqtt.url"), format!("{:?} is not a URL: {e}", m.url))),
            }
        }
        if m.topic_prefix.is_empty()
            || m.topic_prefix.contains(['#', '+'])
            || m.topic_prefix.ends_with('/')
        {
            p.push((
                key("mqtt.topic_prefix"),
                "must be non-empty, without '#', '+' or a trailing '/'".into(),
            ));
        }
        file_exists(
            p,
            key("mqtt.password_file"),
            &m.password_file,
            "password file",
        );
        file_exists(p, key("mqtt.ca_file"), &m.ca_file, "CA file");
        file_exists(p, key("mqtt.cert_file"), &m.cert_file, "certificate file");
        file_exists(p, key("mqtt.key_file"), &m.key_file, "key file");
        if m.cert_file.as_os_str().is_empty() != m.key_file.as_os_str().is_empty() {
            p.push((
                key("mqtt.cert_file"),
                "cert_file and key_file go together".into(),
            ));
        }
        if m.keep_alive_s < 5 {
            p.push((key("mqtt.keep_alive_s"), "must be at least 5".into()));
        }
        if m.stats_interval_s == 0 {
            p.push((key("mqtt.stats_interval_s"), "must be at least 1".into()));
        }
        if m.spool_max_mb == 0 {
            p.push((key("mqtt.spool_max_mb"), "must be at least 1".into()));
        }
    }

    fn validate_cameras(&self, p: &mut Problems) {
        let mut names = BTreeSet::new();
        for (i, cam) in self.cameras.iter().enumerate() {
            let at = |k: &str| KeyPath::default().key("camera").index(i).key(k);
            topic_safe_name(p, at("name"), &cam.name);
            if !names.insert(cam.name.as_str()) {
                p.push((
                    at("name"),
                    format!("camera name {:?} is used twice", cam.name),
                ));
            }
            if !cam.url.contains("://") {
                // A plain path is a video file played as a camera.
                file_exists(p, at("url"), Path::new(&cam.url), "video file");
            } else {
                match url::Url::parse(&cam.url) {
                    Ok(u) if matches!(u.scheme(), "rtsp" | "rtsps" | "rtspt" | "file") => {
                        if u.scheme() == "file" {
                            file_exists(p, at("url"), Path::new(u.path()), "video file");
                        }
                    }
                    Ok(u) => p.push((
                        at("url"),
                        format!(
                            "scheme {:?} is not rtsp://, rtsps:// or file://",
                            u.scheme()
                        ),
                    )),
                    Err(e) => p.push((at("url"), format!("{:?} is not a URL: {e}", cam.url))),
                }
            }
            if !(cam.detect_fps > 0.0 && cam.detect_fps <= 120.0) {
                p.push((
                    at("detect_fps"),
                    format!("must be within (0, 120], got {}", cam.detect_fps),
                ));
            }
            if !(cam.stall_timeout_s >= 0.5 && cam.stall_timeout_s <= 600.0) {
                p.push((
                    at("stall_timeout_s"),
                    "must be within [0.5, 600] seconds".into(),
                ));
            }
            file_exists(
                p,
                at("credentials_file"),
                &cam.credentials_file,
                "credentials file",
            );
        }
    }

    fn validate_edge(&self, p: &mut Problems) {
        let m = &self.edge.model;
        file_exists(p, key("edge.model.path"), &m.path, "model");
        if m.path.as_os_str().is_empty() {
            p.push((key("edge.model.path"), "is required".into()));
        }
        model_input(p, key("edge.model.input"), m.input);
        if m.classes.is_empty() {
            p.push((
                key("edge.model.classes"),
                "must name at least one class".into(),
            ));
        }
        unit_interval(
            p,
            key("edge.model.score_threshold"),
            f64::from(m.score_threshold),
        );
        unit_interval(p, key("edge.model.nms_iou"), f64::from(m.nms_iou));
        threads(p, key("edge.model.intra_threads"), m.intra_threads);
        if let Err(e) = self.edge.hard_example_mining.build() {
            p.push((key("edge.hard_example_mining"), e.to_string()));
        }
        let w = &self.edge.worker;
        let resources = KeyPath::default()
            .key("edge")
            .key("worker")
            .key("resources");
        if w.resources.requests.cpu.milli_value() <= 0 {
            p.push((
                resources.clone().key("requests").key("cpu"),
                "must be more than zero".into(),
            ));
        }
        if w.resources
            .limits
            .cpu
            .as_ref()
            .is_some_and(|q| q.milli_value() <= 0)
        {
            p.push((
                resources.clone().key("limits").key("cpu"),
                "must be more than zero".into(),
            ));
        }
        // Below this a worker cannot even map the model.
        const MIN_MEMORY: f64 = 64.0 * 1024.0 * 1024.0;
        if w.resources
            .limits
            .memory
            .as_ref()
            .is_some_and(|q| q.as_f64() < MIN_MEMORY)
        {
            p.push((
                resources.key("limits").key("memory"),
                "must be at least 64Mi".into(),
            ));
        }
        if let Some(Err(e)) = self.edge.hpa.as_ref().map(|hpa| hpa.validate()) {
            let field = e.field().replace('[', ".").replace(']', "");
            p.push((KeyPath::parse(&format!("edge.hpa.{field}")), e.to_string()));
        }
        if w.replicas == 0 || w.replicas > 64 {
            p.push((key("edge.worker.replicas"), "must be within 1..=64".into()));
        }
        if !(w.restart_backoff_initial_s > 0.0
            && w.restart_backoff_initial_s <= w.restart_backoff_max_s)
        {
            p.push((
                key("edge.worker.restart_backoff_initial_s"),
                "must be positive and not above restart_backoff_max_s".into(),
            ));
        }
    }

    fn validate_alerts(&self, p: &mut Problems) {
        for (i, class) in self.alerts.classes.iter().enumerate() {
            if !self.edge.model.classes.contains(class) {
                p.push((
                    KeyPath::default().key("alerts").key("classes").index(i),
                    format!(
                        "{class:?} is not one of edge.model.classes {:?}",
                        self.edge.model.classes
                    ),
                ));
            }
        }
        unit_interval(p, key("alerts.min_score"), f64::from(self.alerts.min_score));
        if self.alerts.confirm_frames == 0 {
            p.push((key("alerts.confirm_frames"), "must be at least 1".into()));
        }
        if self.alerts.end_after_s.is_nan() || self.alerts.end_after_s <= 0.0 {
            p.push((key("alerts.end_after_s"), "must be positive".into()));
        }
    }

    fn validate_cloud(&self, p: &mut Problems) {
        let c = &self.cloud;
        if !(1..=60_000).contains(&c.timeout_ms) {
            p.push((key("cloud.timeout_ms"), "must be within 1..=60000".into()));
        }
        if c.protocol == CloudProtocol::SednaHttp {
            match url::Url::parse(&c.url) {
                // Sedna's big-model service speaks plain HTTP inside the cluster.
                Ok(u) if u.scheme() == "http" && u.host().is_some() => {}
                _ => p.push((
                    key("cloud.url"),
                    "must be an http:// URL (Sedna's big-model service) with protocol = \"sedna-http\""
                        .into(),
                )),
            }
        }
        model_input(p, key("cloud.model_input"), c.model_input);
        threads(p, key("cloud.intra_threads"), c.intra_threads);
        if c.share_group.is_empty() || c.share_group.contains(['/', '#', '+']) {
            p.push((
                key("cloud.share_group"),
                "must be non-empty, without '/', '#' or '+'".into(),
            ));
        }
        if !(1..=100).contains(&c.jpeg_quality) {
            p.push((key("cloud.jpeg_quality"), "must be within 1..=100".into()));
        }
    }
}

fn model_input(p: &mut Problems, path: KeyPath, [h, w]: [u32; 2]) {
    if h == 0 || w == 0 || h % 32 != 0 || w % 32 != 0 || h > 4096 || w > 4096 {
        p.push((
            path,
            format!("[{h}, {w}] must be positive multiples of 32 up to 4096 (YOLO strides)"),
        ));
    }
}

fn threads(p: &mut Problems, path: KeyPath, n: usize) {
    if !(1..=64).contains(&n) {
        p.push((path, "must be within 1..=64".into()));
    }
}
