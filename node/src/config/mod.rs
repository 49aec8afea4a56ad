//! Config loading: TOML text -> typed [`Config`] -> validated, with every
//! problem reported as `FILE:LINE:COL: KEY: MESSAGE`.

mod addr;
mod duration;
mod schema;
mod source;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use addr::{HostPort, IpCidr};
pub use duration::Dur;
pub use schema::*;
pub use source::{KeyPath, LineCol};

use source::SourceMap;

/// One located problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub at: Option<LineCol>,
    /// The key concerned, e.g. `pool[0].backend[1].weight`.
    pub key: String,
    pub message: String,
    /// The offending source line, for context.
    pub line_text: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(origin, problems))]
    Invalid { origin: String, problems: Vec<Located> },
}

impl ConfigError {
    pub fn problems(&self) -> &[Located] {
        match self {
            Self::Read { .. } => &[],
            Self::Invalid { problems, .. } => problems,
        }
    }
}

fn render(origin: &str, problems: &[Located]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(origin);
        if let Some(at) = p.at {
            out.push_str(&format!(":{}:{}", at.line, at.col));
        }
        out.push_str(": ");
        if !p.key.is_empty() {
            out.push_str(&p.key);
            out.push_str(": ");
        }
        out.push_str(&p.message);
        if let (Some(at), Some(text)) = (p.at, &p.line_text) {
            out.push_str(&format!("\n  {:>4} | {}", at.line, text));
        }
    }
    out
}

/// Reads, parses and validates the config at `path`. Relative file paths
/// inside it are resolved against the config file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let mut config = parse(&text, &path.display().to_string(), base_dir)?;
    resolve_paths(&mut config, base_dir);
    Ok(config)
}

/// Parses and validates config `text`; `origin` names it in messages.
pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    let map = SourceMap::new(text);
    let config: Config = toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| map.line_col(s.start));
        let key = e.span().map(|s| map.path_at(s.start).to_string()).unwrap_or_default();
        ConfigError::Invalid {
            origin: origin.to_string(),
            problems: vec![Located {
                at,
                key,
                message: e.message().trim().to_string(),
                line_text: at.and_then(|at| map.line_text(at.line)).map(str::to_string),
            }],
        }
    })?;
    let problems = validate::validate(&config, base_dir);
    if problems.is_empty() {
        return Ok(config);
    }
    let problems = problems
        .into_iter()
        .map(|p| {
            let at = map.span_of(&p.path).map(|s| map.line_col(s.start));
            Located {
                at,
                key: p.path.to_string(),
                message: p.message,
                line_text: at.and_then(|at| map.line_text(at.line)).map(str::to_string),
            }
        })
        .collect();
    Err(ConfigError::Invalid {
        origin: origin.to_string(),
        problems,
    })
}

fn resolve_paths(config: &mut Config, base_dir: &Path) {
    if let Some(t) = &mut config.node.admin_token_file {
        *t = base_dir.join(&*t);
    }
    for l in &mut config.listeners {
        if let Some(tls) = &mut l.tls {
            tls.cert = base_dir.join(&tls.cert);
            tls.key = base_dir.join(&tls.key);
        }
    }

    if let Some(cluster) = &mut config.cluster {
        if let Some(tls) = &mut cluster.tls {
            for p in [&mut tls.ca, &mut tls.cert, &mut tls.key] {
                *p = base_dir.join(&*p);
            }
        }
        if let Some(k) = &mut cluster.gossip_key_file {
            *k = base_dir.join(&*k);
        }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some(at) => write!(f, "line {}: {}: {}", at.line, self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

#[cfg(test)]
mod tests;
