//! `--color auto|always|never` of `spot serve` (its logs) and `spot tail` (its lines): the one
//! rule for when to colour.

/// The values `--color` takes.
pub const CHOICES: [&str; 3] = ["auto", "always", "never"];

/// Whether to colour output to a stream that `is_terminal` or not: `auto` (or none) colours
/// only a terminal, and only while `NO_COLOR` is unset or empty.
pub fn enabled(choice: Option<&str>, is_terminal: bool) -> anyhow::Result<bool> {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    Ok(match choice {
        None | Some("auto") => is_terminal && !no_color,
        Some("always") => true,
        Some("never") => false,
        Some(other) => {
            anyhow::bail!("color {other:?}: must be \"auto\", \"always\" or \"never\"")
        }
    })
}
