//! Test doubles shared by the library's unit tests.

/// A seeded xorshift64 generator: the same sequence on every run, so that a randomised test that
/// fails fails again, with no dependency for it.
pub(crate) struct Xorshift(u64);

impl Xorshift {
    /// A generator starting from `seed` (not 0: xorshift stays at 0).
    pub(crate) fn new(seed: u64) -> Xorshift {
        assert_ne!(seed, 0, "xorshift needs a seed other than 0");
        Xorshift(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (not 0), from the next 64 bits.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
