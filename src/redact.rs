//! Keeps secrets out of everything busbench writes or prints: librdkafka properties that hold
//! credentials, the user info of broker URLs, and any text that repeats their values.
//!
//! Secrets are registered once (from the scenario and the command line) and every report,
//! error and log line goes through [`text`] on its way out.

use std::sync::RwLock;

/// What a secret is replaced with.
pub const MASK: &str = "***";

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Whether a librdkafka property holds a secret: passwords, secrets, keys, tokens and every
/// `sasl.*` setting.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.starts_with("sasl.")
        || key.starts_with("ssl.key.")
        || key.contains("password")
        || key.contains("secret")
        || key.contains("token")
        || key.ends_with(".pem")
        || key == "ssl.key.pem"
}

/// Remembers a secret value, so that [`text`] masks it wherever it appears.
pub fn register(secret: &str) {
    if secret.is_empty() {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| s == secret) {
        secrets.push(secret.to_owned());
        // Longest first, so that a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Registers the user info (`user:password`, a token) of every URL in `urls` (a
/// comma-separated list is fine).
pub fn register_url(urls: &str) {
    for url in urls.split(',') {
        if let Some((_, rest)) = url.split_once("://")
            && let Some((user_info, _)) = rest.split_once('@')
        {
            register(user_info);
            if let Some((_, password)) = user_info.split_once(':') {
                register(password);
            }
        }
    }
}

/// `url` without its user info: `nats://***@host:4222`.
pub fn url(url: &str) -> String {
    url.split(',')
        .map(|one| match one.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((_, host)) => format!("{scheme}://{MASK}@{host}"),
                None => one.to_owned(),
            },
            None => one.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `text` with every registered secret, and the user info of every URL in it, masked.
pub fn text(text: &str) -> String {
    let mut out = text.to_owned();
    for secret in SECRETS.read().unwrap_or_else(|e| e.into_inner()).iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MASK);
        }
    }
    mask_user_info(&out)
}

/// Masks `user:password@` after every `://` in free text.
fn mask_user_info(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(index) = rest.find("://") {
        let (head, tail) = rest.split_at(index + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) if &tail[..at] != MASK => {
                out.push_str(MASK);
                rest = &tail[at..];
            }
            _ => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// A copy of librdkafka properties with secret values masked.
pub fn properties(
    properties: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    properties
        .iter()
        .map(|(key, value)| {
            let value = if is_secret_key(key) {
                MASK.to_owned()
            } else {
                value.clone()
            };
            (key.clone(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys_are_recognised() {
        for key in [
            "sasl.password",
            "sasl.username",
            "sasl.oauthbearer.client.secret",
            "ssl.key.password",
            "ssl.key.pem",
            "ssl.keystore.password",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in [
            "acks",
            "linger.ms",
            "bootstrap.servers",
            "security.protocol",
        ] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn urls_and_text_lose_their_user_info() {
        assert_eq!(url("nats://bob:hunter2@h:4222"), "nats://***@h:4222");
        assert_eq!(url("nats://h:4222"), "nats://h:4222");
        assert_eq!(
            mask_user_info("could not connect to nats://bob:pw@127.0.0.1:4222: refused"),
            "could not connect to nats://***@127.0.0.1:4222: refused"
        );
        register("s3cr3t-value");
        assert_eq!(text("auth failed for s3cr3t-value"), "auth failed for ***");
        register_url("nats://alice:pa55word@h:1");
        assert_eq!(text("bad pa55word"), "bad ***");
    }
}
