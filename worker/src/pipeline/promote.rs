//! The promote step: only if the voted revision has exactly the staged files, and the
//! platform still holds exactly the staged bytes, make them the production distribution.
//!
//! Where the platform has no staging that becomes production (`PromotionMechanism::Reupload`,
//! PyPI), "the staged bytes" are the voted revision's files, sealed again here exactly as
//! stage seals them and checked to give the staged platform digest, then uploaded to
//! production by the adapter (see `platform/mod.rs`).

use atr_dist_shared::names::{ArtifactPath, RevisionKey};
use atr_dist_shared::{
    AttemptOutcome, Digest, DistributionKey, ManifestDiff, PromoteJob, PromotionMechanism,
};

use super::{Failure, Pipeline, Step, record};
use crate::platform::{PlatformError, PromoteRequest, Sealed, StageRequest};

pub async fn run(p: &Pipeline, job: &PromoteJob, key: &DistributionKey) -> Result<Step, Failure> {
    let adapter = p.adapter(key.platform)?;
    // Policy first: a promotion this worker may not make reads and sends nothing, and the
    // job ends done with the reason (a dry run says the same), not as a failure.
    if let Err(why) = adapter.promotion_allowed(&job.release.project_key) {
        return Ok(Step {
            outcome: AttemptOutcome::DisabledByPolicy,
            message: why,
        });
    }
    let Some(row) = record::load_distribution(&p.db, key).await? else {
        // A dry-run stage sends nothing and so records nothing: there is no staged state
        // a dry-run promote could check the platform and the voted files against.
        if job.dry_run {
            return Err(Failure::Refused(format!(
                "{key} was never staged: dry-run stages record nothing; stage for real first, then a dry-run promote shows what promoting would send"
            )));
        }
        return Err(Failure::Refused(format!(
            "{key} was never staged by atr-dist; stage it before promoting"
        )));
    };
    let (Some(staged_manifest), Some(platform_digest)) = (
        row.staged_manifest_digest.clone(),
        row.platform_digest.clone(),
    ) else {
        return Err(Failure::Refused(format!(
            "{key} has no staging record (manifest and platform digests)"
        )));
    };

    // Content, not revision numbers: ATR makes a new revision with the same files when a
    // vote passes, and that must promote; any other difference must not.
    let voted = p
        .sources
        .manifest(&job.source, &job.release, &job.revision)
        .await?;
    let voted_revision = RevisionKey::of(&job.release.key(), &job.revision);
    if voted.digest().as_str() != staged_manifest {
        let staged = match &row.staging_revision_key {
            Some(rev) => record::load_manifest(&p.db, rev).await?,
            None => None,
        };
        let diff = match staged {
            Some(staged) => staged.diff(&voted),
            None => ManifestDiff::default(),
        };
        record::save_manifest(&p.db, &voted_revision, &voted).await?;
        return Err(Failure::RevisionChanged(diff));
    }
    record::save_manifest(&p.db, &voted_revision, &voted).await?;

    let staged_digest = Digest::parse(platform_digest.clone())
        .map_err(|e| Failure::Refused(format!("recorded platform digest is unreadable: {e}")))?;
    let (default_staging, default_release) = adapter.default_tags(key);
    let staging_tag = match &row.staging_tag {
        Some(t) => atr_dist_shared::names::DistTag::new(t).unwrap_or(default_staging),
        None => default_staging,
    };
    let release_tag = job.release_tag.clone().unwrap_or(default_release);

    let in_production = adapter.read_promoted(key, &release_tag).await?;
    let already = matches!(&in_production, Some(o) if o.digest == staged_digest);
    if row.promoted && !already {
        return Err(Failure::Refused(format!(
            "{key} is recorded as promoted, but {release_tag} on the platform holds {}",
            in_production
                .map(|o| o.digest.to_string())
                .unwrap_or_else(|| "nothing".into())
        )));
    }

    // The one place where the two ways of promoting part. In place: the staged bytes must
    // still be what was staged (a tag moved since is caught here). Re-upload: the bytes to
    // send are the voted revision's, sealed now, and must come to what was staged; the
    // staging place is not read, since nothing is taken from it (and Test PyPI prunes its
    // files now and then).
    let mut artifacts: Vec<Sealed> = Vec::new();
    let mut companions: Vec<Sealed> = Vec::new();
    if !already {
        match adapter.promotion() {
            PromotionMechanism::DistTag
            | PromotionMechanism::Retag
            | PromotionMechanism::ApiPatch
            | PromotionMechanism::NexusRelease
            | PromotionMechanism::None => match adapter.read_staged(key, &staging_tag).await? {
                None => {
                    return Err(Failure::Refused(format!(
                        "{key}: the staged {staging_tag} is gone from the platform; nothing promoted"
                    )));
                }
                Some(o) if o.digest != staged_digest => {
                    return Err(Failure::Refused(format!(
                        "{key}: {staging_tag} was overwritten since staging (the platform holds {}, {staged_digest} was staged); nothing promoted",
                        o.digest
                    )));
                }
                Some(_) => {}
            },
            PromotionMechanism::Reupload => {
                let paths = record::staged_artifacts(&row).ok_or_else(|| {
                    Failure::Refused(format!(
                        "{key} was staged without a record of its files, and promoting it uploads them again; stage it again"
                    ))
                })?;
                let paths = paths
                    .iter()
                    .map(ArtifactPath::new)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        Failure::Refused(format!("{key}: a recorded staged file is unusable: {e}"))
                    })?;
                artifacts = super::stage::seal_artifacts(
                    p,
                    &job.source,
                    &job.release,
                    &job.revision,
                    &voted,
                    &paths,
                )
                .await?;
                companions = super::stage::seal_companions(
                    p,
                    adapter.as_ref(),
                    &job.source,
                    &job.release,
                    &job.revision,
                    &voted,
                    &paths,
                )
                .await?;
                let sending = adapter
                    .expected_digest(&StageRequest {
                        key: key.clone(),
                        revision: voted_revision.clone(),
                        artifacts: artifacts.clone(),
                        companions: companions.clone(),
                        staging_tag: staging_tag.clone(),
                    })
                    .await?;
                if sending != staged_digest {
                    return Err(Failure::Refused(format!(
                        "{key}: the voted files come to {sending} on the platform, but {staged_digest} was staged; nothing promoted"
                    )));
                }
            }
        }
    }
    let req = PromoteRequest {
        key: key.clone(),
        staged_digest: staged_digest.clone(),
        staging_tag: staging_tag.clone(),
        release_tag: release_tag.clone(),
        artifacts,
        companions,
    };

    // A verify-only platform (`PromotionMechanism::None`, see `platform/mod.rs`) is never
    // written to: `promote` waits until production lists what was staged, and the
    // promotion is done when `read_promoted` finds it there.
    let verify_only = adapter.promotion() == PromotionMechanism::None;
    if job.dry_run {
        let plan: Vec<String> = adapter
            .plan_promote(&req)
            .iter()
            .map(ToString::to_string)
            .collect();
        return Ok(Step {
            outcome: AttemptOutcome::DryRun,
            message: format!(
                "dry run: revision {voted_revision} has the staged files ({staged_manifest}); {}",
                if already {
                    format!("{release_tag} already holds {staged_digest}: nothing would be sent")
                } else if verify_only {
                    format!(
                        "would wait until the platform lists {staged_digest} in production and record it; nothing is ever sent to this platform"
                    )
                } else {
                    format!(
                        "would promote {staged_digest} to {release_tag}; writes: {}",
                        plan.join("; ")
                    )
                }
            ),
        });
    }

    let outcome = if already {
        // Nothing to write. For a verify-only platform this is the promotion itself, found
        // done: news unless recorded already.
        if verify_only && !row.promoted {
            AttemptOutcome::Completed
        } else {
            AttemptOutcome::Unchanged
        }
    } else {
        adapter.promote(&req).await?;
        AttemptOutcome::Completed
    };
    let observed = adapter
        .read_promoted(key, &release_tag)
        .await?
        .ok_or_else(|| {
            PlatformError::transient(format!(
                "{key} is not visible under {release_tag} yet after promoting"
            ))
        })?;
    if observed.digest != staged_digest {
        return Err(Failure::Refused(format!(
            "after promoting, {release_tag} holds {}, not the staged {staged_digest}",
            observed.digest
        )));
    }
    if !(row.promoted && outcome == AttemptOutcome::Unchanged) {
        record::save_promoted(
            &p.db,
            record::Promoted {
                row,
                observed: &observed,
                created_by: job.asf_uid.as_str(),
                voted_revision: &voted_revision,
                voted_manifest_digest: voted.digest().to_string(),
            },
        )
        .await?;
    }
    Ok(Step {
        outcome,
        message: if outcome == AttemptOutcome::Unchanged {
            format!("{key} was already promoted to {release_tag} as {staged_digest}")
        } else if verify_only {
            format!(
                "{key} is listed in production as {staged_digest}; recorded as promoted to {release_tag} (voted revision {voted_revision})"
            )
        } else {
            format!(
                "promoted {key} to {release_tag} as {staged_digest} (voted revision {voted_revision})"
            )
        },
    })
}
