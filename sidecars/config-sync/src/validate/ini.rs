//! INI files and Java properties: blank lines, comments (`#`, `;`, `!`), `[section]` headers,
//! `key = value` / `key: value` / `key value` pairs, and a trailing `\` continuing a value.

use super::Problem;

pub fn check(text: &str) -> Result<(), Problem> {
    let mut continued = false;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len() + 1;
        let trimmed = trimmed.trim_end();
        if continued {
            continued = trimmed.ends_with('\\');
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with(['#', ';', '!']) {
            continue;
        }
        if let Some(header) = trimmed.strip_prefix('[') {
            match header.strip_suffix(']') {
                Some(name) if !name.trim().is_empty() && !name.contains([']', '[']) => continue,
                Some(_) => return Err(Problem::at(number, indent, "a section header needs a name")),
                None => {
                    return Err(Problem::at(
                        number,
                        indent + trimmed.len(),
                        "expected ']' to close the section header",
                    ))
                }
            }
        }
        let key_end = trimmed
            .find(['=', ':'])
            .unwrap_or_else(|| trimmed.find(char::is_whitespace).unwrap_or(trimmed.len()));
        if trimmed[..key_end].trim().is_empty() {
            return Err(Problem::at(number, indent, "expected a key before the separator"));
        }
        continued = trimmed.ends_with('\\');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_pairs_comments_and_continuations_pass() {
        let text = "; comment\n# also\n[server]\nport = 80\nname: web\nflag\n  long = a \\\n   b\n\n[db.primary]\nurl=x\n";
        assert_eq!(check(text), Ok(()));
    }

    #[test]
    fn an_unclosed_header_and_a_missing_key_are_placed() {
        assert_eq!(check("a=1\n  [server\n").unwrap_err().line, Some(2));
        let error = check("[s]\n= 3\n").unwrap_err();
        assert_eq!((error.line, error.column), (Some(2), Some(1)));
        assert_eq!(
            check("[]\n").unwrap_err().message,
            "a section header needs a name"
        );
    }
}
