//! `heistd completions bash|zsh|fish`, `heistd man` and `heistd version`:
//! what a packager installs beside the binary, generated from the clap
//! definitions (`args`), so the completions and the man page can never
//! name a subcommand or option the binary does not have.
//!
//! It writes text only.

use clap::CommandFactory;

use super::args::{Cli, Shell, VERSION};
use super::CliError;

/// `heistd completions SHELL`: the script for that shell.
pub fn completions(shell: Shell) -> Result<String, CliError> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, &mut command, "heistd", &mut script);
    String::from_utf8(script)
        .map_err(|error| CliError::Usage(format!("the completion script is not UTF-8: {error}")))
}

/// `heistd man`: the man page (section 1, roff), every subcommand in it.
pub fn man() -> Result<String, CliError> {
    let command = Cli::command();
    let mut page = Vec::new();
    let failed =
        |error: std::io::Error| CliError::Usage(format!("cannot write the man page: {error}"));
    let manual = clap_mangen::Man::new(command.clone());
    manual.render_title(&mut page).map_err(failed)?;
    manual.render_name_section(&mut page).map_err(failed)?;
    manual.render_synopsis_section(&mut page).map_err(failed)?;
    manual
        .render_description_section(&mut page)
        .map_err(failed)?;
    manual.render_options_section(&mut page).map_err(failed)?;
    // Each subcommand (and theirs) gets its own section, so `man heistd`
    // holds the whole command line, not only the top level's list.
    render_subcommands(&mut page, &command, "heistd").map_err(failed)?;
    manual.render_version_section(&mut page).map_err(failed)?;
    String::from_utf8(page)
        .map_err(|error| CliError::Usage(format!("the man page is not UTF-8: {error}")))
}

/// A `SUBCOMMANDS` section listing each subcommand under its full name,
/// with its help and options, depth first.
fn render_subcommands(
    page: &mut Vec<u8>,
    command: &clap::Command,
    path: &str,
) -> std::io::Result<()> {
    use std::io::Write;
    let visible: Vec<&clap::Command> = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
        .collect();
    if visible.is_empty() {
        return Ok(());
    }
    if path == "heistd" {
        writeln!(page, ".SH SUBCOMMANDS")?;
    }
    for sub in visible {
        let name = format!("{path} {}", sub.get_name());
        writeln!(page, ".TP\n\\fB{}\\fR", escape(&name))?;
        let about = sub
            .get_long_about()
            .or_else(|| sub.get_about())
            .map(|about| about.to_string())
            .unwrap_or_default();
        writeln!(page, "{}", escape(&about))?;
        for argument in sub.get_arguments().filter(|arg| !arg.is_hide_set()) {
            let flag = match (argument.get_long(), argument.is_positional()) {
                (Some(long), _) => format!("--{long}"),
                (None, true) => format!("<{}>", argument.get_id().as_str().to_uppercase()),
                (None, false) => continue,
            };
            let help = argument
                .get_help()
                .map(|help| help.to_string())
                .unwrap_or_default();
            writeln!(page, ".br\n\\fI{}\\fR  {}", escape(&flag), escape(&help))?;
        }
        render_subcommands(page, sub, &name)?;
    }
    Ok(())
}

/// Text as roff reads it: backslashes and leading dots cannot be commands.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    text.lines()
        .map(|line| {
            if line.starts_with('.') || line.starts_with('\'') {
                format!("\\&{line}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `heistd version`: what `--version` prints, and the commit on its own
/// line for scripts.
pub fn version() -> String {
    format!(
        "heistd {VERSION}\ncommit: {}\n",
        env!("HEISTD_BUILD_COMMIT")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_the_man_page_name_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = completions(shell).expect("script");
            for name in ["daemon", "sessions", "watch", "status", "completions"] {
                assert!(script.contains(name), "{shell:?} lacks {name}");
            }
        }
        let page = man().expect("page");
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
        for name in [
            "heistd sessions watch",
            "heistd runs start",
            "heistd status",
            "\\-\\-follow",
        ] {
            assert!(page.contains(name), "the man page lacks {name}");
        }
    }

    #[test]
    fn version_names_the_commit() {
        let text = version();
        assert!(text.starts_with(&format!("heistd {}", env!("CARGO_PKG_VERSION"))));
        assert!(text.contains(&format!("commit: {}", env!("HEISTD_BUILD_COMMIT"))));
    }
}
