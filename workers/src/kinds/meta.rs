//! `meta_description` (builtin): an extractive description of at most 155 characters.

use serde::Serialize;

use super::document::{BlockKind, Document, normalise_ws};

/// Longest description, in characters (what search engines show).
pub const MAX_DESCRIPTION_CHARS: usize = 155;

/// Paragraphs shorter than this many words are bylines, captions or buttons, not summaries.
const MIN_LEAD_WORDS: usize = 8;

/// The builtin description and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetaDescription {
    /// The description, at most 155 characters, cut on a word boundary.
    pub description: String,
    /// Its length in characters.
    pub length: usize,
    /// `meta` (the page's own), `paragraph` (lead paragraph), `text` (any text) or `title`.
    pub source: &'static str,
}

/// Builds the description: the page's own description if it has one, else the lead paragraph
/// (whole sentences while they fit), else any text, else the title. `None` if there is no text.
pub fn describe(doc: &Document) -> Option<MetaDescription> {
    let (text, source) = if let Some(d) = doc
        .description
        .as_deref()
        .filter(|d| d.chars().count() >= 20)
    {
        (d.to_string(), "meta")
    } else if let Some(lead) = lead_text(doc, &[BlockKind::Paragraph]) {
        (lead, "paragraph")
    } else if let Some(lead) = lead_text(
        doc,
        &[BlockKind::Paragraph, BlockKind::ListItem, BlockKind::Other],
    ) {
        (lead, "text")
    } else if let Some(t) = doc.title.as_deref().or(doc.description.as_deref()) {
        (t.to_string(), "title")
    } else {
        let first = doc.blocks.first()?;
        (first.text.clone(), "text")
    };
    let description = fit(&normalise_ws(&text), MAX_DESCRIPTION_CHARS);
    if description.is_empty() {
        return None;
    }
    Some(MetaDescription {
        length: description.chars().count(),
        description,
        source,
    })
}

/// The first block of one of `kinds` with enough words, continued with the next ones while short.
fn lead_text(doc: &Document, kinds: &[BlockKind]) -> Option<String> {
    let mut candidates = doc
        .blocks
        .iter()
        .filter(|b| kinds.contains(&b.kind))
        .skip_while(|b| b.text.split_whitespace().count() < MIN_LEAD_WORDS);
    let mut text = candidates.next()?.text.clone();
    // A short lead ("Welcome to our shop.") leaves room: fill it with what follows.
    for next in candidates {
        if text.chars().count() >= MAX_DESCRIPTION_CHARS / 2 {
            break;
        }
        text.push(' ');
        text.push_str(&next.text);
    }
    Some(text)
}

/// Whole sentences that fit in `max` characters; if not even the first fits, the longest
/// word-boundary prefix with an ellipsis.
pub fn fit(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut end = 0;
    for (i, c) in text.char_indices() {
        let next = i + c.len_utf8();
        if text[..next].chars().count() > max {
            break;
        }
        let boundary = text[next..].starts_with(' ') || next == text.len();
        if matches!(c, '.' | '!' | '?') && boundary {
            end = next;
        }
    }
    // A sentence cut that keeps under 60 % of the room wastes it; cut on a word instead.
    if end > 0 && text[..end].chars().count() * 10 >= max * 6 {
        return text[..end].to_string();
    }
    let budget = max - 1; // room for the ellipsis
    let mut cut = 0;
    for (i, c) in text.char_indices() {
        if text[..i].chars().count() > budget {
            break;
        }
        if c == ' ' {
            cut = i;
        }
    }
    if cut == 0 {
        // One enormous word: cut inside it rather than return nothing.
        let s: String = text.chars().take(budget).collect();
        return format!("{s}…");
    }
    let head = text[..cut].trim_end_matches([',', ';', ':', '-', '–', '—', ' ']);
    format!("{head}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::document::Document;

    #[test]
    fn the_pages_own_description_wins() {
        let doc = Document::from_text(
            r#"<html><head><meta name="description" content="Fresh bread every morning, baked in Lyon since 1920."></head><body><p>Other text that is long enough to be a paragraph here.</p></body></html>"#,
        );
        let d = describe(&doc).unwrap();
        assert_eq!(
            d.description,
            "Fresh bread every morning, baked in Lyon since 1920."
        );
        assert_eq!(d.source, "meta");
    }

    #[test]
    fn the_lead_paragraph_is_used_in_whole_sentences_under_155_chars() {
        let html = "<html><body><script>document.write('ignore me please, this is code')</script><p>By Ann</p>\
            <p>Our worker turns batches of pages into short descriptions without any network access. \
            It runs on Fargate Spot and resumes from checkpoints. It also writes a ledger of every step it takes, \
            so that auditors can replay it.</p></body></html>";
        let d = describe(&Document::from_text(html)).unwrap();
        assert_eq!(d.source, "paragraph");
        assert_eq!(
            d.description,
            "Our worker turns batches of pages into short descriptions without any network access. It runs on Fargate Spot and resumes from checkpoints."
        );
        assert!(d.length <= MAX_DESCRIPTION_CHARS);
        assert!(!d.description.contains("ignore"));
    }

    #[test]
    fn a_long_sentence_is_cut_on_a_word_boundary_with_an_ellipsis() {
        let text = "word ".repeat(30)
            + "and then a sentence that keeps going far beyond the limit of one hundred and fifty five characters";
        let out = fit(&text, MAX_DESCRIPTION_CHARS);
        assert!(
            out.chars().count() <= MAX_DESCRIPTION_CHARS,
            "{}",
            out.chars().count()
        );
        assert!(out.ends_with('…'));
        let body = out.trim_end_matches('…');
        assert!(text.starts_with(body));
        assert_eq!(
            &text[body.len()..body.len() + 1],
            " ",
            "cut falls on a space"
        );
    }

    #[test]
    fn markdown_skips_headings_and_uses_the_first_real_paragraph() {
        let md = "# Changelog\n\nShort.\n\nThis release adds resumable workers, per-item failures and a results checksum for every job.\n";
        let d = describe(&Document::from_text(md)).unwrap();
        assert_eq!(
            d.description,
            "This release adds resumable workers, per-item failures and a results checksum for every job."
        );
    }

    #[test]
    fn empty_text_has_no_description() {
        assert!(describe(&Document::from_text("   \n\n ")).is_none());
        assert!(describe(&Document::from_text("<html><script>x()</script></html>")).is_none());
    }

    #[test]
    fn accented_text_is_measured_in_characters_not_bytes() {
        let text = "é".repeat(100) + " " + &"è".repeat(100);
        let out = fit(&text, MAX_DESCRIPTION_CHARS);
        assert_eq!(out, "é".repeat(100) + "…");
    }
}
