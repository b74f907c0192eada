//! Telemetry: where metrics and health are served, and how logs are written.

use std::net::SocketAddr;

use super::{ConfigError, FileConfig, ListenerConfig};
use crate::cli::ServeArgs;
use crate::telemetry::logs::LogFormat;

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `metrics_listen`: where `/metrics`, `/health` and `/ready` are served; None:
    /// nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// `log_format`: text or json.
    pub log_format: LogFormat,
}

impl TelemetryConfig {
    /// The metrics address must not be the Kafka listener's.
    pub fn load(
        args: &ServeArgs,
        file: &FileConfig,
        listener: &ListenerConfig,
    ) -> Result<Self, ConfigError> {
        // Fixed default and name: deployment files (compose, terraform) rely on them.
        let metrics_text = args
            .metrics_listen
            .clone()
            .or(file.metrics_listen.clone())
            .unwrap_or_else(|| "127.0.0.1:9644".into());
        let metrics_listen = match metrics_text.trim() {
            "none" => None,
            text => Some(text.parse().map_err(|_| ConfigError::Invalid {
                key: "metrics_listen",
                value: metrics_text.clone(),
                hint: "use HOST:PORT with a numeric IP, e.g. 0.0.0.0:9644, or none to turn metrics off",
            })?),
        };
        if metrics_listen == Some(listener.listen()) {
            return Err(ConfigError::Invalid {
                key: "metrics_listen",
                value: metrics_text,
                hint: "use a port other than the Kafka listener's",
            });
        }
        let log_format_text = args
            .log_format
            .clone()
            .or(file.log_format.clone())
            .unwrap_or_else(|| "text".into());
        let log_format = log_format_text.parse().map_err(|()| ConfigError::Invalid {
            key: "log_format",
            value: log_format_text.clone(),
            hint: "use text or json",
        })?;
        Ok(Self {
            metrics_listen,
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::ServeArgs;
    use crate::config::Config;

    #[test]
    fn metrics_and_log_settings() {
        use crate::telemetry::logs::LogFormat;
        let c = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(
            c.telemetry.metrics_listen,
            Some("127.0.0.1:9644".parse().unwrap())
        );
        assert_eq!(c.telemetry.log_format, LogFormat::Text);
        let c = Config::load(&ServeArgs {
            metrics_listen: Some("none".into()),
            log_format: Some("json".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (c.telemetry.metrics_listen, c.telemetry.log_format),
            (None, LogFormat::Json)
        );
        let refused = |args: ServeArgs| Config::load(&args).unwrap_err().to_string();
        let e = refused(ServeArgs {
            metrics_listen: Some("localhost".into()),
            ..Default::default()
        });
        assert!(
            e.starts_with("metrics_listen = \"localhost\" is not valid"),
            "{e}"
        );
        let e = refused(ServeArgs {
            metrics_listen: Some("127.0.0.1:9092".into()),
            ..Default::default()
        });
        assert!(e.contains("other than the Kafka listener's"), "{e}");
        let e = refused(ServeArgs {
            log_format: Some("xml".into()),
            ..Default::default()
        });
        assert!(
            e.starts_with("log_format = \"xml\" is not valid: use text or json"),
            "{e}"
        );
    }
}
