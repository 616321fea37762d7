//! The wall clock, read in one place.
//!
//! Every Unix timestamp the crate stamps (samples, events, MQTT payloads,
//! API ranges) comes from here, so there is one spelling of "now" and one
//! fallback when the system clock reads before 1970 (zero).
//!
//! Scheduling is kept apart from the reading: [`next_aligned_at`] takes the
//! monotonic instant and the wall time as arguments and is pure, so code that
//! schedules against `tokio::time::Instant` can be tested under
//! `tokio::time::pause()` with a wall time the test chooses. [`next_aligned`]
//! is the same computation with both clocks read now.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Time since the Unix epoch now (zero if the system clock is before 1970).
pub fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    i64::try_from(since_epoch().as_secs()).unwrap_or(i64::MAX)
}

/// Unix milliseconds now.
pub fn unix_ms() -> i64 {
    i64::try_from(since_epoch().as_millis()).unwrap_or(i64::MAX)
}

/// Unix seconds now, with the fraction (for simulated signals).
pub fn unix_secs_f64() -> f64 {
    since_epoch().as_secs_f64()
}

/// A wall-clock step smaller than this, backwards, is not reported (NTP
/// corrections of a few milliseconds are not steps).
pub const STEP_BACK_MIN: Duration = Duration::from_secs(1);
/// A forward jump is reported when the wall clock moved on by more than this
/// beyond the monotonic time that passed (beyond the expected next poll).
pub const STEP_FORWARD_MIN: Duration = Duration::from_secs(60);

/// A step of the wall clock, seen against the monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockStep {
    /// The wall clock went back by this much.
    Back(Duration),
    /// The wall clock jumped ahead by this much more than the time that passed.
    Forward(Duration),
}

/// Tells steps of the wall clock from the monotonic time between two looks.
/// Each look becomes the reference for the next, so slow NTP slewing never
/// adds up to a step.
#[derive(Debug, Default)]
pub struct StepWatch {
    last: Option<(std::time::Instant, Duration)>,
}

impl StepWatch {
    /// Looks at both clocks now.
    pub fn look(&mut self) -> Option<ClockStep> {
        self.look_at(std::time::Instant::now(), since_epoch())
    }

    /// [`StepWatch::look`] for a given monotonic instant and wall time.
    pub fn look_at(&mut self, mono: std::time::Instant, wall: Duration) -> Option<ClockStep> {
        let prev = self.last.replace((mono, wall));
        let (pm, pw) = prev?;
        let expected = pw + mono.saturating_duration_since(pm);
        if wall + STEP_BACK_MIN <= expected {
            Some(ClockStep::Back(expected - wall))
        } else if wall > expected + STEP_FORWARD_MIN {
            Some(ClockStep::Forward(wall - expected))
        } else {
            None
        }
    }
}

/// The instant of the next multiple of `interval` since the Unix epoch, so that
/// hosts sharing an interval are polled at the same instant (one wake-up serves them all).
pub fn next_aligned(interval: Duration) -> Instant {
    next_aligned_phase(interval, Duration::ZERO)
}

/// [`next_aligned`] for a given monotonic `now` and wall time `wall` (time since
/// the epoch at `now`). Intervals below a millisecond count as a millisecond.
pub fn next_aligned_at(now: Instant, wall: Duration, interval: Duration) -> Instant {
    next_aligned_phase_at(now, wall, interval, Duration::ZERO)
}

/// The instant of the next multiple of `interval` since the Unix epoch, shifted
/// by `phase` (e.g. half a second after each whole second).
pub fn next_aligned_phase(interval: Duration, phase: Duration) -> Instant {
    let wall = since_epoch();
    next_aligned_phase_at(Instant::now(), wall, interval, phase)
}

/// [`next_aligned_phase`] for a given monotonic `now` and wall time `wall`.
pub fn next_aligned_phase_at(
    now: Instant,
    wall: Duration,
    interval: Duration,
    phase: Duration,
) -> Instant {
    let wall = wall.as_micros();
    let offset = phase.as_micros();
    let step = interval.as_micros().max(1000);
    let next = (wall.saturating_sub(offset) / step + 1) * step + offset;
    let wait = u64::try_from(next.saturating_sub(wall)).unwrap_or(u64::MAX);
    now + Duration::from_micros(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_of_the_wall_clock_are_told_from_time_passing() {
        let t0 = std::time::Instant::now();
        let s = Duration::from_secs;
        let mut w = StepWatch::default();
        assert_eq!(
            w.look_at(t0, s(10_000)),
            None,
            "the first look is the reference"
        );
        assert_eq!(w.look_at(t0 + s(5), s(10_005)), None, "time passing");
        assert_eq!(
            w.look_at(t0 + s(6), s(10_006) - Duration::from_millis(500)),
            None,
            "half a second back is a correction, not a step"
        );
        assert_eq!(
            w.look_at(t0 + s(7), s(10_007) - s(3600)),
            Some(ClockStep::Back(s(3600) - Duration::from_millis(500)))
        );
        assert_eq!(
            w.look_at(t0 + s(8), s(6408)),
            None,
            "after the step: the new reference"
        );
        assert_eq!(
            w.look_at(t0 + s(98), s(6498) + s(59)),
            None,
            "59 s ahead: not reported"
        );
        assert_eq!(
            w.look_at(t0 + s(99), s(6558) + s(3600)),
            Some(ClockStep::Forward(s(3600)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn aligned_to_the_next_multiple() {
        let now = Instant::now();
        let wall = Duration::from_millis(10_250);
        let at = next_aligned_at(now, wall, Duration::from_secs(1));
        assert_eq!(at - now, Duration::from_millis(750));
        // Exactly on a multiple: the next one, not now.
        let at = next_aligned_at(now, Duration::from_secs(10), Duration::from_secs(1));
        assert_eq!(at - now, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn phase_shifts_the_grid() {
        let now = Instant::now();
        let half = Duration::from_millis(500);
        let sec = Duration::from_secs(1);
        let at = next_aligned_phase_at(now, Duration::from_millis(10_250), sec, half);
        assert_eq!(at - now, Duration::from_millis(250));
        let at = next_aligned_phase_at(now, Duration::from_millis(10_600), sec, half);
        assert_eq!(at - now, Duration::from_millis(900));
    }

    #[tokio::test(start_paused = true)]
    async fn tiny_intervals_count_as_a_millisecond() {
        let now = Instant::now();
        let at = next_aligned_at(now, Duration::from_micros(10_500), Duration::ZERO);
        assert_eq!(at - now, Duration::from_micros(500));
    }

    #[test]
    fn the_clocks_agree() {
        let s = unix_now();
        let ms = unix_ms();
        assert!((ms / 1000 - s).abs() <= 1);
        assert!((unix_secs_f64() - s as f64).abs() < 2.0);
    }
}
