//! The JSON Lines file sink.
//!
//! One CloudEvent per line, `fsync` per batch, and a start-up reconciliation
//! so a crash never loses or repeats a line: a torn last line (a write cut
//! by the crash) is truncated, and the `seq` of the last complete line tells
//! the sink loop where the file really ends, even when the cursor commit did
//! not make it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::event::StoredEvent;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Corrupt(String),
}

pub struct FileTarget {
    /// `None` only while a write is in flight on the blocking pool.
    file: Option<File>,
    last_seq: Option<i64>,
}

/// What the tail of an existing file looks like.
#[derive(Debug, PartialEq, Eq)]
pub struct Tail {
    /// Length of the file up to and including its last newline.
    pub complete_len: u64,
    /// The last complete line, without its newline.
    pub last_line: Option<Vec<u8>>,
}

const CHUNK: u64 = 64 * 1024;

/// Position of the last `\n` strictly before `end`, scanning backwards.
fn rfind_newline<R: Read + Seek>(r: &mut R, end: u64) -> std::io::Result<Option<u64>> {
    let mut pos = end;
    let mut buf = vec![0u8; CHUNK as usize];
    while pos > 0 {
        let start = pos.saturating_sub(CHUNK);
        let len = (pos - start) as usize;
        r.seek(SeekFrom::Start(start))?;
        r.read_exact(&mut buf[..len])?;
        if let Some(i) = buf[..len].iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + i as u64));
        }
        pos = start;
    }
    Ok(None)
}

/// Finds the last complete line of a file of length `len`.
pub fn read_tail<R: Read + Seek>(r: &mut R, len: u64) -> std::io::Result<Tail> {
    let Some(last_nl) = rfind_newline(r, len)? else {
        return Ok(Tail {
            complete_len: 0,
            last_line: None,
        });
    };
    let start = rfind_newline(r, last_nl)?.map_or(0, |p| p + 1);
    let mut line = vec![0u8; (last_nl - start) as usize];
    r.seek(SeekFrom::Start(start))?;
    r.read_exact(&mut line)?;
    Ok(Tail {
        complete_len: last_nl + 1,
        last_line: Some(line),
    })
}

fn seq_of(line: &[u8]) -> Result<i64, String> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: i64,
    }
    serde_json::from_slice::<Seq>(line)
        .map(|s| s.seq)
        .map_err(|e| format!("its last complete line is not a gapless CloudEvent ({e})"))
}

impl FileTarget {
    /// Opens (or creates) the file, truncates a torn last line, and reads
    /// the `seq` of the last complete one.
    pub async fn open(path: &Path) -> Result<Self, FileError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path))
            .await
            .expect("file open task panicked")
    }

    fn open_blocking(path: &Path) -> Result<Self, FileError> {
        let named = |source| FileError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(named)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(named)?;
        let len = file.metadata().map_err(named)?.len();
        let tail = read_tail(&mut file, len).map_err(named)?;
        if tail.complete_len < len {
            tracing::warn!(file = %path.display(), bytes = len - tail.complete_len,
                "truncating a torn last line left by a crash");
            file.set_len(tail.complete_len).map_err(named)?;
            file.sync_all().map_err(named)?;
        }
        let last_seq = match &tail.last_line {
            Some(line) => Some(seq_of(line).map_err(|m| {
                FileError::Corrupt(format!(
                    "{}: {m}; move the file aside or point the sink at a new path",
                    path.display()
                ))
            })?),
            None => None,
        };
        file.seek(SeekFrom::End(0)).map_err(named)?;
        Ok(FileTarget {
            file: Some(file),
            last_seq,
        })
    }

    pub fn last_seq(&self) -> Option<i64> {
        self.last_seq
    }

    /// Appends one line per event and fsyncs before returning.
    pub async fn write(&mut self, events: &[StoredEvent], source: &str) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(events.len() * 1024);
        for e in events {
            buf.extend_from_slice(e.to_cloudevent(source).as_bytes());
            buf.push(b'\n');
        }
        let mut file = self.file.take().expect("no concurrent writes");
        let (file, result) = tokio::task::spawn_blocking(move || {
            let r = file.write_all(&buf).and_then(|_| file.sync_data());
            (file, r)
        })
        .await
        .expect("file write task panicked");
        self.file = Some(file);
        result?;
        self.last_seq = events.last().map(|e| e.seq).or(self.last_seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn tail(bytes: &[u8]) -> Tail {
        read_tail(&mut Cursor::new(bytes), bytes.len() as u64).unwrap()
    }

    #[test]
    fn tail_finds_the_last_complete_line() {
        assert_eq!(
            tail(b""),
            Tail {
                complete_len: 0,
                last_line: None
            }
        );
        assert_eq!(
            tail(b"torn"),
            Tail {
                complete_len: 0,
                last_line: None
            }
        );
        assert_eq!(tail(b"a\n").last_line.unwrap(), b"a");
        let t = tail(b"a\nbb\nccc");
        assert_eq!((t.complete_len, t.last_line.unwrap()), (5, b"bb".to_vec()));
    }

    #[test]
    fn tail_spans_chunk_boundaries() {
        let long = vec![b'x'; (CHUNK * 2 + 17) as usize];
        let mut bytes = b"first\n".to_vec();
        bytes.extend_from_slice(&long);
        bytes.push(b'\n');
        bytes.extend_from_slice(&vec![b'y'; (CHUNK + 3) as usize]);
        let t = tail(&bytes);
        assert_eq!(t.complete_len, 6 + long.len() as u64 + 1);
        assert_eq!(t.last_line.unwrap(), long);
    }

    #[tokio::test]
    async fn open_truncates_a_torn_line_and_reads_the_last_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/events.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3,\"da").unwrap();
        let t = FileTarget::open(&path).await.unwrap();
        assert_eq!(t.last_seq(), Some(2));
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"seq\":1}\n{\"seq\":2}\n");
    }

    #[tokio::test]
    async fn open_refuses_a_foreign_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, b"hello\n").unwrap();
        let err = FileTarget::open(&path).await.err().unwrap().to_string();
        assert!(
            err.contains("notes.txt") && err.contains("new path"),
            "{err}"
        );
    }
}
