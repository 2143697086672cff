//! Pure decision functions, run by the XDP program and by userspace tests alike.

use crate::{BanValue, BAN_PERMANENT};

/// Whether a ban still blocks now. `now_s` gives CLOCK_BOOTTIME seconds and is only called for
/// temporary bans, so a permanent ban costs no clock read. A ban blocks up to and excluding its
/// expiry second, so an expired entry stops blocking before anything removes it.
#[inline(always)]
pub fn ban_is_active(ban: &BanValue, now_s: impl FnOnce() -> u32) -> bool {
    ban.expires_at_s == BAN_PERMANENT || now_s() < ban.expires_at_s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_ban_never_expires() {
        let ban = BanValue {
            expires_at_s: BAN_PERMANENT,
        };
        assert!(ban_is_active(&ban, || panic!(
            "a permanent ban must not read the clock"
        )));
    }

    #[test]
    fn temporary_ban_stops_at_its_expiry() {
        let ban = BanValue { expires_at_s: 100 };
        assert!(ban_is_active(&ban, || 99));
        assert!(!ban_is_active(&ban, || 100));
        assert!(!ban_is_active(&ban, || 101));
    }
}
