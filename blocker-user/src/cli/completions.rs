//! `blocker completions SHELL`: the shell's completion script, generated from the clap
//! definitions and written to stdout (packages install it; users can source it).

use std::io::Write;

use clap_complete::Shell;

/// `blocker completions` arguments.
#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Writes the completion script for `args.shell` to `out`.
pub fn run(
    args: &CompletionsArgs,
    mut command: clap::Command,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let name = command.get_name().to_owned();
    // clap_complete panics on a failed write; rendered first, a closed pipe is an error we
    // can treat as success like the other commands do.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    out.write_all(&script)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn script(shell: Shell) -> String {
        let mut out = Vec::new();
        run(&CompletionsArgs { shell }, crate::Cli::command(), &mut out).expect("render");
        String::from_utf8(out).expect("UTF-8 script")
    }

    #[test]
    fn bash_script_parses_and_offers_every_command() {
        let script = script(Shell::Bash);
        let check = std::process::Command::new("bash")
            .args(["-n", "-c", &script])
            .output()
            .expect("running bash -n");
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        for command in crate::Cli::command().get_subcommands() {
            let name = command.get_name();
            assert!(script.contains(name), "bash completion lacks {name}");
        }
        assert!(script.contains("--for"), "options of `ban` are completed");
    }

    #[test]
    fn zsh_and_fish_scripts_name_the_commands() {
        assert!(script(Shell::Zsh).starts_with("#compdef blocker"));
        let fish = script(Shell::Fish);
        assert!(fish.contains("complete -c blocker"), "{fish}");
        assert!(fish.contains("-a \"ban\""), "{fish}");
    }
}
