//! Generated documentation stays in step with the code.

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_default()
}

#[test]
fn errors_md_is_generated_from_the_code_table() {
    let expected = keel_server::http::error::errors_markdown();
    assert!(
        repo_file("docs/ERRORS.md") == expected,
        "docs/ERRORS.md is stale: run `cargo run -p keel -- docs` (or copy keel_server::http::error::errors_markdown())"
    );
}

#[test]
fn metrics_md_lists_every_metric() {
    assert!(
        repo_file("docs/METRICS.md") == keel_server::http::catalogue::metrics_markdown(),
        "docs/METRICS.md is stale: run `cargo run -p keel -- docs`"
    );
}

#[test]
fn config_md_lists_every_default() {
    let expected = keel_server::config::config_markdown();
    assert!(
        repo_file("docs/CONFIG.md") == expected,
        "docs/CONFIG.md is stale: run `cargo run -p keel -- docs`"
    );
}

#[test]
fn error_codes_are_unique_snake_case() {
    let mut seen = std::collections::HashSet::new();
    for (code, status, _) in keel_server::http::error::CODES {
        assert!(seen.insert(*code), "{code} twice");
        assert!(code.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{code}");
        assert!((400..600).contains(status));
    }
}
