//! When a host's items are due: pure bookkeeping with no I/O and no clock
//! reads of its own, so that it can be tested under `tokio::time::pause()`.
//!
//! Items are grouped by poll interval. Every group is due right after
//! start-up; after that a group is due at the next multiple of its interval
//! since the Unix epoch (so hosts sharing an interval wake together, and a
//! late cycle does not push later ones back). Items whose read failed on the
//! transport are retried after the link's backoff.

use std::borrow::Cow;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock;
use crate::model::HostSpec;

/// Slack so that groups due within the same millisecond are read together.
pub const MERGE_SLACK: Duration = Duration::from_millis(2);

/// How long a host with no items sleeps between looks at its schedule.
const IDLE_WAKE: Duration = Duration::from_secs(3600);

/// Groups of item indices sharing a poll interval, ascending by interval.
pub fn interval_groups(host: &HostSpec) -> Vec<(Duration, Vec<usize>)> {
    let mut groups: Vec<(Duration, Vec<usize>)> = Vec::new();
    for (i, item) in host.items.iter().enumerate() {
        match groups.iter_mut().find(|(d, _)| *d == item.poll_interval) {
            Some((_, v)) => v.push(i),
            None => groups.push((item.poll_interval, vec![i])),
        }
    }
    groups.sort_by_key(|(d, _)| *d);
    groups
}

/// A host's poll schedule: when each interval group is next due, and which
/// failed items are to be retried when.
#[derive(Debug, Clone)]
pub struct Schedule {
    groups: Vec<(Duration, Vec<usize>)>,
    next_due: Vec<Instant>,
    /// Items whose read failed on the transport, retried after the backoff.
    retry: Option<(Instant, Vec<usize>)>,
    start: Instant,
}

impl Schedule {
    /// The schedule of `host`, started at `start`: every group is due then.
    pub fn new(host: &HostSpec, start: Instant) -> Schedule {
        Schedule::from_groups(interval_groups(host), start)
    }

    /// A schedule for given groups (sorted item indices per interval).
    pub fn from_groups(groups: Vec<(Duration, Vec<usize>)>, start: Instant) -> Schedule {
        let next_due = vec![start; groups.len()];
        Schedule {
            groups,
            next_due,
            retry: None,
            start,
        }
    }

    /// When the host next has reads to do (a group due or a retry).
    pub fn next_wake(&self) -> Instant {
        let mut wake = self
            .next_due
            .iter()
            .copied()
            .min()
            .unwrap_or(self.start + IDLE_WAKE);
        if let Some((at, _)) = &self.retry {
            wake = wake.min(*at);
        }
        wake
    }

    /// When each group is next due, in ascending interval order.
    pub fn next_due(&self) -> &[Instant] {
        &self.next_due
    }

    /// When the pending retry is due, if there is one.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry.as_ref().map(|(at, _)| *at)
    }

    /// The items to read at `now` (sorted, deduplicated), or None if nothing
    /// is due. Due groups are rescheduled to the next aligned instant after
    /// `wall` (the time since the epoch at `now`); a due retry is consumed.
    pub fn take_due(&mut self, now: Instant, wall: Duration) -> Option<Cow<'_, [usize]>> {
        let horizon = now + MERGE_SLACK;
        let mut due_groups = Vec::new();
        for (g, (interval, _)) in self.groups.iter().enumerate() {
            if self.next_due[g] <= horizon {
                self.next_due[g] = clock::next_aligned_at(now, wall, *interval);
                due_groups.push(g);
            }
        }
        let retry_due = match self.retry.take() {
            Some((at, items)) if at <= horizon => Some(items),
            other => {
                self.retry = other;
                None
            }
        };
        // The common case, one group due and nothing to retry, reads the
        // group's own (sorted) list without copying it.
        match (due_groups.as_slice(), retry_due) {
            ([], None) => None,
            ([g], None) => Some(Cow::Borrowed(&self.groups[*g].1)),
            (_, extra) => {
                let mut all: Vec<usize> = due_groups
                    .iter()
                    .flat_map(|&g| self.groups[g].1.iter().copied())
                    .chain(extra.into_iter().flatten())
                    .collect();
                all.sort_unstable();
                all.dedup();
                Some(Cow::Owned(all))
            }
        }
    }

    /// Retries `failed` items at `at` (replacing any earlier retry). The items
    /// are read then even if their group is not due.
    pub fn retry(&mut self, at: Instant, failed: Vec<usize>) {
        self.retry = Some((at, failed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::Backoff;

    const SEC: Duration = Duration::from_secs(1);

    fn two_groups(start: Instant) -> Schedule {
        Schedule::from_groups(
            vec![(SEC, vec![0, 2]), (Duration::from_secs(10), vec![1])],
            start,
        )
    }

    /// A wall clock that runs with tokio's (paused) clock from `wall0` at `t0`.
    fn wall_at(t0: Instant, wall0: Duration) -> impl Fn() -> Duration {
        move || wall0 + Instant::now().duration_since(t0)
    }

    #[tokio::test(start_paused = true)]
    async fn first_poll_is_right_after_start() {
        let start = Instant::now();
        let mut s = two_groups(start);
        assert_eq!(s.next_wake(), start);
        let due = s.take_due(start, Duration::from_millis(100_300));
        assert_eq!(due.as_deref(), Some(&[0, 1, 2][..]));
        // Then each group waits for its next aligned instant.
        assert_eq!(s.next_due()[0] - start, Duration::from_millis(700));
        assert_eq!(s.next_due()[1] - start, Duration::from_millis(9_700));
        assert_eq!(s.next_wake() - start, Duration::from_millis(700));
        assert!(s.take_due(start, Duration::from_millis(100_300)).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_host_sleeps_an_hour() {
        let start = Instant::now();
        let mut s = Schedule::from_groups(Vec::new(), start);
        assert_eq!(s.next_wake(), start + Duration::from_secs(3600));
        assert!(s.take_due(start, Duration::ZERO).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn hosts_on_one_interval_wake_together() {
        let t0 = Instant::now();
        let wall = wall_at(t0, Duration::from_millis(50_000));
        let mut a = Schedule::from_groups(vec![(SEC, vec![0])], Instant::now());
        a.take_due(Instant::now(), wall());
        tokio::time::advance(Duration::from_millis(370)).await;
        let mut b = Schedule::from_groups(vec![(SEC, vec![0])], Instant::now());
        b.take_due(Instant::now(), wall());
        for _ in 0..5 {
            assert_eq!(a.next_wake(), b.next_wake());
            tokio::time::sleep_until(a.next_wake()).await;
            assert!(a.take_due(Instant::now(), wall()).is_some());
            assert!(b.take_due(Instant::now(), wall()).is_some());
        }
        assert_eq!(a.next_wake() - t0, Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_cycle_does_not_drift() {
        let t0 = Instant::now();
        let wall = wall_at(t0, Duration::from_secs(1_000));
        let mut s = Schedule::from_groups(vec![(SEC, vec![0])], t0);
        s.take_due(Instant::now(), wall());
        assert_eq!(s.next_wake() - t0, SEC);
        // The cycle at 1 s starts 400 ms late (a slow read before it).
        tokio::time::advance(Duration::from_millis(1_400)).await;
        assert!(s.take_due(Instant::now(), wall()).is_some());
        assert_eq!(s.next_wake() - t0, 2 * SEC);
        // A cycle more than a whole interval late skips the missed instants.
        tokio::time::advance(Duration::from_millis(2_900)).await;
        assert!(s.take_due(Instant::now(), wall()).is_some());
        assert_eq!(s.next_wake() - t0, 5 * SEC);
    }

    #[tokio::test(start_paused = true)]
    async fn groups_due_within_the_slack_are_read_together() {
        let t0 = Instant::now();
        let wall = wall_at(t0, Duration::from_secs(2_000));
        let mut s = Schedule::from_groups(vec![(SEC, vec![0]), (2 * SEC, vec![1])], t0);
        s.take_due(Instant::now(), wall());
        tokio::time::advance(2 * SEC - Duration::from_millis(1)).await;
        let due = s.take_due(Instant::now(), wall());
        assert_eq!(due.as_deref(), Some(&[0, 1][..]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_comes_before_the_next_poll_and_merges() {
        let t0 = Instant::now();
        let wall = wall_at(t0, Duration::from_secs(3_000));
        let mut s = two_groups(t0);
        s.take_due(Instant::now(), wall());
        s.retry(t0 + Duration::from_millis(500), vec![1]);
        assert_eq!(s.retry_at(), Some(t0 + Duration::from_millis(500)));
        assert_eq!(s.next_wake() - t0, Duration::from_millis(500));
        tokio::time::sleep_until(s.next_wake()).await;
        // Only the failed item: its group is not due.
        assert_eq!(
            s.take_due(Instant::now(), wall()).as_deref(),
            Some(&[1][..])
        );
        assert_eq!(s.retry_at(), None);
        // A retry due with a group is read with it.
        s.retry(t0 + SEC, vec![1]);
        tokio::time::sleep_until(t0 + SEC).await;
        assert_eq!(
            s.take_due(Instant::now(), wall()).as_deref(),
            Some(&[0, 1, 2][..])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_after_failures_is_capped_at_the_interval() {
        let t0 = Instant::now();
        let interval = Duration::from_secs(5);
        let mut backoff = Backoff::new(Duration::from_millis(500), interval);
        let mut s = Schedule::from_groups(vec![(interval, vec![0])], t0);
        s.take_due(t0, Duration::from_secs(4_000));
        let mut waits = Vec::new();
        for _ in 0..8 {
            let wait = backoff.fail();
            s.retry(Instant::now() + wait, vec![0]);
            waits.push(wait);
            assert!(wait <= interval);
        }
        // Exponential from half a second (less up to 20% jitter), then the cap.
        assert!(waits[0] >= Duration::from_millis(400) && waits[0] <= Duration::from_millis(500));
        assert!(waits[1] >= Duration::from_millis(800) && waits[1] <= SEC);
        assert!(waits[7] >= Duration::from_secs(4));
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        let wait = backoff.fail();
        assert!(wait <= Duration::from_millis(500));
    }
}
