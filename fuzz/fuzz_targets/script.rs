//! The scripted input both session targets read: bytes taken one at a
//! time, and the values a hostile peer would pick from them. Included by
//! `secondary_session.rs` and `primary_session.rs` (`#[path]`).

/// The volume both session targets run against.
pub const VOLUME_BYTES: u64 = 1 << 20;

pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    pub fn u16(&mut self) -> Option<u64> {
        Some(u64::from(self.u8()?) | u64::from(self.u8()?) << 8)
    }

    /// An offset or length: mostly small and aligned, sometimes huge.
    pub fn extent(&mut self) -> Option<u64> {
        Some(match self.u8()? {
            0 => u64::MAX - self.u16()?,
            1 => VOLUME_BYTES - self.u16()?,
            _ => self.u16()? * 512 % (VOLUME_BYTES + 4096),
        })
    }

    /// The BLAKE3 of `data`, sometimes with a bit flipped.
    #[allow(dead_code)] // primary_session does not send data
    pub fn digest(&mut self, data: &[u8]) -> Option<[u8; 32]> {
        let mut d = *blake3::hash(data).as_bytes();
        if self.u8()? == 0 {
            d[0] ^= 1;
        }
        Some(d)
    }

    /// An LSN or sequence number near `at`, or far from it.
    #[allow(dead_code)] // secondary_session picks its own
    pub fn near(&mut self, at: u64) -> Option<u64> {
        Some(match self.u8()? % 8 {
            0 => u64::MAX - self.u16()?,
            1 => at + self.u16()?,
            2 => 0,
            _ => at.saturating_sub(u64::from(self.u8()? % 4)),
        })
    }
}
