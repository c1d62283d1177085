//! Validation at ingest: every input shape, every error class a record can get before it is
//! queued, and the nastiest inputs we could think of.

mod common;

use common::{envelope, TestRepo};
use sluice::core::BatchCaps;
use sluice::core::ErrorClass;
use sluice::core::{ContentType, Limits, Priority};
use sluice::decode::Decoder;

fn verdict(dec: &mut Decoder, payload: &[u8]) -> Result<(u32, u32), (ErrorClass, String)> {
    match dec.decode(envelope(payload.to_vec(), Priority::Normal, 0)) {
        Ok(r) => Ok((r.items, r.max_tokens)),
        Err((_, f)) => Err((f.class, f.reason)),
    }
}

fn class(dec: &mut Decoder, payload: &str) -> ErrorClass {
    match verdict(dec, payload.as_bytes()) {
        Ok(_) => panic!("{payload} was accepted"),
        Err((c, _)) => c,
    }
}

#[test]
fn text_inputs() {
    let repo = TestRepo::new();
    let mut d = repo.decoder(Limits::default());
    let (items, tokens) =
        verdict(&mut d, br#"{"id":"a","model":"tiny-embed","input":"the cat"}"#).unwrap();
    assert_eq!((items, tokens), (1, 4), "[CLS] the cat [SEP]");
    let (items, tokens) =
        verdict(&mut d, br#"{"id":"a","model":"tiny-embed","input":["the","the the the"]}"#)
            .unwrap();
    assert_eq!((items, tokens), (2, 5));
    // Escaped ids are decoded and echoed exactly.
    let r = d
        .decode(envelope(
            br#"{"id":"a\"b\u00e9","model":"tiny-embed","input":"x"}"#.to_vec(),
            Priority::Normal,
            0,
        ))
        .unwrap();
    assert_eq!(r.id(), "a\"bé");
    // Truncation at the model's max_seq_len.
    let long = vec!["the"; 1000].join(" ");
    let (_, tokens) = verdict(
        &mut d,
        format!(r#"{{"id":"a","model":"tiny-embed","input":"{long}"}}"#).as_bytes(),
    )
    .unwrap();
    assert_eq!(tokens, 64);
    // Unknown fields are ignored (forward compatibility).
    assert!(verdict(&mut d, br#"{"id":"a","model":"tiny-embed","input":"x","extra":{"n":[1,2]}}"#)
        .is_ok());

    for bad in [
        r#"{"id":"a","model":"tiny-embed","input":3}"#,
        r#"{"id":"a","model":"tiny-embed","input":["ok", 3]}"#,
        r#"{"id":"a","model":"tiny-embed","input":["ok", null]}"#,
        r#"{"id":"a","model":"tiny-embed","input":[["nested"]]}"#,
        r#"{"id":"a","model":"tiny-embed","input":[]}"#,
        r#"{"id":"a","model":"tiny-embed","input":null}"#,
        r#"{"id":"a","model":"tiny-embed","input":{"text":"x"}}"#,
        r#"{"id":"a","model":"tiny-embed"}"#,
    ] {
        assert_eq!(class(&mut d, bad), ErrorClass::Validation, "{bad}");
    }
}

#[test]
fn tabular_inputs() {
    let repo = TestRepo::new();
    let mut d = repo.decoder(Limits::default());
    assert_eq!(
        verdict(&mut d, br#"{"id":"a","model":"tabular","input":[1,2,3,4,5,6,7,8.5]}"#).unwrap(),
        (1, 1)
    );
    assert_eq!(
        verdict(
            &mut d,
            br#"{"id":"a","model":"tabular","input":[[1,2,3,4,5,6,7,8],[0,0,0,0,0,0,0,-1e3]]}"#
        )
        .unwrap(),
        (2, 1)
    );
    for bad in [
        r#"{"id":"a","model":"tabular","input":[1,2,3]}"#,
        r#"{"id":"a","model":"tabular","input":[1,2,3,4,5,6,7,8,9]}"#,
        r#"{"id":"a","model":"tabular","input":[[1,2,3,4,5,6,7,8],[1]]}"#,
        r#"{"id":"a","model":"tabular","input":[1,2,3,4,5,6,7,"8"]}"#,
        r#"{"id":"a","model":"tabular","input":[1,2,3,4,5,6,7,null]}"#,
        r#"{"id":"a","model":"tabular","input":[1,2,3,4,5,6,7,1e39]}"#,
        r#"{"id":"a","model":"tabular","input":"text"}"#,
        r#"{"id":"a","model":"tabular","input":[[[1]]]}"#,
    ] {
        assert_eq!(class(&mut d, bad), ErrorClass::Validation, "{bad}");
    }
}

#[test]
fn envelope_fields() {
    let repo = TestRepo::new();
    let mut d = repo.decoder(Limits::default());
    for bad in [
        r#"{"model":"tiny-embed","input":"x"}"#,
        r#"{"id":"","model":"tiny-embed","input":"x"}"#,
        r#"{"id":42,"model":"tiny-embed","input":"x"}"#,
        r#"{"id":null,"model":"tiny-embed","input":"x"}"#,
        r#"{"id":"a","input":"x"}"#,
        r#"{"id":"a","model":7,"input":"x"}"#,
        r#"{"id":"a","model":"tiny-embed","input":"x","deadline_ms":"soon"}"#,
        r#"{"id":"a","model":"tiny-embed","input":"x","deadline_ms":-5}"#,
        r#"{"id":"a","id":"b","model":"tiny-embed","input":"x"}"#,
        r#"[1,2,3]"#,
        r#""just a string""#,
        r#"null"#,
    ] {
        assert_eq!(class(&mut d, bad), ErrorClass::Validation, "{bad}");
    }
    let long_id = "x".repeat(257);
    assert_eq!(
        class(&mut d, &format!(r#"{{"id":"{long_id}","model":"tiny-embed","input":"x"}}"#)),
        ErrorClass::Validation
    );
}

#[test]
fn parse_errors_and_hostile_bytes() {
    let repo = TestRepo::new();
    let mut d = repo.decoder(Limits::default());
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"{\"id\":\"a\",\"model\":\"tiny-embed\",\"input\":\"x\"".to_vec(),
        b"{\"id\":\"a\",\"model\":\"tiny-embed\",\"input\":\"\xff\xfe\"}".to_vec(),
        b"\xc3\x28 not utf-8".to_vec(),
        b"{\"id\":\"a\",\"model\":\"tabular\",\"input\":[NaN,1,2,3,4,5,6,7]}".to_vec(),
        b"{\"id\":\"a\",\"model\":\"tabular\",\"input\":[Infinity,1,2,3,4,5,6,7]}".to_vec(),
        format!(r#"{{"id":"a","model":"tiny-embed","input":{deep}}}"#).into_bytes(),
        b"{\"id\":\"a\"} trailing".to_vec(),
        b"\x00\x01\x02\x03".to_vec(),
    ];
    for c in cases {
        match verdict(&mut d, &c) {
            Ok(_) => panic!("{:?} accepted", String::from_utf8_lossy(&c)),
            Err((cl, reason)) => {
                assert!(
                    matches!(cl, ErrorClass::Parse | ErrorClass::Validation),
                    "{cl:?} for {:?}",
                    String::from_utf8_lossy(&c)
                );
                assert!(!reason.is_empty());
            }
        }
    }
    // Invalid UTF-8 and non-JSON are parse errors specifically.
    assert_eq!(verdict(&mut d, b"\xc3\x28 not utf-8").unwrap_err().0, ErrorClass::Parse);
    assert_eq!(
        verdict(&mut d, b"{\"id\":\"a\",\"model\":\"tabular\",\"input\":[NaN]}").unwrap_err().0,
        ErrorClass::Parse
    );
    // A FlatBuffers content type with garbage is rejected, not crashed on.
    let mut env = envelope(b"\x04\x00\x00\x00garbage".to_vec(), Priority::Normal, 0);
    env.content_type = ContentType::FlatBuffers;
    assert!(d.decode(env).is_err());
}

#[test]
fn unknown_models_and_limits() {
    let repo = TestRepo::new();
    let limits = Limits {
        max_record_bytes: 2048,
        max_items: 3,
        max_id_bytes: 256,
        caps: BatchCaps { max_rows: 64, max_tokens: 100 },
    };
    let mut d = repo.decoder(limits);
    assert_eq!(class(&mut d, r#"{"id":"a","model":"nope","input":"x"}"#), ErrorClass::UnknownModel);
    assert_eq!(
        class(&mut d, r#"{"id":"a","model":"tiny-embed","version":"9","input":"x"}"#),
        ErrorClass::UnknownModel
    );
    assert_eq!(
        class(&mut d, r#"{"id":"a","model":"../tiny-embed","input":"x"}"#),
        ErrorClass::UnknownModel
    );
    assert_eq!(
        class(&mut d, r#"{"id":"a","model":"tiny-embed","input":["a","b","c","d"]}"#),
        ErrorClass::TooLarge
    );
    let big = "x".repeat(3000);
    let (c, reason) =
        verdict(&mut d, format!(r#"{{"id":"a","model":"tiny-embed","input":"{big}"}}"#).as_bytes())
            .unwrap_err();
    assert_eq!(c, ErrorClass::TooLarge);
    assert!(reason.contains("maxRecordBytes"), "{reason}");
    // 3 inputs × 64 tokens = 192 padded tokens > the 100-token batch budget.
    let long = vec!["the"; 100].join(" ");
    assert_eq!(
        class(&mut d, &format!(r#"{{"id":"a","model":"tiny-embed","input":["{long}","{long}"]}}"#)),
        ErrorClass::TooLarge
    );
    assert_eq!(
        class(&mut d, r#"{"id":"a","model":"tiny-embed","input":"x","deadline_ms":1000}"#),
        ErrorClass::Expired
    );
}
