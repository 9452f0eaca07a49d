//! Error messages in the caller's language (`Accept-Language`). Messages are
//! written in English where they are raised; this catalog gives each one its
//! translation, and `extensions.code` never changes, so clients branch on the
//! code and show the message. A message without a translation stays English.

use actors::domain::account::Locale;

/// English message → German message.
const DE: &[(&str, &str)] = &[
    ("a code has exactly 6 digits", "ein Code hat genau 6 Ziffern"),
    (
        "a name has 1 to 100 characters and no control characters",
        "ein Name hat 1 bis 100 Zeichen und keine Steuerzeichen",
    ),
    ("a password has 8 to 128 characters", "ein Passwort hat 8 bis 128 Zeichen"),
    ("a tenant id has at least 2 characters", "eine Mandanten-ID hat mindestens 2 Zeichen"),
    ("a tenant id has at most 63 characters", "eine Mandanten-ID hat höchstens 63 Zeichen"),
    (
        "a tenant id may only hold lowercase letters, digits and '-', and must start with a letter or digit",
        "eine Mandanten-ID enthält nur Kleinbuchstaben, Ziffern und '-' und beginnt mit einem Buchstaben oder einer Ziffer",
    ),
    ("a tenant id must not be empty", "eine Mandanten-ID darf nicht leer sein"),
    (
        "a tenant name has 1 to 100 characters and no control characters",
        "ein Mandantenname hat 1 bis 100 Zeichen und keine Steuerzeichen",
    ),
    ("a tenant with this slug already exists", "einen Mandanten mit dieser ID gibt es schon"),
    ("an account with this email already exists", "ein Konto mit dieser E-Mail-Adresse gibt es schon"),
    ("at most 254 characters, no control characters", "höchstens 254 Zeichen, keine Steuerzeichen"),
    ("canopy-consistency must be a number", "canopy-consistency muss eine Zahl sein"),
    (
        "another change to the same data happened at the same time; retry the request",
        "gleichzeitig wurden dieselben Daten geändert; bitte die Anfrage wiederholen",
    ),
    ("give exactly one of `code` and `token`", "genau eines von `code` und `token` angeben"),
    ("idempotency key reused with a different request", "Idempotenzschlüssel für eine andere Anfrage wiederverwendet"),
    ("internal error", "interner Fehler"),
    (
        "internal error; the request was not applied or may be retried safely",
        "interner Fehler; die Anfrage wurde nicht ausgeführt oder kann gefahrlos wiederholt werden",
    ),
    ("invalid email or password", "E-Mail-Adresse oder Passwort ist falsch"),
    ("no such account", "dieses Konto gibt es nicht"),
    ("no such session", "diese Sitzung gibt es nicht"),
    ("not a cursor of `users` in this order", "kein Cursor von `users` in dieser Reihenfolge"),
    ("not a session id", "keine Sitzungs-ID"),
    ("not an account id", "keine Konto-ID"),
    ("only a platform administrator may do this", "nur eine Plattform-Administration darf das"),
    ("only a platform administrator may create tenants", "nur eine Plattform-Administration darf Mandanten anlegen"),
    ("only the tenant owner may list users", "nur der Eigentümer des Mandanten darf Benutzer auflisten"),
    ("only the tenant's owner may remove users", "nur der Eigentümer des Mandanten darf Benutzer entfernen"),
    ("sign in first", "bitte zuerst anmelden"),
    (
        "sign in first: send `Authorization: Bearer <token>`",
        "bitte zuerst anmelden: `Authorization: Bearer <token>` senden",
    ),
    ("supported locales are: en, de", "unterstützte Sprachen: en, de"),
    ("the current password is not correct", "das aktuelle Passwort ist falsch"),
    (
        "the last owner of a tenant cannot be deleted; make someone else owner first",
        "der letzte Eigentümer eines Mandanten kann nicht gelöscht werden; zuerst jemand anderen zum Eigentümer machen",
    ),
    ("the password is not correct", "das Passwort ist falsch"),
    ("the refresh token is not valid; sign in again", "das Refresh-Token ist ungültig; bitte neu anmelden"),
    ("the request body could not be read", "der Anfrageinhalt konnte nicht gelesen werden"),
    ("the request body is larger than 1 MiB", "der Anfrageinhalt ist größer als 1 MiB"),
    ("the session has ended; sign in again", "die Sitzung ist beendet; bitte neu anmelden"),
    ("the token has expired", "das Token ist abgelaufen"),
    ("the token is not valid", "das Token ist ungültig"),
    ("this account is already registered", "dieses Konto ist schon registriert"),
    (
        "this code or link is wrong, already used or expired",
        "dieser Code oder Link ist falsch, schon benutzt oder abgelaufen",
    ),
    ("this email address is already verified", "diese E-Mail-Adresse ist schon bestätigt"),
    ("this is already the account's address", "das ist schon die Adresse des Kontos"),
    ("this is not a token Canopy issued", "dieses Token stammt nicht von Canopy"),
    ("this is not a valid email address", "das ist keine gültige E-Mail-Adresse"),
    ("this is not an account id", "das ist keine Konto-ID"),
    ("this token belongs to no session", "dieses Token gehört zu keiner Sitzung"),
    ("this token was issued for another tenant", "dieses Token wurde für einen anderen Mandanten ausgestellt"),
    ("unknown tenant", "unbekannter Mandant"),
    ("you may only act on your own account", "nur am eigenen Konto erlaubt"),
    ("you may only change your own account", "nur das eigene Konto darf geändert werden"),
    ("you may only end your own sessions", "nur eigene Sitzungen dürfen beendet werden"),
    // Roles, access tokens and invitations.
    (
        "a role name has 1 to 50 characters: letters, digits, spaces, '-' and '_'",
        "ein Rollenname hat 1 bis 50 Zeichen: Buchstaben, Ziffern, Leerzeichen, '-' und '_'",
    ),
    ("a role with this name already exists", "eine Rolle mit diesem Namen gibt es schon"),
    ("no such role", "diese Rolle gibt es nicht"),
    ("built-in roles cannot be changed or deleted", "eingebaute Rollen lassen sich weder ändern noch löschen"),
    (
        "the role is assigned to members or pending invitations; take it from them first",
        "die Rolle ist Mitgliedern oder offenen Einladungen zugewiesen; zuerst dort entfernen",
    ),
    ("the tenant's last owner must stay an owner", "der letzte Eigentümer des Mandanten muss Eigentümer bleiben"),
    ("a member holds at least one role", "ein Mitglied hat mindestens eine Rolle"),
    (
        "a description has at most 500 characters and no control characters",
        "eine Beschreibung hat höchstens 500 Zeichen und keine Steuerzeichen",
    ),
    ("a token has at least one scope", "ein Token hat mindestens einen Geltungsbereich"),
    (
        "a token's scopes must be among the permissions of whoever creates it",
        "die Geltungsbereiche eines Tokens müssen zu den Berechtigungen seines Erstellers gehören",
    ),
    ("a token expires in the future, within 366 days", "ein Token läuft in der Zukunft ab, innerhalb von 366 Tagen"),
    (
        "the tenant has 100 live access tokens; revoke one first",
        "der Mandant hat 100 gültige Zugriffstokens; zuerst eines widerrufen",
    ),
    ("no such access token", "dieses Zugriffstoken gibt es nicht"),
    (
        "you may only invite with a role whose permissions you hold",
        "Einladungen nur mit einer Rolle, deren Berechtigungen Sie selbst haben",
    ),
    (
        "this address has a pending invitation; revoke it first",
        "für diese Adresse gibt es eine offene Einladung; zuerst widerrufen",
    ),
    (
        "the tenant has 500 pending invitations; revoke some first",
        "der Mandant hat 500 offene Einladungen; zuerst einige widerrufen",
    ),
    ("no such invitation", "diese Einladung gibt es nicht"),
    (
        "the invitation is not valid, was used or has expired",
        "die Einladung ist ungültig, wurde schon verwendet oder ist abgelaufen",
    ),
    ("the access token is not valid", "das Zugriffstoken ist ungültig"),
    (
        "the access token is not valid for this tenant, or was revoked",
        "das Zugriffstoken gilt nicht für diesen Mandanten oder wurde widerrufen",
    ),
    ("the access token has expired", "das Zugriffstoken ist abgelaufen"),
    (
        "an access token works in its tenant: send `x-tenant-id` too",
        "ein Zugriffstoken gilt in seinem Mandanten: auch `x-tenant-id` senden",
    ),
    (
        "send one credential: `Authorization` or `x-tenant-key`, not both",
        "nur eine Anmeldung senden: `Authorization` oder `x-tenant-key`, nicht beides",
    ),
    (
        "an access token acts for its tenant, not as an account",
        "ein Zugriffstoken handelt für seinen Mandanten, nicht als Konto",
    ),
    (
        "this token was created by an earlier request with the same idempotency-key, and its secret was shown then; revoke it and create another",
        "dieses Token entstand durch eine frühere Anfrage mit demselben idempotency-key, und sein Geheimnis wurde damals gezeigt; widerrufen und ein neues erstellen",
    ),
    ("this tenant is suspended", "dieser Mandant ist gesperrt"),
    ("only a member may do this, not an access token", "das darf nur ein Mitglied, kein Zugriffstoken"),
    ("this tenant is already suspended", "dieser Mandant ist schon gesperrt"),
    ("this tenant is not suspended", "dieser Mandant ist nicht gesperrt"),
    (
        "deleting a tenant needs a member's password",
        "einen Mandanten löschen kann nur ein Mitglied mit seinem Passwort",
    ),
    ("the slug names another tenant than the request's", "der Slug nennt einen anderen Mandanten als die Anfrage"),
    // Modules and their records.
    ("a record with this id exists", "einen Datensatz mit dieser ID gibt es schon"),
    ("no such record", "diesen Datensatz gibt es nicht"),
    ("the record was changed by a user and is kept", "der Datensatz wurde von einem Benutzer geändert und bleibt"),
    ("is required", "ist erforderlich"),
    ("is required and cannot be cleared", "ist erforderlich und kann nicht geleert werden"),
    ("this value is already taken", "dieser Wert ist schon vergeben"),
    ("not a record id (a lowercase UUID)", "keine Datensatz-ID (eine UUID in Kleinbuchstaben)"),
    ("must be a JSON object of field values", "muss ein JSON-Objekt mit Feldwerten sein"),
    ("not a cursor of this list", "kein Cursor dieser Liste"),
    ("is not a field of this table", "ist kein Feld dieser Tabelle"),
    ("not a module name", "kein Modulname"),
    ("expected a string", "erwartet eine Zeichenkette"),
    ("contains a control character", "enthält ein Steuerzeichen"),
    (
        "contains a control character (only line feeds and tabs may be in a text)",
        "enthält ein Steuerzeichen (in einem Text sind nur Zeilenumbrüche und Tabulatoren erlaubt)",
    ),
    ("is out of range (a 64-bit signed integer)", "liegt außerhalb des Bereichs (eine 64-Bit-Ganzzahl mit Vorzeichen)"),
    ("expected an integer", "erwartet eine ganze Zahl"),
    (
        "expected a decimal number (a JSON number, or a string like \"12.50\")",
        "erwartet eine Dezimalzahl (eine JSON-Zahl oder eine Zeichenkette wie \"12.50\")",
    ),
    ("expected true or false", "erwartet true oder false"),
    (
        "expected an RFC 3339 date and time, like \"2025-01-31T09:30:00Z\"",
        "erwartet Datum und Uhrzeit nach RFC 3339, wie \"2025-01-31T09:30:00Z\"",
    ),
    ("is not a decimal number", "ist keine Dezimalzahl"),
    ("has more than 18 digits before the decimal point", "hat mehr als 18 Stellen vor dem Komma"),
    ("has more than 9 digits after the decimal point", "hat mehr als 9 Stellen nach dem Komma"),
    ("the value is held by another record too", "den Wert hat auch ein anderer Datensatz"),
    ("this module version has no schema", "diese Modulversion hat kein Schema"),
    ("use GET, PATCH or DELETE", "GET, PATCH oder DELETE verwenden"),
    ("modules belong to a tenant", "Module gehören zu einem Mandanten"),
    ("backups belong to a tenant", "Sicherungen gehören zu einem Mandanten"),
    ("no such backup", "diese Sicherung gibt es nicht"),
    ("not a backup id", "keine Sicherungs-ID"),
    ("the backup's tenant was deleted", "der Mandant der Sicherung wurde gelöscht"),
    ("perDayBackups is 1 to 100 and maxBackups 1 to 1000", "perDayBackups ist 1 bis 100 und maxBackups 1 bis 1000"),
    (
        "this slug holds the events of an unfinished restore; restore under another slug",
        "unter dieser ID liegen die Ereignisse einer unvollendeten Wiederherstellung; eine andere ID wählen",
    ),
    ("not a version such as v1", "keine Version wie v1"),
    ("not a version such as v2", "keine Version wie v2"),
    (
        "only a member or access token of this tenant may change its records",
        "nur ein Mitglied oder Zugriffstoken dieses Mandanten darf seine Datensätze ändern",
    ),
    (
        "only a member or access token of this tenant may change its modules",
        "nur ein Mitglied oder Zugriffstoken dieses Mandanten darf seine Module ändern",
    ),
    (
        "an RFC 3339 date and time, such as 2027-01-31T00:00:00Z",
        "Datum und Uhrzeit nach RFC 3339, wie 2027-01-31T00:00:00Z",
    ),
    // Push.
    ("a topic is not empty", "ein Thema ist nicht leer"),
    ("a topic is at most 200 characters", "ein Thema hat höchstens 200 Zeichen"),
    ("a topic has at most 16 levels", "ein Thema hat höchstens 16 Ebenen"),
    (
        "a topic has no empty level (no leading, trailing or double `/`)",
        "ein Thema hat keine leere Ebene (kein `/` am Anfang, am Ende oder doppelt)",
    ),
    ("a topic level is at most 64 characters", "eine Themenebene hat höchstens 64 Zeichen"),
    (
        "a topic level holds only A-Z, a-z, 0-9, `_` and `-` (no wildcards, dots or spaces)",
        "eine Themenebene enthält nur A-Z, a-z, 0-9, `_` und `-` (keine Platzhalter, Punkte oder Leerzeichen)",
    ),
    (
        "topics under `events/` are for forwarded events",
        "Themen unter `events/` sind weitergeleiteten Ereignissen vorbehalten",
    ),
    ("the payload is larger than 64 KiB", "die Nutzlast ist größer als 64 KiB"),
    ("at most 100 event types may be forwarded", "höchstens 100 Ereignistypen können weitergeleitet werden"),
    ("a message with this id was published", "eine Nachricht mit dieser ID wurde schon veröffentlicht"),
    (
        "push is off: this node's NATS server does not run Canopy's keys (nats_auth_dir)",
        "Push ist aus: der NATS-Server dieses Knotens läuft nicht mit Canopys Schlüsseln (nats_auth_dir)",
    ),
    ("pushes belong to a tenant", "Push-Nachrichten gehören zu einem Mandanten"),
    ("push belongs to a tenant", "Push gehört zu einem Mandanten"),
    ("at most 64 KiB", "höchstens 64 KiB"),
    ("at most 100 event types", "höchstens 100 Ereignistypen"),
    ("1 to 100", "1 bis 100"),
    ("a cursor from an earlier page", "ein Cursor einer früheren Seite"),
    ("subscriptions belong to a tenant", "Abonnements gehören zu einem Mandanten"),
    (
        "subscriptions belong to a tenant: send x-tenant-id",
        "Abonnements gehören zu einem Mandanten: x-tenant-id mitsenden",
    ),
    ("the credentials were refused", "die Anmeldedaten wurden abgelehnt"),
    (
        crate::router::MOVING,
        "der Mandant zieht gerade auf einen anderen Knoten um; bitte mit demselben idempotency-key erneut senden",
    ),
    (
        crate::graphql::request::NO_ANSWER,
        "keine rechtzeitige Antwort vom Knoten des Mandanten; bitte mit demselben idempotency-key erneut senden",
    ),
    (
        crate::graphql::request::NOT_YET_READABLE,
        "der Schreibvorgang ist gespeichert, aber die Lesemodelle dieses Knotens zeigen ihn noch nicht; mit seinem canopy-consistency-Token erneut lesen",
    ),
    (
        actors::command::UNAVAILABLE_MESSAGE,
        "das Ereignisprotokoll ist gerade nicht erreichbar; die Anfrage wurde nicht ausgeführt oder kann gefahrlos wiederholt werden",
    ),
    ("sign in as a platform administrator", "melden Sie sich als Plattform-Administrator an"),
    ("the placement bucket cannot be read now", "die Platzierung der Mandanten kann gerade nicht gelesen werden"),
    ("this field declares no permission", "dieses Feld nennt keine Berechtigung"),
    (
        "only a member or access token of this tenant may push",
        "nur ein Mitglied oder Zugriffstoken dieses Mandanten darf Push-Nachrichten senden",
    ),
    // Webhooks.
    ("no such webhook", "diesen Webhook gibt es nicht"),
    ("no such delivery", "diese Zustellung gibt es nicht"),
    ("not a delivery id", "keine Zustellungs-ID"),
    ("webhooks belong to a tenant", "Webhooks gehören zu einem Mandanten"),
    ("a tenant has at most 50 webhooks", "ein Mandant hat höchstens 50 Webhooks"),
    ("a name is 1 to 100 characters without control characters", "ein Name hat 1 bis 100 Zeichen ohne Steuerzeichen"),
    ("not a URL", "keine URL"),
    ("the URL must start with http:// or https://", "die URL muss mit http:// oder https:// beginnen"),
    ("the URL must not carry a user or password", "die URL darf keinen Benutzer und kein Passwort enthalten"),
    ("the URL names no host", "die URL nennt keinen Host"),
    ("the URL is longer than 2,048 characters", "die URL ist länger als 2.048 Zeichen"),
    ("the host does not resolve", "der Host lässt sich nicht auflösen"),
    ("name at least one event type, or `*` for all", "mindestens einen Ereignistyp angeben, oder `*` für alle"),
    ("`*` stands alone", "`*` steht allein"),
    ("1 to 100 event types", "1 bis 100 Ereignistypen"),
    ("the API key header is 1 to 64 characters", "der Header des API-Schlüssels hat 1 bis 64 Zeichen"),
    (
        "the API key header is an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
        "der Header des API-Schlüssels ist ein HTTP-Headername (Buchstaben, Ziffern und !#$%&'*+-.^_`|~)",
    ),
    (
        "the API key header may not be one Canopy sets itself",
        "der Header des API-Schlüssels darf keiner sein, den Canopy selbst setzt",
    ),
    ("a basic username has no `:`", "ein Basic-Benutzername enthält kein `:`"),
    ("the overlap is 0 to 7 days", "die Überlappung beträgt 0 bis 7 Tage"),
    ("the webhook is disabled: enable it first", "der Webhook ist deaktiviert: zuerst aktivieren"),
    ("give new credentials or removeAuth, not both", "neue Anmeldedaten oder removeAuth angeben, nicht beides"),
    (
        "this webhook was created by an earlier try of the request; its secret was shown then",
        "dieser Webhook wurde von einem früheren Versuch der Anfrage angelegt; sein Geheimnis wurde damals gezeigt",
    ),
    (
        "this secret was made by an earlier try of the request; it was shown then",
        "dieses Geheimnis stammt von einem früheren Versuch der Anfrage; es wurde damals gezeigt",
    ),
    (
        "only a member or access token of this tenant may change webhooks",
        "nur ein Mitglied oder Zugriffstoken dieses Mandanten darf Webhooks ändern",
    ),
];

/// Messages that carry values: each `{}` in the English stands for a value,
/// which the German repeats in the same order.
const TEMPLATES: &[(&str, &str)] = &[
    ("too many attempts; retry in {}", "zu viele Versuche; erneut in {}"),
    ("too many requests; retry in {}", "zu viele Anfragen; erneut in {}"),
    ("this needs the permission {}", "dafür braucht es die Berechtigung {}"),
    ("unknown permission: {}", "unbekannte Berechtigung: {}"),
    ("the daily backup limit is reached: {}", "das tägliche Sicherungslimit ist erreicht: {}"),
    ("invalid topic: {}", "ungültiges Thema: {}"),
    ("unknown event type {}", "unbekannter Ereignistyp {}"),
    (
        "the host resolves to a {} address, which webhooks may not call",
        "der Host zeigt auf eine Adresse der Art {}, die Webhooks nicht aufrufen dürfen",
    ),
    ("{} is 1 to 4,096 characters without control characters", "{} hat 1 bis 4.096 Zeichen ohne Steuerzeichen"),
    ("the subscriber fell {} events behind", "der Abonnent ist {} Ereignisse zurückgefallen"),
    ("the subscriber fell {} messages behind", "der Abonnent ist {} Nachrichten zurückgefallen"),
    // Modules.
    ("there is no module {}", "es gibt kein Modul {}"),
    ("this tenant does not hold the module {}", "dieser Mandant hat kein Modul {}"),
    (
        "{} needs {}, which this tenant does not hold; subscribe it first or pass withDependencies",
        "{} braucht {}, das dieser Mandant nicht hat; zuerst abonnieren oder withDependencies angeben",
    ),
    ("{} needs {}, but this tenant holds {}", "{} braucht {}, aber dieser Mandant hat {}"),
    (
        "this tenant holds {}; use upgradeModule to move it to another version",
        "dieser Mandant hat {}; upgradeModule wechselt zu einer anderen Version",
    ),
    ("this tenant already holds {}", "dieser Mandant hat schon {}"),
    ("this tenant holds {}, not v{}", "dieser Mandant hat {}, nicht v{}"),
    ("{} cannot be dropped while {} depends on it", "{} kann nicht entfernt werden, solange {} davon abhängt"),
    (
        "{} cannot be upgraded while {} needs its current version",
        "{} kann nicht aktualisiert werden, solange {} seine jetzige Version braucht",
    ),
    (
        "{} is being upgraded to v{}; run upgradeModule to v{} (or migrate) to finish it",
        "{} wird auf v{} aktualisiert; upgradeModule auf v{} (oder migrate) beendet das",
    ),
    (
        "{} is being upgraded to v{}; its records can be changed again when that is done",
        "{} wird auf v{} aktualisiert; danach sind seine Datensätze wieder änderbar",
    ),
    (
        "{}'s records kept changing during its upgrade; run it again to finish",
        "die Datensätze von {} änderten sich während der Aktualisierung immer wieder; zum Beenden erneut starten",
    ),
    ("{} has no upgrade path from v{} to v{}", "{} hat keinen Aktualisierungspfad von v{} nach v{}"),
    (
        "migration {} of {} was applied with checksum {} and its file now has {}; an applied migration must not change",
        "die Migration {} von {} wurde mit der Prüfsumme {} angewandt, und ihre Datei hat jetzt {}; eine angewandte Migration darf sich nicht ändern",
    ),
    ("step {} ({}) failed: {}", "Schritt {} ({}) ist fehlgeschlagen: {}"),
    (
        "too many records for one upgrade or seeding ({}, at most {})",
        "zu viele Datensätze für eine Aktualisierung oder Befüllung ({}, höchstens {})",
    ),
    ("{} has no table {}", "{} hat keine Tabelle {}"),
    ("{} is not a version such as v1 or v1.4", "{} ist keine Version wie v1 oder v1.4"),
    ("this node does not serve {}", "dieser Knoten bedient {} nicht"),
    ("{} is not a field of this table", "{} ist kein Feld dieser Tabelle"),
    ("unknown operator {}", "unbekannter Operator {}"),
    // A record's field values, as the manifest checks them.
    ("is longer than {} characters", "ist länger als {} Zeichen"),
    ("expected one of {}", "erwartet einen von {}"),
    ("\"{}\" is not one of {}", "\"{}\" ist keiner von {}"),
    ("expected the id (a UUID) of a {} record", "erwartet die ID (eine UUID) eines Datensatzes aus {}"),
    ("is not a field of {}", "ist kein Feld von {}"),
    ("no {} with id {}", "kein Datensatz aus {} mit der ID {}"),
    ("record {}: {}", "Datensatz {}: {}"),
];

/// The values `message` has where `template` has `{}`, if it has that shape.
fn captures(template: &str, message: &str) -> Option<Vec<String>> {
    let parts: Vec<&str> = template.split("{}").collect();
    let mut rest = message.strip_prefix(parts[0])?;
    let mut values = Vec::new();
    for (i, literal) in parts.iter().enumerate().skip(1) {
        let last = i == parts.len() - 1;
        let at = if last { rest.strip_suffix(literal).map(str::len)? } else { rest.find(literal)? };
        values.push(rest[..at].to_owned());
        rest = &rest[at + literal.len()..];
    }
    (rest.is_empty() && values.iter().all(|v| !v.is_empty())).then_some(values)
}

/// `template` with each `{}` replaced by the next value; values that are
/// messages themselves (`record {}: {}`) are translated as well.
fn fill(template: &str, values: &[String]) -> Option<String> {
    let de = Locale::parse("de").ok()?;
    let mut out = String::new();
    let mut values = values.iter();
    let mut parts = template.split("{}").peekable();
    while let Some(p) = parts.next() {
        out.push_str(p);
        if parts.peek().is_some() {
            let v = values.next()?;
            out.push_str(&if v.contains(' ') { localize(v, &de).unwrap_or_else(|| v.clone()) } else { v.clone() });
        }
    }
    Some(out)
}

/// `message` in `locale`, or `None` when it stays as it is (English, or no
/// translation). Handles the shapes that carry values: `{field}: {message}`
/// and `... retry in {n} s`.
pub fn localize(message: &str, locale: &Locale) -> Option<String> {
    if locale.as_str() != "de" {
        return None;
    }
    if let Some(found) = DE.iter().find(|(en, _)| *en == message) {
        return Some(found.1.to_owned());
    }
    if let Some(t) = TEMPLATES.iter().find_map(|(en, de)| fill(de, &captures(en, message)?)) {
        return Some(t);
    }
    // `field: message`, as bad input names its field.
    let (field, inner) = message.split_once(": ")?;
    if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_') {
        return None;
    }
    if let Some(rest) = inner.strip_prefix("must be between ") {
        return Some(format!("{field}: muss zwischen {}", rest.replace(" and ", " und ") + " liegen"));
    }
    localize(inner, locale).map(|t| format!("{field}: {t}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn german_callers_get_german_messages_and_others_get_english() {
        let de = Locale::parse("de").unwrap();
        let en = Locale::parse("en").unwrap();
        assert_eq!(localize("invalid email or password", &de).unwrap(), "E-Mail-Adresse oder Passwort ist falsch");
        assert_eq!(localize("invalid email or password", &en), None);
        assert_eq!(
            localize("password: a password has 8 to 128 characters", &de).unwrap(),
            "password: ein Passwort hat 8 bis 128 Zeichen"
        );
        assert_eq!(localize("too many attempts; retry in 12 s", &de).unwrap(), "zu viele Versuche; erneut in 12 s");
        assert_eq!(localize("first: must be between 1 and 100", &de).unwrap(), "first: muss zwischen 1 und 100 liegen");
        assert_eq!(localize("something nobody translated", &de), None);
    }

    /// Every problem a manifest's field check can report, as a record's
    /// input meets them, each named by its field.
    fn field_problems() -> Vec<String> {
        use actors::domain::manifest::{Field, FieldType};
        let field = |kind: FieldType, max_length: Option<u32>| Field {
            name: "f".into(),
            kind,
            required: false,
            unique: false,
            max_length,
            default: None,
            personal: false,
        };
        let enumeration = FieldType::Enum { values: vec!["lead".into(), "customer".into()] };
        let reference = FieldType::Reference { module: None, table: "company".into() };
        let cases = [
            (field(FieldType::String, Some(3)), serde_json::json!(1)),
            (field(FieldType::String, Some(3)), serde_json::json!("long")),
            (field(FieldType::String, Some(3)), serde_json::json!("a\u{7}")),
            (field(FieldType::Text, Some(3)), serde_json::json!("a\u{7}")),
            (field(FieldType::Int, None), serde_json::json!(u64::MAX)),
            (field(FieldType::Int, None), serde_json::json!("1")),
            (field(FieldType::Decimal, None), serde_json::json!(true)),
            (field(FieldType::Decimal, None), serde_json::json!("12,5")),
            (field(FieldType::Decimal, None), serde_json::json!("1234567890123456789")),
            (field(FieldType::Decimal, None), serde_json::json!("0.1234567891")),
            (field(FieldType::Bool, None), serde_json::json!(1)),
            (field(FieldType::Datetime, None), serde_json::json!("yesterday")),
            (field(enumeration.clone(), None), serde_json::json!(1)),
            (field(enumeration, None), serde_json::json!("prospect")),
            (field(reference, None), serde_json::json!("not-a-uuid")),
        ];
        cases.iter().map(|(f, v)| format!("f: {}", f.parse_value(v).expect_err("a bad value"))).collect()
    }

    /// Every refusal of a push: each bad topic, and each of `PushError`.
    fn push_problems() -> Vec<String> {
        use actors::domain::push::{PushError, Topic};
        let deep = ["x"; 17].join("/");
        let long = ["abcdefghij"; 21].join("/");
        let level = "x".repeat(65);
        let topics = ["", &long, &deep, "a//b", &level, "a.b", "events/X"];
        topics
            .iter()
            .map(|t| format!("topic: {}", Topic::for_message(t).expect_err("a bad topic")))
            .chain(
                [
                    PushError::PayloadTooLarge,
                    PushError::TooManyTypes,
                    PushError::UnknownEventType("X".into()),
                    PushError::Published,
                ]
                .iter()
                .map(ToString::to_string),
            )
            .chain(
                [
                    "push is off: this node's NATS server does not run Canopy's keys (nats_auth_dir)",
                    "pushes belong to a tenant",
                    "push belongs to a tenant",
                    "payload: at most 64 KiB",
                    "types: at most 100 event types",
                    "first: 1 to 100",
                    "after: a cursor from an earlier page",
                    "since: an RFC 3339 date and time, such as 2027-01-31T00:00:00Z",
                    "only a member or access token of this tenant may push",
                    "subscriptions belong to a tenant",
                    "subscriptions belong to a tenant: send x-tenant-id",
                    "the credentials were refused",
                    "the subscriber fell 3 events behind",
                    "the subscriber fell 256 messages behind",
                    "types: unknown event type NoSuchEvent",
                ]
                .map(str::to_owned),
            )
            .collect()
    }

    /// Every refusal of a webhook change: each of `WebhookError` and of the
    /// SSRF guard, and the edge's own.
    fn webhook_problems() -> Vec<String> {
        use actors::domain::webhook::{UrlRefused, WebhookError, check_credential, parse_header};
        let urls =
            [UrlRefused::NotAUrl, UrlRefused::Scheme, UrlRefused::Credentials, UrlRefused::NoHost, UrlRefused::TooLong];
        let header = |h: &str| parse_header(h).expect_err("a bad header").to_string();
        urls.into_iter()
            .map(|u| format!("url: {}", WebhookError::InvalidUrl(u)))
            .chain([
                WebhookError::NotFound.to_string(),
                WebhookError::TooMany.to_string(),
                WebhookError::InvalidName.to_string(),
                WebhookError::InvalidEventTypes("name at least one event type, or `*` for all".into()).to_string(),
                WebhookError::InvalidEventTypes("`*` stands alone".into()).to_string(),
                WebhookError::InvalidEventTypes("1 to 100 event types".into()).to_string(),
                WebhookError::InvalidEventTypes("at most 100 event types".into()).to_string(),
                WebhookError::UnknownEventType("X".into()).to_string(),
                WebhookError::InvalidOverlap.to_string(),
                WebhookError::Disabled.to_string(),
                header(""),
                header("a b"),
                header("Host"),
                check_credential("the token", "").expect_err("empty").to_string(),
                "a basic username has no `:`".to_owned(),
                format!("url: {}", crate::outbound::ssrf::Refused::Unresolved),
                format!("url: {}", crate::outbound::ssrf::Refused::Address("loopback")),
                "no such delivery".to_owned(),
                "deliveryId: not a delivery id".to_owned(),
                "webhooks belong to a tenant".to_owned(),
                "eventTypes: at most 100 event types".to_owned(),
                "auth: give new credentials or removeAuth, not both".to_owned(),
                "this webhook was created by an earlier try of the request; its secret was shown then".to_owned(),
                "this secret was made by an earlier try of the request; it was shown then".to_owned(),
                "only a member or access token of this tenant may change webhooks".to_owned(),
            ])
            .collect()
    }

    #[test]
    fn every_domain_message_has_a_translation() {
        use actors::domain::access::AccessError;
        use actors::domain::account::{AccountError, InputError};
        use actors::domain::backup::BackupError;
        use actors::domain::record::RecordError;
        use actors::domain::tenant::TenantError;
        use actors::domain::tenant_modules::ModulesError;
        let errors: Vec<String> = [
            AccountError::EmailTaken,
            AccountError::AlreadyRegistered,
            AccountError::NotFound,
            AccountError::AlreadyVerified,
            AccountError::InvalidProof,
            AccountError::InvalidRefreshToken,
            AccountError::SessionNotFound,
            AccountError::SameEmail,
            AccountError::LastOwner,
        ]
        .iter()
        .map(ToString::to_string)
        .chain(
            [
                AccessError::UnknownPermission("read_everything".into()),
                AccessError::InvalidRoleName,
                AccessError::RoleNameTaken,
                AccessError::UnknownRole,
                AccessError::BuiltInRole,
                AccessError::RoleAssigned,
                AccessError::LastOwner,
                AccessError::NoRoles,
                AccessError::InvalidDescription,
                AccessError::NoScopes,
                AccessError::ScopesBeyondCreator,
                AccessError::InvalidExpiry,
                AccessError::TooManyTokens,
                AccessError::UnknownToken,
                AccessError::RoleBeyondInviter,
                AccessError::AlreadyInvited,
                AccessError::TooManyInvitations,
                AccessError::UnknownInvitation,
                AccessError::InvitationClosed,
            ]
            .iter()
            .map(ToString::to_string),
        )
        .chain(
            [
                TenantError::AlreadyExists,
                TenantError::InvalidName,
                TenantError::NotFound,
                TenantError::Suspended,
                TenantError::AlreadySuspended,
                TenantError::NotSuspended,
            ]
            .iter()
            .map(ToString::to_string),
        )
        .chain([RecordError::Exists, RecordError::NotFound, RecordError::ChangedByUser].iter().map(ToString::to_string))
        .chain(
            [
                ModulesError::UnknownModule("deals@v9".into()),
                ModulesError::NotSubscribed("deals".into()),
                ModulesError::AlreadySubscribed("deals@v1".into()),
                ModulesError::MissingDependency { module: "deals@v1".into(), needs: "contacts@v1".into() },
                ModulesError::VersionConflict {
                    module: "deals@v1".into(),
                    needs: "contacts@v1".into(),
                    holds: "contacts@v2".into(),
                },
                ModulesError::HoldsOtherVersion { holds: "contacts@v1".into() },
                ModulesError::HasDependents { module: "contacts".into(), dependents: "deals@v1".into() },
                ModulesError::UpgradeBlocked { module: "contacts".into(), dependents: "deals@v1".into() },
                ModulesError::Upgrading { module: "contacts".into(), to: 2 },
                ModulesError::NoUpgradePath { module: "contacts".into(), from: 1, to: 3 },
                ModulesError::ChangedMigration {
                    module: "contacts@v1".into(),
                    migration: "0001_init.surql".into(),
                    applied: "ab".into(),
                    now: "cd".into(),
                },
                ModulesError::StepFailed {
                    step: 3,
                    what: "transform contact: split name".into(),
                    problem: "record 0190a1b2-0000-7000-8000-000000000001: email: this value is already taken".into(),
                },
                ModulesError::TooManyRecords { count: 901, limit: 900 },
            ]
            .iter()
            .map(ToString::to_string),
        )
        .chain(["name: is required".to_owned(), "email: this value is already taken".to_owned()])
        .chain(
            [
                "contacts@v1 is being upgraded to v2; its records can be changed again when that is done",
                "contacts's records kept changing during its upgrade; run it again to finish",
                "this tenant holds contacts@v2, not v1",
                "contacts@v1 has no table nope",
                "company: no company with id 0190a1b2-0000-7000-8000-000000000001",
                "upgrade.transform: the value is held by another record too",
            ]
            .map(str::to_owned),
        )
        .chain(field_problems())
        .chain([BackupError::DailyLimit { taken: 1 }, BackupError::InvalidLimits].iter().map(ToString::to_string))
        .chain(push_problems())
        .chain(webhook_problems())
        .chain(crate::edge::tokens::Refused::ALL.iter().map(|r| r.message().to_owned()))
        .chain(["this needs the permission read_users".to_owned()])
        .chain(
            [
                crate::router::MOVING,
                crate::graphql::request::NO_ANSWER,
                crate::graphql::request::NOT_YET_READABLE,
                actors::command::UNAVAILABLE_MESSAGE,
                "sign in as a platform administrator",
                "the placement bucket cannot be read now",
            ]
            .map(str::to_owned),
        )
        .chain(
            [
                InputError::InvalidEmail,
                InputError::InvalidPasswordLength,
                InputError::InvalidName,
                InputError::InvalidAccountId,
                InputError::InvalidCode,
                InputError::InvalidToken,
                InputError::UnsupportedLocale,
            ]
            .iter()
            .map(ToString::to_string),
        )
        .collect();
        let de = Locale::parse("de").unwrap();
        for e in errors {
            assert!(localize(&e, &de).is_some(), "no German for {e:?}");
        }
    }
}
