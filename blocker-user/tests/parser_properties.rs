//! Properties of the parsers of user input that live outside the modules they test: durations
//! (`--for`, rule times) and the TOML config with its rules. Whatever the text, they never panic
//! and a refusal is one line. (Addresses and list files are covered beside their code.)

use std::time::Duration;

use blocker::{clock::parse_duration, config::Config};
use proptest::prelude::*;

/// A config using every section and most rule fields, to mutate.
const SAMPLE: &str = r#"
[maps]
ban_v4 = 1024
history = 4096

[[rules]]
name = "ssh"
proto = "tcp"
dport = 22
hitcount = 3
seconds = 30
blacklist_for = "120s"
refresh = true
mask = 24

[[rules]]
name = "web"
kind = "burst"
proto = "tcp"
dport = "80-443"
gap = "2s"
bunch_size = 10
action = "reject"

[offenses]
ban_for = "1h"
"#;

fn one_line_refusal(result: Result<Config, String>) -> Result<(), TestCaseError> {
    if let Err(message) = result {
        prop_assert!(!message.is_empty());
        prop_assert!(!message.contains('\n'), "multi-line error: {}", message);
    }
    Ok(())
}

#[test]
fn the_sample_is_valid() {
    let config = Config::parse(SAMPLE).expect("the sample parses");
    assert_eq!(config.rules.map(|rules| rules.len()), Some(2));
}

proptest! {
    #[test]
    fn any_duration_text_parses_or_is_refused(text in any::<String>()) {
        if let Err(err) = parse_duration(&text) {
            prop_assert!(err.is_bad_input());
            prop_assert!(!err.to_string().contains('\n'));
        }
    }

    #[test]
    fn printed_durations_parse_back(seconds in 0u64..10_000_000_000, nanos in 0u32..1_000_000_000) {
        let duration = Duration::new(seconds, nanos);
        prop_assume!(!duration.is_zero());
        let text = humantime::format_duration(duration).to_string();
        prop_assert_eq!(parse_duration(&text).expect("a printed duration parses"), duration);
    }

    #[test]
    fn any_config_text_parses_or_is_one_line(text in any::<String>()) {
        one_line_refusal(Config::parse(&text))?;
    }

    #[test]
    fn a_mutated_config_parses_or_is_one_line(
        cut in 0..SAMPLE.len(),
        len in 0usize..8,
        insert in "[ -~\n\u{e9}\u{1f600}]{0,6}",
    ) {
        // Replace a few bytes of the sample at a character boundary with random text.
        let start = (0..=cut).rev().find(|i| SAMPLE.is_char_boundary(*i)).unwrap_or(0);
        let end = (start + len..=SAMPLE.len())
            .find(|i| SAMPLE.is_char_boundary(*i))
            .unwrap_or(SAMPLE.len());
        let text = format!("{}{insert}{}", &SAMPLE[..start], &SAMPLE[end..]);
        one_line_refusal(Config::parse(&text))?;
    }

    #[test]
    fn any_rule_values_parse_or_are_one_line(
        key in prop::sample::select(vec![
            "name", "kind", "proto", "dport", "events", "hitcount", "seconds", "blacklist_for",
            "refresh", "action", "mask", "mask6", "ttl_match", "gap", "bunch_size",
            "bunch_count", "min_bunch", "window", "unknown",
        ]),
        value in prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            "[a-z0-9 -]{0,12}".prop_map(|s| format!("{s:?}")),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
        ],
    ) {
        let text = format!("[[rules]]\nname = \"r\"\n{key} = {value}\n");
        // A repeated `name` is a TOML error too; only the outcome's shape matters here.
        one_line_refusal(Config::parse(&text))?;
    }
}
