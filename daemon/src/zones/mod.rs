//! The rules of one camera: zones, masks and the schedule, built from its checked config.
//!
//! Everything is in fractions of the frame, so a camera switched to another resolution keeps its
//! zones. A person is placed by their foot point, the bottom centre of the box: that is where they
//! stand, whereas the box's centre of a person on a scaffold may hang over the street below.
//! Schedules are in the gateway's local time, because that is the time site rules are written in.

mod draw;
#[cfg(test)]
mod tests;

pub use draw::{MASK_COLOUR, ZONE_COLOUR, draw_areas};

use std::time::{SystemTime, UNIX_EPOCH};

/// 9999-12-31T23:59:59Z: times after it are no clock's reading.
const LAST_SECOND_OF_9999: u64 = 253_402_300_799;

use chrono::{Datelike, NaiveDateTime, Timelike};

use crate::config::{self, CameraConfig};

/// A simple polygon in fractions of the frame, without an explicit closing point.
#[derive(Debug, Clone, PartialEq)]
pub struct Polygon {
    points: Vec<(f32, f32)>,
}

/// How far from an edge (in fractions of the frame) a point still counts as on it: f32 rounding of
/// the configured coordinates must not move a point on the edge outside.
const EDGE_TOLERANCE: f32 = 1e-6;

impl Polygon {
    /// A polygon from configured points, checked as check-config checks them.
    pub fn from_fractions(points: &[[f64; 2]]) -> Result<Self, config::PolygonProblem> {
        let ring = config::polygon_points(points)?;
        Ok(Self {
            points: ring
                .into_iter()
                .map(|(x, y)| (x as f32, y as f32))
                .collect(),
        })
    }

    pub fn points(&self) -> &[(f32, f32)] {
        &self.points
    }

    /// Whether the point (fractions) is inside; a point on an edge counts as inside, NaN is never
    /// inside.
    pub fn contains(&self, x: f32, y: f32) -> bool {
        if !(x.is_finite() && y.is_finite()) || self.points.len() < 3 {
            return false;
        }
        let n = self.points.len();
        let mut inside = false;
        for i in 0..n {
            let (a, b) = (self.points[i], self.points[(i + 1) % n]);
            if on_segment(a, b, (x, y)) {
                return true;
            }
            // Even-odd rule: count the edges a ray to the right crosses, each edge's lower end
            // included and upper end excluded so a vertex on the ray counts once.
            if (a.1 > y) != (b.1 > y) {
                let at = a.0 + (y - a.1) / (b.1 - a.1) * (b.0 - a.0);
                if x < at {
                    inside = !inside;
                }
            }
        }
        inside
    }
}

fn on_segment(a: (f32, f32), b: (f32, f32), p: (f32, f32)) -> bool {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (cx, cy) = (a.0 + t * dx - p.0, a.1 + t * dy - p.1);
    cx * cx + cy * cy <= EDGE_TOLERANCE * EDGE_TOLERANCE
}

#[derive(Debug, Clone, PartialEq)]
pub struct NamedPolygon {
    pub name: String,
    pub polygon: Polygon,
}

/// One weekly window, parsed: the days it starts on and its minutes of the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Bit 0 Monday .. bit 6 Sunday.
    pub days: u8,
    /// Minutes since midnight, `start` in 0..1440 and `end` in 0..=1440; `end < start` runs
    /// overnight into the next day.
    pub start: u16,
    pub end: u16,
}

impl Window {
    fn is_active_at(&self, weekday: u32, minute: u16) -> bool {
        let starts_on = |day: u32| self.days & (1 << day) != 0;
        if self.start < self.end {
            starts_on(weekday) && (self.start..self.end).contains(&minute)
        } else {
            // Overnight: the evening of a listed day, or the morning after one.
            let yesterday = (weekday + 6) % 7;
            (starts_on(weekday) && minute >= self.start)
                || (starts_on(yesterday) && minute < self.end)
        }
    }
}

/// When a camera is active: any of its windows; no window at all means always.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schedule {
    windows: Vec<Window>,
}

impl Schedule {
    pub fn always() -> Self {
        Self::default()
    }

    pub fn from_windows(windows: Vec<Window>) -> Self {
        Self { windows }
    }

    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    pub fn is_always(&self) -> bool {
        self.windows.is_empty()
    }

    /// In the gateway's local time zone (`chrono::Local`).
    pub fn is_active(&self, t: SystemTime) -> bool {
        if self.is_always() {
            return true;
        }
        // chrono's own conversion from SystemTime panics outside its range: a clock set to an
        // absurd time is judged active (an alert too many, not a missed one) instead.
        let Some(utc) = t
            .duration_since(UNIX_EPOCH)
            .ok()
            .filter(|d| d.as_secs() < LAST_SECOND_OF_9999)
            .and_then(|d| {
                chrono::DateTime::from_timestamp(i64::try_from(d.as_secs()).ok()?, d.subsec_nanos())
            })
        else {
            return true;
        };
        self.is_active_at(utc.with_timezone(&chrono::Local).naive_local())
    }

    /// The testable core of [`Self::is_active`]: by minute, start included, end excluded.
    pub fn is_active_at(&self, local: NaiveDateTime) -> bool {
        let weekday = local.weekday().num_days_from_monday();
        // hour() < 24 and minute() < 60 by chrono's own invariants.
        let minute = (local.hour() * 60 + local.minute()) as u16;
        self.is_always() || self.windows.iter().any(|w| w.is_active_at(weekday, minute))
    }
}

/// A camera's config could not be turned into rules (check-config refuses the same configs).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("camera {camera:?}: {key}: {reason}")]
pub struct RulesError {
    pub camera: String,
    /// The key path within the camera's table, e.g. `zone[1].polygon`.
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CameraRules {
    pub zones: Vec<NamedPolygon>,
    pub masks: Vec<NamedPolygon>,
    pub required_zones: Vec<String>,
    pub schedule: Schedule,
}

impl CameraRules {
    pub fn from_config(camera: &CameraConfig) -> Result<Self, RulesError> {
        let error = |key: String, reason: String| RulesError {
            camera: camera.name.clone(),
            key,
            reason,
        };
        let named = |kind: &str, areas: &[config::ZoneConfig]| {
            areas
                .iter()
                .enumerate()
                .map(|(i, area)| {
                    let polygon = Polygon::from_fractions(&area.polygon).map_err(|e| {
                        let point = e.point.map_or(String::new(), |p| format!("[{p}]"));
                        error(format!("{kind}[{i}].polygon{point}"), e.reason)
                    })?;
                    Ok(NamedPolygon {
                        name: area.name.clone(),
                        polygon,
                    })
                })
                .collect::<Result<Vec<_>, RulesError>>()
        };
        let zones = named("zone", &camera.zone)?;
        let masks = named("mask", &camera.mask)?;
        for (i, required) in camera.required_zones.iter().enumerate() {
            if !zones.iter().any(|z| z.name == *required) {
                return Err(error(
                    format!("required_zones[{i}]"),
                    format!("{required:?} is not a zone of this camera"),
                ));
            }
        }
        let mut windows = Vec::with_capacity(camera.schedule.len());
        for (i, w) in camera.schedule.iter().enumerate() {
            let at = |k: &str| format!("schedule[{i}].{k}");
            let mut days = 0;
            for (d, spec) in w.days.iter().enumerate() {
                days |= config::parse_days(spec)
                    .map_err(|e| error(format!("{}[{d}]", at("days")), e))?;
            }
            let start =
                config::parse_time_of_day(&w.start, false).map_err(|e| error(at("start"), e))?;
            let end = config::parse_time_of_day(&w.end, true).map_err(|e| error(at("end"), e))?;
            if days == 0 || start == end {
                return Err(error(
                    at(if days == 0 { "days" } else { "end" }),
                    "the window is empty (no day, or end equals start)".into(),
                ));
            }
            windows.push(Window { days, start, end });
        }
        Ok(Self {
            zones,
            masks,
            required_zones: camera.required_zones.clone(),
            schedule: Schedule::from_windows(windows),
        })
    }

    pub fn is_masked(&self, foot: (f32, f32)) -> bool {
        self.masks
            .iter()
            .any(|m| m.polygon.contains(foot.0, foot.1))
    }

    /// Names of the zones containing the point, in config order.
    pub fn zones_at(&self, foot: (f32, f32)) -> Vec<String> {
        self.zones
            .iter()
            .filter(|z| z.polygon.contains(foot.0, foot.1))
            .map(|z| z.name.clone())
            .collect()
    }

    /// True when there are no required zones, or the point is inside one of them.
    pub fn counts(&self, foot: (f32, f32)) -> bool {
        self.required_zones.is_empty()
            || self.zones.iter().any(|z| {
                self.required_zones.contains(&z.name) && z.polygon.contains(foot.0, foot.1)
            })
    }
}

/// The bottom centre of a box given in pixels of a `width × height` frame, as fractions; None for
/// non-finite boxes or a zero-sized frame. Not clamped: a point off the frame is in no zone.
pub fn foot_point(d: &helmet_pipelines::Detection, width: u32, height: u32) -> Option<(f32, f32)> {
    if width == 0 || height == 0 {
        return None;
    }
    // In f64, so that two huge but finite x's do not overflow into infinity.
    let x = (f64::from(d.x1) + f64::from(d.x2)) / 2.0 / f64::from(width);
    let y = f64::from(d.y2) / f64::from(height);
    let (x, y) = (x as f32, y as f32);
    (x.is_finite() && y.is_finite()).then_some((x, y))
}
