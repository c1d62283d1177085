//! Parity of `sluice::models::wordpiece::WordPiece` with the Hugging Face `tokenizers`
//! crate, and proof that encoding does not allocate in steady state.
//!
//! Runs against:
//! - the real MiniLM tokenizer at `models/minilm/1/tokenizer.json` (skipped with a message
//!   when absent; run `scripts/fetch-minilm.sh`),
//! - synthetic BERT tokenizer.json files built here (always run), in several normalizer /
//!   post-processor / added-token configurations,
//!
//! on `tests/data/sentences.txt` (if present), a built-in list of nasty strings, and a
//! fixed-seed pseudo-random fuzz corpus.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::str::FromStr;

use serde_json::json;
use sluice::models::wordpiece::{TokenScratch, WordPiece};
use tokenizers::{Tokenizer, TruncationParams};

// ---------------------------------------------------------------------------------------
// Counting allocator: counts allocations made by the current thread while enabled.

struct CountingAlloc;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note_alloc() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Runs `f` and returns how many allocations this thread made meanwhile.
fn count_allocs(f: impl FnOnce()) -> u64 {
    ALLOCS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.with(|n| n.get())
}

// ---------------------------------------------------------------------------------------
// Inputs.

const MAX_LEN: usize = 256;

fn minilm_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/minilm/1/tokenizer.json")
}

/// The real MiniLM tokenizer (ours and HF's), or `None` after printing why it is skipped.
fn load_minilm() -> Option<(WordPiece, Tokenizer)> {
    let path = minilm_path();
    if !path.exists() {
        eprintln!(
            "skipping: models/minilm/1/tokenizer.json not found; run scripts/fetch-minilm.sh"
        );
        return None;
    }
    let wp = WordPiece::from_file(&path).expect("WordPiece loads MiniLM tokenizer.json");
    let hf = Tokenizer::from_file(&path).expect("tokenizers loads MiniLM tokenizer.json");
    Some((wp, hf))
}

fn sentences() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sentences.txt");
    match std::fs::read_to_string(&path) {
        Ok(s) => s.lines().map(str::to_owned).collect(),
        Err(_) => {
            eprintln!("note: tests/data/sentences.txt not found; sentence parity skipped");
            Vec::new()
        }
    }
}

fn nasty() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        " ",
        "     ",
        "\t",
        "\n\n\r\n",
        " \t a \n b \r ",
        "\u{0}",
        "a\u{0}b",
        "\u{1}\u{2}\u{7f}\u{1b}[31mred\u{1b}[0m",
        "\u{b}\u{c}vertical\u{b}tab\u{c}feed",
        "\u{1c}\u{1d}\u{1e}\u{1f}separators",
        "\u{85}next\u{2028}line\u{2029}para",
        "\u{fffd}",
        "bad \u{fffd}\u{fffd} bytes",
        "café",
        "cafe\u{301}",
        "naïve",
        "Ångström",
        "Zürich",
        "ΟΔΟΣ",
        "Σίσυφος ΣΑΣ",
        "İstanbul",
        "ıi İI",
        "Straße STRASSE ẞ",
        "中文分词测试",
        "我爱北京天安门。",
        "日本語のテキストとカタカナ",
        "한국어 텍스트",
        "ภาษาไทยไม่มีช่องว่าง",
        "مرحبا بالعالم",
        "שלום עולם",
        "Привет, мир!",
        "😀😃😄 emoji 👍🏽 👨‍👩‍👧‍👦",
        "a\u{300}\u{301}\u{302}\u{303}\u{304}\u{305}\u{306}\u{307}\u{308}",
        "Z\u{36b}\u{342}\u{33e}a\u{35e}\u{328}l\u{31b}g\u{315}\u{317}o",
        "\u{1d165}\u{1d16d}\u{1d166}\u{1d165}",
        "zero\u{200b}width\u{200c}non\u{200d}joiner\u{feff}bom",
        "\u{2060}word\u{2061}joiner",
        "\u{e000}private\u{f8ff}use",
        "ﬁnance ﬂow Ⅻ ①",
        "Kelvin \u{212a} Ohm \u{2126} Angstrom \u{212b}",
        "丽 \u{f900}\u{2f800}",
        "𠀀𠀁 𪜀",
        "supercalifragilisticexpialidocious",
        "antidisestablishmentarianism",
        "https://example.com/path/to/page?query=1&x=y#frag",
        "user@example.com",
        "$1,234.56 (12%) +3.5e-7 -42",
        "10:30am 2024-01-15 1/2 3.14159",
        "don't can't won't I'm",
        "U.S.A. e.g. i.e.",
        "Hello, World! How are you???",
        "«quoted» „German“ “smart” ‘single’",
        "—dash–en―bar… ellipsis",
        "¿Qué? ¡Sí!",
        "mixed中文English日本語mixed",
        "[CLS] [SEP] [MASK] [PAD] [UNK]",
        "[cls] [Sep] [MASK[MASK]] x[MASK]y",
        "##ing ## #hashtag",
        "tab\tseparated\tvalues",
        "ＦＵＬＬ　ＷＩＤＴＨ　ｔｅｘｔ！",
        "@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("a".repeat(100));
    v.push("a".repeat(101));
    v.push("é".repeat(101));
    v.push("x".repeat(5000));
    v.push(format!("short {} short", "pneumonoultramicroscopicsilicovolcanoconiosis".repeat(3)));
    v.push(two_thousand_words());
    v
}

fn two_thousand_words() -> String {
    let words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "naïve",
        "café",
        "tokenization",
        "中文",
        "isn't",
        "U.S.A.",
        "42",
        "e-mail",
    ];
    let mut s = String::new();
    for i in 0..2000 {
        s.push_str(words[(i * 7 + i / 3) % words.len()]);
        s.push(if i % 13 == 12 { '\n' } else { ' ' });
    }
    s
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const FUZZ_ASCII: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const FUZZ_LATIN1: &str = "éèêëÉÈüÜöÖäÄßÅåñÑçÇøØæÆÿ¿¡«»°×÷µ¶§©®";
const FUZZ_CJK: &str = "中国你好世界日本語丽𠀀한글カタカナひらがな";
const FUZZ_PUNCT: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~—–…“”‘’、。，！？";
const FUZZ_SPACE: &[char] =
    &[' ', ' ', ' ', '\t', '\n', '\r', '\u{a0}', '\u{3000}', '\u{b}', '\u{2028}'];
const FUZZ_ODD: &[char] = &[
    '\0',
    '\u{1}',
    '\u{7f}',
    '\u{85}',
    '\u{fffd}',
    '\u{200b}',
    '\u{200d}',
    '\u{feff}',
    '\u{301}',
    '\u{308}',
    '\u{327}',
    '\u{1d165}',
    '\u{1d16d}',
    'İ',
    'ı',
    'Σ',
    'ς',
    'ẞ',
    'ﬁ',
    '\u{212a}',
    '\u{2126}',
    '😀',
    '\u{e000}',
    'ก',
    'ม',
    'ع',
    'Ж',
    '\u{e31}',
    '\u{e35}',
    '\u{e48}',
    '\u{94d}',
    '\u{93f}',
    '\u{345}',
    '\u{5b4}',
    '\u{1100}',
    '\u{1161}',
    '가',
];
const FUZZ_WORDS: &[&str] = &[
    "the",
    "play",
    "playing",
    "un",
    "able",
    "hello",
    "world",
    "[MASK]",
    "[CLS]",
    "[SEP]",
    "[mask]",
    "##",
    "Hello World",
    "hello world",
    "AB",
    "ab",
    "token",
    "café",
    "naïve",
];

fn fuzz_string(rng: &mut XorShift, units: usize) -> String {
    let pick = |rng: &mut XorShift, s: &str| {
        let n = s.chars().count();
        s.chars().nth(rng.below(n)).unwrap()
    };
    let mut s = String::new();
    for _ in 0..units {
        match rng.below(20) {
            0..=6 => s.push(pick(rng, FUZZ_ASCII)),
            7..=8 => s.push(pick(rng, FUZZ_LATIN1)),
            9..=10 => s.push(pick(rng, FUZZ_CJK)),
            11..=12 => s.push(pick(rng, FUZZ_PUNCT)),
            13..=15 => s.push(FUZZ_SPACE[rng.below(FUZZ_SPACE.len())]),
            16..=17 => s.push(FUZZ_ODD[rng.below(FUZZ_ODD.len())]),
            _ => s.push_str(FUZZ_WORDS[rng.below(FUZZ_WORDS.len())]),
        }
    }
    s
}

fn fuzz_corpus(seed: u64, n: usize) -> Vec<String> {
    let mut rng = XorShift(seed);
    (0..n)
        .map(|_| {
            let units = rng.below(60);
            fuzz_string(&mut rng, units)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Synthetic tokenizer.json files.

/// A vocab with specials, every fuzz char (as a word start and as a `##` continuation,
/// after lowercasing and accent stripping), and some words and suffixes; anything else
/// becomes `[UNK]`, so both the matching and the failure paths get exercised.
fn synthetic_vocab() -> Vec<String> {
    let mut v: Vec<String> =
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|s| s.to_string()).collect();
    let push = |t: String, v: &mut Vec<String>| {
        if !v.contains(&t) {
            v.push(t);
        }
    };
    let chars: String = [FUZZ_ASCII, FUZZ_LATIN1, FUZZ_CJK, FUZZ_PUNCT, "ʼ"].concat();
    for c in chars.chars().chain(FUZZ_ODD.iter().copied()) {
        for form in [c.to_string(), c.to_lowercase().to_string()] {
            push(form.clone(), &mut v);
            push(format!("##{form}"), &mut v);
        }
    }
    // decomposed bases of the Latin-1 letters
    for c in "eaouncyi".chars() {
        push(format!("##{c}"), &mut v);
    }
    for w in [
        "the",
        "play",
        "un",
        "able",
        "hello",
        "world",
        "token",
        "cafe",
        "naive",
        "café",
        "naïve",
        "quick",
        "brown",
        "fox",
        "##ing",
        "##able",
        "##s",
        "##ed",
        "##er",
        "##aff",
        "##ization",
        "##ize",
        "##n",
        "##t",
        "hello world",
    ] {
        push(w.to_string(), &mut v);
    }
    v
}

fn special(id: usize, content: &str) -> serde_json::Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false,
           "rstrip": false, "normalized": false, "special": true})
}

/// Variation knobs for synthetic tokenizers.
#[derive(Clone, Copy, Debug)]
struct Variant {
    name: &'static str,
    normalizer: Option<(bool, bool, Option<bool>, bool)>,
    bert_processing: bool,
    extra_added: bool,
}

fn synthetic_json(var: Variant) -> String {
    let vocab = synthetic_vocab();
    let vocab_map: serde_json::Map<String, serde_json::Value> =
        vocab.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let mut added = vec![
        special(0, "[PAD]"),
        special(1, "[UNK]"),
        special(2, "[CLS]"),
        special(3, "[SEP]"),
        special(4, "[MASK]"),
    ];
    if var.extra_added {
        // lstrip/rstrip on a raw special, a normalized added token containing whitespace,
        // a normalized one that is also a vocab word and one that is new.
        added[4] = json!({"id": 4, "content": "[MASK]", "single_word": false, "lstrip": true,
                          "rstrip": true, "normalized": false, "special": true});
        for (content, normalized, special) in [
            ("Hello World", true, false),
            ("AB", true, false),
            ("<extra>", false, false),
            ("Tok", true, true),
        ] {
            added.push(json!({"id": 0, "content": content, "single_word": false,
                              "lstrip": false, "rstrip": false, "normalized": normalized,
                              "special": special}));
        }
    }
    let normalizer = match var.normalizer {
        None => serde_json::Value::Null,
        Some((clean_text, handle_chinese_chars, strip_accents, lowercase)) => json!({
            "type": "BertNormalizer", "clean_text": clean_text,
            "handle_chinese_chars": handle_chinese_chars, "strip_accents": strip_accents,
            "lowercase": lowercase
        }),
    };
    let post = if var.bert_processing {
        json!({"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]})
    } else {
        json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        })
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": post,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab_map}
    })
    .to_string()
}

const BERT: Option<(bool, bool, Option<bool>, bool)> = Some((true, true, None, true));

const VARIANTS: &[Variant] = &[
    Variant { name: "bert-uncased", normalizer: BERT, bert_processing: false, extra_added: false },
    Variant {
        name: "cased",
        normalizer: Some((true, true, None, false)),
        bert_processing: false,
        extra_added: false,
    },
    Variant {
        name: "lower-keep-accents",
        normalizer: Some((true, true, Some(false), true)),
        bert_processing: false,
        extra_added: false,
    },
    Variant {
        name: "cased-strip-accents",
        normalizer: Some((true, true, Some(true), false)),
        bert_processing: true,
        extra_added: false,
    },
    Variant {
        name: "no-clean-no-cjk",
        normalizer: Some((false, false, None, true)),
        bert_processing: false,
        extra_added: false,
    },
    Variant { name: "no-normalizer", normalizer: None, bert_processing: true, extra_added: false },
    Variant {
        name: "extra-added-tokens",
        normalizer: BERT,
        bert_processing: false,
        extra_added: true,
    },
];

// ---------------------------------------------------------------------------------------
// Comparison.

fn with_max_len(hf: &mut Tokenizer, max_len: Option<usize>) {
    hf.with_padding(None);
    hf.with_truncation(
        max_len.map(|max_length| TruncationParams { max_length, ..TruncationParams::default() }),
    )
    .expect("truncation params");
}

/// Compares ids for every text; `max_len == None` means no truncation. Returns the number
/// of texts compared.
fn compare_all(
    label: &str,
    wp: &WordPiece,
    hf: &mut Tokenizer,
    texts: &[String],
    max_len: Option<usize>,
) -> usize {
    with_max_len(hf, max_len);
    let mut scratch = TokenScratch::default();
    let mut out = Vec::new();
    for text in texts {
        let want = hf.encode(text.as_str(), true).expect("hf encode");
        let want = want.get_ids();
        let limit = max_len.unwrap_or(want.len() + 16);
        out.clear();
        out.resize(limit.max(2), 0);
        let n = wp.encode_into(text, limit, &mut scratch, &mut out);
        assert_eq!(&out[..n], want, "[{label}] ids differ (max_len {max_len:?}) for {text:?}");
        assert_eq!(
            wp.count_tokens(text, limit, &mut scratch),
            n,
            "[{label}] count_tokens != encode_into for {text:?}"
        );
    }
    texts.len()
}

#[test]
fn minilm_parity() {
    let Some((wp, mut hf)) = load_minilm() else {
        return;
    };
    assert_eq!(wp.cls_id(), 101);
    assert_eq!(wp.sep_id(), 102);
    assert_eq!(wp.unk_id(), 100);
    assert_eq!(wp.pad_id(), 0);
    assert_eq!(wp.vocab_size(), hf.get_vocab_size(false));

    let mut n = 0;
    n += compare_all("minilm sentences", &wp, &mut hf, &sentences(), Some(MAX_LEN));
    n += compare_all("minilm nasty", &wp, &mut hf, &nasty(), Some(MAX_LEN));
    n += compare_all(
        "minilm fuzz",
        &wp,
        &mut hf,
        &fuzz_corpus(0x5eed_1234_abcd_ef01, 2000),
        Some(MAX_LEN),
    );
    // Short limits, and no limit at all on long inputs (exercises chunking).
    let long: Vec<String> = {
        let mut rng = XorShift(42);
        (0..40).map(|_| fuzz_string(&mut rng, 3000)).chain([two_thousand_words()]).collect()
    };
    n += compare_all("minilm long", &wp, &mut hf, &long, None);
    for max_len in [2, 3, 8, 128] {
        n += compare_all("minilm short", &wp, &mut hf, &nasty(), Some(max_len));
    }
    eprintln!("minilm parity: {n} texts identical");
}

#[test]
fn synthetic_parity() {
    let fuzz = fuzz_corpus(0xdead_beef_cafe_f00d, 2000);
    let nasty = nasty();
    let mut rng = XorShift(7);
    let long: Vec<String> = (0..10).map(|_| fuzz_string(&mut rng, 3000)).collect();
    for &var in VARIANTS {
        let json = synthetic_json(var);
        let wp = WordPiece::from_json_str(&json)
            .unwrap_or_else(|e| panic!("[{}] WordPiece load: {e}", var.name));
        let mut hf = Tokenizer::from_str(&json)
            .unwrap_or_else(|e| panic!("[{}] tokenizers load: {e}", var.name));
        let mut n = 0;
        n += compare_all(var.name, &wp, &mut hf, &nasty, Some(MAX_LEN));
        n += compare_all(var.name, &wp, &mut hf, &fuzz, Some(MAX_LEN));
        n += compare_all(var.name, &wp, &mut hf, &fuzz[..200], Some(5));
        n += compare_all(var.name, &wp, &mut hf, &long, None);
        eprintln!("synthetic parity [{}]: {n} texts identical", var.name);
    }
}

fn assert_no_steady_state_allocs(label: &str, wp: &WordPiece, texts: &[String]) {
    let mut scratch = TokenScratch::default();
    let mut out = vec![0u32; MAX_LEN];
    // Warm-up: grow the scratch to the largest input.
    for t in texts {
        wp.encode_into(t, MAX_LEN, &mut scratch, &mut out);
        wp.count_tokens(t, MAX_LEN, &mut scratch);
    }
    let mut calls = 0;
    let mut total = 0usize;
    let allocs = count_allocs(|| {
        while calls < 1000 {
            let t = &texts[calls % texts.len()];
            total += wp.encode_into(t, MAX_LEN, &mut scratch, &mut out);
            total += wp.count_tokens(t, MAX_LEN, &mut scratch);
            calls += 1;
        }
    });
    assert!(total > 0);
    assert_eq!(allocs, 0, "[{label}] {allocs} allocations over {calls} warm calls");
    eprintln!("[{label}] 0 allocations over {calls} warm encode_into+count_tokens calls");
}

#[test]
fn no_allocations_in_steady_state() {
    // Sanity check of the counter itself.
    assert!(count_allocs(|| drop(std::hint::black_box(vec![1u8; 10]))) >= 1);

    let mut texts = sentences();
    texts.extend(nasty());
    texts.extend(fuzz_corpus(99, 200));
    for &var in VARIANTS {
        let wp = WordPiece::from_json_str(&synthetic_json(var)).unwrap();
        assert_no_steady_state_allocs(var.name, &wp, &texts);
    }
    if let Some((wp, _)) = load_minilm() {
        assert_no_steady_state_allocs("minilm", &wp, &texts);
    }
}

/// Rough speed check: `cargo test --release --test tokenizer_parity -- --ignored --nocapture`.
#[test]
#[ignore]
fn speed() {
    let Some((wp, mut hf)) = load_minilm() else {
        return;
    };
    with_max_len(&mut hf, Some(MAX_LEN));
    let text = "The quick brown fox jumps over the lazy dog while the café owner, \
                naïvely, counts 42 coins.";
    let mut scratch = TokenScratch::default();
    let mut out = vec![0u32; MAX_LEN];
    let iters = 200_000;
    let t = std::time::Instant::now();
    let mut acc = 0;
    for _ in 0..iters {
        acc += wp.encode_into(std::hint::black_box(text), MAX_LEN, &mut scratch, &mut out);
    }
    let ours = t.elapsed().as_nanos() as f64 / iters as f64;
    let t = std::time::Instant::now();
    for _ in 0..iters {
        acc += wp.count_tokens(std::hint::black_box(text), MAX_LEN, &mut scratch);
    }
    let count = t.elapsed().as_nanos() as f64 / iters as f64;
    let hf_iters = 20_000;
    let t = std::time::Instant::now();
    for _ in 0..hf_iters {
        acc += hf.encode(std::hint::black_box(text), true).unwrap().len();
    }
    let theirs = t.elapsed().as_nanos() as f64 / hf_iters as f64;
    eprintln!(
        "{} tokens: encode_into {ours:.0} ns, count_tokens {count:.0} ns, tokenizers {theirs:.0} ns (acc {acc})",
        wp.count_tokens(text, MAX_LEN, &mut scratch)
    );
}
