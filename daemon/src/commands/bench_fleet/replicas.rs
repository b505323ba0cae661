//! The `helmetd cloud` replicas of `bench fleet`: real child processes of this binary, each its
//! own MQTT client id (the service's is `helmetd-cloud-<node>-<pid>`), all in one share group
//! on the bench's broker. They log JSON to a file each, which says when a replica's
//! subscription is granted and, after SIGTERM, its final counters.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::super::child_daemon::{ChildDaemon, cpu_ticks};

/// What the replicas answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Model {
    /// `--simulate-infer-ms`: no model, a fixed pause after the real decode.
    Simulated(Duration),
    /// The big model of the default config.
    Real,
}

impl Model {
    /// How long a replica may take to be ready: the big model loads and warms up in up to two
    /// minutes on a busy 2-core machine.
    fn ready_timeout(self) -> Duration {
        match self {
            Model::Simulated(_) => Duration::from_secs(30),
            Model::Real => Duration::from_secs(240),
        }
    }
}

/// What a replica logs when its subscription is granted.
const READY: &str = "ready for hard examples";
/// What it logs with its final counters.
const STOPPED: &str = "cloud service stopped";
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(25);

/// A replica's final counters (`ServiceStats` as logged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counters {
    pub requests: u64,
    pub answered: u64,
    /// Overloaded, expired, shed and every rejected kind.
    pub refused: u64,
}

impl Counters {
    pub(super) fn add(&mut self, other: Counters) {
        self.requests += other.requests;
        self.answered += other.answered;
        self.refused += other.refused;
    }
}

pub(super) struct Replica {
    name: String,
    log: PathBuf,
    child: Option<ChildDaemon>,
}

impl Replica {
    /// Starts `helmetd cloud` as node `name` on `broker_url`, logging to `dir/<name>.log`
    /// (`generation` tells a restarted replica's log from the first one's).
    pub(super) fn spawn(
        helmetd: &Path,
        dir: &Path,
        broker_url: &str,
        model: Model,
        name: &str,
        generation: u32,
    ) -> anyhow::Result<Replica> {
        let log = dir.join(format!("{name}.{generation}.log"));
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut args: Vec<OsString> = ["--log-format", "json", "cloud", "--set"]
            .into_iter()
            .map(OsString::from)
            .collect();
        args.push(format!("mqtt.url={broker_url}").into());
        args.extend(["--set".into(), format!("node.name={name}").into()]);
        if let Model::Simulated(took) = model {
            args.extend([
                "--simulate-infer-ms".into(),
                took.as_millis().to_string().into(),
            ]);
        }
        let child = ChildDaemon::spawn_args(helmetd, &args, Stdio::from(file))?;
        Ok(Replica {
            name: name.to_string(),
            log,
            child: Some(child),
        })
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Waits until the replica's subscription is granted; returns how long that took.
    pub(super) async fn ready(&mut self, model: Model) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let deadline = started + model.ready_timeout();
        loop {
            if self.log_text().contains(READY) {
                return Ok(started.elapsed());
            }
            let exited = match &mut self.child {
                Some(child) => child.exited()?,
                None => bail!("{} was killed", self.name),
            };
            if let Some(status) = exited {
                bail!("{} exited with {status}:\n{}", self.name, self.log_tail());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready within {:?}:\n{}",
                    self.name,
                    model.ready_timeout(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildDaemon::id)
    }

    /// CPU time so far in clock ticks; `None` once killed.
    pub(super) fn cpu_ticks(&self) -> Option<u64> {
        self.pid().and_then(|pid| cpu_ticks(pid).ok())
    }

    /// `kill -9` by its pid: whatever it held is lost with it.
    pub(super) fn kill9(&mut self) {
        // Dropping the child kills it with SIGKILL and reaps it.
        self.child = None;
    }

    /// SIGTERM and its final counters; `None` for a replica killed earlier.
    pub(super) fn stop(&mut self) -> anyhow::Result<Option<Counters>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if child.terminate(STOP_TIMEOUT)?.is_none() {
            bail!("{} ignored SIGTERM for {STOP_TIMEOUT:?}", self.name);
        }
        let text = self.log_text();
        let line = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .rfind(|l| l["fields"]["message"] == STOPPED)
            .with_context(|| format!("{} logged no final counters", self.name))?;
        let fields = &line["fields"];
        let field = |name: &str| fields[name].as_u64().unwrap_or(0);
        let refused = ["overloaded", "shed", "expired", "failed"]
            .into_iter()
            .map(field)
            .sum::<u64>()
            + fields
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(k, _)| k.starts_with("rejected_"))
                        .filter_map(|(_, v)| v.as_u64())
                        .sum::<u64>()
                })
                .unwrap_or(0);
        Ok(Some(Counters {
            requests: field("requests"),
            answered: field("answered"),
            refused,
        }))
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}
