//! The value matchers a rule condition is made of: strings (exact, prefix, suffix, contains,
//! glob, regex), address ranges, ports. Each is built once from YAML and then only matched.
//!
//! In: `serde_norway::Value`s from a rule's `match`/`unless` block. Out: matchers, or a message
//! saying what is wrong (the caller adds the line). Nothing is dropped.

use regex::Regex;
use serde_norway::Value;

use crate::scope::Cidr;

/// One string pattern.
#[derive(Clone, Debug)]
enum Pat {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// Glob and regex both compile to a regex; a glob is anchored at both ends.
    Re(Regex),
}

impl Pat {
    fn matches(&self, s: &str) -> bool {
        match self {
            Pat::Exact(p) => s == p,
            Pat::Prefix(p) => s.starts_with(p.as_str()),
            Pat::Suffix(p) => s.ends_with(p.as_str()),
            Pat::Contains(p) => s.contains(p.as_str()),
            Pat::Re(r) => r.is_match(s),
        }
    }
}

/// Any of several patterns. YAML: `sh`, `[sh, bash]`, or a mapping of kinds to one pattern or
/// a list: `{glob: "*/.bash_history", prefix: /tmp/, suffix: .sh, contains: x, regex: "^a",
/// in: [a, b]}`.
#[derive(Clone, Debug)]
pub struct StrMatcher {
    pats: Vec<Pat>,
}

impl StrMatcher {
    pub fn matches(&self, s: &str) -> bool {
        self.pats.iter().any(|p| p.matches(s))
    }

    pub fn any<'a>(&self, mut it: impl Iterator<Item = &'a str>) -> bool {
        it.any(|s| self.matches(s))
    }

    pub fn parse(v: &Value) -> Result<Self, String> {
        let mut pats = Vec::new();
        match v {
            Value::Mapping(m) => {
                for (k, v) in m {
                    let kind = k.as_str().ok_or("a pattern kind must be a word")?;
                    for s in scalars(v)? {
                        pats.push(match kind {
                            "in" | "exact" => Pat::Exact(s),
                            "prefix" => Pat::Prefix(s),
                            "suffix" => Pat::Suffix(s),
                            "contains" => Pat::Contains(s),
                            "glob" => Pat::Re(glob(&s)?),
                            "regex" => Pat::Re(Regex::new(&s).map_err(|e| format!("regex {s:?}: {e}"))?),
                            other => {
                                return Err(format!(
                                    "unknown pattern kind {other:?} (in, prefix, suffix, contains, glob, regex)"
                                ))
                            }
                        });
                    }
                }
            }
            other => pats.extend(scalars(other)?.into_iter().map(Pat::Exact)),
        }
        if pats.is_empty() {
            return Err("no pattern given".into());
        }
        Ok(StrMatcher { pats })
    }
}

/// A scalar or a list of scalars, as strings.
pub fn scalars(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Sequence(items) => items.iter().map(scalar).collect(),
        other => Ok(vec![scalar(other)?]),
    }
}

fn scalar(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err("expected a word, a number or a list of them".into()),
    }
}

/// `*` any run of characters (including `/`: `*/.bash_history` matches every home), `?` one
/// character, `[abc]` / `[!abc]` a class; everything else literal. Anchored at both ends.
pub fn glob(g: &str) -> Result<Regex, String> {
    let mut re = String::from("^");
    let mut chars = g.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            '[' => {
                let mut class = String::from("[");
                if chars.peek() == Some(&'!') {
                    chars.next();
                    class.push('^');
                }
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == ']' {
                        closed = true;
                        break;
                    }
                    if c == '\\' || c == '[' {
                        class.push('\\');
                    }
                    class.push(c);
                }
                if !closed {
                    return Err(format!("glob {g:?}: unclosed ["));
                }
                class.push(']');
                re.push_str(&class);
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    Regex::new(&re).map_err(|e| format!("glob {g:?}: {e}"))
}

/// Address ranges: `10.0.0.0/8`, a bare address, or a list.
pub fn cidrs(v: &Value) -> Result<Vec<Cidr>, String> {
    scalars(v)?
        .into_iter()
        .map(|s| {
            let s = if s.contains('/') {
                s
            } else if s.contains(':') {
                format!("{s}/128")
            } else {
                format!("{s}/32")
            };
            s.parse::<Cidr>().map_err(|e| e.to_string())
        })
        .collect()
}

/// Ports: `443`, `[80, 443]`, `"8000-8999"`.
pub fn ports(v: &Value) -> Result<Vec<(u16, u16)>, String> {
    scalars(v)?
        .into_iter()
        .map(|s| {
            let p =
                |x: &str| x.trim().parse::<u16>().map_err(|_| format!("{s:?} is not a port or a range like 8000-8999"));
            match s.split_once('-') {
                Some((a, b)) => Ok((p(a)?, p(b)?)),
                None => p(&s).map(|x| (x, x)),
            }
        })
        .collect()
}

pub fn uints(v: &Value) -> Result<Vec<u32>, String> {
    scalars(v)?.into_iter().map(|s| s.parse::<u32>().map_err(|_| format!("{s:?} is not a number"))).collect()
}

pub fn boolean(v: &Value) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| "expected true or false".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(y: &str) -> StrMatcher {
        StrMatcher::parse(&serde_norway::from_str(y).unwrap()).unwrap()
    }

    #[test]
    fn string_patterns_of_each_kind() {
        assert!(m("sh").matches("sh") && !m("sh").matches("bash"));
        assert!(m("[sh, bash]").matches("bash"));
        assert!(m("{prefix: /tmp/}").matches("/tmp/x") && !m("{prefix: /tmp/}").matches("/var/tmp/x"));
        assert!(m("{suffix: .sh}").matches("a.sh"));
        assert!(m("{contains: base64}").matches("echo x | base64 -d"));
        assert!(m("{regex: 'curl.*\\|\\s*sh'}").matches("curl http://x | sh"));
        assert!(m("{in: [a, b], prefix: c}").matches("cz"));
        assert!(m("7").matches("7"), "numbers are words too");
    }

    #[test]
    fn globs_cross_slashes_and_are_anchored() {
        let g = m("{glob: '*/.bash_history'}");
        assert!(g.matches("/root/.bash_history") && g.matches("/home/a/b/.bash_history"));
        assert!(!g.matches("/root/.bash_history.bak"));
        assert!(m("{glob: '/etc/[gs]shadow'}").matches("/etc/gshadow"));
        assert!(m("{glob: '/tmp/?.sh'}").matches("/tmp/a.sh") && !m("{glob: '/tmp/?.sh'}").matches("/tmp/ab.sh"));
        assert!(m("{glob: 'a.b'}").matches("a.b") && !m("{glob: 'a.b'}").matches("axb"), "dots are literal");
        assert!(StrMatcher::parse(&serde_norway::from_str("{glob: '[ab'}").unwrap()).is_err());
        assert!(StrMatcher::parse(&serde_norway::from_str("{regex: '('}").unwrap()).is_err());
        assert!(StrMatcher::parse(&serde_norway::from_str("{like: x}").unwrap()).unwrap_err().contains("like"));
    }

    #[test]
    fn cidrs_and_ports() {
        let c = cidrs(&serde_norway::from_str("[10.0.0.0/8, 1.1.1.1, 'fd00::/8']").unwrap()).unwrap();
        assert!(c[0].contains("10.2.3.4".parse().unwrap()) && c[1].contains("1.1.1.1".parse().unwrap()));
        assert!(!c[1].contains("1.1.1.2".parse().unwrap()));
        assert_eq!(ports(&serde_norway::from_str("[22, '8000-8999']").unwrap()).unwrap(), vec![(22, 22), (8000, 8999)]);
        assert!(ports(&serde_norway::from_str("http").unwrap()).is_err());
        assert!(cidrs(&serde_norway::from_str("10.0.0.0/99").unwrap()).is_err());
    }
}
