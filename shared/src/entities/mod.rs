//! sea-orm entities of the results database. The schema itself is created by the
//! `atr-dist-migrations` crate; a test checks that these entities read and write it.

pub mod distribution;
pub mod job_run;
pub mod revision_manifest;
