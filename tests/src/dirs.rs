//! Temporary directories for tests.

use std::path::{Path, PathBuf};

/// A temporary directory, deleted on drop (kept, and its path printed, if the environment
/// variable `PYOCO_TEST_KEEP_DIRS=1` is set).
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// A new empty directory under the system temp dir, named `pyoco-test-<prefix>-XXXX`.
    pub fn new(prefix: &str) -> TestDir {
        let clean: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("pyoco-test-{clean}-"))
            .tempdir()
            .expect("create temp dir");
        let path = dir.path().to_path_buf();
        TestDir {
            dir: Some(dir),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/<rel>` (nothing is created).
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Creates (and returns) the subdirectory `rel`.
    pub fn subdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.path.join(rel);
        std::fs::create_dir_all(&p).expect("create subdir");
        p
    }

    /// Writes `contents` to `path/<rel>` (parents created) and returns the full path.
    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create parent dir");
        }
        std::fs::write(&p, contents).expect("write file");
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var("PYOCO_TEST_KEEP_DIRS")
            .map(|v| v == "1")
            .unwrap_or(false)
        {
            if let Some(d) = self.dir.take() {
                let p = d.keep();
                eprintln!("[pyoco-tests] kept test dir {}", p.display());
            }
        }
    }
}
