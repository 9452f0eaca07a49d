//! The GraphQL API: queries read SurrealDB; mutations become commands sent over
//! NATS to the tenant's tree, and answer once their events are projected.

use std::sync::atomic::{AtomicU64, Ordering};

use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{MergedObject, Schema};

pub mod access;
pub mod accounts;
pub mod audit;
pub mod backups;
pub mod invitations;
pub mod live;
pub mod module_schema;
pub mod modules;
pub mod permissions;
pub mod push;
pub mod request;
pub mod sessions;
pub mod tenants;
pub mod webhooks;

// The roots merge one part per area (`accounts.rs`, `tenants.rs`, ...); a new
// area adds its part here.

/// What can be read: the signed-in account, a tenant's users, the platform's tenants.
#[derive(MergedObject, Default)]
pub struct Query(
    accounts::AccountQuery,
    audit::AuditQueryRoot,
    backups::BackupQuery,
    access::AccessQuery,
    invitations::InvitationQuery,
    modules::ModulesQuery,
    push::PushQuery,
    sessions::SessionQuery,
    tenants::TenantQuery,
    webhooks::WebhookQuery,
);

/// What can be changed: accounts, profiles and tenants.
#[derive(MergedObject, Default)]
pub struct Mutation(
    accounts::AccountMutation,
    access::AccessMutation,
    backups::BackupMutation,
    invitations::InvitationMutation,
    modules::ModulesMutation,
    push::PushMutation,
    sessions::SessionMutation,
    tenants::TenantMutation,
    webhooks::WebhookMutation,
);

pub type CanopySchema = Schema<Query, Mutation, live::SubscriptionRoot>;

/// Deep enough for GraphiQL's introspection query, shallow enough to stop abuse.
pub const MAX_DEPTH: usize = 16;
pub const MAX_COMPLEXITY: usize = 500;

pub fn schema() -> CanopySchema {
    schema_with(true)
}

/// The schema, with introspection (`__schema`, `__type`) answered or refused.
pub fn schema_with(introspection: bool) -> CanopySchema {
    let builder = Schema::build(Query::default(), Mutation::default(), live::SubscriptionRoot)
        .extension(permissions::RootFieldGuard)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY);
    if introspection { builder.finish() } else { builder.disable_introspection().finish() }
}

/// The most text a remembered document may have; longer ones are parsed each time.
const DOCUMENT_MAX_LEN: usize = 16 * 1024;
/// The text the remembered documents may add up to (their trees are a few times larger).
const DOCUMENTS_MAX_BYTES: u64 = 2 * 1024 * 1024;

/// Parsed GraphQL documents, by their text. Clients send the same few documents
/// over and over with different variables, and parsing was a measurable share of a
/// mutation's CPU. Only the parse is skipped: the depth, complexity and directive
/// limits and validation still run on every request.
pub struct Documents {
    parsed: quick_cache::sync::Cache<String, ExecutableDocument, TextWeight>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Clone)]
struct TextWeight;

impl quick_cache::Weighter<String, ExecutableDocument> for TextWeight {
    fn weight(&self, text: &String, _: &ExecutableDocument) -> u64 {
        text.len() as u64 + 1
    }
}

impl Default for Documents {
    fn default() -> Self {
        Self {
            parsed: quick_cache::sync::Cache::with_weighter(4096, DOCUMENTS_MAX_BYTES, TextWeight),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }
}

impl Documents {
    /// Gives `request` its parsed document: the remembered one, or a fresh parse
    /// that is remembered when it succeeds. A text that does not parse is left to
    /// `execute`, which reports the syntax error.
    pub fn prepare(&self, request: &mut async_graphql::Request) {
        if request.query.len() > DOCUMENT_MAX_LEN {
            return;
        }
        if let Some(doc) = self.parsed.get(request.query.as_str()) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            request.set_parsed_query(doc);
            return;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        if let Ok(doc) = request.parsed_query() {
            let doc = doc.clone();
            self.parsed.insert(request.query.clone(), doc);
        }
    }

    /// Documents whose parse was (remembered, parsed anew) since start.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }
}
