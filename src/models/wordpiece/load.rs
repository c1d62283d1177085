//! Parsing `tokenizer.json`: the supported pipeline is checked component by component, and
//! anything this tokenizer does not reproduce is reported as unsupported.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::added::AddedMatcher;
use super::hash::Vocab;
use super::{TokenScratch, TokenizerError, WordPiece};

fn field<'a>(obj: &'a Value, key: &str, what: &str) -> Result<&'a Value, TokenizerError> {
    obj.get(key).ok_or_else(|| TokenizerError::Invalid(format!("{what}: missing field `{key}`")))
}

fn opt_bool(obj: &Value, key: &str, default: bool, what: &str) -> Result<bool, TokenizerError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(TokenizerError::Invalid(format!("{what}: `{key}` is not a bool"))),
    }
}

fn type_name(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("<untyped>")
}

fn as_id(v: &Value, what: &str) -> Result<u32, TokenizerError> {
    v.as_u64()
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| TokenizerError::Invalid(format!("{what}: id is not a u32")))
}

/// One added token as declared in `added_tokens`.
struct AddedDecl {
    content: String,
    single_word: bool,
    normalized: bool,
}

impl WordPiece {
    /// Parse a tokenizer.json file. Returns `Err(Unsupported)` if the pipeline is not
    /// `BertNormalizer` (or no normalizer) / `BertPreTokenizer` / `WordPiece` with
    /// `[CLS]`/`[SEP]` post-processing (`TemplateProcessing` or `BertProcessing`), so the
    /// caller can fall back to the `tokenizers` crate.
    ///
    /// `truncation` and `padding` in the file are ignored except for the padding id
    /// ([`WordPiece::pad_id`]); truncation is given per call.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let json = std::fs::read_to_string(path)?;
        Self::from_json_str(&json)
    }

    /// Parse the contents of a tokenizer.json; see [`WordPiece::from_file`].
    pub fn from_json_str(json: &str) -> Result<Self, TokenizerError> {
        let root: Value = serde_json::from_str(json)?;
        if !root.is_object() {
            return Err(TokenizerError::Invalid("top level is not an object".into()));
        }

        // --- model ---
        let model = field(&root, "model", "tokenizer")?;
        if let Some(t) = model.get("type") {
            if t.as_str() != Some("WordPiece") {
                return Err(TokenizerError::Unsupported(format!(
                    "model type {}",
                    type_name(model)
                )));
            }
        }
        let unk_token = model.get("unk_token").and_then(Value::as_str).unwrap_or("[UNK]");
        let prefix = model.get("continuing_subword_prefix").and_then(Value::as_str).unwrap_or("##");
        let max_input_chars_per_word = match model.get("max_input_chars_per_word") {
            None | Some(Value::Null) => 100,
            Some(v) => v.as_u64().ok_or_else(|| {
                TokenizerError::Invalid("model: max_input_chars_per_word is not an integer".into())
            })? as usize,
        };
        let vocab_json = field(model, "vocab", "model")?
            .as_object()
            .ok_or_else(|| TokenizerError::Unsupported("model vocab is not a map".into()))?;
        let mut vocab = Vocab::default();
        let mut cont_vocab = Vocab::default();
        vocab.reserve(vocab_json.len());
        for (k, v) in vocab_json {
            let id = as_id(v, "model vocab")?;
            vocab.insert(k, id);
            if let Some(rest) = k.strip_prefix(prefix) {
                cont_vocab.insert(rest, id);
            }
        }
        let vocab_size = vocab.len();
        let unk_id = vocab.get(unk_token).ok_or_else(|| {
            TokenizerError::Unsupported(format!("unk token {unk_token:?} is not in the vocab"))
        })?;

        // --- normalizer ---
        let (clean_text, handle_chinese_chars, strip_accents, lowercase) =
            match root.get("normalizer") {
                None | Some(Value::Null) => (false, false, false, false),
                Some(n) if type_name(n) == "BertNormalizer" => {
                    let what = "BertNormalizer";
                    let lowercase = opt_bool(n, "lowercase", true, what)?;
                    let strip = opt_bool(n, "strip_accents", lowercase, what)?;
                    (
                        opt_bool(n, "clean_text", true, what)?,
                        opt_bool(n, "handle_chinese_chars", true, what)?,
                        strip,
                        lowercase,
                    )
                }
                Some(n) => {
                    return Err(TokenizerError::Unsupported(format!("normalizer {}", type_name(n))))
                }
            };

        // --- pre-tokenizer ---
        match root.get("pre_tokenizer") {
            Some(p) if type_name(p) == "BertPreTokenizer" => {}
            Some(Value::Null) | None => {
                return Err(TokenizerError::Unsupported("no pre_tokenizer".into()))
            }
            Some(p) => {
                return Err(TokenizerError::Unsupported(format!("pre_tokenizer {}", type_name(p))))
            }
        }

        // --- post-processor ---
        let (cls_id, sep_id) = match root.get("post_processor") {
            Some(p) if type_name(p) == "BertProcessing" => {
                let pair_id = |key: &str| -> Result<u32, TokenizerError> {
                    let pair = field(p, key, "BertProcessing")?;
                    let id = pair.get(1).ok_or_else(|| {
                        TokenizerError::Invalid(format!("BertProcessing: `{key}` is not a pair"))
                    })?;
                    as_id(id, "BertProcessing")
                };
                (pair_id("cls")?, pair_id("sep")?)
            }
            Some(p) if type_name(p) == "TemplateProcessing" => parse_template(p)?,
            Some(Value::Null) | None => {
                return Err(TokenizerError::Unsupported("no post_processor".into()))
            }
            Some(p) => {
                return Err(TokenizerError::Unsupported(format!("post_processor {}", type_name(p))))
            }
        };

        // --- padding id ---
        let pad_id = match root.get("padding") {
            Some(p) if p.is_object() => match p.get("pad_id") {
                Some(v) => as_id(v, "padding")?,
                None => 0,
            },
            _ => vocab.get("[PAD]").unwrap_or(0),
        };

        let mut wp = WordPiece {
            vocab,
            cont_vocab,
            vocab_size,
            unk_id,
            cls_id,
            sep_id,
            pad_id,
            max_input_chars_per_word,
            clean_text,
            handle_chinese_chars,
            strip_accents,
            lowercase,
            raw_added: AddedMatcher::default(),
            norm_added: AddedMatcher::default(),
            chunking: true,
        };

        // --- added tokens (ids assigned as `AddedVocabulary::add_tokens` does) ---
        let mut decls = Vec::new();
        if let Some(list) = root.get("added_tokens").filter(|v| !v.is_null()) {
            let list = list
                .as_array()
                .ok_or_else(|| TokenizerError::Invalid("added_tokens is not a list".into()))?;
            for t in list {
                let what = "added token";
                let content = field(t, "content", what)?
                    .as_str()
                    .ok_or_else(|| TokenizerError::Invalid("added token content".into()))?;
                let special = opt_bool(t, "special", false, what)?;
                decls.push(AddedDecl {
                    content: content.to_owned(),
                    single_word: opt_bool(t, "single_word", false, what)?,
                    // lstrip/rstrip only move whitespace into the added token's span; the
                    // pre-tokenizer drops that whitespace anyway, so ids are unaffected.
                    normalized: opt_bool(t, "normalized", !special, what)?,
                });
            }
        }
        wp.install_added_tokens(decls)?;
        Ok(wp)
    }

    /// Assigns ids to the declared added tokens as `AddedVocabulary::add_tokens` does and
    /// builds the raw and normalized matchers.
    fn install_added_tokens(&mut self, decls: Vec<AddedDecl>) -> Result<(), TokenizerError> {
        // content -> (id, index into `decls` of the latest declaration)
        let mut by_content: HashMap<String, (u32, usize)> = HashMap::new();
        let mut next_id = self.vocab_size as u32;
        for (i, d) in decls.iter().enumerate() {
            if d.content.is_empty() {
                continue;
            }
            let id = match by_content.get(&d.content) {
                Some(&(id, _)) => id,
                None => match self.vocab.get(&d.content) {
                    Some(id) => id,
                    None => {
                        next_id += 1;
                        next_id - 1
                    }
                },
            };
            by_content.insert(d.content.clone(), (id, i));
        }
        // The tokenizers crate keys tokens by id: a later declaration with the same id
        // replaces the earlier one.
        let mut by_id: HashMap<u32, usize> = HashMap::new();
        for (_, &(id, i)) in by_content.iter() {
            let e = by_id.entry(id).or_insert(i);
            *e = (*e).max(i);
        }
        let mut raw = Vec::new();
        let mut norm = Vec::new();
        let mut scratch = TokenScratch::default();
        for (&id, &i) in &by_id {
            let d = &decls[i];
            if d.single_word {
                return Err(TokenizerError::Unsupported(format!(
                    "added token {:?} with single_word=true",
                    d.content
                )));
            }
            if d.normalized {
                self.normalize_into(&d.content, &mut scratch);
                let pat = scratch.norm.as_str();
                if pat.is_empty() {
                    return Err(TokenizerError::Unsupported(format!(
                        "added token {:?} normalizes to an empty string",
                        d.content
                    )));
                }
                if pat.chars().any(char::is_whitespace) {
                    self.chunking = false;
                }
                norm.push((Box::<str>::from(pat), id));
            } else {
                raw.push((Box::<str>::from(d.content.as_str()), id));
            }
        }
        for list in [&mut raw, &mut norm] {
            list.sort();
            if let Some(w) = list.windows(2).find(|w| w[0].0 == w[1].0) {
                // The tokenizers crate then picks one of them depending on hash-map
                // iteration order, which we cannot reproduce.
                return Err(TokenizerError::Unsupported(format!(
                    "two added tokens match the same text {:?}",
                    w[0].0
                )));
            }
        }
        self.raw_added = AddedMatcher::new(raw);
        self.norm_added = AddedMatcher::new(norm);
        Ok(())
    }
}

/// Extracts `(cls_id, sep_id)` from a `TemplateProcessing` whose single template is
/// exactly `[special] $A [special]`, each special being one id.
fn parse_template(p: &Value) -> Result<(u32, u32), TokenizerError> {
    let unsupported = |why: &str| TokenizerError::Unsupported(format!("TemplateProcessing: {why}"));
    let single = field(p, "single", "TemplateProcessing")?
        .as_array()
        .ok_or_else(|| unsupported("single is not a list"))?;
    let specials = field(p, "special_tokens", "TemplateProcessing")?;
    let special_id = |piece: &Value| -> Result<u32, TokenizerError> {
        let name = piece
            .get("SpecialToken")
            .and_then(|s| s.get("id"))
            .and_then(Value::as_str)
            .ok_or_else(|| unsupported("single template is not [special] $A [special]"))?;
        let ids = specials
            .get(name)
            .and_then(|s| s.get("ids"))
            .and_then(Value::as_array)
            .ok_or_else(|| unsupported(&format!("special token {name:?} not declared")))?;
        if ids.len() != 1 {
            return Err(unsupported(&format!("special token {name:?} has {} ids", ids.len())));
        }
        as_id(&ids[0], "TemplateProcessing")
    };
    if single.len() != 3 || single[1].get("Sequence").is_none() {
        return Err(unsupported("single template is not [special] $A [special]"));
    }
    let seq_id = single[1]["Sequence"].get("id").and_then(Value::as_str);
    if seq_id != Some("A") {
        return Err(unsupported("single template sequence is not $A"));
    }
    Ok((special_id(&single[0])?, special_id(&single[2])?))
}
