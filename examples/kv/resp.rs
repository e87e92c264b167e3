//! RESP2, sans-IO: the request parser (multibulk as clients send it, and
//! inline commands as typed into a terminal or sent by `redis-benchmark`'s
//! `PING_INLINE`) and the reply encoders.
//!
//! [`Parser::parse`] looks at the front of the connection's input and
//! says: a whole command of `n` bytes is there (its arguments point into
//! the input, or for an inline command into the parser's own unescaped
//! copy), more bytes are needed, or the input is not RESP. It keeps no
//! state between calls: a command that arrived in part is parsed again
//! from its start when more bytes come, and every length it declares is
//! checked against [`MAX_REQUEST`] before it is waited for, so what a
//! connection buffers is bounded however its bytes are split.

use std::ops::Range;

use bytes::BytesMut;

/// Bytes one command may take on the wire (headers included).
pub const MAX_REQUEST: usize = 1024 * 1024;
/// Bytes an inline command's line may take (Redis' own limit).
pub const MAX_INLINE: usize = 64 * 1024;
/// Bytes of a `*<count>` or `$<length>` line, CRLF included.
const MAX_HEADER: usize = 32;

/// Why the input is not a request; the reply is `-ERR Protocol error: <it>`
/// and the connection is closed, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn error<T>(why: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(why.into()))
}

/// Where an argument is: in the input, or in the unescaped inline copy.
#[derive(Debug, Clone)]
enum Span {
    Input(Range<usize>),
    Inline(Range<usize>),
}

/// Parses requests; reused for every command of a connection (no
/// allocation per command once warm).
#[derive(Debug, Default)]
pub struct Parser {
    spans: Vec<Span>,
    inline: Vec<u8>,
}

/// The arguments of the command just parsed (the command name first).
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    input: &'a [u8],
    inline: &'a [u8],
    spans: &'a [Span],
}

impl<'a> Args<'a> {
    /// How many (the name included).
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none (an empty inline line, `*0`).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Argument `i`.
    pub fn get(&self, i: usize) -> &'a [u8] {
        match &self.spans[i] {
            Span::Input(r) => &self.input[r.clone()],
            Span::Inline(r) => &self.inline[r.clone()],
        }
    }

    /// Every argument, in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

impl Parser {
    /// The command at the front of `buf`: `Ok(Some(n))` when its `n` bytes
    /// are all there (arguments in [`Parser::args`]; none for an empty
    /// line or `*0`, which are no command), `Ok(None)` when more are
    /// needed.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        self.spans.clear();
        self.inline.clear();
        match buf.first() {
            None => Ok(None),
            Some(b'*') => self.multibulk(buf),
            Some(_) => self.inline(buf),
        }
    }

    /// The arguments of the command [`Parser::parse`] found in `buf`.
    pub fn args<'a>(&'a self, buf: &'a [u8]) -> Args<'a> {
        Args { input: buf, inline: &self.inline, spans: &self.spans }
    }

    fn multibulk(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let Some((count, mut pos)) = header(buf, 0, "too big mbulk count string")? else { return Ok(None) };
        // Each argument takes at least 6 bytes (`$0\r\n\r\n`).
        let count = match count {
            Some(n) if n <= 0 => return Ok(Some(pos)), // `*0`, `*-1`: nothing to do
            Some(n) if n as u64 <= (MAX_REQUEST / 6) as u64 => n as usize,
            _ => return error("invalid multibulk length"),
        };
        for _ in 0..count {
            match buf.get(pos) {
                None => return Ok(None),
                Some(b'$') => {}
                Some(&c) => return error(format!("expected '$', got '{}'", char::from(c))),
            }
            let Some((len, data)) = header(buf, pos, "too big bulk count string")? else { return Ok(None) };
            let len = match len {
                Some(n) if n >= 0 => n as usize,
                _ => return error("invalid bulk length"),
            };
            let end = data.saturating_add(len).saturating_add(2);
            if end > MAX_REQUEST {
                return error(format!("too big request (one command may take {MAX_REQUEST} bytes)"));
            }
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return error("expected CRLF after the bulk data");
            }
            self.spans.push(Span::Input(data..data + len));
            pos = end;
        }
        Ok(Some(pos))
    }

    fn inline(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let Some(nl) = buf.iter().take(MAX_INLINE + 1).position(|&b| b == b'\n') else {
            return if buf.len() > MAX_INLINE { error("too big inline request") } else { Ok(None) };
        };
        let line = &buf[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.split_inline(line)?;
        Ok(Some(nl + 1))
    }

    /// Splits a line into arguments as Redis' `sdssplitargs` does: blanks
    /// separate, "double quotes" take `\n \r \t \b \a \\ \" \xHH` escapes,
    /// 'single quotes' take `\'`, and a closing quote must end its argument.
    fn split_inline(&mut self, line: &[u8]) -> Result<(), ProtocolError> {
        let mut i = 0;
        loop {
            while i < line.len() && line[i].is_ascii_whitespace() {
                i += 1;
            }
            if i == line.len() {
                return Ok(());
            }
            let start = self.inline.len();
            match line[i] {
                quote @ (b'"' | b'\'') => i = self.quoted(line, i + 1, quote)?,
                _ => {
                    while i < line.len() && !line[i].is_ascii_whitespace() {
                        self.inline.push(line[i]);
                        i += 1;
                    }
                }
            }
            self.spans.push(Span::Inline(start..self.inline.len()));
        }
    }

    /// Unescapes the argument that starts at `i`, just after its opening
    /// `quote`, into the inline copy; where it ends.
    fn quoted(&mut self, line: &[u8], mut i: usize, quote: u8) -> Result<usize, ProtocolError> {
        let double = quote == b'"';
        loop {
            let (byte, used) = match &line[i..] {
                [] => return error("unbalanced quotes in request"),
                [q, after @ ..] if *q == quote => {
                    if after.first().is_some_and(|c| !c.is_ascii_whitespace()) {
                        return error("unbalanced quotes in request");
                    }
                    return Ok(i + 1);
                }
                [b'\\', b'x', h, l, ..] if double && hex(*h).is_some() && hex(*l).is_some() => {
                    (hex(*h).unwrap_or(0) << 4 | hex(*l).unwrap_or(0), 4)
                }
                [b'\\', c, ..] if double => {
                    let byte = match c {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        c => *c,
                    };
                    (byte, 2)
                }
                [b'\\', b'\'', ..] => (b'\'', 2),
                [c, ..] => (*c, 1),
            };
            self.inline.push(byte);
            i += used;
        }
    }
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The integer of the `*N\r\n` or `$N\r\n` line at `at` (`None` inside
/// when it is not one) and where the line ends; `Ok(None)` when the line
/// is not all there yet.
fn header(buf: &[u8], at: usize, too_big: &str) -> Result<Option<(Option<i64>, usize)>, ProtocolError> {
    let rest = &buf[at..];
    let Some(nl) = rest.iter().take(MAX_HEADER).position(|&b| b == b'\n') else {
        return if rest.len() >= MAX_HEADER { error(too_big) } else { Ok(None) };
    };
    let line = &rest[1..nl];
    let value = line.strip_suffix(b"\r").and_then(parse_i64);
    Ok(Some((value, at + nl + 1)))
}

/// A decimal integer as Redis reads one (`string2ll`): an optional `-`,
/// digits, no leading zero, no sign on zero, within `i64`.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        v = v.checked_mul(10)?;
        v = if negative { v.checked_sub(d)? } else { v.checked_add(d)? };
    }
    Some(v)
}

// ----- replies ----------------------------------------------------------------

/// `+text`
pub fn simple(out: &mut BytesMut, text: &str) {
    out.extend_from_slice(b"+");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `-text` (CR and LF in `text` become spaces, as Redis makes them, so the
/// reply stays one line).
pub fn error_reply(out: &mut BytesMut, text: &[u8]) {
    out.extend_from_slice(b"-");
    out.extend(text.iter().map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

/// `:n`
pub fn integer(out: &mut BytesMut, n: i64) {
    out.extend_from_slice(b":");
    decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// `$len` and the bytes.
pub fn bulk(out: &mut BytesMut, data: &[u8]) {
    out.extend_from_slice(b"$");
    decimal(out, data.len() as i64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// `$-1`: no such key.
pub fn null(out: &mut BytesMut) {
    out.extend_from_slice(b"$-1\r\n");
}

/// `*n`: an array of the next `n` replies.
pub fn array(out: &mut BytesMut, n: usize) {
    out.extend_from_slice(b"*");
    decimal(out, n as i64);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, without going through `fmt`.
pub fn decimal(out: &mut BytesMut, n: i64) {
    out.extend_from_slice(digits(n, &mut [0; 20]));
}

/// `n` in decimal, in `buf` (20 bytes hold `i64::MIN`).
pub fn digits(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}
