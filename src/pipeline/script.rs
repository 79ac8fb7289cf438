//! The shell script of a step's commands, one rule for every backend: each command is traced
//! (`+ go test ./...`, as Woodpecker shows it) and then run, by `sh -e`, so the first failing
//! command ends the step.
//!
//! The trace prints the command's text as written, never a variable's value, so no secret
//! reaches the log through it. It is printed with `printf '%s\n'` rather than `echo`: some
//! shells' `echo` (dash's, the `/bin/sh` of Debian images) reads backslashes in its argument
//! as escapes, so the trace of a command holding `\n` or `\c` would not be the command.
//!
//! Commands are joined as lines of one script, as Woodpecker joins them, so the shell reads them
//! together: a command ending in a backslash continues onto the next command's trace line, and
//! an unclosed quote takes in the rest of the script. Those are errors in the pipeline's own
//! shell text, which `sh` reports or runs as written; the trace of every command before them
//! is printed as written.
//!
//! A step with an entrypoint of its own gets the script as `CI_SCRIPT`, base64-encoded, as
//! Woodpecker passes it: the image's shell decodes and runs it ([`CI_SCRIPT_COMMAND`]).

use base64::Engine as _;

/// The variable that carries the script to an entrypoint.
pub const CI_SCRIPT: &str = "CI_SCRIPT";

/// The entrypoint that runs `CI_SCRIPT`. The script travels base64-encoded, so no character
/// of it is read by anything on the way (the kubelet's `$(VAR)` expansion, for one).
pub const CI_SCRIPT_COMMAND: [&str; 3] =
    ["/bin/sh", "-c", "echo $CI_SCRIPT | base64 -d | /bin/sh -e"];

/// The script that traces and runs `commands`, for `sh -e`.
pub fn commands(commands: &[String]) -> String {
    let mut script = String::new();
    for command in commands {
        script.push_str("printf '%s\\n' ");
        script.push_str(&quote(&format!("+ {command}")));
        script.push('\n');
        script.push_str(command);
        script.push('\n');
    }
    script
}

/// The value of [`CI_SCRIPT`]: the script of `commands`, which first unsets the variable (as
/// Woodpecker's does: the commands need not see their own encoded text), base64-encoded.
pub fn ci_script(commands: &[String]) -> String {
    let script = format!("unset {CI_SCRIPT}\n{}", self::commands(commands));
    base64::engine::general_purpose::STANDARD.encode(script)
}

/// `s` as one word for a POSIX shell.
fn quote(s: &str) -> String {
    // A command never holds NUL (the pipeline's text refuses it, see `pipeline::text`); were
    // one there, it would be in the script's command line as well, so the trace may hold it
    // too. With NUL allowed, quoting cannot fail.
    shlex::Quoter::new()
        .allow_nul(true)
        .quote(s)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| unreachable!("quoting with NUL allowed cannot fail"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(script: &str) -> String {
        let out = std::process::Command::new("/bin/sh")
            .arg("-ec")
            .arg(script)
            .output()
            .expect("sh runs");
        String::from_utf8(out.stdout).expect("utf8")
    }

    fn strings(commands: &[&str]) -> Vec<String> {
        commands.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn each_command_is_traced_then_run() {
        assert_eq!(
            commands(&strings(&["go build", "go test"])),
            "printf '%s\\n' '+ go build'\ngo build\nprintf '%s\\n' '+ go test'\ngo test\n"
        );
        assert_eq!(commands(&[]), "");
    }

    /// The trace is the command's text, whatever it holds: quotes, backslashes, a leading
    /// dash, variables and substitutions (never expanded), a newline.
    #[test]
    fn the_trace_is_the_text_as_written() {
        let hostile = [
            r#"echo 'it'"'"'s' "a\nb" \c"#,
            "-n not an option",
            "echo $HOME $(id) `id` ${X:-y} !x ^y",
            "printf 'one\ntwo'",
        ];
        for command in hostile {
            // Only the trace is run: the command itself would fail or print.
            let script = commands(&[command.to_string()]);
            let trace = script.strip_suffix(&format!("{command}\n")).unwrap();
            assert_eq!(run(trace), format!("+ {command}\n"), "{command:?}");
        }
    }

    #[test]
    fn the_ci_script_unsets_itself_and_is_base64() {
        let encoded = ci_script(&strings(&["echo 'hi'"]));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let decoded = String::from_utf8(decoded).unwrap();
        assert_eq!(
            decoded,
            format!("unset CI_SCRIPT\n{}", commands(&strings(&["echo 'hi'"])))
        );
        assert_eq!(run(&decoded), "+ echo 'hi'\nhi\n");
    }
}
