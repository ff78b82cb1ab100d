//! Sample summaries and plain-text tables.

use std::time::Duration;

/// Median and 99th percentile (nearest rank) of a set of timings, in µs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub median_us: f64,
    pub p99_us: f64,
    pub samples: usize,
}

pub fn summarize(samples: &[Duration]) -> Summary {
    let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    let rank = |q: f64| -> f64 {
        if us.is_empty() {
            return 0.0;
        }
        // Nearest rank: the smallest value with at least q of the samples at or below it.
        let n = us.len() as f64;
        let i = ((q * n).ceil() as usize).clamp(1, us.len()) - 1;
        us.get(i).copied().unwrap_or(0.0)
    };
    Summary {
        median_us: rank(0.5),
        p99_us: rank(0.99),
        samples: us.len(),
    }
}

/// A table printed with aligned columns: the first column (and those
/// marked with [`Table::left`]) left-aligned, the others right-aligned.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    left: Vec<usize>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            left: vec![0],
        }
    }

    /// Left-aligns column `col` (text rather than figures).
    pub fn left(mut self, col: usize) -> Self {
        self.left.push(col);
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(cols) {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let line = |cells: &[String]| -> String {
            let mut out = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w.saturating_sub(cell.chars().count());
                if i > 0 {
                    out.push_str("  ");
                }
                if self.left.contains(&i) {
                    out.push_str(cell);
                    out.extend(std::iter::repeat_n(' ', pad));
                } else {
                    out.extend(std::iter::repeat_n(' ', pad));
                    out.push_str(cell);
                }
            }
            out.trim_end().to_string()
        };
        let mut out = line(&self.header);
        out.push('\n');
        let total: usize = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
        out.extend(std::iter::repeat_n('-', total));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }
}

/// `12.3` for µs figures.
pub fn us(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Bytes with thousands separators: `294,620`.
pub fn bytes(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let s = summarize(&samples);
        assert_eq!(s.median_us.round() as u64, 50);
        assert_eq!(s.p99_us.round() as u64, 99);
        assert_eq!(summarize(&[]).samples, 0);
    }

    #[test]
    fn byte_counts_are_grouped() {
        assert_eq!(bytes(294_620), "294,620");
        assert_eq!(bytes(999), "999");
        assert_eq!(bytes(1_000), "1,000");
    }
}
