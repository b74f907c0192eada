//! The Kafka listeners: Kafka's `listeners`, `advertised.listeners` and
//! `listener.security.protocol.map` checked into one shape, their TLS settings, and the
//! bounds on connections and requests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{in_range, invalid, millis, split_host_port, ConfigError, FileConfig};
use crate::cli::ServeArgs;
use crate::security::SecurityProtocol;
use crate::tls::{ClientAuth, TlsSettings};

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Every listener (never empty); the first is the one a build that knows no listener
    /// names is told (`listen`, `advertise`).
    pub listeners: Vec<Listener>,
    /// `tls_*`: TLS for the SSL and SASL_SSL listeners; None: none configured.
    pub tls: Option<TlsSettings>,
    /// `max_request_bytes`: the largest request frame accepted.
    pub max_request_bytes: usize,
    /// `max_inflight_request_bytes`: request bytes being read or handled at once over all
    /// connections (at least `max_request_bytes`, so that any single frame is admitted
    /// eventually).
    pub max_inflight_request_bytes: usize,
    /// `max_connections`: client connections open at once.
    pub max_connections: usize,
    /// `max_connections_per_ip`: client connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// `frame_read_timeout_ms`: how long a frame may take to arrive once its size prefix
    /// is read.
    pub frame_read_timeout: Duration,
    /// `connections_max_idle_ms`: a connection with nothing in flight and nothing
    /// arriving this long is closed.
    pub connections_max_idle: Duration,
}

impl ListenerConfig {
    pub fn load(args: &ServeArgs, file: &FileConfig) -> Result<Self, ConfigError> {
        let tls = tls_settings(args, file)?;
        let listeners = listeners(&ListenerInput::new(args, file, tls.is_some()))?;
        let max_request_bytes = in_range(
            "max_request_bytes",
            args.max_request_bytes
                .or(file.max_request_bytes)
                .unwrap_or(100 << 20),
            1024..=(1 << 30),
            "use 1024 to 1073741824 bytes",
        )?;
        // The default follows a larger max_request_bytes; a value set below it is refused:
        // a frame larger than the whole budget could never be read.
        let max_inflight_request_bytes = in_range(
            "max_inflight_request_bytes",
            args.max_inflight_request_bytes
                .or(file.max_inflight_request_bytes)
                .unwrap_or(max_request_bytes.max(256 << 20)),
            max_request_bytes..=(1 << 40),
            "use at least max_request_bytes (the largest frame must fit) and at most 1099511627776 bytes",
        )?;
        let connections =
            |key, value| in_range(key, value, 1..=1_000_000, "use 1 to 1000000 connections");
        Ok(Self {
            listeners,
            tls,
            max_request_bytes,
            max_inflight_request_bytes,
            max_connections: connections(
                "max_connections",
                args.max_connections
                    .or(file.max_connections)
                    .unwrap_or(10_000),
            )?,
            max_connections_per_ip: connections(
                "max_connections_per_ip",
                args.max_connections_per_ip
                    .or(file.max_connections_per_ip)
                    .unwrap_or(1000),
            )?,
            frame_read_timeout: millis(
                "frame_read_timeout_ms",
                args.frame_read_timeout_ms
                    .or(file.frame_read_timeout_ms)
                    .unwrap_or(30_000),
                100..=3_600_000,
                "use 100 to 3600000 milliseconds",
            )?,
            connections_max_idle: millis(
                "connections_max_idle_ms",
                args.connections_max_idle_ms
                    .or(file.connections_max_idle_ms)
                    .unwrap_or(600_000),
                100..=86_400_000,
                "use 100 to 86400000 milliseconds",
            )?,
        })
    }

    /// The first listener, which `Register` carries for clients of a build that knows no
    /// listener names.
    pub fn first(&self) -> &Listener {
        &self.listeners[0]
    }

    /// The first listener's address.
    pub fn listen(&self) -> SocketAddr {
        self.first().bind
    }

    /// The first listener's advertised host.
    pub fn advertise_host(&self) -> &str {
        &self.first().advertise_host
    }

    /// The first listener's advertised port.
    pub fn advertise_port(&self) -> i32 {
        self.first().advertise_port
    }
}

/// One listener: where it binds, what it speaks, and what clients are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub protocol: SecurityProtocol,
    pub bind: SocketAddr,
    pub advertise_host: String,
    pub advertise_port: i32,
}

/// The raw listener values, flags and variables over the file.
#[derive(Debug, Default)]
pub struct ListenerInput {
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub listeners: Option<String>,
    pub advertised_listeners: Option<String>,
    pub protocol_map: Option<String>,
    /// TLS certificate and key are configured.
    pub tls: bool,
}

impl ListenerInput {
    fn new(args: &ServeArgs, file: &FileConfig, tls: bool) -> Self {
        Self {
            listen: args.listen.clone().or(file.listen.clone()),
            advertise: args.advertise.clone().or(file.advertise.clone()),
            listeners: args.listeners.clone().or(file.listeners.clone()),
            advertised_listeners: args
                .advertised_listeners
                .clone()
                .or(file.advertised_listeners.clone()),
            protocol_map: args
                .listener_security_protocol_map
                .clone()
                .or(file.listener_security_protocol_map.clone()),
            tls,
        }
    }
}

/// The listeners, from `listeners` or else from the `listen`/`advertise` shorthands
/// (one listener: SSL when TLS is configured, else PLAINTEXT).
pub fn listeners(input: &ListenerInput) -> Result<Vec<Listener>, ConfigError> {
    let map = protocol_map(input.protocol_map.as_deref())?;
    let binds = binds(input)?;
    let advertised = advertised(input, &binds)?;
    let mut out = Vec::with_capacity(binds.len());
    for (name, host, port) in binds {
        let key = if input.listeners.is_some() {
            "listeners"
        } else {
            "listen"
        };
        let bind: SocketAddr = format!("{}:{port}", if host.contains(':') { format!("[{host}]") } else { host.clone() })
            .parse()
            .map_err(|_| {
                invalid(
                    key,
                    &format!("{name}://{host}:{port}"),
                    "bind to a numeric IP, e.g. 0.0.0.0:9092 or 127.0.0.1:9092 (advertise a host name with advertised_listeners)",
                )
            })?;
        let protocol = map
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                invalid(
                    "listener_security_protocol_map",
                    &name,
                    "a listener whose name is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL needs an entry NAME:PROTOCOL here",
                )
            })?;
        let (advertise_host, advertise_port) = advertised
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, h, p)| (h.clone(), *p))
            .unwrap_or((host, port));
        if wildcard(&advertise_host) {
            return Err(invalid(
                if input.listeners.is_some() { "advertised_listeners" } else { "advertise" },
                &format!("{name}://{advertise_host}:{advertise_port}"),
                "clients cannot connect to a wildcard address; advertise a reachable HOST:PORT for this listener",
            ));
        }
        if protocol.tls() && !input.tls {
            return Err(invalid(
                "listeners",
                &name,
                "an SSL or SASL_SSL listener needs tls_cert_file and tls_key_file",
            ));
        }
        out.push(Listener {
            name,
            protocol,
            bind,
            advertise_host,
            advertise_port,
        });
    }
    Ok(out)
}

/// Where the listeners bind, as (name, host, port): `listeners`, or the one `listen`.
fn binds(input: &ListenerInput) -> Result<Vec<(String, String, i32)>, ConfigError> {
    match &input.listeners {
        Some(text) => {
            if input.listen.is_some() || input.advertise.is_some() {
                return Err(invalid(
                    "listeners",
                    text,
                    "listen and advertise are shorthands for one listener: set listeners and advertised_listeners instead, not both",
                ));
            }
            endpoints("listeners", text)
        }
        None => {
            let listen = input.listen.as_deref().unwrap_or("127.0.0.1:9092");
            let (host, port) = split_bind(listen).ok_or_else(|| {
                invalid(
                    "listen",
                    listen,
                    "use HOST:PORT with a numeric IP, e.g. 127.0.0.1:9092 or 0.0.0.0:9092",
                )
            })?;
            let name = if input.tls { "SSL" } else { "PLAINTEXT" };
            Ok(vec![(name.to_owned(), host, port)])
        }
    }
}

/// What clients are told, as (name, host, port): `advertised_listeners`, or `advertise`
/// for the first listener; each must name one of `binds`.
fn advertised(
    input: &ListenerInput,
    binds: &[(String, String, i32)],
) -> Result<Vec<(String, String, i32)>, ConfigError> {
    let advertised = match (&input.advertised_listeners, &input.advertise) {
        (Some(text), _) => endpoints("advertised_listeners", text)?,
        (None, Some(one)) => {
            let (host, port) = split_host_port(one).ok_or_else(|| {
                invalid(
                    "advertise",
                    one,
                    "use HOST:PORT that clients can reach, e.g. broker1.example.com:9092",
                )
            })?;
            vec![(binds[0].0.clone(), host, port)]
        }
        (None, None) => Vec::new(),
    };
    if let Some((name, _, _)) = advertised
        .iter()
        .find(|(name, _, _)| !binds.iter().any(|(n, _, _)| n == name))
    {
        return Err(invalid(
            "advertised_listeners",
            name,
            "every advertised listener must be one of listeners (by name)",
        ));
    }
    Ok(advertised)
}

/// `NAME:PROTOCOL,...` over the four standard names.
fn protocol_map(text: Option<&str>) -> Result<Vec<(String, SecurityProtocol)>, ConfigError> {
    let mut map: Vec<(String, SecurityProtocol)> = SecurityProtocol::ALL
        .into_iter()
        .map(|p| (p.name().to_owned(), p))
        .collect();
    let hint = "use NAME:PROTOCOL entries separated by commas, PROTOCOL one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, e.g. INTERNAL:SASL_PLAINTEXT,EXTERNAL:SASL_SSL";
    for entry in text
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let (name, protocol) = entry
            .split_once(':')
            .ok_or_else(|| invalid("listener_security_protocol_map", entry, hint))?;
        let protocol: SecurityProtocol = protocol
            .trim()
            .parse()
            .map_err(|()| invalid("listener_security_protocol_map", entry, hint))?;
        let name = name.trim().to_ascii_uppercase();
        map.retain(|(n, _)| *n != name);
        map.push((name, protocol));
    }
    Ok(map)
}

/// `NAME://HOST:PORT,...` as (name, host, port), names upper-cased.
fn endpoints(key: &'static str, text: &str) -> Result<Vec<(String, String, i32)>, ConfigError> {
    let hint = "use NAME://HOST:PORT entries separated by commas, e.g. SASL_SSL://0.0.0.0:9093,PLAINTEXT://127.0.0.1:9092";
    let mut out: Vec<(String, String, i32)> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, address) = entry
            .split_once("://")
            .ok_or_else(|| invalid(key, entry, hint))?;
        let name = name.trim().to_ascii_uppercase();
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let address = if address.starts_with(':') {
            format!("0.0.0.0{address}")
        } else {
            address.to_owned()
        };
        let (host, port) = split_bind(&address)
            .filter(|_| valid_name)
            .ok_or_else(|| invalid(key, entry, hint))?;
        if out.iter().any(|(n, _, _)| *n == name) {
            return Err(invalid(key, entry, "each listener name may appear once"));
        }
        out.push((name, host, port));
    }
    if out.is_empty() {
        return Err(invalid(key, text, hint));
    }
    Ok(out)
}

/// HOST:PORT where port 0 (any free port, for tests) is allowed.
fn split_bind(s: &str) -> Option<(String, i32)> {
    match s.rsplit_once(':') {
        Some((host, "0")) => split_host_port(&format!("{host}:1")).map(|(h, _)| (h, 0)),
        _ => split_host_port(s),
    }
}

fn wildcard(host: &str) -> bool {
    host == "0.0.0.0" || host == "::"
}

/// The listener's TLS settings, checked for consistency (the files are read at start-up,
/// by `tls`).
fn tls_settings(args: &ServeArgs, file: &FileConfig) -> Result<Option<TlsSettings>, ConfigError> {
    let path = |arg: &Option<PathBuf>, file: &Option<PathBuf>| {
        arg.clone()
            .or(file.clone())
            .filter(|p| !p.as_os_str().is_empty())
    };
    let cert_file = path(&args.tls_cert_file, &file.tls_cert_file);
    let key_file = path(&args.tls_key_file, &file.tls_key_file);
    let ca_file = path(&args.tls_ca_file, &file.tls_ca_file);
    let client_auth_text = args
        .tls_client_auth
        .clone()
        .or(file.tls_client_auth.clone())
        .unwrap_or_else(|| "none".into());
    let client_auth: ClientAuth = client_auth_text
        .parse()
        .map_err(|()| ConfigError::Invalid {
            key: "tls_client_auth",
            value: client_auth_text.clone(),
            hint: "use none, requested or required",
        })?;
    let (cert_file, key_file) = match (cert_file, key_file) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            if client_auth != ClientAuth::None || ca_file.is_some() {
                return Err(ConfigError::Invalid {
                    key: "tls_client_auth",
                    value: client_auth_text,
                    hint: "client certificates need TLS: set tls_cert_file and tls_key_file too",
                });
            }
            return Ok(None);
        }
        (Some(_), None) => {
            return Err(ConfigError::Invalid {
                key: "tls_key_file",
                value: String::new(),
                hint: "tls_cert_file is set: set tls_key_file to its PEM private key too",
            })
        }
        (None, Some(_)) => {
            return Err(ConfigError::Invalid {
                key: "tls_cert_file",
                value: String::new(),
                hint: "tls_key_file is set: set tls_cert_file to its PEM certificate too",
            })
        }
    };
    if client_auth != ClientAuth::None && ca_file.is_none() {
        return Err(ConfigError::Invalid {
            key: "tls_ca_file",
            value: String::new(),
            hint: "tls_client_auth requested or required checks client certificates against it: set it to a PEM CA bundle",
        });
    }
    Ok(Some(TlsSettings {
        cert_file,
        key_file,
        client_auth,
        ca_file,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn input() -> ListenerInput {
        ListenerInput::default()
    }

    #[test]
    fn shorthand_is_one_plaintext_or_ssl_listener() -> TestResult {
        let l = listeners(&input())?;
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].name, "PLAINTEXT");
        assert_eq!(l[0].bind, "127.0.0.1:9092".parse()?);
        assert_eq!(
            (l[0].advertise_host.as_str(), l[0].advertise_port),
            ("127.0.0.1", 9092)
        );
        let tls = ListenerInput {
            tls: true,
            listen: Some("0.0.0.0:9093".into()),
            advertise: Some("b1.example.com:9093".into()),
            ..input()
        };
        let l = listeners(&tls)?;
        assert_eq!(
            (l[0].name.as_str(), l[0].protocol),
            ("SSL", SecurityProtocol::Ssl)
        );
        assert_eq!(l[0].advertise_host, "b1.example.com");
        Ok(())
    }

    #[test]
    fn named_listeners_with_map_and_advertised() -> TestResult {
        let i = ListenerInput {
            listeners: Some("internal://0.0.0.0:9092,SASL_SSL://0.0.0.0:9094".into()),
            advertised_listeners: Some(
                "INTERNAL://10.0.0.1:9092,SASL_SSL://b1.example.com:9094".into(),
            ),
            protocol_map: Some("INTERNAL:SASL_PLAINTEXT".into()),
            tls: true,
            ..input()
        };
        let l = listeners(&i)?;
        assert_eq!(l[0].name, "INTERNAL");
        assert_eq!(l[0].protocol, SecurityProtocol::SaslPlaintext);
        assert_eq!(l[0].advertise_host, "10.0.0.1");
        assert_eq!(l[1].protocol, SecurityProtocol::SaslSsl);
        assert_eq!(
            (l[1].advertise_host.as_str(), l[1].advertise_port),
            ("b1.example.com", 9094)
        );
        Ok(())
    }

    #[test]
    fn bad_listener_settings_say_what_to_fix() {
        let err = |i: ListenerInput| {
            listeners(&i)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let e = err(ListenerInput {
            listeners: Some("INTERNAL://127.0.0.1:9092".into()),
            ..input()
        });
        assert!(
            e.starts_with("listener_security_protocol_map = \"INTERNAL\""),
            "{e}"
        );
        let e = err(ListenerInput {
            listeners: Some("SSL://127.0.0.1:9093".into()),
            ..input()
        });
        assert!(e.contains("needs tls_cert_file"), "{e}");
        let e = err(ListenerInput {
            listeners: Some("PLAINTEXT://0.0.0.0:9092".into()),
            ..input()
        });
        assert!(e.contains("wildcard"), "{e}");
        let e = err(ListenerInput {
            listeners: Some("PLAINTEXT://127.0.0.1:9092,PLAINTEXT://127.0.0.1:9093".into()),
            ..input()
        });
        assert!(e.contains("once"), "{e}");
        let e = err(ListenerInput {
            listeners: Some("PLAINTEXT://127.0.0.1:9092".into()),
            advertised_listeners: Some("SSL://b:9093".into()),
            ..input()
        });
        assert!(e.contains("must be one of listeners"), "{e}");
        let e = err(ListenerInput {
            listeners: Some("127.0.0.1:9092".into()),
            ..input()
        });
        assert!(e.starts_with("listeners = \"127.0.0.1:9092\""), "{e}");
        let e = err(ListenerInput {
            listeners: Some("PLAINTEXT://127.0.0.1:9092".into()),
            listen: Some("127.0.0.1:9092".into()),
            ..input()
        });
        assert!(e.contains("shorthands"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let args = ServeArgs {
            listen: Some("nonsense".into()),
            ..Default::default()
        };
        let e = Config::load(&args).unwrap_err().to_string();
        assert!(e.starts_with("listen = \"nonsense\" is not valid"), "{e}");
    }

    #[test]
    fn connection_bounds_are_checked() {
        let refused = |args: ServeArgs| Config::load(&args).unwrap_err().to_string();
        let c = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(c.listener.max_inflight_request_bytes, 256 << 20);
        assert_eq!(
            (
                c.listener.max_connections,
                c.listener.max_connections_per_ip
            ),
            (10_000, 1000)
        );
        assert_eq!(c.listener.frame_read_timeout, Duration::from_secs(30));
        assert_eq!(c.listener.connections_max_idle, Duration::from_secs(600));
        // The default budget grows with a larger frame limit; a set one below it is refused.
        let c = Config::load(&ServeArgs {
            max_request_bytes: Some(512 << 20),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.listener.max_inflight_request_bytes, 512 << 20);
        let e = refused(ServeArgs {
            max_request_bytes: Some(200 << 20),
            max_inflight_request_bytes: Some(100 << 20),
            ..Default::default()
        });
        assert!(
            e.starts_with("max_inflight_request_bytes = \"104857600\" is not valid: use at least max_request_bytes"),
            "{e}"
        );
        let e = refused(ServeArgs {
            max_connections_per_ip: Some(0),
            ..Default::default()
        });
        assert!(
            e.starts_with("max_connections_per_ip = \"0\" is not valid"),
            "{e}"
        );
        let e = refused(ServeArgs {
            max_connections: Some(2_000_000),
            ..Default::default()
        });
        assert!(
            e.starts_with("max_connections = \"2000000\" is not valid"),
            "{e}"
        );
        let e = refused(ServeArgs {
            frame_read_timeout_ms: Some(10),
            ..Default::default()
        });
        assert!(
            e.starts_with("frame_read_timeout_ms = \"10\" is not valid"),
            "{e}"
        );
        let e = refused(ServeArgs {
            connections_max_idle_ms: Some(0),
            ..Default::default()
        });
        assert!(
            e.starts_with("connections_max_idle_ms = \"0\" is not valid"),
            "{e}"
        );
    }

    #[test]
    fn tls_settings_are_checked_for_consistency() {
        let refused = |args: ServeArgs| Config::load(&args).unwrap_err().to_string();
        assert!(Config::load(&ServeArgs::default())
            .unwrap()
            .listener
            .tls
            .is_none());
        let e = refused(ServeArgs {
            tls_cert_file: Some("c.pem".into()),
            ..Default::default()
        });
        assert!(
            e.starts_with("tls_key_file = \"\" is not valid: tls_cert_file is set"),
            "{e}"
        );
        let e = refused(ServeArgs {
            tls_key_file: Some("k.pem".into()),
            ..Default::default()
        });
        assert!(e.starts_with("tls_cert_file = \"\" is not valid"), "{e}");
        let e = refused(ServeArgs {
            tls_cert_file: Some("c.pem".into()),
            tls_key_file: Some("k.pem".into()),
            tls_client_auth: Some("always".into()),
            ..Default::default()
        });
        assert!(e.contains("use none, requested or required"), "{e}");
        let e = refused(ServeArgs {
            tls_cert_file: Some("c.pem".into()),
            tls_key_file: Some("k.pem".into()),
            tls_client_auth: Some("required".into()),
            ..Default::default()
        });
        assert!(e.starts_with("tls_ca_file = \"\" is not valid"), "{e}");
        let e = refused(ServeArgs {
            tls_client_auth: Some("requested".into()),
            tls_ca_file: Some("ca.pem".into()),
            ..Default::default()
        });
        assert!(e.contains("set tls_cert_file and tls_key_file"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "tls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"\ntls_client_auth = \"requested\"\ntls_ca_file = \"ca.pem\"\n",
        )
        .unwrap();
        let c = Config::load(&ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            c.listener.tls,
            Some(TlsSettings {
                cert_file: "c.pem".into(),
                key_file: "k.pem".into(),
                client_auth: ClientAuth::Requested,
                ca_file: Some("ca.pem".into()),
            })
        );
    }
}
