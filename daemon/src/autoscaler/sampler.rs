//! Readings the autoscaler takes from cgroup and PSI files, turned into rates.
//!
//! Kernel counters are cumulative, so one reading says nothing about load: the sampler keeps the
//! recent readings and reports the change over the last second (the trailing window), however
//! often it is called. CPU comes from each worker cgroup's `cpu.stat` `usage_usec`, which
//! cgroup2 keeps even where the `cpu` controller is bound to v1 (hybrid hosts). Pressure comes from the pool's `cpu.pressure` and
//! the host's `/proc/pressure/cpu`: `avg10` is a running average the kernel updates only every
//! ~2 s and that takes tens of seconds to follow a change, so the fast figure is the `total`
//! (stalled microseconds) delta over the sampling window.
//!
//! A file that is not there is normal (a worker whose cgroup is still being created or already
//! removed) and yields a missing sample, which the HPA rules already know how to treat; anything
//! else unreadable or unparsable is reported as well.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::supervisor::{PoolName, WORKERS_DIR, WorkerStatus};

/// What a rate is measured over: short enough to see a surge within about a second, long
/// enough that one frame's burst of CPU is not a load.
pub const TRAILING_WINDOW: Duration = Duration::from_secs(1);
/// Readings kept per counter: a window's worth at a reading every 250 ms, with room to spare.
const TRAIL_READINGS: usize = 8;

/// Where the kernel reports host-wide pressure; read through the same [`CgroupReader`] so tests
/// and a relocated root see a consistent tree.
pub const HOST_PRESSURE_DIR: &str = "/proc/pressure";

/// Reads one interface file. Narrow so the sampler can be driven from an in-memory tree in tests.
pub trait CgroupReader {
    /// Contents of `file` in the directory `relative_path`, relative to the reader's root.
    fn read(&self, relative_path: &Path, file: &str) -> io::Result<String>;
}

/// Reads the real files. `root` is `/` in production; another root re-homes the whole tree
/// (cgroups and `/proc/pressure`), as a chroot would, so a captured host tree can be replayed.
#[derive(Debug, Clone)]
pub struct FsReader {
    root: PathBuf,
}

impl FsReader {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

impl CgroupReader for FsReader {
    /// A leading `/` means "from the root"; `..` and the like are refused so that no path built
    /// from a worker or pool name can leave the root.
    fn read(&self, relative_path: &Path, file: &str) -> io::Result<String> {
        let mut path = self.root.clone();
        for component in relative_path.components() {
            match component {
                Component::RootDir => {}
                Component::Normal(part) => path.push(part),
                Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                    return Err(invalid_path(relative_path, file));
                }
            }
        }
        let mut file_parts = Path::new(file).components();
        match (file_parts.next(), file_parts.next()) {
            (Some(Component::Normal(name)), None) => path.push(name),
            _ => return Err(invalid_path(relative_path, file)),
        }
        std::fs::read_to_string(path)
    }
}

fn invalid_path(dir: &Path, file: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{file:?} in {} is not a plain path below the reader's root",
            dir.display()
        ),
    )
}

/// Why a file's content could not be read as a counter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no {0} entry")]
    Missing(&'static str),
    #[error("{key} is not a valid number: {value:?}")]
    Number { key: &'static str, value: String },
}

/// A reading that failed for a reason other than the file being absent.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
}

impl SampleError {
    pub fn path(&self) -> &Path {
        match self {
            SampleError::Read { path, .. } | SampleError::Parse { path, .. } => path,
        }
    }
}

/// Reads `usage_usec` from a cgroup2 `cpu.stat`.
pub fn parse_cpu_stat(text: &str) -> Result<u64, ParseError> {
    const KEY: &str = "usage_usec";
    let value = text
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(KEY)).then(|| fields.next().unwrap_or(""))
        })
        .ok_or(ParseError::Missing(KEY))?;
    value.parse().map_err(|_| number_error(KEY, value))
}

/// The `some` line of a PSI file: the share of time at least one task waited for the resource.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PsiSome {
    /// Percent, as the kernel averaged it over ~10 s.
    pub avg10: f64,
    /// Cumulative stalled time, microseconds.
    pub total_usec: u64,
}

/// Reads the `some` line of a PSI file (`some avg10=… avg60=… avg300=… total=…`).
pub fn parse_psi_some(text: &str) -> Result<PsiSome, ParseError> {
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some("some"))
        .ok_or(ParseError::Missing("some"))?;
    let field = |key: &'static str| {
        line.split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .find_map(|(k, v)| (k == key).then_some(v))
            .ok_or(ParseError::Missing(key))
    };
    let avg10_text = field("avg10")?;
    let avg10 = avg10_text
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| number_error("avg10", avg10_text))?;
    let total_text = field("total")?;
    let total_usec = total_text
        .parse()
        .map_err(|_| number_error("total", total_text))?;
    Ok(PsiSome { avg10, total_usec })
}

/// Keeps error messages short however long the garbage was.
fn number_error(key: &'static str, value: &str) -> ParseError {
    ParseError::Number {
        key,
        value: value.chars().take(32).collect(),
    }
}

/// CPU one worker process used over the last sampling window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUsage {
    /// The process the window belongs to: a restarted worker starts a new series.
    pub pid: Pid,
    /// Average cores busy over the window (CPU seconds per second).
    pub cores: f64,
    pub window: Duration,
}

/// CPU pressure of the pool or the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pressure {
    /// `some avg10`, percent, as read.
    pub avg10: f64,
    /// Percent of the last sampling window during which some task waited for CPU, from the
    /// `total` delta; `None` until two readings exist.
    pub stalled_percent: Option<f64>,
}

impl Pressure {
    /// The freshest figure available: the window's stall share, else `avg10` (first reading).
    pub fn percent(&self) -> f64 {
        self.stalled_percent.unwrap_or(self.avg10)
    }
}

/// One sampling tick's results.
#[derive(Debug, Default)]
pub struct Sample {
    /// By worker slot id; a worker without a rate this tick (first reading, file absent,
    /// counter reset, unreadable) is absent, which the HPA treats as a missing sample.
    pub cpu: BTreeMap<u32, CpuUsage>,
    /// The pool cgroup's `cpu.pressure`.
    pub pool_pressure: Option<Pressure>,
    /// `/proc/pressure/cpu`.
    pub host_pressure: Option<Pressure>,
    /// Failures other than absent files, for the log.
    pub errors: Vec<SampleError>,
}

impl Sample {
    /// The worker's CPU rate, only if it belongs to this process.
    pub fn cpu_of(&self, id: u32, pid: Pid) -> Option<&CpuUsage> {
        self.cpu.get(&id).filter(|usage| usage.pid == pid)
    }
}

/// A cumulative counter's last reading.
#[derive(Debug, Clone, Copy)]
struct Reading {
    value: u64,
    at: Instant,
}

/// Turns the cumulative counters into rates between calls.
#[derive(Debug)]
pub struct Sampler<R> {
    reader: R,
    /// Keyed by process too, so a restarted worker never inherits its predecessor's reading.
    cpu: BTreeMap<(u32, Pid), Trail>,
    pool_psi: Trail,
    host_psi: Trail,
}

impl<R: CgroupReader> Sampler<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            cpu: BTreeMap::new(),
            pool_psi: Trail::default(),
            host_psi: Trail::default(),
        }
    }

    /// Reads every running worker of `pool` (those with a process) and the pool's and host's CPU
    /// pressure; rates cover the last [`TRAILING_WINDOW`] (or more, when the previous reading is
    /// older), whatever the calls' cadence: a call every 250 ms still reports 1 s windows, each
    /// ending now. A call at the same instant as the last has none.
    pub fn sample(
        &mut self,
        now: Instant,
        workers: &[WorkerStatus],
        cgroup_root: &Path,
        pool: &PoolName,
    ) -> Sample {
        let mut sample = Sample::default();
        let pool_dir = cgroup_root.join(WORKERS_DIR).join(pool.as_str());

        let running: Vec<(u32, Pid)> = workers
            .iter()
            .filter(|w| &w.pool == pool)
            .filter_map(|w| w.pid.map(|pid| (w.id, pid)))
            .collect();
        self.cpu.retain(|key, _| running.contains(key));
        for (id, pid) in running {
            let dir = pool_dir.join(id.to_string());
            let value = read_value(
                &self.reader,
                &dir,
                "cpu.stat",
                parse_cpu_stat,
                &mut sample.errors,
            );
            let Some(value) = value else {
                self.cpu.remove(&(id, pid));
                continue;
            };
            if let Some((usec, window)) = self.cpu.entry((id, pid)).or_default().advance(value, now)
            {
                sample.cpu.insert(
                    id,
                    CpuUsage {
                        pid,
                        cores: usec as f64 / 1e6 / window.as_secs_f64(),
                        window,
                    },
                );
            }
        }

        sample.pool_pressure = pressure(
            &self.reader,
            &pool_dir,
            "cpu.pressure",
            &mut self.pool_psi,
            now,
            &mut sample.errors,
        );
        sample.host_pressure = pressure(
            &self.reader,
            Path::new(HOST_PRESSURE_DIR),
            "cpu",
            &mut self.host_psi,
            now,
            &mut sample.errors,
        );
        sample
    }
}

/// Reads and parses one file; `None` for an absent file (silently) or a failure (recorded).
fn read_value<T>(
    reader: &impl CgroupReader,
    dir: &Path,
    file: &str,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
    errors: &mut Vec<SampleError>,
) -> Option<T> {
    let text = match reader.read(dir, file) {
        Ok(text) => text,
        Err(e) if is_absent(&e) => return None,
        Err(source) => {
            errors.push(SampleError::Read {
                path: dir.join(file),
                source,
            });
            return None;
        }
    };
    parse(&text)
        .map_err(|source| {
            errors.push(SampleError::Parse {
                path: dir.join(file),
                source,
            })
        })
        .ok()
}

/// ENODEV is what a cgroup file answers when its cgroup was removed while being read.
fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV)
}

/// A counter's recent readings, oldest first: enough to measure over the last
/// [`TRAILING_WINDOW`] however often it is read. The oldest kept is the newest one at least a
/// window old, so the window ends now and starts no later than a window ago.
#[derive(Debug, Default)]
struct Trail {
    readings: heapless::Deque<Reading, TRAIL_READINGS>,
}

impl Trail {
    /// Records `value` at `now` and returns the change over the trailing window (at least
    /// [`TRAILING_WINDOW`] when the history reaches back that far, else all of it), if the
    /// counter moved forward over a real window. A counter that went backwards belongs to a
    /// new cgroup or process: it starts a new series. A call at the same instant as the last
    /// reading keeps the series as it was.
    fn advance(&mut self, value: u64, now: Instant) -> Option<(u64, Duration)> {
        let current = Reading { value, at: now };
        match self.readings.back() {
            Some(last) if now <= last.at => return None,
            Some(last) if value < last.value => self.readings.clear(),
            _ => {}
        }
        // The newest reading at least a window old is the base; older ones are of no more use.
        let cutoff = now.checked_sub(TRAILING_WINDOW);
        let stale = self
            .readings
            .iter()
            .rposition(|r| cutoff.is_some_and(|c| r.at <= c))
            .unwrap_or(0);
        for _ in 0..stale {
            self.readings.pop_front();
        }
        let base = self.readings.front().copied();
        if self.readings.is_full() {
            self.readings.pop_front();
        }
        // Room was just made: this cannot fail.
        let _ = self.readings.push_back(current);
        base.map(|b| (value - b.value, now - b.at))
    }
}

fn pressure(
    reader: &impl CgroupReader,
    dir: &Path,
    file: &str,
    trail: &mut Trail,
    now: Instant,
    errors: &mut Vec<SampleError>,
) -> Option<Pressure> {
    let Some(psi) = read_value(reader, dir, file, parse_psi_some, errors) else {
        *trail = Trail::default();
        return None;
    };
    let delta = trail.advance(psi.total_usec, now);
    Some(Pressure {
        avg10: psi.avg10,
        stalled_percent: delta
            .map(|(usec, window)| (usec as f64 / window.as_secs_f64() / 1e4).clamp(0.0, 100.0)),
    })
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory file tree shared between a test and the sampler that owns its reader.

    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::io;
    use std::path::{Path, PathBuf};
    use std::rc::Rc;

    use super::CgroupReader;

    #[derive(Debug, Clone, Default)]
    pub(crate) struct FakeReader {
        files: Rc<RefCell<BTreeMap<PathBuf, Result<String, io::ErrorKind>>>>,
    }

    impl FakeReader {
        pub(crate) fn set(&self, path: impl AsRef<Path>, text: impl Into<String>) {
            self.files
                .borrow_mut()
                .insert(path.as_ref().to_owned(), Ok(text.into()));
        }

        pub(crate) fn fail(&self, path: impl AsRef<Path>, kind: io::ErrorKind) {
            self.files
                .borrow_mut()
                .insert(path.as_ref().to_owned(), Err(kind));
        }

        pub(crate) fn remove(&self, path: impl AsRef<Path>) {
            self.files.borrow_mut().remove(path.as_ref());
        }
    }

    impl CgroupReader for FakeReader {
        fn read(&self, relative_path: &Path, file: &str) -> io::Result<String> {
            match self.files.borrow().get(&relative_path.join(file)) {
                Some(Ok(text)) => Ok(text.clone()),
                Some(Err(kind)) => Err(io::Error::from(*kind)),
                None => Err(io::Error::from(io::ErrorKind::NotFound)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeReader;
    use super::*;
    use crate::supervisor::WorkerState;

    const ROOT: &str = "/cg/helmetd";
    const HOST_PSI: &str = "/proc/pressure/cpu";

    #[test]
    fn a_trail_measures_over_the_newest_reading_a_window_old_even_when_full() {
        let t0 = Instant::now();
        let mut trail = Trail::default();
        assert_eq!(trail.advance(0, at(t0, 0)), None);
        // Readings every 100 ms fill the trail long before a window has passed: the base is
        // the oldest reading until one is a window old.
        for step in 1..=TRAIL_READINGS as u64 {
            let (delta, window) = trail.advance(step * 10, at(t0, step * 100)).unwrap();
            assert_eq!(
                (delta, window),
                (step * 10, Duration::from_millis(step * 100))
            );
        }
        // 1.25 s: the trail is full and dropped its first readings; the newest reading at
        // least 1 s old is the one at 0.2 s.
        assert_eq!(
            trail.advance(125, at(t0, 1250)),
            Some((105, Duration::from_millis(1050)))
        );
        // 2.5 s: every reading but the last is a window old; the base is the one at 1.25 s.
        assert_eq!(
            trail.advance(250, at(t0, 2500)),
            Some((125, Duration::from_millis(1250)))
        );
        // A counter that went back is a new series: nothing to measure yet, then from it.
        assert_eq!(trail.advance(5, at(t0, 2600)), None);
        assert_eq!(
            trail.advance(15, at(t0, 2700)),
            Some((10, Duration::from_millis(100)))
        );
        // The same instant again changes nothing.
        assert_eq!(trail.advance(99, at(t0, 2700)), None);
        assert_eq!(
            trail.advance(25, at(t0, 2800)),
            Some((20, Duration::from_millis(200)))
        );
    }

    fn pool() -> PoolName {
        PoolName::new("detect").unwrap_or_else(|e| panic!("{e}"))
    }

    fn stat_path(id: u32) -> PathBuf {
        Path::new(ROOT).join(format!("workers/detect/{id}/cpu.stat"))
    }

    fn pool_psi_path() -> PathBuf {
        Path::new(ROOT).join("workers/detect/cpu.pressure")
    }

    fn cpu_stat(usage_usec: u64) -> String {
        format!(
            "usage_usec {usage_usec}\nuser_usec {}\nsystem_usec {}\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
            usage_usec / 2,
            usage_usec - usage_usec / 2
        )
    }

    fn psi(avg10: f64, total: u64) -> String {
        format!(
            "some avg10={avg10:.2} avg60=1.00 avg300=0.50 total={total}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
        )
    }

    fn worker(id: u32, pid: i32) -> WorkerStatus {
        WorkerStatus {
            pool: pool(),
            id,
            pid: Some(Pid::from_raw(pid)),
            state: WorkerState::Ready,
            restarts: 0,
            started_at: None,
            generation: Some(1),
        }
    }

    fn at(t0: Instant, millis: u64) -> Instant {
        t0 + Duration::from_millis(millis)
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-9,
            "expected {expected}, got {actual}"
        );
    }

    #[test]
    fn cpu_stat_parses_real_content() {
        let text = "usage_usec 1836531\nuser_usec 1534270\nsystem_usec 302261\n\
                    nr_periods 0\nnr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n";
        assert_eq!(parse_cpu_stat(text), Ok(1_836_531));
        // A v2 cpu.stat without the cpu controller has only the three usage lines.
        assert_eq!(
            parse_cpu_stat("usage_usec 0\nuser_usec 0\nsystem_usec 0"),
            Ok(0)
        );
        assert_eq!(parse_cpu_stat("  usage_usec\t42  \r\n"), Ok(42));
    }

    #[test]
    fn cpu_stat_garbage_is_an_error_not_a_panic() {
        let long = "9".repeat(10_000);
        let cases = [
            ("", ParseError::Missing("usage_usec")),
            ("user_usec 5\n", ParseError::Missing("usage_usec")),
            ("usage_usecs 5\n", ParseError::Missing("usage_usec")),
            ("\0\u{fffd}\u{1}", ParseError::Missing("usage_usec")),
            (
                "usage_usec\n",
                ParseError::Number {
                    key: "usage_usec",
                    value: String::new(),
                },
            ),
            (
                "usage_usec -5\n",
                ParseError::Number {
                    key: "usage_usec",
                    value: "-5".into(),
                },
            ),
            (
                "usage_usec 1.5\n",
                ParseError::Number {
                    key: "usage_usec",
                    value: "1.5".into(),
                },
            ),
            (
                "usage_usec 99999999999999999999999\n",
                ParseError::Number {
                    key: "usage_usec",
                    value: "99999999999999999999999".into(),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_cpu_stat(text), Err(expected), "{text:?}");
        }
        let Err(ParseError::Number { value, .. }) = parse_cpu_stat(&format!("usage_usec {long}"))
        else {
            panic!("an overlong number should not parse");
        };
        assert_eq!(value.len(), 32, "the message keeps only a prefix");
    }

    #[test]
    fn psi_parses_host_and_group_files() {
        let host = "some avg10=7.40 avg60=2.10 avg300=0.45 total=12345678\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(
            parse_psi_some(host),
            Ok(PsiSome {
                avg10: 7.4,
                total_usec: 12_345_678
            })
        );
        // Kernels before 5.13 have no `full` line for CPU; order and spacing may vary.
        assert_eq!(
            parse_psi_some("full avg10=1.00 total=5\nsome  total=9 avg10=100.00"),
            Ok(PsiSome {
                avg10: 100.0,
                total_usec: 9
            })
        );
    }

    #[test]
    fn psi_garbage_is_an_error_not_a_panic() {
        let cases = [
            ("", ParseError::Missing("some")),
            (
                "full avg10=0.00 avg60=0.00 avg300=0.00 total=0",
                ParseError::Missing("some"),
            ),
            ("some", ParseError::Missing("avg10")),
            ("some avg10=1.00 avg60=0.00", ParseError::Missing("total")),
            ("some avg10 total=3", ParseError::Missing("avg10")),
            (
                "some avg10=NaN total=3",
                ParseError::Number {
                    key: "avg10",
                    value: "NaN".into(),
                },
            ),
            (
                "some avg10=inf total=3",
                ParseError::Number {
                    key: "avg10",
                    value: "inf".into(),
                },
            ),
            (
                "some avg10=-1 total=3",
                ParseError::Number {
                    key: "avg10",
                    value: "-1".into(),
                },
            ),
            (
                "some avg10=1.0 total=x",
                ParseError::Number {
                    key: "total",
                    value: "x".into(),
                },
            ),
            (
                "some avg10== total==",
                ParseError::Number {
                    key: "avg10",
                    value: "=".into(),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_psi_some(text), Err(expected), "{text:?}");
        }
        // Arbitrary bytes of the right shape in places: nothing panics.
        for text in [
            "some \u{0}=\u{0}",
            "some ==== avg10",
            "\n\n\nsome\t\t",
            "some é=é",
        ] {
            assert!(parse_psi_some(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn usage_deltas_become_cores_over_the_window() {
        let fake = FakeReader::default();
        let mut sampler = Sampler::new(fake.clone());
        let workers = [worker(0, 100), worker(1, 101)];
        let t0 = Instant::now();

        fake.set(stat_path(0), cpu_stat(1_000_000));
        fake.set(stat_path(1), cpu_stat(0));
        let first = sampler.sample(t0, &workers, Path::new(ROOT), &pool());
        assert!(first.cpu.is_empty(), "one reading has no window: {first:?}");
        assert!(first.errors.is_empty());

        fake.set(stat_path(0), cpu_stat(1_500_000));
        fake.set(stat_path(1), cpu_stat(2_000_000));
        let second = sampler.sample(at(t0, 1000), &workers, Path::new(ROOT), &pool());
        let w0 = second.cpu_of(0, Pid::from_raw(100)).copied();
        assert_eq!(w0.map(|u| u.window), Some(Duration::from_secs(1)));
        assert_close(w0.map_or(f64::NAN, |u| u.cores), 0.5);
        assert_close(second.cpu[&1].cores, 2.0);

        // The window is whatever elapsed since the last call.
        fake.set(stat_path(0), cpu_stat(3_500_000));
        let third = sampler.sample(at(t0, 3000), &workers, Path::new(ROOT), &pool());
        assert_eq!(third.cpu[&0].window, Duration::from_secs(2));
        assert_close(third.cpu[&0].cores, 1.0);
        assert_close(third.cpu[&1].cores, 0.0);

        // A second call at the same instant has no window but keeps the series intact.
        let same = sampler.sample(at(t0, 3000), &workers, Path::new(ROOT), &pool());
        assert!(same.cpu.is_empty());
        fake.set(stat_path(0), cpu_stat(4_000_000));
        let fourth = sampler.sample(at(t0, 4000), &workers, Path::new(ROOT), &pool());
        assert_close(fourth.cpu[&0].cores, 0.5);
    }

    #[test]
    fn read_every_quarter_second_the_window_is_the_last_second() {
        let fake = FakeReader::default();
        let mut sampler = Sampler::new(fake.clone());
        let workers = [worker(0, 100)];
        let t0 = Instant::now();
        // Idle for a second, then one core busy from 1.0 s on.
        let usage_at = |ms: u64| ms.saturating_sub(1000) * 1000;
        let mut windows = Vec::new();
        for ms in (0..=2000).step_by(250) {
            fake.set(stat_path(0), cpu_stat(usage_at(ms)));
            let sample = sampler.sample(at(t0, ms), &workers, Path::new(ROOT), &pool());
            windows.push(sample.cpu.get(&0).map(|u| (u.window.as_millis(), u.cores)));
        }
        // Shorter windows while the history is shorter than a second, then a second's.
        assert_eq!(windows[0], None, "one reading has no window");
        assert_eq!(windows[1].map(|w| w.0), Some(250));
        assert_eq!(windows[3].map(|w| w.0), Some(750));
        assert!(
            windows[4..].iter().all(|w| w.map(|w| w.0) == Some(1000)),
            "{windows:?}"
        );
        // The load shows a quarter at a time, not at the next whole second.
        let cores: Vec<f64> = windows[4..]
            .iter()
            .map(|w| w.map_or(f64::NAN, |w| w.1))
            .collect();
        for (got, want) in cores.iter().zip([0.0, 0.25, 0.5, 0.75, 1.0]) {
            assert_close(*got, want);
        }
    }

    #[test]
    fn a_restarted_worker_starts_a_new_series() {
        let fake = FakeReader::default();
        let mut sampler = Sampler::new(fake.clone());
        let t0 = Instant::now();
        fake.set(stat_path(0), cpu_stat(5_000_000));
        sampler.sample(t0, &[worker(0, 100)], Path::new(ROOT), &pool());
        fake.set(stat_path(0), cpu_stat(6_000_000));
        let before = sampler.sample(at(t0, 1000), &[worker(0, 100)], Path::new(ROOT), &pool());
        assert_close(before.cpu[&0].cores, 1.0);

        // Same slot, new process, cgroup recreated: the counter restarts low.
        fake.set(stat_path(0), cpu_stat(100_000));
        let restarted = [worker(0, 200)];
        let first = sampler.sample(at(t0, 2000), &restarted, Path::new(ROOT), &pool());
        assert!(first.cpu.is_empty(), "no negative or mixed rate: {first:?}");
        assert!(first.cpu_of(0, Pid::from_raw(100)).is_none());

        fake.set(stat_path(0), cpu_stat(400_000));
        let next = sampler.sample(at(t0, 3000), &restarted, Path::new(ROOT), &pool());
        assert_eq!(next.cpu[&0].pid, Pid::from_raw(200));
        assert_close(next.cpu[&0].cores, 0.3);

        // Even under the same pid, a counter going backwards only restarts the series.
        fake.set(stat_path(0), cpu_stat(10));
        let reset = sampler.sample(at(t0, 4000), &restarted, Path::new(ROOT), &pool());
        assert!(reset.cpu.is_empty());
        fake.set(stat_path(0), cpu_stat(200_010));
        let after = sampler.sample(at(t0, 5000), &restarted, Path::new(ROOT), &pool());
        assert_close(after.cpu[&0].cores, 0.2);
    }

    #[test]
    fn absent_files_are_missing_samples_not_errors() {
        let fake = FakeReader::default();
        let mut sampler = Sampler::new(fake.clone());
        let workers = [worker(0, 100)];
        let t0 = Instant::now();

        let empty = sampler.sample(t0, &workers, Path::new(ROOT), &pool());
        assert!(empty.cpu.is_empty());
        assert!(empty.pool_pressure.is_none() && empty.host_pressure.is_none());
        assert!(empty.errors.is_empty(), "{:?}", empty.errors);

        fake.set(stat_path(0), cpu_stat(1_000_000));
        sampler.sample(at(t0, 1000), &workers, Path::new(ROOT), &pool());
        fake.set(stat_path(0), cpu_stat(1_250_000));
        let ok = sampler.sample(at(t0, 2000), &workers, Path::new(ROOT), &pool());
        assert_close(ok.cpu[&0].cores, 0.25);

        // The cgroup vanishes and comes back: the gap is not averaged over.
        fake.remove(stat_path(0));
        let gone = sampler.sample(at(t0, 3000), &workers, Path::new(ROOT), &pool());
        assert!(gone.cpu.is_empty() && gone.errors.is_empty());
        fake.set(stat_path(0), cpu_stat(9_000_000));
        let back = sampler.sample(at(t0, 4000), &workers, Path::new(ROOT), &pool());
        assert!(back.cpu.is_empty());
        fake.set(stat_path(0), cpu_stat(9_500_000));
        let again = sampler.sample(at(t0, 5000), &workers, Path::new(ROOT), &pool());
        assert_close(again.cpu[&0].cores, 0.5);
    }

    #[test]
    fn unreadable_or_garbled_files_are_reported_and_missing() {
        let fake = FakeReader::default();
        let mut sampler = Sampler::new(fake.clone());
        let workers = [worker(0, 100), worker(1, 101)];
        fake.fail(stat_path(0), io::ErrorKind::PermissionDenied);
        fake.set(stat_path(1), "usage_usec lots\n");
        fake.set(HOST_PSI, "some avg10=x total=1\n");
        let sample = sampler.sample(Instant::now(), &workers, Path::new(ROOT), &pool());
        assert!(sample.cpu.is_empty() && sample.host_pressure.is_none());
        let paths: Vec<_> = sample.errors.iter().map(SampleError::path).collect();
        assert_eq!(paths, [stat_path(0), stat_path(1), PathBuf::from(HOST_PSI)]);
        assert!(
            matches!(&sample.errors[0], SampleError::Read { source, .. } if source.kind() == io::ErrorKind::PermissionDenied)
        );
        assert!(matches!(
            &sample.errors[1],
            SampleError::Parse {
                source: ParseError::Number { .. },
                ..
            }
        ));
    }

    #[test]
    fn only_this_pools_running_workers_are_read() {
        let fake = FakeReader::default();
        let mut sampler = Sampler::new(fake.clone());
        let mut other = worker(0, 300);
        other.pool = PoolName::new("other").unwrap_or_else(|e| panic!("{e}"));
        let mut backoff = worker(1, 0);
        backoff.pid = None;
        backoff.state = WorkerState::Backoff {
            until: Instant::now(),
        };
        let workers = [other, backoff];
        fake.fail(
            Path::new(ROOT).join("workers/other/0/cpu.stat"),
            io::ErrorKind::PermissionDenied,
        );
        fake.fail(stat_path(1), io::ErrorKind::PermissionDenied);
        let sample = sampler.sample(Instant::now(), &workers, Path::new(ROOT), &pool());
        assert!(sample.errors.is_empty(), "{:?}", sample.errors);
    }

    #[test]
    fn pressure_has_a_fast_figure_from_total_and_avg10_as_read() {
        let fake = FakeReader::default();
        let mut sampler = Sampler::new(fake.clone());
        let t0 = Instant::now();
        fake.set(HOST_PSI, psi(3.0, 1_000_000));
        fake.set(pool_psi_path(), psi(0.5, 0));
        let first = sampler.sample(t0, &[], Path::new(ROOT), &pool());
        let host = first.host_pressure.unwrap_or_else(|| panic!("host PSI"));
        assert_eq!(host.stalled_percent, None);
        assert_close(host.percent(), 3.0);

        // 750 ms stalled in 1 s: avg10 has barely moved, the window says 75 %.
        fake.set(HOST_PSI, psi(3.2, 1_750_000));
        fake.set(pool_psi_path(), psi(0.6, 2_000_000));
        let second = sampler.sample(at(t0, 1000), &[], Path::new(ROOT), &pool());
        let host = second.host_pressure.unwrap_or_else(|| panic!("host PSI"));
        assert_close(host.avg10, 3.2);
        assert_close(host.stalled_percent.unwrap_or(f64::NAN), 75.0);
        assert_close(host.percent(), 75.0);
        // More stall than wall time (per-CPU accounting) is capped at 100 %.
        let pool_psi = second.pool_pressure.unwrap_or_else(|| panic!("pool PSI"));
        assert_close(pool_psi.stalled_percent.unwrap_or(f64::NAN), 100.0);
        assert_close(pool_psi.avg10, 0.6);

        fake.remove(HOST_PSI);
        let gone = sampler.sample(at(t0, 2000), &[], Path::new(ROOT), &pool());
        assert!(gone.host_pressure.is_none() && gone.errors.is_empty());
    }

    #[test]
    fn fs_reader_stays_below_its_root() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cgroup = dir.path().join("sys/fs/cgroup/helmetd/workers/detect/0");
        std::fs::create_dir_all(&cgroup).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(cgroup.join("cpu.stat"), cpu_stat(42)).unwrap_or_else(|e| panic!("{e}"));
        let reader = FsReader::new(dir.path());

        let text = reader.read(
            Path::new("/sys/fs/cgroup/helmetd/workers/detect/0"),
            "cpu.stat",
        );
        assert_eq!(text.ok().as_deref().map(parse_cpu_stat), Some(Ok(42)));
        let relative = reader.read(
            Path::new("sys/fs/cgroup/helmetd/workers/detect/0"),
            "cpu.stat",
        );
        assert!(relative.is_ok());

        for (dir_path, file) in [
            ("/sys/fs/cgroup/helmetd/workers/detect/0/../0", "cpu.stat"),
            ("/sys/fs/cgroup/helmetd/workers/detect", "0/cpu.stat"),
            ("/sys/fs/cgroup/helmetd/workers/detect/0", ".."),
            ("/sys/fs/cgroup/helmetd/workers/detect/0", ""),
        ] {
            let err = reader.read(Path::new(dir_path), file).err();
            assert_eq!(
                err.map(|e| e.kind()),
                Some(io::ErrorKind::InvalidInput),
                "{dir_path} {file}"
            );
        }
        let absent = reader.read(Path::new("/proc/pressure"), "cpu").err();
        assert_eq!(absent.map(|e| e.kind()), Some(io::ErrorKind::NotFound));
    }
}
