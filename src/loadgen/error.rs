//! What can go wrong in the harness. The CLI layer (`cli`) adds its own context on top.

use rdkafka::error::KafkaError;

use crate::kafka::KafkaLayerError;

/// An error of a loadgen step, sweep, passthrough run or plot.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// Creating or inspecting topics through the admin API; `what` names the action.
    #[error("{what}")]
    Topics {
        what: &'static str,
        #[source]
        source: KafkaLayerError,
    },
    /// A Kafka client call; `what` names the action.
    #[error("{what}")]
    Kafka {
        what: String,
        #[source]
        source: KafkaError,
    },
    /// A Kafka client call that needs no further words (building a partition list).
    #[error(transparent)]
    Client(#[from] KafkaError),
    /// A topic the harness reads is missing after it was created.
    #[error("topic {0} does not exist")]
    MissingTopic(String),
    /// The collector thread could not be started.
    #[error("starting the collector thread")]
    Thread(#[source] std::io::Error),
    /// The collector thread panicked.
    #[error("collector thread panicked")]
    CollectorPanicked,
    /// The `--before-step` command could not run or failed.
    #[error("before-step command: {0}")]
    BeforeStep(String),
    /// Drawing an SVG picture failed.
    #[error("drawing: {0}")]
    Plot(String),
}

impl LoadgenError {
    /// For `map_err`: a Kafka client error with the action that failed.
    pub(crate) fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> LoadgenError {
        let what = what.into();
        move |source| LoadgenError::Kafka { what, source }
    }

    /// For `map_err`: an admin-API error with the action that failed.
    pub(crate) fn topics(what: &'static str) -> impl FnOnce(KafkaLayerError) -> LoadgenError {
        move |source| LoadgenError::Topics { what, source }
    }
}

/// The result of a loadgen function.
pub type Result<T, E = LoadgenError> = std::result::Result<T, E>;
