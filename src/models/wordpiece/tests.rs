//! Unit tests of the tokenizer on a small hand-written vocab.

use std::path::Path;

use super::*;

const VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "!", ",", ".", "'", "un",
    "##aff", "##able", "play", "##ing", "cafe", "naive", "a", "b", "c", "##b", "##c", "中", "国",
    "i", "##̇", "ß", "σ", "ς", "ο", "δ", "##δ", "##ο", "##σ", "##ς", "don", "t", "u", "s", "$", "+",
    "x", "##x", "ab", "##bc", "abc", "##ß",
];

fn json_with(normalizer: &str, post: &str, added_extra: &str) -> String {
    let vocab: Vec<String> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{}: {}", serde_json::to_string(t).unwrap(), i + 10))
        .collect();
    let special = |id: u32, c: &str| {
        format!(
            r#"{{"id":{id},"content":"{c}","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}"#
        )
    };
    format!(
        r###"{{"version":"1.0","truncation":null,"padding":null,
        "added_tokens":[{},{},{},{},{}{added_extra}],
        "normalizer":{normalizer},
        "pre_tokenizer":{{"type":"BertPreTokenizer"}},
        "post_processor":{post},
        "decoder":null,
        "model":{{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##","max_input_chars_per_word":10,
          "vocab":{{{}}}}}}}"###,
        special(10, "[PAD]"),
        special(11, "[UNK]"),
        special(12, "[CLS]"),
        special(13, "[SEP]"),
        special(14, "[MASK]"),
        vocab.join(",")
    )
}

const BERT_NORM: &str = r#"{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,"strip_accents":null,"lowercase":true}"#;
const TEMPLATE: &str = r#"{"type":"TemplateProcessing",
    "single":[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"[SEP]","type_id":0}}],
    "pair":[],
    "special_tokens":{"[CLS]":{"id":"[CLS]","ids":[12],"tokens":["[CLS]"]},"[SEP]":{"id":"[SEP]","ids":[13],"tokens":["[SEP]"]}}}"#;

fn tok() -> WordPiece {
    WordPiece::from_json_str(&json_with(BERT_NORM, TEMPLATE, "")).unwrap()
}

fn id(t: &str) -> u32 {
    VOCAB.iter().position(|v| *v == t).unwrap() as u32 + 10
}

fn enc(wp: &WordPiece, text: &str) -> Vec<u32> {
    let mut s = TokenScratch::default();
    let mut out = vec![0u32; 64];
    let n = wp.encode_into(text, 64, &mut s, &mut out);
    assert_eq!(n, wp.count_tokens(text, 64, &mut s));
    out.truncate(n);
    assert_eq!(out[0], wp.cls_id());
    assert_eq!(out[n - 1], wp.sep_id());
    out[1..n - 1].to_vec()
}

fn ids(ts: &[&str]) -> Vec<u32> {
    ts.iter().map(|t| id(t)).collect()
}

#[test]
fn specials_and_sizes() {
    let wp = tok();
    assert_eq!(wp.cls_id(), 12);
    assert_eq!(wp.sep_id(), 13);
    assert_eq!(wp.unk_id(), 11);
    assert_eq!(wp.pad_id(), 10);
    assert_eq!(wp.vocab_size(), VOCAB.len());
    assert!(enc(&wp, "").is_empty());
    assert!(enc(&wp, "   \t\n ").is_empty());
}

#[test]
fn greedy_longest_match_and_unk() {
    let wp = tok();
    assert_eq!(enc(&wp, "unaffable"), ids(&["un", "##aff", "##able"]));
    assert_eq!(enc(&wp, "playing"), ids(&["play", "##ing"]));
    // longest-first: "abc" beats "ab" + "##c"
    assert_eq!(enc(&wp, "abc"), ids(&["abc"]));
    assert_eq!(enc(&wp, "abcbc"), ids(&["abc", "##bc"]));
    // any failing piece makes the whole word [UNK]
    assert_eq!(enc(&wp, "playz hello"), vec![11, id("hello")]);
    // more than max_input_chars_per_word (10) chars -> [UNK]
    let mut ten = vec!["##x"; 10];
    ten[0] = "x";
    assert_eq!(enc(&wp, "xxxxxxxxxx"), ids(&ten));
    assert_eq!(enc(&wp, "xxxxxxxxxxx"), vec![11]);
    // the limit counts chars, not bytes
    assert_eq!(enc(&wp, "ßßßßßßßßßß").len(), 10);
    assert_eq!(enc(&wp, "ßßßßßßßßßßß"), vec![11]);
}

#[test]
fn lowercase_clean_and_punctuation() {
    let wp = tok();
    assert_eq!(enc(&wp, "Hello,\tWORLD!!"), ids(&["hello", ",", "world", "!", "!"]));
    // control chars, NUL and U+FFFD are dropped (joining the word), \u{b} is a control
    assert_eq!(enc(&wp, "hel\u{0}lo\u{fffd} wor\u{b}ld\u{200b}"), ids(&["hello", "world"]));
    // ASCII symbols count as punctuation
    assert_eq!(enc(&wp, "a$b+c"), ids(&["a", "$", "b", "+", "c"]));
    assert_eq!(enc(&wp, "don't"), ids(&["don", "'", "t"]));
    assert_eq!(enc(&wp, "U.S."), ids(&["u", ".", "s", "."]));
    // NBSP and ideographic space are whitespace
    assert_eq!(enc(&wp, "hello\u{a0}world\u{3000}!"), ids(&["hello", "world", "!"]));
}

#[test]
fn accents_and_special_lowercase() {
    let wp = tok();
    assert_eq!(enc(&wp, "Café NAÏVE"), ids(&["cafe", "naive"]));
    // decomposed input too
    assert_eq!(enc(&wp, "cafe\u{301}"), ids(&["cafe"]));
    // char-by-char lowercase: no final-sigma rule
    assert_eq!(enc(&wp, "ΟΔΟΣ"), ids(&["ο", "##δ", "##ο", "##σ"]));
    assert_eq!(enc(&wp, "ς"), ids(&["ς"]));
    // İ: NFD gives I + U+0307 (Mn, dropped), then lowercase
    assert_eq!(enc(&wp, "İ"), ids(&["i"]));
    assert_eq!(enc(&wp, "ß"), ids(&["ß"]));
}

#[test]
fn no_strip_accents_keeps_marks() {
    let norm = r#"{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,"strip_accents":false,"lowercase":true}"#;
    let wp = WordPiece::from_json_str(&json_with(norm, TEMPLATE, "")).unwrap();
    // İ lowercases to i + U+0307
    assert_eq!(enc(&wp, "İ"), ids(&["i", "##̇"]));
    assert_eq!(enc(&wp, "café"), vec![11]);
}

#[test]
fn no_lowercase() {
    let norm = r#"{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,"strip_accents":null,"lowercase":false}"#;
    let wp = WordPiece::from_json_str(&json_with(norm, TEMPLATE, "")).unwrap();
    assert_eq!(enc(&wp, "Hello hello café"), vec![11, id("hello"), 11]);
}

#[test]
fn chinese_chars_are_split() {
    let wp = tok();
    assert_eq!(enc(&wp, "中国hello"), ids(&["中", "国", "hello"]));
    let norm = r#"{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":false,"strip_accents":null,"lowercase":true}"#;
    let wp = WordPiece::from_json_str(&json_with(norm, TEMPLATE, "")).unwrap();
    assert_eq!(enc(&wp, "中国"), vec![11]);
}

#[test]
fn added_tokens_in_text() {
    let wp = tok();
    assert_eq!(enc(&wp, "hello[MASK]world [SEP]"), vec![id("hello"), 14, id("world"), 13]);
    // raw added tokens are matched before lowercasing
    assert_eq!(enc(&wp, "[mask]"), vec![11, 11, 11]);
    // a normalized added token matches after lowercasing
    let extra = r#",{"id":99,"content":"HeLLo!","single_word":false,"lstrip":false,"rstrip":false,"normalized":true,"special":false}"#;
    let wp = WordPiece::from_json_str(&json_with(BERT_NORM, TEMPLATE, extra)).unwrap();
    let new_id = VOCAB.len() as u32; // first id past the vocab size
    assert_eq!(enc(&wp, "say hello! HELLO!"), vec![11, new_id, new_id]);
}

#[test]
fn truncation() {
    let wp = tok();
    let text = "hello world ".repeat(50);
    let mut s = TokenScratch::default();
    let mut out = vec![0u32; 200];
    assert_eq!(wp.count_tokens(&text, 7, &mut s), 7);
    let n = wp.encode_into(&text, 7, &mut s, &mut out);
    assert_eq!(
        &out[..n],
        &[12, id("hello"), id("world"), id("hello"), id("world"), id("hello"), 13]
    );
    // truncation inside a multi-piece word keeps the first pieces
    let n = wp.encode_into("unaffable", 4, &mut s, &mut out);
    assert_eq!(&out[..n], &[12, id("un"), id("##aff"), 13]);
    // out shorter than max_len
    let n = wp.encode_into(&text, 512, &mut s, &mut out[..5]);
    assert_eq!(&out[..n], &[12, id("hello"), id("world"), id("hello"), 13]);
    assert_eq!(wp.count_tokens(&text, 1000, &mut s), 102);
    assert_eq!(wp.count_tokens(&text, 0, &mut s), 2);
    // a bad word after the limit does not disturb what was written
    let n = wp.encode_into("hello playz", 3, &mut s, &mut out);
    assert_eq!(&out[..n], &[12, id("hello"), 13]);
}

#[test]
fn long_input_chunking_matches_single_pass() {
    let wp = tok();
    let unit = "hello,world café 中国 unaffable\u{301}\u{302} [MASK] ";
    let text = unit.repeat(200);
    let got = enc_big(&wp, &text);
    let one = enc(&wp, unit);
    assert_eq!(got.len(), one.len() * 200);
    for c in got.chunks(one.len()) {
        assert_eq!(c, &one[..]);
    }
}

fn enc_big(wp: &WordPiece, text: &str) -> Vec<u32> {
    let mut s = TokenScratch::default();
    let mut out = vec![0u32; 100_000];
    let n = wp.encode_into(text, out.len(), &mut s, &mut out);
    out[1..n - 1].to_vec()
}

#[test]
fn bert_processing_and_unsupported() {
    let post = r#"{"type":"BertProcessing","sep":["[SEP]",13],"cls":["[CLS]",12]}"#;
    let wp = WordPiece::from_json_str(&json_with(BERT_NORM, post, "")).unwrap();
    assert_eq!(enc(&wp, "hello"), vec![id("hello")]);

    let bad_post = r#"{"type":"RobertaProcessing","sep":["[SEP]",13],"cls":["[CLS]",12]}"#;
    let err = WordPiece::from_json_str(&json_with(BERT_NORM, bad_post, "")).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::Unsupported(m) if m.contains("RobertaProcessing")),
        "{err}"
    );

    let bad_norm = r#"{"type":"NFC"}"#;
    let err = WordPiece::from_json_str(&json_with(bad_norm, TEMPLATE, "")).unwrap_err();
    assert!(matches!(&err, TokenizerError::Unsupported(m) if m.contains("NFC")), "{err}");

    let extra = r#",{"id":99,"content":"zz","single_word":true,"lstrip":false,"rstrip":false,"normalized":false,"special":false}"#;
    let err = WordPiece::from_json_str(&json_with(BERT_NORM, TEMPLATE, extra)).unwrap_err();
    assert!(matches!(&err, TokenizerError::Unsupported(m) if m.contains("single_word")), "{err}");

    // two normalized added tokens with the same normalized form: which one the
    // tokenizers crate matches depends on hash-map order
    let extra = r#",{"id":99,"content":"AB","single_word":false,"lstrip":false,"rstrip":false,"normalized":true,"special":false},{"id":98,"content":"ab","single_word":false,"lstrip":false,"rstrip":false,"normalized":true,"special":false}"#;
    let json = json_with(BERT_NORM, TEMPLATE, extra);
    let err = WordPiece::from_json_str(&json).unwrap_err();
    assert!(matches!(&err, TokenizerError::Unsupported(m) if m.contains("same text")), "{err}");

    assert!(matches!(WordPiece::from_json_str("{"), Err(TokenizerError::Json(_))));
    assert!(matches!(
        WordPiece::from_file(Path::new("/nonexistent/tokenizer.json")),
        Err(TokenizerError::Io(_))
    ));
}
