//! FlatBuffers requests: `content-type: application/x-flatbuffers`, schema
//! `schemas/inference.fbs` (file identifier `SLU1`). The zero-copy path.
//!
//! [`parse`] runs the FlatBuffers verifier over the payload (bounded depth, table count and
//! apparent size; garbage yields an `Err`, never a panic or an out-of-bounds read). After that
//! every accessor reads in place from the Kafka payload: strings are borrowed, token ids and
//! feature values are little-endian runs ([`LeSlice`]) copied once, straight into the lane's
//! staging buffer. Nothing here allocates on success.
//!
//! Ingest parses to validate; the lane parses the same bytes again to stage (a `Request` keeps
//! no borrowed view, and re-verifying keeps every read checked without `unsafe` trust in the
//! request's fields). That second pass is cheap: scalar vectors are bounds-checked, not walked;
//! only `Texts` strings are UTF-8-checked again, which tokenizing them dwarfs.
//!
//! The accessors are written by hand against the `flatbuffers` 25 crate's `Table` / `Vector` /
//! `Verifier` API, following the layout `flatc` gives the schema (field `n` of a table has
//! vtable slot `4 + 2n`). The only `flatc` packaged for Debian (2.0.8) generates Rust for the
//! 2.x runtime, which does not compile against the 25.x crate; `schemas/inference.fbs` stays
//! the contract (see `schemas/README.md` and `scripts/gen-flatbuffers.sh`).
//!
//! Validation ([`check_input`]) mirrors the JSON path's rules where they overlap; the
//! envelope checks (id, model, version, deadline) and the padded-token budget are shared with
//! it in `decode.rs`.

use std::marker::PhantomData;
use std::ops::Range;

use flatbuffers::{
    FlatBufferBuilder, Follow, ForwardsUOffset, InvalidFlatbuffer, Table, Vector, Verifiable,
    Verifier, VerifierOptions, WIPOffset,
};

use crate::core::{ErrorClass, Failure, InputKind, InvalidInput, Limits};
use crate::models::wordpiece::TokenScratch;
use crate::models::{LoadedModel, ModelInput};

/// The schema's `file_identifier` (bytes 4..8 of every request buffer).
pub const FILE_IDENTIFIER: &str = "SLU1";
/// The record header value that selects this decoder.
pub const CONTENT_TYPE: &str = "application/x-flatbuffers";

/// Discriminants of the schema's `union Input` (declaration order, `NONE` = 0).
pub mod input_type {
    pub const NONE: u8 = 0;
    pub const TEXTS: u8 = 1;
    pub const TOKEN_IDS: u8 = 2;
    pub const FEATURES: u8 = 3;
}

/// Vtable slots (`4 + 2 × field index`, in declaration order).
pub mod slot {
    use flatbuffers::VOffsetT;
    // table Request
    pub const REQ_ID: VOffsetT = 4;
    pub const REQ_MODEL: VOffsetT = 6;
    pub const REQ_VERSION: VOffsetT = 8;
    pub const REQ_DEADLINE_MS: VOffsetT = 10;
    pub const REQ_INPUT_TYPE: VOffsetT = 12;
    pub const REQ_INPUT: VOffsetT = 14;
    // table Texts
    pub const TEXTS_ITEMS: VOffsetT = 4;
    // table TokenIds
    pub const TOK_IDS: VOffsetT = 4;
    pub const TOK_LENGTHS: VOffsetT = 6;
    // table Features
    pub const FEAT_VALUES: VOffsetT = 4;
    pub const FEAT_ROWS: VOffsetT = 6;
}

// ---------------------------------------------------------------------------------------------
// Table wrappers. Each is only ever built over a verified buffer (through `parse`), which is
// what makes the `unsafe` reads below sound: the verifier has checked every field they touch.
// ---------------------------------------------------------------------------------------------

macro_rules! fb_table {
    ($name:ident) => {
        #[derive(Clone, Copy)]
        struct $name<'a> {
            tab: Table<'a>,
        }
        impl<'a> Follow<'a> for $name<'a> {
            type Inner = $name<'a>;
            /// # Safety
            ///
            /// `loc` must be the offset of a table of this type inside `buf`, which the
            /// verifier has checked (`parse` verifies every buffer before any table is read).
            #[inline]
            unsafe fn follow(buf: &'a [u8], loc: usize) -> Self::Inner {
                // SAFETY: the caller guarantees `loc` is a verified table of this type.
                $name { tab: unsafe { Table::new(buf, loc) } }
            }
        }
    };
}

fb_table!(RequestT);
fb_table!(TextsT);
fb_table!(TokenIdsT);
fb_table!(FeaturesT);

impl Verifiable for RequestT<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<&str>>("id", slot::REQ_ID, true)?
            .visit_field::<ForwardsUOffset<&str>>("model", slot::REQ_MODEL, true)?
            .visit_field::<ForwardsUOffset<&str>>("version", slot::REQ_VERSION, false)?
            .visit_field::<u64>("deadline_ms", slot::REQ_DEADLINE_MS, false)?
            .visit_union::<u8, _>(
                "input_type",
                slot::REQ_INPUT_TYPE,
                "input",
                slot::REQ_INPUT,
                false,
                |key, v, pos| match key {
                    input_type::TEXTS => {
                        v.verify_union_variant::<ForwardsUOffset<TextsT>>("Input::Texts", pos)
                    }
                    input_type::TOKEN_IDS => {
                        v.verify_union_variant::<ForwardsUOffset<TokenIdsT>>("Input::TokenIds", pos)
                    }
                    input_type::FEATURES => {
                        v.verify_union_variant::<ForwardsUOffset<FeaturesT>>("Input::Features", pos)
                    }
                    // A variant from a newer schema: verified as present, rejected at validation.
                    _ => Ok(()),
                },
            )?
            .finish();
        Ok(())
    }
}

impl Verifiable for TextsT<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<Vector<ForwardsUOffset<&str>>>>(
                "items",
                slot::TEXTS_ITEMS,
                false,
            )?
            .finish();
        Ok(())
    }
}

impl Verifiable for TokenIdsT<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<Vector<u32>>>("ids", slot::TOK_IDS, false)?
            .visit_field::<ForwardsUOffset<Vector<u32>>>("lengths", slot::TOK_LENGTHS, false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for FeaturesT<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<Vector<f32>>>("values", slot::FEAT_VALUES, false)?
            .visit_field::<u32>("rows", slot::FEAT_ROWS, false)?
            .finish();
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Little-endian runs read in place.
// ---------------------------------------------------------------------------------------------

/// A 4-byte little-endian scalar of a FlatBuffers vector.
pub trait LeScalar: Copy {
    fn from_le(b: [u8; 4]) -> Self;
}

impl LeScalar for u32 {
    #[inline]
    fn from_le(b: [u8; 4]) -> Self {
        u32::from_le_bytes(b)
    }
}

impl LeScalar for f32 {
    #[inline]
    fn from_le(b: [u8; 4]) -> Self {
        f32::from_le_bytes(b)
    }
}

/// A run of little-endian `u32` / `f32` values borrowed from the payload. (The payload need
/// not be 4-byte aligned in memory, so this is bytes, not a `&[T]`.)
#[derive(Clone, Copy)]
pub struct LeSlice<'a, T> {
    bytes: &'a [u8],
    _t: PhantomData<T>,
}

impl<'a, T: LeScalar> LeSlice<'a, T> {
    fn new(bytes: &'a [u8]) -> Self {
        // Whole elements only (vector bytes always are; this keeps the invariant local).
        let n = bytes.len() / 4 * 4;
        LeSlice { bytes: &bytes[..n], _t: PhantomData }
    }

    fn empty() -> Self {
        LeSlice { bytes: &[], _t: PhantomData }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.bytes.len() / 4
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Value `i`, if in range.
    pub fn get(&self, i: usize) -> Option<T> {
        let b = self.bytes.get(i * 4..i * 4 + 4)?;
        Some(T::from_le([b[0], b[1], b[2], b[3]]))
    }

    /// Values `range`, if in range.
    pub fn slice(&self, range: Range<usize>) -> Option<LeSlice<'a, T>> {
        let b = self.bytes.get(range.start.checked_mul(4)?..range.end.checked_mul(4)?)?;
        Some(LeSlice { bytes: b, _t: PhantomData })
    }

    /// The values in order.
    pub fn iter(&self) -> impl Iterator<Item = T> + 'a {
        self.bytes.chunks_exact(4).map(|c| T::from_le([c[0], c[1], c[2], c[3]]))
    }

    /// Copies the values into `dst` (which must be exactly as long) and returns their number.
    pub fn copy_to(&self, dst: &mut [T]) -> Result<usize, InvalidInput> {
        if dst.len() != self.len() {
            return Err(format!(
                "row of {} values does not fit a slot of {}",
                self.len(),
                dst.len()
            )
            .into());
        }
        for (d, c) in dst.iter_mut().zip(self.bytes.chunks_exact(4)) {
            *d = T::from_le([c[0], c[1], c[2], c[3]]);
        }
        Ok(dst.len())
    }
}

impl<T: LeScalar + std::fmt::Debug> std::fmt::Debug for LeSlice<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

// ---------------------------------------------------------------------------------------------
// The verified request.
// ---------------------------------------------------------------------------------------------

/// A verified FlatBuffers request borrowing the payload.
#[derive(Clone, Copy)]
pub struct FbRequest<'a> {
    buf: &'a [u8],
    root: RequestT<'a>,
}

impl std::fmt::Debug for FbRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FbRequest")
            .field("id", &self.id())
            .field("model", &self.model())
            .field("version", &self.version())
            .field("deadline_ms", &self.deadline_ms())
            .field("input_type", &self.input_type())
            .finish()
    }
}

/// The request's `input` union.
#[derive(Clone, Copy)]
pub enum FbInput<'a> {
    /// No input set.
    None,
    Texts(Texts<'a>),
    TokenIds(TokenIds<'a>),
    Features(Features<'a>),
    /// A discriminant this build does not know (a newer schema).
    Unknown(u8),
}

/// `table Texts`.
#[derive(Clone, Copy)]
pub struct Texts<'a> {
    items: Option<Vector<'a, ForwardsUOffset<&'a str>>>,
}

impl<'a> Texts<'a> {
    /// Number of strings.
    pub fn len(&self) -> usize {
        self.items.map_or(0, |v| v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// String `i` (borrowed from the payload), if in range.
    pub fn get(&self, i: usize) -> Option<&'a str> {
        let v = self.items?;
        (i < v.len()).then(|| v.get(i))
    }
}

/// `table TokenIds`.
#[derive(Clone, Copy)]
pub struct TokenIds<'a> {
    ids: LeSlice<'a, u32>,
    lengths: LeSlice<'a, u32>,
}

impl<'a> TokenIds<'a> {
    /// All rows' ids, concatenated.
    pub fn ids(&self) -> LeSlice<'a, u32> {
        self.ids
    }

    /// Tokens of each row.
    pub fn lengths(&self) -> LeSlice<'a, u32> {
        self.lengths
    }
}

/// `table Features`.
#[derive(Clone, Copy)]
pub struct Features<'a> {
    values: LeSlice<'a, f32>,
    rows: u32,
}

impl<'a> Features<'a> {
    /// All values, row-major.
    pub fn values(&self) -> LeSlice<'a, f32> {
        self.values
    }

    /// Number of rows.
    pub fn rows(&self) -> u32 {
        self.rows
    }
}

/// Verifier bounds: a request is two tables deep (Request → input) and holds two tables.
/// The apparent-size bound caps the work a buffer of shared sub-objects can cause.
fn verifier_options(payload_len: usize) -> VerifierOptions {
    VerifierOptions {
        max_depth: 4,
        max_tables: 4,
        max_apparent_size: payload_len.saturating_mul(8).saturating_add(64 * 1024),
        ignore_missing_null_terminator: false,
    }
}

/// Verifies `payload` as a `sluice.fb.Request` with file identifier `SLU1`. The error names
/// what is wrong (every `Err` is a `parse` failure). Allocates only on failure.
pub fn parse(payload: &[u8]) -> Result<FbRequest<'_>, InvalidInput> {
    if payload.len() < 8 {
        return Err(format!(
            "FlatBuffer of {} bytes is too short to hold a root offset and identifier",
            payload.len()
        )
        .into());
    }
    if payload.len() > u32::MAX as usize {
        return Err("FlatBuffer larger than 4 GiB".into());
    }
    if &payload[4..8] != FILE_IDENTIFIER.as_bytes() {
        return Err(format!(
            "FlatBuffer file identifier is {:?}, expected \"{FILE_IDENTIFIER}\" (schemas/inference.fbs)",
            String::from_utf8_lossy(&payload[4..8])
        ).into());
    }
    let opts = verifier_options(payload.len());
    let root = flatbuffers::root_with_opts::<RequestT>(&opts, payload)
        .map_err(|e| format!("invalid FlatBuffer: {e}"))?;
    Ok(FbRequest { buf: payload, root })
}

impl<'a> FbRequest<'a> {
    /// The request id (borrowed from the payload).
    pub fn id(&self) -> &'a str {
        // SAFETY: verified as a required string in `parse`.
        unsafe { self.root.tab.get::<ForwardsUOffset<&str>>(slot::REQ_ID, None) }.unwrap_or("")
    }

    /// Where the id's bytes lie in the payload (for [`IdText::Span`](super::IdText::Span)).
    pub fn id_span(&self) -> Range<u32> {
        let id = self.id();
        let start = (id.as_ptr() as usize).saturating_sub(self.buf.as_ptr() as usize);
        // `parse` refused payloads over 4 GiB, so both ends fit.
        start as u32..(start + id.len()) as u32
    }

    /// The model name.
    pub fn model(&self) -> &'a str {
        // SAFETY: verified as a required string in `parse`.
        unsafe { self.root.tab.get::<ForwardsUOffset<&str>>(slot::REQ_MODEL, None) }.unwrap_or("")
    }

    /// The requested version, if any.
    pub fn version(&self) -> Option<&'a str> {
        // SAFETY: verified as an optional string in `parse`.
        unsafe { self.root.tab.get::<ForwardsUOffset<&str>>(slot::REQ_VERSION, None) }
    }

    /// The deadline (epoch ms), if the field is present.
    pub fn deadline_ms(&self) -> Option<u64> {
        // SAFETY: verified as an optional u64 in `parse`.
        unsafe { self.root.tab.get::<u64>(slot::REQ_DEADLINE_MS, None) }
    }

    /// The union discriminant (`input_type::*`).
    pub fn input_type(&self) -> u8 {
        // SAFETY: verified by `visit_union` in `parse`.
        unsafe { self.root.tab.get::<u8>(slot::REQ_INPUT_TYPE, Some(input_type::NONE)) }
            .unwrap_or(input_type::NONE)
    }

    /// The input.
    pub fn input(&self) -> FbInput<'a> {
        let tab = &self.root.tab;
        // SAFETY: `visit_union` verified the value as the table type its discriminant names
        // (and that discriminant and value are both present or both absent).
        unsafe {
            match self.input_type() {
                input_type::NONE => FbInput::None,
                input_type::TEXTS => {
                    match tab.get::<ForwardsUOffset<TextsT>>(slot::REQ_INPUT, None) {
                        None => FbInput::None,
                        Some(t) => FbInput::Texts(Texts {
                            items: t.tab.get::<ForwardsUOffset<Vector<ForwardsUOffset<&str>>>>(
                                slot::TEXTS_ITEMS,
                                None,
                            ),
                        }),
                    }
                }
                input_type::TOKEN_IDS => {
                    match tab.get::<ForwardsUOffset<TokenIdsT>>(slot::REQ_INPUT, None) {
                        None => FbInput::None,
                        Some(t) => {
                            let vec = |s| {
                                t.tab
                                    .get::<ForwardsUOffset<Vector<u32>>>(s, None)
                                    .map_or(LeSlice::empty(), |v| LeSlice::new(v.bytes()))
                            };
                            FbInput::TokenIds(TokenIds {
                                ids: vec(slot::TOK_IDS),
                                lengths: vec(slot::TOK_LENGTHS),
                            })
                        }
                    }
                }
                input_type::FEATURES => {
                    match tab.get::<ForwardsUOffset<FeaturesT>>(slot::REQ_INPUT, None) {
                        None => FbInput::None,
                        Some(t) => FbInput::Features(Features {
                            values: t
                                .tab
                                .get::<ForwardsUOffset<Vector<f32>>>(slot::FEAT_VALUES, None)
                                .map_or(LeSlice::empty(), |v| LeSlice::new(v.bytes())),
                            rows: t.tab.get::<u32>(slot::FEAT_ROWS, Some(0)).unwrap_or(0),
                        }),
                    }
                }
                other => FbInput::Unknown(other),
            }
        }
    }

    /// Which staging path the input takes, or why there is none.
    pub fn input_kind(&self) -> Result<InputKind, InvalidInput> {
        match self.input() {
            FbInput::Texts(_) => Ok(InputKind::FbTexts),
            FbInput::TokenIds(_) => Ok(InputKind::FbTokens),
            FbInput::Features(_) => Ok(InputKind::FbFeatures),
            FbInput::None => Err("missing field 'input'".into()),
            FbInput::Unknown(t) => Err(format!(
                "input: unknown Input union type {t} (this build knows Texts, TokenIds, Features)"
            )
            .into()),
        }
    }

    /// Calls `f(index, text)` for each string of a `Texts` input; returns their number.
    pub fn for_each_text<F>(&self, mut f: F) -> Result<usize, InvalidInput>
    where
        F: FnMut(usize, &'a str) -> Result<(), InvalidInput>,
    {
        let FbInput::Texts(t) = self.input() else {
            return Err("input is not Texts".into());
        };
        let n = t.len();
        for i in 0..n {
            f(i, t.get(i).unwrap_or(""))?;
        }
        Ok(n)
    }

    /// Calls `f(row, ids)` for each row of a `TokenIds` input (`ids` read in place; copy them
    /// with [`LeSlice::copy_to`]). Checks the rows tile `ids` exactly; returns their number.
    pub fn for_each_token_row<F>(&self, mut f: F) -> Result<usize, InvalidInput>
    where
        F: FnMut(usize, LeSlice<'a, u32>) -> Result<(), InvalidInput>,
    {
        let FbInput::TokenIds(t) = self.input() else {
            return Err("input is not TokenIds".into());
        };
        let mut at = 0usize;
        for (row, len) in t.lengths.iter().enumerate() {
            let end = at.checked_add(len as usize).filter(|&e| e <= t.ids.len()).ok_or_else(|| {
                format!("input: lengths[{row}] = {len} runs past the end of ids ({} ids, row starts at {at})", t.ids.len())
            })?;
            f(row, t.ids.slice(at..end).unwrap_or(LeSlice::empty()))?;
            at = end;
        }
        if at != t.ids.len() {
            return Err(format!(
                "input: lengths add up to {at} tokens but ids holds {}",
                t.ids.len()
            )
            .into());
        }
        Ok(t.lengths.len())
    }

    /// Calls `f(row, values)` for each `width`-value row of a `Features` input (values read in
    /// place; copy them with [`LeSlice::copy_to`]). Checks `values` holds `rows × width`
    /// values; returns the number of rows.
    pub fn for_each_feature_row<F>(&self, width: usize, mut f: F) -> Result<usize, InvalidInput>
    where
        F: FnMut(usize, LeSlice<'a, f32>) -> Result<(), InvalidInput>,
    {
        let FbInput::Features(t) = self.input() else {
            return Err("input is not Features".into());
        };
        let rows = t.rows as usize;
        if rows.checked_mul(width) != Some(t.values.len()) {
            return Err(format!(
                "input: {} values for {rows} rows × {width} features",
                t.values.len()
            )
            .into());
        }
        for r in 0..rows {
            f(r, t.values.slice(r * width..(r + 1) * width).unwrap_or(LeSlice::empty()))?;
        }
        Ok(rows)
    }
}

fn validation(reason: impl Into<String>) -> Failure {
    Failure::new(ErrorClass::Validation, reason)
}

fn too_many(n: usize, max_items: usize) -> Failure {
    Failure::new(
        ErrorClass::TooLarge,
        format!("{n} inputs in one request, at most {max_items} allowed"),
    )
}

/// Validates the input's shape against `model`; returns (kind, items, longest in tokens).
/// The padded-token budget is checked by the caller (shared with the JSON path).
pub fn check_input(
    fb: &FbRequest<'_>,
    model: &LoadedModel,
    limits: &Limits,
    scratch: &mut TokenScratch,
) -> Result<(InputKind, usize, usize), Failure> {
    let max_items = limits.max_items.min(limits.caps.max_rows);
    let kind = fb.input_kind().map_err(validation)?;
    let wrong = |what: &str, reads: &str| {
        validation(format!("input: {what} given, but model '{}' reads {reads}", model.name))
    };
    match (&model.input, fb.input()) {
        (ModelInput::Text { tokenizer, max_seq_len }, FbInput::Texts(t)) => {
            let n = t.len();
            if n == 0 {
                return Err(validation("input: empty array"));
            }
            if n > max_items {
                return Err(too_many(n, max_items));
            }
            let mut longest = 0usize;
            fb.for_each_text(|_, text| {
                longest = longest.max(tokenizer.count_tokens(text, *max_seq_len, scratch)?);
                Ok(())
            })
            .map_err(validation)?;
            Ok((kind, n, longest))
        }
        (ModelInput::Text { tokenizer, max_seq_len }, FbInput::TokenIds(t)) => {
            let n = t.lengths.len();
            if n == 0 {
                return Err(validation("input: empty (TokenIds.lengths has no rows)"));
            }
            if n > max_items {
                return Err(too_many(n, max_items));
            }
            let vocab = tokenizer.vocab_size();
            let mut longest = 0usize;
            fb.for_each_token_row(|row, ids| {
                let len = ids.len();
                if !(2..=*max_seq_len).contains(&len) {
                    return Err(format!("input: row {row} has {len} tokens, must be 2..={max_seq_len} ([CLS] and [SEP] included)").into());
                }
                if let Some((col, id)) = ids.iter().enumerate().find(|&(_, id)| id as usize >= vocab) {
                    return Err(format!("input: row {row} token {col} is id {id}, the vocabulary has {vocab}").into());
                }
                longest = longest.max(len);
                Ok(())
            })
            .map_err(validation)?;
            Ok((kind, n, longest))
        }
        (ModelInput::Features { width }, FbInput::Features(t)) => {
            let n = t.rows as usize;
            if n == 0 {
                return Err(validation("input: empty (Features.rows is 0)"));
            }
            if n > max_items {
                return Err(too_many(n, max_items));
            }
            if n.checked_mul(*width) != Some(t.values.len()) {
                return Err(validation(format!(
                    "input: {} values for {n} rows × {width} features",
                    t.values.len()
                )));
            }
            if let Some((i, x)) = t.values.iter().enumerate().find(|(_, x)| !x.is_finite()) {
                return Err(validation(format!(
                    "input[{}][{}]: {x} is not a finite 32-bit float",
                    i / width,
                    i % width
                )));
            }
            Ok((kind, n, 1))
        }
        (ModelInput::Text { .. }, FbInput::Features(_)) => {
            Err(wrong("Features", "text (Texts or TokenIds)"))
        }
        (ModelInput::Features { .. }, FbInput::Texts(_)) => Err(wrong("Texts", "Features")),
        (ModelInput::Features { .. }, FbInput::TokenIds(_)) => Err(wrong("TokenIds", "Features")),
        // `input_kind` above already refused None and Unknown.
        (_, FbInput::None | FbInput::Unknown(_)) => Err(validation("missing field 'input'")),
    }
}

// ---------------------------------------------------------------------------------------------
// Building requests (clients, tests, benchmarks).
// ---------------------------------------------------------------------------------------------

/// The input of a request to build.
#[derive(Debug, Clone, Copy)]
pub enum InputArg<'x> {
    Texts(&'x [&'x str]),
    TokenIds { ids: &'x [u32], lengths: &'x [u32] },
    Features { values: &'x [f32], rows: u32 },
}

/// A request to build with [`build_request`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestArgs<'x> {
    pub id: &'x str,
    pub model: &'x str,
    pub version: Option<&'x str>,
    pub deadline_ms: Option<u64>,
    pub input: Option<InputArg<'x>>,
}

/// Builds a request buffer in `fbb` (reset first) and returns its bytes.
pub fn build_request<'b>(fbb: &'b mut FlatBufferBuilder<'_>, args: &RequestArgs<'_>) -> &'b [u8] {
    fbb.reset();
    let input = args.input.map(|inp| match inp {
        InputArg::Texts(items) => {
            let offs: Vec<WIPOffset<&str>> = items.iter().map(|s| fbb.create_string(s)).collect();
            let v = fbb.create_vector(&offs);
            let t = fbb.start_table();
            fbb.push_slot_always(slot::TEXTS_ITEMS, v);
            (input_type::TEXTS, fbb.end_table(t).as_union_value())
        }
        InputArg::TokenIds { ids, lengths } => {
            let i = fbb.create_vector(ids);
            let l = fbb.create_vector(lengths);
            let t = fbb.start_table();
            fbb.push_slot_always(slot::TOK_IDS, i);
            fbb.push_slot_always(slot::TOK_LENGTHS, l);
            (input_type::TOKEN_IDS, fbb.end_table(t).as_union_value())
        }
        InputArg::Features { values, rows } => {
            let v = fbb.create_vector(values);
            let t = fbb.start_table();
            fbb.push_slot_always(slot::FEAT_VALUES, v);
            fbb.push_slot::<u32>(slot::FEAT_ROWS, rows, 0);
            (input_type::FEATURES, fbb.end_table(t).as_union_value())
        }
    });
    let id = fbb.create_string(args.id);
    let model = fbb.create_string(args.model);
    let version = args.version.map(|v| fbb.create_string(v));
    let t = fbb.start_table();
    if let Some(d) = args.deadline_ms {
        fbb.push_slot_always::<u64>(slot::REQ_DEADLINE_MS, d);
    }
    if let Some((_, v)) = input {
        fbb.push_slot_always(slot::REQ_INPUT, v);
    }
    fbb.push_slot_always(slot::REQ_ID, id);
    fbb.push_slot_always(slot::REQ_MODEL, model);
    if let Some(v) = version {
        fbb.push_slot_always(slot::REQ_VERSION, v);
    }
    if let Some((ty, _)) = input {
        fbb.push_slot::<u8>(slot::REQ_INPUT_TYPE, ty, input_type::NONE);
    }
    let root = fbb.end_table(t);
    fbb.finish(root, Some(FILE_IDENTIFIER));
    fbb.finished_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_identifier() {
        let mut fbb = FlatBufferBuilder::new();
        let ids = [101u32, 7, 102, 101, 102];
        let buf = build_request(
            &mut fbb,
            &RequestArgs {
                id: "r1",
                model: "m",
                version: Some("2"),
                deadline_ms: Some(0),
                input: Some(InputArg::TokenIds { ids: &ids, lengths: &[3, 2] }),
            },
        )
        .to_vec();
        let fb = parse(&buf).unwrap();
        assert_eq!(
            (fb.id(), fb.model(), fb.version(), fb.deadline_ms()),
            ("r1", "m", Some("2"), Some(0))
        );
        assert_eq!(&buf[fb.id_span().start as usize..fb.id_span().end as usize], b"r1");
        let mut rows = Vec::new();
        fb.for_each_token_row(|_, r| {
            rows.push(r.iter().collect::<Vec<_>>());
            Ok(())
        })
        .unwrap();
        assert_eq!(rows, vec![vec![101, 7, 102], vec![101, 102]]);
        let mut wrong = buf.clone();
        wrong[4..8].copy_from_slice(b"XXXX");
        assert!(parse(&wrong).unwrap_err().0.contains("identifier"));
        assert!(parse(&buf[..7]).is_err());
    }

    #[test]
    fn absent_optional_fields() {
        let mut fbb = FlatBufferBuilder::new();
        let buf =
            build_request(&mut fbb, &RequestArgs { id: "a", model: "m", ..Default::default() })
                .to_vec();
        let fb = parse(&buf).unwrap();
        assert_eq!(
            (fb.version(), fb.deadline_ms(), fb.input_type()),
            (None, None, input_type::NONE)
        );
        assert!(matches!(fb.input(), FbInput::None));
        assert!(fb.input_kind().is_err());
    }
}
