//! Reading a config: file or embedded default, `--set` overrides, typed errors with positions.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use toml_edit::{DocumentMut, ImDocument, Item, TableLike};

use super::Config;

/// The commented default, the same text `helmetd print-default-config` prints.
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/helmetd.toml");

/// Where a config came from, for error messages.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Default,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Default => f.write_str("<default config>"),
        }
    }
}

/// One problem in a config, positioned where the user can find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `file:line:column`, or `--set key=value` when an override caused it.
    pub place: String,
    pub message: String,
}

impl fmt::Display for Problem {
    /// Both halves may quote a camera URL (`--set camera.0.url=…`, Sedna's `video_url`, a
    /// URL that does not parse): its password is masked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = format!("{}: {}", self.place, self.message);
        f.write_str(&helmet_pipelines::redact::redact(&text))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--set {}: expected dotted.key=value", helmet_pipelines::redact::redact(&format!("{:?}", .0)))]
    BadOverride(String),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// EX_CONFIG from sysexits.h: what systemd and operators expect for a bad config.
    pub const EXIT_CODE: i32 = 78;
}

/// A dotted key path into the document: `camera[1].url`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPath(pub Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

impl KeyPath {
    pub fn parse(dotted: &str) -> Self {
        let segments = dotted
            .split('.')
            .map(|part| match part.parse::<usize>() {
                Ok(i) => Segment::Index(i),
                Err(_) => Segment::Key(part.to_string()),
            })
            .collect();
        Self(segments)
    }

    pub fn key(mut self, key: &str) -> Self {
        self.0.push(Segment::Key(key.to_string()));
        self
    }

    pub fn index(mut self, i: usize) -> Self {
        self.0.push(Segment::Index(i));
        self
    }

    fn starts_with(&self, other: &KeyPath) -> bool {
        self.0.len() >= other.0.len() && self.0[..other.0.len()] == other.0[..]
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if i == 0 => write!(f, "{k}")?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Loads, overrides, deserialises and validates. All problems found are reported together.
pub fn load(source: ConfigSource, overrides: &[String]) -> Result<Config, ConfigError> {
    load_with_checks(source, overrides, |_| Vec::new())
}

/// [`load`], then `extra` checks (ones that cost more, like opening the model files) on a config
/// that passed validation; their problems are positioned like the others.
pub fn load_with_checks(
    source: ConfigSource,
    overrides: &[String],
    extra: impl FnOnce(&Config) -> Vec<(KeyPath, String)>,
) -> Result<Config, ConfigError> {
    let text = match &source {
        ConfigSource::File(path) => {
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.clone(),
                source: e,
            })?
        }
        ConfigSource::Default => DEFAULT_CONFIG.to_string(),
    };
    let file_problem = |span: Option<Range<usize>>, message: String| Problem {
        place: place_of(&source, &text, span),
        message,
    };

    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        ConfigError::Invalid(vec![file_problem(e.span(), e.message().trim().to_string())])
    })?;
    let mut applied = Vec::new();
    for raw in overrides {
        let (key, value) = raw
            .split_once('=')
            .ok_or_else(|| ConfigError::BadOverride(raw.clone()))?;
        let path = KeyPath::parse(key.trim());
        if path.0.is_empty() || key.trim().is_empty() {
            return Err(ConfigError::BadOverride(raw.clone()));
        }
        set_value(doc.as_item_mut(), &path.0, parse_override_value(value)).map_err(|why| {
            ConfigError::Invalid(vec![Problem {
                place: format!("--set {raw}"),
                message: why,
            }])
        })?;
        applied.push((path, raw.clone()));
    }
    let effective = doc.to_string();

    // Errors are positioned in `effective`; overrides keep existing keys on their lines, so the
    // positions match the file unless the error is in an overridden key, which is named instead
    // (the last override of it: that is the one in force).
    let positioned = |path: &KeyPath, span: Option<Range<usize>>, message: String| -> Problem {
        if let Some((_, raw)) = applied
            .iter()
            .rev()
            .find(|(p, _)| path.starts_with(p) || p.starts_with(path) && !path.0.is_empty())
        {
            return Problem {
                place: format!("--set {raw}"),
                message,
            };
        }
        Problem {
            place: place_of(&source, &effective, span),
            message,
        }
    };

    // Keys the file leaves out take the embedded default's value, so a short file works and an
    // upgrade that adds a key does not break a gateway's config. Errors are still positioned in
    // the file: by key path, since the merged text has other line numbers.
    let effective_doc = ImDocument::parse(effective.clone()).ok();
    let merged = with_defaults(&doc);
    let deserializer = toml::Deserializer::new(&merged);
    let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = KeyPath::parse(&e.path().to_string().replace(['[', ']'], "."));
        let path = KeyPath(
            path.0
                .into_iter()
                .filter(|s| !matches!(s, Segment::Key(k) if k.is_empty() || k == "?"))
                .collect(),
        );
        let inner = e.into_inner();
        let message = describe_serde_error(inner.message(), &path);
        let span = effective_doc
            .as_ref()
            .and_then(|d| span_of(d.as_item(), &path.0));
        ConfigError::Invalid(vec![positioned(&path, span, message)])
    })?;

    let mut problems = config.validate();
    if problems.is_empty() {
        problems = extra(&config);
    }
    if problems.is_empty() {
        return Ok(config);
    }
    Err(ConfigError::Invalid(
        problems
            .into_iter()
            .map(|(path, message)| {
                let span = effective_doc
                    .as_ref()
                    .and_then(|d| span_of(d.as_item(), &path.0));
                positioned(&path, span, format!("{path}: {message}"))
            })
            .collect(),
    ))
}

/// The embedded default with `doc` laid over it, as TOML text. Tables merge key by key; any
/// other value (arrays, `[[camera]]` lists, inline tables such as HEM parameters) replaces the
/// default's whole, so a list is never a mix of the two.
fn with_defaults(doc: &DocumentMut) -> String {
    let Ok(mut defaults) = DEFAULT_CONFIG.parse::<DocumentMut>() else {
        // Only a broken build could get here (a unit test parses the default); the file alone
        // then has to be complete.
        return doc.to_string();
    };
    overlay(defaults.as_table_mut(), doc.as_table());
    defaults.to_string()
}

fn overlay(base: &mut dyn TableLike, over: &dyn TableLike) {
    for (key, item) in over.iter() {
        match (base.get_mut(key), item) {
            (Some(Item::Table(base_table)), Item::Table(over_table)) => {
                overlay(base_table, over_table);
            }
            _ => {
                base.insert(key, item.clone());
            }
        }
    }
}

/// serde's messages say "unknown field `x`"; name the table it appeared in too.
fn describe_serde_error(message: &str, path: &KeyPath) -> String {
    let message = message.trim();
    if path.0.is_empty() {
        return message.to_string();
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (field, expected) = rest.split_once(", ").unwrap_or((rest, ""));
        // The path ends with the unknown field itself; name the table that holds it.
        let parent = &path.0[..path.0.len() - 1];
        let table = match parent.split_last() {
            Some((Segment::Index(_), outer)) => format!("[[{}]]", KeyPath(outer.to_vec())),
            Some(_) => format!("[{}]", KeyPath(parent.to_vec())),
            None => "the top level".to_string(),
        };
        let field = field.replace('`', "'");
        return if expected.is_empty() {
            format!("unknown field {field} in {table}")
        } else {
            format!(
                "unknown field {field} in {table}, {}",
                expected.replace('`', "'")
            )
        };
    }
    format!("{path}: {message}")
}

fn place_of(source: &ConfigSource, text: &str, span: Option<Range<usize>>) -> String {
    match span {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("{source}:{line}:{column}")
        }
        None => source.to_string(),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Span of the key (or the value, for array elements) a path names in a parsed document.
fn span_of(item: &Item, path: &[Segment]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    match first {
        Segment::Key(k) => {
            let table = item.as_table_like()?;
            let child = table.get(k)?;
            if rest.is_empty() {
                return key_span(table, k).or_else(|| child.span());
            }
            span_of(child, rest).or_else(|| key_span(table, k))
        }
        Segment::Index(i) => {
            if let Some(tables) = item.as_array_of_tables() {
                let t = tables.get(*i)?;
                return if rest.is_empty() {
                    t.span()
                } else {
                    span_of_table(t, rest).or(t.span())
                };
            }
            let array = item.as_array()?;
            let value = array.get(*i)?;
            if rest.is_empty() {
                return value.span();
            }
            let inline = value.as_inline_table()?;
            span_of_table_like(inline, rest).or(value.span())
        }
    }
}

fn span_of_table(t: &toml_edit::Table, path: &[Segment]) -> Option<Range<usize>> {
    span_of_table_like(t, path)
}

fn span_of_table_like(t: &dyn TableLike, path: &[Segment]) -> Option<Range<usize>> {
    let (Segment::Key(k), rest) = path.split_first()? else {
        return None;
    };
    let child = t.get(k)?;
    if rest.is_empty() {
        return key_span(t, k).or_else(|| child.span());
    }
    span_of(child, rest).or_else(|| key_span(t, k))
}

fn key_span(table: &dyn TableLike, key: &str) -> Option<Range<usize>> {
    table.get_key_value(key).and_then(|(k, _)| k.span())
}

/// `--set` values are TOML values when they parse as one (`3`, `true`, `["a"]`), else strings,
/// so `--set mqtt.url=mqtt://host:1883` needs no quoting.
fn parse_override_value(raw: &str) -> toml_edit::Value {
    raw.trim()
        .parse::<toml_edit::Value>()
        .unwrap_or_else(|_| toml_edit::Value::from(raw.trim()))
}

fn set_value(item: &mut Item, path: &[Segment], value: toml_edit::Value) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        *item = Item::Value(value);
        return Ok(());
    };
    match first {
        Segment::Key(k) => {
            if item.is_none() {
                *item = Item::Table(toml_edit::Table::new());
            }
            let table = item
                .as_table_like_mut()
                .ok_or_else(|| format!("cannot set '{k}': its parent is not a table"))?;
            if rest.is_empty() {
                match table.get_mut(k) {
                    Some(existing) if existing.is_table_like() && !value.is_inline_table() => {
                        Err(format!("'{k}' is a table; set one of its keys instead"))
                    }
                    Some(existing) => {
                        // Keep the key where it is so error positions still match the file.
                        *existing = Item::Value(value);
                        Ok(())
                    }
                    None => {
                        table.insert(k, Item::Value(value));
                        Ok(())
                    }
                }
            } else {
                if table.get(k).is_none() {
                    table.insert(k, Item::Table(toml_edit::Table::new()));
                }
                let child = table
                    .get_mut(k)
                    .ok_or_else(|| format!("cannot create table '{k}'"))?;
                set_value(child, rest, value)
            }
        }
        Segment::Index(i) => {
            if let Some(tables) = item.as_array_of_tables_mut() {
                let len = tables.len();
                let t = tables
                    .get_mut(*i)
                    .ok_or_else(|| format!("index {i} is out of range (there are {len})"))?;
                let mut as_item = Item::Table(std::mem::take(t));
                let result = set_value(&mut as_item, rest, value);
                if let Item::Table(back) = as_item {
                    *t = back;
                }
                return result;
            }
            let array = item
                .as_array_mut()
                .ok_or_else(|| format!("cannot index [{i}]: not an array"))?;
            let len = array.len();
            let slot = array
                .get_mut(*i)
                .ok_or_else(|| format!("index {i} is out of range (there are {len})"))?;
            let mut as_item = Item::Value(slot.clone());
            set_value(&mut as_item, rest, value)?;
            *slot = as_item
                .into_value()
                .map_err(|_| "cannot put a table into an array".to_string())?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn problems(result: Result<Config, ConfigError>) -> Vec<Problem> {
        match result {
            Err(ConfigError::Invalid(p)) => p,
            Err(other) => panic!("expected Invalid, got {other}"),
            Ok(_) => panic!("expected an error"),
        }
    }

    /// The default with the model path made absolute so tests run from any directory.
    fn default_text() -> String {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        DEFAULT_CONFIG
            .replace("path = \"models/", &format!("path = \"{root}/models/"))
            .replace("model = \"models/", &format!("model = \"{root}/models/"))
    }

    #[test]
    fn embedded_default_is_valid() {
        let f = write(&default_text());
        let cfg = load(ConfigSource::File(f.path().into()), &[]).unwrap();
        assert!(cfg.cameras.is_empty());
        assert_eq!(cfg.edge.model.input, [384, 640]);
    }

    #[test]
    fn a_short_file_takes_the_defaults_for_what_it_leaves_out() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let text = format!(
            "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n\n[edge.model]\npath = \"{root}/models/helmet_yolov12m_384x640_int8qdq.onnx\"\n\n[cloud]\nprotocol = \"none\"\n"
        );
        let f = write(&text);
        let cfg = load(ConfigSource::File(f.path().into()), &[]).unwrap();
        assert_eq!(cfg.mqtt.url, "mqtt://127.0.0.1:1883");
        assert_eq!(
            cfg.mqtt.topic_prefix, "helmetd/v1",
            "default kept beside a set key"
        );
        assert_eq!(cfg.edge.model.input, [384, 640]);
        assert_eq!(cfg.alerts.classes, ["Without Helmet"]);
        assert!(cfg.cameras.is_empty());
    }

    #[test]
    fn an_error_in_a_short_file_is_positioned_in_that_file() {
        let f = write("[alerts]\nmin_score = 0.5\nconfirm_frames = \"two\"\n");
        let p = problems(load(ConfigSource::File(f.path().into()), &[]));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].place.ends_with(":3:1"),
            "expected line 3 of the file: {}",
            p[0].place
        );
        assert!(p[0].message.contains("confirm_frames"), "{}", p[0].message);
    }

    #[test]
    fn unknown_key_names_file_line_column_and_table() {
        let text = default_text()
            + "\n[[camera]]\nname = \"gate\"\nurl = \"rtsp://127.0.0.1:8554/x\"\n  fpss = 3\n";
        let line = text.lines().count();
        let f = write(&text);
        let p = problems(load(ConfigSource::File(f.path().into()), &[]));
        assert_eq!(p.len(), 1);
        let expected = format!("{}:{line}:3", f.path().display());
        assert_eq!(p[0].place, expected, "{}", p[0]);
        assert!(
            p[0].message
                .starts_with("unknown field 'fpss' in [[camera]], expected one of"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn syntax_error_is_positioned() {
        let f = write("[node]\nname = \n");
        let p = problems(load(ConfigSource::File(f.path().into()), &[]));
        assert!(p[0].place.ends_with(":2:8"), "{}", p[0]);
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = default_text().replace("intra_threads = 1", "intra_threads = \"one\"");
        let f = write(&text);
        let p = problems(load(ConfigSource::File(f.path().into()), &[]));
        assert!(
            p[0].message.contains("edge.model.intra_threads"),
            "{}",
            p[0]
        );
        let line = text
            .lines()
            .position(|l| l.contains("intra_threads = \"one\""))
            .unwrap()
            + 1;
        assert!(p[0].place.contains(&format!(":{line}:")), "{}", p[0]);
    }

    #[test]
    fn a_camera_decoder_is_read_and_an_unknown_one_is_positioned() {
        let camera = "\n[[camera]]\nname = \"gate\"\nurl = \"rtsp://127.0.0.1:8554/x\"\n";
        // A decoder's displayed name (what `bench footprint` writes) is the one the file reads.
        for decoder in [
            crate::config::Decoder::Libav,
            crate::config::Decoder::Openh264,
        ] {
            let f = write(&format!(
                "{}{camera}decoder = \"{decoder}\"\n",
                default_text()
            ));
            let cfg = load(ConfigSource::File(f.path().into()), &[]).unwrap();
            assert_eq!(cfg.cameras[0].decoder, decoder);
        }
        let text = default_text() + camera + "decoder = \"x264\"\n";
        let f = write(&text);
        let p = problems(load(ConfigSource::File(f.path().into()), &[]));
        assert!(p[0].message.contains("x264"), "{}", p[0]);
        assert!(
            p[0].place.contains(&format!(":{}:", text.lines().count())),
            "{}",
            p[0]
        );
    }

    #[test]
    fn semantic_errors_are_positioned_and_all_reported() {
        let text = default_text()
            .replace("score_threshold = 0.25", "score_threshold = 1.5")
            .replace("timeout_ms = 1000", "timeout_ms = 0");
        let f = write(&text);
        let p = problems(load(ConfigSource::File(f.path().into()), &[]));
        assert_eq!(p.len(), 2, "{p:?}");
        let line = text
            .lines()
            .position(|l| l.starts_with("score_threshold = 1.5"))
            .unwrap()
            + 1;
        assert!(p[0].place.ends_with(&format!(":{line}:1")), "{}", p[0]);
        assert!(
            p[0].message
                .contains("edge.model.score_threshold: must be within [0, 1]"),
            "{}",
            p[0]
        );
        assert!(p[1].message.contains("cloud.timeout_ms"), "{}", p[1]);
    }

    #[test]
    fn missing_model_file_is_an_error() {
        let text = default_text().replace("helmet_yolov12m_384x640_int8qdq.onnx", "nope.onnx");
        let f = write(&text);
        let p = problems(load(ConfigSource::File(f.path().into()), &[]));
        assert!(
            p[0].message.contains("nope.onnx does not exist"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn overrides_replace_add_and_index() {
        let text =
            default_text() + "\n[[camera]]\nname = \"gate\"\nurl = \"rtsp://127.0.0.1:8554/x\"\n";
        let f = write(&text);
        let cfg = load(
            ConfigSource::File(f.path().into()),
            &[
                "mqtt.url=mqtt://127.0.0.1:18830".into(),
                "cloud.timeout_ms=250".into(),
                "camera.0.detect_fps=5".into(),
                "node.labels.site=north".into(),
                "edge.worker.resources.limits.cpu=500m".into(),
            ],
        )
        .unwrap();
        assert_eq!(cfg.mqtt.url, "mqtt://127.0.0.1:18830");
        assert_eq!(cfg.cloud.timeout_ms, 250);
        assert_eq!(cfg.cameras[0].detect_fps, 5.0);
        assert_eq!(cfg.node.labels["site"], "north");
        assert_eq!(
            cfg.edge.worker.resources.limits.cpu.unwrap().milli_value(),
            500
        );
    }

    #[test]
    fn bad_override_is_named() {
        let f = write(&default_text());
        let p = problems(load(
            ConfigSource::File(f.path().into()),
            &["mqtt.url=http://x".into()],
        ));
        assert_eq!(p[0].place, "--set mqtt.url=http://x");
        let p = problems(load(
            ConfigSource::File(f.path().into()),
            &["mqtt.nope=1".into()],
        ));
        assert_eq!(p[0].place, "--set mqtt.nope=1", "{}", p[0]);
        assert!(
            p[0].message.contains("unknown field 'nope' in [mqtt]"),
            "{}",
            p[0]
        );
        assert!(matches!(
            load(ConfigSource::File(f.path().into()), &["novalue".into()]),
            Err(ConfigError::BadOverride(_))
        ));
        let p = problems(load(
            ConfigSource::File(f.path().into()),
            &["camera.3.url=x".into()],
        ));
        assert!(
            p[0].message.contains("not an array") || p[0].message.contains("out of range"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn camera_checks() {
        let text = default_text()
            + "\n[[camera]]\nname = \"a b\"\nurl = \"http://x/y\"\ndetect_fps = 0\n\n[[camera]]\nname = \"a b\"\nurl = \"rtsp://h/s\"\n";
        let f = write(&text);
        let p = problems(load(ConfigSource::File(f.path().into()), &[]));
        let all: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert!(all.iter().any(|m| m.contains("camera[0].name")), "{all:?}");
        assert!(
            all.iter()
                .any(|m| m.contains("camera[0].url: scheme \"http\"")),
            "{all:?}"
        );
        assert!(
            all.iter().any(|m| m.contains("camera[0].detect_fps")),
            "{all:?}"
        );
        assert!(all.iter().any(|m| m.contains("used twice")), "{all:?}");
    }

    /// The 1-based line of the first line of `text` that starts with `start`.
    fn line_of(text: &str, start: &str) -> usize {
        text.lines().position(|l| l.starts_with(start)).unwrap() + 1
    }

    const YARD: &str = "\n[[camera]]\nname = \"yard\"\nurl = \"rtsp://127.0.0.1:8554/yard\"\n";

    #[test]
    fn zones_masks_and_schedules_are_read() {
        let text = default_text()
            + YARD
            + "required_zones = [\"scaffold\"]\n\n[[camera.zone]]\nname = \"scaffold\"\npolygon = [[0.10, 0.20], [0.90, 0.20], [0.90, 0.95], [0.10, 0.95]]\n\n[[camera.mask]]\nname = \"street\"\npolygon = [[0, 0], [0.3, 0], [0.3, 0.4], [0, 0]]\n\n[[camera.schedule]]\ndays = [\"mon-fri\", \"sun\"]\nstart = \"22:00\"\nend = \"06:00\"\n\n[[camera.schedule]]\ndays = [\"daily\"]\nstart = \"12:00\"\nend = \"24:00\"\n";
        let f = write(&text);
        let cfg = load(ConfigSource::File(f.path().into()), &[]).unwrap();
        let cam = &cfg.cameras[0];
        assert_eq!(cam.required_zones, ["scaffold"]);
        assert_eq!(cam.zone[0].polygon[2], [0.9, 0.95]);
        assert_eq!(cam.mask[0].name, "street");
        assert_eq!(cam.schedule[1].end, "24:00");
    }

    /// Every problem of `text` as printed, and a check that one starts with the given place and
    /// message.
    fn positioned_problems(text: &str) -> (Vec<String>, impl Fn(usize, usize, &str)) {
        let f = write(text);
        let file = f.path().display().to_string();
        let p = problems(load(ConfigSource::File(f.path().into()), &[]));
        let all: Vec<String> = p.iter().map(ToString::to_string).collect();
        let printed = all.clone();
        let expect = move |line: usize, column: usize, message: &str| {
            let wanted = format!("{file}:{line}:{column}: {message}");
            assert!(
                printed.iter().any(|m| m.starts_with(&wanted)),
                "{wanted}\nnot in {printed:#?}"
            );
        };
        (all, expect)
    }

    #[test]
    fn zone_checks_are_positioned() {
        let text = default_text()
            + YARD
            + "required_zones = [\"scaffold\", \"roof\"]\n\n[[camera.zone]]\nname = \"scaffold\"\npolygon = [[0.1, 0.2], [0.9, 0.2], [0.9, 0.95]]\n\n[[camera.zone]]\nname = \"bowtie\"\npolygon = [[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]]\n\n[[camera.mask]]\nname = \"scaffold\"\npolygon = [\n  [0.0, 0.0],\n  [1.3, 0.0],\n  [0.3, 0.4],\n]\n\n[[camera.mask]]\nname = \"line\"\npolygon = [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]]\n";
        let (all, expect) = positioned_problems(&text);
        let required = line_of(&text, "required_zones");
        expect(
            required,
            31,
            "camera[0].required_zones[1]: \"roof\" is not a zone of camera \"yard\"",
        );
        let bowtie = line_of(&text, "polygon = [[0.1, 0.1], [0.9, 0.9]");
        expect(bowtie, 1, "camera[0].zone[1].polygon: crosses itself");
        let mask_name = text
            .lines()
            .enumerate()
            .filter(|(_, l)| *l == "name = \"scaffold\"")
            .nth(1)
            .unwrap()
            .0
            + 1;
        expect(
            mask_name,
            1,
            "camera[0].mask[0].name: \"scaffold\" is used twice among the zones and masks",
        );
        expect(
            line_of(&text, "  [1.3, 0.0]"),
            3,
            "camera[0].mask[0].polygon[1]: [1.3, 0] must be fractions of the frame within [0, 1]",
        );
        let line = line_of(&text, "polygon = [[0.1, 0.1], [0.2, 0.2]");
        expect(line, 1, "camera[0].mask[1].polygon: has no area");
        assert_eq!(all.len(), 5, "{all:#?}");
    }

    #[test]
    fn schedule_checks_are_positioned() {
        let text = default_text()
            + YARD
            + "\n[[camera.schedule]]\ndays = [\"mon-fri\", \"funday\"]\nstart = \"7:00\"\nend = \"24:00\"\n\n[[camera.schedule]]\ndays = [\"daily\"]\nstart = \"18:00\"\nend = \"18:00\"\n\n[[camera.schedule]]\ndays = []\nstart = \"24:00\"\nend = \"24:01\"\n";
        let (all, expect) = positioned_problems(&text);
        let days = line_of(&text, "days = [\"mon-fri\"");
        expect(
            days,
            20,
            "camera[0].schedule[0].days[1]: \"funday\" is not a day",
        );
        expect(
            line_of(&text, "start = \"7:00\""),
            1,
            "camera[0].schedule[0].start: \"7:00\" is not a time HH:MM from 00:00 to 23:59",
        );
        let equal = text.lines().position(|l| l == "end = \"18:00\"").unwrap() + 1;
        expect(
            equal,
            1,
            "camera[0].schedule[1].end: equals start \"18:00\"",
        );
        expect(
            line_of(&text, "days = []"),
            1,
            "camera[0].schedule[2].days: must name at least one day",
        );
        expect(
            line_of(&text, "start = \"24:00\""),
            1,
            "camera[0].schedule[2].start",
        );
        expect(
            line_of(&text, "end = \"24:01\""),
            1,
            "camera[0].schedule[2].end: \"24:01\" is not a time HH:MM from 00:00 to 24:00",
        );
        assert_eq!(all.len(), 6, "{all:#?}");
    }

    #[test]
    fn hpa_block_is_kubernetes_shaped_and_checked() {
        let text = default_text()
            + "\n[edge.hpa]\nminReplicas = 3\nmaxReplicas = 2\nmetrics = [{ type = \"Resource\", resource = { name = \"cpu\", target = { type = \"Utilization\", averageUtilization = 70 } } }]\n";
        let line = text.lines().position(|l| l == "minReplicas = 3").unwrap() + 1;
        let f = write(&text);
        let p = problems(load(ConfigSource::File(f.path().into()), &[]));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].place.ends_with(&format!(":{line}:1")), "{}", p[0]);
        assert!(p[0].message.starts_with("edge.hpa.minReplicas"), "{}", p[0]);
        let cfg = load(
            ConfigSource::File(f.path().into()),
            &["edge.hpa.maxReplicas=4".into()],
        )
        .unwrap();
        assert_eq!(cfg.edge.hpa.unwrap().max_replicas, 4);
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("a\nbc\n", 3), (2, 2));
        assert_eq!(line_column("é\nx", 3), (2, 1));
        assert_eq!(line_column("abc", 99), (1, 4));
    }
}
