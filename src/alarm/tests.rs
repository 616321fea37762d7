use std::path::Path;

use super::*;

// ---------------------------------------------------------------- engine

fn trigger(id: u64, expression: &str, recovery: Option<&str>) -> CompiledTrigger {
    CompiledTrigger::new(
        id,
        format!("trigger {id}"),
        3,
        parse(expression).unwrap(),
        recovery.map(|r| parse(r).unwrap()),
    )
    .unwrap()
}

fn engine(triggers: Vec<CompiledTrigger>) -> Engine {
    Engine::new(triggers)
}

fn item(e: &Engine, host: &str, key: &str) -> ItemIndex {
    e.item_index(host, key).unwrap()
}

/// Feeds `values` one per second from `t0` (evaluating after each) and
/// returns the (clock, new value) of every change.
fn run(e: &mut Engine, i: ItemIndex, t0: i64, values: &[f64]) -> Vec<(i64, TriggerValue)> {
    let mut out = Vec::new();
    for (n, v) in values.iter().enumerate() {
        let clock = t0 + n as i64;
        e.on_sample(i, clock, *v);
        out.extend(e.evaluate(clock).into_iter().map(|c| (c.clock, c.new)));
    }
    out
}

use TriggerValue::{Ok as OK, Problem, Unknown};

#[test]
fn threshold_crossing_gives_exactly_one_change() {
    let mut e = engine(vec![trigger(7, "last(/h/t) > 50", None)]);
    let t = item(&e, "h", "t");
    let changes = run(&mut e, t, 100, &[10.0, 20.0, 51.0, 60.0, 70.0, 55.0]);
    assert_eq!(changes, vec![(102, Problem)]);
    assert_eq!(e.value(0), Some((Problem, 102)));
    let changes = run(&mut e, t, 106, &[40.0, 30.0]);
    assert_eq!(changes, vec![(106, OK)]);
}

#[test]
fn change_record_fields() {
    let mut e = engine(vec![trigger(42, "last(/h/t) > 50", None)]);
    let t = item(&e, "h", "t");
    e.on_sample(t, 10, 99.0);
    let changes = e.evaluate(11);
    assert_eq!(
        changes,
        vec![TriggerChange {
            index: 0,
            triggerid: 42,
            old: OK,
            new: Problem,
            clock: 11
        }]
    );
    // Nothing changed since: nothing re-evaluated, no change.
    assert!(e.evaluate(12).is_empty());
}

#[test]
fn hysteresis_holds_between_thresholds() {
    let mut e = engine(vec![trigger(
        1,
        "last(/h/t) < -20",
        Some("last(/h/t) > -18"),
    )]);
    let t = item(&e, "h", "t");
    let values = [
        -10.0, -19.0, -21.0, // problem
        -19.0, -20.5, -18.5, -19.0, -21.0, -18.0, // between or below: stays problem
        -17.5, // recovers
        -19.0, -19.9, -18.5, // between: stays OK
        -20.1, // problem again
    ];
    let changes = run(&mut e, t, 0, &values);
    assert_eq!(changes, vec![(2, Problem), (9, OK), (13, Problem)]);
}

#[test]
fn recovery_never_resolves_while_the_problem_holds() {
    // Overlapping thresholds: the expression still true wins.
    let mut e = engine(vec![trigger(1, "last(/h/t) > 10", Some("last(/h/t) > 5"))]);
    let t = item(&e, "h", "t");
    assert_eq!(
        run(&mut e, t, 0, &[20.0, 15.0, 8.0, 3.0]),
        vec![(0, Problem), (2, OK)]
    );
}

#[test]
fn windowed_functions_and_staleness() {
    let mut e = engine(vec![
        trigger(1, "avg(/h/t,5s) > 10", None),
        trigger(2, "max(/h/t,#3) < 5", None),
        trigger(3, "sum(/h/t,3s) >= 30", None),
        trigger(4, "count(/h/t,10s) >= 8", None),
        trigger(5, "min(/h/t,2s) > 11", None),
    ]);
    let t = item(&e, "h", "t");
    let mut log = Vec::new();
    let samples = [
        (0, 0.0),
        (1, 0.0),
        (2, 0.0),
        (3, 1.0),
        (4, 2.0),
        (5, 12.0),
        (6, 12.0),
        (7, 40.0),
    ];
    for (clock, v) in samples {
        e.on_sample(t, clock, v);
        log.extend(
            e.evaluate(clock)
                .into_iter()
                .map(|c| (c.clock, c.triggerid, c.new)),
        );
    }
    assert_eq!(
        log,
        vec![
            (0, 2, Problem), // max of the newest 3 = 0
            (5, 2, OK),      // max(1, 2, 12)
            (6, 5, Problem), // min over (4, 6] = 12
            (7, 1, Problem), // avg over (2, 7] = (1 + 2 + 12 + 12 + 40) / 5
            (7, 3, Problem), // sum over (4, 7] = 64
            (7, 4, Problem), // 8 samples in (-3, 7]
        ]
    );
    // No samples for a while: time windows run empty. min/max/avg/sum become
    // unknown, count drops to 0, #N windows keep their samples.
    let changes: Vec<_> = e
        .evaluate(20)
        .into_iter()
        .map(|c| (c.triggerid, c.new))
        .collect();
    assert_eq!(
        changes,
        vec![(1, Unknown), (3, Unknown), (4, OK), (5, Unknown)]
    );
    // Data again: re-evaluated from the value before unknown.
    e.on_sample(t, 21, 50.0);
    let changes: Vec<_> = e
        .evaluate(21)
        .into_iter()
        .map(|c| (c.triggerid, c.old, c.new))
        .collect();
    assert_eq!(
        changes,
        vec![
            (1, Unknown, Problem),
            (3, Unknown, Problem),
            (5, Unknown, Problem)
        ]
    );
}

#[test]
fn windows_are_trimmed() {
    let mut e = engine(vec![
        trigger(1, "avg(/h/a,60s) > 10", None),
        trigger(2, "last(/h/b) > 10", None),
        trigger(3, "change(/h/c) > 10 or count(/h/c,#5) > 100", None),
    ]);
    let (a, b, c) = (item(&e, "h", "a"), item(&e, "h", "b"), item(&e, "h", "c"));
    for clock in 0..1000 {
        e.on_sample(a, clock, 1.0);
        e.on_sample(b, clock, 1.0);
        e.on_sample(c, clock, 1.0);
        e.evaluate(clock);
    }
    // a: 60 s at 1/s; b: 1; c: 5
    assert_eq!(e.window_samples(), 60 + 1 + 5);
    assert!(e.window_memory() < 64 * 1024);
}

#[test]
fn late_sample_is_inserted_in_order() {
    let mut e = engine(vec![trigger(1, "last(/h/t) > 10", None)]);
    let t = item(&e, "h", "t");
    e.on_sample(t, 10, 1.0);
    e.on_sample(t, 5, 100.0);
    assert!(e.evaluate(10).is_empty(), "the newest value is 1");
}

#[test]
fn change_needs_two_samples() {
    let mut e = engine(vec![trigger(1, "change(/h/t) > 5", None)]);
    let t = item(&e, "h", "t");
    // The first sample alone does not evaluate the trigger (no unknown event).
    assert_eq!(
        run(&mut e, t, 0, &[100.0, 110.0, 112.0]),
        vec![(1, Problem), (2, OK)]
    );
}

#[test]
fn nodata_fires_after_the_window() {
    let mut e = engine(vec![
        trigger(1, "nodata(/h/t,60s)=1", None),
        trigger(2, "nodata(/h/never,60s)=1", None),
    ]);
    let t = item(&e, "h", "t");
    e.on_sample(t, 0, 1.0);
    assert!(e.evaluate(0).is_empty());
    assert!(e.evaluate(30).is_empty());
    assert!(e.evaluate(59).is_empty());
    // 60 s without a sample; the item that never reported counts from the first evaluate().
    let changes: Vec<_> = e
        .evaluate(60)
        .into_iter()
        .map(|c| (c.triggerid, c.new))
        .collect();
    assert_eq!(changes, vec![(1, Problem), (2, Problem)]);
    e.on_sample(t, 61, 1.0);
    let changes: Vec<_> = e
        .evaluate(61)
        .into_iter()
        .map(|c| (c.triggerid, c.new))
        .collect();
    assert_eq!(changes, vec![(1, OK)]);
    // An item in error sends no samples: nodata still fires (never unknown).
    e.on_error(t, 70);
    assert!(e.evaluate(70).is_empty());
    let changes: Vec<_> = e
        .evaluate(121)
        .into_iter()
        .map(|c| (c.triggerid, c.new))
        .collect();
    assert_eq!(changes, vec![(1, Problem)]);
}

#[test]
fn item_in_error_makes_the_trigger_unknown() {
    let mut e = engine(vec![trigger(1, "last(/h/t) > 50", None)]);
    let t = item(&e, "h", "t");
    // An error before any data: the trigger was never evaluated, stays OK.
    e.on_error(t, 0);
    assert!(e.evaluate(0).is_empty());
    e.on_sample(t, 1, 10.0);
    assert!(e.evaluate(1).is_empty());
    e.on_error(t, 2);
    let c = e.evaluate(2);
    assert_eq!((c.len(), c[0].old, c[0].new), (1, OK, Unknown));
    e.on_error(t, 3);
    assert!(e.evaluate(3).is_empty(), "still unknown: no new change");
    // Back with a value: re-evaluated.
    e.on_sample(t, 4, 60.0);
    let c = e.evaluate(4);
    assert_eq!((c.len(), c[0].old, c[0].new), (1, Unknown, Problem));
    // An error older than the newest sample is stale and ignored.
    e.on_error(t, 3);
    assert!(e.evaluate(5).is_empty());
    e.on_error(t, 6);
    e.on_sample(t, 7, 10.0);
    let c = e.evaluate(7);
    assert_eq!(
        (c.len(), c[0].old, c[0].new),
        (1, Problem, OK),
        "error then value before evaluate"
    );
}

#[test]
fn hysteresis_survives_unknown() {
    let mut e = engine(vec![trigger(1, "last(/h/t) > 50", Some("last(/h/t) < 40"))]);
    let t = item(&e, "h", "t");
    assert_eq!(run(&mut e, t, 0, &[60.0]), vec![(0, Problem)]);
    e.on_error(t, 1);
    assert_eq!(e.evaluate(1)[0].new, Unknown);
    // Between the thresholds: back to problem, not OK.
    assert_eq!(
        run(&mut e, t, 2, &[45.0, 45.0, 30.0]),
        vec![(2, Problem), (4, OK)]
    );
}

#[test]
fn unknown_in_and_or_not() {
    // a is lost; f is false (0), tr is true (1).
    let cases: &[(&str, TriggerValue, TriggerValue)] = &[
        ("last(/h/a) > 0 and last(/h/f) > 0", OK, OK), // false and unknown = false
        ("last(/h/f) > 0 and last(/h/a) > 0", OK, OK), // either order
        ("last(/h/a) > 0 and last(/h/tr) > 0", Problem, Unknown), // true and unknown = unknown
        ("last(/h/a) > 0 or last(/h/tr) > 0", Problem, Problem), // unknown or true = true
        ("last(/h/tr) > 0 or last(/h/a) > 0", Problem, Problem), // either order
        ("last(/h/a) > 0 or last(/h/f) > 0", Problem, Unknown), // unknown or false = unknown
        ("not last(/h/a) > 0", OK, Unknown),           // not unknown = unknown
        ("last(/h/a) + 1 > 0", Problem, Unknown),      // arithmetic
        ("last(/h/a) = last(/h/a)", Problem, Unknown), // comparison
    ];
    let triggers = cases
        .iter()
        .enumerate()
        .map(|(i, (expr, _, _))| trigger(i as u64 + 1, expr, None))
        .collect();
    let mut e = engine(triggers);
    for (key, v) in [("a", 5.0), ("f", 0.0), ("tr", 1.0)] {
        let i = item(&e, "h", key);
        e.on_sample(i, 0, v);
    }
    e.evaluate(0);
    for (n, (expr, before, _)) in cases.iter().enumerate() {
        assert_eq!(e.value(n).map(|v| v.0), Some(*before), "{expr} before");
    }
    let a = item(&e, "h", "a");
    e.on_error(a, 1);
    e.evaluate(1);
    for (n, (expr, _, after)) in cases.iter().enumerate() {
        assert_eq!(
            e.value(n).map(|v| v.0),
            Some(*after),
            "{expr} after the error"
        );
    }
}

#[test]
fn division_by_zero_is_unknown() {
    let mut e = engine(vec![
        trigger(1, "last(/h/a) / last(/h/b) > 1", None),
        trigger(2, "last(/h/b) = 0 or last(/h/a) / last(/h/b) > 1", None),
    ]);
    let (a, b) = (item(&e, "h", "a"), item(&e, "h", "b"));
    e.on_sample(a, 0, 5.0);
    e.on_sample(b, 0, 0.0);
    let changes: Vec<_> = e
        .evaluate(0)
        .into_iter()
        .map(|c| (c.triggerid, c.new))
        .collect();
    assert_eq!(changes, vec![(1, Unknown), (2, Problem)]);
    e.on_sample(b, 1, 2.0);
    let changes: Vec<_> = e
        .evaluate(1)
        .into_iter()
        .map(|c| (c.triggerid, c.new))
        .collect();
    assert_eq!(changes, vec![(1, Problem)]);
}

#[test]
fn first_evaluation_waits_for_every_item() {
    let mut e = engine(vec![trigger(1, "last(/h/a) > 0 or last(/h/b) > 0", None)]);
    let (a, b) = (item(&e, "h", "a"), item(&e, "h", "b"));
    e.on_sample(a, 0, 1.0);
    assert!(e.evaluate(0).is_empty(), "b has no data yet");
    e.on_sample(b, 1, 0.0);
    assert_eq!(e.evaluate(1)[0].new, Problem);
}

#[test]
fn restore_resumes_without_a_change() {
    let mut e = engine(vec![trigger(9, "last(/h/t) > 50", Some("last(/h/t) < 40"))]);
    let t = item(&e, "h", "t");
    assert!(e.restore(9, Problem, 1000));
    assert!(!e.restore(99, Problem, 1000));
    assert_eq!(e.value(0), Some((Problem, 1000)));
    // Same data as before the restart, and data between the thresholds: no event.
    assert!(run(&mut e, t, 2000, &[60.0, 45.0, 41.0]).is_empty());
    assert_eq!(e.value(0), Some((Problem, 1000)));
    assert_eq!(run(&mut e, t, 2003, &[30.0]), vec![(2003, OK)]);
    assert_eq!(e.value(0), Some((OK, 2003)));
}

#[test]
fn restore_nodata_problem_without_a_change() {
    let mut e = engine(vec![trigger(5, "nodata(/h/t,60s)=1", None)]);
    let t = item(&e, "h", "t");
    assert!(e.restore(5, Problem, 1000));
    // Restarted at 2000; the item is still silent: no OK-then-problem pair.
    for now in [2000, 2030, 2060, 2200] {
        assert!(e.evaluate(now).is_empty(), "at {now}");
    }
    e.on_sample(t, 2201, 1.0);
    assert_eq!(e.evaluate(2201)[0].new, OK);
}

#[test]
fn evaluate_changed_sees_samples_of_timed_triggers_and_skips_the_rest() {
    let mut e = engine(vec![
        trigger(1, "max(/h/a,10s) > 50", None),
        trigger(2, "nodata(/h/b,5s)=1", None),
    ]);
    let (a, b) = (item(&e, "h", "a"), item(&e, "h", "b"));
    assert!(e.has_timed());
    e.on_sample(a, 100, 60.0);
    e.on_sample(b, 100, 1.0);
    let changes = e.evaluate_changed(100);
    assert_eq!(changes.len(), 1);
    assert_eq!((changes[0].triggerid, changes[0].new), (1, Problem));
    // Time passes without samples: only evaluate() looks at windows.
    assert!(e.evaluate_changed(111).is_empty());
    let changes = e.evaluate(111);
    let got: Vec<(u64, TriggerValue)> = changes.iter().map(|c| (c.triggerid, c.new)).collect();
    assert_eq!(got, vec![(1, Unknown), (2, Problem)]);
    let plain = engine(vec![trigger(3, "last(/h/a) > 1", None)]);
    assert!(!plain.has_timed());
}

#[test]
fn carry_over_keeps_windows_values_and_readiness() {
    let mut old = engine(vec![
        trigger(1, "avg(/h/a,10s) > 50", None),
        trigger(2, "last(/h/b) > 5", None),
        trigger(3, "last(/h/a) > 1000", None),
    ]);
    let (a, b) = (item(&old, "h", "a"), item(&old, "h", "b"));
    for t in 0..5 {
        old.on_sample(a, t, 100.0);
    }
    old.on_sample(b, 4, 10.0);
    let got: Vec<u64> = old.evaluate(4).iter().map(|c| c.triggerid).collect();
    assert_eq!(got, vec![1, 2]);
    // Reload: trigger 1 unchanged, trigger 2 reworded, trigger 3 removed, 4 new.
    let mut new = engine(vec![
        trigger(1, "avg(/h/a,10s) > 50", None),
        trigger(2, "last(/h/b) > 50", None),
        trigger(4, "min(/h/a,10s) > 99", None),
    ]);
    new.carry_over(&old);
    assert_eq!(new.value(0), Some((Problem, 4)));
    assert_eq!(new.value(1), Some((Problem, 4)));
    assert_eq!(new.value(2), Some((OK, 0)));
    // Trigger 2 is re-evaluated with the kept sample (10 is not > 50); the
    // new trigger 4 sees the kept window at once.
    let got: Vec<(u64, TriggerValue)> = new
        .evaluate(5)
        .iter()
        .map(|c| (c.triggerid, c.new))
        .collect();
    assert_eq!(got, vec![(2, OK), (4, Problem)]);
    assert_eq!(new.window_samples(), 6);
}

#[test]
fn trigger_hosts_and_first_item() {
    let t = trigger(
        1,
        "last(/b/x) > 1 and last(/a/y) > 1 and last(/b/z) > 1",
        Some("last(/c/x) < 1 and last(/a/x) < 1"),
    );
    assert_eq!(t.hosts(), ["b", "a", "c"]);
    assert_eq!(t.first_item, ("b".to_string(), "x".to_string()));
    let e = Engine::new(vec![t]);
    assert_eq!(e.items().len(), 5);
    assert_eq!(e.item_index("b", "x"), Some(ItemIndex(0)));
    assert_eq!(e.item_index("nope", "x"), None);
    assert_eq!(e.trigger_index(1), Some(0));
    assert!(CompiledTrigger::new(2, "", 3, parse("1 > 0").unwrap(), None).is_err());
}

#[test]
fn trigger_value_spellings() {
    for v in [OK, Problem, Unknown] {
        assert_eq!(TriggerValue::parse(v.as_str()), Some(v));
        assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{v}\""));
    }
    assert_eq!(OK.as_str(), "OK");
}

// ---------------------------------------------------------------- compiling a config

use crate::config::tests::TRIGGER_CONFIG_HEAD as CONFIG_HEAD;

fn config(triggers: &str) -> Config {
    let text = format!("{CONFIG_HEAD}\n{triggers}");
    match crate::config::load_str(Path::new("test.toml"), &text) {
        Ok(c) => c,
        Err(e) => panic!("config does not load:\n{e}\n{text}"),
    }
}

#[test]
fn compile_good_config() {
    let c = config(
        r#"[[triggers]]
triggerid = 17
description = "Frost alarm"
severity = 5
expression = "max(/pump/temp.outdoor,5m) < -20"
recovery_expression = "min(/pump/temp.outdoor,5m) > -18"
"#,
    );
    let triggers = compile(&c);
    assert_eq!(triggers.len(), 1);
    let t = &triggers[0];
    assert_eq!(
        (t.triggerid, t.severity, t.description.as_str()),
        (17, 5, "Frost alarm")
    );
    assert_eq!(
        t.first_item,
        ("pump".to_string(), "temp.outdoor".to_string())
    );
    assert_eq!(t.hosts(), ["pump"]);
    assert!(t.recovery.is_some());
    let e = Engine::new(triggers);
    assert!(e.item_index("pump", "temp.outdoor").is_some());
}
