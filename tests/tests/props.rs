//! Bad input, found by machines: property-based tests (proptest) of the parsers that read
//! what producers send, with bounded case counts (the set runs in seconds).
//! - Names and keys: each newtype accepts exactly what its documented grammar accepts (its
//!   JSON Schema, as in docs/job-envelope.schema.json, plus the rules a pattern cannot say,
//!   which `clients/python` checks too), and round-trips through Display, FromStr and serde.
//! - The envelope parser: arbitrary bytes and arbitrary JSON never panic it; valid envelopes
//!   round-trip; valid envelopes with one field replaced by arbitrary JSON, or removed, are
//!   parsed or refused, never a panic, and what is accepted round-trips.
//! - The manifest parser: arbitrary JSON never panics it; valid manifests round-trip, sorted
//!   by path, with a digest independent of the order of their entries; duplicates refused.

use atr_dist_shared::job::{DistributionSpec, ReleaseRef, RevisionSourceSpec};
use atr_dist_shared::manifest::Sha3Hex;
use atr_dist_shared::names::{
    ArtifactPath, AsfUid, DistTag, IdempotencyKey, OwnerNamespace, PackageName, ProjectKey,
    ReleaseKey, RevisionKey, RevisionNumber, Version, VersionKey,
};
use atr_dist_shared::{
    Envelope, Job, JobId, ManifestEntry, Platform, PromoteJob, RevisionManifest, StageJob,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Shrinking stops early: a failure's first minimal form is what the message needs.
        max_shrink_iters: 2048,
        // A failure prints its minimal input; nothing is written into the checkout.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Names and keys against their documented grammar.

/// Strings near every grammar's edges: the characters names are made of, the ones they may
/// not contain (separators, spaces, control characters, non-ASCII), digits for revision
/// numbers, and lengths around every limit (in characters and in UTF-8 bytes).
fn candidate() -> impl Strategy<Value = String> {
    let alphabet = prop::sample::select(vec![
        'a', 'b', 'z', 'A', 'Z', '0', '1', '9', '.', '.', '-', '_', '+', '/', '\\', ' ', '@', ':',
        '~', '!', 'v', 'V', '\u{7}', '\u{85}', 'é', '٣', '\u{ffff}',
    ]);
    let short = prop::collection::vec(alphabet.clone(), 0..14)
        .prop_map(|chars| chars.into_iter().collect::<String>());
    let digits = "[0-9]{0,21}";
    // Long: a run of one character (ASCII or two-byte), then a short tail.
    let long = (
        prop::sample::select(vec!['a', '1', 'é', '/']),
        prop::sample::select(vec![
            62usize, 63, 64, 65, 98, 99, 100, 101, 127, 128, 129, 199, 200, 201, 202, 212, 213,
            214, 215, 254, 255, 256, 2047, 2048, 2049, 4094, 4095, 4096, 4097,
        ]),
        prop::collection::vec(alphabet, 0..3),
    )
        .prop_map(|(c, n, tail)| {
            let mut s = String::from("a");
            s.extend(std::iter::repeat_n(c, n));
            s.extend(tail);
            s
        });
    prop_oneof![4 => short, 2 => digits, 1 => long, 1 => any::<String>()]
}

/// A JSON Schema validator for one newtype, from its schemars schema: the one the
/// documentation is generated from.
fn grammar<T: schemars::JsonSchema>() -> jsonschema::Validator {
    let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap();
    jsonschema::validator_for(&schema).expect("a valid schema")
}

/// The rules of `shared/src/names.rs` that no pattern says, as `clients/python` documents
/// and checks them (`validation.py`): names may not contain `..`, dist-tags may not look
/// like versions (`v1.4`), artifact paths have no `.` or `..` component and no control
/// character, and their limit counts UTF-8 bytes.
#[derive(Clone, Copy)]
enum Extra {
    Name,
    Tag,
    Path,
    None,
}

fn extra_rules_allow(extra: Extra, s: &str) -> bool {
    match extra {
        Extra::Name => !s.contains(".."),
        Extra::Tag => {
            let looks_like_a_version =
                s.starts_with(['v', 'V']) && s[1..].starts_with(|c: char| c.is_ascii_digit());
            !s.contains("..") && !looks_like_a_version
        }
        Extra::Path => {
            !s.split('/').any(|part| part == "." || part == "..")
                && !s.chars().any(char::is_control)
                && s.len() <= ArtifactPath::MAX_LEN
        }
        Extra::None => true,
    }
}

/// Checks that `parse` accepts `s` exactly when the grammar does, and that what it accepts
/// prints as `s` and parses from its JSON string the same way.
fn agrees<T>(
    what: &str,
    grammar: &jsonschema::Validator,
    extra: Extra,
    s: &str,
) -> Result<(), TestCaseError>
where
    T: std::str::FromStr + std::fmt::Display + serde::de::DeserializeOwned + PartialEq,
    T::Err: std::fmt::Display,
{
    let documented = grammar.is_valid(&json!(s)) && extra_rules_allow(extra, s);
    let parsed = s.parse::<T>();
    prop_assert_eq!(
        parsed.is_ok(),
        documented,
        "{} {:?}: the parser says {}, the documented grammar {}",
        what,
        s,
        match &parsed {
            Ok(_) => "yes".to_owned(),
            Err(e) => format!("no ({e})"),
        },
        if documented { "yes" } else { "no" }
    );
    let from_json = serde_json::from_value::<T>(json!(s));
    prop_assert_eq!(
        from_json.is_ok(),
        documented,
        "{} {:?} through serde",
        what,
        s
    );
    if let Ok(value) = parsed {
        prop_assert_eq!(value.to_string(), s);
        prop_assert!(from_json.ok() == Some(value));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn names_accept_exactly_their_documented_grammar(s in candidate()) {
        thread_local! {
            static GRAMMARS: Vec<jsonschema::Validator> = vec![
                grammar::<ProjectKey>(), grammar::<VersionKey>(), grammar::<ReleaseKey>(),
                grammar::<RevisionNumber>(), grammar::<RevisionKey>(),
                grammar::<OwnerNamespace>(), grammar::<PackageName>(), grammar::<Version>(),
                grammar::<DistTag>(), grammar::<IdempotencyKey>(), grammar::<ArtifactPath>(),
                grammar::<AsfUid>(),
            ];
        }
        GRAMMARS.with(|g| -> Result<(), TestCaseError> {
            agrees::<ProjectKey>("project key", &g[0], Extra::Name, &s)?;
            agrees::<VersionKey>("release version", &g[1], Extra::Name, &s)?;
            agrees::<ReleaseKey>("release key", &g[2], Extra::Name, &s)?;
            agrees::<RevisionNumber>("revision number", &g[3], Extra::None, &s)?;
            agrees::<OwnerNamespace>("owner namespace", &g[5], Extra::Name, &s)?;
            agrees::<PackageName>("package name", &g[6], Extra::Name, &s)?;
            agrees::<Version>("version", &g[7], Extra::Name, &s)?;
            agrees::<DistTag>("dist-tag", &g[8], Extra::Tag, &s)?;
            agrees::<IdempotencyKey>("idempotency key", &g[9], Extra::None, &s)?;
            agrees::<ArtifactPath>("artifact path", &g[10], Extra::Path, &s)?;
            agrees::<AsfUid>("ASF user id", &g[11], Extra::None, &s)?;
            // A revision key is a release key and a revision number, separated by a space.
            let documented = match s.rsplit_once(' ') {
                Some((release, number)) => {
                    g[4].is_valid(&json!(s))
                        && g[2].is_valid(&json!(release))
                        && extra_rules_allow(Extra::Name, release)
                        && g[3].is_valid(&json!(number))
                }
                None => false,
            };
            let parsed = serde_json::from_value::<RevisionKey>(json!(s));
            prop_assert_eq!(parsed.is_ok(), documented, "revision key {:?}", s);
            if let Ok(key) = parsed {
                prop_assert_eq!(key.to_string(), s.clone());
                let (release, number) = key.parts();
                prop_assert_eq!(RevisionKey::of(&release, &number), key);
            }
            Ok(())
        })?;
    }

    /// A release key and a revision key built from valid parts parse back into those parts.
    #[test]
    fn keys_built_from_parts_parse_back(
        project in "[a-z0-9][a-z0-9-]{0,20}",
        version in "[A-Za-z0-9][A-Za-z0-9+_-]{0,20}",
        seq in 1u64..10_000_000,
    ) {
        prop_assume!(!project.contains("..") && !version.contains(".."));
        let release = ReleaseKey::of(
            &ProjectKey::new(&project).unwrap(),
            &VersionKey::new(&version).unwrap(),
        );
        let parsed = ReleaseKey::new(release.to_string());
        prop_assert_eq!(parsed.as_ref(), Ok(&release));
        let number = RevisionNumber::from_seq(seq).unwrap();
        prop_assert_eq!(number.seq(), seq);
        let key = RevisionKey::of(&release, &number);
        let back: RevisionKey = serde_json::from_value(json!(key.to_string())).unwrap();
        prop_assert_eq!(back.parts(), (release, number));
    }
}

// ---------------------------------------------------------------------------------------
// The envelope parser.

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        // Words the envelope uses, so that objects look like envelopes often enough.
        prop::sample::select(vec![
            "stage",
            "promote",
            "dir",
            "atr",
            "inline",
            "NPM",
            "DOCKER_HUB",
            "MAVEN",
            "1",
            "",
            "00001",
            "2026-01-01T00:00:00Z",
            "01936f0e-8a7b-7c3d-9e4f-0a1b2c3d4e5f",
        ])
        .prop_map(|s| json!(s)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop::sample::select(vec![
            "v",
            "id",
            "idempotency_key",
            "enqueued_at",
            "kind",
            "payload",
            "release",
            "distribution",
            "revision",
            "source",
            "artifacts",
            "asf_uid",
            "platform",
            "package",
            "version",
            "owner_namespace",
            "type",
            "manifest",
            "entries",
            "path",
            "size",
            "sha3_256",
            "dry_run",
            "x",
        ])
        .prop_map(str::to_owned);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..7)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn sha3() -> impl Strategy<Value = Sha3Hex> {
    any::<[u8; 32]>().prop_map(Sha3Hex::from_bytes)
}

fn artifact_path() -> impl Strategy<Value = ArtifactPath> {
    "[a-z0-9_-]{1,8}(\\.[a-z]{1,3})?(/[a-z0-9_-]{1,8}){0,2}"
        .prop_map(|p| ArtifactPath::new(p).unwrap())
}

fn manifest() -> impl Strategy<Value = RevisionManifest> {
    prop::collection::btree_map(artifact_path(), (any::<u64>(), sha3()), 0..6).prop_map(|files| {
        RevisionManifest::new(
            files
                .into_iter()
                .map(|(path, (size, sha3_256))| ManifestEntry {
                    path,
                    size,
                    sha3_256,
                })
                .collect(),
        )
        .unwrap()
    })
}

fn source() -> impl Strategy<Value = RevisionSourceSpec> {
    prop_oneof![
        Just(RevisionSourceSpec::Dir),
        Just(RevisionSourceSpec::Atr),
        manifest().prop_map(|manifest| RevisionSourceSpec::Inline { manifest }),
    ]
}

/// A distribution every platform's rules accept: lower-case names, a namespace where the
/// platform takes one.
fn distribution() -> impl Strategy<Value = DistributionSpec> {
    (
        prop::sample::select(Platform::ALL.to_vec()),
        "[a-z][a-z0-9]{0,10}",
        "[a-z][a-z0-9]{0,12}",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(-rc[0-9])?",
    )
        .prop_map(|(platform, namespace, package, version)| DistributionSpec {
            platform,
            owner_namespace: match platform {
                Platform::Npm | Platform::Pypi | Platform::Hex | Platform::DockerHub => {
                    String::new()
                }
                Platform::NpmScoped
                | Platform::Maven
                | Platform::Github
                | Platform::ArtifactHub => namespace,
            },
            package: PackageName::new(package).unwrap(),
            version: Version::new(version).unwrap(),
        })
}

fn envelope() -> impl Strategy<Value = Envelope> {
    let release =
        ("[a-z][a-z0-9-]{0,10}", "[0-9]{1,2}\\.[0-9]{1,2}(\\.[0-9])?").prop_map(|(p, v)| {
            ReleaseRef {
                project_key: ProjectKey::new(p).unwrap(),
                version_key: VersionKey::new(v).unwrap(),
            }
        });
    let common = (
        release,
        distribution(),
        (1u64..100_000).prop_map(|n| RevisionNumber::from_seq(n).unwrap()),
        source(),
        any::<bool>(),
        "[a-z][a-z0-9_-]{0,10}".prop_map(|u| AsfUid::new(u).unwrap()),
        // Not `v` and a digit: npm refuses tags that look like versions.
        prop::option::of("[a-uw-z][a-z0-9]{0,8}".prop_map(|t| DistTag::new(t).unwrap())),
    );
    let job = (
        common,
        any::<bool>(),
        prop::collection::vec(artifact_path(), 1..4),
    )
        .prop_map(
            |(
                (release, distribution, revision, source, dry_run, asf_uid, tag),
                stage,
                artifacts,
            )| {
                if stage {
                    Job::Stage(StageJob {
                        release,
                        distribution,
                        revision,
                        source,
                        artifacts,
                        staging_tag: tag,
                        dry_run,
                        asf_uid,
                    })
                } else {
                    Job::Promote(PromoteJob {
                        release,
                        distribution,
                        revision,
                        source,
                        release_tag: tag,
                        dry_run,
                        asf_uid,
                    })
                }
            },
        );
    (
        job,
        any::<u128>(),
        "[!-~]{1,40}",
        0i64..4_102_444_800,
        0u32..1_000_000_000,
    )
        .prop_map(|(job, id, key, secs, nanos)| Envelope {
            v: 1,
            id: JobId(uuid::Uuid::from_u128(id)),
            idempotency_key: IdempotencyKey::new(key).unwrap(),
            enqueued_at: chrono::DateTime::from_timestamp(secs, nanos).unwrap(),
            job,
        })
}

/// Where in an envelope a field can be replaced or removed.
const FIELDS: [&[&str]; 14] = [
    &["v"],
    &["id"],
    &["idempotency_key"],
    &["enqueued_at"],
    &["kind"],
    &["payload"],
    &["payload", "release"],
    &["payload", "distribution"],
    &["payload", "distribution", "platform"],
    &["payload", "distribution", "owner_namespace"],
    &["payload", "revision"],
    &["payload", "source"],
    &["payload", "asf_uid"],
    &["payload", "dry_run"],
];

/// Parses `bytes`; what it accepts must print as JSON that parses to the same envelope.
fn parse_round_trips(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(env) = Envelope::parse(bytes) {
        let again = Envelope::parse(env.to_json().as_bytes());
        prop_assert!(again.as_ref().ok() == Some(&env), "{:?}", again);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn envelope_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        parse_round_trips(&bytes)?;
    }

    #[test]
    fn envelope_parser_never_panics_on_json(value in arbitrary_json()) {
        parse_round_trips(value.to_string().as_bytes())?;
    }

    #[test]
    fn valid_envelopes_round_trip(env in envelope()) {
        prop_assume!(env.distribution_key().is_ok());
        let json = env.to_json();
        let parsed = Envelope::parse(json.as_bytes());
        prop_assert!(parsed.as_ref().ok() == Some(&env), "{}: {:?}", json, parsed.err());
        prop_assert_eq!(parsed.unwrap().to_json(), json);
    }

    #[test]
    fn envelopes_with_a_field_replaced_or_removed_never_panic(
        env in envelope(),
        field in prop::sample::select(FIELDS.to_vec()),
        replacement in prop::option::of(arbitrary_json()),
    ) {
        let mut value: Value = serde_json::from_str(&env.to_json()).unwrap();
        let (last, parents) = field.split_last().unwrap();
        let mut target = &mut value;
        for p in parents {
            target = &mut target[*p];
        }
        let Value::Object(map) = target else {
            unreachable!("every parent in FIELDS is an object");
        };
        match replacement {
            Some(v) => {
                map.insert((*last).to_owned(), v);
            }
            None => {
                map.remove(*last);
            }
        }
        parse_round_trips(value.to_string().as_bytes())?;
    }
}

// ---------------------------------------------------------------------------------------
// The manifest parser.

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn manifest_parser_never_panics(value in arbitrary_json()) {
        if let Ok(m) = serde_json::from_value::<RevisionManifest>(value) {
            let back: RevisionManifest =
                serde_json::from_value(serde_json::to_value(&m).unwrap()).unwrap();
            prop_assert_eq!(back, m);
        }
    }

    #[test]
    fn manifests_round_trip_sorted_with_an_order_free_digest(
        m in manifest(),
        seed in any::<u64>(),
    ) {
        let json = serde_json::to_value(&m).unwrap();
        let back: RevisionManifest = serde_json::from_value(json.clone()).unwrap();
        prop_assert_eq!(&back, &m);
        let paths: Vec<&str> = m.entries().iter().map(|e| e.path.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        prop_assert_eq!(paths, sorted);
        // The same files in another order: the same manifest, the same digest.
        let mut entries = m.entries().to_vec();
        fastrand::Rng::with_seed(seed).shuffle(&mut entries);
        let shuffled = RevisionManifest::new(entries.clone()).unwrap();
        prop_assert_eq!(shuffled.digest(), m.digest());
        let reordered: RevisionManifest =
            serde_json::from_value(json!({ "entries": entries })).unwrap();
        prop_assert_eq!(reordered, m.clone());
        // A path twice is refused, whatever the rest.
        if let Some(first) = m.entries().first() {
            let mut twice = m.entries().to_vec();
            twice.push(first.clone());
            prop_assert!(RevisionManifest::new(twice.clone()).is_err());
            let doc = json!({ "entries": twice });
            prop_assert!(serde_json::from_value::<RevisionManifest>(doc).is_err());
        }
    }
}
