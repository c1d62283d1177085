//! What the load generator sends: a seeded mix of requests, planned before the run starts so
//! that the producer only formats bytes and the checker knows what each record was.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::schedule::SplitMix64;

/// Short texts (2-6 words), the "short texts" case of the goals.
const SHORT_TEXTS: &[&str] = &[
    "great service",
    "the parcel never arrived",
    "refund please",
    "works as described",
    "slow delivery again",
    "love the new colour",
    "battery died after a week",
    "fast and friendly support",
    "wrong size sent",
    "would buy again",
    "the app keeps crashing",
    "five stars",
];

/// Long texts (15-30 words): the engine benchmark's sentences are about 20 words.
const LONG_TEXTS: &[&str] = &[
    "My cousin said that an anxious farmer had sold the ancient report two weeks ago, before anybody at the market had a chance to read it.",
    "Nobody knew why Mei and Liam kept painting the prototype in the parking garage every weekend, even after the landlord asked them twice to stop.",
    "The experienced student wrote the telescope manual at the airport before the meeting, then spent the whole flight correcting the diagrams by hand.",
    "Samuel printed two fragile garden hoses in the hospital lobby just before midnight, and the night nurse still talks about the smell of hot plastic.",
    "Streaming inference turns every Kafka record into a prediction within a few hundred milliseconds, while the operator watches the tail latency on a dashboard.",
    "Why did our sales team repair the report in the hospital lobby when the conference room upstairs was empty for the entire afternoon and evening?",
];

/// The payload family of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Payload {
    /// Text requests; `long_share` of them long sentences, the rest short texts.
    Text { long_share: f64 },
    /// Tabular requests: one feature vector of `width` values.
    Tabular { width: usize },
}

/// The request mix of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// Model named in every (well-formed) request.
    pub model: String,
    /// Payload family.
    pub payload: Payload,
    /// Share of hostile records (bad JSON, invalid UTF-8, wrong shape, unknown model, huge...).
    pub hostile_share: f64,
    /// Share of records sent to the priority topic.
    pub priority_share: f64,
    /// Seed of the mix (and of Poisson arrivals).
    pub seed: u64,
}

/// The kinds of hostile record, in the order they rotate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostile {
    /// Not JSON at all.
    BadJson,
    /// Bytes that are not UTF-8.
    InvalidUtf8,
    /// Valid JSON, wrong input shape for the model.
    WrongShape,
    /// A model the repository does not have.
    UnknownModel,
    /// No id.
    MissingId,
    /// A value over `maxRecordBytes` (1 MiB by default): one hostile record in 64.
    Huge,
}

const HOSTILE_ROTATION: [Hostile; 5] = [
    Hostile::BadJson,
    Hostile::InvalidUtf8,
    Hostile::WrongShape,
    Hostile::UnknownModel,
    Hostile::MissingId,
];

/// One planned record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Sent to the priority topic.
    pub priority: bool,
    /// Hostile (expects a dead letter from Sluice) or a well-formed request.
    pub hostile: Option<Hostile>,
    /// Index into the text table (long or short) or the feature pattern.
    pub variant: u16,
    /// A long text (text payloads).
    pub long: bool,
}

impl Workload {
    /// Plans `n` records.
    pub fn plan(&self, n: usize) -> Vec<Planned> {
        let mut rng = SplitMix64::new(self.seed ^ 0x005E_ED0F_10AD);
        let mut hostile_n = 0usize;
        (0..n)
            .map(|_| {
                let priority = rng.next_f64() < self.priority_share;
                let hostile = if rng.next_f64() < self.hostile_share {
                    hostile_n += 1;
                    Some(if hostile_n.is_multiple_of(64) { Hostile::Huge } else { HOSTILE_ROTATION[hostile_n % HOSTILE_ROTATION.len()] })
                } else {
                    None
                };
                let long = matches!(self.payload, Payload::Text { long_share } if rng.next_f64() < long_share);
                let variant = (rng.next_u64() % 997) as u16;
                Planned { priority, hostile, variant, long }
            })
            .collect()
    }

    /// Writes the record value for `p` with request id `id` into `buf` (cleared first).
    pub fn render(&self, p: &Planned, id: &str, buf: &mut Vec<u8>) {
        buf.clear();
        let model = self.model.as_str();
        match p.hostile {
            Some(Hostile::BadJson) => {
                let _ = write!(buf, r#"{{"id":"{id}","model":"{model}","input": oops"#);
            }
            Some(Hostile::InvalidUtf8) => {
                let _ = write!(buf, r#"{{"id":"{id}","model":"{model}","input":""#);
                buf.extend_from_slice(&[0xC3, 0x28, 0xFF, 0xFE]);
                buf.extend_from_slice(b"\"}");
            }
            Some(Hostile::WrongShape) => {
                let _ = write!(
                    buf,
                    r#"{{"id":"{id}","model":"{model}","input":{{"nested":[1,2,3]}}}}"#
                );
            }
            Some(Hostile::UnknownModel) => {
                let _ = write!(
                    buf,
                    r#"{{"id":"{id}","model":"no-such-model-{}","input":"hello"}}"#,
                    p.variant
                );
            }
            Some(Hostile::MissingId) => {
                let _ = write!(buf, r#"{{"model":"{model}","input":"hello"}}"#);
            }
            Some(Hostile::Huge) => {
                let _ = write!(buf, r#"{{"id":"{id}","model":"{model}","input":""#);
                buf.resize(buf.len() + (1 << 20) + 4096, b'a');
                buf.extend_from_slice(b"\"}");
            }
            None => match &self.payload {
                Payload::Text { .. } => {
                    let text = if p.long {
                        LONG_TEXTS[p.variant as usize % LONG_TEXTS.len()]
                    } else {
                        SHORT_TEXTS[p.variant as usize % SHORT_TEXTS.len()]
                    };
                    let _ = write!(buf, r#"{{"id":"{id}","model":"{model}","input":"{text}"}}"#);
                }
                Payload::Tabular { width } => {
                    let _ = write!(buf, r#"{{"id":"{id}","model":"{model}","input":["#);
                    for i in 0..*width {
                        let v = ((p.variant as usize * 31 + i * 17) % 200) as f32 / 100.0 - 1.0;
                        let _ = write!(buf, "{}{v}", if i == 0 { "" } else { "," });
                    }
                    buf.extend_from_slice(b"]}");
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(h: f64) -> Workload {
        Workload {
            model: "m".into(),
            payload: Payload::Text { long_share: 0.25 },
            hostile_share: h,
            priority_share: 0.1,
            seed: 3,
        }
    }

    #[test]
    fn plan_follows_the_shares_and_is_repeatable() {
        let w = text(0.05);
        let p = w.plan(20_000);
        assert_eq!(p, w.plan(20_000));
        let share = |f: &dyn Fn(&Planned) -> bool| {
            p.iter().filter(|x| f(x)).count() as f64 / p.len() as f64
        };
        assert!((share(&|x| x.priority) - 0.1).abs() < 0.01);
        assert!((share(&|x| x.hostile.is_some()) - 0.05).abs() < 0.01);
        assert!((share(&|x| x.long) - 0.25).abs() < 0.01);
        assert!(p.iter().any(|x| x.hostile == Some(Hostile::Huge)));
    }

    #[test]
    fn rendered_values_parse_or_are_hostile_on_purpose() {
        let w = text(0.5);
        let mut buf = Vec::new();
        for (i, p) in w.plan(2_000).iter().enumerate() {
            w.render(p, &format!("r-{i}"), &mut buf);
            let parsed = serde_json::from_slice::<serde_json::Value>(&buf);
            match p.hostile {
                None => {
                    let v =
                        parsed.unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&buf)));
                    assert_eq!(v["id"], format!("r-{i}"));
                    assert!(v["input"].is_string());
                }
                Some(Hostile::BadJson) | Some(Hostile::InvalidUtf8) => assert!(parsed.is_err()),
                Some(Hostile::Huge) => assert!(buf.len() > 1 << 20),
                Some(_) => assert!(parsed.is_ok()),
            }
        }
        let tab = Workload { payload: Payload::Tabular { width: 8 }, ..text(0.0) };
        tab.render(&tab.plan(1)[0], "t", &mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["input"].as_array().map(Vec::len), Some(8));
    }
}
