//! Model loads off the ingest thread: a decoder with background loads never loads inline. A
//! record whose model version is not loaded comes back to wait, the rest keep decoding, and
//! the finished load serves the waiting record (even if the cache has evicted it again). A
//! failed load is a dead letter for the records that waited, is remembered (no reload per
//! record), and a fixed model loads on the next try without a restart. Loads of one model
//! are rate-limited.

mod common;

use std::time::{Duration, Instant};

use common::{envelope, TestRepo};
use sluice::core::{ErrorClass, Limits, Priority};
use sluice::decode::{Decoder, Undecoded};
use sluice::models::loader::MIN_LOAD_INTERVAL;
use sluice::models::LoadDone;

fn tabular(id: &str, model: &str, version: Option<&str>) -> Vec<u8> {
    let mut v = serde_json::json!({"id": id, "model": model, "input": [1, 2, 3, 4, 5, 6, 7, 8]});
    if let Some(ver) = version {
        v["version"] = ver.into();
    }
    serde_json::to_vec(&v).unwrap()
}

fn background(repo: &TestRepo) -> Decoder {
    Decoder::new(repo.cache.clone(), Limits::default(), None).with_background_loads().unwrap()
}

fn next_load(dec: &mut Decoder) -> LoadDone {
    dec.wait_for_load(Duration::from_secs(60)).expect("a load finishes")
}

#[test]
fn a_record_for_a_model_not_loaded_waits_while_others_decode_and_the_load_serves_it() {
    let repo = TestRepo::new();
    let mut dec = background(&repo);
    repo.cache.get("tiny-embed", None).unwrap();

    let Err(Undecoded::Waiting(env, key)) =
        dec.try_decode(envelope(tabular("t1", "tabular", None), Priority::Normal, 0))
    else {
        panic!("a miss must not load inline")
    };
    assert_eq!((&*key.name, &*key.version), ("tabular", "1"));
    // Another record of a model that is loaded decodes meanwhile.
    let text = br#"{"id":"e1","model":"tiny-embed","input":"hello"}"#.to_vec();
    assert!(dec.try_decode(envelope(text, Priority::Normal, 1)).is_ok());

    let done = next_load(&mut dec);
    assert_eq!(done.key, key);
    assert!(done.result.is_ok(), "{:?}", done.result);
    // The cache drops it again before the record is decoded: the record is still served by
    // the model its load produced.
    repo.cache.unload("tabular", None);
    assert!(!repo.cache.loaded().iter().any(|(n, _)| n == "tabular"));
    let req = dec.decode_loaded(env, &done).expect("decoded with the loaded model");
    assert_eq!(&*req.model.version, "1");
}

#[test]
fn a_failed_load_dead_letters_its_records_is_remembered_and_a_fixed_model_loads_next_time() {
    let repo = TestRepo::new();
    repo.add_mlp("fragile", "1", vec![4], 3);
    let weights = repo.path().join("fragile/1/model.safetensors");
    let good = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, b"not safetensors at all").unwrap();
    let mut dec = background(&repo);

    let Err(Undecoded::Waiting(env, _)) =
        dec.try_decode(envelope(tabular("f1", "fragile", Some("1")), Priority::Normal, 0))
    else {
        panic!("waits for the load")
    };
    let done = next_load(&mut dec);
    assert!(done.result.is_err());
    let failed_at = Instant::now();
    match dec.decode_loaded(env, &done) {
        Err(Undecoded::Rejected(_, f)) => {
            assert_eq!(f.class, ErrorClass::Inference);
            assert!(f.reason.contains("could not be loaded"), "{}", f.reason);
        }
        other => panic!("expected a dead letter, got {other:?}"),
    }
    // The next record is refused at once from memory: no second load.
    match dec.try_decode(envelope(tabular("f2", "fragile", Some("1")), Priority::Normal, 1)) {
        Err(Undecoded::Rejected(_, f)) => assert!(f.reason.contains("next try in"), "{}", f.reason),
        other => panic!("expected the remembered failure, got {other:?}"),
    }
    assert_eq!(repo.cache.stats.load_failures.load(std::sync::atomic::Ordering::Relaxed), 1);

    // Fixed on disk; once the backoff (1 s after the first failure) has passed, it loads.
    std::fs::write(&weights, &good).unwrap();
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(failed_at.elapsed()));
    let Err(Undecoded::Waiting(env, _)) =
        dec.try_decode(envelope(tabular("f3", "fragile", Some("1")), Priority::Normal, 2))
    else {
        panic!("tried again after the backoff")
    };
    let done = next_load(&mut dec);
    assert!(done.result.is_ok(), "{:?}", done.result);
    assert!(dec.decode_loaded(env, &done).is_ok());
}

#[test]
fn loads_of_one_model_are_rate_limited() {
    let repo = TestRepo::new();
    repo.add_mlp("versions", "1", vec![4], 1);
    repo.add_mlp("versions", "2", vec![4], 2);
    let mut dec = background(&repo);
    let t0 = Instant::now();
    for (i, v) in ["1", "2"].into_iter().enumerate() {
        let r = dec.try_decode(envelope(
            tabular(&format!("v{v}"), "versions", Some(v)),
            Priority::Normal,
            i as i64,
        ));
        assert!(matches!(r, Err(Undecoded::Waiting(..))), "{r:?}");
    }
    let first = next_load(&mut dec);
    let second = next_load(&mut dec);
    assert!(first.result.is_ok() && second.result.is_ok());
    // The second load of the same model cannot start before MIN_LOAD_INTERVAL has passed
    // since the first one started (which was after t0).
    assert!(t0.elapsed() >= MIN_LOAD_INTERVAL, "two loads of one model within {:?}", t0.elapsed());
}

#[test]
fn an_unknown_model_or_version_is_refused_at_once_without_the_loader() {
    let repo = TestRepo::new();
    let mut dec = background(&repo);
    for (i, (m, v)) in
        [("nope", None), ("tabular", Some("9")), ("../x", None)].into_iter().enumerate()
    {
        match dec.try_decode(envelope(tabular("u", m, v), Priority::Normal, i as i64)) {
            Err(Undecoded::Rejected(_, f)) => assert_eq!(f.class, ErrorClass::UnknownModel),
            other => panic!("{m}/{v:?}: expected unknown_model, got {other:?}"),
        }
    }
    assert!(dec.loads_finished().is_empty());
}
