//! What the templates share: the layout's data ([`Layout`]), times as people read them, and
//! HTML escaping for the few strings built outside a template.

use crate::store::UserRow;

/// The data of the layout every page but the login form has (`base.html`): the title, the user
/// and the session's CSRF token for the log-out form.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The page's title.
    pub title: String,
    /// The user's name.
    pub user: String,
    /// The user's role.
    pub role: &'static str,
    /// Whether the user may change things (not a viewer).
    pub can_write: bool,
    /// The session's CSRF token.
    pub csrf: String,
    /// The stylesheet's path (versioned).
    pub css: &'static str,
    /// The script's path (versioned).
    pub js: &'static str,
}

impl Layout {
    /// The layout of a page titled `title` for `user`.
    pub fn new(title: impl Into<String>, user: &UserRow, csrf: &str) -> Layout {
        Layout {
            title: title.into(),
            user: user.name.clone(),
            role: user.role.as_str(),
            can_write: user.role.can_write(),
            csrf: csrf.to_string(),
            css: super::assets::css_path(),
            js: super::assets::js_path(),
        }
    }
}

/// `text` escaped for HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A stored time (`2026-12-08T00:12:33.123Z`) as people read it: `2026-12-08 00:12:33`.
pub fn when(time: &str) -> String {
    let trimmed = time.split('.').next().unwrap_or(time).trim_end_matches('Z');
    trimmed.replacen('T', " ", 1)
}

/// Seconds since the Unix epoch of a stored UTC time (`YYYY-MM-DDTHH:MM:SS[.fff]Z`); `None` for
/// text of another form.
pub fn epoch_secs(time: &str) -> Option<f64> {
    let (date, clock) = time.trim_end_matches('Z').split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut c = clock.splitn(3, ':');
    let (h, min) = (c.next()?.parse::<i64>().ok()?, c.next()?.parse::<i64>().ok()?);
    let s: f64 = c.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm), proleptic Gregorian.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + s)
}

/// A duration as people read it: `850 ms`, `42 s`, `3 min 05 s`, `2 h 03 min`.
pub fn duration(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 1.0 {
        return format!("{} ms", (secs * 1000.0).round() as i64);
    }
    let whole = secs.floor() as i64;
    match whole {
        0..=59 => format!("{whole} s"),
        60..=3599 => format!("{} min {:02} s", whole / 60, whole % 60),
        _ => format!("{} h {:02} min", whole / 3600, (whole % 3600) / 60),
    }
}

/// The duration between two stored times, `end` `None` meaning now (a running step's, which
/// the page's script then keeps ticking); empty when `start` is `None`.
pub fn span(start: Option<&str>, end: Option<&str>) -> String {
    let Some(start) = start.and_then(epoch_secs) else { return String::new() };
    let end = match end {
        Some(end) => epoch_secs(end),
        None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs_f64()),
    };
    end.map(|end| duration(end - start)).unwrap_or_default()
}

/// The first 10 characters of a commit (the whole of a shorter one).
pub fn short_commit(sha: &str) -> &str {
    sha.get(..10).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_people_read_them() {
        assert_eq!(when("2026-12-08T00:12:33.123Z"), "2026-12-08 00:12:33");
        assert_eq!(epoch_secs("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(epoch_secs("2000-03-01T00:00:01.5Z"), Some(951_868_801.5));
        assert_eq!(epoch_secs("yesterday"), None);
        assert_eq!(span(Some("2026-12-08T00:00:00.000Z"), Some("2026-12-08T00:03:05.200Z")), "3 min 05 s");
        assert_eq!(duration(0.25), "250 ms");
        assert_eq!(duration(7260.0), "2 h 01 min");
        assert_eq!(span(None, None), "");
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(short_commit("0123456789abcdef"), "0123456789");
    }
}
