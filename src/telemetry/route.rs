//! The `route` label of the HTTP SLI series: a low-cardinality template for a request path.
//!
//! Configured templates (`/orders/{id}`) come first: a path takes the matching template with the most
//! literal segments. Other paths get a fallback template: segments that look like identifiers (numbers,
//! UUIDs, long hex or opaque tokens) become `{id}`, paths are cut after [`MAX_SEGMENTS`] segments, and
//! after `max_routes` distinct fallbacks every new one is `_other`. So however hostile the paths, the
//! label has at most `templates + max_routes + 1` values.

use crate::telemetry::labels::BoundedLabel;

/// Segments a fallback route keeps; deeper paths end in `/*`.
pub const MAX_SEGMENTS: usize = 4;
/// A segment longer than this is an opaque token, not a resource name.
const MAX_NAME_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

/// A configured route template: `/` followed by literal segments and `{param}` segments.
#[derive(Debug, Clone)]
pub struct Template {
    text: String,
    segments: Vec<Segment>,
    literals: usize,
}

impl Template {
    /// Parses a template; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Template, String> {
        let rest = text.strip_prefix('/').ok_or("must start with /")?;
        let mut segments = Vec::new();
        if !rest.is_empty() {
            for s in rest.split('/') {
                if s.starts_with('{') && s.ends_with('}') && s.len() > 2 {
                    segments.push(Segment::Param);
                } else if s.contains(['{', '}', '?', '#']) {
                    return Err(format!("segment {s:?}: a parameter is a whole segment like {{id}}; no ? or #"));
                } else {
                    segments.push(Segment::Literal(s.to_string()));
                }
            }
        }
        let literals = segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count();
        Ok(Template {
            text: text.to_string(),
            segments,
            literals,
        })
    }

    fn matches(&self, path: &[&str]) -> bool {
        self.segments.len() == path.len()
            && self.segments.iter().zip(path).all(|(t, p)| match t {
                Segment::Param => !p.is_empty(),
                Segment::Literal(l) => l == p,
            })
    }
}

/// Turns request paths into `route` label values.
pub struct Routes {
    templates: Vec<Template>,
    fallbacks: BoundedLabel,
}

impl Routes {
    /// Routes from parsed templates.
    pub fn new(templates: Vec<Template>, max_fallbacks: usize) -> Routes {
        Routes {
            templates,
            fallbacks: BoundedLabel::new(max_fallbacks),
        }
    }

    /// The route of a path (the query string is not part of it), and whether a template matched.
    pub fn label(&self, path: &str) -> (String, bool) {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let segments: &[&str] = if path.trim_start_matches('/').is_empty() { &[] } else { &segments };
        if let Some(t) = self.templates.iter().filter(|t| t.matches(segments)).max_by_key(|t| t.literals) {
            return (t.text.clone(), true);
        }
        (self.fallbacks.label(&fallback(segments)), false)
    }
}

fn fallback(segments: &[&str]) -> String {
    if segments.is_empty() {
        return "/".to_string();
    }
    let mut out = String::new();
    for s in segments.iter().take(MAX_SEGMENTS) {
        out.push('/');
        out.push_str(if is_identifier(s) { "{id}" } else { s });
    }
    if segments.len() > MAX_SEGMENTS {
        out.push_str("/*");
    }
    out
}

/// Numbers, UUIDs, hex strings of 8+ characters with a digit, long tokens, and anything that is not a
/// plain name (percent-encoded bytes, unusual characters).
fn is_identifier(s: &str) -> bool {
    let plain = s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    let hex = s.len() >= 8 && digits > 0 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    !plain || s.len() > MAX_NAME_LEN || (!s.is_empty() && digits == s.len()) || hex
}

#[cfg(test)]
mod tests {
    use super::*;

    fn templates(texts: &[&str]) -> Vec<Template> {
        texts.iter().map(|t| Template::parse(t).unwrap()).collect()
    }
    use std::collections::HashSet;

    #[test]
    fn templates_win_most_literal_first() {
        let r = Routes::new(templates(&["/orders/{id}", "/orders/{id}/items", "/orders/recent"]), 10);
        assert_eq!(r.label("/orders/42"), ("/orders/{id}".into(), true));
        assert_eq!(r.label("/orders/recent"), ("/orders/recent".into(), true));
        assert_eq!(r.label("/orders/42/items?x=1"), ("/orders/{id}/items".into(), true));
        assert_eq!(r.label("/orders/42/other"), ("/orders/{id}/other".into(), false));
    }

    #[test]
    fn fallback_collapses_identifiers() {
        let r = Routes::new(Vec::new(), 100);
        assert_eq!(r.label("/").0, "/");
        assert_eq!(r.label("").0, "/");
        assert_eq!(r.label("/users/123").0, "/users/{id}");
        assert_eq!(r.label("/users/3f2b8c1e-9a4d-4c1b-8e2f-0a1b2c3d4e5f/cart").0, "/users/{id}/cart");
        assert_eq!(r.label("/blobs/deadbeef01").0, "/blobs/{id}");
        assert_eq!(r.label("/a%20b").0, "/{id}");
        assert_eq!(r.label("/a/b/c/d/e/f").0, "/a/b/c/d/*");
        assert_eq!(r.label("/health").0, "/health");
    }

    #[test]
    fn hostile_paths_are_bounded() {
        let r = Routes::new(templates(&["/orders/{id}"]), 5);
        let mut labels = HashSet::new();
        for i in 0..10_000 {
            labels.insert(r.label(&format!("/word{}x/{}", "ab".repeat(i % 7), i)).0);
            labels.insert(r.label(&format!("/r{i}z/q")).0);
        }
        assert!(labels.len() <= 6, "{labels:?}");
        assert!(labels.contains(crate::telemetry::labels::OTHER_LABEL));
        assert_eq!(r.label("/orders/7").0, "/orders/{id}");
    }

    #[test]
    fn bad_templates_say_why() {
        assert!(Template::parse("orders").is_err());
        assert!(Template::parse("/orders/{id").is_err());
        assert!(Template::parse("/orders?x").is_err());
        assert!(Template::parse("/").is_ok());
    }
}
