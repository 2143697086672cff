//! The list fixtures in tests/fixtures/formats, the seeds' own examples among them, read with
//! `--format auto`: each is detected as its format and gives the entries it holds.

use std::path::PathBuf;

use super::{stream, test_options, Format};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/formats")
        .join(name)
}

#[test]
fn every_fixture_is_detected_and_read() {
    for (name, format, bans, allows) in [
        ("valid.htaccess", Format::Htaccess, 4, 0),
        ("seed-003.pl", Format::PerlHash, 18, 0),
        ("nginx.conf", Format::Nginx, 3, 1),
        ("ipset.save", Format::Ipset, 3, 0),
        ("iptables.save", Format::Iptables, 2, 0),
        ("drop.txt", Format::Spamhaus, 2, 0),
        ("firehol_level1.netset", Format::Netset, 3, 0),
        ("plain.txt", Format::Plain, 2, 0),
    ] {
        let opened = stream(&fixture(name), Format::Auto, test_options()).unwrap();
        assert_eq!(opened.format, format, "{name}");
        assert!(opened.detected.is_some(), "{name}");
        let entries: Vec<_> = opened
            .entries
            .collect::<crate::Result<_>>()
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let allowed = entries.iter().filter(|e| e.allow).count();
        assert_eq!((entries.len() - allowed, allowed), (bans, allows), "{name}");
    }
}

#[test]
fn the_seeds_htaccess_stops_at_its_impossible_address() {
    let opened = stream(&fixture("seed-001.htaccess"), Format::Auto, test_options()).unwrap();
    let err = opened
        .entries
        .collect::<crate::Result<Vec<_>>>()
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with(
            "seed-001.htaccess:6: htaccess format: \"456.456.456.\" is not an address: 456 is no octet (0 to 255)"
        ),
        "{err}"
    );
}
