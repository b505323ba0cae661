//! Camera ingest against a real gst-rtsp-server on 127.0.0.1, and against the test video read
//! as a file. Expectations are derived from the video itself so the shipped video can change.

use std::net::TcpListener;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use helmet_pipelines::Frame;
use helmet_pipelines::ingest::{Camera, CameraSettings, CameraState, H264Decoder, Pace, Transport};
use helmet_pipelines::letterbox::{Letterbox, PAD_VALUE};
use helmetd_e2e::{FreezableRelay, RtspTestServer, probe_video, test_video};

const INPUT_W: u32 = 640;
const INPUT_H: u32 = 384;
/// Generous bound for a first frame: DESCRIBE/SETUP/PLAY plus a keyframe, on a busy machine.
const FIRST_FRAME: Duration = Duration::from_secs(10);

/// Rates and timings are asserted, and every test runs an x264 encoder: running them one at a
/// time keeps them from starving each other on a small machine.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Short backoff so outage tests take seconds, not minutes.
fn settings(name: &str, url: &str) -> CameraSettings {
    let mut s = CameraSettings::new(name, url, INPUT_W, INPUT_H);
    s.backoff_initial = Duration::from_millis(200);
    s.backoff_max = Duration::from_secs(1);
    s.stall_timeout = Duration::from_secs(3);
    s
}

/// Every frame that arrives within `window`.
fn collect(camera: &Camera, window: Duration) -> Vec<Frame> {
    let deadline = Instant::now() + window;
    let mut frames = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match camera.next_frame(left) {
            Some(frame) => frames.push(frame),
            None if camera.is_finished() => break,
            None => {}
        }
    }
    frames
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

fn threads() -> Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// A port nothing listens on, so connecting is refused at once.
fn refused_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn check_frame(frame: &Frame, lb: &Letterbox) -> Result<()> {
    ensure!(
        frame.letterbox == *lb,
        "letterbox {:?} != {lb:?}",
        frame.letterbox
    );
    ensure!(frame.input_size() == (INPUT_W, INPUT_H));
    ensure!(frame.pixels.len() == (INPUT_W * INPUT_H * 3) as usize);
    let row = |y: u32| {
        let start = (y * INPUT_W * 3) as usize;
        &frame.pixels[start..start + (INPUT_W * 3) as usize]
    };
    if lb.pad_top > 0 {
        let bottom_bar = lb.pad_top + lb.content_h;
        for y in [0, lb.pad_top - 1, bottom_bar, INPUT_H - 1] {
            ensure!(
                row(y).iter().all(|&v| v == PAD_VALUE),
                "row {y} of the bars is not all grey {PAD_VALUE}"
            );
        }
    }
    let middle = row(lb.pad_top + lb.content_h / 2);
    ensure!(
        middle.iter().any(|&v| v != PAD_VALUE),
        "the content row is all grey"
    );
    Ok(())
}

/// Streams the test video to a camera decoding with `decoder` and checks what the detector gets:
/// about 5 sampled frames a second from a stream decoded at the source's rate, letterboxed, in
/// order. Returns the camera, still streaming, with the server that feeds it.
fn sampled_and_letterboxed(name: &str, decoder: H264Decoder) -> Result<(RtspTestServer, Camera)> {
    let video = test_video();
    let probe = probe_video(&video)?;
    let server = RtspTestServer::start(&video)?;
    let mut s = settings(name, &server.url());
    s.detect_fps = 5.0;
    s.decoder = decoder;
    let camera = Camera::start(s)?;

    let started = Instant::now();
    let first = camera.next_frame(FIRST_FRAME).context("no first frame")?;
    eprintln!("{decoder:?}: first frame after {:?}", started.elapsed());
    let window = Duration::from_secs(3);
    let before = camera.stats();
    let frames = collect(&camera, window);
    let after = camera.stats();
    let fps = frames.len() as f64 / window.as_secs_f64();
    eprintln!(
        "{decoder:?}: {} frames in {window:?} = {fps:.1} fps; stats {after:?}",
        frames.len()
    );
    ensure!(
        (3.0..=7.0).contains(&fps),
        "{fps:.1} fps through {decoder:?}, expected about 5"
    );

    let decoded_fps = (after.frames_in - before.frames_in) as f64 / window.as_secs_f64();
    let source_fps = f64::from(probe.fps_n) / f64::from(probe.fps_d);
    ensure!(
        (decoded_fps - source_fps).abs() <= source_fps * 0.3,
        "{decoder:?} decoded {decoded_fps:.1} fps, the server sends {source_fps}"
    );

    let lb = Letterbox::new(probe.width, probe.height, INPUT_W, INPUT_H);
    if (probe.width, probe.height) == (1280, 720) {
        ensure!((lb.content_h, lb.pad_top) == (360, 12), "{lb:?}");
    }
    for frame in std::iter::once(&first).chain(&frames) {
        check_frame(frame, &lb)?;
        ensure!(&*frame.camera == name);
    }
    let mut previous = first.seq;
    for frame in &frames {
        ensure!(frame.seq > previous, "seq {} after {previous}", frame.seq);
        previous = frame.seq;
    }
    ensure!(
        after.state == CameraState::Streaming && after.reconnects == 0,
        "{after:?}"
    );
    Ok((server, camera))
}

#[test]
fn rtsp_stream_is_sampled_by_time_and_letterboxed() -> Result<()> {
    let _serial = serial();
    let (_server, camera) = sampled_and_letterboxed("cam-a", H264Decoder::Libav)?;

    // A consumer that falls behind finds the newest frame, not a backlog, and what it missed
    // is counted.
    let dropped_before = camera.stats().dropped;
    std::thread::sleep(Duration::from_secs(1));
    let latest = camera.take_latest().context("no frame after a pause")?;
    let age = latest.capture_time.elapsed()?;
    let dropped = camera.stats().dropped - dropped_before;
    ensure!(
        (3..=7).contains(&dropped),
        "{dropped} frames replaced in 1 s at 5 fps"
    );
    ensure!(
        age < Duration::from_millis(400),
        "the latest frame is {age:?} old"
    );
    ensure!(
        camera.take_latest().is_none(),
        "more than one frame waiting"
    );
    Ok(())
}

#[test]
fn rtsp_over_udp_streams_too() -> Result<()> {
    let _serial = serial();
    let server = RtspTestServer::start(test_video())?;
    let mut s = settings("cam-udp", &server.url());
    s.transport = Transport::Udp;
    let camera = Camera::start(s)?;
    camera.next_frame(FIRST_FRAME).context("no first frame")?;
    let window = Duration::from_secs(2);
    let fps = collect(&camera, window).len() as f64 / window.as_secs_f64();
    ensure!((3.0..=7.0).contains(&fps), "{fps:.1} fps over UDP");
    Ok(())
}

#[test]
fn rtsp_stream_decoded_by_openh264_is_sampled_and_letterboxed_too() -> Result<()> {
    let _serial = serial();
    sampled_and_letterboxed("cam-openh264", H264Decoder::OpenH264)?;
    Ok(())
}

#[test]
fn rtsp_camera_reconnects_when_the_server_comes_back() -> Result<()> {
    let _serial = serial();
    let mut server = RtspTestServer::start(test_video())?;
    let camera = Camera::start(settings("cam-b", &server.url()))?;
    camera.next_frame(FIRST_FRAME).context("no first frame")?;

    let stopped = Instant::now();
    server.stop()?;
    ensure!(
        wait_until(Duration::from_secs(10), || camera.stats().reconnects >= 2),
        "no reconnect attempts while the server is down: {:?}",
        camera.stats()
    );
    let noticed = stopped.elapsed();
    camera.take_latest();
    ensure!(
        camera.next_frame(Duration::from_millis(500)).is_none(),
        "frames while the server is down"
    );
    let down = camera.stats();
    ensure!(down.state != CameraState::Streaming, "{down:?}");
    ensure!(down.last_error.is_some(), "{down:?}");

    server.restart()?;
    let restarted = Instant::now();
    let frame = camera.next_frame(Duration::from_secs(5));
    let recovered = restarted.elapsed();
    let up = camera.stats();
    eprintln!(
        "outage: {} reconnect attempts in {noticed:?}, frames again {recovered:?} after the restart; {up:?}",
        down.reconnects
    );
    ensure!(
        frame.is_some(),
        "no frame within 5 s of the restart: {up:?}"
    );
    ensure!(up.reconnects > down.reconnects || up.reconnects >= 2);
    ensure!(wait_until(Duration::from_secs(2), || camera.stats().state
        == CameraState::Streaming));
    Ok(())
}

#[test]
fn hung_camera_is_restarted_by_the_watchdog() -> Result<()> {
    let _serial = serial();
    let server = RtspTestServer::start(test_video())?;
    let relay = FreezableRelay::start(server.port())?;
    let mut s = settings("cam-hung", &relay.rtsp_url("/cam"));
    s.stall_timeout = Duration::from_secs(1);
    let camera = Camera::start(s)?;
    camera.next_frame(FIRST_FRAME).context("no first frame")?;

    relay.freeze();
    let frozen = Instant::now();
    ensure!(
        wait_until(Duration::from_secs(5), || camera.stats().reconnects >= 1),
        "the watchdog did not restart a hung camera: {:?}",
        camera.stats()
    );
    let detected = frozen.elapsed();
    let hung = camera.stats();
    ensure!(
        hung.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no frame")),
        "{hung:?}"
    );
    camera.take_latest();
    ensure!(camera.next_frame(Duration::from_millis(300)).is_none());

    relay.thaw();
    let thawed = Instant::now();
    let frame = camera.next_frame(Duration::from_secs(5));
    eprintln!(
        "hung camera: restarted {detected:?} after the freeze, frames again {:?} after the thaw; {:?}",
        thawed.elapsed(),
        camera.stats()
    );
    ensure!(frame.is_some(), "no frame within 5 s of the thaw");
    Ok(())
}

#[test]
fn unreachable_camera_backs_off_without_disturbing_a_healthy_one() -> Result<()> {
    let _serial = serial();
    let server = RtspTestServer::start(test_video())?;
    let mut bad = settings(
        "cam-bad",
        &format!("rtsp://127.0.0.1:{}/cam", refused_port()?),
    );
    bad.backoff_initial = Duration::from_millis(100);
    bad.backoff_max = Duration::from_millis(400);
    let bad = Camera::start(bad)?;
    let mut good = settings("cam-good", &server.url());
    good.detect_fps = 5.0;
    let good = Camera::start(good)?;
    good.next_frame(FIRST_FRAME).context("no first frame")?;

    let window = Duration::from_secs(4);
    let bad_before = bad.stats().reconnects;
    let threads_before = threads()?;
    let frames = collect(&good, window);
    let threads_after = threads()?;
    // Ten rebuilt pipelines must not leave their threads behind.
    ensure!(
        threads_after <= threads_before + 3,
        "threads grew from {threads_before} to {threads_after}"
    );
    let fps = frames.len() as f64 / window.as_secs_f64();
    let bad_stats = bad.stats();
    eprintln!("healthy camera: {fps:.1} fps; unreachable camera: {bad_stats:?}");
    ensure!((3.0..=7.0).contains(&fps), "healthy camera at {fps:.1} fps");
    // 100 ms doubling to 400 ms: about ten attempts in 4 s; a busy loop would make hundreds.
    let attempts = bad_stats.reconnects - bad_before;
    ensure!(
        (4..=20).contains(&attempts),
        "{attempts} attempts in {window:?}"
    );
    ensure!(bad_stats.frames_out == 0 && bad_stats.frames_in == 0);
    ensure!(matches!(
        bad_stats.state,
        CameraState::Backoff | CameraState::Starting
    ));
    ensure!(bad_stats.last_error.is_some());
    ensure!(bad.next_frame(Duration::ZERO).is_none());
    Ok(())
}

#[test]
fn file_camera_samples_by_stream_time_as_fast_as_possible_and_finishes() -> Result<()> {
    let _serial = serial();
    let video = test_video();
    let probe = probe_video(&video)?;
    let url = gst::glib::filename_to_uri(&video, None)?;
    let mut s = settings("file", &url);
    s.detect_fps = 2.0;
    s.pace = Pace::AsFastAsPossible;
    let camera = Camera::start(s)?;

    let started = Instant::now();
    let deadline = started + probe.duration + Duration::from_secs(30);
    let mut frames = Vec::new();
    while Instant::now() < deadline {
        match camera.next_frame(Duration::from_secs(10)) {
            Some(frame) => frames.push(frame),
            None => break,
        }
    }
    let elapsed = started.elapsed();
    let stats = camera.stats();
    let expected = (probe.duration.as_secs_f64() * 2.0).ceil();
    eprintln!(
        "{} frames (expected {expected}) from {:?} of video in {elapsed:?}; {stats:?}",
        frames.len(),
        probe.duration
    );
    ensure!(camera.is_finished(), "{stats:?}");
    ensure!(
        (frames.len() as f64 - expected).abs() <= 3.0,
        "{} frames, expected {expected}",
        frames.len()
    );
    ensure!(elapsed < probe.duration, "not faster than real time");
    ensure!(stats.dropped == 0 && stats.frames_out == frames.len() as u64);
    let frame_time = Duration::from_secs_f64(f64::from(probe.fps_d) / f64::from(probe.fps_n));
    for pair in frames.windows(2) {
        let (a, b) = (
            pair[0].pts.context("no pts")?,
            pair[1].pts.context("no pts")?,
        );
        let gap = b.checked_sub(a).context("pts went backwards")?;
        ensure!(
            gap + frame_time >= Duration::from_millis(500)
                && gap <= Duration::from_millis(500) + frame_time,
            "frames {:?} apart",
            gap
        );
    }
    let lb = Letterbox::new(probe.width, probe.height, INPUT_W, INPUT_H);
    check_frame(&frames[frames.len() / 2], &lb)?;
    Ok(())
}

#[test]
fn realtime_file_camera_plays_at_the_video_speed() -> Result<()> {
    let _serial = serial();
    let video = test_video();
    let probe = probe_video(&video)?;
    let mut s = settings("file-rt", &gst::glib::filename_to_uri(&video, None)?);
    s.pace = Pace::Realtime;
    let camera = Camera::start(s)?;
    camera.next_frame(FIRST_FRAME).context("no first frame")?;
    let window = Duration::from_secs(3);
    let before = camera.stats().frames_in;
    let fps = collect(&camera, window).len() as f64 / window.as_secs_f64();
    let decoded_fps = (camera.stats().frames_in - before) as f64 / window.as_secs_f64();
    let source_fps = f64::from(probe.fps_n) / f64::from(probe.fps_d);
    eprintln!("real-time file: {fps:.1} fps out, {decoded_fps:.1} fps decoded");
    ensure!((3.0..=7.0).contains(&fps), "{fps:.1} fps, expected about 5");
    ensure!(
        (decoded_fps - source_fps).abs() <= source_fps * 0.3,
        "decoded at {decoded_fps:.1} fps, the video has {source_fps}"
    );
    Ok(())
}

#[test]
fn looping_file_starts_over_at_its_end() -> Result<()> {
    let _serial = serial();
    let video = test_video();
    let probe = probe_video(&video)?;
    let url = gst::glib::filename_to_uri(&video, None)?;
    let mut s = settings("loop", &url);
    s.detect_fps = 2.0;
    s.pace = Pace::AsFastAsPossible;
    s.loop_file = true;
    let camera = Camera::start(s)?;

    let one_pass = (probe.duration.as_secs_f64() * 2.0).ceil() as usize;
    let deadline = Instant::now() + probe.duration + Duration::from_secs(30);
    let mut frames: Vec<Frame> = Vec::new();
    while frames.len() < one_pass + 5 && Instant::now() < deadline {
        if let Some(frame) = camera.next_frame(Duration::from_secs(5)) {
            frames.push(frame);
        }
    }
    ensure!(frames.len() >= one_pass + 5, "only {} frames", frames.len());
    let rewinds = frames.windows(2).filter(|p| p[1].pts < p[0].pts).count();
    ensure!(rewinds == 1, "{rewinds} rewinds in {} frames", frames.len());
    ensure!(frames.windows(2).all(|p| p[1].seq == p[0].seq + 1));
    ensure!(!camera.is_finished() && camera.stats().reconnects == 0);
    Ok(())
}

/// Run as a child process by `cpu_cost_of_rtsp_ingest` so the server's encoder is not counted.
#[test]
#[ignore = "helper process for cpu_cost_of_rtsp_ingest"]
fn serve_for_cpu_measurement() -> Result<()> {
    let Ok(secs) = std::env::var("HELMETD_E2E_SERVE_SECS") else {
        return Ok(());
    };
    let server = RtspTestServer::start(test_video())?;
    println!("URL {}", server.url());
    std::thread::sleep(Duration::from_secs(secs.parse::<u64>()?.min(120)));
    Ok(())
}

/// User+system CPU time of a whole process (`"self"` or a pid).
fn process_cpu(pid: &str) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("odd /proc/<pid>/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // USER_HZ is 100 on every Linux ABI this runs on.
    Ok(Duration::from_millis(ticks * 10))
}

#[test]
#[ignore = "measurement, not a timed test: cargo test -p helmetd-e2e --test ingest_rtsp cpu_cost -- --ignored --nocapture"]
fn cpu_cost_of_rtsp_ingest() -> Result<()> {
    let _serial = serial();
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            "serve_for_cpu_measurement",
            "--nocapture",
        ])
        .env("HELMETD_E2E_SERVE_SECS", "60")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let url = BufReader::new(stdout)
        .lines()
        .take(50)
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("URL ").map(str::to_owned))
        .context("server child printed no URL")?;
    let measured = (|| -> Result<()> {
        for fps in [15.0, 5.0] {
            let mut s = settings("cpu", &url);
            s.detect_fps = fps;
            let camera = Camera::start(s)?;
            camera.next_frame(FIRST_FRAME).context("no first frame")?;
            std::thread::sleep(Duration::from_secs(1));
            let server = child.id().to_string();
            let (cpu0, server0) = (process_cpu("self")?, process_cpu(&server)?);
            let (t0, n0) = (Instant::now(), camera.stats().frames_out);
            let frames = collect(&camera, Duration::from_secs(10)).len();
            let (cpu, server_cpu) = (process_cpu("self")? - cpu0, process_cpu(&server)? - server0);
            let wall = t0.elapsed();
            let out = camera.stats().frames_out - n0;
            let percent = |d: Duration| 100.0 * d.as_secs_f64() / wall.as_secs_f64();
            eprintln!(
                "detect_fps {fps}: {frames} frames taken ({out} delivered) in {wall:.1?}; ingest CPU {cpu:?} = {:.1} % of one core, {:.2} ms per delivered frame; test server {:.1} %",
                percent(cpu),
                cpu.as_secs_f64() * 1000.0 / out.max(1) as f64,
                percent(server_cpu)
            );
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    measured
}
