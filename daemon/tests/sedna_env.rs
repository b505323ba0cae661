//! Sedna's environment contract, LC reports and `helmetd import-sedna` (docs/sedna.md).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use helmetd::config::{self, ConfigError, ConfigSource, DEFAULT_CONFIG};
use helmetd::sedna::env::{self, EnvError, SednaEnvMode};
use helmetd::sedna::import;
use helmetd::sedna::lc::{LcReporter, LcSettings, Totals};
use helmetd::telemetry::Snapshot;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sedna");

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

/// What the GM injects into the helmet example's edge pod, plus the template's own variables.
const GM_EDGE_POD: [(&str, &str); 12] = [
    (
        "BIG_MODEL_IP",
        "helmet-detection-inference-example-cloud.default",
    ),
    ("BIG_MODEL_PORT", "5000"),
    ("HEM_NAME", "IBT"),
    (
        "HEM_PARAMETERS",
        r#"[{"key":"threshold_img","value":"0.8"},{"key":"threshold_box","value":"0.7"}]"#,
    ),
    ("LC_SERVER", "http://localhost:9100"),
    ("NAMESPACE", "default"),
    ("SERVICE_NAME", "helmet-detection-inference-example"),
    ("WORKER_NAME", "edgeworker-x7k2p"),
    ("video_url", "rtsp://localhost/video"),
    ("all_examples_inference_output", "/data/output"),
    (
        "hard_example_edge_inference_output",
        "/data/hard_example_edge_inference_output",
    ),
    ("input_shape", "416,736"),
];

fn set_args(env: &env::SednaEnv) -> Vec<String> {
    env.overrides.iter().map(|o| o.set_arg()).collect()
}

#[test]
fn gm_environment_becomes_overrides() {
    let env = env::overrides_from_env(vars(&GM_EDGE_POD)).unwrap();
    assert_eq!(
        set_args(&env),
        [
            r#"cloud.protocol="sedna-http""#,
            r#"cloud.url="http://helmet-detection-inference-example-cloud.default:5000""#,
            r#"edge.hard_example_mining={ name = "IBT", parameters = { threshold_img = "0.8", threshold_box = "0.7" } }"#,
            r#"camera=[{ name = "video", url = "rtsp://localhost/video" }]"#,
            r#"output.dir="/data""#,
            r#"sedna.lc_server="http://localhost:9100""#,
            r#"sedna.namespace="default""#,
            r#"sedna.service_name="helmet-detection-inference-example""#,
            r#"sedna.worker_name="edgeworker-x7k2p""#,
        ]
    );
    let noted: Vec<&str> = env.notes.iter().map(|n| n.var.as_str()).collect();
    assert_eq!(noted, ["all_examples_inference_output", "input_shape"]);
    assert!(
        env.notes[0]
            .note
            .contains("/data/all_examples_inference_output")
    );
}

#[test]
fn lookup_takes_name_or_upper_case_and_empty_is_unset() {
    let env = env::overrides_from_env(vars(&[
        ("VIDEO_URL", "/videos/gate.mp4"),
        ("video_url", ""),
        ("HEM_NAME", "CloudOnly"),
        ("HEM_PARAMETERS", "null"),
        ("BIG_MODEL_IP", "fd00::5"),
        ("LC_PERIOD", "10"),
        ("JOB_NAME", ""),
    ]))
    .unwrap();
    assert_eq!(
        set_args(&env),
        [
            r#"cloud.protocol="sedna-http""#,
            r#"cloud.url="http://[fd00::5]:5000""#,
            r#"edge.hard_example_mining={ name = "CloudOnly", parameters = {} }"#,
            r#"camera=[{ name = "video", url = "file:///videos/gate.mp4" }]"#,
            "sedna.lc_period_s=10",
        ]
    );
    // Sedna's sample `file://video/video.mp4` is /video/video.mp4 to FFmpeg.
    let env = env::overrides_from_env(vars(&[("video_url", "file://video/video.mp4")])).unwrap();
    assert!(set_args(&env)[0].contains(r#"url = "file:///video/video.mp4""#));
}

#[test]
fn bad_values_name_the_variable() {
    let error = |pairs: &[(&str, &str)]| -> EnvError {
        env::overrides_from_env(vars(pairs)).expect_err("should be refused")
    };
    let e = error(&[("HEM_NAME", "IBT"), ("HEM_PARAMETERS", "[{\"key\":")]);
    assert_eq!(e.var, "HEM_PARAMETERS");
    assert!(
        e.to_string().starts_with("env HEM_PARAMETERS: not JSON"),
        "{e}"
    );
    let e = error(&[
        ("HEM_NAME", "IBT"),
        ("HEM_PARAMETERS", r#"{"threshold_img":"0.9"}"#),
    ]);
    assert!(e.message.contains("is not a list"), "{e}");
    assert_eq!(error(&[("BIG_MODEL_PORT", "5000")]).var, "BIG_MODEL_PORT");
    let e = error(&[("BIG_MODEL_IP", "10.0.0.5"), ("BIG_MODEL_PORT", "http")]);
    assert_eq!(
        e.to_string(),
        "env BIG_MODEL_PORT: \"http\" is not a port number"
    );
    assert_eq!(error(&[("BIG_MODEL_IP", "a/b")]).var, "BIG_MODEL_IP");
    assert_eq!(error(&[("LC_PERIOD", "0")]).var, "LC_PERIOD");
    assert_eq!(error(&[("LC_SERVER", "https://lc:9100")]).var, "LC_SERVER");
    assert_eq!(error(&[("MODEL_URL", "/a.onnx;/b.onnx")]).var, "MODEL_URL");
    assert_eq!(
        error(&[("MINING_MODE", "mining-then-inference")]).var,
        "MINING_MODE"
    );
    assert_eq!(error(&[("video_url", "video.mp4")]).var, "video_url");
    let e = error(&[
        ("all_examples_inference_output", "/data/a"),
        ("hard_example_edge_inference_output", "/other/b"),
    ]);
    assert!(e.message.contains("not in /data"), "{e}");
    assert_eq!(EnvError::EXIT_CODE, 78);
}

#[test]
fn only_sedna_specific_variables_switch_the_contract_on() {
    let generic = [
        ("JOB_NAME", "nightly"),
        ("NAMESPACE", "ci"),
        ("MODEL_URL", "/m.onnx"),
    ];
    assert!(
        env::from_env(SednaEnvMode::Auto, vars(&generic))
            .unwrap()
            .is_empty()
    );
    let with_lc = [
        generic.as_slice(),
        &[("LC_SERVER", "http://127.0.0.1:9100")],
    ]
    .concat();
    let env = env::from_env(SednaEnvMode::Auto, vars(&with_lc)).unwrap();
    assert!(set_args(&env).contains(&r#"sedna.job_name="nightly""#.to_string()));
    assert!(
        env::from_env(SednaEnvMode::Off, vars(&with_lc))
            .unwrap()
            .is_empty()
    );
    assert!(
        !env::from_env(SednaEnvMode::On, vars(&generic))
            .unwrap()
            .is_empty()
    );
}

/// The default config with `[cloud] url = cloud_url`, loadable from any directory.
fn config_file(cloud_url: &str) -> tempfile::NamedTempFile {
    config_file_from(&DEFAULT_CONFIG.replace(
        "url = \"\"\n# How long",
        &format!("url = \"{cloud_url}\"\n# How long"),
    ))
}

/// A config with its model paths made absolute, to load it in-process from any directory.
fn config_file_from(text: &str) -> tempfile::NamedTempFile {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    let text = text
        .replace("path = \"models/", &format!("path = \"{root}/models/"))
        .replace("model = \"models/", &format!("model = \"{root}/models/"));
    std::fs::write(file.path(), text).unwrap();
    file
}

#[test]
fn environment_beats_the_file_and_explicit_set_beats_the_environment() {
    let file = config_file("http://from-the-file:5000");
    let mut env = env::overrides_from_env(vars(&GM_EDGE_POD)).unwrap();
    let overrides = env.merge(&["cloud.url=http://explicit:5000".into()]);
    let cfg = config::load(ConfigSource::File(file.path().into()), &overrides).unwrap();
    assert_eq!(cfg.cloud.url, "http://explicit:5000");
    assert_eq!(cfg.cloud.protocol, config::CloudProtocol::SednaHttp);
    assert_eq!(cfg.cameras.len(), 1);
    assert_eq!(cfg.cameras[0].url, "rtsp://localhost/video");
    assert_eq!(
        cfg.edge.hard_example_mining.parameters["threshold_img"],
        "0.8"
    );
    assert_eq!(cfg.sedna.worker_name, "edgeworker-x7k2p");
    assert_eq!(cfg.output.dir, std::path::Path::new("/data"));
    // An explicit key inside the environment's camera composes with it.
    let mut env = env::overrides_from_env(vars(&GM_EDGE_POD)).unwrap();
    let overrides = env.merge(&["camera.0.detect_fps=5".into()]);
    let cfg = config::load(ConfigSource::File(file.path().into()), &overrides).unwrap();
    assert_eq!(cfg.cameras[0].detect_fps, 5.0);
}

#[test]
fn a_problem_from_the_environment_names_the_variable() {
    let file = config_file("");
    let mut env = env::overrides_from_env(vars(&[
        ("HEM_NAME", "IBT"),
        (
            "HEM_PARAMETERS",
            r#"[{"key":"threshold_img","value":"high"}]"#,
        ),
    ]))
    .unwrap();
    let overrides = env.merge(&[]);
    let error = config::load(ConfigSource::File(file.path().into()), &overrides)
        .map_err(|e| env.attribute(e))
        .expect_err("a non-numeric threshold is refused");
    let ConfigError::Invalid(problems) = &error else {
        panic!("{error}");
    };
    assert!(
        problems[0]
            .place
            .starts_with("env HEM_NAME, HEM_PARAMETERS (edge.hard_example_mining="),
        "{error}"
    );
    assert!(problems[0].message.contains("threshold_img"), "{error}");
}

fn helmetd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_helmetd"));
    // Relative model paths in the default config resolve from the repository root.
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    for var in env::TRIGGERS {
        c.env_remove(var);
    }
    c.env_remove("HELMETD_SEDNA_ENV");
    c
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_config_applies_the_environment_and_exits_78_on_a_bad_variable() {
    let file = config_file("");
    let check = |envs: &[(&str, &str)], args: &[&str]| {
        helmetd()
            .arg("check-config")
            .arg(file.path())
            .args(args)
            .envs(envs.iter().copied())
            .output()
            .unwrap()
    };
    let ok = check(&GM_EDGE_POD, &[]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    // The camera comes from video_url.
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok (1 camera(s)"));
    let bad = [("HEM_NAME", "IBT"), ("HEM_PARAMETERS", "[{]")];
    let out = check(&bad, &[]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("env HEM_PARAMETERS: not JSON"),
        "{}",
        stderr(&out)
    );
    let out = check(&bad, &["--sedna-env", "off"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = check(&[("HEM_NAME", "Bogus")], &[]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("env HEM_NAME, HEM_PARAMETERS ("),
        "{}",
        stderr(&out)
    );
}

#[test]
fn hpa_example_imports_to_a_config_check_config_accepts() {
    let manifest = format!("{FIXTURES}/hpa-example.yaml");
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("imported.toml");
    let out = helmetd()
        .args(["import-sedna", &manifest, "-o"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let check = helmetd()
        .arg("check-config")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", stderr(&check));

    let text = std::fs::read_to_string(&out_file).unwrap();
    let cfg = config::load(
        ConfigSource::File(config_file_from(&text).path().into()),
        &[],
    )
    .unwrap();
    let hpa = cfg.edge.hpa.expect("[edge.hpa] carried over");
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (1, 2));
    assert_eq!(hpa.metrics.len(), 1);
    let metric = format!("{:?}", hpa.metrics[0]);
    assert!(
        metric.contains("Cpu") && metric.contains("average_utilization: 50"),
        "{metric}"
    );
    assert_eq!(cfg.edge.worker.resources.requests.cpu.milli_value(), 50);
    assert_eq!(
        cfg.edge.worker.resources.limits.cpu.unwrap().milli_value(),
        500
    );
    assert_eq!(
        cfg.edge.hard_example_mining.build().unwrap().to_string(),
        "IBT:threshold_img=0.9,threshold_box=0.9"
    );
    assert_eq!(cfg.cloud.protocol, config::CloudProtocol::SednaHttp);
    assert_eq!(
        cfg.cloud.url,
        "http://helmet-detection-inference-example-cloud.default:5000"
    );
    assert_eq!(cfg.cameras[0].url, "rtsp://localhost/video");
    // The hostPath volume behind /data/.
    assert_eq!(
        cfg.output.dir,
        std::path::Path::new("/joint_inference/output")
    );
    assert_eq!(cfg.sedna.service_name, "helmet-detection-inference-example");
    // The default's comments stay; its commented examples give way to the real tables.
    assert!(text.contains("# Class-wise non-maximum suppression IoU."));
    assert!(!text.contains("# [edge.hpa]") && !text.contains("# [[camera]]"));
    for field in [
        "spec.edgeWorker.model.name",
        "spec.edgeWorker.template.spec.hostNetwork = true",
        "spec.edgeWorker.template.spec.containers[0].resources.requests.memory = \"64M\"",
        "spec.edgeWorker.template.spec.containers[0].env[0] = input_shape=\"416,736\"",
        "spec.cloudWorker.hpa.maxReplicas = 5",
    ] {
        assert!(
            text.contains(&format!("#     {field}")),
            "{field} not commented:\n{text}"
        );
    }
}

#[test]
fn fields_without_equivalent_become_comments() {
    let manifest = std::fs::read_to_string(format!("{FIXTURES}/hpa-example.yaml"))
        .unwrap()
        .replace(
            "    model:\n      name: \"helmet-detection-inference-little-model\"",
            "    model:\n      name: \"helmet-detection-inference-little-model\"\n    \
             priorityClass: gold",
        )
        // Memory is not a metric helmetd scales on: the HPA is not carried over.
        .replacen("name: cpu", "name: memory", 1)
        .replace(
            "          - name: input_shape",
            "          - name: SITE_ID\n            value: \"north-7\"\n          - name: input_shape",
        );
    let toml =
        import::import_manifest(&format!("---\n{manifest}\n---\nkind: Model\n"), "x.yaml").unwrap();
    let comments = |needle: &str| {
        toml.lines()
            .any(|l| l.starts_with('#') && l.contains(needle))
    };
    assert!(
        comments("spec.edgeWorker.priorityClass = \"gold\""),
        "{toml}"
    );
    assert!(comments("SITE_ID=\"north-7\""), "{toml}");
    assert!(comments("spec.edgeWorker.hpa.maxReplicas = 2"), "{toml}");
    assert!(comments("not carried over"), "{toml}");
    assert!(comments("Not imported: document 2 (kind Model)"), "{toml}");
    assert!(!toml.contains("\n[edge.hpa]"), "{toml}");
    // Still a complete config.
    let file = config_file_from(&toml);
    let cfg = config::load(ConfigSource::File(file.path().into()), &[]).unwrap();
    assert!(cfg.edge.hpa.is_none());
}

#[test]
fn broken_yaml_exits_78_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, "apiVersion: sedna.io/v1alpha1\nspec: [edgeWorker\n").unwrap();
    let out = helmetd().arg("import-sedna").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let message = stderr(&out);
    assert!(
        message.contains(&format!("{}: not valid YAML", file.display()))
            && message.contains("line"),
        "{message}"
    );
    let missing = dir.path().join("missing.yaml");
    let out = helmetd()
        .arg("import-sedna")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("missing.yaml: cannot read"));
    assert!(
        import::import_manifest("kind: Model\n", "m.yaml")
            .unwrap_err()
            .contains("no JointInferenceService")
    );
}

#[test]
fn lc_settings_from_config() {
    let file = config_file("");
    let load = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        config::load(ConfigSource::File(file.path().into()), &sets).unwrap()
    };
    assert!(LcSettings::from_config(&load(&[])).unwrap().is_none());
    let cfg = load(&[
        "sedna.lc_server=http://localhost:9100/",
        "sedna.service_name=helmet",
        "sedna.lc_period_s=10",
    ]);
    let s = LcSettings::from_config(&cfg).unwrap().unwrap();
    assert_eq!(s.authority, "localhost:9100");
    // No WORKER_NAME: Sedna's default, the job name.
    assert_eq!(s.path, "/sedna/workers/sedna/info");
    assert_eq!(
        (s.worker_name.as_str(), s.owner_name.as_str()),
        ("sedna", "helmet")
    );
    assert_eq!(s.period, Duration::from_secs(10));
    // The config check refuses what the reporter cannot use, naming the key.
    let refused = config::load(
        ConfigSource::File(file.path().into()),
        &["sedna.lc_server=https://lc:9100".into()],
    )
    .expect_err("https is refused");
    assert!(
        refused
            .to_string()
            .contains("sedna.lc_server: \"https://lc:9100\": not an http:// URL"),
        "{refused}"
    );
}

/// The LC's worker endpoint: records each report, answers as `mode` says.
#[derive(Clone, Default)]
struct FakeLc {
    reports: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    /// 0: 200 OK, 1: 503, 2: never answers.
    mode: Arc<AtomicU8>,
}

impl FakeLc {
    async fn serve(&self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        use axum::extract::{Path, State};
        use axum::http::StatusCode;
        use axum::routing::post;
        async fn info(
            State(lc): State<FakeLc>,
            Path(worker): Path<String>,
            body: axum::Json<serde_json::Value>,
        ) -> (StatusCode, &'static str) {
            lc.reports.lock().unwrap().push((worker, body.0));
            match lc.mode.load(Ordering::SeqCst) {
                0 => (StatusCode::OK, r#"{"Status":200,"Message":"OK"}"#),
                1 => (StatusCode::SERVICE_UNAVAILABLE, "down"),
                _ => std::future::pending().await,
            }
        }
        let app = axum::Router::new()
            .route("/sedna/workers/:worker/info", post(info))
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
    }

    fn count(&self) -> usize {
        self.reports.lock().unwrap().len()
    }

    fn last(&self) -> (String, serde_json::Value) {
        self.reports.lock().unwrap().last().cloned().unwrap()
    }
}

/// Waits (in paused time) until `done`, for at most a virtual 120 s (four periods).
async fn until(done: impl Fn() -> bool) {
    for _ in 0..12_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn lc_reports_skip_idle_periods_and_survive_an_outage() {
    const PERIOD: Duration = Duration::from_secs(30);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lc = FakeLc::default();
    let server = lc.serve(listener).await;
    // The daemon's snapshot channel, read as the daemon's wiring reads it.
    let (snapshots, latest) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let count = |frames: u64, hard: u64| {
        let mut snapshot = Snapshot::default();
        snapshot.counters.frames = frames;
        snapshot.counters.hard = hard;
        snapshots.send_replace(Arc::new(snapshot));
    };
    let settings = LcSettings {
        authority: addr.to_string(),
        path: "/sedna/workers/edgeworker-x7k2p/info".into(),
        worker_name: "edgeworker-x7k2p".into(),
        namespace: "default".into(),
        owner_name: "helmet-detection-inference-example".into(),
        period: PERIOD,
        timeout: Duration::from_secs(5),
    };
    let reporter = LcReporter::spawn(&tokio::runtime::Handle::current(), settings, move || {
        Totals::from(&latest.borrow().counters)
    });

    // A period without inference sends nothing, as Sedna.
    tokio::time::sleep(PERIOD + Duration::from_secs(1)).await;
    assert_eq!((reporter.attempts(), lc.count()), (0, 0));

    count(10, 2);
    until(|| reporter.delivered() == 1).await;
    let (worker, body) = lc.last();
    assert_eq!(worker, "edgeworker-x7k2p");
    assert_eq!(body["name"], "edgeworker-x7k2p");
    assert_eq!(body["ownerName"], "helmet-detection-inference-example");
    assert_eq!(body["ownerKind"], "jointinferenceservice");
    assert_eq!(body["kind"], "inference");
    let info = &body["ownerInfo"];
    assert_eq!(info["inferenceNumber"], 10);
    assert_eq!(info["hardExampleNumber"], 2);
    assert_eq!(info["uploadCloudRatio"], 0.2);
    for time in ["startTime", "updateTime"] {
        let t = info[time].as_str().unwrap();
        assert!(
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S").is_ok(),
            "{time} {t:?}"
        );
    }

    // Acknowledged and nothing new: skipped.
    tokio::time::sleep(PERIOD).await;
    assert_eq!(reporter.attempts(), 1);

    // Outage 1: nothing listens. Unacknowledged counts are retried every period.
    server.abort();
    let _ = server.await;
    count(20, 2);
    until(|| reporter.attempts() == 2).await;
    until(|| reporter.attempts() == 3).await;
    assert_eq!((reporter.delivered(), lc.count()), (1, 1));

    // Outage 2: the LC is back on its port but answers 503, then not at all.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    lc.mode.store(1, Ordering::SeqCst);
    let _server = lc.serve(listener).await;
    until(|| reporter.attempts() == 4).await;
    assert_eq!((lc.count(), reporter.delivered()), (2, 1));
    lc.mode.store(2, Ordering::SeqCst);
    until(|| reporter.attempts() == 5 && lc.count() == 3).await;
    // The report times out; the next period starts a new one.
    until(|| reporter.attempts() == 6).await;
    assert_eq!(reporter.delivered(), 1);

    // Recovery: the cumulative counts reach the LC, the reporter still runs.
    lc.mode.store(0, Ordering::SeqCst);
    count(25, 5);
    until(|| reporter.delivered() == 2).await;
    assert_eq!(lc.last().1["ownerInfo"]["inferenceNumber"], 25);
    assert_eq!(lc.last().1["ownerInfo"]["uploadCloudRatio"], 0.2);

    // Shutdown sends what the LC has not seen yet.
    count(30, 5);
    let before = lc.count();
    reporter.shutdown().await;
    assert_eq!(lc.count(), before + 1);
    assert_eq!(lc.last().1["ownerInfo"]["inferenceNumber"], 30);
}

#[test]
fn a_camera_password_in_video_url_is_never_printed() {
    const SECRET: &str = "Zq9-s3cret";
    let file = config_file("");
    let run = |video_url: &str| {
        helmetd()
            .arg("check-config")
            .arg(file.path())
            .env("RUST_LOG", "info")
            .env("HEM_NAME", "IBT")
            .env("video_url", video_url)
            .output()
            .unwrap()
    };
    // Accepted: the override is logged, masked.
    let out = run(&format!("rtsp://viewer:{SECRET}@127.0.0.1:8554/gate"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("viewer:***@127.0.0.1:8554"),
        "{}",
        stderr(&out)
    );
    // Refused by the config (scheme, port) and by the variable's own check: the error names
    // the variable, not the password.
    for bad in [
        format!("rtsps://viewer:{SECRET}@127.0.0.1/gate"),
        format!("rtsp://viewer:{SECRET}@127.0.0.1:99999/gate"),
    ] {
        let out = run(&bad);
        assert_eq!(out.status.code(), Some(78), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("video_url"), "{}", stderr(&out));
    }
    for video_url in [
        format!("rtsp://viewer:{SECRET}@127.0.0.1:8554/gate"),
        format!("rtsps://viewer:{SECRET}@127.0.0.1/gate"),
        format!("rtsp://viewer:{SECRET}@127.0.0.1:99999/gate"),
    ] {
        let out = run(&video_url);
        let all = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
        assert!(!all.contains(SECRET), "{video_url}: {all}");
    }
}
