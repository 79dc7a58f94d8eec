//! The stage step: put the voted files on the platform's staging place and record it.

use atr_dist_shared::job::{ReleaseRef, RevisionSourceSpec};
use atr_dist_shared::names::{ArtifactPath, RevisionKey, RevisionNumber};
use atr_dist_shared::{
    AttemptOutcome, DistributionKey, PromotionMechanism, RevisionManifest, StageJob,
};

use super::{Failure, Pipeline, Step, record};
use crate::platform::{Observed, PlatformAdapter, Sealed, StageRequest, Staging};

/// Reads each of `paths` from the revision once, into a private copy checked against the
/// revision's `manifest`; adapters publish those copies and nothing else. Used by stage, and
/// by promote on platforms where promotion is a second upload.
pub(super) async fn seal_artifacts(
    p: &Pipeline,
    source: &RevisionSourceSpec,
    release: &ReleaseRef,
    revision: &RevisionNumber,
    manifest: &RevisionManifest,
    paths: &[ArtifactPath],
) -> Result<Vec<Sealed>, Failure> {
    let mut artifacts = Vec::with_capacity(paths.len());
    for path in paths {
        let entry = manifest.get(path).ok_or_else(|| {
            Failure::Refused(format!(
                "artifact {path} is not in revision {}",
                RevisionKey::of(&release.key(), revision)
            ))
        })?;
        let bytes = p.sources.open(source, release, revision, path).await?;
        artifacts.push(p.sealer.seal(entry, bytes).await?);
    }
    Ok(artifacts)
}

/// The companion files of `paths` (`PlatformAdapter::companions`) that `manifest` lists,
/// sealed as `seal_artifacts` seals the artifacts: the one place companions are chosen and
/// read, for stage and for a re-upload promote alike. A companion the revision does not hold
/// is simply not there; the adapter decides whether that matters.
pub(super) async fn seal_companions(
    p: &Pipeline,
    adapter: &dyn PlatformAdapter,
    source: &RevisionSourceSpec,
    release: &ReleaseRef,
    revision: &RevisionNumber,
    manifest: &RevisionManifest,
    paths: &[ArtifactPath],
) -> Result<Vec<Sealed>, Failure> {
    let present: Vec<ArtifactPath> = paths
        .iter()
        .flat_map(|path| adapter.companions(path))
        .filter(|c| manifest.get(c).is_some() && !paths.contains(c))
        .collect();
    seal_artifacts(p, source, release, revision, manifest, &present).await
}

pub async fn run(p: &Pipeline, job: &StageJob, key: &DistributionKey) -> Result<Step, Failure> {
    let adapter = p.adapter(key.platform)?;
    let existing = record::load_distribution(&p.db, key).await?;
    if let Some(row) = &existing
        && row.promoted
    {
        return Err(Failure::Refused(format!(
            "{key} is already promoted; staging it again is refused (a promoted version is final)"
        )));
    }

    let manifest = p
        .sources
        .manifest(&job.source, &job.release, &job.revision)
        .await?;
    let revision = RevisionKey::of(&job.release.key(), &job.revision);
    // Each file is read once, into a private copy checked against the voted manifest;
    // the adapter publishes that copy and nothing else.
    let artifacts = seal_artifacts(
        p,
        &job.source,
        &job.release,
        &job.revision,
        &manifest,
        &job.artifacts,
    )
    .await?;
    let companions = seal_companions(
        p,
        adapter.as_ref(),
        &job.source,
        &job.release,
        &job.revision,
        &manifest,
        &job.artifacts,
    )
    .await?;
    record::save_manifest(&p.db, &revision, &manifest).await?;

    let staging_tag = match &job.staging_tag {
        Some(tag) => tag.clone(),
        None => p
            .staging_tags
            .get(&key.platform)
            .cloned()
            .unwrap_or_else(|| adapter.default_tags(key).0),
    };
    let req = StageRequest {
        key: key.clone(),
        revision: revision.clone(),
        artifacts,
        companions,
        staging_tag: staging_tag.clone(),
    };
    let expected = adapter.expected_digest(&req).await?;
    let staging = adapter.staging();
    let current = match staging {
        Staging::Platform => adapter.read_staged(key, &staging_tag).await?,
        // Nothing on the platform to find: the check is redone every time.
        Staging::Local => None,
    };

    // A verify-only platform (`PromotionMechanism::None`, see `platform/mod.rs`) is never
    // written to: its stage is done when `read_staged` finds what the vote wants.
    let verify_only = adapter.promotion() == PromotionMechanism::None;
    let recorded =
        existing.as_ref().and_then(|r| r.platform_digest.as_deref()) == Some(expected.as_str());
    if job.dry_run {
        let plan: Vec<String> = adapter
            .plan_stage(&req)
            .iter()
            .map(ToString::to_string)
            .collect();
        let now = match &current {
            Some(o) if o.digest == expected => {
                format!("already staged as {expected}: nothing would be sent")
            }
            Some(o) => format!("the platform holds {} under {staging_tag}", o.digest),
            None => match staging {
                Staging::Platform if verify_only => {
                    "the platform does not show it, and it is only verified, never written to: the stage would be refused".to_owned()
                }
                Staging::Platform => "nothing staged yet".to_owned(),
                Staging::Local => {
                    "the platform has no staging place: stage checks the files and sends nothing"
                        .to_owned()
                }
            },
        };
        return Ok(Step {
            outcome: AttemptOutcome::DryRun,
            message: format!(
                "dry run: would stage {key} from {revision} (manifest {}) as {expected}; {now}; writes: {}",
                manifest.digest(),
                if plan.is_empty() {
                    "none".to_owned()
                } else {
                    plan.join("; ")
                }
            ),
        });
    }

    let outcome = match staging {
        Staging::Platform => match &current {
            // Found as the vote wants it: nothing to write. A verify-only stage has then done
            // its work, which is news when the record does not say so yet.
            Some(o) if o.digest == expected => {
                if verify_only && !recorded {
                    AttemptOutcome::Completed
                } else {
                    AttemptOutcome::Unchanged
                }
            }
            Some(_) | None => {
                adapter.stage(&req).await?;
                AttemptOutcome::Completed
            }
        },
        // The check is cheap and sends nothing: it runs every time, and the stage is
        // unchanged when it passed before for the same bytes.
        Staging::Local => {
            adapter.stage(&req).await?;
            if recorded {
                AttemptOutcome::Unchanged
            } else {
                AttemptOutcome::Completed
            }
        }
    };
    let observed = match staging {
        Staging::Platform => adapter
            .read_staged(key, &staging_tag)
            .await?
            .ok_or_else(|| {
                Failure::Platform(crate::platform::PlatformError::transient(format!(
                    "{key} is not visible under {staging_tag} yet after staging"
                )))
            })?,
        Staging::Local => Observed {
            digest: expected.clone(),
            api_url: None,
            web_url: None,
            upload_date: None,
        },
    };
    if observed.digest != expected {
        return Err(Failure::Refused(format!(
            "after staging, the platform reports {} for {key}, not the voted {expected}",
            observed.digest
        )));
    }
    record::save_staged(
        &p.db,
        record::Staged {
            key,
            revision: &revision,
            manifest_digest: manifest.digest().to_string(),
            staging_tag: staging_tag.to_string(),
            observed: &observed,
            created_by: job.asf_uid.as_str(),
            artifacts: job.artifacts.iter().map(ToString::to_string).collect(),
        },
    )
    .await?;
    Ok(Step {
        outcome,
        message: if outcome == AttemptOutcome::Unchanged {
            format!("{key} was already staged under {staging_tag} as {expected}; recorded")
        } else {
            format!("staged {key} under {staging_tag} as {expected} from {revision}")
        },
    })
}
