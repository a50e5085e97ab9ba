//! `makelaar passwd`: manages a Mosquitto-compatible password file, with the flags, messages
//! and exit codes of `mosquitto_passwd` (1 for every error, 2 when the two typed passwords
//! differ). The file works with `makelaar serve` and with Mosquitto.
//!
//! It takes its arguments raw from the top-level parser, like `makelaar pub`, so that a bad
//! flag exits with 1 as `mosquitto_passwd` does, not with clap's 2.

mod prompt;

use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use clap::Parser;
use makelaar_auth::password::{
    hash_password, upgrade_plaintext, validate_username, HashParams, PasswordFile,
    PasswordFileError, DEFAULT_PBKDF2_ITERATIONS, MAX_PASSWORD_LEN, MAX_PBKDF2_ITERATIONS,
};

const USAGE: &str = "\
makelaar passwd [-H argon2id|sha512-pbkdf2] [-I N] [-c | -D] FILE USERNAME
       makelaar passwd [-H argon2id|sha512-pbkdf2] [-I N] [-c] -b FILE USERNAME PASSWORD
       makelaar passwd [-H argon2id|sha512-pbkdf2] [-I N] -U FILE";

const EXAMPLES: &str = "\
Examples:
  makelaar passwd -c /etc/makelaar/passwd alice
      Create (or overwrite) the file with one user; asks for the password twice.

  makelaar passwd /etc/makelaar/passwd bob
      Add bob, or change his password.

  makelaar passwd -b /etc/makelaar/passwd bob 's3cret'
      The same without asking (the password shows in the process list and shell history).

  makelaar passwd -H sha512-pbkdf2 -b passwd carol 's3cret'
      A $7$ hash that Mosquitto 2.0 can read too (argon2id needs Mosquitto 2.1).

  makelaar passwd -D /etc/makelaar/passwd bob
      Remove bob.

  makelaar passwd -U passwd.txt
      Replace every password of a plain-text user:password file by its hash, in place.

Exit status: 0 on success, 1 on any error, 2 when the two passwords typed differ.";

/// Manage a password file for makelaar serve and Mosquitto, like mosquitto_passwd.
#[derive(Debug, Parser)]
#[command(
    name = "makelaar passwd",
    override_usage = USAGE,
    after_help = EXAMPLES,
    disable_version_flag = true
)]
struct PasswdArgs {
    /// Create a new file, replacing any file there. FILE '-' prints it instead.
    #[arg(short = 'c')]
    create: bool,

    /// Batch mode: the password is the last argument instead of being asked for.
    #[arg(short = 'b')]
    batch: bool,

    /// Delete USERNAME from the file.
    #[arg(short = 'D')]
    delete: bool,

    /// Upgrade a plain-text user:password file to hashed passwords, in place.
    #[arg(short = 'U')]
    upgrade: bool,

    /// Hash for new passwords: argon2id (Mosquitto 2.1's default; 46 MiB, 1 pass, 1 lane)
    /// or sha512-pbkdf2 ($7$, which Mosquitto 2.0 reads too).
    #[arg(short = 'H', value_name = "HASH", default_value = "argon2id")]
    hash: String,

    /// PBKDF2 iterations for -H sha512-pbkdf2. [default: 101, as mosquitto_passwd 2.0]
    #[arg(short = 'I', value_name = "N")]
    iterations: Option<String>,

    /// The password file.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,

    /// The user to add, change or delete.
    #[arg(value_name = "USERNAME")]
    username: Option<OsString>,

    /// The password, with -b.
    #[arg(value_name = "PASSWORD")]
    password: Option<OsString>,
}

/// Why `makelaar passwd` stops: the message (printed as is) and the exit code.
struct Failure {
    message: String,
    code: i32,
}

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: 1,
    }
}

/// Runs `makelaar passwd` with the arguments after `passwd`; returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let argv = std::iter::once(OsString::from("makelaar passwd")).chain(args);
    let parsed = match PasswdArgs::try_parse_from(argv) {
        Ok(parsed) => parsed,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    match run(parsed) {
        Ok(()) => 0,
        Err(failure) => {
            eprintln!("{}", failure.message);
            failure.code
        }
    }
}

fn run(args: PasswdArgs) -> Result<(), Failure> {
    for (a, b, both) in [
        (args.create, args.delete, "-c and -D"),
        (args.create, args.upgrade, "-c and -U"),
        (args.delete, args.upgrade, "-D and -U"),
        (args.batch, args.delete, "-b and -D"),
        (args.batch, args.upgrade, "-b and -U"),
    ] {
        if a && b {
            return Err(fail(format!("Error: {both} cannot be used together.")));
        }
    }
    let params = hash_params(&args.hash, args.iterations.as_deref())?;
    let Some(file) = args.file.as_deref() else {
        return Err(usage("the password file is missing"));
    };
    if args.upgrade {
        if args.username.is_some() {
            return Err(usage("-U takes the password file only"));
        }
        return upgrade(file, params);
    }
    let Some(username) = args.username.as_ref() else {
        return Err(usage("the username is missing"));
    };
    let username = username
        .to_str()
        .ok_or_else(|| fail("Error: The username is not valid UTF-8."))?;
    validate_username(username).map_err(|e| fail(format!("Error: {}.", capitalized(&e))))?;
    match (args.batch, args.password.is_some()) {
        (true, false) => return Err(usage("-b needs the password after the username")),
        (false, true) => return Err(usage("a password on the command line needs -b")),
        _ => {}
    }
    if args.delete {
        return delete(file, username);
    }
    let password = match &args.password {
        Some(p) => p
            .to_str()
            .ok_or_else(|| fail("Error: The password is not valid UTF-8."))?
            .to_string(),
        None => ask_password()?,
    };
    if password.len() > MAX_PASSWORD_LEN {
        return Err(fail(
            "Error: The password is longer than 65,535 bytes, the most MQTT allows.",
        ));
    }
    let hash = hash_password(password.as_bytes(), params)
        .map_err(|e| fail(format!("Error: Cannot hash the password: {e}.")))?;
    let mut passwords = if args.create {
        PasswordFile::new()
    } else {
        load(file)?
    };
    passwords
        .set(username, hash)
        .map_err(|e| fail(format!("Error: {}.", capitalized(&e))))?;
    if args.create && file == Path::new("-") {
        print!("{passwords}");
        return Ok(());
    }
    save(&passwords, file)
}

fn hash_params(hash: &str, iterations: Option<&str>) -> Result<HashParams, Failure> {
    match (hash, iterations) {
        ("argon2id", None) => Ok(HashParams::Argon2id),
        ("argon2id", Some(_)) => Err(fail(
            "Error: -I sets PBKDF2 iterations, so it needs -H sha512-pbkdf2.",
        )),
        ("sha512-pbkdf2", iterations) => {
            let iterations = match iterations {
                None => DEFAULT_PBKDF2_ITERATIONS,
                Some(text) => text
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_PBKDF2_ITERATIONS).contains(n))
                    .ok_or_else(|| {
                        fail(format!(
                            "Error: -I needs a number of iterations from 1 to \
                             {MAX_PBKDF2_ITERATIONS}, not '{text}'."
                        ))
                    })?,
            };
            Ok(HashParams::Sha512Pbkdf2 { iterations })
        }
        ("sha512", _) => Err(fail(
            "Error: -H sha512 (Mosquitto 1.6's single SHA-512) is too weak for new passwords: \
             use -H sha512-pbkdf2 for Mosquitto 2.0, or argon2id.",
        )),
        (other, _) => Err(fail(format!(
            "Error: Unknown hash type '{other}': use argon2id or sha512-pbkdf2."
        ))),
    }
}

/// Asks twice, as `mosquitto_passwd` does; exit code 2 when the answers differ.
fn ask_password() -> Result<String, Failure> {
    let read = |prompt| {
        prompt::read_password(prompt)
            .map_err(|e| fail(format!("Error: Cannot read the password: {e}.")))
    };
    let Some(first) = read("Password: ")?.filter(|p| !p.is_empty()) else {
        return Err(fail("Error: Empty password."));
    };
    let again = read("Reenter password: ")?.unwrap_or_default();
    if first != again {
        return Err(Failure {
            message: "Error: Passwords do not match.".to_string(),
            code: 2,
        });
    }
    Ok(first)
}

fn delete(file: &Path, username: &str) -> Result<(), Failure> {
    let mut passwords = load(file)?;
    if !passwords.remove(username) {
        return Err(fail(format!(
            "Warning: User {username} not found in password file."
        )));
    }
    save(&passwords, file)
}

fn upgrade(file: &Path, params: HashParams) -> Result<(), Failure> {
    let contents = std::fs::read(file).map_err(|e| read_failure(file, &e))?;
    let passwords =
        upgrade_plaintext(&contents, file, params).map_err(|e| fail(format!("Error: {e}.")))?;
    save(&passwords, file)
}

fn load(file: &Path) -> Result<PasswordFile, Failure> {
    PasswordFile::load(file).map_err(|e| match e {
        PasswordFileError::Read { source, .. } => read_failure(file, &source),
        line @ PasswordFileError::Line { .. } => fail(format!("Error: {line}.")),
    })
}

fn read_failure(file: &Path, e: &std::io::Error) -> Failure {
    let hint = if e.kind() == ErrorKind::NotFound {
        " (use -c to create it)"
    } else {
        ""
    };
    fail(format!(
        "Error: Unable to open password file {}: {}{hint}.",
        file.display(),
        io_reason(e)
    ))
}

fn save(passwords: &PasswordFile, file: &Path) -> Result<(), Failure> {
    passwords.save(file).map_err(|e| {
        fail(format!(
            "Error: Unable to write password file {}: {}.",
            file.display(),
            io_reason(&e)
        ))
    })
}

fn usage(problem: &str) -> Failure {
    fail(format!(
        "Error: {}.\nUsage: {USAGE}\nSee makelaar passwd --help.",
        capitalized(problem)
    ))
}

/// An I/O error without Rust's "(os error 2)".
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(cut) => text.get(..cut).unwrap_or(&text).to_string(),
        None => text,
    }
}

fn capitalized(text: &(impl ToString + ?Sized)) -> String {
    let text = text.to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_definition_is_valid() {
        use clap::CommandFactory;
        PasswdArgs::command().debug_assert();
    }

    #[test]
    fn hash_choices() {
        assert_eq!(
            hash_params("argon2id", None).ok(),
            Some(HashParams::Argon2id)
        );
        assert_eq!(
            hash_params("sha512-pbkdf2", None).ok(),
            Some(HashParams::Sha512Pbkdf2 { iterations: 101 })
        );
        assert_eq!(
            hash_params("sha512-pbkdf2", Some("1000")).ok(),
            Some(HashParams::Sha512Pbkdf2 { iterations: 1000 })
        );
        for (hash, iterations, message) in [
            ("argon2id", Some("5"), "-I sets PBKDF2 iterations"),
            ("sha512-pbkdf2", Some("0"), "from 1 to 10000000, not '0'"),
            ("sha512-pbkdf2", Some("abc"), "not 'abc'"),
            ("sha512", None, "too weak"),
            ("md5", None, "Unknown hash type 'md5'"),
        ] {
            let failure = hash_params(hash, iterations).err().map(|f| f.message);
            assert!(
                failure.as_deref().is_some_and(|m| m.contains(message)),
                "{hash} {iterations:?}: {failure:?}"
            );
        }
    }

    #[test]
    fn messages_are_capitalized_sentences() {
        assert_eq!(capitalized(&"the username"), "The username");
        assert_eq!(capitalized(&""), "");
        let e = std::io::Error::from(ErrorKind::NotFound);
        assert_eq!(io_reason(&e), "entity not found");
        let e = std::io::Error::from_raw_os_error(2);
        assert_eq!(io_reason(&e), "No such file or directory");
    }
}
