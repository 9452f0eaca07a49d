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
                            "UPSERT {id} CONTENT {{ account_id: $id, email: $email, firstname: $first, lastname: $last, owner: $owner, seq: $seq, created_at: $at, email_verified: false, locale: $locale }} RETURN NONE"
                        ),
                        serde_json::json!({
                            "id": account_id,
                            "email": e.open("email", &kid).await?,
                            "first": e.open("firstname", &kid).await?,
                            "last": e.open("lastname", &kid).await?,
                            "owner": owner,
                            "seq": e.stored.seq, "at": e.stored.envelope.occurred_at,
                            "locale": e.data.get("locale").and_then(Value::as_str),
                        }),
                    )]
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
