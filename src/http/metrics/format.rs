//! Which exposition format a scrape gets, from its `Accept` header, and the Prometheus
//! text format 0.0.4 made from the OpenMetrics text prometheus-client writes.
//!
//! Prometheus asks for OpenMetrics first and the 0.0.4 text at a lower q-value; older
//! scrapers, `promtool check metrics` and some agents want the text format only. With no
//! `Accept`, or one that names neither, the answer is OpenMetrics (what `/metrics` always
//! served): an unusual header never turns a scrape into an error.

/// The two formats `/metrics` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Text,
}

pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Media ranges of one `Accept` header considered at most (the head bounds already cap
/// its length; this caps the work).
const MAX_RANGES: usize = 64;

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_TYPE,
            Format::Text => TEXT_TYPE,
        }
    }

    /// The format `accept` prefers, by q-value: each format's q is that of the most
    /// specific range that matches it (`type/subtype` over `type/*` over `*/*`, the
    /// highest q among equally specific ones). OpenMetrics wins ties; a format at q=0 is
    /// refused, and with both refused the answer is OpenMetrics anyway.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::OpenMetrics;
        };
        let mut om = Match::default();
        let mut text = Match::default();
        for range in accept.split(',').take(MAX_RANGES) {
            let Ok(mime) = range.trim().parse::<mime::Mime>() else {
                continue;
            };
            let q = match mime.get_param("q") {
                None => 1.0,
                Some(v) => match v.as_str().parse::<f32>() {
                    Ok(q) if (0.0..=1.0).contains(&q) => q,
                    _ => continue,
                },
            };
            om.consider(&mime, "application", "openmetrics-text", q);
            text.consider(&mime, "text", "plain", q);
        }
        if text.q() > om.q() {
            Format::Text
        } else {
            Format::OpenMetrics
        }
    }
}

/// The best range matching one format so far.
#[derive(Default)]
struct Match {
    /// (specificity, q): 1 for `*/*`, 2 for `type/*`, 3 for the exact type.
    best: Option<(u8, f32)>,
}

impl Match {
    fn consider(&mut self, mime: &mime::Mime, ty: &str, subtype: &str, q: f32) {
        let specificity = match (mime.type_().as_str(), mime.subtype().as_str()) {
            ("*", "*") => 1,
            (t, "*") if t.eq_ignore_ascii_case(ty) => 2,
            (t, s) if t.eq_ignore_ascii_case(ty) && s.eq_ignore_ascii_case(subtype) => 3,
            _ => return,
        };
        self.best = match self.best {
            Some((s, _)) if s > specificity => self.best,
            Some((s, best)) if s == specificity => Some((s, best.max(q))),
            _ => Some((specificity, q)),
        };
    }

    fn q(&self) -> f32 {
        self.best.map_or(0.0, |(_, q)| q)
    }
}

/// The text format 0.0.4 of an OpenMetrics exposition made by prometheus-client:
/// - no `# EOF` and no `# UNIT` lines (0.0.4 has neither);
/// - a counter family is named as its samples are, `…_total` (OpenMetrics names the
///   family without the suffix), so that its `# TYPE` describes them;
/// - `info` families become gauges named `…_info`, `unknown` ones `untyped`.
///
/// Samples carry no exemplars and no `_created` series here (nothing of ours records
/// them), so sample lines pass through unchanged.
pub fn to_text(openmetrics: &str) -> String {
    use std::collections::HashMap;
    let mut types: HashMap<&str, &str> = HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, ty)) = rest.split_once(' ') {
                types.insert(name, ty);
            }
        }
    }
    let renamed = |name: &str| -> String {
        match types.get(name) {
            Some(&"counter") => format!("{name}_total"),
            Some(&"info") => format!("{name}_info"),
            _ => name.to_owned(),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", renamed(name)));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let ty = match ty {
                "counter" | "gauge" | "histogram" | "summary" => ty,
                "info" => "gauge",
                _ => "untyped",
            };
            out.push_str(&format!("# TYPE {} {ty}\n", renamed(name)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMETHEUS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn negotiation_follows_q_values() {
        let cases: [(Option<&str>, Format); 12] = [
            (None, Format::OpenMetrics),
            (Some(PROMETHEUS), Format::OpenMetrics),
            // Prometheus with `scrape_protocols: [PrometheusText0.0.4, OpenMetricsText1.0.0]`.
            (
                Some("text/plain;version=0.0.4;q=0.6,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1"),
                Format::Text,
            ),
            (Some("text/plain; version=0.0.4"), Format::Text),
            (Some("text/plain"), Format::Text),
            (Some("text/*"), Format::Text),
            (Some("*/*"), Format::OpenMetrics),
            (Some("application/json"), Format::OpenMetrics),
            (Some("text/plain;q=0, */*"), Format::OpenMetrics),
            (Some("application/openmetrics-text;q=0, */*;q=0.2"), Format::Text),
            (Some("APPLICATION/OpenMetrics-Text;q=0.4,TEXT/PLAIN;q=0.5"), Format::Text),
            (Some("garbage;;, text/plain;q=2, text/plain;q=0.3"), Format::Text),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::negotiate(accept), want, "Accept: {accept:?}");
        }
    }

    #[test]
    fn text_format_renames_counters_and_drops_openmetrics_only_lines() {
        let om = "# HELP ringkv_calls Calls made.\n\
                  # TYPE ringkv_calls counter\n\
                  ringkv_calls_total 3\n\
                  # HELP ringkv_rss_bytes Memory.\n\
                  # TYPE ringkv_rss_bytes gauge\n\
                  # UNIT ringkv_rss_bytes bytes\n\
                  ringkv_rss_bytes 42\n\
                  # HELP ringkv_build Build.\n\
                  # TYPE ringkv_build info\n\
                  ringkv_build_info{version=\"1\"} 1\n\
                  # HELP ringkv_d Durations.\n\
                  # TYPE ringkv_d histogram\n\
                  ringkv_d_sum 0.5\n\
                  ringkv_d_count 1\n\
                  ringkv_d_bucket{le=\"1.0\"} 1\n\
                  ringkv_d_bucket{le=\"+Inf\"} 1\n\
                  # EOF\n";
        let want = "# HELP ringkv_calls_total Calls made.\n\
                    # TYPE ringkv_calls_total counter\n\
                    ringkv_calls_total 3\n\
                    # HELP ringkv_rss_bytes Memory.\n\
                    # TYPE ringkv_rss_bytes gauge\n\
                    ringkv_rss_bytes 42\n\
                    # HELP ringkv_build_info Build.\n\
                    # TYPE ringkv_build_info gauge\n\
                    ringkv_build_info{version=\"1\"} 1\n\
                    # HELP ringkv_d Durations.\n\
                    # TYPE ringkv_d histogram\n\
                    ringkv_d_sum 0.5\n\
                    ringkv_d_count 1\n\
                    ringkv_d_bucket{le=\"1.0\"} 1\n\
                    ringkv_d_bucket{le=\"+Inf\"} 1\n";
        assert_eq!(to_text(om), want);
    }
}
