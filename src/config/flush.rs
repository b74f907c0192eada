//! The write buffer's settings that other modules read as types.

/// When a write buffer with nothing uploading flushes (`flush_idle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushIdle {
    /// At once, with whatever requests are already queued: the lowest latency, at the
    /// price of one PUT per produce request (or per group of concurrent ones) when load
    /// is a trickle.
    #[default]
    Immediate,
    /// After `flush_interval`, like under load: at most one PUT per interval.
    Interval,
}

impl std::str::FromStr for FlushIdle {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "immediate" => Ok(Self::Immediate),
            "interval" => Ok(Self::Interval),
            _ => Err(()),
        }
    }
}
