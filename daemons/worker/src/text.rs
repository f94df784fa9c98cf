//! Small text helpers shared by the layers (kept here so low layers depend on nothing above).

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncates_on_a_char_boundary() {
        assert_eq!(super::truncate("abc", 5), "abc");
        assert_eq!(super::truncate("aé", 2), "a");
    }
}
