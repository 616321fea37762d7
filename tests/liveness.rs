//! Liveness under load, against the real binary and a real mosquitto: while
//! 8 clients ask for 200,000-point histories and config requests arrive, 10
//! hosts polled at 1 s stay on time (p99 of poll lateness within 50 ms, from
//! the gateway's own `modbridge_poll_lateness_seconds`), and the broker never
//! loses the gateway to a missed keep-alive.

#[path = "support/broker.rs"]
mod broker;
#[path = "support/load.rs"]
mod load;

use std::time::Duration;

/// How long the load runs.
const WINDOW: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_and_keep_alives_stay_on_time_under_large_history_queries() {
    let g = load::Gateway::start().await;
    // A few cycles in, so start-up work is behind us.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = g.lateness().await;
    let (clients, _) = load::run_load(&g, WINDOW).await;
    let during = g.lateness().await.since(&before);

    assert!(
        clients.bad_histories.is_empty(),
        "{:?}",
        clients.bad_histories
    );
    assert!(
        clients.histories >= load::CLIENTS,
        "every client got at least one history answer: {clients:?}"
    );
    assert!(
        clients.bad_config_requests.is_empty(),
        "{:?}",
        clients.bad_config_requests
    );
    assert!(clients.config_requests > 10, "{clients:?}");

    // 10 hosts at 1 s for the window, give or take the edges.
    let expected = load::HOSTS as u64 * WINDOW.as_secs();
    assert!(
        during.polls >= expected - 2 * load::HOSTS as u64,
        "polls went on: {during:?}"
    );
    let late = during.later_than(0.05);
    assert!(
        late * 100 <= during.polls,
        "p99 of poll lateness over 50 ms: {late} of {} polls later ({during:?})",
        during.polls
    );

    let (connects, timed_out) = g.broker_sessions();
    assert!(
        !timed_out,
        "the broker dropped the gateway for a missed keep-alive"
    );
    assert_eq!(connects, 1, "the gateway stayed connected the whole time");
    let health = load::get(g.api, "/health").await.expect("health");
    let health = health.json().expect("json");
    assert_eq!(health["mqtt"]["connected"], true, "{health}");
}

#[tokio::test]
async fn lateness_figures_are_read_from_the_metrics() {
    let text = "\
modbridge_poll_lateness_seconds_bucket{host=\"a\",le=\"0.05\"} 9
modbridge_poll_lateness_seconds_bucket{host=\"a\",le=\"+Inf\"} 10
modbridge_poll_lateness_seconds_count{host=\"a\"} 10
modbridge_poll_lateness_seconds_bucket{host=\"b\",le=\"0.05\"} 10
modbridge_poll_lateness_seconds_bucket{host=\"b\",le=\"+Inf\"} 10
modbridge_poll_lateness_seconds_count{host=\"b\"} 10
modbridge_poll_lateness_max_seconds{host=\"a\"} 0.3
modbridge_poll_lateness_max_seconds{host=\"b\"} 0.01
";
    let l = load::Lateness::parse(text);
    assert_eq!(l.polls, 20);
    assert_eq!(l.later_than(0.05), 1);
    assert_eq!(l.max_seconds, 0.3);
    assert_eq!(l.quantile_bound(0.9), 0.05);
    assert_eq!(l.quantile_bound(0.99), f64::INFINITY);
    let earlier = load::Lateness::parse(&text.replace(" 10\n", " 5\n").replace(" 9\n", " 5\n"));
    assert_eq!(earlier.polls, 10);
    assert_eq!(l.since(&earlier).later_than(0.05), 1);
}
