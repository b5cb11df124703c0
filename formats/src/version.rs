//! Release versions: semantic versions `X.Y.Z` with an optional pre-release,
//! ordered by semver precedence. Tags are `vX.Y.Z`.
//!
//! Build metadata (`+...`) is refused: semver ignores it for precedence, so two
//! releases differing only in it would be neither newer nor older than each
//! other, and "newer than the running one" must always have an answer.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// A release version.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Version(semver::Version);

/// Why a string is not a release version.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum VersionError {
    #[error("{input:?} is not a version: {reason} (expected X.Y.Z, e.g. 1.4.0 or 1.4.0-rc.1)")]
    Invalid { input: String, reason: String },
    #[error("{0:?} has build metadata ('+...'), which has no order; drop it")]
    BuildMetadata(String),
    #[error("tag {0:?} is not of the form vX.Y.Z")]
    Tag(String),
}

impl Version {
    /// Builds a plain release version.
    pub fn new(major: u64, minor: u64, patch: u64) -> Self {
        Version(semver::Version::new(major, minor, patch))
    }

    /// Parses a git tag `vX.Y.Z` (the CI convention).
    pub fn from_tag(tag: &str) -> Result<Self, VersionError> {
        let rest = tag
            .strip_prefix('v')
            .ok_or_else(|| VersionError::Tag(tag.to_string()))?;
        rest.parse().map_err(|_| VersionError::Tag(tag.to_string()))
    }

    /// Whether this is a pre-release (`1.0.0-rc.1`).
    pub fn is_prerelease(&self) -> bool {
        !self.0.pre.is_empty()
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let v = semver::Version::parse(input).map_err(|e| VersionError::Invalid {
            input: input.to_string(),
            reason: e.to_string(),
        })?;
        if !v.build.is_empty() {
            return Err(VersionError::BuildMetadata(input.to_string()));
        }
        Ok(Version(v))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp_precedence(&other.0)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({})", self.0)
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        s.parse().expect("test version")
    }

    #[test]
    fn orders_by_semver_precedence() {
        assert!(v("1.10.0") > v("1.9.9"));
        assert!(v("2.0.0") > v("2.0.0-rc.2"));
        assert!(v("2.0.0-rc.10") > v("2.0.0-rc.2"));
        assert!(v("2.0.0-alpha") < v("2.0.0-alpha.1"));
        assert_eq!(v("1.2.3"), v("1.2.3"));
    }

    #[test]
    fn parses_tags_and_refuses_junk() {
        assert_eq!(Version::from_tag("v1.4.0"), Ok(v("1.4.0")));
        assert!(Version::from_tag("1.4.0").is_err());
        assert!(Version::from_tag("v1.4").is_err());
        assert!(matches!(
            "1.0.0+build.5".parse::<Version>(),
            Err(VersionError::BuildMetadata(_))
        ));
        for bad in ["", "1", "1.2", "v1.2.3", "01.2.3", "1.2.3 ", "1.2.3-"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn order_matches_numeric_triples(a in (0u64..50, 0u64..50, 0u64..50), b in (0u64..50, 0u64..50, 0u64..50)) {
            let va = Version::new(a.0, a.1, a.2);
            let vb = Version::new(b.0, b.1, b.2);
            prop_assert_eq!(va.cmp(&vb), a.cmp(&b));
            let round: Version = va.to_string().parse().expect("round trip");
            prop_assert_eq!(round, va);
        }
    }
}
