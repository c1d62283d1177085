//! Writing a batch of requests into a staging buffer: token ids and masks straight from the
//! payload's strings, features straight from its numbers (JSON), or token ids and features
//! copied once from the FlatBuffer in place. No per-request allocation.

use crate::core::InputKind;
use crate::decode::flatbuf;
use crate::decode::json::{for_each_feature_row, for_each_text};
use crate::models::wordpiece::TokenScratch;
use crate::models::{LoadedModel, ModelInput};
use crate::queue::Request;

use crate::core::HostStaging;

/// Per-lane scratch space for staging.
#[derive(Default)]
pub struct FillScratch {
    pub tokenizer: TokenScratch,
    pub row: Vec<f32>,
}

/// Stages `reqs` (all for `model`) into `st`. On failure returns the index of the request
/// that could not be staged and why (it passed validation, so this means a bug or a model
/// swapped underneath; the lane turns it into an `inference` dead letter).
pub fn fill_batch(
    model: &LoadedModel,
    reqs: &[Request],
    st: &mut HostStaging,
    scratch: &mut FillScratch,
) -> Result<(), (usize, String)> {
    let rows: usize = reqs.iter().map(|r| r.items as usize).sum();
    match &model.input {
        ModelInput::Text { tokenizer, max_seq_len } => {
            let seq = reqs
                .iter()
                .map(|r| r.max_tokens as usize)
                .max()
                .unwrap_or(2)
                .clamp(2, *max_seq_len);
            st.begin_text(rows, seq, tokenizer.pad_id());
            let mut row = 0usize;
            for (k, r) in reqs.iter().enumerate() {
                let tok = &mut scratch.tokenizer;
                let mut text_row = |_: usize, text: &str| {
                    let n = tokenizer.encode_into(text, seq, tok, st.row_ids_mut(row))?;
                    st.set_row_len(row, n);
                    row += 1;
                    Ok(())
                };
                match r.input_kind {
                    InputKind::Json => for_each_text(r.raw_input(), text_row),
                    InputKind::FbTexts => flatbuf::parse(&r.env.payload).and_then(|fb| fb.for_each_text(&mut text_row)),
                    InputKind::FbTokens => flatbuf::parse(&r.env.payload).and_then(|fb| {
                        fb.for_each_token_row(|_, ids| {
                            let n = ids.len();
                            if !(2..=seq).contains(&n) {
                                return Err(format!("row of {n} tokens does not fit a batch of sequence length {seq}").into());
                            }
                            ids.copy_to(&mut st.row_ids_mut(row)[..n])?;
                            st.set_row_len(row, n);
                            row += 1;
                            Ok(())
                        })
                    }),
                    InputKind::FbFeatures => Err("Features input staged for a text model".into()),
                }
                .map_err(|e| (k, String::from(e)))?;
            }
        }
        ModelInput::Features { width } => {
            st.begin_features(rows, *width);
            if scratch.row.capacity() < *width {
                scratch.row.reserve(*width);
            }
            let mut row = 0usize;
            for (k, r) in reqs.iter().enumerate() {
                match r.input_kind {
                    InputKind::Json => {
                        for_each_feature_row(r.raw_input(), *width, &mut scratch.row, |_, vals| {
                            st.row_features_mut(row).copy_from_slice(vals);
                            row += 1;
                            Ok(())
                        })
                    }
                    InputKind::FbFeatures => flatbuf::parse(&r.env.payload).and_then(|fb| {
                        fb.for_each_feature_row(*width, |_, vals| {
                            vals.copy_to(st.row_features_mut(row))?;
                            row += 1;
                            Ok(())
                        })
                    }),
                    InputKind::FbTexts | InputKind::FbTokens => {
                        Err("text input staged for a tabular model".into())
                    }
                }
                .map_err(|e| (k, String::from(e)))?;
            }
        }
    }
    Ok(())
}
