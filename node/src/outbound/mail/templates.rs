//! The mail templates: for every [`MailKind`] a subject, a plain-text part and
//! an HTML part, in English and German, rendered with minijinja from files
//! embedded in the binary (`templates/{locale}/{kind}.{subject,txt,html}`).
//!
//! Values a person typed (names, a tenant's name) reach the HTML part escaped
//! and never reach a header with a line break in it: every variable loses its
//! control characters before rendering, the HTML templates are auto-escaped,
//! and a rendered subject is folded onto one line.

use std::sync::LazyLock;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};

/// What a mail is about; each kind has its own templates and its own token in
/// the `MAIL` subject (`as_str`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailKind {
    /// A code (and maybe a link) that confirms the address of a new account.
    VerifyEmail,
    /// A code that confirms the address an account is changing to.
    VerifyNewEmail,
    /// Sent to the old address when an account asks to change it.
    EmailChangeNotice,
    /// A code or a link to choose a new password.
    PasswordReset,
    /// Tells the account that its password changed.
    PasswordChanged,
    /// An invitation to join a tenant with a role.
    Invitation,
    /// Tells a webhook's owner that it was disabled after failing.
    WebhookDisabled,
}

impl MailKind {
    pub const ALL: [MailKind; 7] = [
        MailKind::VerifyEmail,
        MailKind::VerifyNewEmail,
        MailKind::EmailChangeNotice,
        MailKind::PasswordReset,
        MailKind::PasswordChanged,
        MailKind::Invitation,
        MailKind::WebhookDisabled,
    ];

    /// The template name, also the last token of the mail's subject.
    pub fn as_str(self) -> &'static str {
        match self {
            MailKind::VerifyEmail => "verify_email",
            MailKind::VerifyNewEmail => "verify_new_email",
            MailKind::EmailChangeNotice => "email_change_notice",
            MailKind::PasswordReset => "password_reset",
            MailKind::PasswordChanged => "password_changed",
            MailKind::Invitation => "invitation",
            MailKind::WebhookDisabled => "webhook_disabled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    /// Checks that `vars` hold what this kind's templates print, so no mail
    /// goes out with an empty code or a missing link.
    fn check(self, vars: &TemplateVars) -> Result<(), RenderError> {
        let need = |present: bool, what: &'static str| if present { Ok(()) } else { Err(RenderError::Missing(what)) };
        match self {
            MailKind::VerifyEmail | MailKind::VerifyNewEmail => need(vars.code.is_some(), "code"),
            MailKind::PasswordReset => need(vars.code.is_some() || vars.link.is_some(), "code or link"),
            MailKind::EmailChangeNotice | MailKind::PasswordChanged => Ok(()),
            MailKind::WebhookDisabled => {
                need(vars.webhook.is_some(), "webhook")?;
                need(vars.reason.is_some(), "reason")
            }
            MailKind::Invitation => {
                need(vars.inviter.is_some(), "inviter")?;
                need(vars.role.is_some(), "role")?;
                need(vars.link.is_some(), "link")
            }
        }
    }
}

impl std::fmt::Display for MailKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the templates may print. Names and the code are personal or secret,
/// so `Debug` shows none of them.
#[derive(Clone, Default, Serialize)]
pub struct TemplateVars {
    /// The tenant's display name (the platform's name for `_system` mail).
    pub tenant_name: String,
    /// The recipient's first name.
    pub first_name: String,
    /// A one-time code of six digits.
    pub code: Option<String>,
    /// A full `https://` (or `http://`) URL.
    pub link: Option<String>,
    /// How long the code, link or invitation stays valid, in minutes.
    pub expires_in: u32,
    /// Who sent an invitation (their name).
    pub inviter: Option<String>,
    /// The role an invitation grants.
    pub role: Option<String>,
    /// A webhook's name and URL.
    pub webhook: Option<String>,
    /// Why something happened, in words safe to show the recipient.
    pub reason: Option<String>,
}

impl std::fmt::Debug for TemplateVars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateVars")
            .field("code", &self.code.as_ref().map(|_| "<redacted>"))
            .field("link", &self.link.as_ref().map(|_| "<redacted>"))
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// A rendered mail: a subject of one line, and its two parts.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rendered(<mail text>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("this kind of mail needs a {0}")]
    Missing(&'static str),
    #[error("the code must be six digits")]
    Code,
    #[error("the link must be an http or https URL without spaces")]
    Link,
    #[error("template {template} failed: {reason}")]
    Template { template: String, reason: String },
}

/// The locales with templates; anything else falls back to the first.
pub const LOCALES: [&str; 2] = ["en", "de"];

/// Every template file, embedded at build time under the name it is loaded by.
macro_rules! embedded {
    ($($path:expr),* $(,)?) => {
        &[$(($path, include_str!(concat!("templates/", $path)))),*]
    };
}

macro_rules! kinds {
    ($($locale:literal),*) => {
        embedded![
            "layout.html",
            $(
                concat!($locale, "/footer.txt"), concat!($locale, "/footer.html"),
                concat!($locale, "/verify_email.subject"), concat!($locale, "/verify_email.txt"), concat!($locale, "/verify_email.html"),
                concat!($locale, "/verify_new_email.subject"), concat!($locale, "/verify_new_email.txt"), concat!($locale, "/verify_new_email.html"),
                concat!($locale, "/email_change_notice.subject"), concat!($locale, "/email_change_notice.txt"), concat!($locale, "/email_change_notice.html"),
                concat!($locale, "/password_reset.subject"), concat!($locale, "/password_reset.txt"), concat!($locale, "/password_reset.html"),
                concat!($locale, "/password_changed.subject"), concat!($locale, "/password_changed.txt"), concat!($locale, "/password_changed.html"),
                concat!($locale, "/invitation.subject"), concat!($locale, "/invitation.txt"), concat!($locale, "/invitation.html"),
                concat!($locale, "/webhook_disabled.subject"), concat!($locale, "/webhook_disabled.txt"), concat!($locale, "/webhook_disabled.html"),
            )*
        ]
    };
}

const TEMPLATES: &[(&str, &str)] = kinds!("en", "de");

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // A variable a template names but the context lacks is an error, not an
    // empty string: a typo fails the unit tests instead of a customer's mail.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Only the HTML parts are escaped; subjects and text parts are plain text.
    env.set_auto_escape_callback(|name| if name.ends_with(".html") { AutoEscape::Html } else { AutoEscape::None });
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    for (name, source) in TEMPLATES {
        env.add_template(name, source).unwrap_or_else(|e| panic!("the embedded template {name} does not parse: {e}"));
    }
    env
});

/// The supported locale for a requested one: its language (`de-CH` → `de`),
/// or English.
pub fn locale_of(requested: &str) -> &'static str {
    let language = requested.split(['-', '_']).next().unwrap_or_default().to_ascii_lowercase();
    LOCALES.into_iter().find(|l| *l == language).unwrap_or(LOCALES[0])
}

/// Renders `kind` in `locale` (falling back to English) with `vars`.
pub fn render(kind: MailKind, locale: &str, vars: &TemplateVars) -> Result<Rendered, RenderError> {
    kind.check(vars)?;
    if vars.code.as_deref().is_some_and(|c| c.len() != 6 || !c.bytes().all(|b| b.is_ascii_digit())) {
        return Err(RenderError::Code);
    }
    if let Some(link) = &vars.link
        && (!(link.starts_with("https://") || link.starts_with("http://"))
            || link.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(RenderError::Link);
    }
    let lang = locale_of(locale);
    let clean = |s: &str| s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>();
    let clean_opt = |s: &Option<String>| s.as_deref().map(clean);
    let context = |subject: &str| {
        minijinja::context! {
            lang,
            subject,
            tenant_name => clean(&vars.tenant_name),
            first_name => clean(&vars.first_name),
            code => clean_opt(&vars.code),
            link => clean_opt(&vars.link),
            expires => duration(vars.expires_in, lang),
            inviter => clean_opt(&vars.inviter),
            role => clean_opt(&vars.role),
            webhook => clean_opt(&vars.webhook),
            reason => clean_opt(&vars.reason),
        }
    };
    let run = |part: &str, ctx: minijinja::Value| {
        let name = format!("{lang}/{}.{part}", kind.as_str());
        ENV.get_template(&name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| RenderError::Template { template: name, reason: e.to_string() })
    };
    let subject = one_line(&run("subject", context(""))?);
    let text = run("txt", context(&subject))?;
    let html = run("html", context(&subject))?;
    Ok(Rendered { subject, text, html })
}

/// A header value: control characters (CR and LF among them) become spaces,
/// runs of white space one space, and the ends are trimmed.
pub fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

/// "15 minutes", "2 hours", "7 days" (or "15 Minuten", ...), as it reads after
/// "expires in" (or "läuft in ... ab"): whole hours and days are said so.
fn duration(minutes: u32, lang: &str) -> String {
    let (n, unit) = match minutes {
        m if m >= 1440 && m % 1440 == 0 => (m / 1440, 2),
        m if m >= 60 && m % 60 == 0 => (m / 60, 1),
        m => (m, 0),
    };
    let word = match (lang, unit, n == 1) {
        ("de", 0, true) => "Minute",
        ("de", 0, false) => "Minuten",
        ("de", 1, true) => "Stunde",
        ("de", 1, false) => "Stunden",
        ("de", _, true) => "Tag",
        ("de", _, false) => "Tagen",
        (_, 0, true) => "minute",
        (_, 0, false) => "minutes",
        (_, 1, true) => "hour",
        (_, 1, false) => "hours",
        (_, _, true) => "day",
        (_, _, false) => "days",
    };
    format!("{n} {word}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> TemplateVars {
        TemplateVars {
            tenant_name: "Acme Inc".into(),
            first_name: "Ada".into(),
            code: Some("482913".into()),
            link: Some("https://acme.example.com/verify?token=abc&x=1".into()),
            expires_in: 15,
            inviter: Some("Grace".into()),
            role: Some("admin".into()),
            webhook: Some("orders (https://hooks.example.com/in)".into()),
            reason: Some("it failed 20 times in a row".into()),
        }
    }

    #[test]
    fn every_kind_renders_in_both_locales_with_a_subject_and_both_parts() {
        for kind in MailKind::ALL {
            for locale in LOCALES {
                let r = render(kind, locale, &vars()).unwrap_or_else(|e| panic!("{kind} in {locale}: {e}"));
                assert!(!r.subject.is_empty(), "{kind} {locale}");
                assert!(r.html.starts_with("<!DOCTYPE html>") && r.html.contains(&format!("<html lang=\"{locale}\">")));
                assert!(r.text.contains("Acme Inc") && r.html.contains("Acme Inc"), "{kind} {locale}: {}", r.text);
                // An invitee has no name yet: the invitation greets without one.
                let (greeting, name) = match (kind, locale) {
                    (MailKind::Invitation, "de") => ("Guten Tag,", "Grace"),
                    (MailKind::Invitation, _) => ("Hello,", "Grace"),
                    (_, "de") => ("Hallo Ada", "Ada"),
                    _ => ("Hello Ada", "Ada"),
                };
                assert!(r.text.starts_with(greeting), "{kind} {locale}: {}", r.text);
                assert!(r.text.contains(name) && r.html.contains(name), "{kind} {locale}: {}", r.html);
            }
        }
    }

    #[test]
    fn the_code_appears_in_the_subject_and_both_parts_of_a_verification() {
        for locale in LOCALES {
            let r = render(MailKind::VerifyEmail, locale, &vars()).unwrap();
            assert!(r.subject.contains("482913") && r.text.contains("482913") && r.html.contains("482913"));
            assert!(r.text.contains("15 Minuten") || r.text.contains("15 minutes"), "{}", r.text);
            // The link's `&` is escaped in the HTML attribute and kept in the text.
            assert!(r.html.contains("token=abc&amp;x=1") && r.text.contains("token=abc&x=1"));
        }
        let r = render(MailKind::PasswordReset, "en", &TemplateVars { code: None, ..vars() }).unwrap();
        assert!(!r.text.contains("Your code") && r.text.contains("https://acme.example.com/verify"));
    }

    #[test]
    fn names_are_escaped_in_html_and_never_break_a_subject_line() {
        let hostile = TemplateVars {
            tenant_name: "Evil\r\nBcc: victim@example.com".into(),
            first_name: "<script>alert(1)</script>".into(),
            inviter: Some("Mallory\nX-Injected: yes <b>".into()),
            ..vars()
        };
        for kind in MailKind::ALL {
            for locale in LOCALES {
                let r = render(kind, locale, &hostile).unwrap();
                assert!(!r.subject.contains(['\r', '\n']), "{kind}: {:?}", r.subject);
                assert!(!r.html.contains("<script>"), "{kind}: {}", r.html);
                if kind != MailKind::Invitation {
                    assert!(r.html.contains("&lt;script&gt;"), "{kind}: {}", r.html);
                }
                assert!(!r.text.contains('\r') && !r.text.contains("Evil\n") && !r.text.contains("Mallory\n"));
            }
        }
        let r = render(MailKind::Invitation, "en", &hostile).unwrap();
        assert_eq!(r.subject, "Mallory X-Injected: yes <b> invited you to Evil Bcc: victim@example.com");
        assert!(r.html.contains("Mallory X-Injected: yes &lt;b&gt;"), "{}", r.html);
    }

    #[test]
    fn an_unknown_locale_falls_back_to_english_and_a_region_to_its_language() {
        let en = render(MailKind::PasswordChanged, "en", &vars()).unwrap();
        assert_eq!(render(MailKind::PasswordChanged, "fr", &vars()).unwrap(), en);
        assert_eq!(render(MailKind::PasswordChanged, "", &vars()).unwrap(), en);
        let de = render(MailKind::PasswordChanged, "de-CH", &vars()).unwrap();
        assert!(de.subject.starts_with("Ihr Passwort"), "{}", de.subject);
    }

    #[test]
    fn missing_or_malformed_values_are_refused() {
        let no_code = TemplateVars { code: None, ..vars() };
        assert_eq!(render(MailKind::VerifyEmail, "en", &no_code), Err(RenderError::Missing("code")));
        let bare = TemplateVars { code: None, link: None, ..vars() };
        assert_eq!(render(MailKind::PasswordReset, "en", &bare), Err(RenderError::Missing("code or link")));
        let no_role = TemplateVars { role: None, ..vars() };
        assert_eq!(render(MailKind::Invitation, "de", &no_role), Err(RenderError::Missing("role")));
        let short = TemplateVars { code: Some("12a45".into()), ..vars() };
        assert_eq!(render(MailKind::VerifyEmail, "en", &short), Err(RenderError::Code));
        let script = TemplateVars { link: Some("javascript:alert(1)".into()), ..vars() };
        assert_eq!(render(MailKind::PasswordReset, "en", &script), Err(RenderError::Link));
    }

    #[test]
    fn expiry_reads_in_the_largest_whole_unit() {
        assert_eq!(duration(15, "en"), "15 minutes");
        assert_eq!(duration(60, "en"), "1 hour");
        assert_eq!(duration(10080, "en"), "7 days");
        assert_eq!(duration(1, "de"), "1 Minute");
        assert_eq!(duration(120, "de"), "2 Stunden");
        assert_eq!(duration(1440, "de"), "1 Tag");
        assert_eq!(duration(90, "de"), "90 Minuten");
    }

    #[test]
    fn kinds_round_trip_through_their_names_and_debug_hides_the_code() {
        for kind in MailKind::ALL {
            assert_eq!(MailKind::parse(kind.as_str()), Some(kind));
        }
        let shown = format!("{:?}", vars());
        assert!(!shown.contains("482913") && !shown.contains("Ada"), "{shown}");
    }
}
