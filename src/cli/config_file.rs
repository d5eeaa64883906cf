//! `ringkv serve --config ringkv.toml`: serve's flags from a TOML file, below the
//! environment and the command line.
//!
//! The command line is parsed once to find `--config` (or `RINGKV_CONFIG`). Then every key
//! of the file whose flag came from neither the command line nor the environment is put
//! back in front of the real arguments, as `--key=value`, and the whole is parsed again:
//! one parser, so a value from the file is checked exactly as the same flag would be, and
//! precedence (flag > environment > file > default) is clap's own.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use super::Cli;

/// The largest config file read: a node's flags fit in a few KiB.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Serve's own arguments that make no sense in the file.
const NOT_IN_FILE: &[&str] = &["config", "check-config", "help"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("--config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--config {path}: larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("--config {path}: not TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error(
        "--config {path}: unknown key {key:?}: no `ringkv serve` flag is called that{hint} \
         (`ringkv serve --help` lists them)"
    )]
    UnknownKey {
        path: PathBuf,
        key: String,
        hint: String,
    },
    #[error("--config {path}: key {key:?}: {problem}")]
    BadValue {
        path: PathBuf,
        key: String,
        problem: String,
    },
    /// A value of the file that the flag's own parser refused.
    #[error("--config {path}: {message}")]
    Refused { path: PathBuf, message: String },
}

/// The command line, parsed, with the config file under it.
pub struct Parsed {
    pub cli: Cli,
    /// With `serve --check-config`: the settings as TOML, each with its source.
    pub effective: Option<String>,
}

/// Why the command line could not be parsed.
#[derive(Debug)]
pub enum ParseError {
    /// A usage error, `--help` or `--version`: clap prints and exits.
    Clap(clap::Error),
    File(ConfigFileError),
}

impl From<clap::Error> for ParseError {
    fn from(e: clap::Error) -> Self {
        ParseError::Clap(e)
    }
}

impl From<ConfigFileError> for ParseError {
    fn from(e: ConfigFileError) -> Self {
        ParseError::File(e)
    }
}

/// Parses `argv` (program name first), reading `serve --config` if given.
pub fn parse(argv: Vec<OsString>) -> Result<Parsed, ParseError> {
    let command = Cli::command();
    let matches = command.clone().try_get_matches_from(&argv)?;
    let Some(("serve", serve)) = matches.subcommand() else {
        return Ok(Parsed {
            cli: Cli::from_arg_matches(&matches)?,
            effective: None,
        });
    };
    let check = serve.get_flag("check_config");
    let path = serve.get_one::<PathBuf>("config").cloned();
    let serve_command = command
        .find_subcommand("serve")
        .cloned()
        .unwrap_or_else(|| clap::Command::new("serve"));
    let (matches, from_file) = match &path {
        None => (matches, BTreeSet::new()),
        Some(path) => {
            let table = read(path)?;
            let (args, from_file) = file_args(path, &table, &serve_command, serve)?;
            // `serve` is the first argument clap took (there are no global options):
            // the file's flags go right after it, before the real ones.
            let at = argv
                .iter()
                .position(|a| a == "serve")
                .map_or(argv.len(), |i| i + 1);
            let mut again: Vec<OsString> = argv[..at].to_vec();
            again.extend(args);
            again.extend_from_slice(&argv[at..]);
            let matches =
                command
                    .try_get_matches_from(again)
                    .map_err(|e| ConfigFileError::Refused {
                        path: path.clone(),
                        message: clap_message(&e),
                    })?;
            (matches, from_file)
        }
    };
    let effective = match (check, matches.subcommand()) {
        (true, Some((_, serve))) => Some(effective_toml(
            &serve_command,
            serve,
            &from_file,
            path.as_deref(),
        )),
        _ => None,
    };
    Ok(Parsed {
        cli: Cli::from_arg_matches(&matches)?,
        effective,
    })
}

/// clap's message, without its `error: ` and its usage lines.
fn clap_message(e: &clap::Error) -> String {
    e.render()
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned()
}

fn read(path: &Path) -> Result<toml::Table, ConfigFileError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    text.parse::<toml::Table>()
        .map_err(|e| ConfigFileError::Toml {
            path: path.to_owned(),
            message: e.message().replace('\n', " "),
        })
}

/// The file's keys as `--flag=value` arguments, for the flags that neither the command
/// line nor the environment set; and the ids of those flags.
fn file_args(
    path: &Path,
    table: &toml::Table,
    serve: &clap::Command,
    given: &ArgMatches,
) -> Result<(Vec<OsString>, BTreeSet<String>), ConfigFileError> {
    let mut args = Vec::new();
    let mut ids = BTreeSet::new();
    for (key, value) in table {
        let bad = |problem: &str| ConfigFileError::BadValue {
            path: path.to_owned(),
            key: key.clone(),
            problem: problem.to_owned(),
        };
        let arg = serve
            .get_arguments()
            .filter(|a| !NOT_IN_FILE.contains(&a.get_long().unwrap_or_default()))
            .find(|a| {
                a.get_long() == Some(key.as_str())
                    || a.get_all_aliases()
                        .is_some_and(|aliases| aliases.contains(&key.as_str()))
            })
            .ok_or_else(|| ConfigFileError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
                hint: suggestion(key, serve),
            })?;
        let id = arg.get_id().as_str();
        let long = arg.get_long().unwrap_or(id);
        if let Some(ValueSource::CommandLine | ValueSource::EnvVariable) = given.value_source(id) {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        let values: Vec<String> = match value {
            toml::Value::Boolean(on) if !takes_value => {
                if *on {
                    args.push(OsString::from(format!("--{long}")));
                    ids.insert(id.to_owned());
                }
                continue;
            }
            _ if !takes_value => return Err(bad("expected true or false")),
            toml::Value::Array(items) if repeatable => items
                .iter()
                .map(|v| scalar(v).ok_or_else(|| bad("expected an array of strings or numbers")))
                .collect::<Result<_, _>>()?,
            toml::Value::Array(_) => return Err(bad("expected one value, not an array")),
            v => vec![scalar(v).ok_or_else(|| bad("expected a string, a number or a boolean"))?],
        };
        for v in values {
            args.push(OsString::from(format!("--{long}={v}")));
        }
        ids.insert(id.to_owned());
    }
    Ok((args, ids))
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// "; did you mean max-hint-bytes?", when a flag is that close to the mistyped key.
fn suggestion(key: &str, serve: &clap::Command) -> String {
    serve
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|long| !NOT_IN_FILE.contains(long))
        .map(|long| (strsim::levenshtein(key, long), long))
        .filter(|(distance, _)| *distance <= 3)
        .min()
        .map(|(_, long)| format!("; did you mean {long}?"))
        .unwrap_or_default()
}

/// Every serve setting as TOML, with where it came from: what `--check-config` prints.
/// Values are as they were given (`"256MiB"` stays so), so the output is itself a config
/// file that gives the same settings.
fn effective_toml(
    serve: &clap::Command,
    matches: &ArgMatches,
    from_file: &BTreeSet<String>,
    path: Option<&Path>,
) -> String {
    let file = path.map_or_else(String::new, |p| p.display().to_string());
    let mut out = String::from(
        "# ringkv serve: effective settings (flag > environment > --config > default)\n",
    );
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_IN_FILE.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        let source = match matches.value_source(id) {
            None => {
                out.push_str(&format!("# {long}: not set\n"));
                continue;
            }
            Some(_) if from_file.contains(id) => format!("from {file}"),
            Some(ValueSource::CommandLine) => "from the command line".to_owned(),
            Some(ValueSource::EnvVariable) => format!(
                "from {}",
                arg.get_env()
                    .map_or_else(|| "the environment".into(), |e| e.to_string_lossy())
            ),
            Some(_) => "default".to_owned(),
        };
        let raw: Vec<String> = matches
            .get_raw(id)
            .into_iter()
            .flatten()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let value = if !arg.get_action().takes_values() {
            toml::Value::Boolean(raw.first().is_some_and(|v| v == "true"))
        } else if matches!(arg.get_action(), ArgAction::Append) {
            toml::Value::Array(raw.into_iter().map(toml::Value::String).collect())
        } else {
            let v = raw.into_iter().next().unwrap_or_default();
            match v.parse::<i64>() {
                Ok(i) => toml::Value::Integer(i),
                Err(_) => toml::Value::String(v),
            }
        };
        out.push_str(&format!("{long} = {value}  # {source}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("ringkv")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn serve_args(parsed: Parsed) -> super::super::ServeArgs {
        match parsed.cli.command {
            super::super::Command::Serve(args) => *args,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn the_file_sets_what_the_command_line_does_not() {
        let f = file(
            "max-hint-bytes = \"128MiB\"\nseed = [\"127.0.0.1:7946\", \"127.0.0.1:7947\"]\n\
             wal = true\nvnodes = 64\nread-repair-chance = 0.5\ncache-bytes = \"8MiB\"\n",
        );
        let path = f.path().to_str().unwrap();
        let args = serve_args(
            parse(argv(&["serve", "--config", path, "--vnodes", "32"]))
                .map_err(|e| format!("{e:?}"))
                .unwrap(),
        );
        assert_eq!(args.max_hint_bytes, 128 << 20);
        assert_eq!(args.seeds, ["127.0.0.1:7946", "127.0.0.1:7947"]);
        assert!(args.wal);
        assert_eq!(args.vnodes, 32, "the flag wins over the file");
        assert_eq!(args.read_repair_chance, 0.5);
        assert_eq!(args.cache_bytes, Some(8 << 20), "an alias is a key too");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let f = file("max-hint-byte = \"1MiB\"\n");
        let path = f.path().to_str().unwrap();
        match parse(argv(&["serve", "--config", path])) {
            Err(ParseError::File(e @ ConfigFileError::UnknownKey { .. })) => {
                let text = e.to_string();
                assert!(text.contains("\"max-hint-byte\""), "{text}");
                assert!(text.contains("did you mean max-hint-bytes?"), "{text}");
            }
            other => panic!("{:?}", other.err()),
        }
        for (text, what) in [
            ("max-hint-bytes = \"17179869184GiB\"\n", "overflow"),
            ("vnodes = [1, 2]\n", "array"),
            ("wal = \"yes\"\n", "a flag given a string"),
            ("config = \"other.toml\"\n", "config in config"),
            ("max-hint-bytes = \n", "not TOML"),
        ] {
            let f = file(text);
            let path = f.path().to_str().unwrap();
            assert!(
                matches!(
                    parse(argv(&["serve", "--config", path])),
                    Err(ParseError::File(_))
                ),
                "{what} accepted"
            );
        }
    }

    #[test]
    fn check_config_prints_values_and_sources() {
        let f = file("max-hint-bytes = \"128MiB\"\n");
        let path = f.path().to_str().unwrap();
        let parsed = parse(argv(&[
            "serve",
            "--config",
            path,
            "--check-config",
            "--n",
            "5",
        ]))
        .map_err(|e| format!("{e:?}"))
        .unwrap();
        let text = parsed.effective.unwrap();
        assert!(
            text.contains(&format!("max-hint-bytes = \"128MiB\"  # from {path}")),
            "{text}"
        );
        assert!(text.contains("n = 5  # from the command line"), "{text}");
        assert!(text.contains("vnodes = 128  # default"), "{text}");
        assert!(text.contains("# advertise-host: not set"), "{text}");
        // What it prints is itself a config file (comments and all).
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(table["max-hint-bytes"].as_str(), Some("128MiB"));
    }
}
