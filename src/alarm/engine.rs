//! The evaluation engine: pure, no I/O, no clock reads; time is passed in.
//!
//! Samples go in with [`Engine::on_sample`] / [`Engine::on_error`];
//! [`Engine::evaluate`] re-evaluates the triggers whose items changed since
//! the last call plus every trigger with a time-dependent function (a time
//! window or `nodata`), and returns the changes of value;
//! [`Engine::evaluate_changed`] only the former (after a batch of samples).
//! [`Engine::carry_over`] keeps windows and values across a config reload.

use std::collections::{HashMap, VecDeque};

use super::{CompiledTrigger, TriggerValue};
use crate::expr::{BinOp, Expr, Func, Window};

/// A dense index of an item the triggers reference (see [`Engine::item_index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemIndex(pub u32);

/// One change of a trigger's value; the caller stores it as one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerChange {
    /// The trigger's position in [`Engine::triggers`].
    pub index: usize,
    pub triggerid: u64,
    pub old: TriggerValue,
    pub new: TriggerValue,
    /// The `now` of the [`Engine::evaluate`] call that saw the change.
    pub clock: i64,
}

/// An expression with its items resolved to [`ItemIndex`]es.
#[derive(Debug, Clone)]
enum Node {
    Num(f64),
    Func {
        func: Func,
        item: u32,
        window: Option<Window>,
    },
    Neg(Box<Node>),
    Not(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
}

/// What one referenced item keeps.
#[derive(Debug, Default)]
struct WatchedItem {
    /// Recent samples, ascending by clock.
    samples: VecDeque<(i64, f64)>,
    /// Keep samples newer than `newest - keep_secs`...
    keep_secs: i64,
    /// ...and at least this many.
    keep_n: usize,
    /// The newest sample's clock, even after trimming.
    last_clock: Option<i64>,
    /// Samples seen since the engine started (saturating at 2; only 0, 1, 2+ matter).
    seen: u8,
    /// The poller reported an error newer than the newest sample.
    in_error: bool,
    /// Triggers that name this item.
    triggers: Vec<u32>,
}

/// What a trigger waits for before its first evaluation: `samples` samples
/// of `item` since the engine started, or (for an item only under `nodata`)
/// `or_after` seconds since the first evaluate() call.
#[derive(Debug, Clone, Copy)]
struct Need {
    item: u32,
    samples: u8,
    or_after: Option<i64>,
}

#[derive(Debug)]
struct TriggerState {
    expression: Node,
    recovery: Option<Node>,
    /// What the first evaluation waits for.
    needs: Vec<Need>,
    ready: bool,
    value: TriggerValue,
    /// The value before the trigger became unknown (OK or problem), for hysteresis.
    last_known: TriggerValue,
    lastchange: i64,
    dirty: bool,
}

/// The alarm evaluation engine. See the [module docs](super) for the semantics.
#[derive(Debug)]
pub struct Engine {
    compiled: Vec<CompiledTrigger>,
    triggers: Vec<TriggerState>,
    items: Vec<WatchedItem>,
    item_names: Vec<(String, String)>,
    item_lookup: HashMap<(String, String), u32>,
    by_id: HashMap<u64, usize>,
    /// Triggers whose items got a sample or an error since the last evaluation.
    dirty: Vec<u32>,
    /// Time-dependent triggers (evaluated on every call).
    timed: Vec<u32>,
    /// The `now` of the first evaluate() call: `nodata` on an item that never
    /// reported counts from here.
    start: Option<i64>,
}

impl Engine {
    /// Builds the engine from compiled triggers; every item they name gets a
    /// dense [`ItemIndex`], in first-mention order. All triggers start `OK`.
    pub fn new(triggers: Vec<CompiledTrigger>) -> Engine {
        let mut engine = Engine {
            compiled: Vec::new(),
            triggers: Vec::with_capacity(triggers.len()),
            items: Vec::new(),
            item_names: Vec::new(),
            item_lookup: HashMap::new(),
            by_id: HashMap::new(),
            dirty: Vec::new(),
            timed: Vec::new(),
            start: None,
        };
        for (index, trigger) in triggers.iter().enumerate() {
            let t = u32::try_from(index).unwrap_or(u32::MAX);
            let mut needs: Vec<Need> = Vec::new();
            let mut time_dependent = false;
            let expression =
                engine.resolve(&trigger.expression, t, &mut needs, &mut time_dependent);
            let recovery = trigger
                .recovery
                .as_ref()
                .map(|r| engine.resolve(r, t, &mut needs, &mut time_dependent));
            if time_dependent {
                engine.timed.push(t);
            }
            engine.by_id.insert(trigger.triggerid, index);
            engine.triggers.push(TriggerState {
                expression,
                recovery,
                needs,
                ready: false,
                value: TriggerValue::Ok,
                last_known: TriggerValue::Ok,
                lastchange: 0,
                dirty: false,
            });
        }
        engine.compiled = triggers;
        engine
    }

    fn resolve(
        &mut self,
        e: &Expr,
        trigger: u32,
        needs: &mut Vec<Need>,
        time_dependent: &mut bool,
    ) -> Node {
        match e {
            Expr::Num(v) => Node::Num(*v),
            Expr::Neg(e) => Node::Neg(Box::new(self.resolve(e, trigger, needs, time_dependent))),
            Expr::Not(e) => Node::Not(Box::new(self.resolve(e, trigger, needs, time_dependent))),
            Expr::Bin { op, lhs, rhs } => Node::Bin(
                *op,
                Box::new(self.resolve(lhs, trigger, needs, time_dependent)),
                Box::new(self.resolve(rhs, trigger, needs, time_dependent)),
            ),
            Expr::Func {
                func, item, window, ..
            } => {
                let name = (item.host.clone(), item.key.clone());
                let index = match self.item_lookup.get(&name) {
                    Some(i) => *i,
                    None => {
                        let i = u32::try_from(self.items.len()).unwrap_or(u32::MAX);
                        self.items.push(WatchedItem {
                            keep_n: 1,
                            ..WatchedItem::default()
                        });
                        self.item_names.push(name.clone());
                        self.item_lookup.insert(name, i);
                        i
                    }
                };
                let state = &mut self.items[index as usize];
                if state.triggers.last() != Some(&trigger) {
                    state.triggers.push(trigger);
                }
                match (func, window) {
                    (Func::Nodata, _) => {}
                    (_, Some(Window::Time(s))) => state.keep_secs = state.keep_secs.max(*s),
                    (_, Some(Window::Count(n))) => {
                        state.keep_n = state.keep_n.max(*n as usize);
                    }
                    (Func::Change, None) => state.keep_n = state.keep_n.max(2),
                    _ => {}
                }
                if *func == Func::Nodata || matches!(window, Some(Window::Time(_))) {
                    *time_dependent = true;
                }
                let need = match (func, window) {
                    (Func::Nodata, Some(Window::Time(w))) => Need {
                        item: index,
                        samples: 1,
                        or_after: Some(*w),
                    },
                    (Func::Change, _) => Need {
                        item: index,
                        samples: 2,
                        or_after: None,
                    },
                    _ => Need {
                        item: index,
                        samples: 1,
                        or_after: None,
                    },
                };
                match needs.iter_mut().find(|n| n.item == index) {
                    Some(n) => {
                        n.samples = n.samples.max(need.samples);
                        n.or_after = match (n.or_after, need.or_after) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            _ => None,
                        };
                    }
                    None => needs.push(need),
                }
                Node::Func {
                    func: *func,
                    item: index,
                    window: *window,
                }
            }
        }
    }

    /// The compiled triggers, in engine order (the `index` of a [`TriggerChange`]).
    pub fn triggers(&self) -> &[CompiledTrigger] {
        &self.compiled
    }

    /// The engine index of a trigger id.
    pub fn trigger_index(&self, triggerid: u64) -> Option<usize> {
        self.by_id.get(&triggerid).copied()
    }

    /// A trigger's current value and last change clock (0 if it never changed).
    pub fn value(&self, index: usize) -> Option<(TriggerValue, i64)> {
        self.triggers.get(index).map(|t| (t.value, t.lastchange))
    }

    /// The dense index of an item the triggers reference; `None` for items no
    /// trigger names (the caller need not feed those).
    pub fn item_index(&self, host: &str, key: &str) -> Option<ItemIndex> {
        self.item_lookup
            .get(&(host.to_string(), key.to_string()))
            .map(|i| ItemIndex(*i))
    }

    /// Every referenced item as (host, key), indexed by [`ItemIndex`].
    pub fn items(&self) -> &[(String, String)] {
        &self.item_names
    }

    /// Approximate heap bytes held by the sample windows.
    pub fn window_memory(&self) -> usize {
        self.items
            .iter()
            .map(|i| {
                i.samples.capacity() * std::mem::size_of::<(i64, f64)>()
                    + i.triggers.capacity() * std::mem::size_of::<u32>()
            })
            .sum::<usize>()
            + self.items.capacity() * std::mem::size_of::<WatchedItem>()
    }

    /// Samples held in all windows.
    pub fn window_samples(&self) -> usize {
        self.items.iter().map(|i| i.samples.len()).sum()
    }

    fn mark(&mut self, item: usize) {
        let Engine {
            items,
            triggers,
            dirty,
            ..
        } = self;
        for &t in &items[item].triggers {
            if let Some(state) = triggers.get_mut(t as usize) {
                if !state.dirty {
                    state.dirty = true;
                    dirty.push(t);
                }
            }
        }
    }

    /// A new value of an item. Samples normally arrive in clock order; a late
    /// one is inserted in place. Clears the item's error state.
    pub fn on_sample(&mut self, item: ItemIndex, clock: i64, value: f64) {
        let i = item.0 as usize;
        let Some(state) = self.items.get_mut(i) else {
            return;
        };
        if state.samples.len() == state.samples.capacity() {
            // Grow by a quarter rather than doubling: a full window stays
            // within 25 % of its size (growth happens only while it fills).
            let len = state.samples.len();
            state.samples.reserve_exact((len / 4).max(4));
        }
        match state.samples.back() {
            Some(&(last, _)) if clock < last => {
                let at = state.samples.partition_point(|&(c, _)| c <= clock);
                state.samples.insert(at, (clock, value));
            }
            _ => state.samples.push_back((clock, value)),
        }
        let newest = state.samples.back().map_or(clock, |s| s.0);
        state.last_clock = Some(newest);
        state.seen = state.seen.saturating_add(1).min(2);
        state.in_error = false;
        // Trim: keep samples newer than newest - keep_secs, and at least keep_n.
        let horizon = newest.saturating_sub(state.keep_secs);
        while state.samples.len() > state.keep_n
            && state.samples.front().is_some_and(|&(c, _)| c <= horizon)
        {
            state.samples.pop_front();
        }
        self.mark(i);
    }

    /// The item's read failed at `clock`: it loses its data (functions over
    /// it other than `nodata` become unknown) until its next sample. An error
    /// older than the newest sample is ignored.
    pub fn on_error(&mut self, item: ItemIndex, clock: i64) {
        let i = item.0 as usize;
        let Some(state) = self.items.get_mut(i) else {
            return;
        };
        if state.in_error || state.last_clock.is_some_and(|c| clock < c) {
            return;
        }
        state.in_error = true;
        self.mark(i);
    }

    /// Resumes a trigger after a restart (value and lastchange as stored)
    /// without producing a change. A trigger restored as `unknown` resumes
    /// from `OK` once its items have data again. False for an unknown id.
    pub fn restore(&mut self, triggerid: u64, value: TriggerValue, lastchange: i64) -> bool {
        let Some(&index) = self.by_id.get(&triggerid) else {
            return false;
        };
        let t = &mut self.triggers[index];
        t.value = value;
        if value != TriggerValue::Unknown {
            t.last_known = value;
        }
        t.lastchange = lastchange;
        true
    }

    /// Re-evaluates what may have changed and returns the changes of value,
    /// ordered by trigger index: the triggers whose items got a sample or an
    /// error since the last call, and every time-dependent trigger.
    pub fn evaluate(&mut self, now: i64) -> Vec<TriggerChange> {
        self.run(now, true)
    }

    /// Like [`Engine::evaluate`], but only the triggers whose items got a
    /// sample or an error since the last call. A time-dependent value can
    /// otherwise only change when `now` passes a whole second, so calling this
    /// after every batch of samples and [`Engine::evaluate`] once per second
    /// sees every change.
    pub fn evaluate_changed(&mut self, now: i64) -> Vec<TriggerChange> {
        self.run(now, false)
    }

    /// Whether any trigger depends on time (a time window or `nodata`), i.e.
    /// whether [`Engine::evaluate`] needs calling when no sample arrives.
    pub fn has_timed(&self) -> bool {
        !self.timed.is_empty()
    }

    /// Takes over what a previous engine (before a config reload) knew: the
    /// sample windows and error states of items both name, the first
    /// evaluation time, and the value of every trigger id both have. A trigger
    /// whose expressions are unchanged also keeps its readiness, so it goes on
    /// being evaluated without waiting for new samples.
    pub fn carry_over(&mut self, old: &Engine) {
        self.start = old.start;
        for (i, name) in self.item_names.iter().enumerate() {
            let Some(&j) = old.item_lookup.get(name) else {
                continue;
            };
            let (Some(new), Some(prev)) = (self.items.get_mut(i), old.items.get(j as usize)) else {
                continue;
            };
            new.samples = prev.samples.clone();
            new.last_clock = prev.last_clock;
            new.seen = prev.seen;
            new.in_error = prev.in_error;
            let horizon = new.last_clock.unwrap_or(0).saturating_sub(new.keep_secs);
            while new.samples.len() > new.keep_n
                && new.samples.front().is_some_and(|&(c, _)| c <= horizon)
            {
                new.samples.pop_front();
            }
        }
        for (index, compiled) in self.compiled.iter().enumerate() {
            let Some(&j) = old.by_id.get(&compiled.triggerid) else {
                continue;
            };
            let (Some(t), Some(prev), Some(prev_compiled)) = (
                self.triggers.get_mut(index),
                old.triggers.get(j),
                old.compiled.get(j),
            ) else {
                continue;
            };
            t.value = prev.value;
            t.last_known = prev.last_known;
            t.lastchange = prev.lastchange;
            if prev_compiled.expression == compiled.expression
                && prev_compiled.recovery == compiled.recovery
            {
                t.ready = prev.ready;
            }
            if !t.dirty {
                t.dirty = true;
                self.dirty.push(u32::try_from(index).unwrap_or(u32::MAX));
            }
        }
    }

    fn run(&mut self, now: i64, timed: bool) -> Vec<TriggerChange> {
        let start = *self.start.get_or_insert(now);
        let mut todo = std::mem::take(&mut self.dirty);
        if timed {
            todo.extend_from_slice(&self.timed);
        }
        todo.sort_unstable();
        todo.dedup();
        let mut changes = Vec::new();
        for &t in &todo {
            let Some(trigger) = self.triggers.get_mut(t as usize) else {
                continue;
            };
            trigger.dirty = false;
            if !trigger.ready {
                let items = &self.items;
                trigger.ready = trigger.needs.iter().all(|n| {
                    items
                        .get(n.item as usize)
                        .is_some_and(|s| s.seen >= n.samples)
                        || n.or_after.is_some_and(|w| now.saturating_sub(start) >= w)
                });
                if !trigger.ready {
                    continue;
                }
            }
            let ctx = Ctx {
                items: &self.items,
                now,
                start,
            };
            let next = next_value(trigger, &ctx);
            if next != trigger.value {
                changes.push(TriggerChange {
                    index: t as usize,
                    triggerid: self.compiled.get(t as usize).map_or(0, |c| c.triggerid),
                    old: trigger.value,
                    new: next,
                    clock: now,
                });
                trigger.value = next;
                trigger.lastchange = now;
                if next != TriggerValue::Unknown {
                    trigger.last_known = next;
                }
            }
        }
        // Reuse the allocation next time.
        todo.clear();
        self.dirty = todo;
        changes
    }
}

/// The next value of a trigger, from the state it is in (or was in before unknown).
fn next_value(trigger: &TriggerState, ctx: &Ctx<'_>) -> TriggerValue {
    let e = ctx.eval(&trigger.expression);
    if trigger.last_known != TriggerValue::Problem {
        return match truth(e) {
            Some(true) => TriggerValue::Problem,
            Some(false) => TriggerValue::Ok,
            None => TriggerValue::Unknown,
        };
    }
    // In problem: recover when (not expression) and recovery (recovery defaults to true).
    match truth(e) {
        Some(true) => return TriggerValue::Problem,
        Some(false) if trigger.recovery.is_none() => return TriggerValue::Ok,
        _ => {}
    }
    let r = match &trigger.recovery {
        Some(r) => truth(ctx.eval(r)),
        None => Some(true),
    };
    match (truth(e), r) {
        (_, Some(false)) => TriggerValue::Problem,
        (Some(false), Some(true)) => TriggerValue::Ok,
        _ => TriggerValue::Unknown,
    }
}

/// A 3-valued number: `None` is unknown. Booleans are 1 and 0.
type Val = Option<f64>;

fn truth(v: Val) -> Option<bool> {
    v.map(|x| x != 0.0)
}

fn known(x: f64) -> Val {
    if x.is_nan() {
        None
    } else {
        Some(x)
    }
}

fn boolean(b: bool) -> Val {
    Some(if b { 1.0 } else { 0.0 })
}

/// `=` with a relative tolerance of 1e-9 (so 0.1 + 0.2 = 0.3).
fn equal(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

struct Ctx<'a> {
    items: &'a [WatchedItem],
    now: i64,
    start: i64,
}

impl Ctx<'_> {
    fn eval(&self, node: &Node) -> Val {
        match node {
            Node::Num(v) => Some(*v),
            Node::Neg(e) => self.eval(e).map(|v| -v),
            Node::Not(e) => truth(self.eval(e)).and_then(|b| boolean(!b)),
            Node::Func { func, item, window } => self.function(*func, *item, *window),
            Node::Bin(BinOp::And, l, r) => match truth(self.eval(l)) {
                Some(false) => boolean(false),
                lv => match (lv, truth(self.eval(r))) {
                    (_, Some(false)) => boolean(false),
                    (Some(true), Some(true)) => boolean(true),
                    _ => None,
                },
            },
            Node::Bin(BinOp::Or, l, r) => match truth(self.eval(l)) {
                Some(true) => boolean(true),
                lv => match (lv, truth(self.eval(r))) {
                    (_, Some(true)) => boolean(true),
                    (Some(false), Some(false)) => boolean(false),
                    _ => None,
                },
            },
            Node::Bin(op, l, r) => {
                let a = self.eval(l)?;
                let b = self.eval(r)?;
                match op {
                    BinOp::Add => known(a + b),
                    BinOp::Sub => known(a - b),
                    BinOp::Mul => known(a * b),
                    BinOp::Div if b == 0.0 => None,
                    BinOp::Div => known(a / b),
                    BinOp::Eq => boolean(equal(a, b)),
                    BinOp::Ne => boolean(!equal(a, b)),
                    BinOp::Lt => boolean(a < b),
                    BinOp::Le => boolean(a <= b),
                    BinOp::Gt => boolean(a > b),
                    BinOp::Ge => boolean(a >= b),
                    BinOp::And | BinOp::Or => None,
                }
            }
        }
    }

    fn function(&self, func: Func, item: u32, window: Option<Window>) -> Val {
        let state = self.items.get(item as usize)?;
        if func == Func::Nodata {
            let span = match window {
                Some(Window::Time(s)) => s,
                _ => return None,
            };
            let since = state.last_clock.unwrap_or(self.start);
            return boolean(self.now.saturating_sub(since) >= span);
        }
        if state.in_error || state.seen == 0 {
            return None;
        }
        let s = &state.samples;
        match func {
            Func::Last => s.back().and_then(|v| known(v.1)),
            Func::Change => {
                let n = s.len();
                if n < 2 {
                    return None;
                }
                known(s[n - 1].1 - s[n - 2].1)
            }
            _ => {
                let from = match window {
                    Some(Window::Time(secs)) => {
                        let horizon = self.now.saturating_sub(secs);
                        s.partition_point(|&(c, _)| c <= horizon)
                    }
                    Some(Window::Count(n)) => s.len().saturating_sub(n as usize),
                    None => 0,
                };
                let count = s.len() - from;
                if func == Func::Count {
                    return Some(count as f64);
                }
                if count == 0 {
                    return None;
                }
                let values = s.range(from..).map(|&(_, v)| v);
                known(match func {
                    Func::Min => values.fold(f64::INFINITY, f64::min),
                    Func::Max => values.fold(f64::NEG_INFINITY, f64::max),
                    Func::Sum => values.sum(),
                    Func::Avg => values.sum::<f64>() / count as f64,
                    _ => return None,
                })
            }
        }
    }
}
