//! Shared vocabulary of Specula.
//!
//! Every other crate speaks in these types: [`TokenId`], [`SamplingParams`] and the
//! [`LogitsProcessor`] that turns logits into the exact distribution a token is drawn from,
//! [`StopStringMatcher`] and [`FinishReason`], the [`CausalLm`] model trait with its multi-token,
//! rollback-able forward contract, latency [`metrics`], and the [`CoreError`] type.
//!
//! The crate has no model code and no I/O; it is small on purpose so that the draft runner, the
//! verifier and the facade can all depend on it.
#![warn(missing_docs)]

pub mod error;
pub mod metrics;
pub mod model;
pub mod rng;
pub mod sampling;
pub mod stop;

pub use error::{CoreError, Result};
pub use metrics::{GenerationMetrics, LatencyStats};
pub use model::{CausalLm, LogitsSelection};
pub use rng::Rng;
pub use sampling::{Distribution, LogitsProcessor, SamplingParams};
pub use stop::{FinishReason, StopStringMatcher};

/// A token id in a model's vocabulary.
pub type TokenId = u32;
