//! The prompts the model backends send, and the checks their answers must pass before an item
//! gets them: alt text (≤ 125 characters, no "image of"), meta descriptions (≤ 155 characters, in
//! the page's language) and content analysis (strict JSON, checked against a schema).

use serde::{Deserialize, Serialize};

use crate::kinds::document::{BlockKind, Document, normalise_ws};
use crate::kinds::image_alt::MAX_ALT_CHARS;
use crate::kinds::lang;
use crate::kinds::meta::{MAX_DESCRIPTION_CHARS, fit};

/// Most characters of page text sent to the model: enough to describe a page, and it bounds tokens.
pub const MAX_PROMPT_TEXT_CHARS: usize = 12_000;

/// Output token limits per call: each kind's answer is short, so a runaway reply is cut early.
pub const ALT_MAX_TOKENS: u32 = 120;
/// See [`ALT_MAX_TOKENS`].
pub const META_MAX_TOKENS: u32 = 160;
/// See [`ALT_MAX_TOKENS`].
pub const ANALYSIS_MAX_TOKENS: u32 = 900;

/// System prompt for `image_alt`.
pub const ALT_SYSTEM: &str = "You write alt text for images on web pages, for people using screen readers. \
Rules: at most 125 characters; one plain sentence or phrase; describe what matters to a reader \
(the subject, the action, any readable text in the image, and the setting only if it adds meaning); \
never begin with \"image of\", \"picture of\" or \"photo of\" (screen readers already say it is an image); \
no quotes, no emoji, no hashtags, no speculation about identity. Reply with the alt text only.";

/// System prompt for `meta_description`.
pub const META_SYSTEM: &str = "You write meta descriptions for web pages, shown under the title in search results. \
Rules: at most 155 characters; write in the same language as the page; one or two complete sentences \
that say what the reader gets from the page, specific rather than generic; no quotes, no emoji, \
no clickbait, no \"this page\" or \"in this article\". Reply with the description only.";

/// System prompt for `content_analysis`.
pub const ANALYSIS_SYSTEM: &str = "You analyse web content for an editorial team. Reply with one JSON object \
and nothing else (no Markdown fences, no commentary), with exactly these keys: \
\"topics\": 1 to 5 short topic labels; \"keywords\": 1 to 10 keywords or key phrases found in the text, \
most important first; \"summary\": a neutral summary of at most 300 characters, in the text's language; \
\"sentiment\": one of \"positive\", \"neutral\", \"negative\", \"mixed\"; \
\"readability_notes\": 0 to 5 short, concrete notes on what makes the text easy or hard to read \
(sentence length, jargon, structure).";

/// The user turn for an image.
pub fn alt_user(format_name: &str, width: u32, height: u32) -> String {
    format!(
        "Write alt text for this {format_name} image ({width}×{height} pixels). At most {MAX_ALT_CHARS} characters."
    )
}

/// The page's language (ISO 639-1), or `None` when undetermined.
pub fn page_language(doc: &Document) -> Option<&'static str> {
    let words: Vec<String> = doc
        .title
        .iter()
        .chain(doc.blocks.iter().map(|b| &b.text))
        .flat_map(|t| lang::words(t))
        .collect();
    match lang::detect(&words) {
        ("und", _) => None,
        (code, _) => Some(code),
    }
}

/// The page as plain text for a prompt: title, description and blocks (headings marked), cut to
/// [`MAX_PROMPT_TEXT_CHARS`] characters.
pub fn page_text(doc: &Document) -> String {
    let mut out = String::new();
    if let Some(t) = &doc.title {
        out.push_str(&format!("Title: {t}\n"));
    }
    if let Some(d) = &doc.description {
        out.push_str(&format!("Existing description: {d}\n"));
    }
    out.push('\n');
    for b in &doc.blocks {
        if let BlockKind::Heading(level) = b.kind {
            out.push_str(&"#".repeat(level as usize));
            out.push(' ');
        }
        out.push_str(&b.text);
        out.push_str("\n\n");
    }
    match out.char_indices().nth(MAX_PROMPT_TEXT_CHARS) {
        Some((cut, _)) => {
            out.truncate(cut);
            out.push_str("\n[…text cut…]");
            out
        }
        None => out,
    }
}

/// The user turn for a meta description.
pub fn meta_user(doc: &Document) -> String {
    let language = match page_language(doc) {
        Some(code) => {
            format!("The page is in the language with ISO 639-1 code \"{code}\"; write in it.")
        }
        None => "Write in the page's language.".to_string(),
    };
    format!(
        "{language} At most {MAX_DESCRIPTION_CHARS} characters.\n\n<page>\n{}\n</page>",
        page_text(doc)
    )
}

/// The user turn for a content analysis.
pub fn analysis_user(doc: &Document) -> String {
    format!("<text>\n{}\n</text>", page_text(doc))
}

/// Reminder sent with the retry after a malformed analysis.
pub fn analysis_retry_user(doc: &Document, problem: &str) -> String {
    format!(
        "{}\n\nYour previous reply was rejected: {problem}. Reply with the JSON object only, exactly as specified.",
        analysis_user(doc)
    )
}

/// Openings that waste a screen-reader user's time, lower-case; removed from alt text.
const REDUNDANT_OPENINGS: [&str; 12] = [
    "an image of ",
    "a image of ",
    "image of ",
    "an image showing ",
    "image showing ",
    "a picture of ",
    "picture of ",
    "a photo of ",
    "photo of ",
    "this image shows ",
    "the image shows ",
    "alt text: ",
];

/// Strips wrapping quotes, whitespace and a trailing newline-separated tail from a model reply.
fn clean_reply(reply: &str) -> String {
    let first = reply.trim().lines().next().unwrap_or("").trim();
    let unquoted = first.trim_matches(['"', '\'', '“', '”', '«', '»', '`']);
    normalise_ws(unquoted)
}

/// Upper-cases the first character (after removing an opening the text loses its capital).
fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Cuts `text` to at most `max` characters on a word boundary, without an ellipsis (alt text is
/// read aloud: "dot dot dot" helps nobody).
fn cut_words(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut = 0;
    for (i, c) in text.char_indices() {
        if text[..i].chars().count() > max {
            break;
        }
        if c == ' ' {
            cut = i;
        }
    }
    let head = if cut == 0 {
        text.chars().take(max).collect::<String>()
    } else {
        text[..cut].to_string()
    };
    head.trim_end_matches([',', ';', ':', '-', '–', '—', ' '])
        .to_string()
}

/// Checks and fixes a model's alt text: one line, no quotes, no "image of"-style opening, at most
/// 125 characters. `Err` if nothing usable is left.
pub fn finish_alt_text(reply: &str) -> Result<String, String> {
    let mut text = clean_reply(reply);
    loop {
        let lower = text.to_lowercase();
        let Some(opening) = REDUNDANT_OPENINGS.iter().find(|o| lower.starts_with(*o)) else {
            break;
        };
        // The openings are ASCII, so their byte length is the same in `text` and `lower`.
        text = text[opening.len()..].trim_start().to_string();
    }
    let text = capitalise(&cut_words(&text, MAX_ALT_CHARS));
    if text.chars().count() < 3 {
        return Err(format!(
            "the model's alt text is empty or too short: {reply:?}"
        ));
    }
    Ok(text)
}

/// Checks and fixes a model's meta description: one line, no quotes, at most 155 characters (cut
/// on a sentence or word boundary). `Err` if nothing usable is left.
pub fn finish_meta_description(reply: &str) -> Result<String, String> {
    let text = fit(&clean_reply(reply), MAX_DESCRIPTION_CHARS);
    if text.chars().count() < 10 {
        return Err(format!(
            "the model's description is empty or too short: {reply:?}"
        ));
    }
    Ok(text)
}

/// The reader's impression of a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sentiment {
    /// Favourable.
    Positive,
    /// Neither.
    Neutral,
    /// Unfavourable.
    Negative,
    /// Both.
    Mixed,
}

/// A model's content analysis, as the schema in [`ANALYSIS_SYSTEM`] requires.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelAnalysis {
    /// 1–5 topic labels.
    pub topics: Vec<String>,
    /// 1–10 keywords, most important first.
    pub keywords: Vec<String>,
    /// At most 300 characters.
    pub summary: String,
    /// The text's sentiment.
    pub sentiment: Sentiment,
    /// 0–5 notes on readability.
    pub readability_notes: Vec<String>,
}

/// Longest summary accepted, characters (the prompt asks for 300; a little slack avoids retries
/// over a few characters).
const MAX_SUMMARY_CHARS: usize = 400;

/// Parses and validates an analysis reply. A reply wrapped in a Markdown code fence is accepted
/// (models add them despite instructions); anything else must be exactly the schema.
pub fn parse_analysis(reply: &str) -> Result<ModelAnalysis, String> {
    let body = reply.trim();
    let body = body
        .strip_prefix("```json")
        .or_else(|| body.strip_prefix("```"))
        .and_then(|b| b.trim_end().strip_suffix("```"))
        .unwrap_or(body)
        .trim();
    let a: ModelAnalysis =
        serde_json::from_str(body).map_err(|e| format!("not the JSON object asked for: {e}"))?;
    let bad_list = |name: &str, list: &[String], range: std::ops::RangeInclusive<usize>| {
        if !range.contains(&list.len()) {
            return Some(format!(
                "{name} must hold {} to {} entries, got {}",
                range.start(),
                range.end(),
                list.len()
            ));
        }
        list.iter()
            .any(|s| s.trim().is_empty() || s.chars().count() > 200)
            .then(|| format!("{name} has an empty or overlong entry"))
    };
    if let Some(problem) = bad_list("topics", &a.topics, 1..=5)
        .or_else(|| bad_list("keywords", &a.keywords, 1..=10))
        .or_else(|| bad_list("readability_notes", &a.readability_notes, 0..=5))
    {
        return Err(problem);
    }
    let summary_len = a.summary.trim().chars().count();
    if summary_len == 0 || summary_len > MAX_SUMMARY_CHARS {
        return Err(format!(
            "summary must be 1 to {MAX_SUMMARY_CHARS} characters, got {summary_len}"
        ));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_text_loses_redundant_openings_quotes_and_excess() {
        assert_eq!(
            finish_alt_text("\"An image of a red bicycle leaning on a wall\"").unwrap(),
            "A red bicycle leaning on a wall"
        );
        assert_eq!(
            finish_alt_text("Picture of image of two cats\nExtra line").unwrap(),
            "Two cats"
        );
        let long = "Crowd of runners in bright shirts crossing the finish line of a city marathon under a large inflatable arch with sponsor banners on both sides";
        let out = finish_alt_text(long).unwrap();
        assert!(out.chars().count() <= MAX_ALT_CHARS);
        assert!(long.starts_with(&out) && !out.ends_with(' '));
        assert!(finish_alt_text("  \"\" ").is_err());
    }

    #[test]
    fn descriptions_are_cut_to_155_characters() {
        let long =
            "Nous vendons des bols en céramique faits main dans notre atelier de Porto, ".repeat(4);
        let out = finish_meta_description(&long).unwrap();
        assert!(out.chars().count() <= MAX_DESCRIPTION_CHARS);
        assert!(out.starts_with("Nous vendons des bols"));
    }

    #[test]
    fn the_prompt_names_the_pages_language() {
        let doc = Document::from_text(
            "Nous vendons des bols et des tasses en céramique faits main dans notre atelier, avec des émaux que nous préparons nous-mêmes.",
        );
        assert!(meta_user(&doc).contains("\"fr\""), "{}", meta_user(&doc));
    }

    #[test]
    fn analysis_must_match_the_schema() {
        let good = r#"{"topics":["ceramics"],"keywords":["bowls","glaze"],"summary":"A studio sells bowls.","sentiment":"positive","readability_notes":["short sentences"]}"#;
        assert_eq!(parse_analysis(good).unwrap().sentiment, Sentiment::Positive);
        assert!(parse_analysis(&format!("```json\n{good}\n```")).is_ok());
        let cases = [
            ("Sure! Here is the JSON", "not the JSON object"),
            (
                r#"{"topics":[],"keywords":["a"],"summary":"s","sentiment":"neutral","readability_notes":[]}"#,
                "topics must hold 1 to 5",
            ),
            (
                r#"{"topics":["a"],"keywords":["a"],"summary":"s","sentiment":"happy","readability_notes":[]}"#,
                "unknown variant",
            ),
            (
                r#"{"topics":["a"],"keywords":["a"],"summary":"s","sentiment":"mixed","readability_notes":[],"extra":1}"#,
                "unknown field",
            ),
            (
                r#"{"topics":["a"],"keywords":["a"],"summary":" ","sentiment":"mixed","readability_notes":[]}"#,
                "summary must be",
            ),
        ];
        for (reply, want) in cases {
            let err = parse_analysis(reply).unwrap_err();
            assert!(err.contains(want), "{reply}: {err}");
        }
    }
}
