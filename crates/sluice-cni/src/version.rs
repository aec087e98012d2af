//! The protocol versions this plugin speaks.

/// What VERSION reports, oldest first.
pub const SUPPORTED: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest: used for errors when the input names no supported version.
pub const LATEST: &str = "1.1.0";

/// A supported `cniVersion`. Ordered: later versions compare greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        Some(match s {
            "0.3.1" => Version::V0_3_1,
            "0.4.0" => Version::V0_4_0,
            "1.0.0" => Version::V1_0_0,
            "1.1.0" => Version::V1_1_0,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Results before 1.0.0 give each IP a `"version": "4"|"6"`.
    pub fn ips_carry_version(self) -> bool {
        self < Version::V1_0_0
    }

    /// 1.1.0 added the interface `mtu` and route `scope` (and more) to results.
    pub fn has_mtu_and_scope(self) -> bool {
        self >= Version::V1_1_0
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_parses_back() {
        for s in SUPPORTED {
            assert_eq!(Version::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(Version::parse(LATEST), Some(Version::V1_1_0));
        for bad in ["0.1.0", "0.2.0", "0.3.0", "1.0", "1.2.0", "", " 1.0.0", "v1.0.0"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
        assert!(Version::V0_3_1 < Version::V0_4_0 && Version::V1_0_0 < Version::V1_1_0);
    }
}
