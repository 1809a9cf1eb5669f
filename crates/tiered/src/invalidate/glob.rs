//! Glob patterns with Redis's `MATCH` syntax, so that a pattern removes the
//! same keys from L1 (matched here) as from L2 (matched by `SCAN … MATCH`):
//!
//! * `*` any run of bytes, `?` any one byte;
//! * `[abc]`, `[a-z]`, `[^a]` a byte in (or, with `^`, not in) the set;
//! * `\x` the byte `x` itself.
//!
//! Matching is iterative with one backtrack point for the last `*` (linear in
//! practice, no recursion, so a hostile pattern cannot blow the stack).

/// Whether `text` matches `pattern`.
pub(crate) fn matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi + 1, ti));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                b'[' => {
                    if let Some((hit, next)) = class(p, pi, t[ti]) {
                        if hit {
                            pi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == b'[' {
                        // An unterminated `[` is a literal.
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                b'\\' if pi + 1 < p.len() && p[pi + 1] == t[ti] => {
                    pi += 2;
                    ti += 1;
                    continue;
                }
                // An escape that does not match falls through to the mismatch.
                b'\\' if pi + 1 < p.len() => {}
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        // Mismatch: let the last `*` swallow one more byte, or fail.
        match star {
            Some((after, from)) => {
                pi = after;
                ti = from + 1;
                star = Some((after, from + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `p[start] == b'['`. Returns
/// whether it matched and the index after the class, or `None` if the class
/// is not terminated.
fn class(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    while i < p.len() {
        let mut lo = p[i];
        if lo == b']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if lo == b'\\' && i + 1 < p.len() {
            i += 1;
            lo = p[i];
        }
        if p.get(i + 1) == Some(&b'-') && i + 2 < p.len() && p[i + 2] != b']' {
            let hi = p[i + 2];
            let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
            hit |= (a..=b).contains(&c);
            i += 3;
        } else {
            hit |= lo == c;
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn redis_glob_semantics() {
        let yes = [
            ("*", ""),
            ("*", "anything"),
            ("user:*", "user:42"),
            ("user:*:posts", "user:42:posts"),
            ("user:?", "user:7"),
            ("feed:*", "feed:"),
            ("h[ae]llo", "hallo"),
            ("h[a-c]llo", "hbllo"),
            ("h[^e]llo", "hallo"),
            ("a\\*b", "a*b"),
            ("*a*b*", "xxaxxbxx"),
            ("[", "["),
        ];
        for (p, t) in yes {
            assert!(matches(p, t), "{p} should match {t}");
        }
        let no = [
            ("user:*", "users:1"),
            ("user:?", "user:42"),
            ("h[^e]llo", "hello"),
            ("a\\*b", "axb"),
            ("*a*b*", "xxbxxa"),
            ("", "x"),
        ];
        for (p, t) in no {
            assert!(!matches(p, t), "{p} should not match {t}");
        }
    }

    #[test]
    fn hostile_patterns_stay_fast() {
        let text = "a".repeat(1000);
        let pattern = format!("{}b", "*a".repeat(100));
        assert!(!matches(&pattern, &text));
    }
}
