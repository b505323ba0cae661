//! The camera's areas drawn onto a picture of it: for the operator's `helmetd snapshot` and for
//! alert snapshots, so whoever reads either sees where the rules apply.

use helmet_pipelines::output::{PolygonStyle, draw_polygon};
use image::{Rgb, RgbImage};

use super::CameraRules;

/// Zones are drawn in this colour, outlined.
pub const ZONE_COLOUR: Rgb<u8> = Rgb([0, 220, 255]);
/// Masks are drawn in this colour, outlined and hatched.
pub const MASK_COLOUR: Rgb<u8> = Rgb([255, 60, 200]);

/// Masks first, hatched, so zone outlines stay visible where the two overlap. Lines thicken
/// with the picture so they read at any size.
pub fn draw_areas(image: &mut RgbImage, rules: &CameraRules) {
    let thickness = (image.width().max(image.height()) / 400).clamp(2, 6);
    let mask_style = PolygonStyle {
        colour: MASK_COLOUR,
        thickness,
        hatch_spacing: 12,
    };
    let zone_style = PolygonStyle {
        colour: ZONE_COLOUR,
        thickness,
        hatch_spacing: 0,
    };
    for m in &rules.masks {
        let label = format!("mask {}", m.name);
        draw_polygon(image, m.polygon.points(), &label, mask_style);
    }
    for z in &rules.zones {
        let required = rules.required_zones.contains(&z.name);
        let label = format!(
            "zone {}{}",
            z.name,
            if required { " (required)" } else { "" }
        );
        draw_polygon(image, z.polygon.points(), &label, zone_style);
    }
}
