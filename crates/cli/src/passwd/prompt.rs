//! Reading a password from the terminal without echo, with termios: the prompt goes to
//! stderr, the password is read from stdin. When stdin is not a terminal (a pipe in a script)
//! the line is read as it is, as `mosquitto_passwd` does.

use std::io::{BufRead, IsTerminal, Write};

/// Prints `prompt` and reads one line from stdin, without echo when stdin is a terminal.
/// `None` at end of input.
pub fn read_password(prompt: &str) -> std::io::Result<Option<String>> {
    let mut stderr = std::io::stderr();
    write!(stderr, "{prompt}")?;
    stderr.flush()?;
    let stdin = std::io::stdin();
    let mut line = String::new();
    let read = if stdin.is_terminal() {
        let echo_off = EchoOff::new()?;
        let read = stdin.lock().read_line(&mut line);
        drop(echo_off);
        read?
    } else {
        stdin.lock().read_line(&mut line)?
    };
    // The Enter typed was not echoed (or, from a pipe, there was none): end the prompt's line.
    writeln!(stderr)?;
    if read == 0 {
        return Ok(None);
    }
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(Some(trimmed.to_string()))
}

#[cfg(unix)]
use unix::EchoOff;

#[cfg(unix)]
mod unix {
    use std::sync::OnceLock;

    /// The terminal settings before echo was turned off, for the signal handler.
    static SAVED: OnceLock<libc::termios> = OnceLock::new();

    /// Echo off on stdin while this lives; back on when dropped, or when SIGINT or SIGTERM
    /// arrive meanwhile (the process then exits with 128 + the signal, as a shell expects).
    pub struct EchoOff {
        saved: libc::termios,
        old_int: libc::sighandler_t,
        old_term: libc::sighandler_t,
    }

    extern "C" fn restore_and_exit(signal: libc::c_int) {
        // Only async-signal-safe calls here: tcsetattr, write and _exit.
        if let Some(saved) = SAVED.get() {
            // SAFETY: `saved` is a valid termios read by tcgetattr for this descriptor.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
        }
        // SAFETY: writing one static byte to stderr, then ending the process.
        unsafe {
            libc::write(libc::STDERR_FILENO, b"\n".as_ptr().cast(), 1);
            libc::_exit(128 + signal);
        }
    }

    impl EchoOff {
        pub fn new() -> std::io::Result<Self> {
            // SAFETY: tcgetattr fills the zeroed struct for a valid descriptor or fails.
            let mut saved: libc::termios = unsafe { std::mem::zeroed() };
            if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // First use only: one prompt at a time, and the settings are the same each time.
            let _ = SAVED.set(saved);
            let handler = restore_and_exit as extern "C" fn(libc::c_int) as libc::sighandler_t;
            // SAFETY: installing a handler that only makes async-signal-safe calls.
            let (old_int, old_term) = unsafe {
                (
                    libc::signal(libc::SIGINT, handler),
                    libc::signal(libc::SIGTERM, handler),
                )
            };
            let mut quiet = saved;
            // Keep ECHONL so that the Enter still moves to the next line on some terminals.
            quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK);
            // SAFETY: a termios derived from the one tcgetattr returned.
            if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSAFLUSH, &quiet) } != 0 {
                let err = std::io::Error::last_os_error();
                // SAFETY: putting back the handlers signal() returned.
                unsafe {
                    libc::signal(libc::SIGINT, old_int);
                    libc::signal(libc::SIGTERM, old_term);
                }
                return Err(err);
            }
            Ok(EchoOff {
                saved,
                old_int,
                old_term,
            })
        }
    }

    impl Drop for EchoOff {
        fn drop(&mut self) {
            // SAFETY: the settings and handlers saved in `new`.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSAFLUSH, &self.saved);
                libc::signal(libc::SIGINT, self.old_int);
                libc::signal(libc::SIGTERM, self.old_term);
            }
        }
    }
}

#[cfg(not(unix))]
struct EchoOff;

#[cfg(not(unix))]
impl EchoOff {
    fn new() -> std::io::Result<Self> {
        Err(std::io::Error::other(
            "reading a password without echo needs a Unix terminal: use -b",
        ))
    }
}
