//! Model cache: LRU order, TTL, eviction while in use, serving versions, unknown models.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestRepo;
use sluice::core::HostStaging;
use sluice::models::cache::CacheSettings;
use sluice::models::ModelError;

fn loaded(repo: &TestRepo) -> Vec<String> {
    repo.cache.loaded().into_iter().map(|(n, v)| format!("{n}/{v}")).collect()
}

#[test]
fn lru_evicts_the_least_recently_used() {
    let repo = TestRepo::with_settings(CacheSettings { capacity: 2, ttl: None, warmup_rows: 1 });
    let t = Instant::now();
    repo.cache.get_at("tiny-embed", None, t).unwrap();
    repo.cache.get_at("tabular", None, t).unwrap();
    // Touch tiny-embed so tabular becomes the least recently used.
    repo.cache.get_at("tiny-embed", None, t).unwrap();
    repo.cache.get_at("tiny-sentiment", None, t).unwrap();
    assert_eq!(loaded(&repo), vec!["tiny-embed/1", "tiny-sentiment/1"]);
    let s = &repo.cache.stats;
    assert_eq!(s.evictions.load(Ordering::Relaxed), 1);
    assert_eq!(s.hits.load(Ordering::Relaxed), 1);
    assert_eq!(s.misses.load(Ordering::Relaxed), 3);
    assert_eq!(s.loads.load(Ordering::Relaxed), 3);
}

#[test]
fn ttl_unloads_idle_models() {
    let repo = TestRepo::with_settings(CacheSettings {
        capacity: 10,
        ttl: Some(Duration::from_secs(60)),
        warmup_rows: 1,
    });
    let t0 = Instant::now();
    repo.cache.get_at("tabular", None, t0).unwrap();
    repo.cache.get_at("tiny-embed", None, t0).unwrap();
    repo.cache.get_at("tiny-embed", None, t0 + Duration::from_secs(50)).unwrap();
    repo.cache.sweep_at(t0 + Duration::from_secs(70));
    assert_eq!(
        loaded(&repo),
        vec!["tiny-embed/1"],
        "tabular idle 70 s > ttl; tiny-embed used 20 s ago"
    );
    repo.cache.sweep_at(t0 + Duration::from_secs(111));
    assert!(loaded(&repo).is_empty());
}

#[test]
fn an_evicted_model_in_use_keeps_working() {
    let repo = TestRepo::with_settings(CacheSettings { capacity: 1, ttl: None, warmup_rows: 1 });
    let model = repo.cache.get("tabular", None).unwrap();
    repo.cache.get("tiny-embed", None).unwrap();
    assert_eq!(loaded(&repo), vec!["tiny-embed/1"]);
    // The in-flight holder still has a working model.
    assert!(Arc::strong_count(&model) >= 1);
    let mut st = HostStaging::default();
    st.begin_features(2, 8);
    let out = model.forward(&st).unwrap();
    assert_eq!(out.rows(), 2);
    // Asking again loads it afresh (a different instance).
    let again = repo.cache.get("tabular", None).unwrap();
    assert!(!Arc::ptr_eq(&model, &again));
}

#[test]
fn serving_version_and_explicit_versions() {
    let repo = TestRepo::new();
    repo.add_mlp("tabular", "2", vec![4], 7);
    // model.toml still says 1.
    assert_eq!(&*repo.cache.get("tabular", None).unwrap().version, "1");
    assert_eq!(repo.cache.get("tabular", Some("2")).unwrap().output_width(), 2);
    repo.cache.set_serving("tabular", "2").unwrap();
    assert_eq!(&*repo.cache.get("tabular", None).unwrap().version, "2");
    assert!(matches!(repo.cache.get("tabular", Some("9")), Err(ModelError::UnknownModel { .. })));
    assert!(matches!(repo.cache.get("nope", None), Err(ModelError::UnknownModel { .. })));
    assert!(matches!(repo.cache.get("../../etc", None), Err(ModelError::InvalidName(_))));
}

#[test]
fn a_failed_load_is_remembered_with_backoff_and_retried_once_the_weights_are_fixed() {
    let repo = TestRepo::new();
    repo.add_mlp("fragile", "1", vec![4], 3);
    let weights = repo.path().join("fragile/1/model.safetensors");
    let good = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, b"not safetensors at all").unwrap();
    let s = &repo.cache.stats;
    let t0 = Instant::now();

    let Err(first) = repo.cache.get_at("fragile", Some("1"), t0) else {
        panic!("broken weights must fail to load")
    };
    assert!(first.to_string().contains("model.safetensors"), "{first}");
    assert_eq!(s.load_failures.load(Ordering::Relaxed), 1);
    // Records naming it right after fail at once, without loading again.
    for ms in [1, 100, 900] {
        let e = repo.cache.get_at("fragile", Some("1"), t0 + Duration::from_millis(ms)).err();
        let e = e.expect("still failing").to_string();
        assert!(e.contains("next try in"), "{e}");
    }
    assert_eq!(s.load_failures.load(Ordering::Relaxed), 1, "no reload per record");
    // The next try (1 s later) fails again; the wait doubles.
    assert!(repo.cache.get_at("fragile", Some("1"), t0 + Duration::from_millis(1001)).is_err());
    assert_eq!(s.load_failures.load(Ordering::Relaxed), 2);
    let e = repo.cache.get_at("fragile", Some("1"), t0 + Duration::from_millis(2500)).err();
    assert!(e.expect("in backoff").to_string().contains("failed 2 time(s)"));
    // Fixed on disk: the next try loads it, without a restart.
    std::fs::write(&weights, &good).unwrap();
    let m = repo.cache.get_at("fragile", Some("1"), t0 + Duration::from_millis(3002));
    assert!(m.is_ok(), "{:?}", m.err());
    assert_eq!(loaded(&repo), vec!["fragile/1"]);
}
