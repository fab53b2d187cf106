//! Language helpers: words, stopword-based language detection, syllables, Flesch constants.

/// Languages the builtin backend recognises, with their most frequent function words.
pub const LANGUAGES: &[(&str, &[&str])] = &[
    ("en", EN),
    ("fr", FR),
    ("de", DE),
    ("es", ES),
    ("it", IT),
    ("pt", PT),
    ("nl", NL),
];

const EN: &[&str] = &[
    "the", "and", "of", "to", "in", "is", "that", "it", "for", "was", "on", "are", "with", "as",
    "this", "be", "at", "by", "not", "or", "from", "but", "have", "has", "had", "they", "you",
    "we", "he", "she", "which", "an", "were", "their", "there", "been", "will", "would", "can",
    "all", "more", "if", "about", "what", "when", "its", "also", "than", "into", "these", "those",
    "so", "our", "your", "other", "such", "only", "some", "them", "then", "how", "who", "may",
    "each", "do", "does", "a", "i", "out", "up", "one", "just", "like", "over", "most", "very",
    "any", "because", "between", "both", "could", "should", "through", "while", "where", "after",
    "before", "being", "here", "his", "her", "him", "my", "me", "us", "own", "same", "few", "too",
    "under", "again", "once", "off", "why", "did", "am", "get", "got", "much", "many", "well",
    "even", "still", "now", "every", "don", "t", "s", "it's", "let", "yet",
];

const FR: &[&str] = &[
    "le", "la", "les", "de", "des", "du", "un", "une", "et", "est", "en", "que", "qui", "dans",
    "pour", "pas", "sur", "au", "aux", "avec", "ce", "ces", "cette", "il", "elle", "ils", "elles",
    "nous", "vous", "je", "tu", "on", "ne", "se", "sa", "son", "ses", "leur", "leurs", "mais",
    "ou", "où", "donc", "car", "par", "plus", "comme", "tout", "tous", "toute", "toutes", "être",
    "avoir", "été", "sont", "ont", "fait", "aussi", "bien", "sans", "sous", "entre", "très",
    "même", "y", "à", "l", "d", "qu", "n", "s", "c", "j", "m", "lui", "notre", "nos", "votre",
    "vos", "mon", "ma", "mes", "dont", "si", "peut", "était", "avait", "cela", "ça", "ici",
    "alors", "encore", "après", "avant", "depuis", "chez", "quand", "sont", "ainsi",
];

const DE: &[&str] = &[
    "der", "die", "das", "und", "ist", "nicht", "ein", "eine", "einer", "eines", "einem", "einen",
    "zu", "den", "dem", "des", "mit", "sich", "auf", "für", "im", "in", "von", "es", "sie", "er",
    "wir", "ihr", "ich", "du", "auch", "als", "an", "aus", "bei", "nach", "wie", "wird", "werden",
    "wurde", "sind", "war", "hat", "haben", "oder", "aber", "noch", "nur", "so", "über", "um",
    "vor", "zum", "zur", "dass", "kann", "können", "muss", "sein", "seine", "ihre", "dieser",
    "diese", "dieses", "wenn", "man", "mehr", "sehr", "schon", "durch", "bis", "gegen", "ohne",
    "unter", "zwischen", "alle", "doch", "da", "hier", "was", "wo", "weil", "denn", "mich", "mir",
    "uns", "euch", "ihm", "ihn", "ihnen",
];

const ES: &[&str] = &[
    "el", "la", "los", "las", "de", "del", "y", "en", "que", "un", "una", "unos", "unas", "es",
    "son", "por", "para", "con", "no", "se", "lo", "le", "les", "su", "sus", "al", "como", "más",
    "pero", "o", "si", "sí", "ya", "este", "esta", "estos", "estas", "ese", "esa", "eso", "muy",
    "también", "fue", "ha", "han", "hay", "ser", "está", "están", "entre", "sin", "sobre", "todo",
    "todos", "toda", "cuando", "donde", "porque", "nos", "mi", "mis", "tu", "yo", "él", "ella",
    "ellos", "ellas", "nosotros", "desde", "hasta", "durante", "cada", "otro", "otra", "otros",
    "puede", "pueden", "según", "aunque", "tiene", "tienen",
];

const IT: &[&str] = &[
    "il", "lo", "la", "i", "gli", "le", "di", "del", "della", "dei", "degli", "delle", "e", "è",
    "un", "una", "uno", "che", "in", "per", "con", "non", "si", "da", "dal", "dalla", "al", "alla",
    "ai", "nel", "nella", "sono", "come", "ma", "più", "anche", "o", "se", "questo", "questa",
    "questi", "quello", "quella", "suo", "sua", "loro", "ha", "hanno", "essere", "stato", "era",
    "tra", "fra", "sul", "sulla", "molto", "tutto", "tutti", "ci", "ne", "mi", "ti", "noi", "voi",
    "io", "lui", "lei", "quando", "dove", "perché", "cosa", "già", "ancora", "sempre", "solo",
    "può",
];

const PT: &[&str] = &[
    "o", "a", "os", "as", "de", "do", "da", "dos", "das", "e", "é", "em", "no", "na", "nos", "nas",
    "um", "uma", "uns", "umas", "que", "para", "por", "com", "não", "se", "mais", "como", "mas",
    "ou", "ao", "aos", "seu", "sua", "seus", "suas", "ele", "ela", "eles", "elas", "eu", "você",
    "nós", "isso", "este", "esta", "esse", "essa", "isto", "foi", "são", "ser", "está", "estão",
    "tem", "têm", "há", "muito", "também", "já", "quando", "onde", "porque", "pelo", "pela",
    "pelos", "pelas", "entre", "sem", "sobre", "até", "depois", "ainda", "só", "cada", "outro",
    "outra", "pode", "podem", "num", "numa",
];

const NL: &[&str] = &[
    "de", "het", "een", "en", "van", "is", "dat", "die", "in", "te", "op", "voor", "met", "zijn",
    "niet", "aan", "er", "ook", "als", "bij", "door", "om", "maar", "of", "dan", "nog", "naar",
    "uit", "wordt", "worden", "werd", "kan", "heeft", "hebben", "was", "waren", "deze", "dit",
    "wat", "wie", "waar", "hoe", "hij", "zij", "ze", "wij", "we", "jij", "je", "u", "ik", "mijn",
    "jouw", "uw", "hun", "haar", "hem", "ons", "onze", "al", "meer", "veel", "zeer", "geen",
    "over", "tot", "na", "zo", "toch", "wel", "hier", "daar", "omdat", "want", "tussen", "zonder",
    "onder", "tegen", "wil", "moet", "kunnen", "zullen", "zal",
];

/// The stopwords of a language code, if it is one of [`LANGUAGES`].
pub fn stopwords(code: &str) -> Option<&'static [&'static str]> {
    LANGUAGES.iter().find(|(c, _)| *c == code).map(|(_, w)| *w)
}

/// Lower-cased words: runs of letters and digits (apostrophes split words, as in `l'eau`).
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
}

/// The detected language: `(code, confidence)`, or `("und", 0.0)` when there is too little evidence.
///
/// Each word that is a stopword of a language scores one for it; the best score wins. Confidence
/// is `best / (best + runner-up)`: 1.0 when no other language scores, 0.5 for a tie.
pub fn detect(words: &[String]) -> (&'static str, f64) {
    let mut scores = [0usize; 7];
    for w in words {
        for (i, (_, list)) in LANGUAGES.iter().enumerate() {
            if list.contains(&w.as_str()) {
                scores[i] += 1;
            }
        }
    }
    let (best, &score) = scores
        .iter()
        .enumerate()
        .max_by_key(|&(i, s)| (*s, std::cmp::Reverse(i)))
        .unwrap_or((0, &0));
    // Two hits is the least that is not chance (a single "a" or "de" says nothing).
    if score < 2 {
        return ("und", 0.0);
    }
    let runner_up = scores
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .map(|(_, s)| *s)
        .max()
        .unwrap_or(0);
    let confidence = score as f64 / (score + runner_up) as f64;
    (LANGUAGES[best].0, (confidence * 100.0).round() / 100.0)
}

/// Estimated syllables of a lower-case word: groups of vowels, less a silent final `e` in English.
pub fn syllables(word: &str, lang: &str) -> usize {
    const VOWELS: &str = "aeiouyàâäáãåéèêëíìîïóòôöõúùûüœæ";
    let mut count = 0;
    let mut prev_vowel = false;
    for c in word.chars() {
        let v = VOWELS.contains(c);
        if v && !prev_vowel {
            count += 1;
        }
        prev_vowel = v;
    }
    if (lang == "en" || lang == "und")
        && count > 1
        && word.ends_with('e')
        && !word.ends_with("le")
        && !word.ends_with("ee")
    {
        count -= 1;
    }
    count.max(1)
}

/// Flesch reading ease constants `(a, b, c)` in `a − b·(words/sentence) − c·(syllables/word)`,
/// with the usual adaptations per language (Kandel–Moles, Amstad, Szigriszt-Pazos, Flesch–Vacca,
/// Martins, Douma); English for anything else.
pub fn flesch_constants(lang: &str) -> (f64, f64, f64) {
    match lang {
        "fr" => (207.0, 1.015, 73.6),
        "de" => (180.0, 1.0, 58.5),
        "es" => (206.835, 1.0, 62.3),
        "it" => (217.0, 1.3, 60.0),
        "pt" => (248.835, 1.015, 84.6),
        "nl" => (206.835, 0.93, 77.0),
        _ => (206.835, 1.015, 84.6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect_text(s: &str) -> &'static str {
        detect(&words(s).collect::<Vec<_>>()).0
    }

    #[test]
    fn each_language_is_detected_from_a_plain_sentence() {
        assert_eq!(
            detect_text("The cat is on the mat and it will stay there for the night."),
            "en"
        );
        assert_eq!(
            detect_text("Le chat est sur le tapis et il y restera pour la nuit."),
            "fr"
        );
        assert_eq!(
            detect_text("Die Katze ist auf der Matte und sie bleibt dort für die Nacht."),
            "de"
        );
        assert_eq!(
            detect_text(
                "El gato está en la alfombra y se queda allí durante la noche con los niños."
            ),
            "es"
        );
        assert_eq!(
            detect_text("Il gatto è sul tappeto e ci resta per tutta la notte con gli amici."),
            "it"
        );
        assert_eq!(
            detect_text(
                "O gato está no tapete e não vai sair de lá durante a noite com os amigos."
            ),
            "pt"
        );
        assert_eq!(
            detect_text("De kat zit op de mat en hij blijft daar voor de hele nacht met het kind."),
            "nl"
        );
    }

    #[test]
    fn too_little_text_is_undetermined() {
        assert_eq!(detect_text("Kubernetes"), "und");
    }

    #[test]
    fn syllables_count_vowel_groups() {
        assert_eq!(syllables("cat", "en"), 1);
        assert_eq!(syllables("table", "en"), 2);
        assert_eq!(syllables("make", "en"), 1);
        assert_eq!(syllables("readability", "en"), 5);
        assert_eq!(syllables("rythme", "fr"), 2);
    }
}
