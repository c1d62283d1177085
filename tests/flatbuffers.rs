//! The FlatBuffers request path (`content-type: application/x-flatbuffers`,
//! `schemas/inference.fbs`): every input kind decodes and stages like its JSON twin, every
//! validation error gets its class, hostile bytes never panic, and decode + stage allocates
//! nothing per request in a warm loop.
//!
//! Buffers are built here with the `flatbuffers` crate's `FlatBufferBuilder` directly (not
//! through `sluice::decode::flatbuf::build_request`), so the hand-written accessors are checked
//! against an independent writer; a few Python-built buffers (the schemas/README.md example)
//! check interoperability.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::testkit::SeededRng;
use common::{envelope, TestRepo};
use flatbuffers::{FlatBufferBuilder, WIPOffset};
use sluice::core::BatchCaps;
use sluice::core::ErrorClass;
use sluice::core::HostStaging;
use sluice::core::InputKind;
use sluice::core::{ContentType, Envelope, Limits, Priority};
use sluice::decode::flatbuf::{self, input_type, slot};
use sluice::decode::Decoder;
use sluice::execute::fill::{fill_batch, FillScratch};
use sluice::models::wordpiece::TokenScratch;
use sluice::models::{LoadedModel, ModelInput};
use sluice::queue::Request;

// ---------------------------------------------------------------------------------------------
// Counting allocator (per thread): tests/common/alloc.rs.
// ---------------------------------------------------------------------------------------------

#[global_allocator]
static GLOBAL: common::alloc::Counting = common::alloc::Counting;
use common::alloc::counted;

// ---------------------------------------------------------------------------------------------
// Building requests with FlatBufferBuilder.
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
enum In {
    None,
    Texts(Vec<String>),
    Tokens(Vec<u32>, Vec<u32>),
    Features(Vec<f32>, u32),
    /// A union discriminant this build does not know, pointing at an empty table.
    UnknownType(u8),
}

#[derive(Clone)]
struct Req {
    id: Option<String>,
    model: Option<String>,
    version: Option<String>,
    deadline_ms: Option<u64>,
    input: In,
    identifier: Option<&'static str>,
}

fn req(model: &str, input: In) -> Req {
    Req {
        id: Some("req-1".into()),
        model: Some(model.into()),
        version: None,
        deadline_ms: None,
        input,
        identifier: Some("SLU1"),
    }
}

fn tokens(rows: &[Vec<u32>]) -> In {
    In::Tokens(rows.concat(), rows.iter().map(|r| r.len() as u32).collect())
}

fn texts(items: &[&str]) -> In {
    In::Texts(items.iter().map(|s| s.to_string()).collect())
}

fn features(rows: &[Vec<f32>]) -> In {
    In::Features(rows.concat(), rows.len() as u32)
}

impl Req {
    fn build(&self) -> Vec<u8> {
        let mut b = FlatBufferBuilder::new();
        let input: Option<(u8, WIPOffset<flatbuffers::UnionWIPOffset>)> = match &self.input {
            In::None => None,
            In::Texts(items) => {
                let offs: Vec<_> = items.iter().map(|s| b.create_string(s)).collect();
                let v = b.create_vector(&offs);
                let t = b.start_table();
                b.push_slot_always(slot::TEXTS_ITEMS, v);
                Some((input_type::TEXTS, b.end_table(t).as_union_value()))
            }
            In::Tokens(ids, lengths) => {
                let i = b.create_vector(ids);
                let l = b.create_vector(lengths);
                let t = b.start_table();
                b.push_slot_always(slot::TOK_IDS, i);
                b.push_slot_always(slot::TOK_LENGTHS, l);
                Some((input_type::TOKEN_IDS, b.end_table(t).as_union_value()))
            }
            In::Features(values, rows) => {
                let v = b.create_vector(values);
                let t = b.start_table();
                b.push_slot_always(slot::FEAT_VALUES, v);
                b.push_slot::<u32>(slot::FEAT_ROWS, *rows, 0);
                Some((input_type::FEATURES, b.end_table(t).as_union_value()))
            }
            In::UnknownType(ty) => {
                let t = b.start_table();
                Some((*ty, b.end_table(t).as_union_value()))
            }
        };
        let id = self.id.as_deref().map(|s| b.create_string(s));
        let model = self.model.as_deref().map(|s| b.create_string(s));
        let version = self.version.as_deref().map(|s| b.create_string(s));
        let t = b.start_table();
        if let Some(d) = self.deadline_ms {
            b.push_slot_always::<u64>(slot::REQ_DEADLINE_MS, d);
        }
        if let Some(id) = id {
            b.push_slot_always(slot::REQ_ID, id);
        }
        if let Some(m) = model {
            b.push_slot_always(slot::REQ_MODEL, m);
        }
        if let Some(v) = version {
            b.push_slot_always(slot::REQ_VERSION, v);
        }
        if let Some((ty, v)) = input {
            b.push_slot_always(slot::REQ_INPUT, v);
            b.push_slot::<u8>(slot::REQ_INPUT_TYPE, ty, 0);
        }
        let root = b.end_table(t);
        b.finish(root, self.identifier);
        b.finished_data().to_vec()
    }
}

fn fb_envelope(payload: impl Into<Bytes>, offset: i64) -> Envelope {
    let mut env = envelope(payload, Priority::Normal, offset);
    env.content_type = ContentType::FlatBuffers;
    env
}

fn decode(dec: &mut Decoder, payload: &[u8]) -> Result<Request, (ErrorClass, String)> {
    dec.decode(fb_envelope(payload.to_vec(), 0)).map_err(|(_, f)| (f.class, f.reason))
}

fn accept(dec: &mut Decoder, r: &Req) -> Request {
    match decode(dec, &r.build()) {
        Ok(r) => r,
        Err(e) => panic!("rejected: {e:?}"),
    }
}

fn json(dec: &mut Decoder, payload: &str) -> Request {
    match dec.decode(envelope(payload.to_string(), Priority::Normal, 0)) {
        Ok(r) => r,
        Err((_, f)) => panic!("{payload} rejected: {f:?}"),
    }
}

fn model(repo: &TestRepo, name: &str) -> Arc<LoadedModel> {
    repo.cache.get(name, None).expect("demo model")
}

fn stage(model: &LoadedModel, reqs: &[Request]) -> HostStaging {
    let mut st = HostStaging::default();
    fill_batch(model, reqs, &mut st, &mut FillScratch::default()).expect("staged");
    st
}

/// `[CLS] .. [SEP]` ids of `text` for `model`, as the tokenizer gives them.
fn tokenize(model: &LoadedModel, text: &str) -> Vec<u32> {
    let ModelInput::Text { tokenizer, max_seq_len } = &model.input else { panic!("text model") };
    let mut out = vec![0u32; *max_seq_len];
    let n =
        tokenizer.encode_into(text, *max_seq_len, &mut TokenScratch::default(), &mut out).unwrap();
    out.truncate(n);
    out
}

// ---------------------------------------------------------------------------------------------
// Decoding and staging each input kind.
// ---------------------------------------------------------------------------------------------

#[test]
fn token_ids_decode_and_stage_in_place() {
    let repo = TestRepo::new();
    let mut d = repo.decoder(Limits::default());
    let m = model(&repo, "tiny-embed");
    let rows = vec![vec![2u32, 17, 40, 3], vec![2, 99, 3], vec![2, 450, 0, 449, 1, 3]];
    let mut r = req("tiny-embed", tokens(&rows));
    r.id = Some("tok-7".into());
    let payload = r.build();
    let q = decode(&mut d, &payload).unwrap();
    assert_eq!(q.id(), "tok-7");
    assert!(matches!(q.id, sluice::core::IdText::Span(_)), "id borrowed from the payload");
    assert_eq!(
        (q.input_kind, q.items, q.max_tokens, q.deadline_ms),
        (InputKind::FbTokens, 3, 6, None)
    );

    let st = stage(&m, &[q]);
    assert_eq!((st.rows, st.seq_len), (3, 6));
    let ModelInput::Text { tokenizer, .. } = &m.input else { unreachable!() };
    let pad = tokenizer.pad_id();
    for (i, row) in rows.iter().enumerate() {
        let got = &st.ids[i * 6..(i + 1) * 6];
        assert_eq!(&got[..row.len()], &row[..], "row {i} ids");
        assert!(got[row.len()..].iter().all(|&x| x == pad), "row {i} padding");
        let mask = &st.mask[i * 6..(i + 1) * 6];
        assert!(
            mask[..row.len()].iter().all(|&x| x == 1) && mask[row.len()..].iter().all(|&x| x == 0)
        );
        assert_eq!(st.row_tokens[i] as usize, row.len());
    }

    // Pre-tokenized ids equal to what Sluice's tokenizer makes of a text stage exactly like
    // that text sent as JSON, in a mixed batch too.
    let a = tokenize(&m, "the cat sat");
    let b = tokenize(&m, "a quick brown fox");
    let fb = accept(&mut d, &req("tiny-embed", tokens(&[a, b])));
    let js = json(
        &mut d,
        r#"{"id":"j","model":"tiny-embed","input":["the cat sat","a quick brown fox"]}"#,
    );
    assert_eq!((fb.items, fb.max_tokens), (js.items, js.max_tokens));
    let st_fb = stage(&m, &[fb]);
    let st_js = stage(&m, &[js]);
    assert_eq!(
        (&st_fb.ids, &st_fb.mask, &st_fb.row_tokens, st_fb.seq_len),
        (&st_js.ids, &st_js.mask, &st_js.row_tokens, st_js.seq_len)
    );
}

#[test]
fn texts_stage_like_json() {
    let repo = TestRepo::new();
    let mut d = repo.decoder(Limits::default());
    let m = model(&repo, "tiny-embed");
    let items = [
        "the cat",
        "a quick brown fox jumps over the lazy dog",
        "Ünïcödé, punctuation!? and\nnewlines",
        "x",
    ];
    let fb = accept(&mut d, &req("tiny-embed", texts(&items)));
    assert_eq!(fb.input_kind, InputKind::FbTexts);
    let js_payload =
        serde_json::json!({"id": "j", "model": "tiny-embed", "input": items}).to_string();
    let js = json(&mut d, &js_payload);
    assert_eq!((fb.items, fb.max_tokens), (js.items, js.max_tokens));
    let st_fb = stage(&m, &[fb]);
    let st_js = stage(&m, &[js]);
    assert_eq!(
        (&st_fb.ids, &st_fb.mask, &st_fb.row_tokens, st_fb.seq_len),
        (&st_js.ids, &st_js.mask, &st_js.row_tokens, st_js.seq_len)
    );

    // Truncation at max_seq_len, like JSON.
    let long = vec!["the"; 1000].join(" ");
    let fb = accept(&mut d, &req("tiny-embed", texts(&[&long])));
    assert_eq!(fb.max_tokens, 64);

    // A batch mixing JSON, FlatBuffers Texts and FlatBuffers TokenIds for one model.
    let j = json(&mut d, r#"{"id":"j","model":"tiny-embed","input":"the cat"}"#);
    let t = accept(&mut d, &req("tiny-embed", texts(&["a quick brown fox"])));
    let k = accept(&mut d, &req("tiny-embed", tokens(&[tokenize(&m, "the the the")])));
    let st = stage(&m, &[j, t, k]);
    let single = |text: &str| {
        let s = stage(
            &m,
            &[json(
                &mut repo.decoder(Limits::default()),
                &format!(r#"{{"id":"s","model":"tiny-embed","input":"{text}"}}"#),
            )],
        );
        s.ids[..s.row_tokens[0] as usize].to_vec()
    };
    assert_eq!(st.rows, 3);
    for (row, text) in ["the cat", "a quick brown fox", "the the the"].iter().enumerate() {
        let n = st.row_tokens[row] as usize;
        assert_eq!(st.ids[row * st.seq_len..row * st.seq_len + n], single(text)[..], "row {row}");
    }
}

#[test]
fn features_decode_and_stage() {
    let repo = TestRepo::new();
    let mut d = repo.decoder(Limits::default());
    let m = model(&repo, "tabular");
    let rows = vec![
        vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.5],
        vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1e3],
        vec![-0.25; 8],
    ];
    let mut r = req("tabular", features(&rows));
    r.version = Some("1".into());
    r.deadline_ms = Some(4_102_444_800_000); // 2100-01-01
    let q = accept(&mut d, &r);
    assert_eq!(
        (q.input_kind, q.items, q.max_tokens, q.deadline_ms),
        (InputKind::FbFeatures, 3, 1, Some(4_102_444_800_000))
    );
    let st = stage(&m, &[q]);
    assert_eq!((st.rows, st.width), (3, 8));
    assert_eq!(st.features[..24], rows.concat()[..]);

    // Same values as JSON stage identically, also mixed in one batch.
    let js = json(
        &mut d,
        r#"{"id":"j","model":"tabular","input":[[1,2,3,4,5,6,7,8.5],[0,0,0,0,0,0,0,-1e3]]}"#,
    );
    let fb = accept(&mut d, &req("tabular", features(&rows[..2])));
    let st = stage(&m, &[js, fb]);
    assert_eq!(st.features[..16], st.features[16..32]);
}

/// Buffers made by the Python example in schemas/README.md (`flatbuffers` 25.12.19 on PyPI).
#[test]
fn python_built_buffers() {
    let repo = TestRepo::new();
    let mut d = repo.decoder(Limits::default());
    let hex = |s: &str| {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
    };
    let tok = hex("18000000534c55311000140010000c00000000000b00040010000000380000000000000208000000140000000a00000074696e792d656d6265640000080000006f726465722d34320000000008000c00080004000800000008000000100000000200000004000000030000000700000002000000110000002800000003000000020000006300000003000000");
    let txt = hex("1c000000534c553100000000100020001c00180014000c000b00040010000000440000000000000100d8c32cbb0300000c000000100000001c00000001000000310000000a00000074696e792d656d626564000003000000742d310000000600080004000600000004000000020000001400000004000000050000006120646f67000000070000007468652063617400");
    let feat = hex("18000000534c55311000140010000c00000000000b000400100000002c00000000000003080000001000000007000000746162756c61720003000000662d310008000c0008000400080000000200000004000000100000000000803f0000004000004040000080400000a0400000c0400000e0400000084100000000000000000000000000000000000000000000000000000000000080bf");

    let fb = flatbuf::parse(&tok).unwrap();
    assert_eq!(
        (fb.id(), fb.model(), fb.version(), fb.deadline_ms()),
        ("order-42", "tiny-embed", None, None)
    );
    let mut rows = Vec::new();
    fb.for_each_token_row(|_, r| {
        rows.push(r.iter().collect::<Vec<_>>());
        Ok(())
    })
    .unwrap();
    assert_eq!(rows, vec![vec![2, 17, 40, 3], vec![2, 99, 3]]);
    let q = decode(&mut d, &tok).unwrap();
    assert_eq!(
        (q.id(), q.input_kind, q.items, q.max_tokens),
        ("order-42", InputKind::FbTokens, 2, 4)
    );

    let fb = flatbuf::parse(&txt).unwrap();
    assert_eq!(
        (fb.id(), fb.version(), fb.deadline_ms()),
        ("t-1", Some("1"), Some(4_102_444_800_000))
    );
    let mut items = Vec::new();
    fb.for_each_text(|_, s| {
        items.push(s.to_string());
        Ok(())
    })
    .unwrap();
    assert_eq!(items, ["the cat", "a dog"]);
    assert_eq!(decode(&mut d, &txt).unwrap().input_kind, InputKind::FbTexts);

    let q = decode(&mut d, &feat).unwrap();
    assert_eq!((q.input_kind, q.items), (InputKind::FbFeatures, 2));
    let st = stage(&model(&repo, "tabular"), &[q]);
    assert_eq!(
        st.features[..16],
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    );
}

#[test]
fn library_builder_round_trips() {
    use flatbuf::{build_request, InputArg, RequestArgs};
    let repo = TestRepo::new();
    let mut d = repo.decoder(Limits::default());
    let mut fbb = FlatBufferBuilder::new();
    let ids = [2u32, 17, 40, 3, 2, 3];
    let args = RequestArgs {
        id: "lib-1",
        model: "tiny-embed",
        version: Some("1"),
        deadline_ms: Some(4_102_444_800_000),
        input: Some(InputArg::TokenIds { ids: &ids, lengths: &[4, 2] }),
    };
    let p = build_request(&mut fbb, &args).to_vec();
    let q = decode(&mut d, &p).unwrap();
    assert_eq!(
        (q.id(), q.input_kind, q.items, q.max_tokens, q.deadline_ms),
        ("lib-1", InputKind::FbTokens, 2, 4, Some(4_102_444_800_000))
    );
    // The builder is reusable (reset on each call).
    let p2 = build_request(
        &mut fbb,
        &RequestArgs {
            id: "lib-2",
            model: "tabular",
            input: Some(InputArg::Features { values: &[0.5; 8], rows: 1 }),
            ..Default::default()
        },
    )
    .to_vec();
    let q = decode(&mut d, &p2).unwrap();
    assert_eq!((q.id(), q.input_kind, q.items), ("lib-2", InputKind::FbFeatures, 1));
    let p3 = build_request(
        &mut fbb,
        &RequestArgs {
            id: "lib-3",
            model: "tiny-embed",
            input: Some(InputArg::Texts(&["the cat", "a dog"])),
            ..Default::default()
        },
    )
    .to_vec();
    let q = decode(&mut d, &p3).unwrap();
    assert_eq!((q.input_kind, q.items), (InputKind::FbTexts, 2));
}

/// The Rust examples of schemas/README.md, verbatim.
#[test]
fn readme_rust_examples() {
    let repo = TestRepo::new();
    let mut d = repo.decoder(Limits::default());
    let from_lib = {
        use flatbuf::{build_request, InputArg, RequestArgs};

        let mut fbb = FlatBufferBuilder::new();
        let payload: &[u8] = build_request(
            &mut fbb,
            &RequestArgs {
                id: "order-42",
                model: "tiny-embed",
                version: None,
                deadline_ms: Some(4102444800000),
                input: Some(InputArg::TokenIds {
                    ids: &[2, 17, 40, 3, 2, 99, 3],
                    lengths: &[4, 3],
                }),
            },
        );
        payload.to_vec()
    };
    let bare = {
        let mut b = FlatBufferBuilder::new();
        let ids = b.create_vector(&[2u32, 17, 40, 3, 2, 99, 3]);
        let lengths = b.create_vector(&[4u32, 3]);
        let t = b.start_table(); // table TokenIds
        b.push_slot_always(4, ids); //   ids
        b.push_slot_always(6, lengths); //   lengths
        let input = b.end_table(t);
        let id = b.create_string("order-42");
        let model = b.create_string("tiny-embed");
        let t = b.start_table(); // table Request
        b.push_slot_always::<u64>(10, 4102444800000); //   deadline_ms (optional: omit for none)
        b.push_slot_always(14, input); //   input
        b.push_slot_always(4, id); //   id
        b.push_slot_always(6, model); //   model
        b.push_slot::<u8>(12, 2, 0); //   input_type = TokenIds
        let root = b.end_table(t);
        b.finish(root, Some("SLU1"));
        let payload: &[u8] = b.finished_data();
        payload.to_vec()
    };
    for p in [from_lib, bare] {
        let q = decode(&mut d, &p).unwrap();
        assert_eq!(
            (q.id(), q.input_kind, q.items, q.max_tokens, q.deadline_ms),
            ("order-42", InputKind::FbTokens, 2, 4, Some(4102444800000))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Validation: every error with its class.
// ---------------------------------------------------------------------------------------------

fn verdict(dec: &mut Decoder, r: &Req) -> Result<(u32, u32), (ErrorClass, String)> {
    decode(dec, &r.build()).map(|q| (q.items, q.max_tokens))
}

#[test]
fn validation_errors_have_their_class() {
    use ErrorClass::*;
    let repo = TestRepo::new();
    let mut d = repo.decoder(Limits::default());
    let ok_tokens = tokens(&[vec![2, 17, 3]]);
    let ok_features = features(&[vec![0.5; 8]]);
    let with = |f: &dyn Fn(&mut Req)| {
        let mut r = req("tiny-embed", ok_tokens.clone());
        f(&mut r);
        r
    };
    let row = |n: usize| (0..n as u32).map(|i| i % 400).collect::<Vec<u32>>();

    let cases: Vec<(&str, Req, ErrorClass)> = vec![
        // Envelope, as the JSON path.
        ("empty id", with(&|r| r.id = Some(String::new())), Validation),
        ("id over 256 bytes", with(&|r| r.id = Some("x".repeat(257))), Validation),
        ("unknown model", with(&|r| r.model = Some("nope".into())), UnknownModel),
        ("bad model name", with(&|r| r.model = Some("../tiny-embed".into())), UnknownModel),
        ("unknown version", with(&|r| r.version = Some("9".into())), UnknownModel),
        ("deadline passed", with(&|r| r.deadline_ms = Some(1000)), Expired),
        ("deadline 0 present", with(&|r| r.deadline_ms = Some(0)), Expired),
        ("no input", with(&|r| r.input = In::None), Validation),
        ("unknown union type", with(&|r| r.input = In::UnknownType(9)), Validation),
        // Not a valid buffer of the schema: parse.
        ("missing required id", with(&|r| r.id = None), Parse),
        ("missing required model", with(&|r| r.model = None), Parse),
        ("no file identifier", with(&|r| r.identifier = None), Parse),
        ("other file identifier", with(&|r| r.identifier = Some("SLU2")), Parse),
        // Texts.
        ("texts empty", req("tiny-embed", In::Texts(vec![])), Validation),
        ("texts for tabular", req("tabular", texts(&["x"])), Validation),
        ("65 texts", req("tiny-embed", In::Texts(vec!["a".into(); 65])), TooLarge),
        // TokenIds.
        ("tokens empty", req("tiny-embed", tokens(&[])), Validation),
        ("tokens for tabular", req("tabular", ok_tokens.clone()), Validation),
        ("id = vocab size", req("tiny-embed", tokens(&[vec![2, 451, 3]])), Validation),
        ("id u32::MAX", req("tiny-embed", tokens(&[vec![2, u32::MAX, 3]])), Validation),
        ("row of 1 token", req("tiny-embed", tokens(&[vec![2]])), Validation),
        ("row of 0 tokens", req("tiny-embed", In::Tokens(vec![2, 3], vec![2, 0])), Validation),
        ("row over max_seq_len", req("tiny-embed", tokens(&[row(65)])), Validation),
        (
            "lengths sum short of ids",
            req("tiny-embed", In::Tokens(vec![2, 5, 3, 9], vec![3])),
            Validation,
        ),
        (
            "lengths sum past ids",
            req("tiny-embed", In::Tokens(vec![2, 5, 3], vec![3, 2])),
            Validation,
        ),
        (
            "lengths overflow",
            req("tiny-embed", In::Tokens(vec![2, 5, 3], vec![3, u32::MAX])),
            Validation,
        ),
        ("ids without lengths", req("tiny-embed", In::Tokens(vec![2, 5, 3], vec![])), Validation),
        ("65 token rows", req("tiny-embed", tokens(&vec![vec![2, 3]; 65])), TooLarge),
        // Features.
        ("features for text", req("tiny-embed", ok_features.clone()), Validation),
        ("features rows 0", req("tabular", In::Features(vec![], 0)), Validation),
        ("features rows 0 with values", req("tabular", In::Features(vec![1.0; 8], 0)), Validation),
        ("7 features", req("tabular", In::Features(vec![1.0; 7], 1)), Validation),
        ("9 features", req("tabular", In::Features(vec![1.0; 9], 1)), Validation),
        ("rows × width mismatch", req("tabular", In::Features(vec![1.0; 16], 3)), Validation),
        (
            "NaN",
            req(
                "tabular",
                features(&[vec![1.0; 8], {
                    let mut v = vec![1.0; 8];
                    v[3] = f32::NAN;
                    v
                }]),
            ),
            Validation,
        ),
        (
            "infinity",
            req(
                "tabular",
                features(&[{
                    let mut v = vec![1.0; 8];
                    v[7] = f32::INFINITY;
                    v
                }]),
            ),
            Validation,
        ),
        (
            "-infinity",
            req(
                "tabular",
                features(&[{
                    let mut v = vec![1.0; 8];
                    v[0] = f32::NEG_INFINITY;
                    v
                }]),
            ),
            Validation,
        ),
        ("65 feature rows", req("tabular", features(&vec![vec![0.0; 8]; 65])), TooLarge),
    ];
    for (what, r, want) in cases {
        match verdict(&mut d, &r) {
            Ok(v) => panic!("{what}: accepted as {v:?}"),
            Err((got, reason)) => {
                assert_eq!(got, want, "{what}: {reason}");
                assert!(!reason.is_empty(), "{what}");
            }
        }
    }

    // Boundaries that are fine.
    assert_eq!(verdict(&mut d, &req("tiny-embed", tokens(&[vec![2, 3]]))).unwrap(), (1, 2));
    assert_eq!(
        verdict(&mut d, &req("tiny-embed", tokens(&[row(64), vec![0, 450]]))).unwrap(),
        (2, 64)
    );
    assert_eq!(
        verdict(&mut d, &req("tiny-embed", tokens(&vec![vec![2, 3]; 64]))).unwrap(),
        (64, 2)
    );
    assert_eq!(
        verdict(&mut d, &req("tabular", features(&vec![vec![f32::MAX; 8]; 64]))).unwrap(),
        (64, 1)
    );
    assert_eq!(
        verdict(&mut d, &with(&|r| r.id = Some("é".repeat(128)))).unwrap(),
        (1, 3),
        "256-byte id"
    );
    assert_eq!(verdict(&mut d, &with(&|r| r.version = Some("1".into()))).unwrap(), (1, 3));
    let q = decode(&mut d, &with(&|r| r.id = Some("é".repeat(128))).build()).unwrap();
    assert_eq!(q.id(), "é".repeat(128));
}

#[test]
fn limits_apply_like_json() {
    use ErrorClass::*;
    let repo = TestRepo::new();
    let limits = Limits {
        max_record_bytes: 2048,
        max_items: 3,
        max_id_bytes: 8,
        caps: BatchCaps { max_rows: 64, max_tokens: 100 },
    };
    let mut d = repo.decoder(limits);
    let long_row = (0..64u32).collect::<Vec<_>>();
    let cases: Vec<(&str, Req, ErrorClass)> = vec![
        ("4 texts over max_items 3", req("tiny-embed", texts(&["a", "b", "c", "d"])), TooLarge),
        ("4 token rows", req("tiny-embed", tokens(&vec![vec![2, 3]; 4])), TooLarge),
        ("4 feature rows", req("tabular", features(&vec![vec![0.0; 8]; 4])), TooLarge),
        (
            "2 × 64 padded tokens over 100",
            req("tiny-embed", tokens(&[long_row.clone(), long_row.clone()])),
            TooLarge,
        ),
        (
            "2 × 64 padded tokens of text",
            req("tiny-embed", In::Texts(vec![vec!["the"; 100].join(" "); 2])),
            TooLarge,
        ),
        (
            "record over maxRecordBytes",
            req("tabular", In::Features(vec![0.0; 8 * 80], 80)),
            TooLarge,
        ),
        (
            "id over max_id_bytes",
            {
                let mut r = req("tiny-embed", tokens(&[vec![2, 3]]));
                r.id = Some("123456789".into());
                r
            },
            Validation,
        ),
    ];
    for (what, r, want) in cases {
        let (got, reason) = verdict(&mut d, &r).expect_err(what);
        assert_eq!(got, want, "{what}: {reason}");
    }
    let (_, reason) =
        verdict(&mut d, &req("tabular", In::Features(vec![0.0; 8 * 80], 80))).unwrap_err();
    assert!(reason.contains("maxRecordBytes"), "{reason}");
    let (_, reason) =
        verdict(&mut d, &req("tiny-embed", tokens(&[long_row.clone(), long_row]))).unwrap_err();
    assert!(reason.contains("maxBatchTokens"), "{reason}");
    assert_eq!(
        verdict(&mut d, &req("tiny-embed", tokens(&[(0..33).collect(), vec![2, 3], vec![2, 3]])))
            .unwrap(),
        (3, 33)
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile bytes.
// ---------------------------------------------------------------------------------------------

/// Decodes `payload`; an accepted request must also stage cleanly. Returns the verdict.
fn survive(dec: &mut Decoder, repo: &TestRepo, payload: Vec<u8>) -> Result<(), ErrorClass> {
    match dec.decode(fb_envelope(payload, 0)) {
        Ok(q) => {
            let m = q.model.clone();
            let mut st = HostStaging::default();
            fill_batch(&m, std::slice::from_ref(&q), &mut st, &mut FillScratch::default())
                .expect("an accepted request stages");
            assert_eq!(st.rows, q.items as usize);
            let _ = repo;
            Ok(())
        }
        Err((_, f)) => {
            assert!(!f.reason.is_empty());
            Err(f.class)
        }
    }
}

#[test]
fn garbage_never_panics() {
    let repo = TestRepo::new();
    let mut d = repo.decoder(Limits::default());
    let mut rng = SeededRng::new(0x5107_f1a7);
    let valid: Vec<Vec<u8>> = vec![
        req("tiny-embed", tokens(&[vec![2, 17, 40, 3], vec![2, 99, 3]])).build(),
        req("tiny-embed", texts(&["the cat", "a quick brown fox"])).build(),
        {
            let mut r = req("tabular", features(&[vec![1.0; 8], vec![-2.0; 8]]));
            r.version = Some("1".into());
            r.deadline_ms = Some(4_102_444_800_000);
            r.build()
        },
    ];
    for v in &valid {
        assert_eq!(survive(&mut d, &repo, v.clone()), Ok(()), "the seeds are valid");
    }
    let mut cases = 0usize;
    let mut tally = std::collections::BTreeMap::<String, usize>::new();

    // 1. Random bytes, half of them carrying the right identifier so the verifier runs.
    for i in 0..2000 {
        let len = (rng.next_u64() % 256) as usize;
        let mut p: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if i % 2 == 0 && p.len() >= 8 {
            p[4..8].copy_from_slice(b"SLU1");
            // A root offset inside the buffer, often.
            let root = (rng.next_u64() % p.len() as u64) as u32;
            p[..4].copy_from_slice(&root.to_le_bytes());
        }
        let v = survive(&mut d, &repo, p);
        assert!(
            matches!(v, Err(ErrorClass::Parse | ErrorClass::Validation)),
            "random bytes: {v:?}"
        );
        *tally.entry(format!("random {v:?}")).or_default() += 1;
        cases += 1;
    }
    // 2. Every truncation of each valid buffer.
    for v in &valid {
        for n in 0..v.len() {
            let verdict = survive(&mut d, &repo, v[..n].to_vec());
            assert!(
                matches!(verdict, Err(ErrorClass::Parse | ErrorClass::Validation)),
                "truncated to {n}: {verdict:?}"
            );
            *tally.entry(format!("truncated {verdict:?}")).or_default() += 1;
            cases += 1;
        }
    }
    // 3. Bit flips (1 to 3 bits) of the valid buffers, up to 5000 cases in all. A flip can
    //    land in data (a token id, a letter of the model name, the deadline), so a flipped
    //    buffer may be valid, name another model or be expired; it must never panic or be
    //    misread out of bounds (accepted ones are staged).
    while cases < 5000 {
        let v = &valid[cases % valid.len()];
        let mut p = v.clone();
        for _ in 0..1 + rng.next_u64() % 3 {
            let bit = (rng.next_u64() % (p.len() as u64 * 8)) as usize;
            p[bit / 8] ^= 1 << (bit % 8);
        }
        let verdict = survive(&mut d, &repo, p);
        assert!(
            matches!(
                verdict,
                Ok(())
                    | Err(ErrorClass::Parse
                        | ErrorClass::Validation
                        | ErrorClass::UnknownModel
                        | ErrorClass::Expired
                        | ErrorClass::TooLarge)
            ),
            "bit flip: {verdict:?}"
        );
        *tally.entry(format!("flipped {verdict:?}")).or_default() += 1;
        cases += 1;
    }
    println!("{cases} hostile cases: {tally:?}");
    assert!(tally.keys().any(|k| k.starts_with("flipped Err(Parse")), "flips reach the verifier");
    assert!(
        tally.keys().any(|k| k.starts_with("flipped Err(Validation")),
        "flips reach validation"
    );
}

#[test]
fn hostile_shapes_within_valid_buffers() {
    let repo = TestRepo::new();
    let mut d = repo.decoder(Limits::default());
    // A Texts vector whose entries all point at one shared string (a DAG "bomb"): bounded by
    // the verifier's apparent-size limit or rejected as too large, never a hang.
    let mut b = FlatBufferBuilder::new();
    let s = b.create_string(&"x".repeat(60_000));
    let offs = vec![s; 20_000];
    let v = b.create_vector(&offs);
    let t = b.start_table();
    b.push_slot_always(slot::TEXTS_ITEMS, v);
    let inp = b.end_table(t);
    let id = b.create_string("bomb");
    let model = b.create_string("tiny-embed");
    let t = b.start_table();
    b.push_slot_always(slot::REQ_ID, id);
    b.push_slot_always(slot::REQ_MODEL, model);
    b.push_slot_always(slot::REQ_INPUT, inp);
    b.push_slot::<u8>(slot::REQ_INPUT_TYPE, input_type::TEXTS, 0);
    let root = b.end_table(t);
    b.finish(root, Some("SLU1"));
    let started = std::time::Instant::now();
    let (class, reason) = decode(&mut d, b.finished_data()).unwrap_err();
    assert_eq!(class, ErrorClass::Parse, "{reason}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));

    // A JSON content type with a FlatBuffer is a JSON parse error, and vice versa.
    let p = req("tiny-embed", tokens(&[vec![2, 3]])).build();
    let e = d.decode(envelope(p, Priority::Normal, 0)).unwrap_err().1;
    assert_eq!(e.class, ErrorClass::Parse);
    let e = d
        .decode(fb_envelope(&br#"{"id":"a","model":"tiny-embed","input":"x"}"#[..], 0))
        .unwrap_err()
        .1;
    assert_eq!(e.class, ErrorClass::Parse);
}

// ---------------------------------------------------------------------------------------------
// No per-request allocation.
// ---------------------------------------------------------------------------------------------

#[test]
fn decode_and_stage_allocate_nothing_per_request() {
    // The counter is live on this thread.
    assert_eq!(counted(|| std::hint::black_box(Vec::<u8>::with_capacity(16))).1, 1);
    let repo = TestRepo::new();
    let mut d = repo.decoder(Limits::default());
    let text = model(&repo, "tiny-embed");
    let tab = model(&repo, "tabular");
    let make = |kind: usize, i: usize| -> Bytes {
        let mut r = match kind {
            0 => req("tiny-embed", tokens(&[vec![2, (i % 400) as u32, 17, 3], vec![2, 40, 3]])),
            1 => req("tabular", features(&[vec![i as f32; 8]])),
            _ => req("tiny-embed", texts(&["the cat", "a quick brown fox"])),
        };
        r.id = Some(format!("r-{i}"));
        r.deadline_ms = Some(4_102_444_800_000);
        Bytes::from(r.build())
    };
    for (kind, name, m) in [(0, "TokenIds", &text), (1, "Features", &tab), (2, "Texts", &text)] {
        let payloads: Vec<Bytes> = (0..64).map(|i| make(kind, i)).collect();
        let mut reqs: Vec<Request> = Vec::with_capacity(64);
        let mut st = HostStaging::default();
        let mut scratch = FillScratch::default();
        let mut round = |n: usize, reqs: &mut Vec<Request>| {
            reqs.clear();
            for (i, p) in payloads[..n].iter().enumerate() {
                match d.decode(fb_envelope(p.clone(), i as i64)) {
                    Ok(q) => reqs.push(q),
                    Err((_, f)) => panic!("rejected: {f:?}"),
                }
            }
            fill_batch(m, reqs, &mut st, &mut scratch).expect("staged");
            assert_eq!(st.rows, reqs.iter().map(|q| q.items as usize).sum::<usize>());
        };
        for _ in 0..3 {
            round(64, &mut reqs);
            round(8, &mut reqs);
        }
        let (_, a64) = counted(|| round(64, &mut reqs));
        let (_, a8) = counted(|| round(8, &mut reqs));
        println!("{name}: allocations decoding + staging 64 requests = {a64}, 8 requests = {a8}");
        assert_eq!((a64, a8), (0, 0), "{name}: decode + stage must not allocate in steady state");
        reqs.clear();
    }
}
