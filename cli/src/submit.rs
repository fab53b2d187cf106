//! Building a job request from what a person has at hand: a JSON body, a folder of images or texts.

use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde_json::{Value, json};

const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "gif", "webp"];
const TEXT_EXTENSIONS: [&str; 4] = ["txt", "md", "markdown", "text"];
const HTML_EXTENSIONS: [&str; 2] = ["html", "htm"];

/// The request body for `path`: a JSON file is sent as is (with `kind` overridden if given);
/// a folder becomes one item per image or text file, sorted by name.
pub fn request_body(path: &Path, kind: Option<&str>) -> Result<Value> {
    if path.is_dir() {
        return folder_body(path, kind);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut body: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    if let Some(kind) = kind {
        body["kind"] = Value::String(kind.to_string());
    }
    Ok(body)
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

fn folder_body(dir: &Path, kind: Option<&str>) -> Result<Value> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading folder {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let images: Vec<_> = paths
        .iter()
        .filter(|p| IMAGE_EXTENSIONS.contains(&extension(p).as_str()))
        .collect();
    let texts: Vec<_> = paths
        .iter()
        .filter(|p| {
            let ext = extension(p);
            TEXT_EXTENSIONS.contains(&ext.as_str()) || HTML_EXTENSIONS.contains(&ext.as_str())
        })
        .collect();
    let kind = match kind {
        Some(k) => k.to_string(),
        None if !images.is_empty() && texts.is_empty() => "image_alt".to_string(),
        None if images.is_empty() && !texts.is_empty() => "meta_description".to_string(),
        None if images.is_empty() => bail!(
            "{} holds no images ({}) or texts ({}, {})",
            dir.display(),
            IMAGE_EXTENSIONS.join(", "),
            TEXT_EXTENSIONS.join(", "),
            HTML_EXTENSIONS.join(", ")
        ),
        None => bail!(
            "{} holds both images and texts: pass --kind to choose (image_alt, meta_description, content_analysis)",
            dir.display()
        ),
    };
    let chosen = if kind == "image_alt" { images } else { texts };
    let mut items = Vec::with_capacity(chosen.len());
    for path in chosen {
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("item")
            .to_string();
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let ext = extension(path);
        let item = if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            json!({"id": id, "image_base64": base64::engine::general_purpose::STANDARD.encode(&bytes)})
        } else {
            let text = String::from_utf8(bytes)
                .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
            if HTML_EXTENSIONS.contains(&ext.as_str()) {
                json!({"id": id, "html": text})
            } else {
                json!({"id": id, "text": text})
            }
        };
        items.push(item);
    }
    if items.is_empty() {
        bail!("{} holds no files for kind {kind}", dir.display());
    }
    Ok(json!({"kind": kind, "items": items}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_of_texts_becomes_meta_description_items() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.md"), "# Title\n\nBody").unwrap();
        std::fs::write(dir.path().join("a.html"), "<p>Hi</p>").unwrap();
        std::fs::write(dir.path().join("notes.bin"), [0u8, 1]).unwrap();
        let body = request_body(dir.path(), None).unwrap();
        assert_eq!(body["kind"], "meta_description");
        assert_eq!(body["items"][0]["id"], "a.html");
        assert_eq!(body["items"][0]["html"], "<p>Hi</p>");
        assert_eq!(body["items"][1]["text"], "# Title\n\nBody");
        assert_eq!(body["items"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_mixed_folder_needs_a_kind() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), [1u8]).unwrap();
        std::fs::write(dir.path().join("a.txt"), "x").unwrap();
        let err = request_body(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("--kind"), "{err}");
        let body = request_body(dir.path(), Some("image_alt")).unwrap();
        assert_eq!(body["items"][0]["image_base64"], "AQ==");
    }

    #[test]
    fn an_empty_folder_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = request_body(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("no images"), "{err}");
    }

    #[test]
    fn a_json_file_is_sent_as_is_with_kind_overridden() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("job.json");
        std::fs::write(&file, r#"{"kind":"noop","items":[{"id":"1","text":"x"}]}"#).unwrap();
        assert_eq!(request_body(&file, None).unwrap()["kind"], "noop");
        assert_eq!(
            request_body(&file, Some("content_analysis")).unwrap()["kind"],
            "content_analysis"
        );
        std::fs::write(&file, "{oops").unwrap();
        assert!(
            request_body(&file, None)
                .unwrap_err()
                .to_string()
                .contains("not valid JSON")
        );
    }
}
