//! The five example apps, embedded so `keel demo <app>` works from any directory.

pub const EXAMPLES: &[(&str, &str)] = &[
    ("pms", include_str!("../../../examples/pms/keel.toml")),
    (
        "fleet-compliance",
        include_str!("../../../examples/fleet-compliance/keel.toml"),
    ),
    ("hoa", include_str!("../../../examples/hoa/keel.toml")),
    ("schedules", include_str!("../../../examples/schedules/keel.toml")),
    ("ge-metrics", include_str!("../../../examples/ge-metrics/keel.toml")),
];

pub fn spec(name: &str) -> Option<&'static str> {
    EXAMPLES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}
