//! Regenerates `samples/`: three small PNGs and the `demo-*.json` job requests built from them and
//! from the texts in `samples/texts/`.
//!
//! `cargo run -p jobledger-workers --example make_samples -- samples`

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use image::{ImageFormat, Rgb, RgbImage};
use serde_json::{Value, json};

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "samples".into()));
    std::fs::create_dir_all(dir.join("images"))?;
    let images = [("sunset", sunset()), ("logo", logo()), ("banner", banner())];
    let mut image_items = Vec::new();
    for (name, img) in &images {
        let path = dir.join(format!("images/{name}.png"));
        img.save_with_format(&path, ImageFormat::Png)
            .with_context(|| format!("writing {}", path.display()))?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&path)?);
        image_items.push(json!({"id": name, "image_base64": b64}));
    }
    // One undecodable item shows a per-item failure: the job still succeeds, with items_failed = 1.
    image_items.push(json!({"id": "broken", "image_base64": base64::engine::general_purpose::STANDARD.encode(b"not an image")}));

    let text = |name: &str| -> anyhow::Result<String> {
        std::fs::read_to_string(dir.join("texts").join(name))
            .with_context(|| format!("reading texts/{name}"))
    };
    let text_items = vec![
        json!({"id": "bakery", "html": text("bakery.html")?}),
        json!({"id": "release-notes", "text": text("release-notes.md")?}),
        json!({"id": "marche-lyon", "text": text("marche-lyon.txt")?}),
    ];
    write(
        &dir,
        "demo-image-alt.json",
        request("image_alt", image_items),
    )?;
    write(
        &dir,
        "demo-meta-description.json",
        request("meta_description", text_items.clone()),
    )?;
    write(
        &dir,
        "demo-content-analysis.json",
        request("content_analysis", text_items),
    )?;
    let noop: Vec<Value> = (1..=100)
        .map(|i| json!({"id": format!("n{i:03}")}))
        .collect();
    write(&dir, "demo-noop.json", request("noop", noop))?;
    Ok(())
}

fn request(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": kind,
        "items": items,
        "max_attempts": 3,
        "timeout_s": 600,
        "priority": 0,
        "notify": {"slack": false, "notion": false},
        "metadata": {"demo": kind}
    })
}

fn write(dir: &Path, name: &str, body: Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(&body)?;
    text.push('\n');
    std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))
}

/// A photo-like evening sky: smooth orange-to-purple gradient over a dark ground.
fn sunset() -> RgbImage {
    RgbImage::from_fn(192, 120, |x, y| {
        if y > 96 {
            return Rgb([40 + (x % 7) as u8, 30, 45]);
        }
        let t = y as f32 / 96.0;
        let glow = 1.0 - ((x as f32 - 96.0).abs() / 96.0) * 0.3;
        Rgb([
            (250.0 * glow - 90.0 * t) as u8,
            (150.0 * glow * (1.0 - t) + 40.0 * t) as u8,
            (60.0 + 120.0 * t) as u8,
        ])
    })
}

/// A flat logo: a blue disc on white.
fn logo() -> RgbImage {
    RgbImage::from_fn(128, 128, |x, y| {
        let (dx, dy) = (x as i32 - 64, y as i32 - 64);
        if dx * dx + dy * dy < 48 * 48 {
            Rgb([25, 90, 200])
        } else {
            Rgb([255, 255, 255])
        }
    })
}

/// A black-on-white word mark, "JOBLEDGER" in a 5×7 pixel font at 4× scale.
fn banner() -> RgbImage {
    const GLYPHS: &[(char, [u8; 7])] = &[
        (
            'J',
            [
                0b00111, 0b00010, 0b00010, 0b00010, 0b10010, 0b10010, 0b01100,
            ],
        ),
        (
            'O',
            [
                0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110,
            ],
        ),
        (
            'B',
            [
                0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110,
            ],
        ),
        (
            'L',
            [
                0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111,
            ],
        ),
        (
            'E',
            [
                0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111,
            ],
        ),
        (
            'D',
            [
                0b11110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11110,
            ],
        ),
        (
            'G',
            [
                0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01110,
            ],
        ),
        (
            'R',
            [
                0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001,
            ],
        ),
    ];
    let word = "JOBLEDGER";
    let scale = 4;
    let mut img = RgbImage::from_pixel(240, 48, Rgb([255, 255, 255]));
    for (n, ch) in word.chars().enumerate() {
        let Some((_, rows)) = GLYPHS.iter().find(|(c, _)| *c == ch) else {
            continue;
        };
        for (row, bits) in rows.iter().enumerate() {
            for col in 0..5u32 {
                if bits & (1 << (4 - col)) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let x = 12 + n as u32 * 24 + col * scale + dx;
                            let y = 10 + row as u32 * scale + dy;
                            img.put_pixel(x, y, Rgb([10, 10, 10]));
                        }
                    }
                }
            }
        }
    }
    img
}
