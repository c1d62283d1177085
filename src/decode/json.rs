//! Streaming readers of a request's raw `input` JSON value.
//!
//! The same reader runs twice: once at validation (counting items and tokens, checking every
//! value) and once in the lane, writing straight into the staging buffer. Reading the raw bytes
//! again instead of keeping a parsed copy is what keeps the hot path free of per-request heap
//! allocation: unescaped strings are borrowed from the Kafka payload, numbers are parsed in place.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer as _, SeqAccess, Visitor};

use crate::core::InvalidInput;

/// Calls `f(index, text)` for each string of a text input (a string, or an array of strings).
/// Returns the number of strings. Errors are human-readable and name the offending element.
pub fn for_each_text<F>(raw: &[u8], mut f: F) -> Result<usize, InvalidInput>
where
    F: FnMut(usize, &str) -> Result<(), InvalidInput>,
{
    let mut de = serde_json::Deserializer::from_slice(raw);
    let mut count = 0usize;
    let visitor = TextTop { f: &mut f, count: &mut count };
    de.deserialize_any(visitor).map_err(clean_error)?;
    Ok(count)
}

/// Calls `f(row, values)` for each feature row of a tabular input (an array of numbers, or an
/// array of such arrays). Every row must have exactly `width` finite values. `row_buf` is reused
/// scratch space (it must have capacity for `width` values to avoid allocating). Returns the
/// number of rows.
pub fn for_each_feature_row<F>(
    raw: &[u8],
    width: usize,
    row_buf: &mut Vec<f32>,
    mut f: F,
) -> Result<usize, InvalidInput>
where
    F: FnMut(usize, &[f32]) -> Result<(), InvalidInput>,
{
    let mut de = serde_json::Deserializer::from_slice(raw);
    let mut rows = 0usize;
    row_buf.clear();
    let visitor = FeaturesTop { f: &mut f, rows: &mut rows, width, buf: row_buf };
    de.deserialize_seq(visitor).map_err(clean_error)?;
    Ok(rows)
}

fn clean_error(e: serde_json::Error) -> InvalidInput {
    // serde_json appends " at line 1 column N"; the column inside the input value is noise to
    // an operator, the message before it is what matters.
    let mut s = e.to_string();
    if let Some(i) = s.find(" at line ") {
        s.truncate(i);
    }
    InvalidInput(s)
}

struct TextTop<'a, F> {
    f: &'a mut F,
    count: &'a mut usize,
}

impl<'de, F> Visitor<'de> for TextTop<'_, F>
where
    F: FnMut(usize, &str) -> Result<(), InvalidInput>,
{
    type Value = ();

    fn expecting(&self, fm: &mut fmt::Formatter) -> fmt::Result {
        fm.write_str("input: a string or an array of strings")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        (self.f)(0, v).map_err(E::custom)?;
        *self.count = 1;
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while seq.next_element_seed(TextItem { f: &mut *self.f, index: i })?.is_some() {
            i += 1;
        }
        *self.count = i;
        Ok(())
    }
}

struct TextItem<'a, F> {
    f: &'a mut F,
    index: usize,
}

impl<'de, F> DeserializeSeed<'de> for TextItem<'_, F>
where
    F: FnMut(usize, &str) -> Result<(), InvalidInput>,
{
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F> Visitor<'de> for TextItem<'_, F>
where
    F: FnMut(usize, &str) -> Result<(), InvalidInput>,
{
    type Value = ();
    fn expecting(&self, fm: &mut fmt::Formatter) -> fmt::Result {
        write!(fm, "input[{}]: a string", self.index)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        (self.f)(self.index, v).map_err(E::custom)
    }
}

struct FeaturesTop<'a, F> {
    f: &'a mut F,
    rows: &'a mut usize,
    width: usize,
    buf: &'a mut Vec<f32>,
}

impl<'de, F> Visitor<'de> for FeaturesTop<'_, F>
where
    F: FnMut(usize, &[f32]) -> Result<(), InvalidInput>,
{
    type Value = ();
    fn expecting(&self, fm: &mut fmt::Formatter) -> fmt::Result {
        fm.write_str("input: an array of numbers or an array of arrays of numbers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // The first element decides the shape: a number means one flat row.
        let mut col = 0usize;
        let mut row = 0usize;
        let mut nested: Option<bool> = None;
        loop {
            let item = seq.next_element_seed(FeatureItem {
                buf: &mut *self.buf,
                width: self.width,
                row,
                col,
                nested: &mut nested,
            })?;
            match item {
                None => break,
                Some(FeatureKind::Number) => col += 1,
                Some(FeatureKind::Row) => {
                    (self.f)(row, self.buf).map_err(de::Error::custom)?;
                    self.buf.clear();
                    row += 1;
                }
            }
        }
        match nested {
            None => Err(de::Error::custom("input: empty array")),
            Some(false) => {
                if col != self.width {
                    return Err(de::Error::custom(format!(
                        "input: expected {} features, got {col}",
                        self.width
                    )));
                }
                (self.f)(0, self.buf).map_err(de::Error::custom)?;
                self.buf.clear();
                *self.rows = 1;
                Ok(())
            }
            Some(true) => {
                *self.rows = row;
                Ok(())
            }
        }
    }
}

enum FeatureKind {
    Number,
    Row,
}

struct FeatureItem<'a> {
    buf: &'a mut Vec<f32>,
    width: usize,
    row: usize,
    col: usize,
    nested: &'a mut Option<bool>,
}

impl<'de> DeserializeSeed<'de> for FeatureItem<'_> {
    type Value = FeatureKind;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<FeatureKind, D::Error> {
        d.deserialize_any(self)
    }
}

fn push_value<E: de::Error>(
    buf: &mut Vec<f32>,
    width: usize,
    v: f64,
    at: fmt::Arguments,
) -> Result<(), E> {
    let x = v as f32;
    if !x.is_finite() {
        return Err(E::custom(format!("{at}: {v} is not a finite 32-bit float")));
    }
    if buf.len() >= width {
        return Err(E::custom(format!("{at}: more than {width} features")));
    }
    buf.push(x);
    Ok(())
}

impl<'de> Visitor<'de> for FeatureItem<'_> {
    type Value = FeatureKind;
    fn expecting(&self, fm: &mut fmt::Formatter) -> fmt::Result {
        write!(
            fm,
            "input[{}]: a number or an array of numbers",
            if *self.nested == Some(true) { self.row } else { self.col }
        )
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<FeatureKind, E> {
        if *self.nested == Some(true) {
            return Err(E::custom(format!(
                "input[{}]: expected an array of numbers, got a number",
                self.row
            )));
        }
        *self.nested = Some(false);
        push_value(self.buf, self.width, v, format_args!("input[{}]", self.col))?;
        Ok(FeatureKind::Number)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<FeatureKind, E> {
        self.visit_f64(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<FeatureKind, E> {
        self.visit_f64(v as f64)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FeatureKind, A::Error> {
        if *self.nested == Some(false) {
            return Err(de::Error::custom(format!(
                "input[{}]: expected a number, got an array",
                self.col
            )));
        }
        *self.nested = Some(true);
        let row = self.row;
        let mut col = 0usize;
        while let Some(v) = seq.next_element::<NumberOnly>()? {
            push_value::<A::Error>(self.buf, self.width, v.0, format_args!("input[{row}][{col}]"))?;
            col += 1;
        }
        if col != self.width {
            return Err(de::Error::custom(format!(
                "input[{row}]: expected {} features, got {col}",
                self.width
            )));
        }
        Ok(FeatureKind::Row)
    }
}

/// A JSON number and nothing else (no strings, nulls or nested arrays).
struct NumberOnly(f64);

impl<'de> de::Deserialize<'de> for NumberOnly {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NumberOnly;
            fn expecting(&self, fm: &mut fmt::Formatter) -> fmt::Result {
                fm.write_str("a number")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumberOnly, E> {
                Ok(NumberOnly(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumberOnly, E> {
                Ok(NumberOnly(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumberOnly, E> {
                Ok(NumberOnly(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(raw: &str) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for_each_text(raw.as_bytes(), |_, s| {
            out.push(s.to_string());
            Ok(())
        })?;
        Ok(out)
    }

    fn rows(raw: &str, width: usize) -> Result<Vec<Vec<f32>>, String> {
        let mut out = Vec::new();
        let mut buf = Vec::with_capacity(width);
        for_each_feature_row(raw.as_bytes(), width, &mut buf, |_, r| {
            out.push(r.to_vec());
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn text_shapes() {
        assert_eq!(texts(r#""hello""#).unwrap(), vec!["hello"]);
        assert_eq!(texts(r#"["a", "b\nc"]"#).unwrap(), vec!["a", "b\nc"]);
        assert_eq!(texts(r#"[]"#).unwrap(), Vec::<String>::new());
        assert!(texts("3").unwrap_err().contains("string"));
        assert!(texts(r#"["a", 3]"#).unwrap_err().contains("input[1]"));
        assert!(texts(r#"["a", null]"#).unwrap_err().contains("input[1]"));
        assert!(texts(r#"[["a"]]"#).is_err());
        assert!(texts("null").is_err());
        assert!(texts(r#"{"a": 1}"#).is_err());
    }

    #[test]
    fn feature_shapes() {
        assert_eq!(rows("[1, 2.5, -3]", 3).unwrap(), vec![vec![1.0, 2.5, -3.0]]);
        assert_eq!(rows("[[1,2],[3,4]]", 2).unwrap(), vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
        assert!(rows("[1, 2]", 3).unwrap_err().contains("expected 3 features, got 2"));
        assert!(rows("[1, 2, 3, 4]", 3).unwrap_err().contains("more than 3"));
        assert!(rows("[[1,2],[3]]", 2).unwrap_err().contains("input[1]"));
        assert!(rows("[1, [2]]", 2).unwrap_err().contains("expected a number"));
        assert!(rows("[[1, 2], 3]", 2).unwrap_err().contains("expected an array"));
        assert!(rows("[1, \"2\"]", 2).is_err());
        assert!(rows("[1, null]", 2).is_err());
        assert!(rows("[]", 2).unwrap_err().contains("empty"));
        assert!(rows("[1e39, 1]", 2).unwrap_err().contains("finite"));
        assert!(rows("\"x\"", 2).is_err());
        assert!(rows("[[[1]]]", 1).is_err());
    }
}
