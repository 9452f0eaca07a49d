//! The NATS auth callout service. nats-server sends every client that
//! connects without a user JWT of its own (NATS or WebSocket with a user name
//! and password, an MQTT CONNECT) to account `AUTH`, whose callout asks the
//! service on `$SYS.REQ.USER.AUTH` with a request JWT signed by the server.
//! The node decodes it, lets a `Decide` judge the user name and password, and
//! answers with an `authorization_response` JWT signed by `AUTH`'s key that
//! carries either a user JWT of account `PUSH` (signed by `PUSH`'s key, for
//! the user key the server chose for this connection) or an error.
//!
//! The server checks the answer's subject (its user key), audience (its id)
//! and signer, so an answer cannot be replayed for another connection or
//! server. The request's signature is checked too: only a server key signs
//! requests, and only requests from the server reach this subject.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use futures::StreamExt;
use nkeys::KeyPair;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::auth::{encode, user_jwt};

/// The subject nats-server asks on.
pub const SUBJECT: &str = "$SYS.REQ.USER.AUTH";
/// The queue group the nodes answer in: one node answers each request.
const QUEUE: &str = "canopy-callout";
/// Requests judged at once per node; more wait their turn.
const CONCURRENCY: usize = 64;
/// Longest a user name or password is read; longer ones are refused unread.
const MAX_CREDENTIAL: usize = 8 * 1024;

/// How a client reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Nats,
    WebSocket,
    Mqtt,
}

impl Transport {
    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "nats" => Some(Self::Nats),
            "websocket" => Some(Self::WebSocket),
            "mqtt" => Some(Self::Mqtt),
            _ => None,
        }
    }
}

/// What a client presented: the user name and password of its CONNECT (for
/// MQTT, the MQTT user name and password).
#[derive(Debug, Clone)]
pub struct Presented {
    pub user: String,
    pub password: String,
    pub transport: Transport,
    /// The client's address, as the server saw it.
    pub address: Option<std::net::IpAddr>,
}

/// Who a client is allowed in as: a user of `PUSH` limited to `subjects`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Shown in the server's connection list, e.g. `acme/token:…`.
    pub name: String,
    /// The subjects it may subscribe to (`push.acme.>`).
    pub subscribe: Vec<String>,
    /// When the connection must end (Unix time): its credential's expiry.
    pub expires: Option<i64>,
}

/// Judges what a client presented. The refusal text goes back to the server
/// (its log), never to the client, which only learns it was refused.
pub trait Decide: Send + Sync + 'static {
    fn decide(&self, presented: Presented) -> impl Future<Output = Result<Grant, String>> + Send;
}

/// The request's claims Canopy reads.
#[derive(Debug, Deserialize)]
struct RequestClaims {
    iss: String,
    nats: RequestBody,
}

#[derive(Debug, Deserialize)]
struct RequestBody {
    server_id: ServerId,
    user_nkey: String,
    #[serde(default)]
    client_info: ClientInfo,
    #[serde(default)]
    connect_opts: ConnectOpts,
}

#[derive(Debug, Deserialize)]
struct ServerId {
    id: String,
}

#[derive(Debug, Default, Deserialize)]
struct ClientInfo {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    host: String,
}

#[derive(Debug, Default, Deserialize)]
struct ConnectOpts {
    #[serde(default)]
    user: String,
    #[serde(default)]
    pass: String,
}

/// A request whose signature and shape were checked.
#[derive(Debug)]
struct Request {
    server_id: String,
    user_nkey: String,
    presented: Result<Presented, String>,
}

/// Decodes a request JWT and checks that a server key signed it.
fn parse_request(jwt: &str) -> anyhow::Result<Request> {
    let (input, sig) = jwt.rsplit_once('.').ok_or_else(|| anyhow!("not a JWT"))?;
    let (header, body) = input.split_once('.').ok_or_else(|| anyhow!("not a JWT"))?;
    let header: Value = serde_json::from_slice(&B64.decode(header)?)?;
    if header["alg"] != "ed25519-nkey" {
        return Err(anyhow!("the request is not signed with an nkey"));
    }
    let claims: RequestClaims = serde_json::from_slice(&B64.decode(body)?)?;
    if !claims.iss.starts_with('N') {
        return Err(anyhow!("the request is not signed by a server key"));
    }
    let signer = KeyPair::from_public_key(&claims.iss).map_err(|e| anyhow!("the request's issuer: {e}"))?;
    signer.verify(input.as_bytes(), &B64.decode(sig)?).map_err(|_| anyhow!("the request's signature is wrong"))?;
    let n = claims.nats;
    if KeyPair::from_public_key(&n.user_nkey).is_err() || !n.user_nkey.starts_with('U') {
        return Err(anyhow!("the request names no user key"));
    }
    let presented = match Transport::parse(&n.client_info.kind) {
        None => Err(format!("connections of type {:?} are not allowed", n.client_info.kind)),
        Some(_) if n.connect_opts.user.len() > MAX_CREDENTIAL || n.connect_opts.pass.len() > MAX_CREDENTIAL => {
            Err("the credentials are too long".to_owned())
        }
        Some(transport) => Ok(Presented {
            user: n.connect_opts.user,
            password: n.connect_opts.pass,
            transport,
            address: n.client_info.host.parse().ok(),
        }),
    };
    Ok(Request { server_id: n.server_id.id, user_nkey: n.user_nkey, presented })
}

/// The keys the answers are signed with.
pub struct Signers {
    /// `AUTH`: signs the `authorization_response`.
    pub callout: KeyPair,
    /// `PUSH`: signs the user JWT inside it.
    pub push: KeyPair,
}

impl Signers {
    /// The answer for `request`: a user of `PUSH` per `grant`, or the refusal.
    fn answer(&self, request: &Request, grant: Result<Grant, String>) -> anyhow::Result<String> {
        let mut nats = json!({ "type": "authorization_response", "version": 2 });
        match grant {
            Ok(g) => {
                let permissions = json!({
                    "pub": { "deny": [">"] },
                    "sub": { "allow": g.subscribe },
                    "allowed_connection_types": ["STANDARD", "WEBSOCKET", "MQTT"],
                    "subs": 1000,
                });
                nats["jwt"] = Value::String(user_jwt(&self.push, &request.user_nkey, &g.name, permissions, g.expires)?);
            }
            Err(reason) => nats["error"] = Value::String(reason),
        }
        encode(&self.callout, json!({ "sub": request.user_nkey, "aud": request.server_id, "nats": nats }))
    }
}

/// The callout service's subscription, registered with the server.
pub struct Service {
    client: async_nats::Client,
    requests: async_nats::Subscriber,
}

impl Service {
    /// Subscribes on `client` (connected as the callout service user) and
    /// waits until the server has the subscription, so that no client that
    /// connects after this returns waits for an answer nobody gives.
    pub async fn subscribe(client: async_nats::Client) -> anyhow::Result<Self> {
        let requests = client.queue_subscribe(SUBJECT, QUEUE.into()).await?;
        client.flush().await?;
        Ok(Self { client, requests })
    }

    /// Answers the server's requests until `cancel`. Each request is judged on
    /// a task of its own, at most `CONCURRENCY` at once, so one slow check
    /// does not hold up the others.
    pub async fn serve<D: Decide>(
        self,
        signers: Signers,
        decide: Arc<D>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        serve(self.client, self.requests, signers, decide, cancel).await
    }
}

async fn serve<D: Decide>(
    client: async_nats::Client,
    mut requests: async_nats::Subscriber,
    signers: Signers,
    decide: Arc<D>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let signers = Arc::new(signers);
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    loop {
        let msg = tokio::select! {
            m = requests.next() => match m { Some(m) => m, None => return Ok(()) },
            () = cancel.cancelled() => return Ok(()),
        };
        let Some(reply) = msg.reply.clone() else { continue };
        let permit = permits.clone().acquire_owned().await?;
        let (client, signers, decide) = (client.clone(), signers.clone(), decide.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let answer = match std::str::from_utf8(&msg.payload).map_err(|e| anyhow!(e)).and_then(parse_request) {
                Ok(request) => {
                    let grant = match request.presented.clone() {
                        Ok(p) => match tokio::time::timeout(Duration::from_millis(1500), decide.decide(p)).await {
                            Ok(g) => g,
                            Err(_) => Err("the credential check took too long".to_owned()),
                        },
                        Err(e) => Err(e),
                    };
                    if let Err(reason) = &grant {
                        tracing::debug!(reason, "push client refused");
                    }
                    signers.answer(&request, grant)
                }
                Err(e) => {
                    // Without a readable request there is no user key to answer for;
                    // the server times the client out.
                    tracing::warn!(error = %e, "an auth callout request could not be read");
                    return;
                }
            };
            match answer {
                Ok(jwt) => {
                    if let Err(e) = client.publish(reply, jwt.into()).await {
                        tracing::warn!(error = %e, "answering an auth callout request");
                    }
                }
                Err(e) => tracing::error!(error = %e, "signing an auth callout answer"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_jwt(server: &KeyPair, user: &str, kind: &str, pass: &str) -> String {
        let claims = json!({
            "iss": server.public_key(), "sub": user, "aud": "nats-authorization-request",
            "nats": {
                "server_id": { "id": server.public_key(), "name": "canopy" },
                "user_nkey": user,
                "client_info": { "type": kind },
                "connect_opts": { "user": "acme", "pass": pass },
                "type": "authorization_request", "version": 2,
            },
        });
        encode(server, claims).unwrap()
    }

    fn claims(jwt: &str) -> Value {
        serde_json::from_slice(&B64.decode(jwt.split('.').nth(1).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn a_request_signed_by_a_server_is_read_and_any_other_is_refused() {
        let server = KeyPair::new_server();
        let user = KeyPair::new_user().public_key();
        let r = parse_request(&request_jwt(&server, &user, "mqtt", "secret")).unwrap();
        let p = r.presented.unwrap();
        assert_eq!((p.user.as_str(), p.password.as_str(), p.transport), ("acme", "secret", Transport::Mqtt));
        assert_eq!(r.user_nkey, user);
        // Signed by an account, not a server.
        assert!(parse_request(&request_jwt(&KeyPair::new_account(), &user, "nats", "x")).is_err());
        // A body changed after signing.
        let jwt = request_jwt(&server, &user, "nats", "x");
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let forged = B64.encode(serde_json::to_vec(&json!({ "iss": server.public_key() })).unwrap());
        parts[1] = &forged;
        assert!(parse_request(&parts.join(".")).is_err());
        // A leaf node or a client type nobody named is judged as refused.
        let leaf = parse_request(&request_jwt(&server, &user, "leafnode", "x")).unwrap();
        assert!(leaf.presented.is_err());
        let long = "x".repeat(MAX_CREDENTIAL + 1);
        assert!(parse_request(&request_jwt(&server, &user, "nats", &long)).unwrap().presented.is_err());
    }

    #[test]
    fn an_answer_is_for_the_connections_user_key_and_server_and_signed_by_its_accounts() {
        let (server, callout, push) = (KeyPair::new_server(), KeyPair::new_account(), KeyPair::new_account());
        let user = KeyPair::new_user().public_key();
        let request = parse_request(&request_jwt(&server, &user, "nats", "secret")).unwrap();
        let signers = Signers { callout, push };
        let grant =
            Grant { name: "acme/test".into(), subscribe: vec!["push.acme.>".into()], expires: Some(2_000_000_000) };
        let answer = claims(&signers.answer(&request, Ok(grant)).unwrap());
        assert_eq!(answer["iss"], signers.callout.public_key());
        assert_eq!(
            (answer["sub"].as_str(), answer["aud"].as_str()),
            (Some(user.as_str()), Some(server.public_key().as_str()))
        );
        let inner = claims(answer["nats"]["jwt"].as_str().unwrap());
        assert_eq!(inner["iss"], signers.push.public_key());
        assert_eq!(inner["sub"], user.as_str());
        assert_eq!(inner["exp"], 2_000_000_000);
        assert_eq!(inner["nats"]["sub"]["allow"], json!(["push.acme.>"]));
        assert_eq!(inner["nats"]["pub"]["deny"], json!([">"]));
        let refused = claims(&signers.answer(&request, Err("no".into())).unwrap());
        assert_eq!(refused["nats"]["error"], "no");
        assert!(refused["nats"]["jwt"].is_null());
    }
}
