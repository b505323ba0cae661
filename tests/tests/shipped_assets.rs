//! The models and media the repository ships are the ones their PROVENANCE files describe.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// `(file, sha256)` pairs a PROVENANCE file lists as backticked or indented hex lines.
fn listed_checksums(provenance: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(provenance).unwrap();
    let mut pairs = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line
            .split(['|', ' ', '`'])
            .filter(|w| !w.is_empty())
            .collect();
        let hex = words
            .iter()
            .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()));
        let file = words
            .iter()
            .find(|w| w.ends_with(".onnx") || w.ends_with(".jpg") || w.ends_with(".mp4"));
        if let (Some(hex), Some(file)) = (hex, file) {
            pairs.push((file.to_string(), hex.to_string()));
        }
    }
    pairs
}

#[test]
fn models_match_their_provenance() {
    let pairs = listed_checksums(&root().join("models/PROVENANCE.md"));
    assert_eq!(pairs.len(), 2, "little and big model: {pairs:?}");
    for (file, hex) in pairs {
        assert_eq!(sha256(&root().join("models").join(&file)), hex, "{file}");
    }
}

#[test]
fn media_match_their_provenance_and_only_shippable_groups_are_present() {
    let pairs = listed_checksums(&root().join("media/PROVENANCE.md"));
    let listed: Vec<&str> = pairs.iter().map(|(f, _)| f.as_str()).collect();
    for (file, hex) in &pairs {
        assert_eq!(&sha256(&root().join("media").join(file)), hex, "{file}");
    }
    for entry in std::fs::read_dir(root().join("media")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".jpg") || name.ends_with(".mp4") {
            assert!(
                listed.contains(&name.as_str()),
                "{name} is not in media/PROVENANCE.md"
            );
            assert!(
                name.starts_with("overeasy_")
                    || name.starts_with("aws_")
                    || name == "helmet-test.mp4",
                "{name} is not from a shippable licence group"
            );
        }
    }
    assert!(listed.contains(&"helmet-test.mp4"));
}
