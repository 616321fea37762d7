//! The bearer token of `[api] token_file`: read at start (an unreadable file
//! is an error then) and again after every config reload, trimmed, compared
//! in constant time, never logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use axum::http::HeaderMap;

use super::error::HttpError;
use crate::model::Config;

/// Why the token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the API token file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the API token file {} is empty", path.display())]
    Empty { path: PathBuf },
}

/// A token; its `Debug` shows nothing of it.
struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug)]
enum Policy {
    /// No `token_file`: writes are open.
    Open,
    Token(Secret),
    /// A reload named a token file that cannot be read and no token was in
    /// force before: writes are refused until it can be read.
    Unreadable(String),
}

#[derive(Debug)]
struct Inner {
    /// The config the policy was read for; another one means a reload happened.
    config: Weak<Config>,
    policy: Policy,
}

/// The token policy in force; re-read when the gateway's config is replaced.
#[derive(Debug)]
pub struct Tokens {
    inner: Mutex<Inner>,
}

/// Reads and trims a token file.
fn read(path: &Path) -> Result<Secret, TokenError> {
    let bytes = std::fs::read(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let token = bytes.trim_ascii();
    if token.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(Secret(token.to_vec()))
}

/// Equal contents, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

impl Tokens {
    /// Reads the token file named by the config, if any.
    pub fn load(path: Option<&Path>) -> Result<Tokens, TokenError> {
        let policy = match path {
            None => Policy::Open,
            Some(p) => Policy::Token(read(p)?),
        };
        Ok(Tokens {
            inner: Mutex::new(Inner {
                config: Weak::new(),
                policy,
            }),
        })
    }

    /// Records that the policy in force was read for `config`.
    pub fn bind_config(&self, config: &Arc<Config>) {
        self.lock().config = Arc::downgrade(config);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the token file if the config was replaced since the last look.
    fn refresh(&self, inner: &mut Inner, config: &Arc<Config>) {
        if std::ptr::eq(inner.config.as_ptr(), Arc::as_ptr(config)) {
            return;
        }
        inner.config = Arc::downgrade(config);
        match config.api.token_file.as_deref() {
            None => {
                if !matches!(inner.policy, Policy::Open) {
                    tracing::warn!("config reloaded without [api] token_file: writes through the API need no token now");
                }
                inner.policy = Policy::Open;
            }
            Some(path) => match read(path) {
                Ok(secret) => {
                    inner.policy = Policy::Token(secret);
                    tracing::info!(path = %path.display(), "API token read");
                }
                Err(e) => match inner.policy {
                    Policy::Token(_) => {
                        tracing::error!(error = %e, "the previous API token stays in force");
                    }
                    _ => {
                        tracing::error!(error = %e, "writes through the API are refused until the token file can be read");
                        inner.policy = Policy::Unreadable(e.to_string());
                    }
                },
            },
        }
    }

    /// Whether writes need a token under `config`.
    pub fn required(&self, config: &Arc<Config>) -> bool {
        let mut inner = self.lock();
        self.refresh(&mut inner, config);
        !matches!(inner.policy, Policy::Open)
    }

    /// Lets a PUT/POST through, or answers 401 (503 if the token file named
    /// by a reloaded config cannot be read).
    pub fn authorize(&self, config: &Arc<Config>, headers: &HeaderMap) -> Result<(), HttpError> {
        let mut inner = self.lock();
        self.refresh(&mut inner, config);
        let secret = match &inner.policy {
            Policy::Open => return Ok(()),
            Policy::Unreadable(why) => {
                return Err(HttpError::unavailable(format!("writes are refused: {why}")))
            }
            Policy::Token(secret) => secret,
        };
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(HttpError::unauthorized(
                "this request needs \"Authorization: Bearer <token>\"",
            ));
        };
        let given = value.as_bytes();
        let token = match given.split_first_chunk::<7>() {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest.trim_ascii(),
            _ => {
                return Err(HttpError::unauthorized(
                    "the Authorization header must be \"Bearer <token>\"",
                ))
            }
        };
        if constant_time_eq(token, &secret.0) {
            Ok(())
        } else {
            Err(HttpError::unauthorized("wrong token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn token_files_are_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "  s3cret\n").unwrap();
        assert_eq!(read(&p).unwrap().0, b"s3cret");
        std::fs::write(&p, " \n").unwrap();
        assert!(matches!(read(&p), Err(TokenError::Empty { .. })));
        let missing = dir.path().join("missing");
        let e = Tokens::load(Some(&missing)).unwrap_err();
        assert!(
            e.to_string().contains("cannot read the API token file"),
            "{e}"
        );
        std::fs::write(&p, "s3cret").unwrap();
        let t = Tokens::load(Some(&p)).unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
