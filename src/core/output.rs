//! A batch's model output, shared by the outcomes of every request in the batch.

use std::sync::Arc;

/// What the numbers of a [`BatchOutput`] row mean.
#[derive(Debug, Clone)]
pub enum OutputKind {
    /// One embedding vector per row.
    Embedding,
    /// Softmax scores per row; the label is the arg-max.
    Classification(Arc<[String]>),
    /// A model's output vector per row (tabular models).
    Vector,
}

/// `rows × width` output values of one batch, row-major. Outcomes hold it in an `Arc` and a
/// row range, so a batch's results cost one allocation, not one per request.
#[derive(Debug, Clone)]
pub struct BatchOutput {
    pub data: Vec<f32>,
    pub width: usize,
    pub kind: OutputKind,
}

/// The index of the largest value (the first one on ties; 0 for an empty row): a classifier
/// row's label.
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc })
        .0
}

impl BatchOutput {
    /// Row `r` of the output.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.width..(r + 1) * self.width]
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data.len().checked_div(self.width).unwrap_or(0)
    }
}
