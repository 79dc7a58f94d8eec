//! Registry authentication: `WWW-Authenticate` challenges, token scopes, and a cache of
//! bearer tokens by the scopes they were asked for.
//!
//! The flow is the distribution token spec's: a request without a (valid) token gets 401
//! with `Bearer realm="…",service="…",scope="…"`; the client asks the realm for a token
//! for those scopes (with Basic credentials when it has them) and sends the request again
//! with `Authorization: Bearer <token>`. A 401 with `error="insufficient_scope"` names the
//! scopes that were missing; the client asks again for all of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use serde::Deserialize;

use crate::secret::Secret;

/// A token's life when the realm does not say (the spec's default).
pub const DEFAULT_EXPIRES_IN: u64 = 60;
/// Tokens are dropped this long before they expire, so that none expires in flight.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// What a 401 asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Scopes,
        /// `insufficient_scope`, `invalid_token`, …
        error: Option<String>,
    },
    Basic,
}

impl Challenge {
    /// The challenge of a 401, preferring Bearer when a registry offers several.
    pub fn from_headers(headers: &HeaderMap) -> Option<Challenge> {
        let mut found = None;
        for value in headers.get_all(WWW_AUTHENTICATE) {
            let Ok(text) = value.to_str() else { continue };
            match parse_challenge(text) {
                Some(bearer @ Challenge::Bearer { .. }) => return Some(bearer),
                Some(Challenge::Basic) => found = Some(Challenge::Basic),
                None => {}
            }
        }
        found
    }
}

/// Parses one `WWW-Authenticate` value: a scheme, then `key=value` or `key="quoted"` pairs.
/// Quoted values contain commas (`scope="repository:a/b:pull,push"`), so this is not a
/// split on commas.
pub fn parse_challenge(text: &str) -> Option<Challenge> {
    let text = text.trim();
    let (scheme, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let realm = params.get("realm")?.clone();
    let scope = params
        .get("scope")
        .map(|s| Scopes::parse(s))
        .unwrap_or_default();
    Some(Challenge::Bearer {
        realm,
        service: params.get("service").cloned(),
        scope,
        error: params.get("error").cloned(),
    })
}

fn parse_params(mut rest: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    other => value.push(other),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(key, value);
        rest = remainder;
    }
    params
}

/// A set of token scopes (`repository:<name>:<actions>`), actions merged per resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(BTreeMap<(String, String), BTreeSet<String>>);

impl Scopes {
    /// Space-separated scopes, as a challenge's `scope` parameter holds them.
    pub fn parse(text: &str) -> Scopes {
        let mut s = Scopes::default();
        for one in text.split_whitespace() {
            // type:name:actions, where the name itself may hold a colon (a registry host
            // with a port): split at the first and the last colon.
            let Some((kind, rest)) = one.split_once(':') else {
                continue;
            };
            let Some((name, actions)) = rest.rsplit_once(':') else {
                continue;
            };
            s.add(kind, name, actions.split(','));
        }
        s
    }

    pub fn repository<'a>(name: &str, actions: impl IntoIterator<Item = &'a str>) -> Scopes {
        let mut s = Scopes::default();
        s.add("repository", name, actions);
        s
    }

    pub fn add<'a>(&mut self, kind: &str, name: &str, actions: impl IntoIterator<Item = &'a str>) {
        let set = self
            .0
            .entry((kind.to_owned(), name.to_owned()))
            .or_default();
        set.extend(
            actions
                .into_iter()
                .filter(|a| !a.is_empty())
                .map(str::to_owned),
        );
    }

    pub fn merge(&mut self, other: &Scopes) {
        for ((kind, name), actions) in &other.0 {
            self.add(kind, name, actions.iter().map(String::as_str));
        }
    }

    /// Whether every action of `other` is in this set.
    pub fn covers(&self, other: &Scopes) -> bool {
        other
            .0
            .iter()
            .all(|(k, actions)| self.0.get(k).is_some_and(|mine| mine.is_superset(actions)))
    }

    /// One string per resource, for the realm's `scope` query parameters.
    pub fn to_params(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|((kind, name), actions)| {
                let actions: Vec<&str> = actions.iter().map(String::as_str).collect();
                format!("{kind}:{name}:{}", actions.join(","))
            })
            .collect()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_params().join(" "))
    }
}

/// A token realm's answer. Docker Hub sends both names; the spec allows either.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub fn bearer(&self) -> Option<&str> {
        self.token
            .as_deref()
            .or(self.access_token.as_deref())
            .filter(|t| !t.is_empty())
    }

    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.expires_in.unwrap_or(DEFAULT_EXPIRES_IN))
    }
}

/// Bearer tokens by the scopes they were requested for, until shortly before they expire.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, (Secret, Instant)>>,
}

impl TokenCache {
    pub fn get(&self, scopes: &Scopes) -> Option<Secret> {
        let key = scopes.to_string();
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        match tokens.get(&key) {
            Some((token, until)) if Instant::now() < *until => Some(token.clone()),
            Some(_) => {
                tokens.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, scopes: &Scopes, token: Secret, lifetime: Duration) {
        let until = Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN);
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        // Expired entries go when a new one comes, so the map stays small.
        let now = Instant::now();
        tokens.retain(|_, (_, until)| now < *until);
        tokens.insert(scopes.to_string(), (token, until));
    }

    pub fn forget(&self, scopes: &Scopes) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.remove(&scopes.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn bearer_challenges_keep_quoted_commas() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:apache/httpd:pull,push",error="insufficient_scope""#,
        )
        .unwrap();
        let Challenge::Bearer {
            realm,
            service,
            scope,
            error,
        } = c
        else {
            panic!("not bearer: {c:?}")
        };
        assert_eq!(realm, "https://auth.docker.io/token");
        assert_eq!(service.as_deref(), Some("registry.docker.io"));
        assert_eq!(scope.to_params(), vec!["repository:apache/httpd:pull,push"]);
        assert_eq!(error.as_deref(), Some("insufficient_scope"));
    }

    #[test]
    fn other_challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(
            parse_challenge(r#"Bearer service="x""#),
            None,
            "a realm is required"
        );
        let mut h = HeaderMap::new();
        h.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="r""#),
        );
        h.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="https://r/t""#),
        );
        assert!(matches!(
            Challenge::from_headers(&h),
            Some(Challenge::Bearer { .. })
        ));
    }

    #[test]
    fn scopes_merge_and_cover() {
        let mut s = Scopes::repository("a/b", ["pull"]);
        let challenge =
            Scopes::parse("repository:a/b:push,pull repository:c/d:pull registry:catalog:*");
        assert!(!s.covers(&challenge));
        s.merge(&challenge);
        assert!(s.covers(&challenge));
        assert_eq!(
            s.to_params(),
            vec![
                "registry:catalog:*",
                "repository:a/b:pull,push",
                "repository:c/d:pull"
            ]
        );
        let with_port = Scopes::parse("repository:host:5000/a/b:pull");
        assert_eq!(with_port.to_params(), vec!["repository:host:5000/a/b:pull"]);
    }

    #[test]
    fn tokens_expire_from_the_cache() {
        let cache = TokenCache::default();
        let s = Scopes::repository("a/b", ["pull"]);
        cache.put(&s, Secret::new("t1"), Duration::from_secs(60));
        assert_eq!(cache.get(&s).unwrap().expose(), "t1");
        assert!(
            cache
                .get(&Scopes::repository("a/b", ["pull", "push"]))
                .is_none()
        );
        // Shorter than the margin: never served.
        cache.put(&s, Secret::new("t2"), Duration::from_secs(3));
        assert!(cache.get(&s).is_none());
        cache.put(&s, Secret::new("t3"), Duration::from_secs(60));
        cache.forget(&s);
        assert!(cache.get(&s).is_none());
    }
}
