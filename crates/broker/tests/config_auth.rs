//! Authentication settings in `makelaar.toml`: top-level defaults, `[[listener]]` tables that
//! inherit them, the default of `allow_anonymous`, and the mistakes refused with one sentence.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use makelaar_broker::config::{Config, ConfigError, ConfigFile, ListenerAuth, ListenerKind};

fn parse(toml: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(toml, "makelaar.toml")
}

fn parse_err(toml: &str) -> String {
    match parse(toml) {
        Ok(c) => panic!("expected an error for {toml:?}, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn no_auth_settings_allow_everyone() {
    let c = parse("").unwrap();
    assert_eq!(c.listeners[0].auth, ListenerAuth::default());
    assert!(c.listeners[0].auth.allow_anonymous);
    assert_eq!(c.acl_file, None);
}

#[test]
fn a_password_file_turns_anonymous_access_off_unless_asked_for() {
    let c = parse("password_file = \"pw\"\nacl_file = \"acl\"\n").unwrap();
    let auth = &c.listeners[0].auth;
    assert_eq!(auth.password_file.as_deref(), Some(Path::new("pw")));
    assert!(!auth.allow_anonymous);
    assert_eq!(c.acl_file.as_deref(), Some(Path::new("acl")));
    let c = parse("password_file = \"pw\"\nallow_anonymous = true\n").unwrap();
    assert!(c.listeners[0].auth.allow_anonymous);
    let c = parse("allow_anonymous = false\n").unwrap();
    assert!(!c.listeners[0].auth.allow_anonymous);
}

#[test]
fn listener_tables_inherit_and_override() {
    let c = parse(
        r#"
        listen = ["mqtt://127.0.0.1:1883"]
        password_file = "pw"
        cert = "server.pem"
        key = "server.key"
        cafile = "ca.pem"

        [[listener]]
        url = "mqtt://127.0.0.1:1884"
        allow_anonymous = true
        password_file = "other-pw"
        max_connections = 10

        [[listener]]
        url = "mqtts://127.0.0.1:8883"
        require_certificate = true
        use_identity_as_username = true
        crlfile = "crl.pem"
        "#,
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 3);
    let [plain, second, tls] = &c.listeners[..] else {
        panic!()
    };
    assert_eq!(plain.auth.password_file.as_deref(), Some(Path::new("pw")));
    assert!(!plain.auth.allow_anonymous);
    assert_eq!(plain.max_connections, 0);
    assert_eq!(
        second.auth.password_file.as_deref(),
        Some(Path::new("other-pw"))
    );
    assert!(second.auth.allow_anonymous);
    assert_eq!(second.max_connections, 10);
    assert_eq!(tls.kind, ListenerKind::Mqtts);
    assert!(tls.auth.use_identity_as_username);
    assert!(!tls.auth.allow_anonymous);
    let settings = tls.tls.as_ref().unwrap();
    assert!(settings.require_certificate);
    assert_eq!(settings.crlfile.as_deref(), Some(Path::new("crl.pem")));
    assert_eq!(settings.cert, PathBuf::from("server.pem"));
}

#[test]
fn listener_tables_alone_replace_the_default_listener() {
    let c = parse("[[listener]]\nurl = \"mqtt://127.0.0.1:1999\"\n").unwrap();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.listeners[0].addr.port(), 1999);
}

#[test]
fn a_top_level_identity_setting_applies_to_tls_listeners_only() {
    let c = parse(
        r#"
        listen = ["mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883"]
        cert = "s.pem"
        key = "s.key"
        cafile = "ca.pem"
        use_identity_as_username = true
        "#,
    )
    .unwrap();
    assert!(!c.listeners[0].auth.use_identity_as_username);
    assert!(c.listeners[1].auth.use_identity_as_username);
    // Anonymous clients keep their default on the plain listener (no credentials there).
    assert!(c.listeners[0].auth.allow_anonymous);
    assert!(!c.listeners[1].auth.allow_anonymous);
}

#[test]
fn mistakes_are_refused_with_one_sentence() {
    let e =
        parse_err("[[listener]]\nurl = \"mqtt://127.0.0.1:1\"\nuse_identity_as_username = true\n");
    assert!(e.contains("use_identity_as_username needs TLS"), "{e}");
    let e = parse_err(
        "[[listener]]\nurl = \"mqtts://127.0.0.1:1\"\ncert = \"c\"\nkey = \"k\"\nuse_identity_as_username = true\n",
    );
    assert!(e.contains("use_identity_as_username needs cafile"), "{e}");
    let e = parse_err(
        "[[listener]]\nurl = \"mqtts://127.0.0.1:1\"\ncert = \"c\"\nkey = \"k\"\ncrlfile = \"r\"\n",
    );
    assert!(e.contains("crlfile needs cafile"), "{e}");
    let e = parse_err(
        "[[listener]]\nurl = \"mqtts://127.0.0.1:1\"\ncert = \"c\"\nkey = \"k\"\nrequire_certificate = true\n",
    );
    assert!(e.contains("require_certificate needs cafile"), "{e}");
    let e = parse_err("[[listener]]\nurl = \"mqtt://127.0.0.1:1\"\npasword_file = \"x\"\n");
    assert!(
        e.contains("pasword_file") && e.contains("password_file"),
        "{e}"
    );
    let e = parse_err("[[listener]]\nallow_anonymous = true\n");
    assert!(e.contains("\"url\" is missing"), "{e}");
    let e = parse_err("listen = []\n");
    assert!(e.contains("listen is an empty list"), "{e}");
}

#[test]
fn paths_are_relative_to_the_config_file() {
    let mut f = ConfigFile::from_toml_str(
        "password_file = \"pw\"\nacl_file = \"/abs/acl\"\n[[listener]]\nurl = \"mqtt://127.0.0.1:1\"\npassword_file = \"lpw\"\n",
        "x",
    )
    .unwrap();
    f.resolve_paths(Path::new("/etc/makelaar"));
    assert_eq!(f.password_file, Some(PathBuf::from("/etc/makelaar/pw")));
    assert_eq!(f.acl_file, Some(PathBuf::from("/abs/acl")));
    assert_eq!(
        f.listener[0].password_file,
        Some(PathBuf::from("/etc/makelaar/lpw"))
    );
}
