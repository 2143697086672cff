//! docs/benchmarks.md is shared by the bench modes and by hand: each measured section sits
//! between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`, and a run rewrites only the
//! blocks of the sections it measured. Everything outside the markers is kept as written.

use std::path::Path;

use anyhow::Result;

use super::{machine, sh};

/// Sections whose text in docs/benchmarks.md is kept by hand until someone marks them: a
/// run rewrites them only where their markers already are, and never adds them.
const HAND_KEPT: [&str; 3] = ["state", "analyze", "logs"];

/// Rewrites the blocks of `sections` (name, markdown starting with its `## ` heading) in
/// docs/benchmarks.md, saying which run produced them.
pub(super) fn update(root: &Path, command: &str, sections: &[(&str, String)]) -> Result<()> {
    let path = root.join("docs/benchmarks.md");
    let doc = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => NEW_DOC.to_string(),
        Err(err) => return Err(err.into()),
    };
    let provenance = format!(
        "_From `{command}` on {}, {}, Linux {}._",
        sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"])?.trim(),
        machine(),
        sh("uname", &["-r"])?.trim(),
    );
    let (doc, written) = rewrite(&doc, sections, &provenance);
    std::fs::create_dir_all(root.join("docs"))?;
    std::fs::write(&path, doc)?;
    println!("bench: docs/benchmarks.md: rewrote {}", written.join(", "));
    Ok(())
}

/// `doc` with the blocks of `sections` rewritten (unmarked ones appended, except
/// [`HAND_KEPT`]), and the names of the blocks written.
fn rewrite<'a>(
    doc: &str,
    sections: &[(&'a str, String)],
    provenance: &str,
) -> (String, Vec<&'a str>) {
    let mut doc = doc.to_string();
    let mut written = Vec::new();
    for &(name, ref markdown) in sections {
        let body = with_provenance(markdown, provenance);
        match splice(&doc, name, &body) {
            Some(spliced) => doc = spliced,
            None if HAND_KEPT.contains(&name) => {
                println!("bench: docs/benchmarks.md keeps its hand-written {name} section");
                continue;
            }
            None => doc = append(&doc, name, &body),
        }
        written.push(name);
    }
    (doc, written)
}

const NEW_DOC: &str = "# Benchmarks\n\nEach section between `<!-- bench:NAME -->` markers is \
    rewritten by the `cargo xtask bench` run that measures it; text outside them is written by \
    hand and kept.\n";

/// The section's markdown with the provenance line under its heading.
fn with_provenance(markdown: &str, provenance: &str) -> String {
    let markdown = markdown.trim();
    match markdown.split_once('\n') {
        Some((heading, rest)) if heading.starts_with('#') => {
            format!("{heading}\n\n{provenance}\n{rest}")
        }
        _ => format!("{provenance}\n\n{markdown}"),
    }
}

fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    )
}

/// `doc` with the block `name` holding `body`, or None when the block is not marked.
fn splice(doc: &str, name: &str, body: &str) -> Option<String> {
    let (open, close) = markers(name);
    let start = doc.find(&open)? + open.len();
    let end = start + doc[start..].find(&close)?;
    Some(format!("{}\n{body}\n{}", &doc[..start], &doc[end..]))
}

fn append(doc: &str, name: &str, body: &str) -> String {
    let (open, close) = markers(name);
    format!("{}\n\n{open}\n{body}\n{close}\n", doc.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# Benchmarks\n\nBy hand.\n\n<!-- bench:costs -->\n## Costs\nold costs\n\
        <!-- /bench:costs -->\n\n## State\nhand table\n\n<!-- bench:throughput -->\n\
        ## Throughput\nold rates\n<!-- /bench:throughput -->\nHand note.\n";

    #[test]
    fn a_run_rewrites_its_own_block_and_keeps_the_rest() {
        let doc = splice(DOC, "costs", "## Costs\nnew costs").unwrap();
        assert!(doc.contains("new costs"));
        assert!(!doc.contains("old costs"));
        for kept in [
            "By hand.",
            "## State\nhand table",
            "old rates",
            "Hand note.",
        ] {
            assert!(doc.contains(kept), "lost {kept:?}");
        }
        // Rewriting again changes nothing more.
        assert_eq!(splice(&doc, "costs", "## Costs\nnew costs").unwrap(), doc);
    }

    #[test]
    fn an_unmarked_section_is_not_spliced_but_appended_on_request() {
        assert!(splice(DOC, "daemon", "## Daemon\nfigures").is_none());
        let doc = append(DOC, "daemon", "## Daemon\nfigures");
        assert!(doc.starts_with(DOC.trim_end()));
        assert!(
            doc.ends_with("<!-- bench:daemon -->\n## Daemon\nfigures\n<!-- /bench:daemon -->\n")
        );
        assert!(splice(&doc, "daemon", "## Daemon\nnew")
            .unwrap()
            .contains("new"));
    }

    #[test]
    fn a_full_run_keeps_the_unmarked_hand_sections_and_adds_its_missing_blocks() {
        let sections = [
            ("costs", "## Costs\nnew costs".to_string()),
            ("daemon", "## Daemon\nfigures".to_string()),
            ("state", "## State\ngenerated table".to_string()),
        ];
        let (doc, written) = rewrite(DOC, &sections, "_From x._");
        assert_eq!(written, ["costs", "daemon"]);
        assert!(doc.contains("## State\nhand table"));
        assert!(!doc.contains("generated table"));
        assert!(doc.contains("<!-- bench:daemon -->\n## Daemon\n\n_From x._\nfigures"));
        assert!(doc.contains("old rates"));
    }

    #[test]
    fn the_provenance_goes_under_the_heading() {
        assert_eq!(
            with_provenance("\n## Costs\n\ntable\n", "_From x._"),
            "## Costs\n\n_From x._\n\ntable"
        );
    }
}
