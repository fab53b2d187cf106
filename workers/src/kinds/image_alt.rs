//! `image_alt`: decoding (shared by every backend) and the builtin describer.
//!
//! The builtin backend cannot see what an image shows, so it says what it can measure: style
//! (photo-like or flat graphic), dominant colours, orientation, size and format, and whether fine
//! high-contrast detail suggests text. That is honest, deterministic and still better than no alt.

use std::io::Cursor;
use std::sync::Arc;

use image::{DynamicImage, GenericImageView, ImageFormat, ImageReader, Limits};
use serde::Serialize;

/// Longest alt text, in characters (the common screen-reader guidance).
pub const MAX_ALT_CHARS: usize = 125;

/// Side of the thumbnail the colour and style statistics are computed on.
const THUMB: u32 = 96;

/// A decoded image, ready for any backend (model backends send `bytes`, the builtin reads `pixels`).
#[derive(Clone, Debug)]
pub struct ImageInput {
    /// The encoded bytes as received.
    pub bytes: Arc<Vec<u8>>,
    /// The detected format.
    pub format: ImageFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The decoded pixels.
    pub pixels: Arc<DynamicImage>,
}

impl ImageInput {
    /// The MIME type, e.g. `image/png`.
    pub fn mime(&self) -> &'static str {
        self.format.to_mime_type()
    }

    /// A short format name, e.g. `PNG`.
    pub fn format_name(&self) -> &'static str {
        format_name(self.format)
    }
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Gif => "GIF",
        ImageFormat::WebP => "WebP",
        _ => "image",
    }
}

/// Decodes image bytes (PNG, JPEG, GIF, WebP), refusing images whose pixels would need more than
/// `max_alloc` bytes (decompression bombs). The error is a reason fit for a failed item.
pub fn decode(bytes: Vec<u8>, max_alloc: u64) -> Result<ImageInput, String> {
    let mut reader = ImageReader::new(Cursor::new(&bytes[..]))
        .with_guessed_format()
        .map_err(|e| format!("cannot read image: {e}"))?;
    let format = reader
        .format()
        .ok_or_else(|| "not an image (unknown format)".to_string())?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_alloc);
    reader.limits(limits);
    let pixels = reader
        .decode()
        .map_err(|e| format!("cannot decode {} image: {e}", format_name(format)))?;
    let (width, height) = pixels.dimensions();
    Ok(ImageInput {
        bytes: Arc::new(bytes),
        format,
        width,
        height,
        pixels: Arc::new(pixels),
    })
}

/// A named colour and its share of the (opaque) image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ColourShare {
    /// A plain colour name: `red`, `blue`, `grey`, …
    pub name: &'static str,
    /// Share of opaque pixels, 0–1, two decimals.
    pub share: f64,
}

/// What the builtin describer measured, and the alt text it wrote from it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AltText {
    /// At most 125 characters; never starts with "image of".
    pub alt_text: String,
    /// `PNG`, `JPEG`, …
    pub format: &'static str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `landscape`, `portrait` or `square`.
    pub orientation: &'static str,
    /// `photo` (continuous tones) or `graphic` (flat colours).
    pub style: &'static str,
    /// Dominant colours, largest first.
    pub colours: Vec<ColourShare>,
    /// Fine high-contrast detail typical of text or line art.
    pub likely_text: bool,
    /// Share of transparent pixels, 0–1.
    pub transparency: f64,
}

/// Describes an image from its pixels.
pub fn describe(img: &ImageInput) -> AltText {
    let orientation = orientation(img.width, img.height);
    // Small images are measured as they are: scaling them up would only invent pixels.
    let thumb = if img.width <= THUMB && img.height <= THUMB {
        img.pixels.to_rgba8()
    } else {
        img.pixels.thumbnail(THUMB, THUMB).to_rgba8()
    };
    let total = (thumb.width() * thumb.height()).max(1) as usize;

    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    let mut opaque = 0usize;
    let mut distinct = std::collections::HashSet::new();
    for p in thumb.pixels() {
        let [r, g, b, a] = p.0;
        if a < 128 {
            continue;
        }
        opaque += 1;
        // 5 bits per channel: JPEG noise on a flat area stays one colour, a gradient does not.
        distinct.insert((r >> 3, g >> 3, b >> 3));
        let name = colour_name(r, g, b);
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let colours: Vec<ColourShare> = counts
        .iter()
        .filter(|(_, c)| *c * 10 >= opaque)
        .take(3)
        .map(|&(name, c)| ColourShare {
            name,
            share: ((c as f64 / opaque.max(1) as f64) * 100.0).round() / 100.0,
        })
        .collect();

    // Luminance steps between horizontal neighbours: photos change gently and almost everywhere,
    // graphics are flat with a few sharp edges; many sharp edges in a graphic look like text.
    let luma = |x: u32, y: u32| {
        let [r, g, b, _] = thumb.get_pixel(x, y).0;
        (0.299 * r as f64 + 0.587 * g as f64 + 0.114 * b as f64) as i32
    };
    let (mut same, mut sharp, mut pairs) = (0usize, 0usize, 0usize);
    for y in 0..thumb.height() {
        for x in 1..thumb.width() {
            let d = (luma(x, y) - luma(x - 1, y)).abs();
            pairs += 1;
            if thumb.get_pixel(x, y) == thumb.get_pixel(x - 1, y) {
                same += 1;
            }
            if d >= 96 {
                sharp += 1;
            }
        }
    }
    let pairs = pairs.max(1);
    let same_share = same as f64 / pairs as f64;
    let sharp_share = sharp as f64 / pairs as f64;
    // Few colours, or mostly identical neighbours (a gradient changes a little at every step,
    // camera noise too), is a flat graphic.
    let graphic = distinct.len() <= 64 || (same_share >= 0.75 && distinct.len() <= 512);
    let likely_text = graphic && sharp_share >= 0.04 && distinct.len() <= 64;
    let style = if graphic { "graphic" } else { "photo" };
    let transparency = (((total - opaque) as f64 / total as f64) * 100.0).round() / 100.0;

    let alt_text = compose(&AltParts {
        orientation,
        graphic,
        colours: colours.iter().map(|c| c.name).collect(),
        likely_text,
        transparent: transparency >= 0.25,
        width: img.width,
        height: img.height,
        format: img.format_name(),
    });
    AltText {
        alt_text,
        format: img.format_name(),
        width: img.width,
        height: img.height,
        orientation,
        style,
        colours,
        likely_text,
        transparency,
    }
}

struct AltParts<'a> {
    orientation: &'static str,
    graphic: bool,
    colours: Vec<&'a str>,
    likely_text: bool,
    transparent: bool,
    width: u32,
    height: u32,
    format: &'static str,
}

/// Writes the sentence, dropping detail (size, then colours) until it fits in 125 characters.
fn compose(p: &AltParts<'_>) -> String {
    for (keep_colours, keep_size) in [(3, true), (2, true), (2, false), (1, false), (0, false)] {
        let s = sentence(p, keep_colours, keep_size);
        if s.chars().count() <= MAX_ALT_CHARS {
            return s;
        }
    }
    sentence(p, 0, false).chars().take(MAX_ALT_CHARS).collect()
}

fn sentence(p: &AltParts<'_>, keep_colours: usize, keep_size: bool) -> String {
    let colours = join_names(&p.colours[..p.colours.len().min(keep_colours)]);
    let orientation = capitalise(p.orientation);
    let mut s = match (p.graphic, p.colours.len()) {
        (true, 1) if keep_colours >= 1 => format!("{orientation} solid {colours} graphic"),
        (true, _) if !colours.is_empty() => format!("{orientation} flat graphic in {colours}"),
        (true, _) => format!("{orientation} flat graphic"),
        (false, _) if !colours.is_empty() => {
            format!("{orientation} photo-like image with tones of {colours}")
        }
        (false, _) => format!("{orientation} photo-like image"),
    };
    if p.likely_text {
        s.push_str(", fine high-contrast detail, possibly text");
    }
    if p.transparent {
        s.push_str(", transparent background");
    }
    if keep_size {
        s.push_str(&format!(" ({}×{} {})", p.width, p.height, p.format));
    }
    s
}

fn join_names(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn orientation(w: u32, h: u32) -> &'static str {
    // Within 5 % counts as square: a 1000×980 picture reads as square.
    if (w as f64) > h as f64 * 1.05 {
        "landscape"
    } else if (h as f64) > w as f64 * 1.05 {
        "portrait"
    } else {
        "square"
    }
}

/// A plain name for an sRGB colour, by hue, saturation and lightness.
pub fn colour_name(r: u8, g: u8, b: u8) -> &'static str {
    let (r, g, b) = (r as f64 / 255.0, g as f64 / 255.0, b as f64 / 255.0);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let l = (max + min) / 2.0;
    let d = max - min;
    let s = if d == 0.0 {
        0.0
    } else {
        d / (1.0 - (2.0 * l - 1.0).abs())
    };
    if l < 0.12 {
        return "black";
    }
    if l > 0.93 {
        return "white";
    }
    if s < 0.15 {
        return if l < 0.2 {
            "black"
        } else if l > 0.85 {
            "white"
        } else {
            "grey"
        };
    }
    let h = if d == 0.0 {
        0.0
    } else if max == r {
        60.0 * (((g - b) / d).rem_euclid(6.0))
    } else if max == g {
        60.0 * ((b - r) / d + 2.0)
    } else {
        60.0 * ((r - g) / d + 4.0)
    };
    match h {
        h if !(15.0..345.0).contains(&h) => {
            if l > 0.75 {
                "pink"
            } else if l < 0.3 {
                "brown"
            } else {
                "red"
            }
        }
        h if h < 45.0 => {
            if l < 0.4 {
                "brown"
            } else {
                "orange"
            }
        }
        h if h < 70.0 => {
            if l < 0.3 {
                "olive"
            } else {
                "yellow"
            }
        }
        h if h < 165.0 => "green",
        h if h < 195.0 => "teal",
        h if h < 255.0 => "blue",
        h if h < 290.0 => "purple",
        _ => "pink",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};

    /// A smooth two-axis gradient, like a sky photo.
    pub(crate) fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (40 + x * 120 / w) as u8,
                (90 + y * 100 / h) as u8,
                (200 + (x + y) * 50 / (w + h)) as u8,
            ])
        })
    }

    /// Two flat colour bands, like a logo.
    pub(crate) fn flat(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |_, y| {
            if y < h * 2 / 3 {
                Rgb([220, 30, 30])
            } else {
                Rgb([255, 255, 255])
            }
        })
    }

    pub(crate) fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn a_jpeg_gradient_reads_as_a_photo_like_landscape_in_blue() {
        let bytes = encode(
            &DynamicImage::ImageRgb8(gradient(320, 200)),
            ImageFormat::Jpeg,
        );
        let img = decode(bytes, 64 << 20).unwrap();
        let alt = describe(&img);
        assert_eq!((alt.format, alt.width, alt.height), ("JPEG", 320, 200));
        assert_eq!(alt.orientation, "landscape");
        assert_eq!(alt.style, "photo");
        assert_eq!(alt.colours[0].name, "blue");
        assert!(
            alt.alt_text
                .starts_with("Landscape photo-like image with tones of blue"),
            "{}",
            alt.alt_text
        );
        assert!(alt.alt_text.ends_with("(320×200 JPEG)"), "{}", alt.alt_text);
    }

    #[test]
    fn a_flat_png_reads_as_a_graphic_with_its_colours() {
        let bytes = encode(&DynamicImage::ImageRgb8(flat(90, 160)), ImageFormat::Png);
        let alt = describe(&decode(bytes, 64 << 20).unwrap());
        assert_eq!(alt.style, "graphic");
        assert_eq!(alt.orientation, "portrait");
        let names: Vec<&str> = alt.colours.iter().map(|c| c.name).collect();
        assert_eq!(names, ["red", "white"]);
        assert_eq!(
            alt.alt_text,
            "Portrait flat graphic in red and white (90×160 PNG)"
        );
        assert!(!alt.likely_text);
    }

    #[test]
    fn black_strokes_on_white_look_like_text() {
        let img = RgbImage::from_fn(300, 100, |x, y| {
            let stroke = (x / 3) % 3 == 0 && (20..80).contains(&y) && (x / 30) % 2 == 0;
            if stroke {
                Rgb([0, 0, 0])
            } else {
                Rgb([255, 255, 255])
            }
        });
        let alt = describe(
            &decode(
                encode(&DynamicImage::ImageRgb8(img), ImageFormat::Png),
                64 << 20,
            )
            .unwrap(),
        );
        assert!(alt.likely_text, "{alt:?}");
        assert!(alt.alt_text.contains("possibly text"));
    }

    #[test]
    fn a_single_colour_with_transparency_is_a_solid_graphic() {
        let img = RgbaImage::from_fn(64, 64, |x, _| {
            if x < 32 {
                Rgba([20, 120, 40, 255])
            } else {
                Rgba([0, 0, 0, 0])
            }
        });
        let alt = describe(
            &decode(
                encode(&DynamicImage::ImageRgba8(img), ImageFormat::Png),
                64 << 20,
            )
            .unwrap(),
        );
        assert_eq!(
            alt.alt_text,
            "Square solid green graphic, transparent background (64×64 PNG)"
        );
        assert_eq!(alt.transparency, 0.5);
    }

    #[test]
    fn alt_text_never_exceeds_125_chars_nor_starts_with_image_of() {
        let parts = AltParts {
            orientation: "landscape",
            graphic: true,
            colours: vec!["purple", "orange", "yellow"],
            likely_text: true,
            transparent: true,
            width: 100_000,
            height: 99_999,
            format: "WebP",
        };
        let s = compose(&parts);
        assert!(
            s.chars().count() <= MAX_ALT_CHARS,
            "{} chars: {s}",
            s.chars().count()
        );
        assert!(!s.to_lowercase().starts_with("image of"));
    }

    #[test]
    fn garbage_bytes_are_not_an_image() {
        let err = decode(b"definitely not a picture".to_vec(), 64 << 20).unwrap_err();
        assert!(err.contains("not an image"), "{err}");
        let mut png = encode(&DynamicImage::ImageRgb8(flat(10, 10)), ImageFormat::Png);
        png.truncate(40);
        assert!(
            decode(png, 64 << 20)
                .unwrap_err()
                .contains("cannot decode PNG")
        );
    }

    #[test]
    fn colours_have_plain_names() {
        assert_eq!(colour_name(250, 250, 250), "white");
        assert_eq!(colour_name(10, 10, 10), "black");
        assert_eq!(colour_name(128, 128, 128), "grey");
        assert_eq!(colour_name(200, 20, 20), "red");
        assert_eq!(colour_name(20, 60, 200), "blue");
        assert_eq!(colour_name(30, 160, 60), "green");
        assert_eq!(colour_name(240, 200, 20), "yellow");
        assert_eq!(colour_name(110, 60, 20), "brown");
    }
}
