//! `helmetd bench fleet --broker-limit`: where one Mosquitto stops being enough (issue #20).
//!
//! In the fleet phases the replicas and the gateways run out of this machine's CPU long before
//! the broker does, so its limit there is an extrapolation. This phase measures the broker
//! alone: Mosquitto pinned to one CPU, a load generator (this process, every thread) pinned to
//! another, doing as little per request as the protocol allows. Publishers send the gateways'
//! requests (the photos' JPEG, the MQTT 5 properties of [`protocol::request_properties`]: response
//! topic, correlation data, message expiry; QoS 1) to the request topic; subscribers on the
//! shared subscription count each request and answer it on its response topic with a small
//! result (QoS 1), as replicas do. Each request costs the broker two messages in and two out,
//! plus their acknowledgements. The offered rate is stepped up until delivery stops following
//! it or one of the two CPUs saturates; the CPU figures say which one was the bound. Both
//! processes run at a raised priority, in a scheduler group of their own where the kernel has
//! autogroups, so other work on the machine takes little of their cores.

use std::fs;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use helmet_pipelines::output::encode_jpeg;
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::super::child_daemon::cpu_ticks;
use super::super::nearest_rank;
use super::broker::Broker;
use super::gateway::Photo;
use crate::config::Config;
use crate::joint::mqtt::MqttSettings;
use crate::joint::protocol;
use crate::uplink::options::mqtt_options;

/// How long every client gets to connect and be subscribed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a step's last requests get to be answered before the next step.
const DRAIN: Duration = Duration::from_secs(1);
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// The pacer's period: it sends what is due at each tick.
const PACER_TICK: Duration = Duration::from_millis(1);
/// Delivered per second below this share of offered: delivery stopped following.
const FOLLOWS: f64 = 0.9;
/// A process using this share of its core, or a core this busy, is saturated.
const SATURATED: f64 = 0.9;
/// Requests each client queues before its connection takes them (rumqttc's request channel).
const CLIENT_QUEUE: usize = 1024;
/// As `helmetd cloud`: the subscribers must accept whole hard examples.
const MAX_PACKET_BYTES: u32 = 16 * 1024 * 1024;
/// A failing connection is polled again after this pause (rumqttc reconnects on the next poll).
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// The niceness of the two pinned processes and of their autogroup: on a machine shared with
/// other work the scheduler then gives each of them nearly all of its core (weight 88761
/// against 1024 at nice 0) when it needs it.
const NICE: libc::c_int = -20;
/// More steps would only repeat the saturated one.
pub(super) const MAX_STEPS: usize = 16;

/// The phase's settings (`--limit-*` flags).
pub(super) struct LimitSettings {
    /// Offered requests per second, one step each, ascending.
    pub rates: Vec<f64>,
    pub step: Duration,
    pub publishers: usize,
    pub subscribers: usize,
}

/// What bounded the highest throughput measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    /// Mosquitto used its core.
    Broker,
    /// The generator used its core: the broker's limit is above what was measured.
    Generator,
    /// Delivery fell behind while a pinned core was busy with other processes' work.
    Contended,
    /// Delivery fell behind with neither core saturated (the broker's per-client limits).
    Other,
    /// Every step was followed: the limit is above the highest rate offered.
    Steps,
}

impl Bound {
    fn as_str(self) -> &'static str {
        match self {
            Bound::Broker => "broker",
            Bound::Generator => "generator",
            Bound::Contended => "contended",
            Bound::Other => "other",
            Bound::Steps => "steps",
        }
    }
}

/// One step's figures; rates per second of the sending window.
#[derive(Debug, Clone, Copy, Default)]
struct Step {
    offered: f64,
    /// Handed to a publisher's connection (the rest found its queue full).
    published: f64,
    delivered: f64,
    answers: f64,
    /// Share of one core.
    broker_cpu: f64,
    generator_cpu: f64,
    /// How busy the two pinned CPUs were, every process counted.
    broker_core_busy: f64,
    generator_core_busy: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Published but not delivered once the step drained: dropped or expired in the broker.
    lost: u64,
}

impl Step {
    /// Why the stepping stops here, if it does.
    fn bound(&self) -> Option<Bound> {
        let saturated = |share: f64| share >= SATURATED;
        if saturated(self.broker_cpu) {
            return Some(Bound::Broker);
        }
        if saturated(self.generator_cpu) {
            return Some(Bound::Generator);
        }
        if self.delivered >= FOLLOWS * self.offered {
            return None;
        }
        Some(
            if saturated(self.broker_core_busy) || saturated(self.generator_core_busy) {
                Bound::Contended
            } else {
                Bound::Other
            },
        )
    }
}

/// The counters of the running step, shared by every client task.
#[derive(Default)]
struct Counters {
    /// The running step (from 1); deliveries and answers of another step count as stale.
    step: AtomicU32,
    delivered: AtomicU64,
    answers: AtomicU64,
    stale: AtomicU64,
    /// Answers a subscriber could not queue.
    unanswered: AtomicU64,
    connection_errors: AtomicU64,
    latency_ms: Mutex<Vec<f64>>,
}

impl Counters {
    fn start_step(&self, step: u32) {
        self.step.store(step, Ordering::SeqCst);
        self.delivered.store(0, Ordering::SeqCst);
        self.answers.store(0, Ordering::SeqCst);
        self.latency_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Whether a correlation id belongs to the running step.
    fn current(&self, correlation: &[u8]) -> bool {
        let current = correlation
            .get(8..12)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .is_some_and(|b| u32::from_le_bytes(b) == self.step.load(Ordering::SeqCst));
        if !current {
            self.stale.fetch_add(1, Ordering::Relaxed);
        }
        current
    }
}

/// 16 bytes like the edge's: when it was sent (ns after `epoch`), the step, a sequence number.
fn correlation(epoch: Instant, step: u32, seq: u32) -> Bytes {
    let sent = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&sent.to_le_bytes());
    id[8..12].copy_from_slice(&step.to_le_bytes());
    id[12..].copy_from_slice(&seq.to_le_bytes());
    Bytes::copy_from_slice(&id)
}

/// Milliseconds since the request carrying `correlation` was sent.
fn round_trip_ms(epoch: Instant, correlation: &[u8]) -> Option<f64> {
    let sent = u64::from_le_bytes(correlation.get(..8)?.try_into().ok()?);
    let now = u64::try_from(epoch.elapsed().as_nanos()).ok()?;
    Some(now.saturating_sub(sent) as f64 / 1e6)
}

/// A publisher: one gateway's connection and its requests' properties, one per photo (the
/// correlation data is filled in per request).
struct Publisher {
    client: AsyncClient,
    requests: Vec<PublishProperties>,
}

/// The generator's clients and what they share.
struct Generator {
    publishers: Vec<Publisher>,
    jpegs: Vec<Bytes>,
    request_topic: String,
    counters: Arc<Counters>,
    epoch: Instant,
    tasks: JoinSet<()>,
    broker_pid: u32,
    cpus: (usize, usize),
    clock_ticks: f64,
}

/// Runs the phase on `broker`, prints a row per step, returns the `RESULT` line.
pub(super) fn run(
    settings: &LimitSettings,
    broker: &mut Broker,
    base: &Config,
    photos: &[Photo],
    request_bytes: f64,
    clock_ticks: f64,
) -> anyhow::Result<String> {
    let own_group = own_autogroup();
    if own_group {
        // Started again from this process's new session, so it shares the raised group.
        broker.restart()?;
    }
    let broker_pid = broker.pid().context("mosquitto is not running")?;
    let cpus = two_cpus()?;
    let (broker_threads, broker_raised) = isolate(broker_pid, cpus.0)?;
    let (generator_threads, generator_raised) = isolate(std::process::id(), cpus.1)?;
    let priority = match (own_group, broker_raised && generator_raised) {
        (true, true) => format!("both at nice {NICE} in a scheduler group of their own at {NICE}"),
        (false, true) => format!("both at nice {NICE} (no scheduler group of their own)"),
        _ => "priority not raised (not permitted): other work on these CPUs takes its share"
            .to_string(),
    };
    println!(
        "helmetd bench fleet --broker-limit: mosquitto (pid {broker_pid}, {broker_threads} thread(s)) on CPU {}, the generator ({generator_threads} threads, one of them the runtime) on CPU {}, {priority}; {} publishers, {} subscribers on the shared subscription, {} s per step, {:.0} B per request",
        cpus.0,
        cpus.1,
        settings.publishers,
        settings.subscribers,
        settings.step.as_secs_f64(),
        request_bytes
    );
    // One thread: everything the generator does shows on its one core, none of it elsewhere.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio.block_on(async {
        let mut generator =
            Generator::connect(settings, base, photos, broker_pid, cpus, clock_ticks).await?;
        let steps = generator.steps(settings).await?;
        generator.tasks.shutdown().await;
        result_line(&steps, &generator.counters, request_bytes)
    })
}

impl Generator {
    /// Connects the subscribers and the publishers and waits until all are subscribed.
    async fn connect(
        settings: &LimitSettings,
        base: &Config,
        photos: &[Photo],
        broker_pid: u32,
        cpus: (usize, usize),
        clock_ticks: f64,
    ) -> anyhow::Result<Generator> {
        let cloud = MqttSettings::from_config(base);
        let prefix = cloud.topic_prefix.clone();
        let counters = Arc::new(Counters::default());
        let epoch = Instant::now();
        let mut tasks = JoinSet::new();
        let clients = settings.subscribers + settings.publishers;
        let (ready_tx, mut ready) = mpsc::channel(clients);
        let filter = protocol::shared_request_filter(&base.cloud.share_group, &prefix);
        for i in 0..settings.subscribers {
            let name = format!("bl-cloud{i}");
            let (client, eventloop) = AsyncClient::new(options(base, &name)?, CLIENT_QUEUE);
            client.subscribe(filter.clone(), QoS::AtLeastOnce).await?;
            let answer = protocol::result_json(&[], "broker-limit", 0.0, &name);
            tasks.spawn(subscriber(
                eventloop,
                client,
                prefix.clone(),
                answer,
                Arc::clone(&counters),
                ready_tx.clone(),
            ));
        }
        let mut publishers = Vec::with_capacity(settings.publishers);
        for i in 0..settings.publishers {
            let node = format!("bl-gw{i}");
            let (client, eventloop) = AsyncClient::new(options(base, &node)?, CLIENT_QUEUE);
            let response_topic = protocol::response_topic(&prefix, &node);
            client
                .subscribe(response_topic.clone(), QoS::AtLeastOnce)
                .await?;
            tasks.spawn(publisher(
                eventloop,
                epoch,
                Arc::clone(&counters),
                ready_tx.clone(),
            ));
            let requests = photos
                .iter()
                .map(|p| {
                    let id = protocol::new_correlation_id();
                    protocol::request_properties(
                        &node,
                        &p.meta,
                        &response_topic,
                        &id,
                        cloud.timeout,
                    )
                })
                .collect();
            publishers.push(Publisher { client, requests });
        }
        let jpegs = photos
            .iter()
            .map(|p| encode_jpeg(&p.image, cloud.jpeg_quality).map(Bytes::from))
            .collect::<Result<Vec<_>, _>>()?;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        for n in 0..clients {
            tokio::time::timeout_at(deadline, ready.recv())
                .await
                .with_context(|| {
                    format!("{n} of {clients} clients subscribed within {CONNECT_TIMEOUT:?}")
                })?;
        }
        Ok(Generator {
            publishers,
            jpegs,
            request_topic: protocol::request_topic(&prefix),
            counters,
            epoch,
            tasks,
            broker_pid,
            cpus,
            clock_ticks,
        })
    }

    /// Steps through the rates until one is a bound; prints each.
    async fn steps(&mut self, settings: &LimitSettings) -> anyhow::Result<Vec<(Step, f64)>> {
        println!(
            "  {:>9} {:>11} {:>11} {:>9} {:>10} {:>7} {:>8} {:>8} {:>7} {:>7} {:>6}",
            "offered/s",
            "published/s",
            "delivered/s",
            "answers/s",
            "broker cpu",
            "gen cpu",
            "CPU br %",
            "CPU gen %",
            "p50 ms",
            "p99 ms",
            "lost"
        );
        let mut steps = Vec::with_capacity(settings.rates.len());
        for (index, &rate) in settings.rates.iter().enumerate() {
            let step = self
                .step(u32::try_from(index + 1)?, rate, settings.step)
                .await?;
            println!(
                "  {:>9.0} {:>11.0} {:>11.0} {:>9.0} {:>10.2} {:>7.2} {:>8.0} {:>8.0} {:>7.1} {:>7.1} {:>6}",
                step.offered,
                step.published,
                step.delivered,
                step.answers,
                step.broker_cpu,
                step.generator_cpu,
                100.0 * step.broker_core_busy,
                100.0 * step.generator_core_busy,
                step.p50_ms,
                step.p99_ms,
                step.lost
            );
            steps.push((step, rate));
            if step.bound().is_some() {
                break;
            }
        }
        Ok(steps)
    }

    /// Offers `rate` requests a second for `length`, then drains.
    async fn step(&mut self, index: u32, rate: f64, length: Duration) -> anyhow::Result<Step> {
        let counters = Arc::clone(&self.counters);
        counters.start_step(index);
        let before = self.sample()?;
        let started = Instant::now();
        let end = started + length;
        let total = (rate * length.as_secs_f64()).round() as u64;
        let (mut offered, mut published) = (0u64, 0u64);
        let mut tick = tokio::time::interval(PACER_TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        while Instant::now() < end {
            tick.tick().await;
            let due = ((rate * started.elapsed().as_secs_f64()) as u64).min(total);
            while offered < due {
                let seq = u32::try_from(offered)?;
                let publisher = &self.publishers[offered as usize % self.publishers.len()];
                let photo = (offered as usize / self.publishers.len()) % self.jpegs.len();
                let mut properties = publisher.requests[photo].clone();
                properties.correlation_data = Some(correlation(self.epoch, index, seq));
                let queued = publisher.client.try_publish_with_properties(
                    self.request_topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    self.jpegs[photo].clone(),
                    properties,
                );
                published += u64::from(queued.is_ok());
                offered += 1;
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let after = self.sample()?;
        let delivered = counters.delivered.load(Ordering::SeqCst);
        let answers = counters.answers.load(Ordering::SeqCst);
        for _ in 0..DRAIN.as_millis() / DRAIN_POLL.as_millis() {
            if counters.answers.load(Ordering::SeqCst) >= published {
                break;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        let lost = published.saturating_sub(counters.delivered.load(Ordering::SeqCst));
        let mut latency = counters
            .latency_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        latency.sort_by(f64::total_cmp);
        let cpu = before.since(&after, wall, self.clock_ticks);
        Ok(Step {
            offered: offered as f64 / wall,
            published: published as f64 / wall,
            delivered: delivered as f64 / wall,
            answers: answers as f64 / wall,
            broker_cpu: cpu.0,
            generator_cpu: cpu.1,
            broker_core_busy: cpu.2,
            generator_core_busy: cpu.3,
            p50_ms: nearest_rank(&latency, 0.5).unwrap_or(f64::NAN),
            p99_ms: nearest_rank(&latency, 0.99).unwrap_or(f64::NAN),
            lost,
        })
    }

    fn sample(&self) -> anyhow::Result<CpuSample> {
        Ok(CpuSample {
            broker: cpu_ticks(self.broker_pid)?,
            generator: cpu_ticks(std::process::id())?,
            broker_core: core_ticks(self.cpus.0)?,
            generator_core: core_ticks(self.cpus.1)?,
        })
    }
}

/// The CPU time of the two processes and of their two cores at one moment, in clock ticks.
struct CpuSample {
    broker: u64,
    generator: u64,
    /// (busy, total) of each core.
    broker_core: (u64, u64),
    generator_core: (u64, u64),
}

impl CpuSample {
    /// The broker's and the generator's share of a core, and how busy each core was.
    fn since(&self, later: &CpuSample, wall: f64, clock_ticks: f64) -> (f64, f64, f64, f64) {
        let share = |a: u64, b: u64| b.saturating_sub(a) as f64 / clock_ticks / wall;
        let busy = |a: (u64, u64), b: (u64, u64)| {
            b.0.saturating_sub(a.0) as f64 / b.1.saturating_sub(a.1).max(1) as f64
        };
        (
            share(self.broker, later.broker),
            share(self.generator, later.generator),
            busy(self.broker_core, later.broker_core),
            busy(self.generator_core, later.generator_core),
        )
    }
}

/// Busy and total ticks of CPU `cpu` from /proc/stat; steal counts as busy (not ours to use).
fn core_ticks(cpu: usize) -> anyhow::Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let name = format!("cpu{cpu}");
    let fields: Vec<u64> = stat
        .lines()
        .find_map(|l| l.strip_prefix(name.as_str())?.strip_prefix(' '))
        .with_context(|| format!("no {name} in /proc/stat"))?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("/proc/stat {name}"))?;
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    let idle = field(3) + field(4);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    Ok((busy, busy + idle))
}

/// The first two CPUs this process may run on: the broker's and the generator's.
fn two_cpus() -> anyhow::Result<(usize, usize)> {
    let allowed = sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    let mut cpus = (0..CpuSet::count()).filter(|c| allowed.is_set(*c).unwrap_or(false));
    match (cpus.next(), cpus.next()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => anyhow::bail!("--broker-limit needs two CPUs, one for the broker, one for the load"),
    }
}

/// Moves this process into a session of its own and raises that session's scheduler autogroup
/// to [`NICE`]. With autogroups (`kernel.sched_autogroup_enabled`) the scheduler shares a CPU
/// between sessions first and applies a thread's nice only within its session, so other
/// sessions' compilers would otherwise take half of each core whatever the threads' nice. The
/// price: a terminal's Ctrl-C no longer reaches the bench (the phase ends by itself). A process
/// group leader (the bench started by an interactive shell) cannot start a session; started by
/// `setsid` it already leads one, which is then raised. Returns whether the group was raised.
fn own_autogroup() -> bool {
    use nix::unistd::{getpid, getsid, setsid};
    let leads_session = setsid().is_ok() || getsid(None).is_ok_and(|s| s == getpid());
    leads_session && fs::write("/proc/self/autogroup", NICE.to_string()).is_ok()
}

/// Pins every thread of process `pid` to CPU `cpu` (threads it starts later inherit it) and
/// raises its priority to [`NICE`] where allowed; returns how many threads there were and
/// whether every one's priority was raised.
fn isolate(pid: u32, cpu: usize) -> anyhow::Result<(usize, bool)> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    let tasks = format!("/proc/{pid}/task");
    let (mut threads, mut raised) = (0, true);
    for entry in fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
        let tid: i32 = entry?.file_name().to_string_lossy().parse()?;
        sched_setaffinity(Pid::from_raw(tid), &set)
            .with_context(|| format!("pinning thread {tid} of {pid} to CPU {cpu}"))?;
        let Ok(id) = libc::id_t::try_from(tid) else {
            continue;
        };
        // SAFETY: setpriority reads only its integer arguments; on Linux a thread id names
        // that one thread.
        raised &= unsafe { libc::setpriority(libc::PRIO_PROCESS, id, NICE) } == 0;
        threads += 1;
    }
    Ok((threads, raised))
}

/// A client's options: the configured ones (TCP_NODELAY, keep-alive), a clean session as the
/// replicas have, and room for whole hard examples.
fn options(base: &Config, client_id: &str) -> anyhow::Result<MqttOptions> {
    let mut options = mqtt_options(&base.mqtt, client_id)?;
    options.set_clean_start(true);
    options.set_max_packet_size(Some(MAX_PACKET_BYTES));
    Ok(options)
}

/// A replica that does nothing but count: each request of the running step is counted and
/// answered on its response topic with `answer`. Runs until the phase aborts it.
async fn subscriber(
    mut eventloop: EventLoop,
    client: AsyncClient,
    prefix: String,
    answer: Vec<u8>,
    counters: Arc<Counters>,
    ready: mpsc::Sender<()>,
) {
    let answer = Bytes::from(answer);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = ready.try_send(());
            }
            Ok(Event::Incoming(Packet::Publish(request))) => {
                answer_request(&client, &request, &prefix, &answer, &counters);
            }
            Ok(_) => {}
            Err(_) => {
                counters.connection_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
}

fn answer_request(
    client: &AsyncClient,
    request: &Publish,
    prefix: &str,
    answer: &Bytes,
    counters: &Counters,
) {
    let Ok(reply) = protocol::reply_to(request, prefix) else {
        counters.unanswered.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if counters.current(&reply.correlation) {
        counters.delivered.fetch_add(1, Ordering::Relaxed);
    }
    let queued = client.try_publish_with_properties(
        reply.topic,
        QoS::AtLeastOnce,
        false,
        answer.clone(),
        protocol::response_properties(&reply.correlation),
    );
    if queued.is_err() {
        counters.unanswered.fetch_add(1, Ordering::Relaxed);
    }
}

/// A gateway's connection: counts the answers of the running step and their round trips.
/// Runs until the phase aborts it.
async fn publisher(
    mut eventloop: EventLoop,
    epoch: Instant,
    counters: Arc<Counters>,
    ready: mpsc::Sender<()>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = ready.try_send(());
            }
            Ok(Event::Incoming(Packet::Publish(answer))) => {
                let Some(id) = protocol::response_correlation(&answer) else {
                    continue;
                };
                if counters.current(&id) {
                    counters.answers.fetch_add(1, Ordering::Relaxed);
                    if let Some(ms) = round_trip_ms(epoch, &id) {
                        counters
                            .latency_ms
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(ms);
                    }
                }
            }
            Ok(_) => {}
            Err(_) => {
                counters.connection_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
}

/// The highest answers per second of any step, what bounded the stepping, and the line.
fn result_line(
    steps: &[(Step, f64)],
    counters: &Counters,
    request_bytes: f64,
) -> anyhow::Result<String> {
    let (best, _) = steps
        .iter()
        .max_by(|a, b| a.0.answers.total_cmp(&b.0.answers))
        .context("no step ran")?;
    let bound = steps
        .last()
        .and_then(|(s, _)| s.bound())
        .unwrap_or(Bound::Steps);
    let per_core = if best.broker_cpu > 0.01 {
        best.answers / best.broker_cpu
    } else {
        f64::NAN
    };
    println!(
        "  highest: {:.0} requests/s answered with the broker at {:.2} of its core (≈ {per_core:.0} requests/s per broker core, {:.0} MB/s of hard examples in and out again); stopped by: {}",
        best.answers,
        best.broker_cpu,
        best.answers * request_bytes / 1e6,
        bound_text(bound)
    );
    println!(
        "  stale deliveries and answers (of an earlier step) {}, answers not queued {}, connection errors {}",
        counters.stale.load(Ordering::Relaxed),
        counters.unanswered.load(Ordering::Relaxed),
        counters.connection_errors.load(Ordering::Relaxed)
    );
    Ok(format!(
        "RESULT broker_limit_rps={:.0} broker_cpu_at_limit={:.3} bound={} bytes_per_request={request_bytes:.0} rps_per_broker_core={per_core:.0} delivered_per_s={:.0} offered_per_s={:.0} generator_cpu_at_limit={:.3} steps={}",
        best.answers,
        best.broker_cpu,
        bound.as_str(),
        best.delivered,
        best.offered,
        best.generator_cpu,
        steps.len()
    ))
}

fn bound_text(bound: Bound) -> &'static str {
    match bound {
        Bound::Broker => "the broker's core (a measured limit)",
        Bound::Generator => {
            "the generator's core: the broker's limit is above this (a lower bound)"
        }
        Bound::Contended => {
            "other processes on a pinned core: delivery fell behind with neither process at a full core (a lower bound)"
        }
        Bound::Other => {
            "delivery fell behind with no core saturated (the broker's per-client queue or inflight limits)"
        }
        Bound::Steps => "nothing: every step was followed (a lower bound; offer more)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(offered: f64, delivered: f64, broker: f64, generator: f64) -> Step {
        Step {
            offered,
            delivered,
            broker_cpu: broker,
            generator_cpu: generator,
            broker_core_busy: broker,
            generator_core_busy: generator,
            ..Step::default()
        }
    }

    #[test]
    fn the_bound_is_the_saturated_side() {
        assert_eq!(step(1000.0, 1000.0, 0.3, 0.5).bound(), None);
        assert_eq!(step(1000.0, 1000.0, 0.95, 0.5).bound(), Some(Bound::Broker));
        assert_eq!(
            step(1000.0, 700.0, 0.5, 0.97).bound(),
            Some(Bound::Generator)
        );
        assert_eq!(step(1000.0, 700.0, 0.5, 0.5).bound(), Some(Bound::Other));
        let mut busy = step(1000.0, 700.0, 0.5, 0.5);
        busy.broker_core_busy = 0.98;
        assert_eq!(busy.bound(), Some(Bound::Contended));
    }

    #[test]
    fn a_correlation_id_carries_its_step_and_send_time() {
        let epoch = Instant::now();
        let id = correlation(epoch, 3, 7);
        assert_eq!(id.len(), 16);
        let counters = Counters::default();
        counters.start_step(3);
        assert!(counters.current(&id));
        counters.start_step(4);
        assert!(!counters.current(&id));
        assert_eq!(counters.stale.load(Ordering::Relaxed), 1);
        assert!(round_trip_ms(epoch, &id).is_some_and(|ms| ms >= 0.0));
    }
}
