//! Webhooks: a tenant's HTTP endpoints that receive chosen events, signed per
//! the Standard Webhooks specification. A tenant's webhooks are the one
//! aggregate `webhook.tenant` (at most 50 of them), so the limit, a rotation
//! and a disable are decided on one state in order. The webhook reactor and
//! deliverer (`node/src/outbound/webhook.rs`) turn events into deliveries;
//! a delivery's attempts are kept outside the log, in NATS, for a bounded time.
//!
//! Nothing secret is in an event in clear: the signing secret and the
//! endpoint's credentials (basic password, API key, bearer token) are sealed
//! under the tenant's key. The URL is checked for its form here; whether its
//! addresses may be called (the SSRF guard) is the node's check, at creation
//! and again at each delivery.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::aggregate::{Aggregate, Decision, DomainError};
use crate::store::seal::Sealed;

/// The id of a tenant's webhooks aggregate.
pub const WEBHOOKS_ID: &str = "tenant";
/// At most this many webhooks per tenant.
pub const MAX_WEBHOOKS: usize = 50;
/// At most this many event types per webhook.
pub const MAX_EVENT_TYPES: usize = 100;
/// The event type that stands for every event type.
pub const ALL_EVENTS: &str = "*";
/// The longest URL accepted.
pub const MAX_URL: usize = 2048;
/// The longest name.
pub const MAX_NAME: usize = 100;
/// The longest overlap of an old secret with its successor: 7 days.
pub const MAX_OVERLAP_SECS: i64 = 7 * 24 * 3600;
/// The longest credential (password, API key, token) accepted.
pub const MAX_CREDENTIAL: usize = 4096;

/// Why a URL is refused by its form; the text is safe to show the tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("not a URL")]
    NotAUrl,
    #[error("the URL must start with http:// or https://")]
    Scheme,
    #[error("the URL must not carry a user or password")]
    Credentials,
    #[error("the URL names no host")]
    NoHost,
    #[error("the URL is longer than 2,048 characters")]
    TooLong,
}

/// Parses `raw` as a URL a webhook may be sent to: `http(s)://`, a host, no
/// user or password, at most 2,048 characters.
pub fn parse_url(raw: &str) -> Result<url::Url, UrlRefused> {
    if raw.len() > MAX_URL {
        return Err(UrlRefused::TooLong);
    }
    let url = url::Url::parse(raw).map_err(|_| UrlRefused::NotAUrl)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlRefused::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefused::Credentials);
    }
    if url.host().is_none() {
        return Err(UrlRefused::NoHost);
    }
    Ok(url)
}

/// The HTTP method a webhook is called with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Post,
    Put,
    Patch,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

/// How the endpoint authenticates Canopy, beside the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    #[default]
    None,
    /// `Authorization: Basic base64(user:password)`.
    Basic,
    /// A header of the tenant's choosing with a key.
    ApiKey,
    /// `Authorization: Bearer {token}`.
    Bearer,
}

/// A webhook's authentication as events keep it: the kind, the API key's
/// header name, and the credentials sealed under the tenant's key (for basic
/// `{"username","password"}`, for an API key `{"value"}`, for bearer
/// `{"token"}`, as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub struct WebhookAuth {
    pub kind: AuthKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Sealed>,
}

/// Headers an API key may not be sent in: the signature's and HTTP's own.
const RESERVED_HEADERS: [&str; 9] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "user-agent",
];

/// Parses the header name an API key is sent in: an HTTP token of at most 64
/// characters, not one of the headers Canopy sets itself.
pub fn parse_header(raw: &str) -> Result<String, WebhookError> {
    let bad = |why: &str| Err(WebhookError::InvalidAuth(why.to_owned()));
    if raw.is_empty() || raw.len() > 64 {
        return bad("the API key header is 1 to 64 characters");
    }
    let token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !raw.bytes().all(token_char) {
        return bad("the API key header is an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)");
    }
    let lower = raw.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str()) {
        return bad("the API key header may not be one Canopy sets itself");
    }
    Ok(lower)
}

/// Parses a credential: 1 to 4,096 characters, no control characters (they
/// could split a header).
pub fn check_credential(field: &str, raw: &str) -> Result<(), WebhookError> {
    if raw.is_empty() || raw.len() > MAX_CREDENTIAL || raw.chars().any(char::is_control) {
        return Err(WebhookError::InvalidAuth(format!("{field} is 1 to 4,096 characters without control characters")));
    }
    Ok(())
}

/// Parses a name: 1 to 100 characters, trimmed, no control characters.
pub fn parse_name(raw: &str) -> Result<String, WebhookError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(WebhookError::InvalidName);
    }
    Ok(name.to_owned())
}

/// Parses the event types a webhook receives: 1 to 100 of `known`, or `*`
/// alone for every type.
pub fn parse_event_types(raw: &[String], known: &BTreeSet<String>) -> Result<BTreeSet<String>, WebhookError> {
    if raw.is_empty() {
        return Err(WebhookError::InvalidEventTypes("name at least one event type, or `*` for all".into()));
    }
    if raw.len() > MAX_EVENT_TYPES {
        return Err(WebhookError::InvalidEventTypes("at most 100 event types".into()));
    }
    let types: BTreeSet<String> = raw.iter().cloned().collect();
    if types.contains(ALL_EVENTS) {
        if types.len() > 1 {
            return Err(WebhookError::InvalidEventTypes("`*` stands alone".into()));
        }
        return Ok(types);
    }
    if let Some(unknown) = types.iter().find(|t| !known.contains(*t)) {
        return Err(WebhookError::UnknownEventType(unknown.chars().take(100).collect()));
    }
    Ok(types)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookCreated {
    pub webhook_id: String,
    pub name: String,
    pub url: String,
    pub method: Method,
    /// Sorted; `["*"]` for every type.
    pub event_types: Vec<String>,
    pub auth: WebhookAuth,
    /// The `whsec_` signing secret, sealed under the tenant's key.
    pub secret: Sealed,
    /// The account the webhook's trouble is mailed to: its creator, or the
    /// creator of the access token that created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Unix seconds.
    pub at: i64,
}

/// What an update changed; fields left out did not change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookUpdated {
    pub webhook_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<WebhookAuth>,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookEnabled {
    pub webhook_id: String,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookDisabled {
    pub webhook_id: String,
    /// Why, in words safe to show the tenant.
    pub reason: String,
    /// The failed attempts in a row that disabled it (0: disabled by a member).
    pub failures: u32,
    /// Whom the mail about it goes to, as the webhook's creation named them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookSecretRotated {
    pub webhook_id: String,
    /// The new `whsec_` secret, sealed under the tenant's key.
    pub secret: Sealed,
    /// Until when (Unix seconds) the previous secret signs beside the new one.
    pub previous_until: i64,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookDeleted {
    pub webhook_id: String,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookRedeliveryRequested {
    pub webhook_id: String,
    /// The delivery sent again: its `webhook-id`.
    pub delivery_id: String,
    /// Where its event is in `EVENTS`.
    pub event_seq: u64,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum WebhookEvent {
    /// The tenant added an endpoint receiving `event_types`.
    WebhookCreated(WebhookCreated),
    /// The tenant changed an endpoint.
    WebhookUpdated(WebhookUpdated),
    /// A disabled endpoint receives events again.
    WebhookEnabled(WebhookEnabled),
    /// An endpoint stopped receiving events: by a member, or after failing
    /// too many times in a row (its owner is mailed).
    WebhookDisabled(WebhookDisabled),
    /// A new signing secret; the previous one signs too until `previous_until`.
    WebhookSecretRotated(WebhookSecretRotated),
    /// The tenant removed an endpoint.
    WebhookDeleted(WebhookDeleted),
    /// A member asked for one delivery to be sent again.
    WebhookRedeliveryRequested(WebhookRedeliveryRequested),
}

/// One webhook as the log says it is now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub name: String,
    pub url: String,
    pub method: Method,
    pub event_types: BTreeSet<String>,
    pub auth: WebhookAuth,
    pub secret: Sealed,
    /// The previous secret and until when it signs too.
    pub previous: Option<(Sealed, i64)>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub owner: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Webhook {
    /// Whether events of `event_type` go to this webhook.
    pub fn receives(&self, event_type: &str) -> bool {
        self.event_types.contains(ALL_EVENTS) || self.event_types.contains(event_type)
    }

    /// The secrets that sign at `now`: the current one, then the previous one
    /// while its overlap lasts.
    pub fn signing_secrets(&self, now: i64) -> Vec<&Sealed> {
        let mut out = vec![&self.secret];
        if let Some((old, until)) = &self.previous
            && now < *until
        {
            out.push(old);
        }
        out
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebhooksState {
    pub webhooks: BTreeMap<String, Webhook>,
}

/// What an update asks for; `None` leaves a field as it is. The values are
/// parsed by the caller (`parse_*`); `decide` checks the limits again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Changes {
    pub name: Option<String>,
    pub url: Option<String>,
    pub method: Option<Method>,
    pub event_types: Option<BTreeSet<String>>,
    pub auth: Option<WebhookAuth>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WebhookCommand {
    Create {
        webhook_id: String,
        name: String,
        url: String,
        method: Method,
        event_types: BTreeSet<String>,
        auth: WebhookAuth,
        secret: Sealed,
        owner: Option<String>,
        at: i64,
    },
    Update {
        webhook_id: String,
        changes: Changes,
        at: i64,
    },
    Delete {
        webhook_id: String,
        at: i64,
    },
    RotateSecret {
        webhook_id: String,
        secret: Sealed,
        overlap_secs: i64,
        at: i64,
    },
    /// By a node, after `failures` failed attempts in a row.
    Disable {
        webhook_id: String,
        reason: String,
        failures: u32,
        at: i64,
    },
    Redeliver {
        webhook_id: String,
        delivery_id: String,
        event_seq: u64,
        at: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("no such webhook")]
    NotFound,
    #[error("a tenant has at most 50 webhooks")]
    TooMany,
    #[error("a name is 1 to 100 characters without control characters")]
    InvalidName,
    #[error("{0}")]
    InvalidUrl(UrlRefused),
    #[error("{0}")]
    InvalidEventTypes(String),
    #[error("unknown event type {0}")]
    UnknownEventType(String),
    #[error("{0}")]
    InvalidAuth(String),
    #[error("the overlap is 0 to 7 days")]
    InvalidOverlap,
    #[error("the webhook is disabled: enable it first")]
    Disabled,
}

impl DomainError for WebhookError {
    fn code(&self) -> &'static str {
        match self {
            WebhookError::NotFound => "NOT_FOUND",
            WebhookError::TooMany => "LIMIT_EXCEEDED",
            WebhookError::Disabled => "CONFLICT",
            _ => "BAD_USER_INPUT",
        }
    }
}

pub struct Webhooks;

impl Aggregate for Webhooks {
    const NAME: &'static str = "webhook";
    type State = WebhooksState;
    type Command = WebhookCommand;
    type Event = WebhookEvent;
    type Error = WebhookError;

    fn decide(state: &WebhooksState, cmd: &WebhookCommand) -> Result<Decision<WebhookEvent>, WebhookError> {
        let existing = |id: &str| state.webhooks.get(id).ok_or(WebhookError::NotFound);
        let one = |e: WebhookEvent| Ok(Decision::events(vec![e]));
        match cmd {
            WebhookCommand::Create { webhook_id, name, url, method, event_types, auth, secret, owner, at } => {
                if state.webhooks.contains_key(webhook_id) {
                    return Ok(Decision::events(Vec::new()));
                }
                if state.webhooks.len() >= MAX_WEBHOOKS {
                    return Err(WebhookError::TooMany);
                }
                parse_name(name)?;
                parse_url(url).map_err(WebhookError::InvalidUrl)?;
                check_types(event_types)?;
                one(WebhookEvent::WebhookCreated(WebhookCreated {
                    webhook_id: webhook_id.clone(),
                    name: name.clone(),
                    url: url.clone(),
                    method: *method,
                    event_types: event_types.iter().cloned().collect(),
                    auth: auth.clone(),
                    secret: secret.clone(),
                    owner: owner.clone(),
                    at: *at,
                }))
            }
            WebhookCommand::Update { webhook_id, changes, at } => {
                let current = existing(webhook_id)?;
                let differs = |new: &Option<String>, old: &String| new.as_ref().filter(|n| *n != old).cloned();
                if let Some(name) = &changes.name {
                    parse_name(name)?;
                }
                if let Some(url) = &changes.url {
                    parse_url(url).map_err(WebhookError::InvalidUrl)?;
                }
                if let Some(types) = &changes.event_types {
                    check_types(types)?;
                }
                let updated = WebhookUpdated {
                    webhook_id: webhook_id.clone(),
                    name: differs(&changes.name, &current.name),
                    url: differs(&changes.url, &current.url),
                    method: changes.method.filter(|m| *m != current.method),
                    event_types: changes
                        .event_types
                        .as_ref()
                        .filter(|t| **t != current.event_types)
                        .map(|t| t.iter().cloned().collect()),
                    auth: changes.auth.clone().filter(|a| *a != current.auth),
                    at: *at,
                };
                let mut events = Vec::new();
                let changed = updated.name.is_some()
                    || updated.url.is_some()
                    || updated.method.is_some()
                    || updated.event_types.is_some()
                    || updated.auth.is_some();
                if changed {
                    events.push(WebhookEvent::WebhookUpdated(updated));
                }
                match changes.enabled {
                    Some(true) if !current.enabled => {
                        events.push(WebhookEvent::WebhookEnabled(WebhookEnabled {
                            webhook_id: webhook_id.clone(),
                            at: *at,
                        }));
                    }
                    Some(false) if current.enabled => {
                        events.push(WebhookEvent::WebhookDisabled(WebhookDisabled {
                            webhook_id: webhook_id.clone(),
                            reason: "disabled by a member".into(),
                            failures: 0,
                            owner: None,
                            at: *at,
                        }));
                    }
                    _ => {}
                }
                Ok(Decision::events(events))
            }
            WebhookCommand::Delete { webhook_id, at } => {
                existing(webhook_id)?;
                one(WebhookEvent::WebhookDeleted(WebhookDeleted { webhook_id: webhook_id.clone(), at: *at }))
            }
            WebhookCommand::RotateSecret { webhook_id, secret, overlap_secs, at } => {
                existing(webhook_id)?;
                if !(0..=MAX_OVERLAP_SECS).contains(overlap_secs) {
                    return Err(WebhookError::InvalidOverlap);
                }
                one(WebhookEvent::WebhookSecretRotated(WebhookSecretRotated {
                    webhook_id: webhook_id.clone(),
                    secret: secret.clone(),
                    previous_until: at + overlap_secs,
                    at: *at,
                }))
            }
            WebhookCommand::Disable { webhook_id, reason, failures, at } => {
                let current = existing(webhook_id)?;
                if !current.enabled {
                    return Ok(Decision::events(Vec::new()));
                }
                one(WebhookEvent::WebhookDisabled(WebhookDisabled {
                    webhook_id: webhook_id.clone(),
                    reason: reason.clone(),
                    failures: *failures,
                    owner: current.owner.clone(),
                    at: *at,
                }))
            }
            WebhookCommand::Redeliver { webhook_id, delivery_id, event_seq, at } => {
                if !existing(webhook_id)?.enabled {
                    return Err(WebhookError::Disabled);
                }
                one(WebhookEvent::WebhookRedeliveryRequested(WebhookRedeliveryRequested {
                    webhook_id: webhook_id.clone(),
                    delivery_id: delivery_id.clone(),
                    event_seq: *event_seq,
                    at: *at,
                }))
            }
        }
    }

    fn evolve(mut state: WebhooksState, event: &WebhookEvent) -> WebhooksState {
        match event {
            WebhookEvent::WebhookCreated(e) => {
                state.webhooks.insert(
                    e.webhook_id.clone(),
                    Webhook {
                        name: e.name.clone(),
                        url: e.url.clone(),
                        method: e.method,
                        event_types: e.event_types.iter().cloned().collect(),
                        auth: e.auth.clone(),
                        secret: e.secret.clone(),
                        previous: None,
                        enabled: true,
                        disabled_reason: None,
                        owner: e.owner.clone(),
                        created_at: e.at,
                        updated_at: e.at,
                    },
                );
            }
            WebhookEvent::WebhookUpdated(e) => {
                if let Some(w) = state.webhooks.get_mut(&e.webhook_id) {
                    if let Some(name) = &e.name {
                        w.name = name.clone();
                    }
                    if let Some(url) = &e.url {
                        w.url = url.clone();
                    }
                    if let Some(method) = e.method {
                        w.method = method;
                    }
                    if let Some(types) = &e.event_types {
                        w.event_types = types.iter().cloned().collect();
                    }
                    if let Some(auth) = &e.auth {
                        w.auth = auth.clone();
                    }
                    w.updated_at = e.at;
                }
            }
            WebhookEvent::WebhookEnabled(e) => {
                if let Some(w) = state.webhooks.get_mut(&e.webhook_id) {
                    w.enabled = true;
                    w.disabled_reason = None;
                    w.updated_at = e.at;
                }
            }
            WebhookEvent::WebhookDisabled(e) => {
                if let Some(w) = state.webhooks.get_mut(&e.webhook_id) {
                    w.enabled = false;
                    w.disabled_reason = Some(e.reason.clone());
                    w.updated_at = e.at;
                }
            }
            WebhookEvent::WebhookSecretRotated(e) => {
                if let Some(w) = state.webhooks.get_mut(&e.webhook_id) {
                    let old = std::mem::replace(&mut w.secret, e.secret.clone());
                    w.previous = Some((old, e.previous_until));
                    w.updated_at = e.at;
                }
            }
            WebhookEvent::WebhookDeleted(e) => {
                state.webhooks.remove(&e.webhook_id);
            }
            WebhookEvent::WebhookRedeliveryRequested(_) => {}
        }
        state
    }
}

/// The limits on a set of event types that `decide` checks again.
fn check_types(types: &BTreeSet<String>) -> Result<(), WebhookError> {
    if types.is_empty() || types.len() > MAX_EVENT_TYPES {
        return Err(WebhookError::InvalidEventTypes("1 to 100 event types".into()));
    }
    if types.contains(ALL_EVENTS) && types.len() > 1 {
        return Err(WebhookError::InvalidEventTypes("`*` stands alone".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::aggregate::check;

    fn sealed(c: &str) -> Sealed {
        Sealed { kid: "tenant.acme".into(), n: "bm9uY2U".into(), c: c.into() }
    }

    fn created(id: &str) -> WebhookEvent {
        WebhookEvent::WebhookCreated(WebhookCreated {
            webhook_id: id.into(),
            name: "orders".into(),
            url: "https://hooks.example.com/in".into(),
            method: Method::Post,
            event_types: vec!["AccountRegistered".into()],
            auth: WebhookAuth::default(),
            secret: sealed("s1"),
            owner: Some("a1".into()),
            at: 10,
        })
    }

    fn create(id: &str, url: &str) -> WebhookCommand {
        WebhookCommand::Create {
            webhook_id: id.into(),
            name: "orders".into(),
            url: url.into(),
            method: Method::Post,
            event_types: BTreeSet::from(["AccountRegistered".to_owned()]),
            auth: WebhookAuth::default(),
            secret: sealed("s1"),
            owner: Some("a1".into()),
            at: 10,
        }
    }

    #[test]
    fn urls_are_http_with_a_host_and_no_credentials() {
        assert!(parse_url("https://hooks.example.com/in?x=1").is_ok());
        for (raw, why) in [
            ("ftp://example.com/", UrlRefused::Scheme),
            ("file:///etc/passwd", UrlRefused::Scheme),
            ("javascript:alert(1)", UrlRefused::Scheme),
            ("https://user:pw@example.com/", UrlRefused::Credentials),
            ("not a url", UrlRefused::NotAUrl),
        ] {
            assert_eq!(parse_url(raw).unwrap_err(), why, "{raw}");
        }
        assert_eq!(parse_url(&format!("https://e.com/{}", "a".repeat(MAX_URL))).unwrap_err(), UrlRefused::TooLong);
    }

    #[test]
    fn a_webhook_is_created_once_within_the_limit_and_with_a_valid_url() {
        check::<Webhooks>(&[], create("w1", "https://hooks.example.com/in"), Ok(vec![created("w1")]));
        check::<Webhooks>(&[created("w1")], create("w1", "https://hooks.example.com/in"), Ok(vec![]));
        check::<Webhooks>(
            &[],
            create("w1", "gopher://hooks.example.com/"),
            Err(WebhookError::InvalidUrl(UrlRefused::Scheme)),
        );
        let full: Vec<WebhookEvent> = (0..MAX_WEBHOOKS).map(|i| created(&format!("w{i}"))).collect();
        check::<Webhooks>(&full, create("new", "https://hooks.example.com/in"), Err(WebhookError::TooMany));
    }

    #[test]
    fn event_types_are_known_bounded_or_all() {
        let known: BTreeSet<String> = ["A", "B"].iter().map(|s| (*s).to_owned()).collect();
        let types = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(parse_event_types(&types(&["B", "A", "A"]), &known).unwrap().len(), 2);
        assert!(parse_event_types(&types(&["*"]), &known).is_ok());
        assert!(parse_event_types(&types(&["*", "A"]), &known).is_err());
        assert!(parse_event_types(&types(&[]), &known).is_err());
        assert_eq!(parse_event_types(&types(&["C"]), &known), Err(WebhookError::UnknownEventType("C".into())));
        let many: Vec<String> = (0..101).map(|i| format!("T{i}")).collect();
        assert!(matches!(parse_event_types(&many, &known), Err(WebhookError::InvalidEventTypes(_))));
    }

    #[test]
    fn api_key_headers_are_tokens_and_never_the_signature_headers() {
        assert_eq!(parse_header("X-Api-Key").unwrap(), "x-api-key");
        assert_eq!(parse_header("Authorization").unwrap(), "authorization");
        for bad in ["", "a b", "x:y", "x\r\ny", "webhook-signature", "Host", &"x".repeat(65)] {
            assert!(parse_header(bad).is_err(), "{bad:?}");
        }
        assert!(check_credential("token", "abc").is_ok());
        assert!(check_credential("token", "a\r\nX-Evil: 1").is_err());
        assert!(check_credential("token", "").is_err());
    }

    #[test]
    fn an_update_records_only_what_changed_and_enables_or_disables() {
        let same = Changes { name: Some("orders".into()), ..Changes::default() };
        check::<Webhooks>(
            &[created("w1")],
            WebhookCommand::Update { webhook_id: "w1".into(), changes: same, at: 11 },
            Ok(vec![]),
        );
        let off =
            Changes { enabled: Some(false), url: Some("https://other.example.com/".into()), ..Changes::default() };
        check::<Webhooks>(
            &[created("w1")],
            WebhookCommand::Update { webhook_id: "w1".into(), changes: off, at: 11 },
            Ok(vec![
                WebhookEvent::WebhookUpdated(WebhookUpdated {
                    webhook_id: "w1".into(),
                    name: None,
                    url: Some("https://other.example.com/".into()),
                    method: None,
                    event_types: None,
                    auth: None,
                    at: 11,
                }),
                WebhookEvent::WebhookDisabled(WebhookDisabled {
                    webhook_id: "w1".into(),
                    reason: "disabled by a member".into(),
                    failures: 0,
                    owner: None,
                    at: 11,
                }),
            ]),
        );
        check::<Webhooks>(
            &[],
            WebhookCommand::Update { webhook_id: "w1".into(), changes: Changes::default(), at: 11 },
            Err(WebhookError::NotFound),
        );
    }

    #[test]
    fn a_rotation_keeps_the_old_secret_signing_for_the_overlap() {
        let rotated = WebhookEvent::WebhookSecretRotated(WebhookSecretRotated {
            webhook_id: "w1".into(),
            secret: sealed("s2"),
            previous_until: 110,
            at: 10,
        });
        let rotate = |overlap| WebhookCommand::RotateSecret {
            webhook_id: "w1".into(),
            secret: sealed("s2"),
            overlap_secs: overlap,
            at: 10,
        };
        check::<Webhooks>(&[created("w1")], rotate(100), Ok(vec![rotated.clone()]));
        check::<Webhooks>(&[created("w1")], rotate(MAX_OVERLAP_SECS + 1), Err(WebhookError::InvalidOverlap));
        let state = crate::domain::aggregate::replay::<Webhooks>(&[created("w1"), rotated]);
        let w = &state.webhooks["w1"];
        let cs = |now| w.signing_secrets(now).into_iter().map(|s| s.c.clone()).collect::<Vec<_>>();
        assert_eq!(cs(50), ["s2", "s1"]);
        assert_eq!(cs(110), ["s2"]);
    }

    #[test]
    fn a_disable_names_the_owner_once_and_a_disabled_webhook_is_not_redelivered() {
        let disable =
            WebhookCommand::Disable { webhook_id: "w1".into(), reason: "failing".into(), failures: 5, at: 20 };
        let disabled = WebhookEvent::WebhookDisabled(WebhookDisabled {
            webhook_id: "w1".into(),
            reason: "failing".into(),
            failures: 5,
            owner: Some("a1".into()),
            at: 20,
        });
        check::<Webhooks>(&[created("w1")], disable.clone(), Ok(vec![disabled.clone()]));
        check::<Webhooks>(&[created("w1"), disabled.clone()], disable, Ok(vec![]));
        let redeliver =
            WebhookCommand::Redeliver { webhook_id: "w1".into(), delivery_id: "msg_1".into(), event_seq: 3, at: 30 };
        check::<Webhooks>(&[created("w1"), disabled], redeliver, Err(WebhookError::Disabled));
    }
}
