//! Checks the types cannot express. Each problem names its key path; `load` positions it.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::path::Path;

use super::load::KeyPath;
use super::{CameraConfig, CloudProtocol, Config};

type Problems = Vec<(KeyPath, String)>;

fn key(dotted: &str) -> KeyPath {
    KeyPath::parse(dotted)
}

/// One number of the config and the values `run` can live with.
struct Number {
    key: KeyPath,
    value: f64,
    range: RangeInclusive<f64>,
}

/// Seconds in a day, the unit of the longest periods in [`Config::numbers`].
const DAY: f64 = 86_400.0;

fn number(key: KeyPath, value: impl Into<Num>, range: RangeInclusive<f64>) -> Number {
    Number {
        key,
        value: value.into().0,
        range,
    }
}

/// Any numeric field as an `f64` (exact for every bound used here).
struct Num(f64);

macro_rules! num_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Num {
            #[allow(clippy::cast_precision_loss, clippy::cast_lossless)]
            fn from(v: $t) -> Num {
                Num(v as f64)
            }
        }
    )*};
}
num_from!(f64, f32, u64, u32, u16, u8, usize);

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
        for n in self.numbers() {
            // Written so that NaN fails too.
            if !n.range.contains(&n.value) {
                p.push((
                    n.key,
                    format!(
                        "must be within [{}, {}], got {}",
                        n.range.start(),
                        n.range.end(),
                        n.value
                    ),
                ));
            }
        }
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
        // The LC reporter's own reading of [sedna], so check-config refuses what it would
        // (once: a period out of range is already reported).
        if let Err(e) = self.sedna.lc_endpoint() {
            let path = KeyPath::default().key("sedna").key(e.key);
            if !p.iter().any(|(k, _)| *k == path) {
                p.push((path, format!("{:?}: {}", e.value, e.reason)));
            }
        }
        self.validate_kubeedge(&mut p);
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

    /// Every number in the config with the values `run` can live with: finite (TOML has `inf`
    /// and `nan`), not zero where it is a period (a zero period spins), and small enough that
    /// turning it into a `Duration`, a byte count or an `Instant` cannot overflow. A new numeric
    /// key belongs here; a test sets each number of the default config to `inf` and to 2^63-1.
    fn numbers(&self) -> Vec<Number> {
        let mut n = self.mqtt_edge_and_alert_numbers();
        n.extend(self.integration_and_output_numbers());
        n.extend(self.connection_numbers());
        n.extend(self.camera_numbers());
        n
    }

    /// The `[mqtt]`, `[edge]` and `[alerts]` part of [`Self::numbers`].
    fn mqtt_edge_and_alert_numbers(&self) -> Vec<Number> {
        vec![
            number(
                key("mqtt.keep_alive_s"),
                self.mqtt.keep_alive_s,
                5.0..=65_535.0,
            ),
            number(
                key("mqtt.spool_max_mb"),
                self.mqtt.spool_max_mb,
                1.0..=1_048_576.0,
            ),
            number(
                key("mqtt.spool_max_age_s"),
                self.mqtt.spool_max_age_s,
                1.0..=3650.0 * DAY,
            ),
            number(
                key("mqtt.stats_interval_s"),
                self.mqtt.stats_interval_s,
                1.0..=DAY,
            ),
            number(
                key("edge.model.score_threshold"),
                self.edge.model.score_threshold,
                0.0..=1.0,
            ),
            number(
                key("edge.model.nms_iou"),
                self.edge.model.nms_iou,
                0.0..=1.0,
            ),
            number(
                key("edge.model.intra_threads"),
                self.edge.model.intra_threads,
                1.0..=64.0,
            ),
            number(
                key("edge.worker.replicas"),
                self.edge.worker.replicas,
                1.0..=64.0,
            ),
            number(
                key("edge.worker.standby"),
                self.edge.worker.standby,
                0.0..=4.0,
            ),
            number(
                key("edge.worker.restart_backoff_initial_s"),
                self.edge.worker.restart_backoff_initial_s,
                0.01..=3600.0,
            ),
            number(
                key("edge.worker.restart_backoff_max_s"),
                self.edge.worker.restart_backoff_max_s,
                0.01..=3600.0,
            ),
            number(
                key("edge.worker.ready_timeout_s"),
                self.edge.worker.ready_timeout_s,
                10.0..=3600.0,
            ),
            number(key("alerts.min_score"), self.alerts.min_score, 0.0..=1.0),
            number(
                key("alerts.confirm_frames"),
                self.alerts.confirm_frames,
                1.0..=10_000.0,
            ),
            number(
                key("alerts.end_after_s"),
                self.alerts.end_after_s,
                0.1..=DAY,
            ),
        ]
    }

    /// The `[cloud]`, `[kubeedge]`, `[sedna]` and `[output]` part of [`Self::numbers`].
    fn integration_and_output_numbers(&self) -> Vec<Number> {
        vec![
            number(
                key("cloud.timeout_ms"),
                self.cloud.timeout_ms,
                1.0..=60_000.0,
            ),
            number(
                key("cloud.budget_per_s"),
                self.cloud.budget_per_s,
                0.0..=1_000.0,
            ),
            number(
                key("cloud.ask_again_after_s"),
                self.cloud.ask_again_after_s,
                0.0..=DAY,
            ),
            number(
                key("cloud.intra_threads"),
                self.cloud.intra_threads,
                1.0..=64.0,
            ),
            number(
                key("cloud.jpeg_quality"),
                self.cloud.jpeg_quality,
                1.0..=100.0,
            ),
            number(
                key("cloud.max_image_side"),
                self.cloud.max_image_side,
                64.0..=f64::from(super::MAX_IMAGE_SIDE),
            ),
            number(
                key("kubeedge.cert_port"),
                self.kubeedge.cert_port,
                1.0..=65_535.0,
            ),
            number(
                key("kubeedge.websocket_port"),
                self.kubeedge.websocket_port,
                1.0..=65_535.0,
            ),
            // cloudcore drops a node silent for its keepaliveInterval (30 s by default).
            number(
                key("kubeedge.keepalive_seconds"),
                self.kubeedge.keepalive_seconds,
                1.0..=600.0,
            ),
            // The lease lasts four times this.
            number(
                key("kubeedge.lease_seconds"),
                self.kubeedge.lease_seconds,
                1.0..=3600.0,
            ),
            number(key("sedna.lc_period_s"), self.sedna.lc_period_s, 1.0..=DAY),
            number(
                key("sedna.max_body_mb"),
                self.sedna.max_body_mb,
                1.0..=1024.0,
            ),
            number(
                key("output.jpeg_quality"),
                self.output.jpeg_quality,
                1.0..=100.0,
            ),
            number(key("output.max_mb"), self.output.max_mb, 1.0..=1_048_576.0),
        ]
    }

    fn connection_numbers(&self) -> Vec<Number> {
        let mut n = Vec::new();
        // The HTTP servers' connection caps stay well below the units' LimitNOFILE (16384).
        for (table, cap, header_s, body_s) in [
            (
                "http",
                self.http.max_connections,
                self.http.header_timeout_s,
                self.http.body_timeout_s,
            ),
            (
                "sedna",
                self.sedna.max_connections,
                self.sedna.header_timeout_s,
                self.sedna.body_timeout_s,
            ),
        ] {
            let at = |k: &str| KeyPath::default().key(table).key(k);
            n.push(number(at("max_connections"), cap, 1.0..=4096.0));
            n.push(number(at("header_timeout_s"), header_s, 1.0..=3600.0));
            n.push(number(at("body_timeout_s"), body_s, 1.0..=3600.0));
        }
        n
    }

    fn camera_numbers(&self) -> Vec<Number> {
        let mut n = Vec::new();
        for (i, cam) in self.cameras.iter().enumerate() {
            let at = |k: &str| KeyPath::default().key("camera").index(i).key(k);
            n.push(number(at("detect_fps"), cam.detect_fps, 0.01..=120.0));
            n.push(number(
                at("stall_timeout_s"),
                cam.stall_timeout_s,
                0.5..=600.0,
            ));
            let motion = |k: &str| at("motion").key(k);
            let m = &cam.motion;
            n.push(number(motion("threshold"), m.threshold, 1.0..=255.0));
            n.push(number(motion("min_area"), m.min_area, 0.0..=1.0));
            n.push(number(motion("max_skip_s"), m.max_skip_s, 0.5..=3600.0));
        }
        n
    }

    fn validate_kubeedge(&self, p: &mut Problems) {
        let k = &self.kubeedge;
        if !k.enabled {
            return;
        }
        if k.cloudcore_host.is_empty() {
            p.push((
                key("kubeedge.cloudcore_host"),
                "is required when kubeedge is enabled".into(),
            ));
        }
        if k.token_file.as_os_str().is_empty() {
            p.push((
                key("kubeedge.token_file"),
                "is required when kubeedge is enabled".into(),
            ));
        }
        file_exists(p, key("kubeedge.token_file"), &k.token_file, "token file");
        // The name becomes the Node's name: Kubernetes refuses anything else, and cloudcore only
        // after the certificate was issued.
        let (path, name) = if !k.node_name.is_empty() {
            (key("kubeedge.node_name"), k.node_name.clone())
        } else if !self.node.name.is_empty() {
            (key("node.name"), self.node.name.clone())
        } else {
            (key("kubeedge.node_name"), self.node_name())
        };
        if !is_dns_subdomain(&name) {
            p.push((
                path,
                format!(
                    "{name:?} is not a Kubernetes node name (a DNS-1123 subdomain: at most 253 \
                     characters of a-z, 0-9, '-' and '.', each dot-separated part starting and \
                     ending with a letter or digit)"
                ),
            ));
        }
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
                    Ok(u) if u.scheme() == "rtsp" => {}
                    Ok(u) if u.scheme() == "file" => {
                        file_exists(p, at("url"), Path::new(u.path()), "video file");
                    }
                    // rtspsrc could speak these, but ingest gives it no CA or certificate
                    // check to use, and a TLS camera accepted blindly is no better than rtsp://.
                    Ok(u) if u.scheme().starts_with("rtsp") => p.push((
                        at("url"),
                        format!(
                            "scheme {:?} is not supported: cameras are read over rtsp:// (put the \
                             link in a VPN or VLAN for confidentiality) or from files",
                            u.scheme()
                        ),
                    )),
                    Ok(u) => p.push((
                        at("url"),
                        format!("scheme {:?} is not rtsp:// or file://", u.scheme()),
                    )),
                    Err(e) => p.push((at("url"), format!("{:?} is not a URL: {e}", cam.url))),
                }
            }
            file_exists(
                p,
                at("credentials_file"),
                &cam.credentials_file,
                "credentials file",
            );
            validate_camera_areas(p, i, cam);
            validate_schedule(p, i, cam);
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
        if w.restart_backoff_initial_s > w.restart_backoff_max_s {
            p.push((
                key("edge.worker.restart_backoff_initial_s"),
                "must not be above restart_backoff_max_s".into(),
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
    }

    fn validate_cloud(&self, p: &mut Problems) {
        let c = &self.cloud;
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
        if c.share_group.is_empty() || c.share_group.contains(['/', '#', '+']) {
            p.push((
                key("cloud.share_group"),
                "must be non-empty, without '/', '#' or '+'".into(),
            ));
        }
    }
}

/// The most points a zone or mask may have: each detection is tested against every edge.
pub const MAX_POLYGON_POINTS: usize = 256;

/// What is wrong with a configured polygon, and the point to blame when there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct PolygonProblem {
    pub point: Option<usize>,
    pub reason: String,
}

/// A configured polygon's points, checked, without an explicit closing point (last == first) and
/// without repeats of a point: at least 3 distinct points, each finite and within [0, 1], a
/// non-zero area and no edge crossing or touching another. The one reading of a polygon,
/// shared by check-config and the zones built from the config.
pub fn polygon_points(points: &[[f64; 2]]) -> Result<Vec<(f64, f64)>, PolygonProblem> {
    let problem = |point, reason: String| PolygonProblem { point, reason };
    if points.len() > MAX_POLYGON_POINTS + 1 {
        return Err(problem(
            None,
            format!(
                "has {} points, at most {MAX_POLYGON_POINTS} are allowed",
                points.len()
            ),
        ));
    }
    for (i, [x, y]) in points.iter().enumerate() {
        // Written so that NaN fails too.
        if !((0.0..=1.0).contains(x) && (0.0..=1.0).contains(y)) {
            return Err(problem(
                Some(i),
                format!("[{x}, {y}] must be fractions of the frame within [0, 1]"),
            ));
        }
    }
    let mut ring: Vec<(f64, f64)> = Vec::with_capacity(points.len());
    for &[x, y] in points {
        if ring.last() != Some(&(x, y)) {
            ring.push((x, y));
        }
    }
    while ring.len() > 1 && ring.first() == ring.last() {
        ring.pop();
    }
    if ring.len() < 3 {
        return Err(problem(
            None,
            format!(
                "has {} distinct point(s), a polygon needs at least 3",
                ring.len()
            ),
        ));
    }
    // Before the crossing check, which would call a line of points folded back on itself a
    // crossing.
    let on_one_line = ring[2..]
        .iter()
        .all(|&p| cross(ring[0], ring[1], p).abs() < 1e-12);
    if on_one_line {
        return Err(problem(
            None,
            "has no area (its points are on one line)".into(),
        ));
    }
    if let Some((a, b)) = crossing_edges(&ring) {
        return Err(problem(
            None,
            format!(
                "crosses itself: the edge from point {a} meets the edge from point {b} (list the \
                 points in order around the area)"
            ),
        ));
    }
    if signed_area(&ring).abs() < 1e-9 {
        return Err(problem(None, "has no area".into()));
    }
    Ok(ring)
}

fn signed_area(ring: &[(f64, f64)]) -> f64 {
    let n = ring.len();
    (0..n)
        .map(|i| {
            let (a, b) = (ring[i], ring[(i + 1) % n]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum::<f64>()
        / 2.0
}

/// The first two edges (by their starting points) that cross, touch, or fold back onto each
/// other. Quadratic, which the point limit keeps cheap.
fn crossing_edges(ring: &[(f64, f64)]) -> Option<(usize, usize)> {
    let n = ring.len();
    let edge = |i: usize| (ring[i], ring[(i + 1) % n]);
    for i in 0..n {
        let (a, b) = edge(i);
        // The next edge shares `b`; it may only meet this one there, so it must not turn back
        // along it.
        let c = ring[(i + 2) % n];
        if cross(a, b, c) == 0.0 && (b.0 - a.0) * (c.0 - b.0) + (b.1 - a.1) * (c.1 - b.1) < 0.0 {
            return Some((i, (i + 1) % n));
        }
        for j in i + 2..n {
            if i == 0 && j == n - 1 {
                continue; // adjacent through the closing edge
            }
            let (c, d) = edge(j);
            if segments_meet(a, b, c, d) {
                return Some((i, j));
            }
        }
    }
    None
}

/// The z of (b - a) × (c - a): which side of a→b the point c is on.
fn cross(a: (f64, f64), b: (f64, f64), c: (f64, f64)) -> f64 {
    (b.0 - a.0) * (c.1 - a.1) - (b.1 - a.1) * (c.0 - a.0)
}

fn segments_meet(a: (f64, f64), b: (f64, f64), c: (f64, f64), d: (f64, f64)) -> bool {
    let on = |p: (f64, f64), q: (f64, f64), r: (f64, f64)| {
        r.0 >= p.0.min(q.0) && r.0 <= p.0.max(q.0) && r.1 >= p.1.min(q.1) && r.1 <= p.1.max(q.1)
    };
    let (d1, d2) = (cross(c, d, a), cross(c, d, b));
    let (d3, d4) = (cross(a, b, c), cross(a, b, d));
    if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0))
    {
        return true;
    }
    (d1 == 0.0 && on(c, d, a))
        || (d2 == 0.0 && on(c, d, b))
        || (d3 == 0.0 && on(a, b, c))
        || (d4 == 0.0 && on(a, b, d))
}

/// `[[camera.zone]]`, `[[camera.mask]]` and `required_zones` of camera `i`.
fn validate_camera_areas(p: &mut Problems, i: usize, cam: &CameraConfig) {
    let camera = || KeyPath::default().key("camera").index(i);
    for (j, required) in cam.required_zones.iter().enumerate() {
        if !cam.zone.iter().any(|z| z.name == *required) {
            let zones: Vec<&str> = cam.zone.iter().map(|z| z.name.as_str()).collect();
            p.push((
                camera().key("required_zones").index(j),
                format!(
                    "{required:?} is not a zone of camera {:?} (zones: {zones:?})",
                    cam.name
                ),
            ));
        }
    }
    let mut names = BTreeSet::new();
    for (kind, areas) in [("zone", &cam.zone), ("mask", &cam.mask)] {
        for (j, area) in areas.iter().enumerate() {
            let at = |k: &str| camera().key(kind).index(j).key(k);
            topic_safe_name(p, at("name"), &area.name);
            if !names.insert(area.name.as_str()) {
                p.push((
                    at("name"),
                    format!(
                        "{:?} is used twice among the zones and masks of camera {:?}",
                        area.name, cam.name
                    ),
                ));
            }
            if let Err(e) = polygon_points(&area.polygon) {
                let path = match e.point {
                    Some(point) => at("polygon").index(point),
                    None => at("polygon"),
                };
                p.push((path, e.reason));
            }
        }
    }
}

/// `[[camera.schedule]]` of camera `i`.
fn validate_schedule(p: &mut Problems, i: usize, cam: &CameraConfig) {
    for (j, window) in cam.schedule.iter().enumerate() {
        let at = |k: &str| {
            KeyPath::default()
                .key("camera")
                .index(i)
                .key("schedule")
                .index(j)
                .key(k)
        };
        if window.days.is_empty() {
            p.push((
                at("days"),
                "must name at least one day, or \"daily\"".into(),
            ));
        }
        for (d, days) in window.days.iter().enumerate() {
            if let Err(e) = super::parse_days(days) {
                p.push((at("days").index(d), e));
            }
        }
        let start = super::parse_time_of_day(&window.start, false);
        let end = super::parse_time_of_day(&window.end, true);
        if let Err(e) = &start {
            p.push((at("start"), e.clone()));
        }
        if let Err(e) = &end {
            p.push((at("end"), e.clone()));
        }
        if let (Ok(start), Ok(end)) = (start, end)
            && start == end
        {
            // Equal times are either nothing or the whole day, and which one would be a guess.
            p.push((
                at("end"),
                format!(
                    "equals start {:?}: a window needs a length (an end before the start runs \
                     overnight)",
                    window.start
                ),
            ));
        }
    }
}

/// Kubernetes' DNS-1123 subdomain, the rule for node names.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

fn model_input(p: &mut Problems, path: KeyPath, [h, w]: [u32; 2]) {
    if h == 0 || w == 0 || h % 32 != 0 || w % 32 != 0 || h > 4096 || w > 4096 {
        p.push((
            path,
            format!("[{h}, {w}] must be positive multiples of 32 up to 4096 (YOLO strides)"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, ConfigSource, DEFAULT_CONFIG, load};

    /// The problems `--set`s on the embedded default give for `key` (the default's relative
    /// model paths add problems of their own, which are not looked at).
    fn problems_for(key: &str, overrides: &[String]) -> Vec<String> {
        match load(ConfigSource::Default, overrides) {
            Err(ConfigError::Invalid(p)) => p
                .iter()
                .map(ToString::to_string)
                .filter(|m| m.contains(key))
                .collect(),
            Err(e) => panic!("{e}"),
            Ok(_) => Vec::new(),
        }
    }

    /// Dotted paths of every number (not in an array) in a TOML table.
    fn numeric_keys(table: &dyn toml_edit::TableLike, prefix: &str, out: &mut Vec<String>) {
        for (k, item) in table.iter() {
            let path = format!("{prefix}{k}");
            match item {
                toml_edit::Item::Value(
                    toml_edit::Value::Integer(_) | toml_edit::Value::Float(_),
                ) => out.push(path),
                toml_edit::Item::Table(t) => numeric_keys(t, &format!("{path}."), out),
                _ => {}
            }
        }
    }

    #[test]
    fn every_number_refuses_infinity_nan_and_overflow() {
        let doc: toml_edit::DocumentMut = DEFAULT_CONFIG.parse().unwrap();
        let mut keys = Vec::new();
        numeric_keys(doc.as_table(), "", &mut keys);
        assert!(keys.len() >= 20, "{keys:?}");
        let camera = "camera=[{ name = \"c\", url = \"rtsp://127.0.0.1/x\" }]".to_string();
        keys.extend([
            "camera[0].detect_fps".into(),
            "camera[0].stall_timeout_s".into(),
            "camera[0].motion.threshold".into(),
            "camera[0].motion.min_area".into(),
            "camera[0].motion.max_skip_s".into(),
        ]);
        for key in &keys {
            let set = key.replace("[0]", ".0");
            for value in ["inf", "-inf", "nan", "9223372036854775807", "-1"] {
                let overrides = [camera.clone(), format!("{set}={value}")];
                assert!(
                    !problems_for(key, &overrides).is_empty(),
                    "{key} = {value} was accepted"
                );
            }
        }
    }

    #[test]
    fn kubeedge_keys_are_checked() {
        let on = |more: &[&str]| -> Vec<String> {
            [
                "kubeedge.enabled=true",
                "kubeedge.cloudcore_host=127.0.0.1",
                "node.name=gw-1",
            ]
            .iter()
            .chain(more)
            .map(|s| s.to_string())
            .collect()
        };
        assert!(problems_for("kubeedge.keepalive_seconds", &on(&[])).is_empty());
        for (key, value) in [
            ("kubeedge.keepalive_seconds", "0"),
            ("kubeedge.keepalive_seconds", "18446744073709551"),
            ("kubeedge.lease_seconds", "0"),
            ("kubeedge.lease_seconds", "4611686018427387904"),
            ("kubeedge.cert_port", "0"),
            ("kubeedge.websocket_port", "0"),
            ("kubeedge.node_name", "Gate_1"),
            ("kubeedge.node_name", "-gw"),
            ("kubeedge.node_name", "gw..1"),
        ] {
            let set = format!("{key}={value}");
            let p = problems_for(key, &on(&[set.as_str()]));
            assert_eq!(p.len(), 1, "{set}: {p:?}");
        }
        assert!(
            problems_for(
                "kubeedge.node_name",
                &on(&["kubeedge.node_name=gw-1.site-3"])
            )
            .is_empty()
        );
        // An empty kubeedge name takes the [node] name, which must then fit.
        let p = problems_for("node.name", &on(&["node.name=Gate_1"]));
        assert!(p.iter().any(|m| m.contains("DNS-1123")), "{p:?}");
    }

    #[test]
    fn only_schemes_ingest_reads_are_accepted() {
        for (url, refused) in [
            ("rtsp://127.0.0.1/x", false),
            ("rtsps://127.0.0.1/x", true),
            ("rtspt://127.0.0.1/x", true),
            ("http://127.0.0.1/x", true),
        ] {
            let set = format!("camera=[{{ name = \"c\", url = \"{url}\" }}]");
            let p = problems_for("camera[0].url", &[set]);
            assert_eq!(!p.is_empty(), refused, "{url}: {p:?}");
            if url.starts_with("rtsps") {
                assert!(p[0].contains("\"rtsps\" is not supported"), "{p:?}");
            }
        }
    }

    #[test]
    fn dns_subdomains() {
        for ok in ["a", "gw-1", "gw-1.plant-3.example", &"a".repeat(63)] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a_b",
            "a.",
            ".a",
            "-a",
            "a-",
            "a..b",
            &"a".repeat(64),
            "ä",
        ] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
