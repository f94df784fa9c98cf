//! Just enough of the zip format to check a wheel: the central directory (found from the end
//! of the file, so an upload can be checked from a bounded tail after it was streamed) and
//! reading one small member (stored or deflated) from a file on disk.

use std::io::{Read, Seek, SeekFrom};

/// A central-directory entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub method: u16,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub local_header_offset: u64,
}

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CDH_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
/// At most this many members (a wheel with more is not a plausible task package).
pub const MAX_ENTRIES: usize = 100_000;

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
}

/// The entries of a zip file of `total_len` bytes whose last `tail.len()` bytes are `tail`.
/// `Err` names why it is not a readable zip (or why the tail is too short to tell).
pub fn central_directory(tail: &[u8], total_len: u64) -> Result<Vec<Entry>, String> {
    let tail_start = total_len
        .checked_sub(tail.len() as u64)
        .ok_or("tail longer than the file")?;
    if tail.len() < 22 {
        return Err("not a zip archive (too short)".into());
    }
    // The EOCD is the last 22 bytes plus a comment of at most 65535 bytes.
    let lowest = tail.len().saturating_sub(22 + 65_535);
    let mut eocd = None;
    let mut i = tail.len() - 22;
    loop {
        if u32_at(tail, i) == Some(EOCD_SIG) {
            eocd = Some(i);
            break;
        }
        if i == lowest {
            break;
        }
        i -= 1;
    }
    let e = eocd.ok_or("not a zip archive (no end of central directory)")?;
    let mut count = u16_at(tail, e + 10).unwrap() as u64;
    let mut cd_size = u32_at(tail, e + 12).unwrap() as u64;
    let mut cd_offset = u32_at(tail, e + 16).unwrap() as u64;
    if cd_offset == 0xFFFF_FFFF || count == 0xFFFF || cd_size == 0xFFFF_FFFF {
        let loc = e.checked_sub(20).ok_or("zip64 locator missing")?;
        if u32_at(tail, loc) != Some(ZIP64_LOCATOR_SIG) {
            return Err("zip64 locator missing".into());
        }
        let z = u64_at(tail, loc + 8).unwrap();
        let zi = z
            .checked_sub(tail_start)
            .ok_or("central directory too large to check")? as usize;
        if u32_at(tail, zi) != Some(ZIP64_EOCD_SIG) {
            return Err("zip64 end of central directory missing".into());
        }
        count = u64_at(tail, zi + 32).ok_or("truncated zip64 record")?;
        cd_size = u64_at(tail, zi + 40).ok_or("truncated zip64 record")?;
        cd_offset = u64_at(tail, zi + 48).ok_or("truncated zip64 record")?;
    }
    if count as usize > MAX_ENTRIES {
        return Err(format!("too many members ({count} > {MAX_ENTRIES})"));
    }
    if cd_offset
        .checked_add(cd_size)
        .is_none_or(|end| end > total_len)
    {
        return Err("central directory lies outside the file".into());
    }
    let start = cd_offset
        .checked_sub(tail_start)
        .ok_or("central directory too large to check")? as usize;
    let cd = &tail[start..(start + cd_size as usize).min(tail.len())];
    let mut out = Vec::with_capacity(count as usize);
    let mut p = 0usize;
    for _ in 0..count {
        if u32_at(cd, p) != Some(CDH_SIG) {
            return Err("corrupt central directory".into());
        }
        let trunc = || "truncated central directory".to_string();
        let method = u16_at(cd, p + 10).ok_or_else(trunc)?;
        let mut csize = u32_at(cd, p + 20).ok_or_else(trunc)? as u64;
        let mut usize_ = u32_at(cd, p + 24).ok_or_else(trunc)? as u64;
        let n = u16_at(cd, p + 28).ok_or_else(trunc)? as usize;
        let x = u16_at(cd, p + 30).ok_or_else(trunc)? as usize;
        let c = u16_at(cd, p + 32).ok_or_else(trunc)? as usize;
        let mut off = u32_at(cd, p + 42).ok_or_else(trunc)? as u64;
        let name_b = cd.get(p + 46..p + 46 + n).ok_or_else(trunc)?;
        let extra = cd.get(p + 46 + n..p + 46 + n + x).ok_or_else(trunc)?;
        // Zip64 sizes/offset live in extra field 0x0001, in this order, only when saturated.
        let mut q = 0;
        while q + 4 <= extra.len() {
            let id = u16_at(extra, q).unwrap();
            let len = u16_at(extra, q + 2).unwrap() as usize;
            if id == 1 {
                let mut r = q + 4;
                for v in [&mut usize_, &mut csize, &mut off] {
                    if *v == 0xFFFF_FFFF {
                        *v = u64_at(extra, r).ok_or_else(trunc)?;
                        r += 8;
                    }
                }
            }
            q += 4 + len;
        }
        let name = String::from_utf8(name_b.to_vec())
            .map_err(|_| "a member name is not UTF-8".to_string())?;
        out.push(Entry {
            name,
            method,
            compressed_size: csize,
            uncompressed_size: usize_,
            local_header_offset: off,
        });
        p += 46 + n + x + c;
    }
    Ok(out)
}

/// Why a member name is unsafe to extract (absolute, `..`, backslash, drive, NUL), if it is.
pub fn unsafe_member(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty member name");
    }
    if name.contains('\0') {
        return Some("NUL in a member name");
    }
    if name.contains('\\') {
        return Some("backslash in a member name");
    }
    if name.starts_with('/') {
        return Some("absolute member path");
    }
    if name.len() >= 2 && name.as_bytes()[1] == b':' {
        return Some("drive letter in a member path");
    }
    if name.split('/').any(|c| c == "..") {
        return Some("'..' in a member path");
    }
    None
}

/// The checks a wheel must pass to be stored: safe member names and a top-level
/// `*.dist-info/` with `METADATA` and `WHEEL`. `Err` is the reason.
pub fn check_wheel_members(entries: &[Entry]) -> Result<(), String> {
    for e in entries {
        if let Some(why) = unsafe_member(&e.name) {
            return Err(format!("{why}: {:?}", truncate(&e.name, 200)));
        }
    }
    let has = |file: &str| {
        entries.iter().any(|e| {
            let mut it = e.name.splitn(2, '/');
            let dir = it.next().unwrap_or("");
            dir.ends_with(".dist-info") && it.next() == Some(file)
        })
    };
    if !has("METADATA") {
        return Err("no *.dist-info/METADATA".into());
    }
    if !has("WHEEL") {
        return Err("no *.dist-info/WHEEL".into());
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The entries of a zip file on disk.
pub fn read_directory(f: &mut std::fs::File) -> Result<Vec<Entry>, String> {
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    // Enough for the EOCD and a generous central directory; bigger ones are refused.
    let want = len.min(16 * 1024 * 1024);
    f.seek(SeekFrom::Start(len - want))
        .map_err(|e| e.to_string())?;
    let mut tail = vec![0u8; want as usize];
    f.read_exact(&mut tail).map_err(|e| e.to_string())?;
    central_directory(&tail, len)
}

/// One member's bytes (stored or deflated), at most `max` bytes.
pub fn read_member(f: &mut std::fs::File, e: &Entry, max: u64) -> Result<Vec<u8>, String> {
    if e.uncompressed_size > max {
        return Err(format!("{} is larger than {max} bytes", e.name));
    }
    f.seek(SeekFrom::Start(e.local_header_offset))
        .map_err(|x| x.to_string())?;
    let mut h = [0u8; 30];
    f.read_exact(&mut h).map_err(|x| x.to_string())?;
    if u32_at(&h, 0) != Some(LOCAL_SIG) {
        return Err(format!("bad local header for {}", e.name));
    }
    let skip = u16_at(&h, 26).unwrap() as i64 + u16_at(&h, 28).unwrap() as i64;
    f.seek(SeekFrom::Current(skip)).map_err(|x| x.to_string())?;
    let raw = f.take(e.compressed_size);
    let mut out = Vec::new();
    match e.method {
        0 => raw.take(max + 1).read_to_end(&mut out),
        8 => flate2::read::DeflateDecoder::new(raw)
            .take(max + 1)
            .read_to_end(&mut out),
        m => return Err(format!("unsupported compression method {m} for {}", e.name)),
    }
    .map_err(|x| format!("{}: {x}", e.name))?;
    if out.len() as u64 > max {
        return Err(format!("{} is larger than {max} bytes", e.name));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names() {
        assert!(unsafe_member("pkg/__init__.py").is_none());
        for bad in ["/etc/passwd", "../x", "a/../../x", "a\\b", "C:x", ""] {
            assert!(unsafe_member(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn not_a_zip() {
        assert!(central_directory(b"hello world, this is not a zip file", 35).is_err());
    }
}
