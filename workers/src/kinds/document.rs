//! Text extraction: HTML, Markdown and plain text become one `Document` of titled, typed blocks.
//!
//! Hand-written and forgiving on purpose: pages in the field are rarely valid HTML, and a full
//! parser would add a large dependency for what is, here, "find the readable text".

use serde::{Deserialize, Serialize};

/// The format a text item was read as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextFormat {
    /// An HTML page.
    Html,
    /// Markdown (CommonMark-ish).
    Markdown,
    /// Plain text, paragraphs separated by blank lines.
    Plain,
}

impl TextFormat {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            TextFormat::Html => "html",
            TextFormat::Markdown => "markdown",
            TextFormat::Plain => "plain",
        }
    }
}

/// What a block of readable text is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// A heading of level 1–6.
    Heading(u8),
    /// A paragraph.
    Paragraph,
    /// A list item.
    ListItem,
    /// Any other text (table cells, divs, quotes).
    Other,
}

/// One block of readable text, whitespace-normalised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Block {
    /// What it is.
    pub kind: BlockKind,
    /// Its text.
    pub text: String,
}

/// The readable content of a text item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// How it was read.
    pub format: TextFormat,
    /// `<title>` or front-matter `title`.
    pub title: Option<String>,
    /// `<meta name="description">`, `og:description` or front-matter `description`.
    pub description: Option<String>,
    /// Body blocks in reading order.
    pub blocks: Vec<Block>,
}

impl Document {
    /// Reads a text item: HTML if it looks like markup, Markdown if it has Markdown cues, else plain text.
    pub fn from_text(text: &str) -> Document {
        if looks_like_html(text) {
            parse_html(text)
        } else if looks_like_markdown(text) {
            parse_markdown(text)
        } else {
            parse_plain(text)
        }
    }

    /// The headings, in order, as (level, text).
    pub fn headings(&self) -> impl Iterator<Item = (u8, &str)> {
        self.blocks.iter().filter_map(|b| match b.kind {
            BlockKind::Heading(level) => Some((level, b.text.as_str())),
            _ => None,
        })
    }

    /// Whether there is no readable text at all (not even a title or description).
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.title.is_none() && self.description.is_none()
    }
}

/// Collapses runs of whitespace into single spaces and trims.
pub fn normalise_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn looks_like_html(text: &str) -> bool {
    let head: String = text
        .trim_start()
        .chars()
        .take(512)
        .collect::<String>()
        .to_ascii_lowercase();
    head.starts_with("<!doctype html")
        || head.starts_with("<html")
        || head.starts_with("<head")
        || head.starts_with("<body")
        || head.starts_with("<p>")
        || head.starts_with("<div")
        || head.starts_with("<article")
        || head.starts_with("<h1")
}

fn looks_like_markdown(text: &str) -> bool {
    let mut list_lines = 0;
    for line in text.lines().take(400) {
        let t = line.trim_start();
        if atx_heading(t).is_some() || t.starts_with("```") || t.starts_with("~~~") {
            return true;
        }
        if list_marker(t).is_some() {
            list_lines += 1;
        }
    }
    text.starts_with("---\n") || text.contains("](") || text.contains("**") || list_lines >= 2
}

// ---------------------------------------------------------------- HTML

/// Elements whose content is never readable body text.
const SKIPPED: &[&str] = &[
    "script", "style", "noscript", "template", "svg", "iframe", "nav", "footer", "aside", "form",
    "button", "select", "object", "canvas",
];

/// Elements that end the current block of text.
const BLOCK_TAGS: &[&str] = &[
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "section",
    "article",
    "main",
    "header",
    "tr",
    "td",
    "th",
    "table",
    "blockquote",
    "pre",
    "hr",
    "figure",
    "figcaption",
    "title",
    "body",
    "head",
    "html",
];

struct HtmlBuilder {
    doc: Document,
    text: String,
    kind: BlockKind,
    in_title: bool,
}

impl HtmlBuilder {
    fn flush(&mut self) {
        let text = normalise_ws(&decode_entities(&self.text));
        self.text.clear();
        if text.is_empty() {
            return;
        }
        if self.in_title {
            self.doc.title.get_or_insert(text);
        } else {
            self.doc.blocks.push(Block {
                kind: self.kind,
                text,
            });
        }
    }
}

/// Parses an HTML page into blocks; scripts, styles and navigation are dropped.
pub fn parse_html(src: &str) -> Document {
    let mut b = HtmlBuilder {
        doc: Document {
            format: TextFormat::Html,
            title: None,
            description: None,
            blocks: Vec::new(),
        },
        text: String::new(),
        kind: BlockKind::Other,
        in_title: false,
    };
    let lower = src.to_ascii_lowercase();
    let mut i = 0;
    while i < src.len() {
        let rest = &src[i..];
        let Some(lt) = rest.find('<') else {
            b.text.push_str(rest);
            break;
        };
        b.text.push_str(&rest[..lt]);
        i += lt;
        if lower[i..].starts_with("<!--") {
            i = lower[i..].find("-->").map_or(src.len(), |end| i + end + 3);
            continue;
        }
        let Some(gt) = tag_end(&src[i..]) else {
            // A stray '<' with no closing '>': keep it as text.
            b.text.push('<');
            i += 1;
            continue;
        };
        let tag = &src[i + 1..i + gt];
        i += gt + 1;
        let closing = tag.starts_with('/');
        let body = tag.trim_start_matches('/');
        let name: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if name.is_empty() {
            // `<!doctype>`, `<?xml?>` and similar declarations carry no text.
            continue;
        }
        if !closing && SKIPPED.contains(&name.as_str()) && !body.trim_end().ends_with('/') {
            let close = format!("</{name}");
            i = match lower[i..].find(&close) {
                Some(at) => lower[i + at..]
                    .find('>')
                    .map_or(src.len(), |gt| i + at + gt + 1),
                None => src.len(),
            };
            continue;
        }
        if name == "meta" && !closing {
            let attr = |n: &str| attribute(body, n).map(|v| v.to_ascii_lowercase());
            let key = attr("name").or_else(|| attr("property"));
            let wanted = matches!(key.as_deref(), Some("description" | "og:description"));
            if let Some(content) = attribute(body, "content").filter(|_| wanted) {
                let content = normalise_ws(&decode_entities(&content));
                // `name="description"` wins over `og:description`, whichever comes first.
                if !content.is_empty()
                    && (b.doc.description.is_none() || key.as_deref() == Some("description"))
                {
                    b.doc.description = Some(content);
                }
            }
            continue;
        }
        if name == "img" && !closing {
            continue;
        }
        // Inline elements (`<a>`, `<em>`, …) change nothing: words are separated only where the source has spaces.
        if BLOCK_TAGS.contains(&name.as_str()) {
            b.flush();
            b.in_title = name == "title" && !closing;
            b.kind = if closing {
                BlockKind::Other
            } else {
                match name.as_str() {
                    "p" => BlockKind::Paragraph,
                    "li" | "dd" | "dt" => BlockKind::ListItem,
                    h if h.len() == 2 && h.starts_with('h') => h[1..]
                        .parse::<u8>()
                        .map_or(BlockKind::Other, BlockKind::Heading),
                    _ => BlockKind::Other,
                }
            };
        }
    }
    b.flush();
    b.doc
}

/// Index of the `>` that closes the tag starting at `s[0] == '<'`, honouring quoted attribute values.
fn tag_end(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices().skip(1) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => return Some(i),
            (None, '<') => return None,
            _ => {}
        }
    }
    None
}

/// The value of attribute `name` inside a tag body such as `meta name="x" content='y'`.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find(name) {
        let start = from + at;
        from = start + name.len();
        let before_ok = start == 0 || lower.as_bytes()[start - 1].is_ascii_whitespace();
        let after = lower[from..].trim_start();
        if !before_ok || !after.starts_with('=') {
            continue;
        }
        let value_start = tag.len() - after.len() + 1;
        let value = tag[value_start..].trim_start();
        return Some(match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or_default().to_string(),
            _ => value
                .split(|c: char| c.is_whitespace() || c == '>' || c == '/')
                .next()
                .unwrap_or_default()
                .to_string(),
        });
    }
    None
}

/// Decodes the common named entities and every numeric one.
pub fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest
            .char_indices()
            .take(12)
            .find(|&(_, c)| c == ';')
            .map(|(i, _)| i);
        let decoded = end.and_then(|end| entity(&rest[1..end]).map(|c| (c, end)));
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        return char::from_u32(code);
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        "mdash" => '—',
        "ndash" => '–',
        "hellip" => '…',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "copy" => '©',
        "reg" => '®',
        "eacute" => 'é',
        "egrave" => 'è',
        "ecirc" => 'ê',
        "agrave" => 'à',
        "acirc" => 'â',
        "ccedil" => 'ç',
        "ocirc" => 'ô',
        "ucirc" => 'û',
        "uuml" => 'ü',
        "ouml" => 'ö',
        "auml" => 'ä',
        "szlig" => 'ß',
        "ntilde" => 'ñ',
        "iacute" => 'í',
        "oacute" => 'ó',
        "uacute" => 'ú',
        "aacute" => 'á',
        _ => return None,
    })
}

// ---------------------------------------------------------------- Markdown

fn atx_heading(line: &str) -> Option<(u8, &str)> {
    let hashes = line.chars().take_while(|&c| c == '#').count();
    if !(1..=6).contains(&hashes) {
        return None;
    }
    let rest = &line[hashes..];
    if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
        return None;
    }
    Some((hashes as u8, rest.trim().trim_end_matches('#').trim_end()))
}

/// The text after a list marker (`- `, `* `, `+ `, `1. `, `1) `), if the line is a list item.
fn list_marker(line: &str) -> Option<&str> {
    for m in ["- ", "* ", "+ "] {
        if let Some(rest) = line.strip_prefix(m) {
            return Some(rest);
        }
    }
    let digits = line.chars().take_while(|c| c.is_ascii_digit()).count();
    if (1..=9).contains(&digits) {
        let rest = &line[digits..];
        if let Some(rest) = rest.strip_prefix(". ").or_else(|| rest.strip_prefix(") ")) {
            return Some(rest);
        }
    }
    None
}

struct MdBuilder {
    doc: Document,
    para: Vec<String>,
    kind: BlockKind,
}

impl MdBuilder {
    fn flush(&mut self) {
        let text = normalise_ws(&md_inline(&self.para.join(" ")));
        self.para.clear();
        if !text.is_empty() {
            self.doc.blocks.push(Block {
                kind: self.kind,
                text,
            });
        }
        self.kind = BlockKind::Paragraph;
    }
}

/// Parses Markdown: front matter, ATX and setext headings, paragraphs, lists; code is dropped.
pub fn parse_markdown(src: &str) -> Document {
    let mut b = MdBuilder {
        doc: Document {
            format: TextFormat::Markdown,
            title: None,
            description: None,
            blocks: Vec::new(),
        },
        para: Vec::new(),
        kind: BlockKind::Paragraph,
    };
    let mut lines = src.lines().peekable();
    if lines.peek().map(|l| l.trim_end()) == Some("---") {
        lines.next();
        for line in lines.by_ref() {
            if matches!(line.trim_end(), "---" | "...") {
                break;
            }
            if let Some((key, value)) = line.split_once(':') {
                let value = value.trim().trim_matches(|c| c == '"' || c == '\'').trim();
                if value.is_empty() {
                    continue;
                }
                match key.trim() {
                    "title" => b.doc.title = Some(normalise_ws(value)),
                    "description" | "summary" => b.doc.description = Some(normalise_ws(value)),
                    _ => {}
                }
            }
        }
    }
    let mut fence: Option<&str> = None;
    for line in lines {
        let t = line.trim();
        if let Some(f) = fence {
            if t.starts_with(f) {
                fence = None;
            }
            continue;
        }
        if t.starts_with("```") || t.starts_with("~~~") {
            b.flush();
            fence = Some(&t[..3]);
            continue;
        }
        if t.is_empty() {
            b.flush();
            continue;
        }
        if !b.para.is_empty() && b.kind == BlockKind::Paragraph && is_setext_underline(t) {
            let level = if t.starts_with('=') { 1 } else { 2 };
            b.kind = BlockKind::Heading(level);
            b.flush();
            continue;
        }
        if is_thematic_break(t) {
            b.flush();
            continue;
        }
        if let Some((level, text)) = atx_heading(t) {
            b.flush();
            b.para.push(text.to_string());
            b.kind = BlockKind::Heading(level);
            b.flush();
            continue;
        }
        if is_link_definition(t) || (t.starts_with('|') && t.chars().all(|c| "|-: ".contains(c))) {
            continue;
        }
        if let Some(item) = list_marker(t) {
            b.flush();
            b.kind = BlockKind::ListItem;
            b.para.push(item.to_string());
            continue;
        }
        let t = t.trim_start_matches('>').trim_start();
        if t.starts_with('|') {
            b.flush();
            b.kind = BlockKind::Other;
            b.para.push(t.replace('|', " "));
            b.flush();
            continue;
        }
        b.para.push(t.to_string());
    }
    b.flush();
    b.doc
}

fn is_setext_underline(t: &str) -> bool {
    (t.chars().all(|c| c == '=') || t.chars().all(|c| c == '-')) && !t.is_empty()
}

fn is_thematic_break(t: &str) -> bool {
    let s: String = t.chars().filter(|c| !c.is_whitespace()).collect();
    s.len() >= 3
        && ["-", "*", "_"]
            .iter()
            .any(|m| s.chars().all(|c| c.to_string() == *m))
}

fn is_link_definition(t: &str) -> bool {
    t.starts_with('[') && t.contains("]:") && !t.contains("](")
}

/// Removes inline Markdown: images, links (keeping their text), emphasis, code ticks, HTML tags.
fn md_inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '!' if chars.get(i + 1) == Some(&'[') => {
                // Images: drop entirely; their alt text is not body text.
                match link_parts(&chars, i + 1) {
                    Some((_, end)) => i = end,
                    None => i += 1,
                }
            }
            '[' => match link_parts(&chars, i) {
                Some((text, end)) => {
                    out.push_str(&md_inline(&text));
                    i = end;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            },
            '<' => {
                let close = chars[i..].iter().position(|&c| c == '>');
                match close {
                    Some(n)
                        if n > 1 && (chars[i + 1].is_ascii_alphabetic() || chars[i + 1] == '/') =>
                    {
                        let inner: String = chars[i + 1..i + n].iter().collect();
                        // Autolinks (`<https://…>`) are not prose either.
                        if inner.contains("://") {
                            i += n + 1;
                        } else {
                            out.push(' ');
                            i += n + 1;
                        }
                    }
                    _ => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            '*' | '`' => i += 1,
            '_' => {
                let prev_word = i > 0 && chars[i - 1].is_alphanumeric();
                let next_word = chars.get(i + 1).is_some_and(|c| c.is_alphanumeric());
                // Keep `snake_case`; drop `_emphasis_` markers.
                if prev_word && next_word {
                    out.push(c);
                }
                i += 1;
            }
            '\\' if i + 1 < chars.len() => {
                out.push(chars[i + 1]);
                i += 2;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    decode_entities(&out)
}

/// For `[text](url)` starting at `chars[start] == '['`: the text and the index after `)`.
fn link_parts(chars: &[char], start: usize) -> Option<(String, usize)> {
    let close = start + chars[start..].iter().position(|&c| c == ']')?;
    if chars.get(close + 1) != Some(&'(') {
        return None;
    }
    let end = close + 1 + chars[close + 1..].iter().position(|&c| c == ')')?;
    Some((chars[start + 1..close].iter().collect(), end + 1))
}

// ---------------------------------------------------------------- plain text

/// Plain text: paragraphs are separated by blank lines.
pub fn parse_plain(src: &str) -> Document {
    let mut blocks = Vec::new();
    let mut para: Vec<&str> = Vec::new();
    for line in src.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if !para.is_empty() {
                let text = normalise_ws(&para.join(" "));
                para.clear();
                if !text.is_empty() {
                    blocks.push(Block {
                        kind: BlockKind::Paragraph,
                        text,
                    });
                }
            }
        } else {
            para.push(line);
        }
    }
    Document {
        format: TextFormat::Plain,
        title: None,
        description: None,
        blocks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_drops_scripts_styles_and_navigation_and_keeps_structure() {
        let html = r#"<!DOCTYPE html><html><head><title>Trail &amp; Tides</title>
            <meta name="description" content="A guide to coastal walks.">
            <style>p { color: red }</style><script>var x = "<p>not text</p>";</script></head>
            <body><nav><a href="/">Home</a></nav><h1>Coastal walks</h1>
            <p>The <em>best</em> walks follow the cliffs.</p><!-- hidden -->
            <ul><li>Bring water</li><li>Check the tides</li></ul>
            <h2 class="x">When to go</h2><p>Spring&nbsp;is quiet.</p><footer>© us</footer></body></html>"#;
        let doc = Document::from_text(html);
        assert_eq!(doc.format, TextFormat::Html);
        assert_eq!(doc.title.as_deref(), Some("Trail & Tides"));
        assert_eq!(
            doc.description.as_deref(),
            Some("A guide to coastal walks.")
        );
        let all: Vec<&str> = doc.blocks.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(
            all,
            [
                "Coastal walks",
                "The best walks follow the cliffs.",
                "Bring water",
                "Check the tides",
                "When to go",
                "Spring is quiet."
            ]
        );
        assert_eq!(
            doc.headings().collect::<Vec<_>>(),
            [(1, "Coastal walks"), (2, "When to go")]
        );
        assert_eq!(doc.blocks[1].kind, BlockKind::Paragraph);
        assert_eq!(doc.blocks[2].kind, BlockKind::ListItem);
    }

    #[test]
    fn markdown_keeps_headings_and_link_text_and_drops_code() {
        let md = "---\ntitle: Notes\ndescription: \"Short notes.\"\n---\n# Release notes\n\nWe shipped [the worker](https://x.y) and **faster** `builds`.\n\n```rust\nfn main() {}\n```\n\nSetup\n-----\n\n- one\n- two_items\n";
        let doc = Document::from_text(md);
        assert_eq!(doc.format, TextFormat::Markdown);
        assert_eq!(doc.title.as_deref(), Some("Notes"));
        assert_eq!(doc.description.as_deref(), Some("Short notes."));
        let all: Vec<(BlockKind, &str)> = doc
            .blocks
            .iter()
            .map(|b| (b.kind, b.text.as_str()))
            .collect();
        assert_eq!(
            all,
            [
                (BlockKind::Heading(1), "Release notes"),
                (
                    BlockKind::Paragraph,
                    "We shipped the worker and faster builds."
                ),
                (BlockKind::Heading(2), "Setup"),
                (BlockKind::ListItem, "one"),
                (BlockKind::ListItem, "two_items"),
            ]
        );
    }

    #[test]
    fn plain_text_splits_paragraphs_on_blank_lines() {
        let doc = Document::from_text("First line\ncontinues.\n\n\nSecond one.");
        assert_eq!(doc.format, TextFormat::Plain);
        assert_eq!(doc.blocks.len(), 2);
        assert_eq!(doc.blocks[0].text, "First line continues.");
    }

    #[test]
    fn entities_decode_named_and_numeric_and_leave_bare_ampersands() {
        assert_eq!(
            decode_entities("a &amp; b &#233;t&#xE9; &bogus; & c"),
            "a & b été &bogus; & c"
        );
    }

    #[test]
    fn attributes_are_found_with_either_quote_style() {
        assert_eq!(
            attribute(r#"meta content='x y' name="d""#, "content").as_deref(),
            Some("x y")
        );
        assert_eq!(
            attribute(r#"meta data-name="a" name=d"#, "name").as_deref(),
            Some("d")
        );
    }
}
