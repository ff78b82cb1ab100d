//! The proxy-wasm metrics as Kong's Prometheus plugin exports them: the
//! text `kong/plugins/prometheus/wasmx.lua` (`metrics_data`) writes into
//! the `/metrics` answer when the plugin's Wasm metrics are on.
//!
//! What it does, by the version of `wasmx.lua` that reads the host's
//! `pw:<filter>:<name>` keys (Kong/kong commit `9802192e`):
//! - every key of the metrics zone, in the zone's order, is split into a
//!   family name and labels (`parse_pw_key`): the filter name is the first
//!   match of `pw:([\w\.]+):`; each of that filter's `label_patterns`
//!   (from its `meta.json`) is matched with `ngx.re.match` and one context
//!   table shared by all patterns, so each search starts where the last
//!   successful one ended; a match gives the label `label` with the value
//!   of the pattern's second group, and the family name is the key cut
//!   before the earliest first group; `:` become `_` in the name;
//! - families are written in byte order of their names; a family's type is
//!   its first member's; series follow the zone's order;
//! - `# HELP <name>` (no text) and `# TYPE <name> <type>`, then one line
//!   per series; a histogram writes its bins in the host's order with
//!   running totals (`le="+Inf"` for the last), then every series' `_sum`
//!   lines, then every series' `_count` lines;
//! - numbers go through Lua's `%s`, i.e. `%.14g` of a double;
//! - every 100 families and at the end, `ngx.say` adds a newline.

use super::api::{LabelPattern, MetricKind, MetricReading, MetricValue};
use super::metrics::BIN_INF;
use anyhow::{anyhow, bail};
use pcre2::bytes::{Regex, RegexBuilder};
use std::collections::BTreeMap;

/// `FLUSH_EVERY` of `wasmx.lua`.
const FLUSH_EVERY: usize = 100;

/// Renders `metrics` (in the zone's order, as
/// [`Emulator::metrics`](super::Emulator::metrics) gives them) the way
/// `wasmx.lua` writes them. `label_patterns` maps a filter name to its
/// `meta.json` `metrics.label_patterns`. An error is a case where
/// `wasmx.lua` raises a Lua error (Kong's `/metrics` then fails).
pub fn render(
    metrics: &[MetricReading],
    label_patterns: &BTreeMap<String, Vec<LabelPattern>>,
) -> anyhow::Result<String> {
    let filter_re = build(r"pw:([\w\.]+):")?;
    let mut compiled: BTreeMap<&str, Vec<(&str, Option<Regex>)>> = BTreeMap::new();
    for (filter, patterns) in label_patterns {
        // `ngx.re.match` answers nil (no match) for a pattern that does
        // not compile.
        let list = patterns
            .iter()
            .map(|p| (p.label.as_str(), build(&p.pattern).ok()))
            .collect();
        compiled.insert(filter.as_str(), list);
    }

    let mut families: BTreeMap<Vec<u8>, Family<'_>> = BTreeMap::new();
    for m in metrics {
        let (name, labels) = parse_key(m.name.as_bytes(), &filter_re, &compiled)?;
        families
            .entry(name.clone())
            .or_insert_with(|| Family {
                name,
                kind: m.kind(),
                series: Vec::new(),
            })
            .series
            .push((labels, m));
    }

    let mut out = String::new();
    for (i, family) in families.values().enumerate() {
        family.serialize(&mut out)?;
        if (i + 1) % FLUSH_EVERY == 0 {
            out.push('\n');
        }
    }
    out.push('\n');
    Ok(out)
}

fn build(pattern: &str) -> anyhow::Result<Regex> {
    RegexBuilder::new()
        .utf(false)
        .build(pattern)
        .map_err(|e| anyhow!("pattern {pattern:?}: {e}"))
}

type Labels = Vec<(String, String)>;

struct Family<'a> {
    name: Vec<u8>,
    kind: MetricKind,
    series: Vec<(Labels, &'a MetricReading)>,
}

/// `parse_key` / `parse_pw_key`.
fn parse_key(
    key: &[u8],
    filter_re: &Regex,
    patterns: &BTreeMap<&str, Vec<(&str, Option<Regex>)>>,
) -> anyhow::Result<(Vec<u8>, Labels)> {
    let mut name = key.to_vec();
    let mut labels = Vec::new();
    if key.len() > 3 && key.starts_with(b"pw:") {
        let filter = filter_re
            .captures(key)
            .map_err(|e| anyhow!("{e}"))?
            .and_then(|c| c.get(1))
            .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
            .ok_or_else(|| {
                anyhow!(
                    "wasmx.lua fails on metric {:?}: no filter name matches pw:([\\w\\.]+):",
                    String::from_utf8_lossy(key)
                )
            })?;
        // Lua positions: 1-based; `#pw_key` is the "no label" mark.
        let mut first = key.len();
        // `match_ctx.pos`, kept across patterns (0-based start offset).
        let mut pos = 0usize;
        for (label, re) in patterns.get(filter.as_str()).into_iter().flatten() {
            let Some(re) = re else { continue };
            let mut locs = re.capture_locations();
            let found = re
                .captures_read_at(&mut locs, key, pos.min(key.len()))
                .map_err(|e| anyhow!("{e}"))?;
            let Some(whole) = found else { continue };
            let end = whole.end();
            let g1 = if re.captures_len() > 1 {
                locs.get(1)
            } else {
                None
            };
            let Some((s1, e1)) = g1 else {
                bail!(
                    "wasmx.lua fails on metric {:?}: label pattern for {label:?} has no first group \
                     that matched (`#matches[1]` of a nil or false value)",
                    String::from_utf8_lossy(key)
                );
            };
            // `match_ctx.pos - #matches[1]`, with pos 1-based after the match.
            let l_pos = (end + 1).saturating_sub(e1 - s1);
            let value = if re.captures_len() > 2 {
                locs.get(2).map_or_else(
                    || "false".to_string(),
                    |(a, b)| {
                        String::from_utf8_lossy(key.get(a..b).unwrap_or_default()).into_owned()
                    },
                )
            } else {
                "nil".to_string()
            };
            labels.push((label.to_string(), value));
            first = first.min(l_pos);
            pos = end;
        }
        if first != key.len() {
            name = key
                .get(..first.saturating_sub(1))
                .unwrap_or_default()
                .to_vec();
        }
    }
    for b in name.iter_mut() {
        if *b == b':' {
            *b = b'_';
        }
    }
    Ok((name, labels))
}

impl Family<'_> {
    fn serialize(&self, out: &mut String) -> anyhow::Result<()> {
        let name = String::from_utf8_lossy(&self.name);
        out.push_str(&format!("# HELP {name}\n# TYPE {name} {}", self.kind));
        if self.kind == MetricKind::Histogram {
            let mut sums = String::new();
            let mut counts = String::new();
            for (labels, m) in &self.series {
                let MetricValue::Histogram { bins, sum } = &m.value else {
                    bail!(
                        "wasmx.lua fails on metric {:?}: a {} in histogram family {name} \
                         (`ipairs` of a number)",
                        m.name,
                        m.kind()
                    );
                };
                let (slabels, blabels) = if labels.is_empty() {
                    (String::new(), "{".to_string())
                } else {
                    let s = serialize_labels(labels);
                    let b = format!("{},", &s[..s.len() - 1]);
                    (s, b)
                };
                let mut count = 0f64;
                for &(ub, c) in bins {
                    count += f64::from(c);
                    let le = if ub == BIN_INF {
                        "+Inf".to_string()
                    } else {
                        lua_number(f64::from(ub))
                    };
                    out.push_str(&format!(
                        "\n{name}{blabels}le=\"{le}\"}} {}",
                        lua_number(count)
                    ));
                }
                sums.push_str(&format!(
                    "\n{name}_sum{slabels} {}",
                    lua_number(*sum as f64)
                ));
                counts.push_str(&format!("\n{name}_count{slabels} {}", lua_number(count)));
            }
            out.push_str(&sums);
            out.push_str(&counts);
        } else {
            for (labels, m) in &self.series {
                let Some(v) = m.number() else {
                    bail!(
                        "wasmx.lua cannot print metric {:?}: a histogram in {} family {name} \
                         (its value would be written as a Lua table address)",
                        m.name,
                        self.kind
                    );
                };
                let slabels = if labels.is_empty() {
                    String::new()
                } else {
                    serialize_labels(labels)
                };
                out.push_str(&format!("\n{name}{slabels} {}", lua_number(v as f64)));
            }
        }
        out.push('\n');
        Ok(())
    }
}

/// `{l1="v1",l2="v2"}`, values as they are (no escaping).
fn serialize_labels(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(l, v)| format!("{l}=\"{v}\"")).collect();
    format!("{{{}}}", inner.join(","))
}

/// A Lua number as `tostring` writes it (`%.14g`).
pub(crate) fn lua_number(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    // 14 significant digits, rounded like printf.
    let sci = format!("{x:.13e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..14).contains(&exp) {
        let m = strip_zeros(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{m}e{sign}{:02}", exp.abs())
    } else {
        let decimals = usize::try_from(13 - exp).unwrap_or(0);
        strip_zeros(&format!("{x:.decimals$}")).to_string()
    }
}

fn strip_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn lua_numbers_are_g14() {
        assert_eq!(lua_number(0.0), "0");
        assert_eq!(lua_number(2.0), "2");
        assert_eq!(lua_number(262143.0), "262143");
        assert_eq!(lua_number(99_999_999_999_999.0), "99999999999999");
        assert_eq!(lua_number(123_456_789_012_346.0), "1.2345678901235e+14");
        assert_eq!(lua_number(u64::MAX as f64), "1.844674407371e+19");
        assert_eq!(lua_number(0.5), "0.5");
        assert_eq!(lua_number(0.0001), "0.0001");
        assert_eq!(lua_number(0.00001), "1e-05");
    }

    fn counter(name: &str, v: u64) -> MetricReading {
        MetricReading {
            name: name.to_string(),
            id: 0,
            value: MetricValue::Counter(v),
        }
    }

    #[test]
    fn labels_are_searched_from_where_the_last_match_ended() {
        let mut patterns = BTreeMap::new();
        patterns.insert(
            "f".to_string(),
            vec![
                LabelPattern::new("a", "(_a=([a-z]+))"),
                LabelPattern::new("b", "(_b=([a-z]+))"),
            ],
        );
        let ms = [counter("pw:f:m_a=x_b=y", 1), counter("pw:f:m_b=y_a=x", 2)];
        // In the second name `a` matches last, so `b` is not searched
        // for, and the name is cut at `_a=` only: another family.
        let text = render(&ms, &patterns).unwrap();
        assert_eq!(
            text,
            "# HELP pw_f_m\n# TYPE pw_f_m counter\npw_f_m{a=\"x\",b=\"y\"} 1\n\
             # HELP pw_f_m_b=y\n# TYPE pw_f_m_b=y counter\npw_f_m_b=y{a=\"x\"} 2\n\n"
        );
    }

    #[test]
    fn a_filter_name_the_pattern_cannot_match_fails_like_lua() {
        let err = render(&[counter("pw:a-b:m", 1)], &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("no filter name"), "{err}");
    }
}
