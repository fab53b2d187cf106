//! Job kinds: turning one input item into one output, through a [`Backend`].
//!
//! This layer reads and checks the input (base64, object store, size, image decoding, text
//! extraction) so that every backend gets clean input and a bad item fails the same way everywhere.

pub mod analysis;
pub mod document;
pub mod image_alt;
pub mod lang;
pub mod meta;

use base64::Engine as _;
use jobledger_events::JobKind;
use jobledger_events::spec::Item;

use crate::backend::{Backend, Generated, ItemError, ItemUsage};
use crate::objects::{ObjectError, ObjectStore};
use document::Document;

/// Per-item input limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ItemLimits {
    /// Largest item content (decoded image or text), in bytes.
    pub max_item_bytes: usize,
    /// Most memory a decoded image may take, in bytes.
    pub max_image_alloc: u64,
}

impl Default for ItemLimits {
    fn default() -> Self {
        ItemLimits {
            max_item_bytes: 10 * 1024 * 1024,
            max_image_alloc: 512 * 1024 * 1024,
        }
    }
}

/// Runs one item of a job of `kind`.
pub async fn run_item<B: Backend, O: ObjectStore>(
    kind: JobKind,
    item: &Item,
    backend: &B,
    objects: &O,
    limits: &ItemLimits,
) -> Result<Generated, ItemError> {
    match kind {
        JobKind::Noop => Ok(Generated {
            output: serde_json::json!({ "id": item.id }),
            usage: ItemUsage::default(),
        }),
        JobKind::ImageAlt => {
            let bytes = image_bytes(item, objects, limits).await?;
            let max_alloc = limits.max_image_alloc;
            let image = tokio::task::spawn_blocking(move || image_alt::decode(bytes, max_alloc))
                .await
                .map_err(|e| ItemError::Unavailable {
                    retryable: false,
                    message: format!("image decoding task failed: {e}"),
                })?
                .map_err(ItemError::Invalid)?;
            backend.alt_text(&image).await
        }
        JobKind::MetaDescription | JobKind::ContentAnalysis => {
            let doc = document(item, objects, limits).await?;
            if kind == JobKind::MetaDescription {
                backend.meta_description(&doc).await
            } else {
                backend.analyse(&doc).await
            }
        }
    }
}

fn too_large(what: &str, len: usize, limits: &ItemLimits) -> ItemError {
    ItemError::Invalid(format!(
        "{what} is {len} bytes, more than the {} byte limit",
        limits.max_item_bytes
    ))
}

async fn fetch<O: ObjectStore>(
    objects: &O,
    uri: &str,
    limits: &ItemLimits,
) -> Result<Vec<u8>, ItemError> {
    let bytes = objects.get(uri).await.map_err(|e| match e {
        ObjectError::NotFound(_) | ObjectError::InvalidRef(..) => ItemError::Invalid(e.to_string()),
        ObjectError::Backend(message) => ItemError::Unavailable {
            retryable: true,
            message,
        },
    })?;
    if bytes.len() > limits.max_item_bytes {
        return Err(too_large(uri, bytes.len(), limits));
    }
    Ok(bytes)
}

async fn image_bytes<O: ObjectStore>(
    item: &Item,
    objects: &O,
    limits: &ItemLimits,
) -> Result<Vec<u8>, ItemError> {
    if let Some(b64) = &item.image_base64 {
        // Accept data URLs (`data:image/png;base64,…`) as browsers produce them.
        let b64 = b64
            .split_once("base64,")
            .map_or(b64.as_str(), |(_, rest)| rest);
        // Check before decoding: base64 is 4/3 of the bytes, so a huge string is refused unread.
        if b64.len() / 4 * 3 > limits.max_item_bytes + 3 {
            return Err(too_large("image", b64.len() / 4 * 3, limits));
        }
        let clean: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(clean.as_bytes())
            .map_err(|e| ItemError::Invalid(format!("image_base64 is not valid base64: {e}")))?;
        if bytes.len() > limits.max_item_bytes {
            return Err(too_large("image", bytes.len(), limits));
        }
        Ok(bytes)
    } else if let Some(uri) = &item.uri {
        fetch(objects, uri, limits).await
    } else {
        Err(ItemError::Invalid(
            "an image_alt item needs image_base64 or uri".into(),
        ))
    }
}

async fn document<O: ObjectStore>(
    item: &Item,
    objects: &O,
    limits: &ItemLimits,
) -> Result<Document, ItemError> {
    enum Source {
        Html(String),
        Text(String),
        Markdown(String),
    }
    let source = if let Some(html) = &item.html {
        Source::Html(html.clone())
    } else if let Some(text) = &item.text {
        Source::Text(text.clone())
    } else if let Some(uri) = &item.uri {
        let bytes = fetch(objects, uri, limits).await?;
        let text = String::from_utf8(bytes)
            .map_err(|_| ItemError::Invalid(format!("{uri} is not UTF-8 text")))?;
        let lower = uri.to_ascii_lowercase();
        if lower.ends_with(".html") || lower.ends_with(".htm") {
            Source::Html(text)
        } else if lower.ends_with(".md") || lower.ends_with(".markdown") {
            Source::Markdown(text)
        } else {
            Source::Text(text)
        }
    } else {
        return Err(ItemError::Invalid(
            "a text item needs text, html or uri".into(),
        ));
    };
    let len = match &source {
        Source::Html(s) | Source::Text(s) | Source::Markdown(s) => s.len(),
    };
    if len > limits.max_item_bytes {
        return Err(too_large("text", len, limits));
    }
    let doc = tokio::task::spawn_blocking(move || match source {
        Source::Html(s) => document::parse_html(&s),
        Source::Markdown(s) => document::parse_markdown(&s),
        Source::Text(s) => Document::from_text(&s),
    })
    .await
    .map_err(|e| ItemError::Unavailable {
        retryable: false,
        message: format!("text extraction task failed: {e}"),
    })?;
    if doc.is_empty() {
        return Err(ItemError::Invalid("no readable text".into()));
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BuiltinBackend;
    use crate::objects::FsObjectStore;
    use image::{DynamicImage, ImageFormat};

    fn item(id: &str) -> Item {
        Item {
            id: id.into(),
            ..Item::default()
        }
    }

    async fn run(kind: JobKind, item: &Item) -> (Result<Generated, ItemError>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let objects = FsObjectStore::new(dir.path()).unwrap();
        let limits = ItemLimits {
            max_item_bytes: 64 * 1024,
            ..ItemLimits::default()
        };
        (
            run_item(kind, item, &BuiltinBackend, &objects, &limits).await,
            dir,
        )
    }

    #[tokio::test]
    async fn noop_echoes_the_item_id() {
        let (out, _dir) = run(JobKind::Noop, &item("n-1")).await;
        assert_eq!(out.unwrap().output, serde_json::json!({"id": "n-1"}));
    }

    #[tokio::test]
    async fn an_image_arrives_as_base64_or_as_a_data_url() {
        let png = image_alt::tests::encode(
            &DynamicImage::ImageRgb8(image_alt::tests::flat(40, 40)),
            ImageFormat::Png,
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        for encoded in [b64.clone(), format!("data:image/png;base64,{b64}")] {
            let it = Item {
                image_base64: Some(encoded),
                ..item("logo")
            };
            let (out, _dir) = run(JobKind::ImageAlt, &it).await;
            let out = out.unwrap();
            assert_eq!(
                out.output["alt_text"],
                "Square flat graphic in red and white (40×40 PNG)"
            );
            assert_eq!(out.usage, ItemUsage::default());
        }
    }

    #[tokio::test]
    async fn an_image_is_read_from_the_object_store_by_uri() {
        let dir = tempfile::tempdir().unwrap();
        let objects = FsObjectStore::new(dir.path()).unwrap();
        let jpg = image_alt::tests::encode(
            &DynamicImage::ImageRgb8(image_alt::tests::gradient(64, 48)),
            ImageFormat::Jpeg,
        );
        let uri = objects.put("inputs/sky.jpg", jpg).await.unwrap();
        let it = Item {
            uri: Some(uri),
            ..item("sky")
        };
        let out = run_item(
            JobKind::ImageAlt,
            &it,
            &BuiltinBackend,
            &objects,
            &ItemLimits::default(),
        )
        .await
        .unwrap();
        assert_eq!(out.output["format"], "JPEG");
        assert_eq!(out.output["style"], "photo");
    }

    #[tokio::test]
    async fn bad_items_fail_with_a_reason() {
        let cases = [
            (
                JobKind::ImageAlt,
                Item {
                    image_base64: Some("%%%".into()),
                    ..item("a")
                },
                "not valid base64",
            ),
            (
                JobKind::ImageAlt,
                Item {
                    image_base64: Some(
                        base64::engine::general_purpose::STANDARD.encode(b"GIF89a nope"),
                    ),
                    ..item("b")
                },
                "cannot decode GIF",
            ),
            (
                JobKind::ImageAlt,
                Item {
                    image_base64: Some("A".repeat(200_000)),
                    ..item("c")
                },
                "more than the 65536 byte limit",
            ),
            (
                JobKind::ImageAlt,
                Item {
                    text: Some("hi".into()),
                    ..item("d")
                },
                "needs image_base64 or uri",
            ),
            (
                JobKind::MetaDescription,
                Item {
                    text: Some("   ".into()),
                    ..item("e")
                },
                "no readable text",
            ),
            (
                JobKind::ContentAnalysis,
                Item {
                    html: Some("<p>x</p>".repeat(20_000)),
                    ..item("f")
                },
                "more than the 65536 byte limit",
            ),
            (
                JobKind::ContentAnalysis,
                item("g"),
                "needs text, html or uri",
            ),
            (
                JobKind::MetaDescription,
                Item {
                    uri: Some("file:///nowhere/x.txt".into()),
                    ..item("h")
                },
                "outside this store",
            ),
        ];
        for (kind, it, want) in cases {
            let (out, _dir) = run(kind, &it).await;
            match out {
                Err(ItemError::Invalid(reason)) => {
                    assert!(reason.contains(want), "{}: {reason}", it.id)
                }
                other => panic!("{}: expected an invalid item, got {other:?}", it.id),
            }
        }
    }

    #[tokio::test]
    async fn text_kinds_read_html_and_markdown() {
        let html = Item {
            html: Some("<html><head><script>alert('x')</script></head><body><h1>Shop</h1><p>We sell handmade ceramic bowls and cups from our studio in Porto.</p></body></html>".into()),
            ..item("page")
        };
        let (out, _dir) = run(JobKind::MetaDescription, &html).await;
        assert_eq!(
            out.unwrap().output["description"],
            "We sell handmade ceramic bowls and cups from our studio in Porto."
        );
        let md = Item {
            text: Some("# Title\n\n## Part one\n\nSome words here.\n".into()),
            ..item("md")
        };
        let (out, _dir) = run(JobKind::ContentAnalysis, &md).await;
        let out = out.unwrap().output;
        assert_eq!(out["format"], "markdown");
        assert_eq!(out["outline"][1]["text"], "Part one");
    }
}
