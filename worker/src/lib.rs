//! atr-dist: the worker that puts voted Apache releases onto third-party platforms.
//!
//! `shared` holds the vocabulary (platforms, names, the job contract); this crate holds what
//! acts: configuration, the results database, the queue, the pipeline and the operator surface.

pub mod blocking;
pub mod cli;
pub mod config;
pub mod db;
pub mod embedded;
pub mod fd_limit;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod platform;
pub mod queue;
pub mod run;
pub mod seal;
pub mod secret;
pub mod source;
pub mod telemetry;
pub mod tls;
