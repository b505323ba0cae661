//! Credentials out of anything printed. Camera URLs carry `user:password@` (RTSP cameras take no
//! other form of login in many installations), and such URLs end up in logs, config errors,
//! `/status` and GStreamer's error texts; everything on that path goes through [`redact`].

use std::borrow::Cow;

/// Where a URL ends inside a message: whitespace, quotes, and the brackets and escapes that
/// `{:?}`, TOML and log formats put around it.
fn ends_url(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>' | '\\')
}

/// Every `scheme://user:password@host` in `text` becomes `scheme://user:***@host`, and
/// `scheme://token@host` (a userinfo without `:` may be a token) becomes `scheme://***@host`.
/// Works on a bare URL and on any text that contains URLs.
///
/// The userinfo is taken up to the *last* `@` of the URL, so a password with an unescaped `@`
/// or `/` is still hidden; a path that contains `@` hides more than needed, never less.
pub fn redact(text: &str) -> Cow<'_, str> {
    if !text.contains("://") || !text.contains('@') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (head, tail) = rest.split_at(start + 3);
        out.push_str(head);
        let end = tail.find(ends_url).unwrap_or(tail.len());
        let url = &tail[..end];
        match url.rfind('@') {
            Some(at) => {
                let userinfo = &url[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) if !user.contains('/') => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    _ => out.push_str("***"),
                }
                out.push_str(&url[at..]);
            }
            None => out.push_str(url),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden_users_and_hosts_kept() {
        for (input, shown) in [
            (
                "rtsp://admin:hunter2@10.0.0.5:554/stream1",
                "rtsp://admin:***@10.0.0.5:554/stream1",
            ),
            ("rtsp://10.0.0.5/s", "rtsp://10.0.0.5/s"),
            ("garbage", "garbage"),
            ("", ""),
            ("mail me@example.org", "mail me@example.org"),
            // A bare userinfo may be a token.
            ("https://ghp_token@host/x", "https://***@host/x"),
            // Unescaped '@' and '/' in the password.
            ("rtsp://admin:p@ss@cam/s", "rtsp://admin:***@cam/s"),
            ("rtsp://admin:pa/ss@cam/s", "rtsp://admin:***@cam/s"),
            ("rtsp://u:@cam", "rtsp://u:***@cam"),
            // Inside messages: Debug quoting, TOML, several URLs, GStreamer's text.
            (
                r#"camera[0].url: "rtsp://u:pw@h:99999/x" is not a URL"#,
                r#"camera[0].url: "rtsp://u:***@h:99999/x" is not a URL"#,
            ),
            (
                r#"camera=[{ name = "video", url = "rtsp://u:pw@h/v" }]"#,
                r#"camera=[{ name = "video", url = "rtsp://u:***@h/v" }]"#,
            ),
            (
                "a rtsp://a:1@x/ b rtsp://y/ c http://b:2@z",
                "a rtsp://a:***@x/ b rtsp://y/ c http://b:***@z",
            ),
            (
                "Could not open resource (location=rtsps://op:s3cr3t@[fd00::1]:322/live)",
                "Could not open resource (location=rtsps://op:***@[fd00::1]:322/live)",
            ),
            (r#"\"rtsp://u:pw@h\""#, r#"\"rtsp://u:***@h\""#),
        ] {
            assert_eq!(redact(input), shown, "{input}");
        }
    }

    #[test]
    fn no_secret_survives_whatever_surrounds_it() {
        let secret = "Zq9-secret";
        for wrap in ["{}", "\"{}\"", "'{}'", "({})", "<{}>", "x={},y", "{}\n{}"] {
            let text = wrap.replace("{}", &format!("rtsp://viewer:{secret}@cam.local/s"));
            let shown = redact(&text);
            assert!(!shown.contains(secret), "{text} → {shown}");
            assert!(shown.contains("viewer:***@cam.local"), "{shown}");
        }
    }
}
