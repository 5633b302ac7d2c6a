//! A TOML syntax check, small enough not to need a TOML crate: tables (`[a.b]`, `[[a]]`), dotted
//! and quoted keys, and values (strings of the four kinds, integers in four bases, floats, booleans,
//! dates and times, arrays across lines, inline tables), with redefined keys and tables refused.
//! It checks syntax only; nothing is built from the document.

use std::collections::BTreeSet;

use super::Problem;

pub fn check(text: &str) -> Result<(), Problem> {
    let mut parser = Parser {
        text: text.as_bytes(),
        at: 0,
        line: 1,
        line_start: 0,
    };
    let mut defined: BTreeSet<String> = BTreeSet::new();
    let mut table = String::new();
    loop {
        parser.skip_blank_lines()?;
        if parser.at >= parser.text.len() {
            return Ok(());
        }
        if parser.peek() == Some(b'[') {
            let array = parser.text.get(parser.at + 1) == Some(&b'[');
            parser.at += if array { 2 } else { 1 };
            parser.skip_spaces();
            let name = parser.key()?;
            parser.skip_spaces();
            parser.expect(b']')?;
            if array {
                parser.expect(b']')?;
            }
            table = name.clone();
            if !array && !defined.insert(format!("[{name}]")) {
                return Err(parser.problem(format!("table [{name}] is defined twice")));
            }
            // Keys of an array-of-tables element start afresh.
            if array {
                let prefix = format!("{name}.");
                defined.retain(|key| !key.starts_with(&prefix));
            }
        } else {
            let key = parser.key()?;
            parser.skip_spaces();
            parser.expect(b'=')?;
            parser.skip_spaces();
            parser.value()?;
            let full = if table.is_empty() {
                key
            } else {
                format!("{table}.{key}")
            };
            if !defined.insert(full.clone()) {
                return Err(parser.problem(format!("key {full} is defined twice")));
            }
        }
        parser.end_of_line()?;
    }
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
    line: usize,
    line_start: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn problem(&self, message: impl Into<String>) -> Problem {
        let column = String::from_utf8_lossy(&self.text[self.line_start..self.at.min(self.text.len())])
            .chars()
            .count()
            + 1;
        Problem::at(self.line, column, message)
    }

    fn newline(&mut self) {
        self.at += 1;
        self.line += 1;
        self.line_start = self.at;
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn skip_comment(&mut self) {
        if self.peek() == Some(b'#') {
            while !matches!(self.peek(), None | Some(b'\n')) {
                self.at += 1;
            }
        }
    }

    fn skip_blank_lines(&mut self) -> Result<(), Problem> {
        loop {
            self.skip_spaces();
            self.skip_comment();
            match self.peek() {
                Some(b'\n') => self.newline(),
                Some(b'\r') if self.text.get(self.at + 1) == Some(&b'\n') => {
                    self.at += 1;
                    self.newline();
                }
                _ => return Ok(()),
            }
        }
    }

    /// Spaces, arrays' newlines and comments.
    fn skip_whitespace_and_newlines(&mut self) {
        loop {
            self.skip_spaces();
            self.skip_comment();
            match self.peek() {
                Some(b'\n') => self.newline(),
                Some(b'\r') => self.at += 1,
                _ => return,
            }
        }
    }

    fn end_of_line(&mut self) -> Result<(), Problem> {
        self.skip_spaces();
        self.skip_comment();
        match self.peek() {
            None => Ok(()),
            Some(b'\n') => {
                self.newline();
                Ok(())
            }
            Some(b'\r') if self.text.get(self.at + 1) == Some(&b'\n') => {
                self.at += 1;
                self.newline();
                Ok(())
            }
            Some(_) => Err(self.problem("expected the end of the line")),
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), Problem> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.problem(format!("expected '{}'", char::from(byte))))
        }
    }

    /// A key, possibly dotted and quoted, normalised to `a.b.c`.
    fn key(&mut self) -> Result<String, Problem> {
        let mut parts = Vec::new();
        loop {
            self.skip_spaces();
            let part = match self.peek() {
                Some(b'"') => self.basic_string()?,
                Some(b'\'') => self.literal_string()?,
                _ => {
                    let start = self.at;
                    while matches!(self.peek(), Some(byte) if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
                    {
                        self.at += 1;
                    }
                    if start == self.at {
                        return Err(self.problem("expected a key"));
                    }
                    String::from_utf8_lossy(&self.text[start..self.at]).into_owned()
                }
            };
            parts.push(part);
            self.skip_spaces();
            if self.peek() == Some(b'.') {
                self.at += 1;
            } else {
                return Ok(parts.join("."));
            }
        }
    }

    fn basic_string(&mut self) -> Result<String, Problem> {
        if self.text[self.at..].starts_with(b"\"\"\"") {
            self.at += 3;
            while !self.text[self.at..].starts_with(b"\"\"\"") {
                match self.peek() {
                    None => return Err(self.problem("unterminated multi-line string")),
                    Some(b'\\') => self.at += 2,
                    Some(b'\n') => self.newline(),
                    Some(_) => self.at += 1,
                }
            }
            self.at += 3;
            while self.peek() == Some(b'"') {
                self.at += 1;
            }
            return Ok(String::new());
        }
        self.at += 1;
        let start = self.at;
        loop {
            match self.peek() {
                None | Some(b'\n') => return Err(self.problem("unterminated string")),
                Some(b'\\') => {
                    match self.text.get(self.at + 1) {
                        Some(b'b' | b't' | b'n' | b'f' | b'r' | b'"' | b'\\' | b'u' | b'U' | b'e') => {}
                        _ => {
                            self.at += 1;
                            return Err(self.problem("invalid escape in a string"));
                        }
                    }
                    self.at += 2;
                }
                Some(b'"') => {
                    let text = String::from_utf8_lossy(&self.text[start..self.at]).into_owned();
                    self.at += 1;
                    return Ok(text);
                }
                Some(_) => self.at += 1,
            }
        }
    }

    fn literal_string(&mut self) -> Result<String, Problem> {
        if self.text[self.at..].starts_with(b"'''") {
            self.at += 3;
            while !self.text[self.at..].starts_with(b"'''") {
                match self.peek() {
                    None => return Err(self.problem("unterminated multi-line string")),
                    Some(b'\n') => self.newline(),
                    Some(_) => self.at += 1,
                }
            }
            self.at += 3;
            return Ok(String::new());
        }
        self.at += 1;
        let start = self.at;
        loop {
            match self.peek() {
                None | Some(b'\n') => return Err(self.problem("unterminated string")),
                Some(b'\'') => {
                    let text = String::from_utf8_lossy(&self.text[start..self.at]).into_owned();
                    self.at += 1;
                    return Ok(text);
                }
                Some(_) => self.at += 1,
            }
        }
    }

    fn value(&mut self) -> Result<(), Problem> {
        match self.peek() {
            Some(b'"') => self.basic_string().map(drop),
            Some(b'\'') => self.literal_string().map(drop),
            Some(b'[') => {
                self.at += 1;
                loop {
                    self.skip_whitespace_and_newlines();
                    if self.peek() == Some(b']') {
                        self.at += 1;
                        return Ok(());
                    }
                    self.value()?;
                    self.skip_whitespace_and_newlines();
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(b']') => {}
                        _ => return Err(self.problem("expected ',' or ']' in an array")),
                    }
                }
            }
            Some(b'{') => {
                self.at += 1;
                self.skip_spaces();
                if self.peek() == Some(b'}') {
                    self.at += 1;
                    return Ok(());
                }
                let mut keys = BTreeSet::new();
                loop {
                    let key = self.key()?;
                    if !keys.insert(key.clone()) {
                        return Err(self.problem(format!("key {key} is defined twice")));
                    }
                    self.skip_spaces();
                    self.expect(b'=')?;
                    self.skip_spaces();
                    self.value()?;
                    self.skip_spaces();
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Ok(());
                        }
                        _ => return Err(self.problem("expected ',' or '}' in an inline table")),
                    }
                }
            }
            _ => self.bare_value(),
        }
    }

    /// Numbers, booleans, dates and times: a run of their characters, then checked.
    fn bare_value(&mut self) -> Result<(), Problem> {
        let start = self.at;
        while matches!(self.peek(), Some(byte) if byte.is_ascii_alphanumeric() || b"+-_.:".contains(&byte)) {
            self.at += 1;
        }
        // A date and a time may be separated by one space.
        if self.peek() == Some(b' ')
            && self.text[start..self.at].len() == 10
            && self.text.get(self.at + 1).is_some_and(u8::is_ascii_digit)
        {
            self.at += 1;
            while matches!(self.peek(), Some(byte) if byte.is_ascii_alphanumeric() || b"+-_.:".contains(&byte))
            {
                self.at += 1;
            }
        }
        let word = String::from_utf8_lossy(&self.text[start..self.at]).into_owned();
        if is_scalar(&word) {
            Ok(())
        } else {
            self.at = start;
            Err(self.problem(if word.is_empty() {
                "expected a value".to_owned()
            } else {
                format!("{word:?} is not a TOML value (strings need quotes)")
            }))
        }
    }
}

fn is_scalar(word: &str) -> bool {
    if matches!(
        word,
        "true" | "false" | "inf" | "+inf" | "-inf" | "nan" | "+nan" | "-nan"
    ) {
        return true;
    }
    let digits = |text: &str, radix: u32| {
        !text.is_empty()
            && !text.starts_with('_')
            && !text.ends_with('_')
            && !text.contains("__")
            && text.chars().all(|c| c == '_' || c.is_digit(radix))
    };
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = word.strip_prefix(prefix) {
            return digits(rest, radix);
        }
    }
    let unsigned = word.strip_prefix(['+', '-']).unwrap_or(word);
    if digits(unsigned, 10) {
        return unsigned == "0" || !unsigned.starts_with('0');
    }
    // Floats: digits, an optional fraction, an optional exponent.
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (
            mantissa,
            Some(exponent.strip_prefix(['+', '-']).unwrap_or(exponent)),
        ),
        None => (unsigned, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((whole, fraction)) => digits(whole, 10) && digits(fraction, 10),
        None => digits(mantissa, 10),
    };
    if mantissa_ok
        && exponent.is_none_or(|exponent| digits(exponent, 10))
        && (exponent.is_some() || mantissa.contains('.'))
    {
        return true;
    }
    is_date_time(word)
}

/// `1979-05-27`, `07:32:00`, `1979-05-27T07:32:00.999-07:00` and their variants.
fn is_date_time(word: &str) -> bool {
    let shape = |text: &str, pattern: &str| {
        text.len() == pattern.len()
            && text.bytes().zip(pattern.bytes()).all(|(byte, want)| {
                if want == b'9' {
                    byte.is_ascii_digit()
                } else {
                    byte == want
                }
            })
    };
    let time = |text: &str| {
        let (time, _fraction) = text.split_once('.').unwrap_or((text, ""));
        shape(time, "99:99:99") || shape(time, "99:99")
    };
    let (date, rest) = if word.len() >= 10 && shape(&word[..10], "9999-99-99") {
        (true, &word[10..])
    } else {
        (false, word)
    };
    if date && rest.is_empty() {
        return true;
    }
    let rest = if date {
        match rest.strip_prefix(['T', 't', ' ']) {
            Some(rest) => rest,
            None => return false,
        }
    } else {
        rest
    };
    let (time_part, zone) = match rest.find(['Z', 'z', '+', '-']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    time(time_part)
        && (zone.is_empty() || zone.eq_ignore_ascii_case("z") || (date && shape(&zone[1..], "99:99")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_document_passes() {
        let text = r#"# top
title = "TOML \"example\""
name = 'literal'
[owner]
dob = 1979-05-27T07:32:00-08:00
day = 1979-05-27
at = 07:32:00.5
[database]
ports = [ 8000, 8001,
  8002, # comment
]
data = [ ["gamma", "delta"], [1, 2] ]
temp = { cpu = 79.5, case = 72.0 }
enabled = true
hex = 0xDEAD_BEEF
big = 1e6
neg = -3.5e-2
"quoted key" = """
multi
line"""
a.b.c = 1
[[products]]
name = "Hammer"
[[products]]
name = "Nail"
"#;
        assert_eq!(check(text), Ok(()));
    }

    #[test]
    fn mistakes_are_placed_at_their_line_and_column() {
        for (text, line, column) in [
            ("a = 1\nb = hello\n", 2, 5),
            ("a = 1\na = 2\n", 2, 6),
            ("[t]\nx = 1\n[t]\n", 3, 4),
            ("a = \"open\n", 1, 10),
            ("a = [1, 2\nb = 3\n", 2, 1),
            ("a = 1 2\n", 1, 7),
            ("= 1\n", 1, 1),
            ("a = 012\n", 1, 5),
        ] {
            let problem = check(text).unwrap_err();
            assert_eq!(
                (problem.line, problem.column),
                (Some(line), Some(column)),
                "{text:?}: {}",
                problem.message
            );
        }
    }
}
