//! `blocker man --out DIR`: one roff man page per command (`blocker.1`, `blocker-ban.1`,
//! `blocker-rule-add.1`...), generated from the clap definitions.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// `blocker man` arguments.
#[derive(clap::Args)]
pub struct ManArgs {
    /// Directory the pages are written to; created if missing.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Writes every page into `args.out` and names each written file on `out`.
pub fn run(args: &ManArgs, command: clap::Command, out: &mut impl Write) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // Built once so subcommands carry their full names (`blocker-rule-add`) into the pages.
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let mut written = Vec::new();
    write_pages(command, &args.out, &mut written)
        .with_context(|| format!("writing man pages into {}", args.out.display()))?;
    for page in written {
        writeln!(out, "{}", page.display())?;
    }
    Ok(())
}

/// The page of `command`, then those of its visible subcommands, depth first.
fn write_pages(
    command: clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let subcommands: Vec<clap::Command> = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .cloned()
        .collect();
    written.push(clap_mangen::Man::new(command).generate_to(dir)?);
    for sub in subcommands {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn one_page_per_command_nested_ones_included() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out_dir = dir.path().join("man1");
        let mut listing = Vec::new();
        let args = ManArgs {
            out: out_dir.clone(),
        };
        run(&args, crate::Cli::command(), &mut listing).expect("writing pages");
        let listing = String::from_utf8(listing).expect("UTF-8 listing");
        let top = crate::Cli::command();
        let subcommands = top.get_subcommands().count();
        // `rule` has three of its own: add, list, remove.
        assert_eq!(listing.lines().count(), 1 + subcommands + 3, "{listing}");
        for name in ["blocker", "blocker-ban", "blocker-rule-add", "blocker-man"] {
            let page = std::fs::read_to_string(out_dir.join(format!("{name}.1")))
                .unwrap_or_else(|err| panic!("{name}.1: {err}"));
            assert!(page.starts_with(".ie"), "{name}.1 is roff: {page:.80}");
            assert!(page.contains(&format!(".TH {name} 1")), "{name}.1 title");
        }
        let ban = std::fs::read_to_string(out_dir.join("blocker-ban.1")).expect("ban page");
        assert!(
            ban.contains("permanent unless"),
            "the ban page has its help"
        );
    }

    #[test]
    fn a_file_in_the_way_is_a_one_line_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("taken");
        std::fs::write(&file, "").expect("write");
        let args = ManArgs { out: file };
        let err = run(&args, crate::Cli::command(), &mut Vec::new()).expect_err("not a dir");
        assert!(format!("{err:#}").contains("taken"), "{err:#}");
    }
}
