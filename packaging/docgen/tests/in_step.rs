//! The man pages and completions `scripts/package` installs cover the whole command line:
//! every command has its page, every page names every option of its command, and every
//! completion script knows every subcommand and option. A subcommand or flag added to
//! `enrollgate::cli` without reaching them fails here.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use enrollgate_docgen::{command, documented, write, Documented, SHELLS};

/// Long options a user can type on this command (`--data-dir`), clap's own included.
fn long_flags(cmd: &clap::Command) -> Vec<String> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .map(|l| format!("--{l}"))
        .collect()
}

/// Whether `word` occurs in `text` delimited by characters that cannot be part of a
/// command name (so `ca` is not found inside `cacerts` or `check-config`).
fn has_word(text: &str, word: &str) -> bool {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_name) && !after.is_some_and(is_name)
    })
}

/// The date the pages are written with.
const DATE: &str = "2026-12-06";

/// Text as roff writes it: backslashes doubled, hyphens escaped, apostrophes as a string.
fn roff(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('-', "\\-")
        .replace('\'', "\\*(Aq")
}

#[test]
fn the_walk_finds_every_command_family() {
    let pages: BTreeSet<String> = documented(&command()).iter().map(|d| d.page()).collect();
    // Spot checks that the walk descends: the root, top-level commands, nested ones.
    for page in [
        "enrollgate",
        "enrollgate-init",
        "enrollgate-serve",
        "enrollgate-check-config",
        "enrollgate-backup",
        "enrollgate-enroll",
        "enrollgate-identity",
        "enrollgate-ca",
    ] {
        assert!(pages.contains(page), "no {page} in {pages:?}");
    }
    assert!(
        pages.iter().any(|p| p.starts_with("enrollgate-identity-")),
        "no nested identity subcommand in {pages:?}"
    );
    assert!(
        !pages.iter().any(|p| p.ends_with("-help")),
        "clap's generated help subcommand got a page: {pages:?}"
    );
}

#[test]
fn every_command_has_a_page_naming_each_of_its_options_and_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let written = write(dir.path(), DATE).unwrap();
    let docs: Vec<Documented> = documented(&command());

    let on_disk: BTreeSet<String> = std::fs::read_dir(dir.path().join("man1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let expected: BTreeSet<String> = docs.iter().map(|d| format!("{}.1", d.page())).collect();
    assert_eq!(on_disk, expected, "pages on disk versus commands");
    assert_eq!(written.pages.len(), docs.len());

    for doc in &docs {
        let page =
            std::fs::read_to_string(dir.path().join(format!("man1/{}.1", doc.page()))).unwrap();
        assert!(
            page.contains(&format!(".TH {} 1 {DATE} ", doc.page())),
            "{}: title line",
            doc.page()
        );
        if let Some(about) = doc.cmd.get_about() {
            let first = about.to_string();
            let first = first.split(['(', ',', ':']).next().unwrap().trim();
            assert!(
                page.contains(&roff(first)),
                "{}: no description {first:?}",
                doc.page()
            );
        }
        for flag in long_flags(&doc.cmd) {
            assert!(
                page.contains(&roff(&flag)),
                "{}: option {flag} is not documented",
                doc.page()
            );
        }
        for sub in doc.cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() == "help" {
                continue;
            }
            let sub_page = format!("{}-{}", doc.page(), sub.get_name());
            assert!(
                page.contains(&roff(&sub_page)),
                "{}: does not point to {sub_page}",
                doc.page()
            );
        }
    }
}

/// How a shell's completion script registers a subcommand: `path` runs from the binary to
/// it (`["enrollgate", "identity", "create"]`).
fn registers_subcommand(shell: clap_complete::Shell, script: &str, path: &[String]) -> bool {
    let (name, parents) = path.split_last().expect("a path");
    match shell {
        // A case arm `enrollgate__subcmd__identity,create)`.
        clap_complete::Shell::Bash => {
            script.contains(&format!("{},{name})", parents.join("__subcmd__")))
        }
        // `'create:Create an identity...'` in the list of its parent's subcommands.
        clap_complete::Shell::Zsh => script.contains(&format!("\n'{name}:")),
        // `-f -a "create"`, under its parent's condition for nested ones.
        clap_complete::Shell::Fish => script.lines().any(|l| {
            l.contains(&format!("-f -a \"{name}\""))
                && match parents {
                    [_root] => l.contains("__fish_enrollgate_needs_command"),
                    [_root, parent, ..] => {
                        l.contains(&format!("__fish_enrollgate_using_subcommand {parent}"))
                    }
                    [] => false,
                }
        }),
        _ => false,
    }
}

/// How a shell's completion script offers a long option.
fn offers_option(shell: clap_complete::Shell, script: &str, flag: &str) -> bool {
    match shell {
        // In an `opts="-h --output --admin ..."` list.
        clap_complete::Shell::Bash => has_word(script, flag),
        // `'--output=[Write the...]'`, `'--admin[Make...]'`; `'*--role-attributes=[...'`
        // for an option given more than once.
        clap_complete::Shell::Zsh => ["'", "'*"].iter().any(|q| {
            script.contains(&format!("{q}{flag}[")) || script.contains(&format!("{q}{flag}=["))
        }),
        // `-l output`.
        clap_complete::Shell::Fish => script.contains(&format!("-l {} ", &flag[2..])),
        _ => false,
    }
}

#[test]
fn every_completion_script_knows_every_subcommand_and_option() {
    let dir = tempfile::tempdir().unwrap();
    let written = write(dir.path(), DATE).unwrap();
    assert_eq!(written.completions.len(), SHELLS.len());
    let docs = documented(&command());
    for (shell, rel) in SHELLS {
        let script = std::fs::read_to_string(dir.path().join("completions").join(rel)).unwrap();
        for doc in docs.iter().filter(|d| d.path.len() > 1) {
            assert!(
                registers_subcommand(shell, &script, &doc.path),
                "{shell}: no subcommand {}",
                doc.path.join(" ")
            );
        }
        for doc in &docs {
            for flag in long_flags(&doc.cmd) {
                assert!(
                    offers_option(shell, &script, &flag),
                    "{shell}: no {flag} for {}",
                    doc.path.join(" ")
                );
            }
        }
        // A name that is no subcommand is not found: the checks can fail.
        let bogus = [
            "enrollgate".to_owned(),
            "identity".to_owned(),
            "frobnicate".to_owned(),
        ];
        assert!(!registers_subcommand(shell, &script, &bogus), "{shell}");
        assert!(!offers_option(shell, &script, "--frobnicate"), "{shell}");
    }
}

#[test]
fn pages_carry_the_version_and_commit_of_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), DATE).unwrap();
    let page = std::fs::read_to_string(dir.path().join("man1/enrollgate-serve.1")).unwrap();
    assert!(
        page.contains(&roff(enrollgate::cli::VERSION)),
        "no {:?} in the title line",
        enrollgate::cli::VERSION
    );
}
