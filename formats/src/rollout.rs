//! Staged rollout without a server (SPEC §7).
//!
//! A release with `rollout = P` is taken by a host when the host's bucket for
//! that release is below `P`. The bucket is a stable hash of the host's
//! machine id and the release id, so a host decides the same way on every
//! poll, and different releases reach different first hosts.

use sha2::{Digest, Sha256};

use crate::id::ReleaseId;

/// The host's bucket for this release, in 0..10000 (hundredths of a percent).
pub fn bucket(machine_id: &str, release: &ReleaseId) -> u32 {
    let mut h = Sha256::new();
    h.update(b"slipway-rollout\n");
    h.update(machine_id.trim().as_bytes());
    h.update(b"\n");
    h.update(release.digest());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % 10_000) as u32
}

/// Whether a host with this machine id takes a release rolled out to
/// `percent` of hosts. Canary hosts take every release.
pub fn takes_release(machine_id: &str, release: &ReleaseId, percent: u8, canary: bool) -> bool {
    canary || bucket(machine_id, release) < u32::from(percent.min(100)) * 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_the_right_share_and_stable() {
        let id = ReleaseId::of_bytes(b"release");
        let taken = (0..1000)
            .filter(|i| takes_release(&format!("{i:032x}"), &id, 30, false))
            .count();
        assert!((240..=360).contains(&taken), "took {taken} of 1000");
        for i in 0..100 {
            let m = format!("{i:032x}");
            assert_eq!(
                takes_release(&m, &id, 30, false),
                takes_release(&m, &id, 30, false)
            );
        }
        assert!(takes_release("x", &id, 0, true));
        assert!(!takes_release("x", &id, 0, false));
        assert!(takes_release("x", &id, 100, false));
    }
}
