//! What the predictor writes and reads back: submissions ([`submission`]), saved logits with
//! their provenance ([`logits`]) and shard record ([`shard`]), and the content hashes that
//! identify models and image lists ([`fingerprint`]).
pub mod fingerprint;
pub mod logits;
pub mod shard;
pub mod submission;
