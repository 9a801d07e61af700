//! Chat templates: Hugging Face's Jinja `chat_template`, rendered with
//! minijinja the way transformers renders it (trim_blocks, lstrip_blocks,
//! loop controls, `raise_exception`, `tojson` as Python's json.dumps with
//! ensure_ascii=False, `strftime_now`, Python string/dict methods).

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind as JinjaErrorKind};
use serde_json::Map;

use crate::error::{invalid_argument, Result};

pub struct ChatTemplate {
    env: Environment<'static>,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    pub fn new(source: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("default delimiters are valid"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(JinjaErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| {
                invalid_argument(format!("chat template does not compile: {}", describe(&e)))
            })?;
        Ok(ChatTemplate { env })
    }

    pub fn render(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
        extra: Option<&Map<String, serde_json::Value>>,
    ) -> Result<String> {
        let list = messages.as_array().ok_or_else(|| {
            invalid_argument("messages must be a list of {role, content} objects")
        })?;
        for (i, m) in list.iter().enumerate() {
            if m.get("role").and_then(|r| r.as_str()).is_none() {
                return Err(invalid_argument(format!(
                    "message {i} has no string 'role'"
                )));
            }
        }
        let mut ctx = extra.cloned().unwrap_or_default();
        ctx.insert("messages".into(), messages.clone());
        ctx.insert("add_generation_prompt".into(), add_generation_prompt.into());
        ctx.insert("bos_token".into(), bos_token.into());
        ctx.insert("eos_token".into(), eos_token.into());
        let tmpl = self.env.get_template(NAME).expect("added in new()");
        tmpl.render(Value::from(minijinja::value::Serde(&ctx)))
            .map_err(|e| invalid_argument(format!("chat template error: {}", describe(&e))))
    }
}

/// The message a template author wrote (raise_exception), else minijinja's.
fn describe(e: &minijinja::Error) -> String {
    match (e.kind(), e.detail()) {
        (JinjaErrorKind::InvalidOperation, Some(d)) => d.to_string(),
        _ => e.to_string(),
    }
}

/// Python's json.dumps(value, ensure_ascii=False, indent=..., sort_keys=...).
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value).map_err(|e| {
        minijinja::Error::new(JinjaErrorKind::InvalidOperation, format!("tojson: {e}"))
    })?;
    let mut out = String::new();
    py_json(&json, indent, sort_keys.unwrap_or(false), 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn py_json(
    v: &serde_json::Value,
    indent: Option<usize>,
    sort: bool,
    depth: usize,
    out: &mut String,
) {
    use serde_json::Value as J;
    let newline = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                py_json(x, indent, sort, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(o) if !o.is_empty() => {
            let mut keys: Vec<&String> = o.keys().collect();
            if sort {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::to_string(k).expect("strings serialize"));
                out.push_str(": ");
                py_json(&o[*k], indent, sort, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        J::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            // Python writes floats with at least one decimal: 1.0, not 1.
            if f.fract() == 0.0 && f.abs() < 1e16 {
                out.push_str(&format!("{f:.1}"));
            } else {
                out.push_str(&n.to_string());
            }
        }
        other => out.push_str(&serde_json::to_string(other).expect("json values serialize")),
    }
}

/// The current UTC date and time formatted with Python strftime codes
/// (%Y %y %m %d %e %B %b %A %a %H %I %M %S %p %j %%).
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    format_time(secs, fmt)
}

fn format_time(secs: i64, fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = secs.div_euclid(86400);
    let tod = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let d = doy_mar - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let (h, mi, s) = (tod / 3600, tod / 60 % 60, tod % 60);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 })),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_format_like_python() {
        // 2024-07-26 12:34:56 UTC was a Friday.
        assert_eq!(
            format_time(1_721_997_296, "%d %b %Y %A %H:%M:%S %j"),
            "26 Jul 2024 Friday 12:34:56 208"
        );
        assert_eq!(format_time(951_782_400, "%Y-%m-%d"), "2000-02-29");
    }

    #[test]
    fn tojson_matches_json_dumps() {
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}").unwrap();
        let extra = json!({"x": {"a": [1, 2.0], "b": "é<"}});
        let out = t
            .render(&json!([]), false, "", "", extra.as_object())
            .unwrap();
        assert_eq!(out, "{\"a\": [1, 2.0], \"b\": \"é<\"}|{\n  \"a\": [\n    1,\n    2.0\n  ],\n  \"b\": \"é<\"\n}");
    }

    #[test]
    fn errors_are_clean() {
        assert!(ChatTemplate::new("{% for %}").is_err());
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}").unwrap();
        let e = t.render(&json!([]), false, "", "", None).unwrap_err();
        assert!(e.message.ends_with("no system role"), "{}", e.message);
        assert!(t
            .render(&json!({"role": "user"}), false, "", "", None)
            .is_err());
        assert!(t
            .render(&json!([{"content": "x"}]), false, "", "", None)
            .is_err());
    }

    #[test]
    fn python_methods_and_loop_controls() {
        let t = ChatTemplate::new(
            "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}\
             {{ m.content.strip().upper() }}{% if not loop.last %},{% endif %}{% set ns.n = ns.n + 1 %}{% endfor %}:{{ ns.n }}",
        )
        .unwrap();
        let msgs = json!([{"role": "user", "content": " a "}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]);
        assert_eq!(t.render(&msgs, false, "", "", None).unwrap(), "A,B,:2");
    }
}
