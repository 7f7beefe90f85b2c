use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::Url;
use elasticsearch::http::headers::{ACCEPT_ENCODING, HeaderValue};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};

use crate::Secret;

/// Where the search engine (Elasticsearch 8.19 or 9, OpenSearch 2.19 or 3) is, which
/// alias holds the cities, and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Base URL of the Elasticsearch or OpenSearch HTTP API.
    #[arg(
        long,
        env = "CITYPOP_ELASTICSEARCH_URL",
        default_value = "http://127.0.0.1:9200"
    )]
    pub elasticsearch_url: Url,

    /// Alias that reads and writes go through; the indexes behind it are named
    /// `<alias>-…` and share the index template of the same name.
    #[arg(long, env = "CITYPOP_INDEX_ALIAS", default_value = "cities")]
    pub index_alias: String,

    /// Timeout of one request to the engine.
    #[arg(long, env = "CITYPOP_ELASTICSEARCH_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub elasticsearch_timeout: Duration,

    /// User for HTTP basic authentication to the engine, with the password. Unset:
    /// requests carry no credentials.
    #[arg(
        long,
        env = "CITYPOP_ELASTICSEARCH_USERNAME",
        requires = "elasticsearch_password"
    )]
    pub elasticsearch_username: Option<String>,

    /// Password of that user. Set it in the environment (a flag shows in the process
    /// list); `--help`, logs and debug output never show it.
    #[arg(
        long,
        env = "CITYPOP_ELASTICSEARCH_PASSWORD",
        hide_env_values = true,
        requires = "elasticsearch_username"
    )]
    pub elasticsearch_password: Option<Secret>,

    /// Elasticsearch API key, as the base64 `encoded` value `POST _security/api_key`
    /// answers (the usual credential on Elastic Cloud and ECK); sent as
    /// `Authorization: ApiKey <key>`. Not with a username and password. Set it in the
    /// environment; `--help`, logs and debug output never show it.
    #[arg(long, env = "CITYPOP_ELASTICSEARCH_API_KEY", hide_env_values = true)]
    pub elasticsearch_api_key: Option<Secret>,

    /// PEM file of the CA certificates to trust for the engine's HTTPS certificate,
    /// besides the ones built in (e.g. ECK's self-signed HTTP CA); only with an
    /// https URL. The engine's host name is still verified.
    #[arg(long, env = "CITYPOP_ELASTICSEARCH_CA_FILE")]
    pub elasticsearch_ca_file: Option<PathBuf>,
}

impl EngineArgs {
    /// The engine client. Fails, so the service stops at start, when the credentials
    /// are half given or the CA file is missing, unreadable, holds no certificate, or
    /// comes with a URL that is not https.
    pub fn client(&self) -> anyhow::Result<Elasticsearch> {
        let pool = SingleNodeConnectionPool::new(self.elasticsearch_url.clone());
        let mut transport = TransportBuilder::new(pool)
            // The engine is addressed directly; a proxy from the environment would
            // only add a hop and a way to fail.
            .disable_proxy()
            // Uncompressed answers: gzip costs the engine CPU on every response
            // (a bulk answer is about a megabyte) and us CPU to inflate it, where the
            // network is a data-centre hop (a profile of producer-api under read load
            // had inflating among its top costs).
            .header(ACCEPT_ENCODING, HeaderValue::from_static("identity"))
            .timeout(self.elasticsearch_timeout);
        if let Some(credentials) = self.credentials()? {
            transport = transport.auth(credentials);
        }
        if let Some(validation) = self.certificate_validation()? {
            transport = transport.cert_validation(validation);
        }
        let transport = transport
            .build()
            .context("building the search engine client")?;
        Ok(Elasticsearch::new(transport))
    }

    fn credentials(&self) -> anyhow::Result<Option<Credentials>> {
        // An empty value (`VAR=`) counts as unset: templating often leaves one behind.
        let username = self
            .elasticsearch_username
            .as_deref()
            .filter(|u| !u.is_empty());
        let password = self
            .elasticsearch_password
            .as_ref()
            .filter(|p| !p.is_empty());
        let api_key = self
            .elasticsearch_api_key
            .as_ref()
            .filter(|k| !k.is_empty());
        if let Some(api_key) = api_key {
            ensure!(
                username.is_none() && password.is_none(),
                "CITYPOP_ELASTICSEARCH_API_KEY is set together with CITYPOP_ELASTICSEARCH_USERNAME or \
                 CITYPOP_ELASTICSEARCH_PASSWORD; set one kind of credential"
            );
            // The client turns the key into a header value and panics on one that
            // cannot be; an encoded key is base64, so anything else is a mistake
            // (a copied line break, the id and key not yet encoded).
            ensure!(
                api_key
                    .expose()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric()
                        || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')),
                "CITYPOP_ELASTICSEARCH_API_KEY is not a base64 encoded API key (the `encoded` \
                 value of POST _security/api_key)"
            );
            return Ok(Some(Credentials::EncodedApiKey(
                api_key.expose().to_owned(),
            )));
        }
        match (username, password) {
            (Some(username), Some(password)) => Ok(Some(Credentials::Basic(
                username.to_owned(),
                password.expose().to_owned(),
            ))),
            (None, None) => Ok(None),
            (Some(_), None) => bail!(
                "CITYPOP_ELASTICSEARCH_USERNAME is set but CITYPOP_ELASTICSEARCH_PASSWORD is not"
            ),
            (None, Some(_)) => bail!(
                "CITYPOP_ELASTICSEARCH_PASSWORD is set but CITYPOP_ELASTICSEARCH_USERNAME is not"
            ),
        }
    }

    fn certificate_validation(&self) -> anyhow::Result<Option<CertificateValidation>> {
        let Some(path) = &self.elasticsearch_ca_file else {
            return Ok(None);
        };
        ensure!(
            self.elasticsearch_url.scheme() == "https",
            "CITYPOP_ELASTICSEARCH_CA_FILE is set but CITYPOP_ELASTICSEARCH_URL {} is not https",
            self.elasticsearch_url
        );
        let pem = std::fs::read(path)
            .with_context(|| format!("reading CITYPOP_ELASTICSEARCH_CA_FILE {}", path.display()))?;
        let ca = Certificate::from_pem(&pem)
            .with_context(|| format!("CITYPOP_ELASTICSEARCH_CA_FILE {}", path.display()))?;
        // Full: the chain must lead to a trusted CA and the certificate must name the
        // host, as with the built-in CAs.
        Ok(Some(CertificateValidation::Full(ca)))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use clap::error::ErrorKind;

    use super::*;

    /// A self-signed CA (`openssl req -x509 -newkey ec -pkeyopt
    /// ec_paramgen_curve:P-256 -nodes -days 36500 -subj /CN=citypop-test-ca`, key
    /// thrown away): only ever parsed.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBizCCATGgAwIBAgIUKVDO4shVvRVj4XHtzm2iKRqIVZwwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPY2l0eXBvcC10ZXN0LWNhMCAXDTI2MTEyODE0MDU1NloYDzIx
MjYxMTA0MTQwNTU2WjAaMRgwFgYDVQQDDA9jaXR5cG9wLXRlc3QtY2EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAATw+snsGL4l38Asw1jcntV12/7BOroxVZsKaTXG
ynwqbkbjR2p/GECT2BWG43wQ6/mF0zRakvMIrSqdRwjAR+tlo1MwUTAdBgNVHQ4E
FgQUtsl7GBljM/azvOLNDYLnXe0WIOYwHwYDVR0jBBgwFoAUtsl7GBljM/azvOLN
DYLnXe0WIOYwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAmExR
l3QCjVGnlaOElWWFarZnx/GBTlj4v7Q5OcWn5OgCIALyo6IpmU5yDJeTcnyzrfJY
JY8UAFVqOEPTsc8qNcUR
-----END CERTIFICATE-----
";

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
    }

    fn parse(args: &[&str]) -> Result<EngineArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied())).map(|c| c.engine)
    }

    fn write_temp(name: &str, contents: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("citypop-runtime-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("writing a temporary file");
        path
    }

    #[test]
    fn no_credentials_and_no_ca_by_default() {
        let engine = parse(&[]).unwrap();
        assert!(engine.credentials().unwrap().is_none());
        assert!(engine.certificate_validation().unwrap().is_none());
        engine.client().unwrap();
    }

    #[test]
    fn user_and_password_become_basic_auth() {
        let engine = parse(&[
            "--elasticsearch-username",
            "citypop",
            "--elasticsearch-password",
            "s3cret-pw",
        ])
        .unwrap();
        match engine.credentials().unwrap() {
            Some(Credentials::Basic(user, password)) => {
                assert_eq!((user.as_str(), password.as_str()), ("citypop", "s3cret-pw"));
            }
            other => panic!("want basic credentials, got {other:?}"),
        }
        engine.client().unwrap();
        assert!(!format!("{engine:?}").contains("s3cret-pw"));
    }

    #[test]
    fn half_the_credentials_are_refused() {
        let error = parse(&["--elasticsearch-username", "citypop"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
        let error = parse(&["--elasticsearch-password", "s3cret-pw"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
        assert!(!error.to_string().contains("s3cret-pw"), "{error}");
        // Empty values count as unset, which leaves half the pair.
        let engine = parse(&[
            "--elasticsearch-username",
            "citypop",
            "--elasticsearch-password",
            "",
        ])
        .unwrap();
        let error = engine.client().unwrap_err().to_string();
        assert_eq!(
            error,
            "CITYPOP_ELASTICSEARCH_USERNAME is set but CITYPOP_ELASTICSEARCH_PASSWORD is not"
        );
    }

    #[test]
    fn an_api_key_becomes_an_api_key_header() {
        let engine = parse(&[
            "--elasticsearch-api-key",
            "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==",
        ])
        .unwrap();
        match engine.credentials().unwrap() {
            Some(Credentials::EncodedApiKey(key)) => {
                assert_eq!(
                    key,
                    "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
                );
            }
            other => panic!("want an API key, got {other:?}"),
        }
        engine.client().unwrap();
        assert!(!format!("{engine:?}").contains("VnVhQ2ZHY0JDZGJrUW0"));
    }

    #[test]
    fn an_api_key_with_a_password_or_not_encoded_is_refused() {
        let both = parse(&[
            "--elasticsearch-api-key",
            "a2V5",
            "--elasticsearch-username",
            "citypop",
            "--elasticsearch-password",
            "s3cret-pw",
        ])
        .unwrap();
        let error = both.client().unwrap_err().to_string();
        assert!(error.contains("set one kind of credential"), "{error}");
        for raw in ["id:key", "a2V5\n", "a2V5 a2V5"] {
            let engine = parse(&["--elasticsearch-api-key", raw]).unwrap();
            let error = engine.client().unwrap_err().to_string();
            assert!(error.contains("not a base64 encoded API key"), "{error}");
            assert!(!error.contains(raw), "the key shows in {error}");
        }
        // Empty counts as unset.
        let engine = parse(&["--elasticsearch-api-key", ""]).unwrap();
        assert!(engine.credentials().unwrap().is_none());
    }

    /// The headers every request carries decide which engines accept the client:
    /// OpenSearch refuses Elasticsearch's versioned media type
    /// (`application/vnd.elasticsearch+json; compatible-with=…`) with 406. This
    /// checks what the client really sends, so an upgrade that changes it fails here.
    #[tokio::test]
    async fn requests_carry_plain_json_headers_that_both_engines_accept() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buffer).await.unwrap();
                assert!(n > 0, "the client closed before its headers ended");
                request.extend_from_slice(&buffer[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                .await
                .unwrap();
            String::from_utf8(request).unwrap().to_ascii_lowercase()
        });
        let engine = parse(&["--elasticsearch-url", &url]).unwrap();
        let client = engine.client().unwrap();
        client
            .index(elasticsearch::IndexParts::IndexId("cities", "paris"))
            .body(serde_json::json!({"name": "Paris"}))
            .send()
            .await
            .unwrap();
        let request = server.await.unwrap();
        assert!(
            request.contains("\r\ncontent-type: application/json\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\naccept: application/json\r\n"),
            "{request}"
        );
        assert!(!request.contains("compatible-with"), "{request}");
        assert!(!request.contains("vnd.elasticsearch"), "{request}");
    }

    #[test]
    fn a_ca_file_is_trusted_over_https() {
        let ca = write_temp("ca.pem", TEST_CA);
        let engine = parse(&[
            "--elasticsearch-url",
            "https://citypop-es-http.citypop.svc:9200",
            "--elasticsearch-ca-file",
            ca.to_str().unwrap(),
        ])
        .unwrap();
        assert!(matches!(
            engine.certificate_validation().unwrap(),
            Some(CertificateValidation::Full(_))
        ));
        engine.client().unwrap();
        std::fs::remove_file(ca).unwrap();
    }

    #[test]
    fn a_ca_file_that_cannot_serve_is_refused() {
        let https = "https://127.0.0.1:9200";
        let missing = parse(&[
            "--elasticsearch-url",
            https,
            "--elasticsearch-ca-file",
            "/nonexistent/ca.pem",
        ])
        .unwrap();
        let error = format!("{:#}", missing.client().unwrap_err());
        assert!(
            error.starts_with("reading CITYPOP_ELASTICSEARCH_CA_FILE /nonexistent/ca.pem"),
            "{error}"
        );

        let not_pem = write_temp("not-a-ca.pem", "not a certificate\n");
        let engine = parse(&[
            "--elasticsearch-url",
            https,
            "--elasticsearch-ca-file",
            not_pem.to_str().unwrap(),
        ])
        .unwrap();
        let error = format!("{:#}", engine.client().unwrap_err());
        assert!(error.contains("could not find PEM certificate"), "{error}");
        std::fs::remove_file(not_pem).unwrap();

        let corrupt = write_temp(
            "corrupt-ca.pem",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        );
        let engine = parse(&[
            "--elasticsearch-url",
            https,
            "--elasticsearch-ca-file",
            corrupt.to_str().unwrap(),
        ])
        .unwrap();
        let error = format!("{:#}", engine.client().unwrap_err());
        assert!(
            error.starts_with("building the search engine client"),
            "{error}"
        );
        std::fs::remove_file(corrupt).unwrap();

        let plain_http = parse(&["--elasticsearch-ca-file", "/nonexistent/ca.pem"]).unwrap();
        let error = plain_http.client().unwrap_err().to_string();
        assert_eq!(
            error,
            "CITYPOP_ELASTICSEARCH_CA_FILE is set but CITYPOP_ELASTICSEARCH_URL http://127.0.0.1:9200/ is not https"
        );
    }
}
