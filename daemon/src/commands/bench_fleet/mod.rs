//! `helmetd bench fleet`: many gateways against many `helmetd cloud` replicas behind one
//! Mosquitto with a shared subscription (issue #20).
//!
//! **Parts.** One Mosquitto child on a free loopback port ([`broker`]); K `helmetd cloud` child
//! processes of this binary ([`replicas`]), by default with `--simulate-infer-ms` so a replica
//! costs a fixed time per request instead of a second of CPU, or with the real big model
//! (`--real-model`); N simulated gateways in this process ([`gateway`]), each the real edge
//! path: its own uplink session (client id, spool), its own guarded MQTT cloud client, sending
//! the letterbox content of frames of the bundled video (one per photo, with the edge model's
//! own boxes) at a fixed rate. Every phase starts fresh replicas and gateways, so counters are
//! per phase; the broker lives through the whole bench.
//!
//! **Fates.** Every request a gateway sent ends as exactly one of: answered in time, refused
//! (busy: overloaded or expired; other), answered late (after the edge decided alone), or never
//! answered. The bench tallies what each `ask` returned; the guard counts what it sent; after
//! the sending ends every request is waited for and late answers get [`LATE_DRAIN`] to come.
//! `unaccounted` is the guard's count less the bench's tally, and must be 0.
//!
//! **Phases.** The scaling sweep (K = 1, 2, 4, … up to `--replicas`); replica loss (`kill -9`
//! of one replica a third into the phase, restarted later: its requests' fate, how fast the
//! others take the load, how fast it rejoins); a broker restart; fair share (a few calm
//! gateways using half the capacity, one gateway at 10× their rate); and with `--real-model`
//! the sweep with the big model. Throughput is answers in time per second after the first
//! second (the clients' pacers settle then). CPU is each process's utime + stime over the
//! phase: the broker's share is what the sizing needs. `--broker-limit` runs instead only
//! [`broker_limit`]: the broker alone on its own CPU, driven to saturation.

mod broker;
mod broker_limit;
mod gateway;
mod replicas;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use helmet_pipelines::detect::Detector;
use helmet_pipelines::output::{content_image, encode_jpeg};
use helmet_pipelines::rtsp_server::probe_video;
use helmet_pipelines::runtime;
use nix::unistd::{SysconfVar, sysconf};
use tokio::time::Instant;

use super::bench_uplink::{photo_times, request_packet_len, sample_frames};
use super::child_daemon::cpu_ticks;
use super::nearest_rank;
use crate::config::{self, Config, ConfigSource};
use crate::joint::mqtt::MqttSettings;
use crate::joint::protocol::HardExampleMeta;
use broker::Broker;
use gateway::{Fates, Gateway, Photo, Tally};
use replicas::{Counters, Model, Replica};

/// Late answers still counted after every request ended.
const LATE_DRAIN: Duration = Duration::from_secs(2);
/// Answers in the first second are left out of the rates: the pacers settle then.
const WARMUP_S: f64 = 1.0;
/// The fair-share phase: calm gateways, their share of the capacity, and the flooder's factor.
const CALM_GATEWAYS: usize = 4;
const CALM_SHARE: f64 = 0.5;
const FLOOD_FACTOR: f64 = 10.0;
/// A recovery is when answers in time per second over a 1 s window reach this share of what
/// was expected.
const RECOVERED: f64 = 0.9;
const STALL_TICK: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, clap::Args)]
pub struct BenchFleetArgs {
    /// Simulated gateways, each a real uplink session with its own client id, spool and cloud client.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub gateways: u32,
    /// Largest replica count of the sweep (1, 2, 4, … up to it).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub replicas: u32,
    /// Seconds each phase sends (real-model phases: at least 30).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub seconds: u64,
    /// Hard examples per second each gateway sends.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// The replicas' fake inference time (`helmetd cloud --simulate-infer-ms`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub infer_ms: u64,
    /// The gateways' cloud.timeout_ms with the fake model.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Also the sweep with the real big model (K = 1, 2 at most), off by default: a second of CPU per request.
    #[arg(long)]
    pub real_model: bool,
    /// The gateways' cloud.timeout_ms with the real model.
    #[arg(long, default_value_t = 5000)]
    pub real_timeout_ms: u64,
    /// Only the scaling sweep: no replica loss, broker restart or fair share.
    #[arg(long)]
    pub scaling_only: bool,
    /// Video the hard examples come from (default: the bundled media/helmet-test.mp4).
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// Only the broker's limit: Mosquitto pinned to one CPU, a load generator to another, the
    /// offered rate stepped up (`--limit-rates`) until the broker or the generator saturates.
    #[arg(long)]
    pub broker_limit: bool,
    /// Offered requests per second of the `--broker-limit` steps, ascending.
    #[arg(long, value_delimiter = ',', default_values_t = [250.0, 500.0, 1000.0, 2000.0, 4000.0, 6000.0, 8000.0, 10000.0, 12000.0, 16000.0])]
    pub limit_rates: Vec<f64>,
    /// Seconds each `--broker-limit` step offers its rate.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub limit_step_s: u64,
    /// `--broker-limit`: gateways' connections sending the requests.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub limit_publishers: u32,
    /// `--broker-limit`: replicas' connections on the shared subscription, counting and answering.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub limit_subscribers: u32,
}

impl BenchFleetArgs {
    fn limit_settings(&self) -> anyhow::Result<broker_limit::LimitSettings> {
        let rates = &self.limit_rates;
        anyhow::ensure!(
            !rates.is_empty() && rates.len() <= broker_limit::MAX_STEPS,
            "--limit-rates needs 1 to {} rates",
            broker_limit::MAX_STEPS
        );
        anyhow::ensure!(
            rates.iter().all(|r| r.is_finite() && *r > 0.0 && *r <= 1e6)
                && rates.windows(2).all(|w| w[0] < w[1]),
            "--limit-rates {rates:?}: each in (0, 1000000], ascending"
        );
        Ok(broker_limit::LimitSettings {
            rates: rates.clone(),
            step: Duration::from_secs(self.limit_step_s),
            publishers: self.limit_publishers as usize,
            subscribers: self.limit_subscribers as usize,
        })
    }
}

/// Something done to the fleet during a phase, at a share of its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    KillReplica,
    RestartReplica,
    RestartBroker,
}

struct PhaseSpec {
    name: String,
    replicas: usize,
    model: Model,
    timeout: Duration,
    seconds: u64,
    /// Each gateway's rate.
    rates: Vec<f64>,
    events: Vec<(f64, Event)>,
}

/// What the fault phases found; nothing with `--scaling-only`.
struct Faults {
    loss_unanswered: Option<u64>,
    rejoin: Option<Duration>,
    calm_in_time: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            loss_unanswered: None,
            rejoin: None,
            calm_in_time: f64::NAN,
        }
    }
}

/// A scaling sweep's settings.
struct Sweep {
    title: String,
    /// Names the phases: `<label>=<K>`.
    label: &'static str,
    model: Model,
    timeout: Duration,
    seconds: u64,
}

impl PhaseSpec {
    fn new(
        name: String,
        replicas: usize,
        model: Model,
        timeout: Duration,
        seconds: u64,
        rates: Vec<f64>,
    ) -> PhaseSpec {
        PhaseSpec {
            name,
            replicas,
            model,
            timeout,
            seconds,
            rates,
            events: Vec::new(),
        }
    }
}

/// CPU of each part over a phase, in cores (1.0 = one core busy).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    broker: f64,
    replicas: f64,
    bench: f64,
}

struct Outcome {
    spec: PhaseSpec,
    fates: Fates,
    /// Each gateway's own.
    gateways: Vec<(Fates, Tally)>,
    latency_ms: Vec<f64>,
    answered_at: Vec<f64>,
    cpu: Cpu,
    /// What the stopped replicas counted (killed ones count nothing).
    counted: Counters,
    /// When each event happened (s into the phase), and for a restart how long it took.
    events: Vec<(Event, f64, Duration)>,
    /// The longest a timer of the bench's own runtime fired late: the gateways' answers wait
    /// that long too, so a stall of the bench shows here rather than as a slow cloud.
    stall: Duration,
}

impl Outcome {
    /// Answers in time per second after the warm-up.
    fn throughput(&self) -> f64 {
        rate_between(&self.answered_at, WARMUP_S, self.spec.seconds as f64)
    }

    fn percentile(&self, p: f64) -> f64 {
        nearest_rank(&self.latency_ms, p).unwrap_or(f64::NAN)
    }

    /// Whether the bench's own runtime stalled long enough to turn answers late.
    fn bench_limited(&self) -> bool {
        self.stall * 4 > self.spec.timeout
    }

    /// Requests and answers through the broker per second.
    fn messages_per_s(&self) -> f64 {
        let f = &self.fates;
        (f.sent + f.in_time + f.late + f.refused()) as f64 / self.spec.seconds as f64
    }
}

/// Answers per second between `from` and `to` s.
fn rate_between(at: &[f64], from: f64, to: f64) -> f64 {
    if to <= from {
        return f64::NAN;
    }
    at.iter().filter(|t| (from..to).contains(*t)).count() as f64 / (to - from)
}

/// Seconds from `from` until a 1 s window of answers first reaches `target` per second.
fn recovery(at: &[f64], from: f64, end: f64, target: f64) -> Option<f64> {
    (0u32..)
        .map(|step| from + f64::from(step) / 10.0)
        .take_while(|t| t + 1.0 <= end)
        .find(|t| rate_between(at, *t, t + 1.0) >= target)
        .map(|t| t + 1.0 - from)
}

/// A directory of the bench's own, removed at the end.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct Bench {
    helmetd: PathBuf,
    dir: WorkDir,
    broker: Broker,
    base: Config,
    photos: Arc<Vec<Photo>>,
    clock_ticks: f64,
    phases: u32,
}

/// Runs every phase, prints a table per phase, returns the `RESULT` line.
pub fn run(args: &BenchFleetArgs) -> anyhow::Result<String> {
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0 && args.rate <= 1000.0,
        "--rate {} is outside (0, 1000]",
        args.rate
    );
    let limit = args
        .broker_limit
        .then(|| args.limit_settings())
        .transpose()?;
    let video = args
        .video
        .clone()
        .unwrap_or_else(|| config::resolve_path(Path::new("media/helmet-test.mp4")))
        .canonicalize()
        .context("the video to take hard examples from")?;
    let cfg = config::load(ConfigSource::Default, &[])?;
    let configured = cfg.inference.onnxruntime.as_os_str();
    runtime::init_onnxruntime((!configured.is_empty()).then_some(Path::new(configured)))?;
    let (photos, request_bytes) = hard_examples(&cfg, &video)?;

    // The spools go to memory when it can: a hundred gateways syncing one shared disk would
    // measure that disk, where each real gateway has its own.
    let shm = Path::new("/dev/shm");
    let root = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = WorkDir(root.join(format!("helmetd-bench-fleet-{}", std::process::id())));
    fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
    let mut broker = Broker::start(&dir.0)?;
    let base = config::load(
        ConfigSource::Default,
        &[format!("mqtt.url={}", broker.url())],
    )?;
    let clock_ticks = sysconf(SysconfVar::CLK_TCK)?
        .filter(|t| *t > 0)
        .context("sysconf(CLK_TCK)")? as f64;
    if let Some(settings) = limit {
        return broker_limit::run(
            &settings,
            &mut broker,
            &base,
            &photos,
            request_bytes,
            clock_ticks,
        );
    }
    println!(
        "helmetd bench fleet: {} gateways at {}/s, replicas up to {}, {} s per phase, fake inference {} ms, timeout {} ms; {} hard examples from {}, {:.0} B per request",
        args.gateways,
        args.rate,
        args.replicas,
        args.seconds,
        args.infer_ms,
        args.timeout_ms,
        photos.len(),
        video.display(),
        request_bytes
    );
    let mut bench = Bench {
        helmetd: std::env::current_exe().context("this executable")?,
        dir,
        broker,
        base,
        photos: Arc::new(photos),
        clock_ticks,
        phases: 0,
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    tokio.block_on(bench.all(args, request_bytes))
}

/// One hard example per photo of the video, with the edge model's boxes, and the average bytes
/// of its MQTT 5 PUBLISH.
fn hard_examples(cfg: &Config, video: &Path) -> anyhow::Result<(Vec<Photo>, f64)> {
    let spec = super::detect::edge_model_spec(cfg, None, None);
    let mut detector = Detector::load(&spec)
        .with_context(|| format!("loading the edge model {}", spec.path.display()))?;
    let targets = photo_times(probe_video(video)?.duration);
    let frames = sample_frames(video, spec.input_w, spec.input_h, &targets)?;
    let cloud = MqttSettings::from_config(cfg);
    let mut bytes = 0;
    let mut photos = Vec::with_capacity(frames.len());
    for frame in &frames {
        let boxes = detector.detect(frame)?;
        let image = content_image(frame);
        let meta = HardExampleMeta::for_frame(frame, &boxes);
        bytes += request_packet_len(&cloud, &meta, encode_jpeg(&image, cloud.jpeg_quality)?);
        photos.push(Photo { image, meta });
    }
    let average = bytes as f64 / photos.len().max(1) as f64;
    Ok((photos, average))
}

impl Bench {
    async fn all(&mut self, args: &BenchFleetArgs, request_bytes: f64) -> anyhow::Result<String> {
        let max_k = args.replicas as usize;
        let ks: Vec<usize> = std::iter::successors(Some(1), |k| Some(k * 2))
            .take_while(|k| *k < max_k)
            .chain([max_k])
            .collect();
        let mut all = Fates::default();
        let fake = Sweep {
            title: format!("scaling, fake inference {} ms", args.infer_ms),
            label: "K",
            model: Model::Simulated(Duration::from_millis(args.infer_ms)),
            timeout: Duration::from_millis(args.timeout_ms),
            seconds: args.seconds,
        };
        let scaling = self.sweep(&fake, &ks, args, &mut all).await?;
        let one = scaling[0].throughput();
        let largest = scaling.last().context("no scaling phase")?;
        let scaling_efficiency = largest.throughput() / (largest.spec.replicas as f64 * one);
        let broker = broker_figures(largest, request_bytes);

        let faults = if args.scaling_only {
            Faults::default()
        } else {
            self.faults(args, one, &mut all).await?
        };
        if args.real_model {
            let real = Sweep {
                title: format!(
                    "scaling, real big model, timeout {} ms",
                    args.real_timeout_ms
                ),
                label: "real K",
                model: Model::Real,
                timeout: Duration::from_millis(args.real_timeout_ms),
                seconds: args.seconds.max(30),
            };
            self.sweep(&real, &ks[..ks.len().min(2)], args, &mut all)
                .await?;
        }

        println!();
        println!(
            "all phases: sent {} | in time {} | late {} | refused {} | unanswered {} | unaccounted {} | paced (not sent) {}",
            all.sent,
            all.in_time,
            all.late,
            all.refused(),
            all.unanswered,
            all.unaccounted,
            all.paced
        );
        Ok(format!(
            "RESULT scaling_efficiency={scaling_efficiency:.3} answered_in_time={} late={} refused={} unaccounted={} unanswered={} sent={} per_replica_per_s={one:.2} largest_k={} broker_cpu_share={:.3} broker_msgs_per_cpu_s={:.0} broker_mb_per_cpu_s={:.1} bytes_per_request={request_bytes:.0} loss_unanswered={} rejoin_s={} fair_calm_in_time={:.3}",
            all.in_time,
            all.late,
            all.refused(),
            all.unaccounted,
            all.unanswered,
            all.sent,
            largest.spec.replicas,
            broker.share,
            broker.msgs_per_cpu_s,
            broker.mb_per_cpu_s,
            faults
                .loss_unanswered
                .map_or_else(|| "nan".to_string(), |n| n.to_string()),
            faults
                .rejoin
                .map_or_else(|| "nan".to_string(), |d| format!("{:.2}", d.as_secs_f64())),
            faults.calm_in_time,
        ))
    }

    /// One phase per replica count in `ks`, all gateways at `--rate`; prints each phase and how
    /// its throughput compares with K times the first's.
    async fn sweep(
        &mut self,
        sweep: &Sweep,
        ks: &[usize],
        args: &BenchFleetArgs,
        all: &mut Fates,
    ) -> anyhow::Result<Vec<Outcome>> {
        println!();
        println!("{}:", sweep.title);
        print_header();
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(ks.len());
        for &k in ks {
            let outcome = self
                .phase(PhaseSpec::new(
                    format!("{}={k}", sweep.label),
                    k,
                    sweep.model,
                    sweep.timeout,
                    sweep.seconds,
                    vec![args.rate; args.gateways as usize],
                ))
                .await?;
            print_row(&outcome);
            all.add(outcome.fates);
            outcomes.push(outcome);
        }
        let one = outcomes.first().map_or(f64::NAN, Outcome::throughput);
        for o in &outcomes {
            let efficiency = o.throughput() / (o.spec.replicas as f64 * one);
            println!(
                "  {}={}: {:.2} answers in time/s = {:.2} × K × one replica's ({:.2}/s){}",
                sweep.label,
                o.spec.replicas,
                o.throughput(),
                efficiency,
                one,
                if efficiency >= 0.9 {
                    ""
                } else {
                    "  (below the 0.9 goal)"
                }
            );
            if o.bench_limited() {
                println!(
                    "    the bench itself stalled {} ms (over a quarter of the timeout): this phase measures the machine running it, not the fleet",
                    o.stall.as_millis()
                );
            }
        }
        Ok(outcomes)
    }

    /// Replica loss, broker restart and fair share.
    async fn faults(
        &mut self,
        args: &BenchFleetArgs,
        per_replica: f64,
        all: &mut Fates,
    ) -> anyhow::Result<Faults> {
        let fake = Model::Simulated(Duration::from_millis(args.infer_ms));
        let timeout = Duration::from_millis(args.timeout_ms);
        let rates = vec![args.rate; args.gateways as usize];
        let loss_k = (args.replicas as usize).clamp(2, 4);
        let mut loss = PhaseSpec::new(
            format!("loss K={loss_k}"),
            loss_k,
            fake,
            timeout,
            args.seconds,
            rates.clone(),
        );
        loss.events = vec![(0.3, Event::KillReplica), (0.55, Event::RestartReplica)];
        println!();
        println!("replica loss: kill -9 of one of {loss_k} replicas at 30 %, restarted at 55 %:");
        print_header();
        let loss = self.phase(loss).await?;
        print_row(&loss);
        let (loss_unanswered, rejoin) = report_loss(&loss);
        all.add(loss.fates);

        let mut restart = PhaseSpec::new(
            "broker restart K=2".into(),
            2,
            fake,
            timeout,
            args.seconds,
            rates.clone(),
        );
        restart.events = vec![(0.4, Event::RestartBroker)];
        println!();
        println!("broker restart at 40 %, 2 replicas:");
        print_header();
        let restart = self.phase(restart).await?;
        print_row(&restart);
        report_broker_restart(&restart);
        all.add(restart.fates);

        // Twice what one replica answered in the sweep, else what the fake time allows.
        let capacity = 2.0
            * if per_replica > 0.0 {
                per_replica
            } else {
                1000.0 / args.infer_ms as f64
            };
        let calm = CALM_SHARE * capacity / CALM_GATEWAYS as f64;
        let mut fair_rates = vec![calm; CALM_GATEWAYS];
        fair_rates.push(FLOOD_FACTOR * calm);
        println!();
        println!(
            "fair share, 2 replicas: {CALM_GATEWAYS} calm gateways at {calm:.2}/s ({:.0} % of the capacity), one at {:.2}/s:",
            100.0 * CALM_SHARE,
            FLOOD_FACTOR * calm
        );
        print_header();
        let fair = self
            .phase(PhaseSpec::new(
                "fair share K=2".into(),
                2,
                fake,
                timeout,
                args.seconds,
                fair_rates,
            ))
            .await?;
        print_row(&fair);
        let calm_in_time = report_fair(&fair);
        all.add(fair.fates);

        Ok(Faults {
            loss_unanswered: Some(loss_unanswered),
            rejoin,
            calm_in_time,
        })
    }

    /// Starts the phase's replicas and gateways, sends, applies the events, waits for every
    /// request's end, and stops them.
    async fn phase(&mut self, spec: PhaseSpec) -> anyhow::Result<Outcome> {
        self.phases += 1;
        let dir = self.dir.0.join(format!("phase-{}", self.phases));
        fs::create_dir_all(&dir)?;
        let url = self.broker.url();
        let prefix = format!("p{}", self.phases);
        let mut fleet = Vec::with_capacity(spec.replicas);
        for k in 0..spec.replicas {
            fleet.push(Replica::spawn(
                &self.helmetd,
                &dir,
                &url,
                spec.model,
                &format!("{prefix}-cloud{k}"),
                0,
            )?);
        }
        for replica in &mut fleet {
            replica.ready(spec.model).await?;
        }
        let mut base = self.base.clone();
        base.cloud.timeout_ms = u64::try_from(spec.timeout.as_millis())?;
        let gateways =
            futures_util::future::try_join_all(spec.rates.iter().enumerate().map(|(i, rate)| {
                let node = format!("{prefix}-gw{i}");
                let spool = dir.join(&node);
                let base = &base;
                async move { Gateway::open(base, &node, &spool, *rate).await }
            }))
            .await?;
        let gateways: Vec<Arc<Gateway>> = gateways.into_iter().map(Arc::new).collect();

        let cpu_before = self.cpu_sample(&fleet);
        let started = Instant::now();
        let seconds = Duration::from_secs(spec.seconds);
        let until = started + seconds;
        let probe = tokio::spawn(stall_probe(until));
        let count = gateways.len();
        let senders: Vec<_> = gateways
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let (g, photos) = (Arc::clone(g), Arc::clone(&self.photos));
                tokio::spawn(async move {
                    g.send(photos, i as f64 / count as f64, started, until)
                        .await
                })
            })
            .collect();
        let mut events = Vec::new();
        for &(at, event) in &spec.events {
            tokio::time::sleep_until(started + seconds.mul_f64(at)).await;
            let t = started.elapsed().as_secs_f64();
            let took = Instant::now();
            match event {
                Event::KillReplica => fleet[0].kill9(),
                Event::RestartReplica => {
                    let name = fleet[0].name().to_string();
                    fleet[0] = Replica::spawn(&self.helmetd, &dir, &url, spec.model, &name, 1)?;
                    fleet[0].ready(spec.model).await?;
                }
                Event::RestartBroker => tokio::task::block_in_place(|| self.broker.restart())?,
            }
            events.push((event, t, took.elapsed()));
        }
        for sender in senders {
            sender.await?;
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu_after = self.cpu_sample(&fleet);
        let stall = probe.await?;
        tokio::time::sleep(LATE_DRAIN).await;

        let mut fates = Fates::default();
        let mut per_gateway = Vec::with_capacity(gateways.len());
        let (mut latency_ms, mut answered_at) = (Vec::new(), Vec::new());
        for g in &gateways {
            let (f, tally) = g.fates();
            if f.unaccounted != 0 {
                println!("  {}: {} requests unaccounted for", g.node(), f.unaccounted);
            }
            fates.add(f);
            latency_ms.extend_from_slice(&tally.latency_ms);
            answered_at.extend_from_slice(&tally.answered_at);
            per_gateway.push((f, tally));
        }
        futures_util::future::join_all(gateways.iter().map(|g| g.close())).await;
        let mut counted = Counters::default();
        for replica in &mut fleet {
            if let Some(c) = tokio::task::block_in_place(|| replica.stop())? {
                counted.add(c);
            }
        }
        latency_ms.sort_by(f64::total_cmp);
        answered_at.sort_by(f64::total_cmp);
        Ok(Outcome {
            spec,
            fates,
            gateways: per_gateway,
            latency_ms,
            answered_at,
            cpu: cpu_before.since(&cpu_after, wall, self.clock_ticks),
            counted,
            events,
            stall,
        })
    }

    fn cpu_sample(&self, fleet: &[Replica]) -> CpuSample {
        CpuSample {
            broker: self.broker.pid().and_then(|p| cpu_ticks(p).ok()),
            replicas: fleet.iter().map(|r| (r.pid(), r.cpu_ticks())).collect(),
            bench: cpu_ticks(std::process::id()).ok(),
        }
    }
}

/// Sleeps [`STALL_TICK`] at a time until `until`; returns the longest it woke late.
async fn stall_probe(until: Instant) -> Duration {
    let mut worst = Duration::ZERO;
    while Instant::now() < until {
        let due = Instant::now() + STALL_TICK;
        tokio::time::sleep_until(due).await;
        worst = worst.max(Instant::now() - due);
    }
    worst
}

/// CPU ticks of each part at one moment.
struct CpuSample {
    broker: Option<u64>,
    replicas: Vec<(Option<u32>, Option<u64>)>,
    bench: Option<u64>,
}

impl CpuSample {
    /// Cores used from `self` to `later`, `wall` seconds apart. A process that was restarted in
    /// between (another pid) is left out: its ticks started again from zero.
    fn since(&self, later: &CpuSample, wall: f64, clock_ticks: f64) -> Cpu {
        let cores = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if b >= a => (b - a) as f64 / clock_ticks / wall,
            _ => 0.0,
        };
        let replicas = self
            .replicas
            .iter()
            .zip(&later.replicas)
            .filter(|((p0, _), (p1, _))| p0.is_some() && p0 == p1)
            .map(|((_, a), (_, b))| cores(*a, *b))
            .sum();
        Cpu {
            broker: cores(self.broker, later.broker),
            replicas,
            bench: cores(self.bench, later.bench),
        }
    }
}

fn print_header() {
    println!(
        "  {:<20} {:>5} {:>7} {:>7} {:>9} {:>7} {:>7} {:>6} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "phase",
        "gw",
        "sent/s",
        "paced/s",
        "in time/s",
        "p50 ms",
        "p99 ms",
        "late",
        "refused",
        "unansw",
        "unacc",
        "replic",
        "cpu br",
        "cpu rp",
        "cpu gw"
    );
}

fn print_row(o: &Outcome) {
    let s = o.spec.seconds as f64;
    let f = &o.fates;
    println!(
        "  {:<20} {:>5} {:>7.1} {:>7.1} {:>9.1} {:>7.0} {:>7.0} {:>6} {:>7} {:>6} {:>6} {:>6} {:>6.2} {:>6.2} {:>6.2}",
        o.spec.name,
        o.spec.rates.len(),
        f.sent as f64 / s,
        f.paced as f64 / s,
        o.throughput(),
        o.percentile(0.5),
        o.percentile(0.99),
        f.late,
        f.refused(),
        f.unanswered,
        f.unaccounted,
        o.spec.replicas,
        o.cpu.broker,
        o.cpu.replicas,
        o.cpu.bench
    );
    println!(
        "  {:<20} refused busy {} other {} | replicas counted {} requests, {} answered, {} refused | unmatched answers {} | bench stalled up to {} ms",
        "",
        f.refused_busy,
        f.refused_other,
        o.counted.requests,
        o.counted.answered,
        o.counted.refused,
        f.unmatched,
        o.stall.as_millis()
    );
}

/// The broker's share of the CPU and its cost per message at the largest K.
struct BrokerFigures {
    share: f64,
    msgs_per_cpu_s: f64,
    mb_per_cpu_s: f64,
}

fn broker_figures(o: &Outcome, request_bytes: f64) -> BrokerFigures {
    let total = o.cpu.broker + o.cpu.replicas + o.cpu.bench;
    let messages = o.messages_per_s();
    let mb = o.fates.sent as f64 * request_bytes / o.spec.seconds as f64 / 1e6;
    // Below a clock tick per second the broker's cost is not measured.
    let per_core = |v: f64| {
        if o.cpu.broker > 0.01 {
            v / o.cpu.broker
        } else {
            f64::NAN
        }
    };
    let figures = BrokerFigures {
        share: o.cpu.broker / total,
        msgs_per_cpu_s: per_core(messages),
        mb_per_cpu_s: per_core(mb),
    };
    println!(
        "  broker at K={}: {:.0} messages/s in (requests and answers), {:.2} MB/s of hard examples, {:.2} of a core = {:.0} % of the CPU the fleet used; at this load one broker core would carry ≈ {:.0} messages/s, {:.1} MB/s of hard examples ({:.0} B each), a linear extrapolation (`--broker-limit` measures the limit)",
        o.spec.replicas,
        messages,
        mb,
        o.cpu.broker,
        100.0 * figures.share,
        figures.msgs_per_cpu_s,
        figures.mb_per_cpu_s,
        request_bytes
    );
    figures
}

/// The kill's cost and the recovery; returns the requests never answered and the rejoin time.
fn report_loss(o: &Outcome) -> (u64, Option<Duration>) {
    let end = o.spec.seconds as f64;
    let k = o.spec.replicas as f64;
    let kill = o.events.iter().find(|e| e.0 == Event::KillReplica);
    let restart = o.events.iter().find(|e| e.0 == Event::RestartReplica);
    if let Some(&(_, at, _)) = kill {
        let before = rate_between(&o.answered_at, WARMUP_S, at);
        let target = RECOVERED * before * (k - 1.0) / k;
        let took = recovery(&o.answered_at, at, restart.map_or(end, |r| r.1), target);
        println!(
            "  kill -9 at {at:.1} s: {before:.1} answers in time/s before; the {} others reach {:.1}/s ({:.0} % of their share) {}",
            o.spec.replicas - 1,
            target,
            100.0 * RECOVERED,
            took.map_or_else(
                || "not before the restart".to_string(),
                |t| format!("{t:.1} s after the kill")
            )
        );
        println!(
            "  requests never answered: {} (held by the killed replica or lost with its session; their edges decided alone), late {}",
            o.fates.unanswered, o.fates.late
        );
    }
    let rejoin = restart.map(|&(_, at, took)| {
        let back = at + took.as_secs_f64();
        println!(
            "  restarted at {at:.1} s, subscribed again {:.2} s later; {:.1} answers in time/s from then on",
            took.as_secs_f64(),
            rate_between(&o.answered_at, back, end)
        );
        took
    });
    (o.fates.unanswered, rejoin)
}

fn report_broker_restart(o: &Outcome) {
    let Some(&(_, at, took)) = o.events.first() else {
        return;
    };
    let end = o.spec.seconds as f64;
    let before = rate_between(&o.answered_at, WARMUP_S, at);
    let back = at + took.as_secs_f64();
    let recovered = recovery(&o.answered_at, back, end, RECOVERED * before);
    println!(
        "  broker stopped at {at:.1} s, listening again {:.2} s later; {before:.1} answers in time/s before, {:.0} % of that {}",
        took.as_secs_f64(),
        100.0 * RECOVERED,
        recovered.map_or_else(
            || "not reached again".to_string(),
            |t| format!("again {t:.1} s after the restart")
        )
    );
}

/// The calm gateways' fate next to the flooder's; returns the calm in-time share of sent.
fn report_fair(o: &Outcome) -> f64 {
    let (calm, flood) = o.gateways.split_at(o.gateways.len().saturating_sub(1));
    let mut calm_fates = Fates::default();
    let mut calm_latency = Vec::new();
    for (f, t) in calm {
        calm_fates.add(*f);
        calm_latency.extend_from_slice(&t.latency_ms);
    }
    calm_latency.sort_by(f64::total_cmp);
    let share = |f: &Fates| f.in_time as f64 / f.sent.max(1) as f64;
    println!(
        "  calm gateways: {} sent, {:.3} answered in time (p99 {:.0} ms), {} late, {} refused, {} unanswered",
        calm_fates.sent,
        share(&calm_fates),
        nearest_rank(&calm_latency, 0.99).unwrap_or(f64::NAN),
        calm_fates.late,
        calm_fates.refused(),
        calm_fates.unanswered
    );
    if let Some((f, _)) = flood.first() {
        println!(
            "  flooding gateway: {} sent ({} more paced by its own client), {:.3} answered in time, {} refused, {} late, {} unanswered",
            f.sent,
            f.paced,
            share(f),
            f.refused(),
            f.late,
            f.unanswered
        );
    }
    share(&calm_fates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_recovery_come_from_answer_times() {
        // 10/s for 3 s, nothing for 1 s, then 4/s, then 10/s again.
        let mut at: Vec<f64> = (0..30).map(|i| f64::from(i) / 10.0).collect();
        at.extend((0..4).map(|i| 4.0 + f64::from(i) / 4.0));
        at.extend((0..20).map(|i| 5.0 + f64::from(i) / 10.0));
        assert_eq!(rate_between(&at, 1.0, 3.0), 10.0);
        assert_eq!(rate_between(&at, 3.0, 4.0), 0.0);
        assert!(rate_between(&at, 2.0, 2.0).is_nan());
        let back = recovery(&at, 3.0, 7.0, 9.5).unwrap();
        assert!((back - 3.0).abs() < 1e-9, "{back}");
        assert_eq!(recovery(&at, 3.0, 4.5, 9.5), None);
    }
}
