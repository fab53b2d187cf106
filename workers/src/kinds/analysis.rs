//! `content_analysis` (builtin): language, counts, reading time, readability, keywords, outline.

use std::collections::HashMap;

use serde::Serialize;

use super::document::{BlockKind, Document};
use super::lang;

/// Average adult silent reading speed, words per minute (Brysbaert, 2019).
pub const WORDS_PER_MINUTE: f64 = 238.0;

/// How many keywords and topics an analysis lists.
const TOP_KEYWORDS: usize = 10;
const TOP_TOPICS: usize = 5;

/// A keyword and how often it occurs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Keyword {
    /// The lower-cased word or phrase.
    pub term: String,
    /// Occurrences.
    pub count: usize,
}

/// One heading of the outline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Heading {
    /// 1–6.
    pub level: u8,
    /// Its text.
    pub text: String,
}

/// The builtin analysis of a text.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Analysis {
    /// `html`, `markdown` or `plain`.
    pub format: &'static str,
    /// ISO 639-1 code, or `und` when undetermined.
    pub language: &'static str,
    /// How clearly that language won over the next (0.5 tie – 1.0).
    pub language_confidence: f64,
    /// Words.
    pub words: usize,
    /// Sentences (a heading or list item without punctuation counts as one).
    pub sentences: usize,
    /// Paragraphs.
    pub paragraphs: usize,
    /// Whole minutes to read, at least 1 for any text.
    pub reading_time_minutes: u64,
    /// Seconds to read.
    pub reading_time_s: u64,
    /// Flesch reading ease (language-adapted), rounded to one decimal.
    pub flesch_reading_ease: f64,
    /// `very easy` … `very difficult`.
    pub readability: &'static str,
    /// Most frequent content words.
    pub keywords: Vec<Keyword>,
    /// Two-word phrases that recur (at least twice).
    pub topics: Vec<Keyword>,
    /// The heading outline.
    pub outline: Vec<Heading>,
}

/// Analyses a document. `None` if it has no words.
pub fn analyse(doc: &Document) -> Option<Analysis> {
    let mut all_words = Vec::new();
    let mut sentences = 0;
    for b in &doc.blocks {
        let before = all_words.len();
        all_words.extend(lang::words(&b.text));
        if all_words.len() > before {
            sentences += count_sentences(&b.text).max(1);
        }
    }
    if all_words.is_empty() {
        return None;
    }
    let (language, language_confidence) = lang::detect(&all_words);
    let words = all_words.len();
    let syllables: usize = all_words.iter().map(|w| lang::syllables(w, language)).sum();
    let (a, b, c) = lang::flesch_constants(language);
    let asl = words as f64 / sentences as f64;
    let asw = syllables as f64 / words as f64;
    let flesch = ((a - b * asl - c * asw) * 10.0).round() / 10.0;
    let reading_time_s = (words as f64 * 60.0 / WORDS_PER_MINUTE).round() as u64;

    let stop = |w: &str| {
        lang::stopwords(language).is_some_and(|s| s.contains(&w))
            || lang::stopwords("en").is_some_and(|s| s.contains(&w))
    };
    let is_content =
        |w: &str| w.chars().count() >= 3 && !stop(w) && !w.chars().all(|c| c.is_numeric());
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut pairs: HashMap<String, usize> = HashMap::new();
    for b in &doc.blocks {
        let ws: Vec<String> = lang::words(&b.text).collect();
        for pair in ws.windows(2) {
            if is_content(&pair[0]) && is_content(&pair[1]) {
                *pairs.entry(format!("{} {}", pair[0], pair[1])).or_default() += 1;
            }
        }
    }
    for w in &all_words {
        if is_content(w) {
            *counts.entry(w.as_str()).or_default() += 1;
        }
    }
    let keywords = top(
        counts.into_iter().map(|(k, v)| (k.to_string(), v)),
        1,
        TOP_KEYWORDS,
    );
    let topics = top(pairs.into_iter(), 2, TOP_TOPICS);

    Some(Analysis {
        format: doc.format.as_str(),
        language,
        language_confidence,
        words,
        sentences,
        paragraphs: doc
            .blocks
            .iter()
            .filter(|b| b.kind == BlockKind::Paragraph)
            .count(),
        reading_time_minutes: (reading_time_s.div_ceil(60)).max(1),
        reading_time_s,
        flesch_reading_ease: flesch,
        readability: readability_label(flesch),
        keywords,
        topics,
        outline: doc
            .headings()
            .map(|(level, text)| Heading {
                level,
                text: text.to_string(),
            })
            .collect(),
    })
}

/// The `n` most frequent terms seen at least `min` times; ties broken alphabetically so output is stable.
fn top(counts: impl Iterator<Item = (String, usize)>, min: usize, n: usize) -> Vec<Keyword> {
    let mut v: Vec<(String, usize)> = counts.filter(|(_, c)| *c >= min).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.into_iter()
        .take(n)
        .map(|(term, count)| Keyword { term, count })
        .collect()
}

/// Sentence ends: `.`, `!`, `?`, `…` followed by a space or the end (runs like `?!` count once).
fn count_sentences(text: &str) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let mut n = 0;
    for (i, &c) in chars.iter().enumerate() {
        let ends = matches!(c, '.' | '!' | '?' | '…');
        let next = chars.get(i + 1);
        let boundary = next.is_none_or(|n| n.is_whitespace() || matches!(n, '"' | '”' | '»' | ')'));
        if ends && boundary {
            n += 1;
        }
    }
    n
}

/// The usual bands of the Flesch scale.
fn readability_label(score: f64) -> &'static str {
    match score {
        s if s >= 90.0 => "very easy",
        s if s >= 80.0 => "easy",
        s if s >= 70.0 => "fairly easy",
        s if s >= 60.0 => "standard",
        s if s >= 50.0 => "fairly difficult",
        s if s >= 30.0 => "difficult",
        _ => "very difficult",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn french_text_is_analysed_as_french() {
        let text = "Le marché de Lyon ouvre tous les matins. Les producteurs viennent de la région avec leurs légumes.\n\n\
                    Le marché est très animé le samedi. On y trouve du fromage, du pain et des fleurs.";
        let a = analyse(&Document::from_text(text)).unwrap();
        assert_eq!(a.language, "fr");
        assert!(a.language_confidence > 0.5, "{}", a.language_confidence);
        assert_eq!(a.sentences, 4);
        assert_eq!(a.paragraphs, 2);
        assert_eq!(
            a.keywords[0],
            Keyword {
                term: "marché".into(),
                count: 2
            }
        );
        assert!(
            a.keywords
                .iter()
                .all(|k| !["les", "est", "très"].contains(&k.term.as_str()))
        );
    }

    #[test]
    fn counts_reading_time_and_readability_are_computed() {
        // 12 one-syllable words in 3 sentences: very easy text.
        let a = analyse(&Document::from_text(
            "The cat sat. The dog ran fast. We all went home now.",
        ))
        .unwrap();
        assert_eq!((a.words, a.sentences), (12, 3));
        // 206.835 − 1.015 × 4 − 84.6 × 1 = 118.2
        assert_eq!(a.flesch_reading_ease, 118.2);
        assert_eq!(a.readability, "very easy");
        assert_eq!((a.reading_time_s, a.reading_time_minutes), (3, 1));
    }

    #[test]
    fn harder_text_scores_lower() {
        let easy = analyse(&Document::from_text("We go. You see it. It is red.")).unwrap();
        let hard = analyse(&Document::from_text(
            "Institutional interoperability necessitates comprehensive organisational standardisation across heterogeneous infrastructures.",
        ))
        .unwrap();
        assert!(hard.flesch_reading_ease < easy.flesch_reading_ease - 50.0);
        assert_eq!(hard.readability, "very difficult");
    }

    #[test]
    fn html_outline_and_markdown_outline_are_listed() {
        let html =
            "<h1>Guide</h1><p>Intro text here.</p><h2>Install</h2><p>Run it.</p><h3>On Linux</h3>";
        let a = analyse(&Document::from_text(html)).unwrap();
        let outline: Vec<(u8, &str)> = a
            .outline
            .iter()
            .map(|h| (h.level, h.text.as_str()))
            .collect();
        assert_eq!(outline, [(1, "Guide"), (2, "Install"), (3, "On Linux")]);
        let md = analyse(&Document::from_text(
            "# Guide\n\nText.\n\n## Install\n\nMore text.\n",
        ))
        .unwrap();
        assert_eq!(md.outline.len(), 2);
        assert_eq!(md.format, "markdown");
    }

    #[test]
    fn recurring_phrases_become_topics() {
        let text = "Event sourcing keeps history. Event sourcing needs a ledger. A ledger proves event sourcing works.";
        let a = analyse(&Document::from_text(text)).unwrap();
        assert_eq!(
            a.topics[0],
            Keyword {
                term: "event sourcing".into(),
                count: 3
            }
        );
    }

    #[test]
    fn text_without_words_has_no_analysis() {
        assert!(analyse(&Document::from_text("  ... !!! ")).is_none());
    }
}
