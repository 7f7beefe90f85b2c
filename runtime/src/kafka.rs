use std::fmt;
use std::path::PathBuf;

use clap::error::ErrorKind;
use rdkafka::ClientConfig;

use crate::Secret;

/// Where Kafka is, which topic carries the city updates, and how clients secure their
/// connections to it.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated `host:port`.
    #[arg(
        long,
        env = "CITYPOP_KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_bootstrap_servers: String,

    /// The topic of city updates (key = city key, value = Avro event, null = delete).
    #[arg(long, env = "CITYPOP_TOPIC", default_value = "city-updates")]
    pub topic: String,

    #[command(flatten)]
    pub security: KafkaSecurity,
}

impl KafkaArgs {
    /// Settings every Kafka client of citypop shares, security included; callers add
    /// their role's own.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.kafka_bootstrap_servers)
            .set("client.id", client_id)
            // librdkafka logs every failed connection attempt at error level; the
            // services report Kafka's state through readiness and metrics instead.
            .set("log.connection.close", "false");
        self.security.apply(&mut config);
        config
    }
}

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    #[default]
    Plaintext,
    /// TLS, no authentication.
    Ssl,
    /// SASL authentication without TLS (PLAIN then sends the password in clear).
    #[value(name = "sasl_plaintext")]
    SaslPlaintext,
    /// SASL authentication over TLS.
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    /// The value librdkafka takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// librdkafka's `sasl.mechanisms`: the ones librdkafka builds in (no Kerberos).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    /// User and password as they are: use it over TLS only.
    #[value(name = "PLAIN")]
    Plain,
    /// Salted challenge-response with SHA-256.
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response with SHA-512 (Strimzi's `scram-sha-512`).
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The value librdkafka takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// How every Kafka client connects: protocol, SASL credentials and the CA to trust,
/// checked against each other when the settings are parsed, so a service with a
/// contradictory setting stops at start with the reason instead of failing to
/// authenticate (or silently not authenticating) later. The default is plaintext.
#[derive(Debug, Clone, Default)]
pub struct KafkaSecurity {
    protocol: SecurityProtocol,
    /// Present exactly when the protocol uses SASL.
    sasl: Option<SaslCredentials>,
    /// Only with a protocol that uses TLS.
    ssl_ca_location: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct SaslCredentials {
    mechanism: SaslMechanism,
    username: String,
    password: Secret,
}

impl KafkaSecurity {
    fn apply(&self, config: &mut ClientConfig) {
        config.set("security.protocol", self.protocol.as_str());
        if let Some(sasl) = &self.sasl {
            config
                .set("sasl.mechanisms", sasl.mechanism.as_str())
                .set("sasl.username", &sasl.username)
                .set("sasl.password", sasl.password.expose());
        }
        if self.protocol.uses_tls() {
            // Without a CA of its own, trust the system's. "probe" looks for the CA
            // bundle where distributions keep it (/etc/ssl/certs/ca-certificates.crt
            // on Debian and in the distroless image) before OpenSSL's compiled-in
            // directory, which a minimal image may lack.
            let location = self
                .ssl_ca_location
                .as_ref()
                .map_or_else(|| "probe".to_owned(), |p| p.to_string_lossy().into_owned());
            config.set("ssl.ca.location", location);
        }
    }
}

/// Kafka's security settings as given, before they are checked against each other.
#[derive(Debug, Clone, clap::Args)]
struct KafkaSecurityArgs {
    /// How clients connect to Kafka: plaintext, ssl (TLS), sasl_plaintext (SASL
    /// without TLS) or sasl_ssl (SASL over TLS); case does not matter.
    #[arg(
        long,
        env = "CITYPOP_KAFKA_SECURITY_PROTOCOL",
        value_enum,
        ignore_case = true,
        default_value_t = SecurityProtocol::Plaintext
    )]
    kafka_security_protocol: SecurityProtocol,

    /// SASL mechanism, required with sasl_plaintext and sasl_ssl: PLAIN, SCRAM-SHA-256
    /// or SCRAM-SHA-512.
    #[arg(
        long,
        env = "CITYPOP_KAFKA_SASL_MECHANISM",
        value_enum,
        ignore_case = true
    )]
    kafka_sasl_mechanism: Option<SaslMechanism>,

    /// SASL user, required with sasl_plaintext and sasl_ssl (and refused with the
    /// others).
    #[arg(long, env = "CITYPOP_KAFKA_SASL_USERNAME")]
    kafka_sasl_username: Option<String>,

    /// SASL password of that user. Set it in the environment (a flag shows in the
    /// process list); `--help`, logs and debug output never show it.
    #[arg(long, env = "CITYPOP_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    kafka_sasl_password: Option<Secret>,

    /// PEM file (or directory) of the CA certificates that signed the brokers'
    /// certificates, e.g. Strimzi's cluster CA; only with ssl and sasl_ssl. Unset:
    /// the system's CA certificates.
    #[arg(long, env = "CITYPOP_KAFKA_SSL_CA_LOCATION")]
    kafka_ssl_ca_location: Option<PathBuf>,
}

/// A combination of Kafka security settings that cannot work.
#[derive(Debug, thiserror::Error)]
enum KafkaSecurityError {
    #[error("security protocol {protocol} needs {}", missing.join(" and "))]
    SaslIncomplete {
        protocol: SecurityProtocol,
        missing: Vec<&'static str>,
    },
    #[error(
        "{} set, but security protocol {protocol} does not use SASL: set CITYPOP_KAFKA_SECURITY_PROTOCOL to sasl_plaintext or sasl_ssl",
        given.join(" and ")
    )]
    SaslWithoutSaslProtocol {
        protocol: SecurityProtocol,
        given: Vec<&'static str>,
    },
    #[error(
        "CITYPOP_KAFKA_SSL_CA_LOCATION set, but security protocol {protocol} does not use TLS: set CITYPOP_KAFKA_SECURITY_PROTOCOL to ssl or sasl_ssl"
    )]
    CaWithoutTls { protocol: SecurityProtocol },
    #[error("CITYPOP_KAFKA_SSL_CA_LOCATION {} does not exist", .0.display())]
    CaMissing(PathBuf),
}

impl KafkaSecurityError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::SaslIncomplete { .. } => ErrorKind::MissingRequiredArgument,
            Self::SaslWithoutSaslProtocol { .. } | Self::CaWithoutTls { .. } => {
                ErrorKind::ArgumentConflict
            }
            Self::CaMissing(_) => ErrorKind::ValueValidation,
        }
    }
}

impl TryFrom<KafkaSecurityArgs> for KafkaSecurity {
    type Error = KafkaSecurityError;

    fn try_from(args: KafkaSecurityArgs) -> Result<Self, Self::Error> {
        let protocol = args.kafka_security_protocol;
        // An empty value (`VAR=`) counts as unset: templating often leaves one behind.
        let username = args.kafka_sasl_username.filter(|u| !u.is_empty());
        let password = args.kafka_sasl_password.filter(|p| !p.is_empty());
        let mechanism = args.kafka_sasl_mechanism;
        let ca = args.kafka_ssl_ca_location;

        let sasl = if protocol.uses_sasl() {
            match (mechanism, username, password) {
                (Some(mechanism), Some(username), Some(password)) => Some(SaslCredentials {
                    mechanism,
                    username,
                    password,
                }),
                (mechanism, username, password) => {
                    let missing = [
                        (mechanism.is_none(), "CITYPOP_KAFKA_SASL_MECHANISM"),
                        (username.is_none(), "CITYPOP_KAFKA_SASL_USERNAME"),
                        (password.is_none(), "CITYPOP_KAFKA_SASL_PASSWORD"),
                    ];
                    return Err(KafkaSecurityError::SaslIncomplete {
                        protocol,
                        missing: names_where(&missing),
                    });
                }
            }
        } else {
            let given = [
                (mechanism.is_some(), "CITYPOP_KAFKA_SASL_MECHANISM"),
                (username.is_some(), "CITYPOP_KAFKA_SASL_USERNAME"),
                (password.is_some(), "CITYPOP_KAFKA_SASL_PASSWORD"),
            ];
            let given = names_where(&given);
            if !given.is_empty() {
                return Err(KafkaSecurityError::SaslWithoutSaslProtocol { protocol, given });
            }
            None
        };

        if let Some(path) = &ca {
            if !protocol.uses_tls() {
                return Err(KafkaSecurityError::CaWithoutTls { protocol });
            }
            if !path.exists() {
                return Err(KafkaSecurityError::CaMissing(path.clone()));
            }
        }

        Ok(Self {
            protocol,
            sasl,
            ssl_ca_location: ca,
        })
    }
}

fn names_where(flags: &[(bool, &'static str)]) -> Vec<&'static str> {
    flags
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| *name)
        .collect()
}

// `KafkaSecurity` is parsed as its raw arguments, then checked: clap's derive has no
// place for rules that span several arguments and depend on their values.
impl clap::Args for KafkaSecurity {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        KafkaSecurityArgs::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        KafkaSecurityArgs::augment_args_for_update(cmd)
    }
}

impl clap::FromArgMatches for KafkaSecurity {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let args = KafkaSecurityArgs::from_arg_matches(matches)?;
        Self::try_from(args).map_err(|e| clap::Error::raw(e.kind(), e))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        // The settings are checked as a whole, so an update re-reads them all.
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    fn parse(args: &[&str]) -> Result<KafkaArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied())).map(|c| c.kafka)
    }

    fn properties(args: &[&str]) -> ClientConfig {
        parse(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .client_config("unit-test")
    }

    fn refused(args: &[&str]) -> clap::Error {
        parse(args).expect_err("the settings must be refused")
    }

    /// Any file that exists, as a CA path.
    fn existing_file() -> String {
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").to_owned()
    }

    const SECURITY_KEYS: [&str; 5] = [
        "security.protocol",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
        "ssl.ca.location",
    ];

    fn security_of(config: &ClientConfig) -> Vec<Option<&str>> {
        SECURITY_KEYS.iter().map(|key| config.get(key)).collect()
    }

    #[test]
    fn plaintext_by_default() {
        let config = properties(&[]);
        assert_eq!(
            security_of(&config),
            [Some("plaintext"), None, None, None, None]
        );
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(config.get("client.id"), Some("unit-test"));
    }

    #[test]
    fn sasl_ssl_with_scram_and_a_ca() {
        let ca = existing_file();
        let config = properties(&[
            "--kafka-security-protocol",
            "SASL_SSL",
            "--kafka-sasl-mechanism",
            "scram-sha-512",
            "--kafka-sasl-username",
            "citypop",
            "--kafka-sasl-password",
            "s3cret",
            "--kafka-ssl-ca-location",
            &ca,
        ]);
        assert_eq!(
            security_of(&config),
            [
                Some("sasl_ssl"),
                Some("SCRAM-SHA-512"),
                Some("citypop"),
                Some("s3cret"),
                Some(ca.as_str())
            ]
        );
    }

    #[test]
    fn sasl_plaintext_with_plain_has_no_tls_settings() {
        let config = properties(&[
            "--kafka-security-protocol",
            "sasl_plaintext",
            "--kafka-sasl-mechanism",
            "PLAIN",
            "--kafka-sasl-username",
            "citypop",
            "--kafka-sasl-password",
            "s3cret",
        ]);
        assert_eq!(
            security_of(&config),
            [
                Some("sasl_plaintext"),
                Some("PLAIN"),
                Some("citypop"),
                Some("s3cret"),
                None
            ]
        );
    }

    #[test]
    fn tls_without_a_ca_trusts_the_system_certificates() {
        let config = properties(&["--kafka-security-protocol", "ssl"]);
        assert_eq!(
            security_of(&config),
            [Some("ssl"), None, None, None, Some("probe")]
        );
        let config = properties(&[
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-256",
            "--kafka-sasl-username",
            "u",
            "--kafka-sasl-password",
            "p",
        ]);
        assert_eq!(config.get("sasl.mechanisms"), Some("SCRAM-SHA-256"));
        assert_eq!(config.get("ssl.ca.location"), Some("probe"));
    }

    #[test]
    fn a_sasl_protocol_needs_mechanism_user_and_password() {
        let error = refused(&[
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-mechanism",
            "PLAIN",
            "--kafka-sasl-username",
            "citypop",
        ]);
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            error.to_string().lines().next(),
            Some("error: security protocol sasl_ssl needs CITYPOP_KAFKA_SASL_PASSWORD")
        );

        let error = refused(&[
            "--kafka-security-protocol",
            "sasl_plaintext",
            "--kafka-sasl-password",
            "s3cret",
        ]);
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
        let message = error.to_string();
        assert!(
            message.contains(
                "security protocol sasl_plaintext needs CITYPOP_KAFKA_SASL_MECHANISM and CITYPOP_KAFKA_SASL_USERNAME"
            ),
            "{message}"
        );
        assert!(!message.contains("s3cret"), "{message}");

        let error = refused(&["--kafka-security-protocol", "sasl_ssl"]);
        assert!(
            error.to_string().contains(
                "needs CITYPOP_KAFKA_SASL_MECHANISM and CITYPOP_KAFKA_SASL_USERNAME and CITYPOP_KAFKA_SASL_PASSWORD"
            ),
            "{error}"
        );
    }

    #[test]
    fn empty_values_count_as_unset() {
        let error = refused(&[
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-mechanism",
            "PLAIN",
            "--kafka-sasl-username",
            "citypop",
            "--kafka-sasl-password",
            "",
        ]);
        assert!(
            error
                .to_string()
                .contains("needs CITYPOP_KAFKA_SASL_PASSWORD"),
            "{error}"
        );
        let config = properties(&["--kafka-sasl-username", ""]);
        assert_eq!(
            security_of(&config),
            [Some("plaintext"), None, None, None, None]
        );
    }

    #[test]
    fn sasl_settings_without_a_sasl_protocol_are_refused() {
        for protocol in ["plaintext", "ssl"] {
            let error = refused(&[
                "--kafka-security-protocol",
                protocol,
                "--kafka-sasl-username",
                "citypop",
                "--kafka-sasl-password",
                "s3cret",
            ]);
            assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
            let message = error.to_string();
            assert!(
                message.contains(&format!(
                    "CITYPOP_KAFKA_SASL_USERNAME and CITYPOP_KAFKA_SASL_PASSWORD set, but security protocol {protocol} does not use SASL"
                )),
                "{message}"
            );
            assert!(!message.contains("s3cret"), "{message}");
        }
        // The protocol's default is plaintext: a username alone is a forgotten protocol.
        let error = refused(&["--kafka-sasl-mechanism", "PLAIN"]);
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn a_ca_needs_tls_and_must_exist() {
        let ca = existing_file();
        let error = refused(&[
            "--kafka-security-protocol",
            "sasl_plaintext",
            "--kafka-sasl-mechanism",
            "PLAIN",
            "--kafka-sasl-username",
            "u",
            "--kafka-sasl-password",
            "p",
            "--kafka-ssl-ca-location",
            &ca,
        ]);
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
        assert!(
            error
                .to_string()
                .contains("security protocol sasl_plaintext does not use TLS"),
            "{error}"
        );

        let error = refused(&[
            "--kafka-security-protocol",
            "ssl",
            "--kafka-ssl-ca-location",
            "/nonexistent/ca.crt",
        ]);
        assert_eq!(error.kind(), ErrorKind::ValueValidation);
        assert!(
            error
                .to_string()
                .contains("CITYPOP_KAFKA_SSL_CA_LOCATION /nonexistent/ca.crt does not exist"),
            "{error}"
        );
    }

    #[test]
    fn unknown_protocols_and_mechanisms_are_refused() {
        let error = refused(&["--kafka-security-protocol", "tls"]);
        assert_eq!(error.kind(), ErrorKind::InvalidValue);
        let error = refused(&[
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-mechanism",
            "GSSAPI",
        ]);
        assert_eq!(error.kind(), ErrorKind::InvalidValue);
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let args = parse(&[
            "--kafka-security-protocol",
            "sasl_plaintext",
            "--kafka-sasl-mechanism",
            "PLAIN",
            "--kafka-sasl-username",
            "citypop",
            "--kafka-sasl-password",
            "s3cret-pw",
        ])
        .unwrap();
        let shown = format!("{args:?} {:?}", args.client_config("unit-test"));
        assert!(shown.contains("citypop"), "{shown}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
    }

    #[test]
    fn the_linked_librdkafka_supports_every_protocol_and_mechanism() {
        let native = ClientConfig::new()
            .create_native_config()
            .expect("a native config");
        let features = native.get("builtin.features").expect("builtin.features");
        for feature in ["ssl", "sasl_plain", "sasl_scram"] {
            assert!(
                features.split(',').any(|f| f == feature),
                "librdkafka lacks {feature}: {features}"
            );
        }
    }
}
