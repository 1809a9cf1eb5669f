//! Event rules: "when this happens, drop these keys".
//!
//! ```text
//! cache.on_event("post.created", &["user:{author_id}:posts", "feed:*"])?;
//! cache.emit("post.created", &[("author_id", "42")]).await?;
//! // removes user:42:posts and every key matching feed:*
//! ```
//!
//! A template is a key with `{field}` placeholders (`{{` and `}}` for literal
//! braces, e.g. a Cluster hash tag). A template containing a glob character
//! (`*`, `?`, `[`) is a *pattern*, invalidated like
//! [`Cache::invalidate_pattern`](crate::Cache::invalidate_pattern); field
//! values filled into a pattern are escaped, so a value can never widen it.
//! Rules live in the instance that declared them (declare them at startup in
//! every instance); what `emit` removes reaches every instance through the
//! backplane.

use crate::error::{Error, Result};

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part>,
    /// Contains glob characters outside placeholders.
    pub pattern: bool,
}

/// The longest template accepted.
const MAX_TEMPLATE: usize = 1024;

impl Template {
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| Error::option("template", format!("{text:?}: {why}"));
        if text.is_empty() || text.len() > MAX_TEMPLATE {
            return Err(bad("must be 1 to 1024 bytes"));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == '.' => {
                                name.push(c)
                            }
                            Some(_) => return Err(bad("field names are letters, digits, _ and .")),
                            None => return Err(bad("unclosed {")),
                        }
                    }
                    if name.is_empty() {
                        return Err(bad("empty {}"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field(name));
                }
                '}' => return Err(bad("unmatched } (write }} for a literal brace)")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        let pattern = parts.iter().any(|p| match p {
            Part::Text(t) => t.contains(['*', '?', '[']),
            Part::Field(_) => false,
        });
        Ok(Template { parts, pattern })
    }

    /// The key or pattern for these field values.
    pub(crate) fn fill(&self, fields: &[(&str, &str)]) -> Result<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(name) => {
                    let value = fields
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| *v)
                        .ok_or_else(|| {
                            Error::option("fields", format!("no value for {{{name}}}"))
                        })?;
                    if self.pattern {
                        for c in value.chars() {
                            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                                out.push('\\');
                            }
                            out.push(c);
                        }
                    } else {
                        out.push_str(value);
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_and_escape() {
        let key = Template::parse("user:{author_id}:posts").unwrap();
        assert!(!key.pattern);
        assert_eq!(key.fill(&[("author_id", "42")]).unwrap(), "user:42:posts");
        assert!(key.fill(&[("other", "1")]).is_err());
        let pattern = Template::parse("feed:{region}:*").unwrap();
        assert!(pattern.pattern);
        assert_eq!(pattern.fill(&[("region", "eu*")]).unwrap(), "feed:eu\\*:*");
        let braces = Template::parse("{{user:{id}}}:profile").unwrap();
        assert_eq!(braces.fill(&[("id", "7")]).unwrap(), "{user:7}:profile");
        for bad in ["", "a{", "a}", "{}", "{a b}"] {
            assert!(Template::parse(bad).is_err(), "{bad:?}");
        }
    }
}
