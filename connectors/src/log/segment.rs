//! Segment files: records framed as `[len: u32 LE][crc32 of len and payload: u32 LE][payload]`,
//! and the scan that finds the last whole record after a crash.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{LogError, MAX_RECORD_BYTES, Offset};

/// Bytes of a frame header.
pub const HEADER_BYTES: u64 = 8;
const SEGMENT_SUFFIX: &str = ".log";

/// The file name of the segment whose first record has offset `base`.
pub fn segment_name(base: Offset) -> String {
    format!("{base:020}{SEGMENT_SUFFIX}")
}

/// The base offset of a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<Offset> {
    name.strip_suffix(SEGMENT_SUFFIX)?.parse().ok()
}

/// Appends one framed record to `out`.
pub fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

/// How a scan of a segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanEnd {
    /// Whole, valid records found.
    pub records: u64,
    /// Byte length of those records; anything after is a torn or corrupt tail.
    pub valid_bytes: u64,
    /// The file's length.
    pub file_bytes: u64,
}

/// Reads records one after another from a segment file.
pub struct SegmentReader {
    path: PathBuf,
    reader: BufReader<File>,
    position: u64,
    file_bytes: u64,
}

/// One step of a [`SegmentReader`].
pub enum Frame {
    /// A whole, valid record.
    Record(Vec<u8>),
    /// The file ends here, cleanly.
    End,
    /// The bytes from here on are not a whole valid record.
    Torn(String),
}

impl SegmentReader {
    /// Opens a segment at byte `position`.
    pub fn open(path: &Path, position: u64) -> Result<Self, LogError> {
        let io_error = |action| {
            move |source| LogError::Io {
                action,
                path: path.to_owned(),
                source,
            }
        };
        let mut file = File::open(path).map_err(io_error("open segment"))?;
        let file_bytes = file.metadata().map_err(io_error("stat segment"))?.len();
        file.seek(SeekFrom::Start(position))
            .map_err(io_error("seek in segment"))?;
        Ok(SegmentReader {
            path: path.to_owned(),
            reader: BufReader::with_capacity(256 * 1024, file),
            position,
            file_bytes,
        })
    }

    /// The byte position of the next frame.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Reads the next frame.
    pub fn next_frame(&mut self) -> Result<Frame, LogError> {
        let remaining = self.file_bytes.saturating_sub(self.position);
        if remaining == 0 {
            return Ok(Frame::End);
        }
        if remaining < HEADER_BYTES {
            return Ok(Frame::Torn(format!(
                "{remaining} bytes, shorter than a record header"
            )));
        }
        let mut header = [0u8; HEADER_BYTES as usize];
        self.read_exact(&mut header)?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let expected_crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len as usize > MAX_RECORD_BYTES || u64::from(len) > remaining - HEADER_BYTES {
            return Ok(Frame::Torn(format!(
                "record length {len} runs past the end of the file"
            )));
        }
        let mut payload = vec![0u8; len as usize];
        self.read_exact(&mut payload)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header[..4]);
        crc.update(&payload);
        if crc.finalize() != expected_crc {
            return Ok(Frame::Torn("checksum mismatch".to_owned()));
        }
        self.position += HEADER_BYTES + u64::from(len);
        Ok(Frame::Record(payload))
    }

    /// Skips `count` records without checking their payload; for seeking to an offset.
    pub fn skip(&mut self, count: u64) -> Result<(), LogError> {
        for _ in 0..count {
            let mut header = [0u8; HEADER_BYTES as usize];
            self.read_exact(&mut header)?;
            let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
            self.reader
                .seek_relative(i64::from(len))
                .map_err(|source| self.io("seek in segment", source))?;
            self.position += HEADER_BYTES + u64::from(len);
        }
        Ok(())
    }

    fn read_exact(&mut self, buffer: &mut [u8]) -> Result<(), LogError> {
        self.reader
            .read_exact(buffer)
            .map_err(|source| self.io("read segment", source))
    }

    fn io(&self, action: &'static str, source: io::Error) -> LogError {
        LogError::Io {
            action,
            path: self.path.clone(),
            source,
        }
    }
}

/// Scans a whole segment and reports where its valid records end.
pub fn scan(path: &Path) -> Result<ScanEnd, LogError> {
    let mut reader = SegmentReader::open(path, 0)?;
    let mut records = 0;
    loop {
        match reader.next_frame()? {
            Frame::Record(_) => records += 1,
            Frame::End | Frame::Torn(_) => {
                return Ok(ScanEnd {
                    records,
                    valid_bytes: reader.position(),
                    file_bytes: reader.file_bytes,
                });
            }
        }
    }
}
