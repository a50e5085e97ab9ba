//! Reading the dashboard's URLs: percent-decoding, query parameters, list queries.

use makelaar_core::admin::ListQuery;

/// Percent-decodes `s` (with `+` as a space when `plus` is set, as in a query string);
/// `None` for a broken escape or text that is not UTF-8.
pub(crate) fn percent_decode(s: &str, plus: bool) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = hex_value(bytes.next()?)?;
                let lo = hex_value(bytes.next()?)?;
                out.push(hi << 4 | lo);
            }
            b'+' if plus => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The decoded value of parameter `name` in a query string (the first one given).
pub(crate) fn param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k, true)? == name).then(|| percent_decode(v, true))?
    })
}

/// `offset`, `limit` and `q` (text the key contains) of a list request. Numbers that do not
/// parse are taken as absent.
pub(crate) fn list_query(query: Option<&str>) -> ListQuery {
    let number = |name| param(query, name).and_then(|v| v.parse::<usize>().ok());
    ListQuery {
        offset: number("offset").unwrap_or(0),
        limit: number("limit").unwrap_or(0),
        contains: param(query, "q").filter(|q| !q.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_and_plus() {
        assert_eq!(percent_decode("a%2Fb+c", true).as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%E2%82%AC", false).as_deref(), Some("€"));
        assert_eq!(percent_decode("%2", false), None);
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%FF", false), None, "not UTF-8");
    }

    #[test]
    fn finds_parameters() {
        let q = Some("filter=sensors%2F%23&x=1&q=");
        assert_eq!(param(q, "filter").as_deref(), Some("sensors/#"));
        assert_eq!(param(q, "x").as_deref(), Some("1"));
        assert_eq!(param(q, "q").as_deref(), Some(""));
        assert_eq!(param(q, "missing"), None);
        assert_eq!(param(None, "x"), None);
    }

    #[test]
    fn list_queries_take_what_parses() {
        let q = list_query(Some("offset=20&limit=abc&q=sensor"));
        assert_eq!(q.offset, 20);
        assert_eq!(q.limit, 0);
        assert_eq!(q.contains.as_deref(), Some("sensor"));
        assert_eq!(list_query(Some("q=")).contains, None);
    }
}
