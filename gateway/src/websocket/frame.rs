//! WebSocket frames (RFC 6455 section 5): the header of a client frame parsed
//! and checked, and the header of a server frame encoded.
//!
//! Server frames are never masked, so a frame's bytes are its header (2 to 10
//! bytes, the same for every connection) and its payload, which is written
//! from the shared buffer it was encoded into once.

/// Frame opcodes (RFC 6455 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(b: u8) -> Option<Opcode> {
        Some(match b {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    pub(crate) fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Why a client's bytes are not a WebSocket frame this server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Against RFC 6455: the reason.
    Protocol(&'static str),
    /// A frame or message over the size limit.
    TooBig,
}

/// A parsed client frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) fin: bool,
    pub(crate) opcode: Opcode,
    pub(crate) mask: [u8; 4],
    /// Payload length.
    pub(crate) len: usize,
    /// Header length (where the payload starts).
    pub(crate) head: usize,
}

/// Largest payload of a control frame (RFC 6455 5.5).
const MAX_CONTROL: usize = 125;

/// Parse a client frame's header from the start of `buf`: `Ok(None)` while
/// the header is incomplete. `max` bounds a data frame's payload length
/// (checked before any of the payload is buffered).
pub(crate) fn parse(buf: &[u8], max: usize) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        // No extension was negotiated, so no reserved bit may be set.
        return Err(FrameError::Protocol("reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("client frame not masked"));
    }
    let (len, at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                let n = u64::from_be_bytes(n);
                if n >> 63 != 0 {
                    return Err(FrameError::Protocol("payload length's high bit set"));
                }
                (n, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode.is_control() {
        if !fin {
            return Err(FrameError::Protocol("fragmented control frame"));
        }
        if len > MAX_CONTROL as u64 {
            return Err(FrameError::Protocol("control frame over 125 bytes"));
        }
    }
    // The limit is a data message's; a control frame's is its own (125).
    if !opcode.is_control() && len > max as u64 {
        return Err(FrameError::TooBig);
    }
    let Some(m) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask: [m[0], m[1], m[2], m[3]],
        len: len as usize,
        head: at + 4,
    }))
}

/// Copy a masked payload out, unmasked.
pub(crate) fn unmask(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = payload.to_vec();
    // Four bytes at a time: the mask repeats every four.
    let key = u32::from_ne_bytes(mask);
    let mut chunks = out.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ key;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
    out
}

/// A server frame's header: final, unmasked. Returns the bytes and how many
/// of them are used.
pub(crate) fn encode_header(opcode: Opcode, len: usize) -> ([u8; 10], u8) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode.bits();
    let used = if len < 126 {
        h[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (h, used)
}

/// Whether a close code may appear in a close frame (RFC 6455 7.4): the
/// defined codes that are not reserved for local use, and 3000-4999.
pub(crate) fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A client frame as a client writes it (masked with `mask`); `b0` is the
/// first byte (FIN, RSV, opcode). For tests.
#[cfg(test)]
pub(crate) fn masked(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![b0];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 65535 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_length_form_and_unmasks() {
        for n in [0usize, 1, 5, 125, 126, 127, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let f = masked(0x81, &payload, [1, 2, 3, 4]);
            let h = parse(&f, 1 << 20).unwrap().unwrap();
            assert_eq!((h.fin, h.opcode, h.len), (true, Opcode::Text, n));
            assert_eq!(h.head + h.len, f.len());
            assert_eq!(unmask(&f[h.head..], h.mask), payload);
            // Every strict prefix of the header is incomplete, not an error.
            for cut in 0..h.head {
                assert_eq!(parse(&f[..cut], 1 << 20), Ok(None), "n={n} cut={cut}");
            }
        }
    }

    #[test]
    fn refuses_what_rfc_6455_forbids() {
        let p = |b0: u8, b1: u8| parse(&[b0, b1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 1 << 20);
        assert_eq!(
            p(0x81, 0x05),
            Err(FrameError::Protocol("client frame not masked"))
        );
        assert_eq!(
            p(0xC1, 0x85),
            Err(FrameError::Protocol("reserved bits set"))
        );
        assert_eq!(p(0x83, 0x85), Err(FrameError::Protocol("unknown opcode")));
        assert_eq!(
            p(0x09, 0x85),
            Err(FrameError::Protocol("fragmented control frame"))
        );
        let long_ping = [0x89, 0x80 | 126, 0, 200, 1, 2, 3, 4];
        assert_eq!(
            parse(&long_ping, 1 << 20),
            Err(FrameError::Protocol("control frame over 125 bytes"))
        );
        let huge = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(
            parse(&huge, 1 << 20),
            Err(FrameError::Protocol("payload length's high bit set"))
        );
        // Over the limit as soon as the length is known, before the payload.
        assert_eq!(
            parse(&[0x81, 0x80 | 126, 0x04, 0x01], 1024),
            Err(FrameError::TooBig)
        );
    }

    #[test]
    fn encodes_server_headers() {
        assert_eq!(
            encode_header(Opcode::Text, 5),
            ([0x81, 5, 0, 0, 0, 0, 0, 0, 0, 0], 2)
        );
        let (h, n) = encode_header(Opcode::Text, 300);
        assert_eq!(&h[..n as usize], &[0x81, 126, 0x01, 0x2C]);
        let (h, n) = encode_header(Opcode::Close, 70000);
        assert_eq!(&h[..n as usize], &[0x88, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn close_codes() {
        for ok in [1000, 1001, 1002, 1003, 1007, 1011, 3000, 4000, 4999] {
            assert!(valid_close_code(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(!valid_close_code(bad), "{bad}");
        }
    }
}
