//! `makelaar store inspect`: what a stopped broker's durable store holds — sessions with their
//! subscriptions and queue depths, retained messages — as text for people or JSON for tools,
//! like `mosquitto_db_dump`.
//!
//! It reads the store with the broker's own code (`makelaar_store::inspect`), so it needs the
//! directory's lock: while a broker runs on it, it is refused. Every failure is one sentence
//! naming the directory or file and what to do, and exit status 1.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::{Args, Subcommand};
use makelaar_broker::config::DEFAULT_DATA_DIR;
use makelaar_store::{StoreError, STORE_FILE};

pub const STORE_EXAMPLES: &str = "\
Examples:
  makelaar store inspect
      What ./makelaar-data holds (stop the broker first).

  makelaar store inspect --data-dir /var/lib/makelaar --json | jq '.sessions[].queued'
      The same as JSON, for scripts.";

const INSPECT_EXAMPLES: &str = "\
Examples:
  makelaar store inspect --data-dir /var/lib/makelaar
      Sessions (protocol, expiry, subscriptions, queued messages and bytes, inbound QoS 2
      exchanges), and the number of retained messages.

  makelaar store inspect --data-dir /var/lib/makelaar --json
      The same as one JSON object: path, file_bytes, sessions[], retained, retained_bytes,
      orphans.

The broker must be stopped: a running broker holds the directory's lock. After an unclean
stop (a crash, kill -9) opening the store first checks and repairs it, as the broker would.

Exit status: 0 on success, 1 on any error.";

/// Flags of `makelaar store`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Print what the store holds: sessions, their queue depths, retained messages.
    #[command(after_help = INSPECT_EXAMPLES)]
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// The broker's data directory (its --data-dir).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `makelaar store ...`.
pub fn run(args: StoreArgs) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::Inspect(a) => inspect(&a.data_dir, a.json),
    }
}

fn inspect(dir: &Path, json: bool) -> anyhow::Result<()> {
    // Checked here rather than left to the store's I/O error: "there is no store" is the
    // common mistake (a wrong --data-dir), and deserves its own sentence.
    if !dir.is_dir() {
        return Err(anyhow!(
            "no store in {}: the directory does not exist (makelaar serve --data-dir {} creates it)",
            dir.display(),
            dir.display()
        ));
    }
    let file = dir.join(STORE_FILE);
    if !file.exists() {
        return Err(anyhow!(
            "no store in {}: {} does not exist (makelaar serve --data-dir {} creates it)",
            dir.display(),
            file.display(),
            dir.display()
        ));
    }
    let summary = makelaar_store::inspect(dir).map_err(|e| explain(dir, e))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{summary}");
    }
    Ok(())
}

/// One sentence for each way inspecting can fail, saying what to do.
fn explain(dir: &Path, e: StoreError) -> anyhow::Error {
    match e {
        StoreError::Locked { pid, .. } => anyhow!(
            "the store directory {} is in use by a running broker{}; stop it first (a store \
             can only be inspected while no broker has it open)",
            dir.display(),
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
        ),
        StoreError::Corrupt { path, detail } => anyhow!(
            "the store file {} is damaged or unreadable ({detail}); start the broker with \
             --on-corrupt-store move-aside to keep it aside and start with an empty store",
            path.display()
        ),
        // Format and I/O errors already name the file and the way out.
        other => anyhow!("cannot inspect the store in {}: {other}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: anyhow::Result<()>) -> String {
        format!("{:#}", r.err().unwrap_or_else(|| anyhow!("no error")))
    }

    #[test]
    fn a_missing_directory_or_file_says_there_is_no_store() {
        let tmp = std::env::temp_dir().join(format!("makelaar-inspect-{}", std::process::id()));
        let gone = tmp.join("nothing-here");
        let m = message(inspect(&gone, false));
        assert!(m.starts_with("no store in "), "{m}");
        assert!(m.contains("does not exist"), "{m}");
        std::fs::create_dir_all(&tmp).ok();
        let m = message(inspect(&tmp, true));
        assert!(m.contains(STORE_FILE), "{m}");
        // Inspecting must not create the store it did not find.
        assert!(!tmp.join(STORE_FILE).exists());
        std::fs::remove_dir_all(&tmp).ok();
    }

    #[test]
    fn locked_and_corrupt_name_the_way_out() {
        let dir = Path::new("/srv/data");
        let locked = explain(
            dir,
            StoreError::Locked {
                dir: dir.into(),
                pid: Some(42),
            },
        );
        assert_eq!(
            locked.to_string(),
            "the store directory /srv/data is in use by a running broker (pid 42); stop it \
             first (a store can only be inspected while no broker has it open)"
        );
        let corrupt = explain(
            dir,
            StoreError::Corrupt {
                path: dir.join(STORE_FILE),
                detail: "bad magic".into(),
            },
        )
        .to_string();
        assert!(corrupt.contains("/srv/data/makelaar.redb"), "{corrupt}");
        assert!(
            corrupt.contains("--on-corrupt-store move-aside"),
            "{corrupt}"
        );
    }
}
