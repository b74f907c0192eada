//! The JWKS file OAUTHBEARER tokens are checked against, re-read when it changes on
//! disk (key rotation without a restart), like the TLS certificate (`tls`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use crate::reload::Reloading;
#[cfg(test)]
use crate::reload::RELOAD_CHECK_EVERY;

use crate::security::oauth::{JwtSettings, JwtValidator, MAX_JWKS_BYTES};

pub struct JwksFile {
    path: PathBuf,
    settings: JwtSettings,
    current: Reloading<JwtValidator>,
}

impl fmt::Debug for JwksFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksFile")
            .field("path", &self.path)
            .field("settings", &self.settings)
            .finish()
    }
}

impl JwksFile {
    /// Reads and checks the file; the error is one line naming what is wrong.
    pub fn load(path: PathBuf, settings: JwtSettings) -> Result<Self, String> {
        let current = Reloading::load(vec![path.clone()], || read(&path, &settings))?;
        Ok(Self {
            path,
            settings,
            current,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys for a new authentication, after looking for a changed file. A file
    /// that fails to load keeps the old keys.
    pub fn current(&self) -> Arc<JwtValidator> {
        self.reload_if_changed(Instant::now());
        self.current.get()
    }

    fn reload_if_changed(&self, now: Instant) {
        match self
            .current
            .reload_if_changed(now, || read(&self.path, &self.settings))
        {
            Some(Ok(())) => info!(
                path = %self.path.display(),
                keys = self.current.get().key_count(),
                "OAUTHBEARER JWKS reloaded"
            ),
            Some(Err(e)) => warn!(
                error = %e,
                "OAUTHBEARER JWKS file changed but cannot be used; keeping the previous keys"
            ),
            None => {}
        }
    }
}

fn read(path: &Path, settings: &JwtSettings) -> Result<Arc<JwtValidator>, String> {
    let shown = path.display();
    let too_big = || format!("{shown} is larger than 1 MiB");
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if meta.len() > MAX_JWKS_BYTES as u64 {
        return Err(too_big());
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    JwtValidator::from_jwks(&bytes, settings.clone())
        .map(Arc::new)
        .map_err(|e| format!("{shown} is not a usable JWKS: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn a_bad_new_file_keeps_the_old_keys() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("jwks.json");
        let one = r#"{"keys":[{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"}]}"#;
        let two = r#"{"keys":[{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"},{"kty":"RSA","kid":"b","n":"AQAB","e":"AQAB"}]}"#;
        std::fs::write(&path, one)?;
        let file = JwksFile::load(path.clone(), JwtSettings::default())?;
        assert_eq!(file.current().key_count(), 1);
        std::fs::write(&path, "not json, and longer than before")?;
        file.reload_if_changed(Instant::now() + RELOAD_CHECK_EVERY * 2);
        assert_eq!(file.current().key_count(), 1);
        std::fs::write(&path, two)?;
        file.reload_if_changed(Instant::now() + RELOAD_CHECK_EVERY * 4);
        assert_eq!(file.current.get().key_count(), 2);
        assert!(JwksFile::load(dir.path().join("missing"), JwtSettings::default()).is_err());
        Ok(())
    }
}
