//! The fuzz targets (fuzz/, docs/fuzzing.md) in the normal suite: every input that once made a
//! target fail (`fuzz/regressions/<target>/`) and every seed (`fuzz/corpus/<target>/`) goes
//! through the very code the fuzzer runs, without libFuzzer or a special toolchain.

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::path::{Path, PathBuf};

const FUZZ: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz");

/// The files in `fuzz/<kind>/<target>/`, sorted; none when the folder does not exist.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(FUZZ).join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("list a fuzz folder").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every input of `kind`, naming the one that fails.
fn run_all(kind: &str) -> usize {
    let mut ran = 0;
    for (target, run) in targets::TARGETS {
        for file in inputs(kind, target) {
            let data = std::fs::read(&file).expect("read a fuzz input");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", file.display());
            ran += 1;
        }
    }
    ran
}

#[test]
fn past_crashes_stay_fixed() {
    // The folder may be empty while nothing has been found; the seeds below still run.
    run_all("regressions");
}

#[test]
fn every_seed_passes() {
    assert!(run_all("corpus") > 0);
}

#[test]
fn every_target_is_built_and_seeded() {
    let manifest =
        std::fs::read_to_string(Path::new(FUZZ).join("Cargo.toml")).expect("read fuzz/Cargo.toml");
    for (target, _) in targets::TARGETS {
        let source = Path::new(FUZZ).join(format!("fuzz_targets/{target}.rs"));
        let text = std::fs::read_to_string(&source)
            .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        assert!(
            text.contains(&format!("helmetd_fuzz::{target}(")),
            "{} does not run its target",
            source.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml has no [[bin]] {target}"
        );
        assert!(
            !inputs("corpus", target).is_empty(),
            "fuzz/corpus/{target}/ has no seed"
        );
    }
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(FUZZ).join("corpus").join(target).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The real seeds must stay what the daemon accepts, or the fuzzer starts from inputs refused at
/// the first check and rarely reaches the code behind it: rerun `make_corpus` when this fails.
#[test]
fn real_seeds_are_accepted() {
    use helmetd::joint::protocol;
    use rumqttc::v5::mqttbytes::v5::Packet;

    let publish = |bytes: Vec<u8>| match Packet::read(&mut bytes::BytesMut::from(&bytes[..]), None)
    {
        Ok(Packet::Publish(p)) => p,
        other => panic!("not a PUBLISH: {other:?}"),
    };
    let request = publish(seed("cloud_request", "edge-request"));
    let max_side = protocol::DEFAULT_MAX_IMAGE_SIDE;
    let (request, _) = protocol::parse_request(request, max_side).expect("the edge's request");
    helmetd::cloud::service::letterbox_jpeg(&request.jpeg, 32, 32, max_side).expect("its JPEG");
    let answer = publish(seed("cloud_answer", "result"));
    protocol::parse_response(&answer).expect("the cloud's answer");

    for name in ["infer", "drain"] {
        let bytes = seed("worker_protocol", name);
        helmetd::worker::protocol::ToWorker::decode(&bytes[1..]).expect(name);
    }
    for name in ["ready", "result", "failed", "heartbeat"] {
        let bytes = seed("worker_protocol", name);
        helmetd::worker::protocol::ToDaemon::decode(&bytes[1..]).expect(name);
    }
}
