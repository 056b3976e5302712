//! `{{ path }}` templates over a job's payload (email subjects and bodies, webhook bodies).
//!
//! A path is dot-separated keys and array indexes (`payload.record.email`, `items.0.name`);
//! the root has `payload`, `job` (id, kind, attempt), `org` and `user` (the enqueuer: id,
//! email, name). A missing value renders as
//! nothing. `html` escaping is for HTML bodies.

use serde_json::Value;

/// Renders `template` against `root`.
pub fn render(template: &str, root: &Value, html: bool) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let value = lookup(root, after[..end].trim());
        let text = match value {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        if html {
            escape_into(&mut out, &text);
        } else {
            out.push_str(&text);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |value, key| match value {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Appends `text` with HTML's special characters escaped (for text and quoted attributes).
pub fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_paths_and_escapes_html() {
        let root = serde_json::json!({"payload": {"record": {"name": "<Ann>", "n": 3, "tags": ["a", "b"]}}});
        assert_eq!(
            render(
                "Hi {{ payload.record.name }} ({{payload.record.n}}, {{ payload.record.tags.1 }}){{ missing }}",
                &root,
                false
            ),
            "Hi <Ann> (3, b)"
        );
        assert_eq!(
            render("<b>{{ payload.record.name }}</b>", &root, true),
            "<b>&lt;Ann&gt;</b>"
        );
        assert_eq!(render("open {{ never closed", &root, false), "open {{ never closed");
    }
}
