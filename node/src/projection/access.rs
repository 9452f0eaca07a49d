//! A tenant's access control in its database: `role` (custom roles),
//! `member_role` (members whose roles were set), `access_token` and
//! `invitation`.
//! The edge reads them to learn what a caller may do.

use futures::future::BoxFuture;
use serde_json::Value;

use actors::domain::tenant::Scope;
use actors::store::seal::{person_key_name, tenant_key_name};

use super::event::{Event, Projection, Unapplied, refused, statement};
use crate::read_model::Statement;

pub struct AccessControl;

/// A list of strings from the event's data, each a safe token.
fn strings(e: &Event<'_>, field: &str) -> Result<Vec<String>, Unapplied> {
    let list =
        e.data.get(field).and_then(Value::as_array).ok_or_else(|| refused(format!("field `{field}` is not a list")))?;
    list.iter()
        .map(|v| {
            v.as_str()
                .filter(|s| s.len() <= 128 && !s.chars().any(char::is_control))
                .map(str::to_owned)
                .ok_or_else(|| refused(format!("field `{field}` holds something other than short strings")))
        })
        .collect()
}

impl Projection for AccessControl {
    fn aggregate(&self) -> &'static str {
        "access"
    }

    fn statements<'a>(&'a self, e: &'a Event<'a>) -> BoxFuture<'a, Result<Vec<Statement>, Unapplied>> {
        Box::pin(async move {
            if *e.scope == Scope::Platform {
                return Err(refused("access control belongs to tenants"));
            }
            Ok(match e.event_type() {
                "AccessEstablished" => {
                    let account = e.text("owner_account_id")?;
                    let id = e.record("member_role", &account)?;
                    vec![statement(
                        format!("UPSERT {id} CONTENT {{ account_id: $account, roles: ['owner'] }} RETURN NONE"),
                        serde_json::json!({ "account": account }),
                    )]
                }
                "RoleCreated" | "RoleUpdated" => {
                    let role_id = e.text("role_id")?;
                    let id = e.record("role", &role_id)?;
                    vec![statement(
                        format!(
                            "UPSERT {id} CONTENT {{ role_id: $role, name: $name, description: $description, permissions: $permissions }} RETURN NONE"
                        ),
                        serde_json::json!({
                            "role": role_id,
                            "name": e.text("name")?,
                            "description": e.text("description")?,
                            "permissions": strings(e, "permissions")?,
                        }),
                    )]
                }
                "RoleDeleted" => {
                    let id = e.record("role", &e.text("role_id")?)?;
                    vec![statement(format!("DELETE {id} RETURN NONE"), serde_json::json!({}))]
                }
                // Kept even for `member` alone: a row says the account's roles were
                // set, so a demoted creator is not read as the owner again.
                "MemberRolesChanged" => {
                    let account = e.text("account_id")?;
                    let id = e.record("member_role", &account)?;
                    vec![statement(
                        format!("UPSERT {id} CONTENT {{ account_id: $account, roles: $roles }} RETURN NONE"),
                        serde_json::json!({ "account": account, "roles": strings(e, "roles")? }),
                    )]
                }
                "MemberRemoved" => {
                    let account = e.text("account_id")?;
                    let id = e.record("member_role", &account)?;
                    vec![
                        statement(format!("DELETE {id} RETURN NONE"), serde_json::json!({})),
                        statement(
                            "UPDATE access_token SET revoked = true WHERE created_by = $account RETURN NONE".into(),
                            serde_json::json!({ "account": account }),
                        ),
                    ]
                }
                "AccessTokenCreated" => {
                    let token = e.text("token_id")?;
                    let id = e.record("access_token", &token)?;
                    vec![statement(
                        format!(
                            "UPSERT {id} CONTENT {{ token_id: $token, name: $name, scopes: $scopes, created_by: $by, created_at: $created, expires_at: $expires, revoked: false, secret_hash: $hash }} RETURN NONE"
                        ),
                        serde_json::json!({
                            "token": token,
                            "name": e.text("name")?,
                            "scopes": strings(e, "scopes")?,
                            "by": e.text("created_by")?,
                            "created": e.int("created_at")?,
                            "expires": e.int("expires_at")?,
                            "hash": e.open("secret_hash", &tenant_key_name(e.scope)).await?,
                        }),
                    )]
                }
                "MemberInvited" => {
                    let invitation = e.text("invitation_id")?;
                    let id = e.record("invitation", &invitation)?;
                    let kid = person_key_name(e.scope, &invitation);
                    vec![statement(
                        format!(
                            "UPSERT {id} CONTENT {{ invitation_id: $invitation, email: $email, role: $role, invited_by: $by, invited_at: $at, expires_at: $expires, status: 'pending' }} RETURN NONE"
                        ),
                        serde_json::json!({
                            "invitation": invitation,
                            "email": e.open("email", &kid).await?,
                            "role": e.text("role")?,
                            "by": e.text("invited_by")?,
                            "at": e.int("invited_at")?,
                            "expires": e.int("expires_at")?,
                        }),
                    )]
                }
                // The role joins those the account was given (a newcomer holds exactly it).
                "InvitationAccepted" => {
                    let account = e.text("account_id")?;
                    let id = e.record("invitation", &e.text("invitation_id")?)?;
                    let member = e.record("member_role", &account)?;
                    let vars = serde_json::json!({ "account": account, "role": e.text("role")? });
                    vec![
                        statement(
                            format!(
                                "UPDATE {id} SET status = 'accepted', email = NONE, accepted_by = $account RETURN NONE"
                            ),
                            vars.clone(),
                        ),
                        statement(
                            format!(
                                "UPSERT {member} SET account_id = $account, roles = array::union(roles ?? [], [$role]) RETURN NONE"
                            ),
                            vars,
                        ),
                    ]
                }
                "InvitationRevoked" => {
                    let id = e.record("invitation", &e.text("invitation_id")?)?;
                    vec![statement(
                        format!("UPDATE {id} SET status = 'revoked', email = NONE RETURN NONE"),
                        serde_json::json!({}),
                    )]
                }
                "AccessTokenRevoked" => {
                    let id = e.record("access_token", &e.text("token_id")?)?;
                    vec![statement(format!("UPDATE {id} SET revoked = true RETURN NONE"), serde_json::json!({}))]
                }
                _ => Vec::new(),
            })
        })
    }
}
