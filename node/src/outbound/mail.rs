//! Outgoing mail. So far the templates mails are rendered from
//! ([`templates`]); the queue and the mailer that sends it come next.

pub mod templates;

pub use templates::{MailKind, Rendered, TemplateVars, render};
