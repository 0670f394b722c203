//! The TLS record layer of one direction of a connection, read incrementally: record headers are
//! checked as their bytes arrive, handshake messages are reassembled across records, and records
//! may be split across reads at any byte.
//!
//! The reader hands out [`Event`]s one at a time through [`Reader::next`]. Only the handshake
//! messages the caller asks for are buffered (one allocation, sized from the message header and
//! bounded by the budget); the bodies of other messages and of non-handshake records are skipped
//! by counting. Every byte consumed counts against the budget, record headers included, so the
//! budget also bounds what the engine holds while it waits for a verdict.

use super::ParseError;

/// Record content types (RFC 8446 section 5.1 and RFC 6520).
const CHANGE_CIPHER_SPEC: u8 = 20;
pub(super) const ALERT: u8 = 21;
pub(super) const HANDSHAKE: u8 = 22;
const HEARTBEAT: u8 = 24;

/// Largest record body accepted: 2^14 plus the 2048 bytes of expansion RFC 5246 allows a
/// `TLSCiphertext` (RFC 8446 allows 256; older stacks use more).
const MAX_RECORD_LEN: usize = (1 << 14) + 2048;

/// Length of a record header: type, version (2), length (2).
const RECORD_HEADER_LEN: usize = 5;

/// Length of a handshake message header: type, length (3).
const MESSAGE_HEADER_LEN: usize = 4;

/// What the reader found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event<'a> {
    /// The header of a record that is not a handshake record (change_cipher_spec, alert,
    /// application_data or heartbeat), reported as soon as it is complete; its body is skipped.
    Record(u8),
    /// The header of a handshake message, reported as soon as it is complete.
    Header { msg_type: u8, len: usize },
    /// A complete handshake message whose type the caller asked to keep, without its header.
    Message { msg_type: u8, body: &'a [u8] },
}

/// Incremental reader for one direction. Fields are private; the owner of a [`Reader`] is the
/// inspector, which feeds it and frees it with the connection.
#[derive(Debug)]
pub(super) struct Reader {
    /// The record header being read and how many of its bytes have arrived; `RECORD_HEADER_LEN`
    /// once complete.
    record: [u8; RECORD_HEADER_LEN],
    record_have: usize,
    /// Body bytes left in the current record.
    record_left: usize,
    /// The handshake message header being read and how many of its bytes have arrived;
    /// `MESSAGE_HEADER_LEN` while its body is read.
    message: [u8; MESSAGE_HEADER_LEN],
    message_have: usize,
    /// Body bytes left in the current handshake message.
    message_left: usize,
    /// Whether the current message's body is kept in `body`.
    keep: bool,
    /// The body of the current kept message.
    body: Vec<u8>,
    /// Bytes consumed since the budget was last set, and the most allowed.
    consumed: usize,
    budget: usize,
}

impl Reader {
    /// A reader at a record boundary that may consume `budget` bytes.
    pub(super) fn new(budget: usize) -> Reader {
        Reader {
            record: [0; RECORD_HEADER_LEN],
            record_have: 0,
            record_left: 0,
            message: [0; MESSAGE_HEADER_LEN],
            message_have: 0,
            message_left: 0,
            keep: false,
            body: Vec::new(),
            consumed: 0,
            budget,
        }
    }

    /// Starts counting again from zero against a new budget.
    pub(super) fn set_budget(&mut self, budget: usize) {
        self.consumed = 0;
        self.budget = budget;
    }

    /// Counts `n` bytes that were not parsed against the budget.
    pub(super) fn count(&mut self, n: usize) -> Result<(), ParseError> {
        self.consumed = self.consumed.saturating_add(n);
        if self.consumed > self.budget {
            return Err(ParseError::TooLarge);
        }
        Ok(())
    }

    /// Reads from `input` (advancing it) up to the next event. `Ok(None)` means `input` is used
    /// up. `keep` says which handshake message types to buffer and report as
    /// [`Event::Message`]; a kept message longer than the budget is refused from its header.
    ///
    /// Errors are final: the reader must not be used after one.
    pub(super) fn next(
        &mut self,
        input: &mut &[u8],
        keep: impl Fn(u8) -> bool,
    ) -> Result<Option<Event<'_>>, ParseError> {
        loop {
            if self.message_have == MESSAGE_HEADER_LEN && self.message_left == 0 {
                // The message is complete (possibly empty); the next one starts.
                self.message_have = 0;
                if self.keep {
                    self.keep = false;
                    return Ok(Some(Event::Message {
                        msg_type: self.message[0],
                        body: &self.body,
                    }));
                }
                continue;
            }
            if self.record_have < RECORD_HEADER_LEN {
                let Some((&byte, rest)) = input.split_first() else {
                    return Ok(None);
                };
                *input = rest;
                self.count(1)?;
                if let Some(event) = self.record_header_byte(byte)? {
                    return Ok(Some(event));
                }
                continue;
            }
            if self.record_left == 0 {
                // Record boundary (also for an empty record).
                self.record_have = 0;
                continue;
            }
            if self.record[0] != HANDSHAKE {
                let n = self.record_left.min(input.len());
                if n == 0 {
                    return Ok(None);
                }
                self.count(n)?;
                self.record_left -= n;
                *input = input.get(n..).unwrap_or_default();
                continue;
            }
            if self.message_have < MESSAGE_HEADER_LEN {
                let Some((&byte, rest)) = input.split_first() else {
                    return Ok(None);
                };
                *input = rest;
                self.count(1)?;
                self.record_left -= 1;
                self.message[self.message_have] = byte;
                self.message_have += 1;
                if self.message_have == MESSAGE_HEADER_LEN {
                    let [msg_type, a, b, c] = self.message;
                    let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                    self.keep = keep(msg_type);
                    if self.keep {
                        if len > self.budget {
                            return Err(ParseError::TooLarge);
                        }
                        self.body.clear();
                        self.body.reserve_exact(len);
                    }
                    self.message_left = len;
                    return Ok(Some(Event::Header { msg_type, len }));
                }
                continue;
            }
            let n = self.message_left.min(self.record_left).min(input.len());
            if n == 0 {
                return Ok(None);
            }
            self.count(n)?;
            let (chunk, rest) = input.split_at(n);
            if self.keep {
                self.body.extend_from_slice(chunk);
            }
            *input = rest;
            self.message_left -= n;
            self.record_left -= n;
        }
    }

    /// Takes one byte of a record header, checking each field as soon as it is complete.
    fn record_header_byte(&mut self, byte: u8) -> Result<Option<Event<'static>>, ParseError> {
        self.record[self.record_have] = byte;
        self.record_have += 1;
        match self.record_have {
            1 if !(CHANGE_CIPHER_SPEC..=HEARTBEAT).contains(&byte) => Err(ParseError::RecordType),
            2 if byte != 3 => Err(ParseError::RecordVersion),
            RECORD_HEADER_LEN => {
                let len = usize::from(u16::from_be_bytes([self.record[3], self.record[4]]));
                if len > MAX_RECORD_LEN {
                    return Err(ParseError::RecordLength);
                }
                self.record_left = len;
                let content_type = self.record[0];
                if content_type == HANDSHAKE {
                    return Ok(None);
                }
                if self.message_have > 0 {
                    // RFC 8446 section 5.1: handshake messages are not interleaved with other
                    // record types.
                    return Err(ParseError::UnexpectedRecord);
                }
                Ok(Some(Event::Record(content_type)))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects every event of `input` fed in pieces of `step` bytes, keeping messages of type
    /// 1 and 11, as owned values.
    fn events(input: &[u8], step: usize, budget: usize) -> Result<Vec<Owned>, ParseError> {
        let mut reader = Reader::new(budget);
        let mut out = Vec::new();
        for mut chunk in input.chunks(step.max(1)) {
            while let Some(event) = reader.next(&mut chunk, |t| t == 1 || t == 11)? {
                out.push(Owned::from(event));
            }
            assert!(chunk.is_empty(), "Ok(None) with input left");
        }
        Ok(out)
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Record(u8),
        Header(u8, usize),
        Message(u8, Vec<u8>),
    }

    impl From<Event<'_>> for Owned {
        fn from(event: Event<'_>) -> Owned {
            match event {
                Event::Record(t) => Owned::Record(t),
                Event::Header { msg_type, len } => Owned::Header(msg_type, len),
                Event::Message { msg_type, body } => Owned::Message(msg_type, body.to_vec()),
            }
        }
    }

    fn record(content_type: u8, body: &[u8]) -> Vec<u8> {
        let len = u16::try_from(body.len()).expect("test record fits");
        let mut out = vec![content_type, 3, 3];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn message(msg_type: u8, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).expect("test message fits");
        let mut out = vec![msg_type];
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn reassembles_across_records_and_reads() {
        let hello = message(1, &[7; 300]);
        let skipped = message(16, &[9; 40]);
        let empty = message(14, &[]);
        let cert = message(11, &[5; 10]);
        let mut stream = Vec::new();
        // The hello split over three records, the header itself split between two.
        stream.extend(record(HANDSHAKE, &hello[..2]));
        stream.extend(record(HANDSHAKE, &hello[2..100]));
        stream.extend(record(HANDSHAKE, &hello[100..]));
        // Three messages in one record, then an empty handshake record, then a CCS.
        let mut three = skipped.clone();
        three.extend(&empty);
        three.extend(&cert);
        stream.extend(record(HANDSHAKE, &three));
        stream.extend(record(HANDSHAKE, &[]));
        stream.extend(record(CHANGE_CIPHER_SPEC, &[1]));
        let want = vec![
            Owned::Header(1, 300),
            Owned::Message(1, vec![7; 300]),
            Owned::Header(16, 40),
            Owned::Header(14, 0),
            Owned::Header(11, 10),
            Owned::Message(11, vec![5; 10]),
            Owned::Record(CHANGE_CIPHER_SPEC),
        ];
        for step in [1, 2, 3, 5, 7, 64, stream.len()] {
            assert_eq!(events(&stream, step, 1 << 20), Ok(want.clone()), "{step}");
        }
    }

    #[test]
    fn kept_empty_message_is_reported() {
        let stream = record(HANDSHAKE, &message(11, &[]));
        assert_eq!(
            events(&stream, 1, 100),
            Ok(vec![Owned::Header(11, 0), Owned::Message(11, vec![])])
        );
    }

    #[test]
    fn header_checks_fire_on_the_byte() {
        let mut reader = Reader::new(100);
        let keep = |_| false;
        assert_eq!(
            reader.next(&mut &[19u8][..], keep),
            Err(ParseError::RecordType)
        );
        let mut reader = Reader::new(100);
        assert_eq!(
            reader.next(&mut &[25u8][..], keep),
            Err(ParseError::RecordType)
        );
        let mut reader = Reader::new(100);
        assert_eq!(
            reader.next(&mut &[22u8, 2][..], keep),
            Err(ParseError::RecordVersion)
        );
        let mut reader = Reader::new(100);
        assert_eq!(reader.next(&mut &[22u8, 3][..], keep), Ok(None));
        let mut reader = Reader::new(100);
        let too_long = [22u8, 3, 1, 0x48, 0x01];
        assert_eq!(
            reader.next(&mut &too_long[..], keep),
            Err(ParseError::RecordLength)
        );
        let mut reader = Reader::new(100);
        let max = [23u8, 3, 3, 0x48, 0x00];
        assert_eq!(
            reader.next(&mut &max[..], keep),
            Ok(Some(Event::Record(23)))
        );
    }

    #[test]
    fn interleaved_record_is_refused() {
        let hello = message(1, &[0; 8]);
        let mut stream = record(HANDSHAKE, &hello[..6]);
        stream.extend(record(21, &[1, 0]));
        assert_eq!(events(&stream, 1, 100), Err(ParseError::UnexpectedRecord));
        // Between messages a non-handshake record is fine.
        let mut stream = record(HANDSHAKE, &hello);
        stream.extend(record(21, &[1, 0]));
        assert!(events(&stream, 1, 100).is_ok());
    }

    #[test]
    fn budget_counts_every_byte() {
        let stream = record(HANDSHAKE, &message(16, &[0; 20]));
        assert_eq!(stream.len(), 29);
        assert!(events(&stream, 1, 29).is_ok());
        assert_eq!(events(&stream, 1, 28), Err(ParseError::TooLarge));
        assert_eq!(events(&stream, 100, 28), Err(ParseError::TooLarge));
        // A kept message longer than the budget is refused from its header.
        let long = record(HANDSHAKE, &message(1, &[0; 50])[..4]);
        assert_eq!(events(&long, 1, 49), Err(ParseError::TooLarge));
        // Empty records cost their headers.
        let empties: Vec<u8> = (0..10).flat_map(|_| record(HANDSHAKE, &[])).collect();
        assert!(events(&empties, 3, 50).is_ok());
        assert_eq!(events(&empties, 3, 49), Err(ParseError::TooLarge));
        let mut reader = Reader::new(10);
        assert_eq!(reader.count(10), Ok(()));
        assert_eq!(reader.count(1), Err(ParseError::TooLarge));
        reader.set_budget(5);
        assert_eq!(reader.count(5), Ok(()));
    }
}
