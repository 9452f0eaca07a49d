//! Accounts in their tenant's database: one `user` record per account, its
//! personal fields opened with the person's own key (or `[erased]`).

use actors::store::seal::person_key_name;
use futures::future::BoxFuture;
use serde_json::Value;

use super::event::{Event, Projection, Unapplied, refused, statement};
use crate::read_model::Statement;

pub struct Accounts;

impl Projection for Accounts {
    fn aggregate(&self) -> &'static str {
        "account"
    }

    fn statements<'a>(&'a self, e: &'a Event<'a>) -> BoxFuture<'a, Result<Vec<Statement>, Unapplied>> {
        Box::pin(async move {
            Ok(match e.event_type() {
                "AccountRegistered" => {
                    let account_id = e.text("account_id")?;
                    if account_id != e.aggregate_id() {
                        return Err(refused("field `account_id` disagrees with the aggregate id"));
                    }
                    let id = e.record("user", &account_id)?;
                    let owner = e
                        .data
                        .get("owner")
                        .and_then(Value::as_bool)
                        .ok_or_else(|| refused("field `owner` is missing or not a boolean"))?;
                    let kid = person_key_name(e.scope, &account_id);
                    // `RETURN NONE`: the projector reads no results.
                    vec![statement(
                        format!(
                            "UPSERT {id} CONTENT {{ account_id: $id, email: $email, firstname: $first, lastname: $last, owner: $owner, seq: $seq, created_at: $at, email_verified: $verified, locale: $locale }} RETURN NONE"
                        ),
                        serde_json::json!({
                            "id": account_id,
                            "email": e.open("email", &kid).await?,
                            "first": e.open("firstname", &kid).await?,
                            "last": e.open("lastname", &kid).await?,
                            "owner": owner,
                            "seq": e.stored.seq, "at": e.stored.envelope.occurred_at,
                            "locale": e.data.get("locale").and_then(Value::as_str).unwrap_or("en"),
                            "verified": e.data.get("email_verified").and_then(Value::as_bool).unwrap_or(false),
                        }),
                    )]
                }
                "SessionStarted" => {
                    let session_id = e.text("session_id")?;
                    let id = e.record("session", &session_id)?;
                    let kid = person_key_name(e.scope, e.aggregate_id());
                    let user_agent = match e.data.get("user_agent") {
                        None | Some(Value::Null) => None,
                        Some(_) => Some(e.open("user_agent", &kid).await?),
                    };
                    let started = e
                        .data
                        .get("started_at")
                        .and_then(Value::as_i64)
                        .ok_or_else(|| refused("field `started_at` is missing"))?;
                    let at = crate::graphql::accounts::rfc3339(started);
                    // SurrealDB's `option<string>` takes NONE, not the JSON null a
                    // missing value would bind as: leave the field out instead.
                    let ua_field = if user_agent.is_some() { ", user_agent: $ua" } else { "" };
                    vec![statement(
                        format!(
                            "UPSERT {id} CONTENT {{ session_id: $sid, account_id: $account, created_at: $at, last_used_at: $at, seq: $seq{ua_field} }} RETURN NONE"
                        ),
                        serde_json::json!({
                            "sid": session_id, "account": e.aggregate_id(), "at": at, "ua": user_agent, "seq": e.stored.seq,
                        }),
                    )]
                }
                "SessionRefreshed" => {
                    let id = e.record("session", &e.text("session_id")?)?;
                    let at = e
                        .data
                        .get("refreshed_at")
                        .and_then(Value::as_i64)
                        .ok_or_else(|| refused("field `refreshed_at` is missing"))?;
                    vec![statement(
                        format!("UPDATE {id} SET last_used_at = $at WHERE account_id = $account RETURN NONE"),
                        serde_json::json!({ "at": crate::graphql::accounts::rfc3339(at), "account": e.aggregate_id() }),
                    )]
                }
                "SessionRevoked" => {
                    let id = e.record("session", &e.text("session_id")?)?;
                    vec![statement(
                        format!("DELETE {id} WHERE account_id = $account RETURN NONE"),
                        serde_json::json!({ "account": e.aggregate_id() }),
                    )]
                }
                "EmailChanged" => {
                    let id = e.record("user", e.aggregate_id())?;
                    let kid = person_key_name(e.scope, e.aggregate_id());
                    vec![statement(
                        format!("UPDATE {id} SET email = $email, email_verified = true RETURN NONE"),
                        serde_json::json!({ "email": e.open("email", &kid).await? }),
                    )]
                }
                "AccountErased" => {
                    // The person leaves the read models with their sessions; their
                    // events stay in the log, sealed under a key that is gone.
                    let id = e.record("user", e.aggregate_id())?;
                    vec![
                        statement(format!("DELETE {id} RETURN NONE"), serde_json::json!({})),
                        statement(
                            "DELETE session WHERE account_id = $account RETURN NONE".into(),
                            serde_json::json!({ "account": e.aggregate_id() }),
                        ),
                    ]
                }
                "EmailVerified" => {
                    let id = e.record("user", e.aggregate_id())?;
                    vec![statement(format!("UPDATE {id} SET email_verified = true RETURN NONE"), serde_json::json!({}))]
                }
                "ProfileUpdated" => {
                    let id = e.record("user", e.aggregate_id())?;
                    let kid = person_key_name(e.scope, e.aggregate_id());
                    let locale = e.data.get("locale").and_then(Value::as_str);
                    let set_locale = if locale.is_some() { ", locale = $locale" } else { "" };
                    vec![statement(
                        format!("UPDATE {id} SET firstname = $first, lastname = $last{set_locale} RETURN NONE"),
                        serde_json::json!({
                            "first": e.open("firstname", &kid).await?,
                            "last": e.open("lastname", &kid).await?,
                            "locale": locale,
                        }),
                    )]
                }
                _ => Vec::new(),
            })
        })
    }
}
