//! Text building blocks: aligned tables, bars, ages and numbers, all plain ASCII so the output
//! reads the same without colour, in a log or a narrow terminal.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

/// A table of left-aligned columns separated by two spaces; the last column is cut to `width`.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table, every line indented by `indent` spaces and at most `width` characters long:
    /// a last column too long for the line is cut.
    pub fn render(&self, indent: usize, width: usize) -> String {
        self.render_with(indent, width, false)
    }

    /// As [`Table::render`], but a last column too long for the line goes on over the next lines,
    /// under its own column (for reasons and messages, which must be read whole).
    pub fn render_wrapped(&self, indent: usize, width: usize) -> String {
        self.render_with(indent, width, true)
    }

    fn render_with(&self, indent: usize, width: usize, wrapped: bool) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = " ".repeat(indent);
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    let column = line.chars().count();
                    if wrapped && column + 20 < width {
                        let lines = wrap(cell, width - column);
                        let continuation = format!("\n{}", " ".repeat(column));
                        line.push_str(&lines.join(&continuation));
                    } else {
                        line.push_str(cell);
                    }
                } else {
                    line.push_str(&pad(cell, widths[i]));
                    line.push_str("  ");
                }
            }
            for part in line.split('\n') {
                out.push_str(&fit(part.trim_end(), width));
                out.push('\n');
            }
        }
        out
    }
}

fn pad(cell: &str, width: usize) -> String {
    let len = cell.chars().count();
    format!("{cell}{}", " ".repeat(width.saturating_sub(len)))
}

/// `text` in lines of at most `width` characters, broken between words (a word longer than a line
/// is cut by [`fit`] later).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    lines
}

/// `line` cut to `width` characters, ending in `...` when cut.
pub fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width || width < 4 {
        return line.to_owned();
    }
    let kept: String = line.chars().take(width - 3).collect();
    format!("{kept}...")
}

/// A `Label:  value` line, the value column aligned at 14 characters; a long value goes on over
/// the next lines in that column.
pub fn field(label: &str, value: &str, width: usize) -> String {
    let lines = if width > 34 {
        wrap(value, width - 14)
    } else {
        vec![value.to_owned()]
    };
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let label = if i == 0 {
            format!("{label}:")
        } else {
            String::new()
        };
        out += &fit(format!("{label:<14}{line}").trim_end(), width);
        out.push('\n');
    }
    out
}

/// `[#####-----]`: `filled` of `total` cells of a bar `cells` wide.
pub fn bar(filled: f64, total: f64, cells: usize) -> String {
    let share = if total > 0.0 {
        (filled / total).clamp(0.0, 1.0)
    } else {
        0.0
    };
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let full = ((share * cells as f64).round() as usize).min(cells);
    format!("[{}{}]", "#".repeat(full), "-".repeat(cells - full))
}

/// How long before `now` a time was, as kubectl prints ages: `42s`, `5m10s`, `3h`, `2d`.
pub fn age(at: &Time, now: Timestamp) -> String {
    let seconds = now.as_second().saturating_sub(at.0.as_second()).max(0);
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A measured value: at most two decimals, none when whole.
pub fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else if value.abs() >= 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// An optional value, `-` when absent.
pub fn optional<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// A section title followed by a line under it.
pub fn heading(title: &str) -> String {
    format!("\n{title}\n{}\n", "-".repeat(title.chars().count()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_aligns_columns_and_cuts_the_last_one() {
        let mut table = Table::new(&["NAME", "REASON"]);
        table.row(vec!["a".into(), "short".into()]);
        table.row(vec![
            "longer".into(),
            "a reason far too long for the width".into(),
        ]);
        assert_eq!(
            table.render(2, 24),
            "  NAME    REASON\n  a       short\n  longer  a reason fa...\n"
        );
    }

    #[test]
    fn a_wrapped_table_continues_the_last_column_under_itself() {
        let mut table = Table::new(&["AGE", "REASON"]);
        table.row(vec![
            "5s".into(),
            "one two three four five six seven eight nine ten eleven".into(),
        ]);
        assert_eq!(
            table.render_wrapped(0, 30),
            "AGE  REASON\n5s   one two three four five\n     six seven eight nine ten\n     eleven\n"
        );
    }

    #[test]
    fn a_bar_fills_its_share_and_stays_in_bounds() {
        assert_eq!(bar(3.0, 10.0, 10), "[###-------]");
        assert_eq!(bar(12.0, 10.0, 4), "[####]");
        assert_eq!(bar(1.0, 0.0, 4), "[----]");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now = Timestamp::from_second(100_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let at = |s: i64| Time(Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH));
        assert_eq!(age(&at(99_958), now), "42s");
        assert_eq!(age(&at(100_000 - 310), now), "5m10s");
        assert_eq!(age(&at(100_000 - 7200), now), "2h");
        assert_eq!(age(&at(100_001), now), "0s");
    }

    #[test]
    fn numbers_keep_two_decimals_at_most() {
        assert_eq!(number(99.0), "99");
        assert_eq!(number(99.456), "99.46");
        assert_eq!(number(250.25), "250.2");
    }
}
