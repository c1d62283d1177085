//! What the handlers share ([`Control`]), and the work over it that the handlers and the
//! sampler both do: mirroring metrics, sampling lag, the readiness checks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::lifecycle::{Lifecycle, PipelineState};
use super::observe::{Check, LagSample, Observer, LAG_BUDGET, SAMPLE_EVERY};
use crate::config::Config;
use crate::models::ModelCache;
use crate::telemetry::metrics::Metrics;

/// Largest request body accepted (bigger: 413).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the handlers share.
pub(crate) struct Control {
    pub cfg: Config,
    pub cache: Arc<ModelCache>,
    pub token: Option<Vec<u8>>,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Lifecycle,
    pub observer: Observer,
    pub started: Instant,
    /// The rollout control topic's follower and publisher, once it could start.
    pub rollout: std::sync::OnceLock<crate::kafka::rollout::RolloutSync>,
}

/// Mirrors the pipeline's and the cache's counters and gauges into the registry.
pub fn refresh(ctl: &Control) {
    let m = &ctl.metrics;
    if let Some((generation, p)) = ctl.lifecycle.pipeline() {
        m.observe_pipeline(generation, &p.source().stats, &p.emit_stats, &p.engine_stats);
        let (prio, normal, cap) = p.ring_depths();
        m.ring_depth.with_label_values(&["priority"]).set(prio as i64);
        m.ring_depth.with_label_values(&["normal"]).set(normal as i64);
        m.ring_capacity.set(cap as i64);
        m.consumer_paused
            .set(i64::from(p.source().paused.load(std::sync::atomic::Ordering::Relaxed)));
        m.assigned_partitions.set(p.source().assigned.lock().len() as i64);
        m.held_bytes
            .set(p.source().stats.held_bytes.load(std::sync::atomic::Ordering::Relaxed) as i64);
        m.waiting_for_model
            .set(p.source().stats.waiting_for_model.load(std::sync::atomic::Ordering::Relaxed)
                as i64);
        for (i, s) in p.engine_stats.lane_states().into_iter().enumerate() {
            let serving = i64::from(s != crate::core::LaneState::OutOfService);
            m.lane_in_service.with_label_values(&[&i.to_string()]).set(serving);
        }
        m.circuit_state.reset();
        // Every loaded version has a breaker (closed until it fails).
        for (name, version) in ctl.cache.loaded() {
            m.circuit_state.with_label_values(&[&name, &version]).set(0);
        }
        if let Some(c) = p.circuits() {
            for v in c.views() {
                m.circuit_state.with_label_values(&[&v.model, &v.version]).set(v.state.gauge());
            }
            m.circuit_parked.set(c.parked() as i64);
        }
    } else {
        m.circuit_state.reset();
        m.circuit_parked.set(0);
        m.held_bytes.set(0);
        m.waiting_for_model.set(0);
        m.ring_depth.with_label_values(&["priority"]).set(0);
        m.ring_depth.with_label_values(&["normal"]).set(0);
        m.consumer_paused.set(0);
        m.assigned_partitions.set(0);
        m.consumer_lag.reset();
        m.consumer_lag_total.set(0);
    }
    m.observe_cache(&ctl.cache.stats, ctl.cache.loaded().len());
    m.repository_readable.set(i64::from(ctl.cache.repository().is_readable()));
}

async fn sample_lag(ctl: &Arc<Control>) {
    let Some((generation, p)) = ctl.lifecycle.pipeline() else { return };
    let lags =
        tokio::task::spawn_blocking(move || p.consumer_lag(LAG_BUDGET)).await.unwrap_or_default();
    let m = &ctl.metrics;
    m.consumer_lag.reset();
    for l in &lags {
        if let Some(lag) = l.lag {
            m.consumer_lag.with_label_values(&[&l.topic, &l.partition.to_string()]).set(lag);
        }
    }
    let sample = LagSample { at: Some(Instant::now()), generation, partitions: lags };
    m.consumer_lag_total.set(sample.total());
    *ctl.observer.lag.lock() = sample;
}

/// The sampler: every second checks the pipeline's threads and mirrors the metrics; every
/// [`SAMPLE_EVERY`] takes a window sample; every `lag_every` samples consumer lag.
pub async fn run(
    ctl: Arc<Control>,
    lag_every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sample = Instant::now();
    let mut last_lag: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        ctl.lifecycle.handle_transaction_failure().await;
        ctl.lifecycle.check_threads();
        // Idle models leave on the TTL even when no record looks a model up; not while the
        // repository cannot be read (degraded: what is loaded is all there is).
        if ctl.cache.repository().is_readable() {
            ctl.cache.sweep_at(Instant::now());
        }
        refresh(&ctl);
        if last_sample.elapsed() >= SAMPLE_EVERY {
            last_sample = Instant::now();
            ctl.observer.push_sample();
        }
        let running = ctl.lifecycle.info().state == PipelineState::Running;
        if running && last_lag.is_none_or(|t| t.elapsed() >= lag_every) {
            last_lag = Some(Instant::now());
            sample_lag(&ctl).await;
        }
    }
    ctl.observer.close();
}

/// The readiness checks: pipeline running, Kafka reachable, models loaded. A full queue
/// (backpressure) is reported but fails nothing.
pub async fn checks(ctl: &Control) -> Vec<Check> {
    let info = ctl.lifecycle.info();
    let mut pipeline_detail = json!({"state": info.state.as_str()});
    if let Some(cause) = &info.cause {
        pipeline_detail["cause"] = cause.clone().into();
    }
    if let Some((_, p)) = ctl.lifecycle.pipeline() {
        let (prio, normal, cap) = p.ring_depths();
        pipeline_detail["backpressure"] = json!({
            "paused": p.source().paused.load(std::sync::atomic::Ordering::Relaxed),
            "ring_depth": {"priority": prio, "normal": normal, "capacity": cap},
        });
    }
    let pipeline = Check {
        name: "pipeline",
        ok: info.state == PipelineState::Running,
        detail: pipeline_detail,
    };
    let kafka = match ctl.observer.kafka().await {
        Ok(brokers) => Check {
            name: "kafka",
            ok: true,
            detail: json!({"servers": ctl.cfg.kafka.bootstrap.servers, "brokers": brokers}),
        },
        Err(e) => Check {
            name: "kafka",
            ok: false,
            detail: json!({"servers": ctl.cfg.kafka.bootstrap.servers, "error": e.to_string()}),
        },
    };
    let loaded: Vec<Value> =
        ctl.cache.loaded().into_iter().map(|(n, v)| json!({"name": n, "version": v})).collect();
    let loads = ctl.cache.stats.loads.load(std::sync::atomic::Ordering::Relaxed);
    let models = match ctl.cache.repository().list() {
        // Degraded: the repository cannot be read (a lost mount), but the loaded versions
        // keep serving, so the instance stays ready while any is loaded.
        Err(e) => Check {
            name: "models",
            ok: !loaded.is_empty(),
            detail: json!({
                "error": format!("model repository {}: {e}", ctl.cache.repository().root().display()),
                "degraded": !loaded.is_empty(),
                "loaded": loaded,
            }),
        },
        Ok(list) if list.is_empty() => Check {
            name: "models",
            ok: false,
            detail: json!({"error": format!("model repository {} holds no models", ctl.cache.repository().root().display())}),
        },
        // Loaded at start; a model evicted later (TTL) is loaded again on its next request.
        Ok(_) if loaded.is_empty() && loads == 0 => Check {
            name: "models",
            ok: false,
            detail: json!({"error": "no model loaded yet", "loaded": loaded}),
        },
        Ok(list) => Check {
            name: "models",
            ok: true,
            detail: json!({"loaded": loaded, "in_repository": list.len()}),
        },
    };
    vec![kafka, models, pipeline]
}
