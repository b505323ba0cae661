//! What the gateway says about itself: the Node object (E2), its status patch (E4), its lease
//! (E5) and the conditions the operator reads in `kubectl describe node`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

/// Cloudcore only watches nodes with this label (protocol §4.3); ROLES shows `agent,edge`.
pub const EDGE_ROLE_LABEL: &str = "node-role.kubernetes.io/edge";
const AGENT_ROLE_LABEL: &str = "node-role.kubernetes.io/agent";
pub const VERSION_LABEL: &str = "helmetd/version";
/// helmetd runs no containers: DaemonSets do not tolerate an unknown NoSchedule taint, and
/// `pods: 0` keeps the scheduler away.
pub const NO_WORKLOADS_TAINT: &str = "kubeedge.io/no-workloads";

pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The daemon's view of its own health, reported every second through the handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeHealth {
    pub cameras_streaming: usize,
    pub cameras_total: usize,
    pub workers_ready: usize,
    pub workers_desired: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Condition {
    kind: &'static str,
    status: &'static str,
    reason: &'static str,
    message: String,
    transition: SystemTime,
}

/// The node's conditions, with the time each last changed status. Ready says the gateway is up and
/// connected (cut off, it turns Unknown by the node-lifecycle controller); the problems that make
/// it useless while up are `CamerasStreaming` and `WorkersRunning` = False.
#[derive(Debug, Clone)]
pub struct Conditions(Vec<Condition>);

impl Conditions {
    pub fn new(now: SystemTime) -> Self {
        let unknown = |kind| Condition {
            kind,
            status: "Unknown",
            reason: "NotReported",
            message: "helmetd has not reported yet".into(),
            transition: now,
        };
        Conditions(vec![
            Condition {
                kind: "Ready",
                status: "True",
                reason: "EdgeReady",
                message: "edge is posting ready status".into(),
                transition: now,
            },
            unknown("CamerasStreaming"),
            unknown("WorkersRunning"),
        ])
    }

    /// Applies a health report; true when something an operator would see changed.
    pub fn update(&mut self, health: &NodeHealth, now: SystemTime) -> bool {
        let cameras = if health.cameras_streaming > 0 {
            ("True", "CamerasStreaming")
        } else {
            ("False", "NoCameraStreaming")
        };
        let workers = if health.workers_ready > 0 {
            ("True", "WorkersReady")
        } else {
            ("False", "NoWorkerRunning")
        };
        let wanted = [
            (
                "CamerasStreaming",
                cameras,
                format!(
                    "{} of {} cameras streaming",
                    health.cameras_streaming, health.cameras_total
                ),
            ),
            (
                "WorkersRunning",
                workers,
                format!(
                    "{} of {} inference workers ready",
                    health.workers_ready, health.workers_desired
                ),
            ),
        ];
        let mut changed = false;
        for (kind, (status, reason), message) in wanted {
            let Some(cond) = self.0.iter_mut().find(|c| c.kind == kind) else {
                continue;
            };
            if cond.status != status {
                cond.transition = now;
            }
            if cond.status != status || cond.reason != reason || cond.message != message {
                changed = true;
                cond.status = status;
                cond.reason = reason;
                cond.message = message;
            }
        }
        changed
    }

    fn to_json(&self, heartbeat: SystemTime) -> Vec<Value> {
        self.0
            .iter()
            .map(|c| {
                json!({
                    "type": c.kind,
                    "status": c.status,
                    "lastHeartbeatTime": seconds(heartbeat),
                    "lastTransitionTime": seconds(c.transition),
                    "reason": c.reason,
                    "message": c.message,
                })
            })
            .collect()
    }
}

/// Facts about this machine that go into the Node object, read once per connection.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub cpus: usize,
    pub memory_kib: u64,
    pub kernel: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
}

impl HostFacts {
    pub fn read() -> Self {
        let file = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let meminfo = file("/proc/meminfo");
        let os_release = file("/etc/os-release");
        HostFacts {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            memory_kib: meminfo_kib(&meminfo, "MemTotal").unwrap_or(0),
            kernel: file("/proc/sys/kernel/osrelease"),
            os_image: os_release
                .lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
                .unwrap_or_else(|| "Linux".into()),
            machine_id: file("/etc/machine-id"),
            boot_id: file("/proc/sys/kernel/random/boot_id"),
        }
    }
}

fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Go's GOARCH names, which is what `kubernetes.io/arch` and `nodeInfo.architecture` carry.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The Node for `insert null/node/<name>` (E2), with a Ready=True condition so the node is never
/// "NeverUpdated" (kubeedge#1168).
pub fn node_object(
    name: &str,
    extra_labels: &BTreeMap<String, String>,
    host: &HostFacts,
    internal_ip: Option<IpAddr>,
    conditions: &Conditions,
    now: SystemTime,
) -> Value {
    let mut labels: BTreeMap<String, String> = extra_labels.clone();
    let os = std::env::consts::OS;
    for (k, v) in [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", os),
        ("kubernetes.io/arch", go_arch()),
        ("beta.kubernetes.io/os", os),
        ("beta.kubernetes.io/arch", go_arch()),
        (EDGE_ROLE_LABEL, ""),
        (AGENT_ROLE_LABEL, ""),
        (VERSION_LABEL, version()),
    ] {
        labels.insert(k.into(), v.into());
    }
    let resources = json!({
        "cpu": host.cpus.to_string(),
        "memory": format!("{}Ki", host.memory_kib),
        "pods": "0",
    });
    let mut addresses = Vec::new();
    if let Some(ip) = internal_ip {
        addresses.push(json!({"type": "InternalIP", "address": ip.to_string()}));
    }
    addresses.push(json!({"type": "Hostname", "address": name}));
    json!({
        "metadata": {
            "name": name,
            "labels": labels,
        },
        "spec": {
            "taints": [{"key": NO_WORKLOADS_TAINT, "value": "true", "effect": "NoSchedule"}],
        },
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": conditions.to_json(now),
            "addresses": addresses,
            "nodeInfo": {
                "machineID": host.machine_id,
                "systemUUID": "",
                "bootID": host.boot_id,
                "kernelVersion": host.kernel,
                "osImage": host.os_image,
                "containerRuntimeVersion": "",
                "kubeletVersion": format!("v{}-helmetd", version()),
                "kubeProxyVersion": "",
                "operatingSystem": os,
                "architecture": go_arch(),
            },
        },
    })
}

/// A hand-made strategic-merge patch for `patch null/nodepatch/<name>` (E4): conditions merge by
/// `type`, so every condition gets a fresh heartbeat. Sent as a JSON *string*.
pub fn status_patch(conditions: &Conditions, now: SystemTime) -> Value {
    Value::String(json!({"status": {"conditions": conditions.to_json(now)}}).to_string())
}

/// The lease for `insert`, or, given the last one cloudcore returned (with its resourceVersion,
/// which an `update` must carry), that lease renewed.
pub fn lease_object(
    name: &str,
    previous: Option<&Value>,
    duration: Duration,
    now: SystemTime,
) -> Value {
    let mut lease = previous.cloned().unwrap_or_else(
        || json!({"metadata": {"name": name, "namespace": LEASE_NAMESPACE}, "spec": {}}),
    );
    lease["spec"]["holderIdentity"] = name.into();
    lease["spec"]["leaseDurationSeconds"] = duration.as_secs().into();
    lease["spec"]["renewTime"] = micro_time(now).into();
    lease
}

fn seconds(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// metav1.MicroTime: RFC 3339 with exactly six fractional digits.
pub fn micro_time(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_problems_become_false_conditions() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut c = Conditions::new(t0);
        let bad = NodeHealth {
            cameras_streaming: 0,
            cameras_total: 2,
            workers_ready: 1,
            workers_desired: 1,
        };
        assert!(c.update(&bad, t0));
        assert!(!c.update(&bad, t0 + Duration::from_secs(1)));
        let json = c.to_json(t0);
        let cams = json
            .iter()
            .find(|c| c["type"] == "CamerasStreaming")
            .unwrap();
        assert_eq!(cams["status"], "False");
        assert_eq!(cams["reason"], "NoCameraStreaming");
        assert_eq!(cams["message"], "0 of 2 cameras streaming");
        let ready = json.iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "True");
    }

    #[test]
    fn lease_renewal_keeps_resource_version_and_uses_micro_time() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_754_474_402_100);
        let first = lease_object("edge-1", None, Duration::from_secs(40), now);
        assert_eq!(first["spec"]["renewTime"], "2025-08-06T10:00:02.100000Z");
        let mut stored = first.clone();
        stored["metadata"]["resourceVersion"] = "81240".into();
        let next = lease_object("edge-1", Some(&stored), Duration::from_secs(40), now);
        assert_eq!(next["metadata"]["resourceVersion"], "81240");
        assert_eq!(next["spec"]["leaseDurationSeconds"], 40);
    }

    #[test]
    fn meminfo_total() {
        let m = "MemTotal:       24592716 kB\nMemFree:  1 kB\n";
        assert_eq!(meminfo_kib(m, "MemTotal"), Some(24_592_716));
        assert_eq!(meminfo_kib(m, "MemAvailable"), None);
    }
}
