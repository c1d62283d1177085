//! A TLS front for the test broker: `stunnel` (Debian's `stunnel4`) terminates TLS in front
//! of a fresh Tansu that advertises the TLS port, so every client (Sluice's and the test
//! helpers') reaches the broker only through TLS. The certificates are generated for the test
//! with the `openssl` command: a CA, a server certificate for 127.0.0.1, a client certificate
//! whose key is encrypted (mutual TLS), and a second, unrelated CA.
//!
//! `SLUICE_TEST_STUNNEL` and `SLUICE_TEST_OPENSSL` name the tools when they are not on the
//! PATH. Without them [`TlsFront::start`] returns why, and the tests print it and skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::broker::{free_port, TestBroker};
use super::find_tool;

/// The client key's password (what the tests check never shows in a log).
pub const CLIENT_KEY_PASSWORD: &str = "tls-key-pw-4f1c9e";

/// Tansu behind stunnel.
pub struct TlsFront {
    /// Clients reach the broker at `broker.bootstrap`, the TLS port; its `client_settings`
    /// hold the TLS settings (CA, client certificate, key password).
    pub broker: TestBroker,
    stunnel: Child,
    /// Holds the certificates and stunnel's configuration and log.
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl TlsFront {
    /// The CA that signed the server certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    /// A CA that signed nothing here.
    pub fn wrong_ca(&self) -> PathBuf {
        self.dir.path().join("wrong-ca.pem")
    }
    /// The client certificate and its encrypted key.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }
    /// stunnel's log (one line per accepted connection).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stunnel.log")).unwrap_or_default()
    }

    /// Starts Tansu and stunnel, which requires a client certificate signed by the CA
    /// (mutual TLS). `Err`: why it cannot run here (a missing tool), for a skip message.
    pub fn start() -> Result<TlsFront, String> {
        let stunnel = find_tool("SLUICE_TEST_STUNNEL", "stunnel4")
            .or_else(|| find_tool("SLUICE_TEST_STUNNEL", "stunnel"))
            .ok_or("no stunnel4 (Debian package stunnel4; .ci/run installs it)")?;
        let openssl = find_tool("SLUICE_TEST_OPENSSL", "openssl")
            .ok_or("no openssl command (Debian package openssl)")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        make_certificates(&openssl, dir.path())?;
        let port = free_port()?;
        let mut broker = TestBroker::start_tansu_advertising(Some(port))?;
        let plain = broker.bootstrap.clone();
        let conf = dir.path().join("stunnel.conf");
        let d = dir.path().display();
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\nsyslog = no\ndebug = notice\noutput = {d}/stunnel.log\n\
                 [kafka]\naccept = 127.0.0.1:{port}\nconnect = {plain}\ncert = {d}/server.pem\n\
                 key = {d}/server.key\nCAfile = {d}/ca.pem\nrequireCert = yes\nverifyChain = yes\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let stunnel = Command::new(&stunnel)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", stunnel.display()))?;
        broker.bootstrap = format!("127.0.0.1:{port}");
        broker.client_settings = vec![
            ("security.protocol".into(), "ssl".into()),
            ("ssl.ca.location".into(), format!("{d}/ca.pem")),
            ("ssl.certificate.location".into(), format!("{d}/client.pem")),
            ("ssl.key.location".into(), format!("{d}/client.key")),
            ("ssl.key.password".into(), CLIENT_KEY_PASSWORD.into()),
        ];
        let mut front = TlsFront { broker, stunnel, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = front.stunnel.try_wait() {
                return Err(format!("stunnel exited ({st}): {}", front.log()));
            }
            if Instant::now() >= deadline {
                return Err(format!("stunnel did not listen on {port}: {}", front.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(front)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.stunnel.kill();
        let _ = self.stunnel.wait();
    }
}

fn run(openssl: &Path, dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(openssl)
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)))
    }
}

/// `ca.pem`/`ca.key`, `server.pem`/`server.key` (for 127.0.0.1 and localhost),
/// `client.pem`/`client.key` (the key encrypted with [`CLIENT_KEY_PASSWORD`]) and
/// `wrong-ca.pem`.
fn make_certificates(openssl: &Path, dir: &Path) -> Result<(), String> {
    let r = |args: &[&str]| run(openssl, dir, args);
    for (name, cn) in [("ca", "Sluice test CA"), ("wrong-ca", "Some other CA")] {
        r(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ])?;
    }
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        .map_err(|e| e.to_string())?;
    r(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ])?;
    r(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ])?;
    let pass = format!("pass:{CLIENT_KEY_PASSWORD}");
    r(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-aes256",
        "-pass",
        &pass,
        "-out",
        "client.key",
    ])?;
    r(&[
        "req",
        "-new",
        "-key",
        "client.key",
        "-passin",
        &pass,
        "-subj",
        "/CN=sluice",
        "-out",
        "client.csr",
    ])?;
    r(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "client.pem",
    ])?;
    Ok(())
}
