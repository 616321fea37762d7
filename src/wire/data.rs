//! Data messages: live `R/data/<host>` messages (numbered by `seq`) and the
//! answers to `R/cmd/resend` (no `seq`), encoded by hand on the hot path.

use crate::store::{OutboxMessage, MAX_MESSAGE_JSON_BYTES, MAX_POINTS_PER_MESSAGE};

/// A live data message of `R/data/<host>`:
/// `{"seq":N,"host":"h","items":{"key":[[clock,value],...]}}`.
pub fn data_message(msg: &OutboxMessage) -> String {
    let n: usize = msg
        .items
        .iter()
        .map(|(k, p)| k.len() + 8 + p.len() * 24)
        .sum();
    let mut s = String::with_capacity(64 + n);
    s.push_str("{\"seq\":");
    s.push_str(&msg.seq.to_string());
    s.push_str(",\"host\":");
    push_json_str(&mut s, &msg.host);
    s.push_str(",\"items\":{");
    for (i, (key, points)) in msg.items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_json_str(&mut s, key);
        s.push_str(":[");
        for (j, &(c, v)) in points.iter().enumerate() {
            if j > 0 {
                s.push(',');
            }
            push_point(&mut s, c, v);
        }
        s.push(']');
    }
    s.push_str("}}");
    s
}

/// One history point, `[clock,value]`, as live and resend messages carry it.
fn push_point(s: &mut String, clock: i64, value: f64) {
    s.push('[');
    s.push_str(&clock.to_string());
    s.push(',');
    push_json_num(s, value);
    s.push(']');
}

fn push_json_str(s: &mut String, v: &str) {
    match serde_json::to_string(v) {
        Ok(q) => s.push_str(&q),
        Err(_) => s.push_str("\"\""),
    }
}

/// A JSON number; integral values without ".0"; non-finite as null.
fn push_json_num(s: &mut String, v: f64) {
    if !v.is_finite() {
        s.push_str("null");
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        s.push_str(&(v as i64).to_string());
    } else {
        match serde_json::Number::from_f64(v) {
            Some(n) => s.push_str(&n.to_string()),
            None => s.push_str("null"),
        }
    }
}

/// Builds resend messages: `{"host","resend":true,"from","to","items":{...}}`,
/// no `seq` (they are not part of the live sequence).
pub struct ResendBuilder {
    host: String,
    from: i64,
    to: i64,
    out: Vec<(String, String, u64)>,
    cur: String,
    cur_points: u64,
    cur_items: usize,
}

impl ResendBuilder {
    pub fn new(host: &str, from: i64, to: i64) -> ResendBuilder {
        let mut b = ResendBuilder {
            host: host.to_string(),
            from,
            to,
            out: Vec::new(),
            cur: String::new(),
            cur_points: 0,
            cur_items: 0,
        };
        b.start();
        b
    }

    fn start(&mut self) {
        self.cur = format!(
            "{{\"host\":{},\"resend\":true,\"from\":{},\"to\":{},\"items\":{{",
            json_str(&self.host),
            self.from,
            self.to
        );
        self.cur_points = 0;
        self.cur_items = 0;
    }

    fn close(&mut self) {
        if self.cur_items > 0 {
            self.cur.push_str("]}}");
        } else {
            self.cur.push_str("}}");
        }
        let payload = std::mem::take(&mut self.cur);
        self.out.push((self.host.clone(), payload, self.cur_points));
    }

    pub fn add(&mut self, key: &str, points: &[(i64, f64)]) {
        let mut open = false;
        for &(clock, value) in points {
            if self.cur_points as usize >= MAX_POINTS_PER_MESSAGE
                || self.cur.len() + key.len() + 64 >= MAX_MESSAGE_JSON_BYTES
            {
                self.close();
                self.start();
                open = false;
            }
            if !open {
                if self.cur_items > 0 {
                    self.cur.push_str("],");
                }
                self.cur.push_str(&json_str(key));
                self.cur.push_str(":[");
                self.cur_items += 1;
                open = true;
            } else {
                self.cur.push(',');
            }
            push_point(&mut self.cur, clock, value);
            self.cur_points += 1;
        }
    }

    /// The messages; one with empty `items` when nothing is stored in the range,
    /// so the requester hears back either way.
    pub fn finish(mut self) -> Vec<(String, String, u64)> {
        if self.cur_points > 0 || self.out.is_empty() {
            self.close();
        }
        self.out
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn resend_messages_are_cut_like_live_ones_and_carry_no_seq() {
        let mut b = ResendBuilder::new("pump", 0, 9999);
        let points: Vec<(i64, f64)> = (0..4500).map(|i| (i, i as f64 * 0.5)).collect();
        b.add("a", &points[..10]);
        b.add("b", &points);
        let out = b.finish();
        assert_eq!(out.len(), 3);
        let mut total = 0;
        for (host, payload, n) in &out {
            assert_eq!(host, "pump");
            let v: Value = serde_json::from_str(payload).unwrap();
            assert!(v.get("seq").is_none());
            assert_eq!(v["resend"], true);
            assert_eq!(v["from"], 0);
            let count: usize = v["items"]
                .as_object()
                .unwrap()
                .values()
                .map(|p| p.as_array().unwrap().len())
                .sum();
            assert_eq!(count as u64, *n);
            assert!(count <= MAX_POINTS_PER_MESSAGE);
            total += count;
        }
        assert_eq!(total, 4510);
        let v: Value = serde_json::from_str(&out[0].1).unwrap();
        assert_eq!(v["items"]["a"][3], serde_json::json!([3, 1.5]));
        assert_eq!(v["items"]["b"][0], serde_json::json!([0, 0]));
        let empty = ResendBuilder::new("pump", 5, 6).finish();
        assert_eq!(empty.len(), 1);
        let v: Value = serde_json::from_str(&empty[0].1).unwrap();
        assert_eq!(v["items"], serde_json::json!({}));
        assert!(crate::wire::status::rejection(1, "r/cmd/ack", "no event 9")
            .contains("\"error\":\"no event 9\""));
    }
}
