//! The event loop's tokens: an enum, packed into mio's `usize`.

use mio::Token;

/// What a readiness event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tok {
    /// The control socket's listener.
    Listener,
    /// The cross-thread waker: stop requests, and the binder worker's
    /// results.
    Waker,
    /// The signalfd (SIGTERM, SIGINT, SIGHUP).
    Signal,
    /// The relay's trigger watch (`relay::TriggerWatch`): completions to
    /// reap.
    Watch,
    /// A client connection, by slot.
    Conn(usize),
    /// A relay route's VFIO trigger eventfd, by device slot.
    Trigger(usize),
    /// A relay route's VMM resample eventfd, by device slot.
    Resample(usize),
    /// A device's request eventfd (it is going away), by device slot.
    Request(usize),
}

impl Tok {
    /// Packs into a mio token.
    pub fn token(self) -> Token {
        Token(match self {
            Tok::Listener => 0,
            Tok::Waker => 1,
            Tok::Signal => 2,
            Tok::Watch => 7,
            Tok::Conn(i) => (i << 3) | 3,
            Tok::Trigger(i) => (i << 3) | 4,
            Tok::Resample(i) => (i << 3) | 5,
            Tok::Request(i) => (i << 3) | 6,
        })
    }

    /// Unpacks a mio token; `None` for a value no source was given.
    pub fn from_token(t: Token) -> Option<Tok> {
        let (i, kind) = (t.0 >> 3, t.0 & 7);
        Some(match (t.0, kind) {
            (0, _) => Tok::Listener,
            (1, _) => Tok::Waker,
            (2, _) => Tok::Signal,
            (7, _) => Tok::Watch,
            (_, 3) => Tok::Conn(i),
            (_, 4) => Tok::Trigger(i),
            (_, 5) => Tok::Resample(i),
            (_, 6) => Tok::Request(i),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for t in [
            Tok::Listener,
            Tok::Waker,
            Tok::Signal,
            Tok::Watch,
            Tok::Conn(0),
            Tok::Conn(77),
            Tok::Trigger(0),
            Tok::Trigger(255),
            Tok::Resample(3),
            Tok::Request(9),
        ] {
            assert_eq!(Tok::from_token(t.token()), Some(t));
        }
        assert_eq!(Tok::from_token(Token(15)), None);
    }
}
