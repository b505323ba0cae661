//! The gateway's page in a real browser: `helmetd run` on the bundled video served by a real
//! loopback RTSP server, a real Mosquitto, the real model; Debian's Chromium (headless) loads
//! `http://127.0.0.1:<port>/` and the test reads the DOM the page's script built: the camera's
//! tile with its latest frame loaded, an alert with its snapshot loaded, the workers chart drawn,
//! the MQTT link shown connected. A screenshot is kept under cargo's test temp directory
//! (`page_browser/page.png`) for whoever wants to look.
//!
//! Before the browser, the same facts are read over HTTP, so a failure says whether the daemon
//! or the page is at fault: `/status` lists an alert with a snapshot, the frame and snapshot
//! URLs answer JPEGs, `/history` has points, `/` has its security headers.
//!
//! Needs root and a writable cgroup2 hierarchy (the workers' cgroups), like `run_daemon.rs`,
//! and `chromium` (scripts/setup installs it); without either it fails and says why. The
//! daemon, the browser and the servers are ended by their own pids; every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use helmetd::http::{StatusReport, fetch_status};
use helmetd_e2e::mosquitto::Mosquitto;
use helmetd_e2e::{RtspTestServer, test_video};

use common::{HelmetdProcess, Options, TestRoot};

const EXAMPLE: &str = "config/examples/local-file.toml";
const EXAMPLE_URL: &str = "url = \"media/helmet-test.mp4\"";
const CAMERA: &str = "yard";
/// Model loaded, stream up, and the first crowd without helmets (13.5 s into each 18 s pass)
/// confirmed and its snapshot taken.
const FIRST_ALERT: Duration = Duration::from_secs(150);
/// Chromium's start, the page's first polls and its images.
const BROWSER: Duration = Duration::from_secs(90);
/// Page time the browser lets pass before it dumps the DOM: a few polls of `/status`.
const VIRTUAL_TIME_MS: u32 = 6_000;
const POLL: Duration = Duration::from_millis(250);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Status, headers (lower-cased names) and body.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// A plain HTTP/1.0 GET, bounded by a timeout.
fn get(addr: &str, path: &str) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of the response head"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, raw[split + 4..].to_vec()))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The image's size, or why it is not a JPEG.
fn jpeg_size(bytes: &[u8]) -> Result<(u32, u32), String> {
    let image = image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg)
        .map_err(|e| e.to_string())?;
    Ok((image.width(), image.height()))
}

/// The example config with the camera on the RTSP server, MQTT on the test broker, and the HTTP
/// endpoint on `http`.
fn config(dir: &Path, rtsp: &str) -> PathBuf {
    let example = std::fs::read_to_string(helmetd_e2e::workspace_root().join(EXAMPLE)).unwrap();
    assert_eq!(
        example.matches(EXAMPLE_URL).count(),
        1,
        "{EXAMPLE} has one camera on the bundled video"
    );
    let path = dir.join("helmetd.toml");
    let text = example.replacen(EXAMPLE_URL, &format!("url = \"{rtsp}\""), 1);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs Chromium headless on `url` with `args`, ended by its pid at [`BROWSER`]; its stdout.
fn chromium(profile: &Path, url: &str, args: &[String]) -> String {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            // Root cannot use Chromium's sandbox; the page is our own, on loopback.
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--window-size=1280,1700",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start chromium ({e}): scripts/setup installs Debian's chromium")
        });
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + BROWSER;
    loop {
        match child.try_wait().expect("polling chromium") {
            Some(status) => {
                assert!(status.success(), "chromium {args:?} exited with {status}");
                break;
            }
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium {args:?} did not finish within {BROWSER:?}");
            }
            None => std::thread::sleep(POLL),
        }
    }
    reader.join().expect("reading chromium's stdout")
}

/// The part of `dom` from the first `start` to the end of the element's first `end` after it.
fn element<'a>(dom: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = dom.find(start)?;
    let rest = &dom[from..];
    Some(&rest[..rest.find(end)? + end.len()])
}

/// Waits until the daemon has shown an alert with a snapshot, a frame of the camera and some
/// history, and returns the report that showed the alert.
fn wait_for_an_alert(daemon: &mut HelmetdProcess, addr: &str) -> StatusReport {
    let deadline = Instant::now() + FIRST_ALERT;
    loop {
        assert!(
            daemon.running(),
            "helmetd exited early:\n{}",
            daemon.tail(40)
        );
        if let Ok(report) = fetch_status(addr) {
            let with_snapshot = report
                .alerts
                .open
                .iter()
                .chain(&report.alerts.recent)
                .any(|a| a.has_snapshot);
            let frame = get(addr, &format!("/cameras/{CAMERA}/latest.jpg"))
                .is_ok_and(|(status, _, _)| status == 200);
            if with_snapshot && frame {
                return report;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no alert with a snapshot within {FIRST_ALERT:?}; last status: {:?}\n{}",
            fetch_status(addr).map(|r| r.alerts),
            daemon.tail(40)
        );
        std::thread::sleep(POLL);
    }
}

#[test]
fn the_page_shows_cameras_alerts_and_workers_in_a_real_browser() {
    let root = TestRoot::new("page_browser");
    let broker = Mosquitto::start().expect("starting mosquitto");
    let rtsp = RtspTestServer::start(test_video()).expect("starting the RTSP server");
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = config(dir.path(), &rtsp.url());
    let sets = [
        root.arg(),
        format!("http.listen={addr}"),
        format!("mqtt.url={}", broker.url()),
        format!("mqtt.spool_dir={}", dir.path().join("spool").display()),
        "node.name=page-test".to_string(),
        // Episodes end soon after the crowd leaves, so the page also has ended ones.
        "alerts.end_after_s=2".to_string(),
    ];
    let mut args = vec![
        "run".to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    for set in &sets {
        args.extend(["--set".to_string(), set.clone()]);
    }
    let mut daemon = HelmetdProcess::start_with(
        &args,
        Options {
            name: "helmetd run",
            ..Options::default()
        },
    );

    // What the page is drawn from, over plain HTTP.
    let report = wait_for_an_alert(&mut daemon, &addr);
    let alert = report
        .alerts
        .open
        .iter()
        .chain(&report.alerts.recent)
        .find(|a| a.has_snapshot)
        .expect("an alert with a snapshot")
        .clone();
    assert_eq!(alert.camera, CAMERA);
    let (status, headers, body) =
        get(&addr, &format!("/alerts/{}/snapshot.jpg", alert.id)).expect("GET the snapshot");
    assert_eq!(status, 200, "snapshot of {}", alert.id);
    assert_eq!(header(&headers, "content-type"), Some("image/jpeg"));
    jpeg_size(&body).unwrap_or_else(|e| panic!("the snapshot is no JPEG: {e}"));
    let (status, headers, body) =
        get(&addr, &format!("/cameras/{CAMERA}/latest.jpg")).expect("GET the frame");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("image/jpeg"));
    let (w, h) = jpeg_size(&body).unwrap_or_else(|e| panic!("the frame is no JPEG: {e}"));
    assert!(w >= 320 && h >= 180, "frame {w}×{h}");
    let (status, _, _) = get(&addr, "/cameras/nonesuch/latest.jpg").expect("GET");
    assert_eq!(status, 404, "a camera that does not exist");
    let (status, _, _) = get(&addr, "/alerts/nonesuch/snapshot.jpg").expect("GET");
    assert_eq!(status, 404, "an alert that does not exist");
    let (status, _, body) = get(&addr, "/history").expect("GET /history");
    assert_eq!(status, 200);
    let history: serde_json::Value = serde_json::from_slice(&body).expect("/history is JSON");
    assert!(
        history["points"].as_array().is_some_and(|p| p.len() >= 2),
        "{history}"
    );
    let (status, headers, body) = get(&addr, "/").expect("GET /");
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/html; charset=utf-8")
    );
    let policy = header(&headers, "content-security-policy").unwrap_or_default();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    let html = String::from_utf8(body).expect("the page is UTF-8");
    // The SVG namespace is a name, not a place the page loads from.
    let outside = html.replace("\"http://www.w3.org/2000/svg\"", "");
    assert!(
        !outside.contains("http://") && !outside.contains("https://"),
        "the page loads nothing from elsewhere"
    );

    // The page, as a browser builds it.
    let url = format!("http://{addr}/");
    let profile = tempfile::tempdir().unwrap();
    let dom = chromium(profile.path(), &url, &["--dump-dom".to_string()]);
    let context = || format!("DOM as Chromium built it:\n{dom}");
    assert!(
        dom.contains("data-polls=") && !dom.contains("class=\"offline\""),
        "the page never read /status; {}",
        context()
    );
    let tile = element(&dom, &format!("data-camera=\"{CAMERA}\""), "</div></div>")
        .unwrap_or_else(|| panic!("no tile for camera {CAMERA}; {}", context()));
    assert!(
        tile.contains("data-loaded=\"1\"") && tile.contains("streaming"),
        "the camera tile has no loaded frame or is not streaming: {tile}"
    );
    let cards: Vec<&str> = dom
        .match_indices("data-alert=")
        .filter_map(|(at, _)| element(&dom[at..], "data-alert=", "</div></div></div>"))
        .collect();
    assert!(!cards.is_empty(), "no alert on the page; {}", context());
    assert!(
        cards.iter().any(|card| card.contains("class=\"snapshot\"")
            && card.contains("data-loaded=\"1\"")
            && card.contains(&format!("{CAMERA} #"))),
        "no alert of {CAMERA} with a loaded snapshot: {cards:#?}"
    );
    let chart = element(&dom, "<svg id=\"workers-chart\"", "</svg>")
        .unwrap_or_else(|| panic!("no workers chart; {}", context()));
    assert!(
        chart.contains("<polyline"),
        "the chart has no line: {chart}"
    );
    let mqtt = element(&dom, "id=\"mqtt\"", "</section>").expect("the MQTT section");
    assert!(mqtt.contains(">connected<"), "{mqtt}");

    let artefacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("page_browser");
    std::fs::create_dir_all(&artefacts).unwrap();
    let screenshot = artefacts.join("page.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        profile.path(),
        &url,
        &[format!("--screenshot={}", screenshot.display())],
    );
    let png = image::open(&screenshot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", screenshot.display()));
    assert_eq!((png.width(), png.height()), (1280, 1700));
    eprintln!("screenshot of the page: {}", screenshot.display());

    // The console shows the same alerts.
    let console = Command::new(env!("CARGO_BIN_EXE_helmetd"))
        .args(["status", "--address", &addr])
        .output()
        .expect("helmetd status");
    let console = String::from_utf8_lossy(&console.stdout);
    assert!(console.contains(" ended recently\n"), "{console}");
    assert!(
        console.contains("mqtt: connected"),
        "helmetd status disagrees with the page: {console}"
    );

    let status = daemon.terminate();
    assert!(
        status.success(),
        "helmetd run: {status}\n{}",
        daemon.tail(20)
    );
    drop(broker);
}
