//! Node identity: the name a node carries in its config, in gossip and in its
//! certificate. One rule for all three, so a name valid in a config is always
//! usable as a certificate subject and a gossip key.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest node id accepted: a DNS label, so it fits certificate names.
pub const MAX_NODE_ID_LEN: usize = 63;

/// A validated node id: 1–63 characters of `a-z`, `0-9`, `-`, `_`, starting
/// with a letter and not ending with `-` or `_`, so it is always a valid DNS
/// name for a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("node id is empty")]
    Empty,
    #[error("node id is {0} characters long; at most {MAX_NODE_ID_LEN} are allowed")]
    TooLong(usize),
    #[error("node id must start with a lowercase letter, not {0:?}")]
    BadStart(char),
    #[error("node id must not end with {0:?}")]
    BadEnd(char),
    #[error("node id may contain only a-z, 0-9, '-' and '_', found {0:?}")]
    BadChar(char),
}

impl NodeId {
    pub fn new(id: impl Into<String>) -> Result<Self, NodeIdError> {
        let id = id.into();
        validate(&id)?;
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(id: &str) -> Result<(), NodeIdError> {
    let mut chars = id.chars();
    let first = chars.next().ok_or(NodeIdError::Empty)?;
    let len = id.chars().count();
    if len > MAX_NODE_ID_LEN {
        return Err(NodeIdError::TooLong(len));
    }
    if !first.is_ascii_lowercase() {
        return Err(NodeIdError::BadStart(first));
    }
    if let Some(last @ ('-' | '_')) = id.chars().last() {
        return Err(NodeIdError::BadEnd(last));
    }
    match chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')) {
        Some(bad) => Err(NodeIdError::BadChar(bad)),
        None => Ok(()),
    }
}

impl TryFrom<String> for NodeId {
    type Error = NodeIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_ids() {
        for id in ["lb1", "edge-a", "a", "a_b-c9"] {
            assert_eq!(NodeId::new(id).map(|n| n.to_string()), Ok(id.to_string()));
        }
    }

    #[test]
    fn rejects_bad_ids_with_reason() {
        assert_eq!(NodeId::new(""), Err(NodeIdError::Empty));
        assert_eq!(NodeId::new("-lb"), Err(NodeIdError::BadStart('-')));
        assert_eq!(NodeId::new("Lb1"), Err(NodeIdError::BadStart('L')));
        assert_eq!(NodeId::new("1"), Err(NodeIdError::BadStart('1')));
        assert_eq!(NodeId::new("lb-"), Err(NodeIdError::BadEnd('-')));
        assert_eq!(NodeId::new("lb 1"), Err(NodeIdError::BadChar(' ')));
        assert_eq!(NodeId::new("lb.1"), Err(NodeIdError::BadChar('.')));
        assert_eq!(NodeId::new("a".repeat(64)), Err(NodeIdError::TooLong(64)));
        assert!(NodeId::new("a".repeat(63)).is_ok());
    }
}
