//! The field side against a real in-process Modbus server: merged reads,
//! decoding, exception narrowing, timeouts, dropped connections, garbage,
//! RTU on a shared serial line, and the host task's recovery.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{item, rtu_host, tcp_host, PtyPair};
use modbridge::modbus::Buses;
use modbridge::model::{ByteOrder, Pacing, Table, ValueType};
use modbridge::poll::{self, HostLiveCell, HostReader, ItemState, Outputs};
use modbridge::sim::SimDevice;
use tokio_util::sync::CancellationToken;

async fn device() -> (SimDevice, modbridge::sim::SimServer, std::net::SocketAddr) {
    let device = SimDevice::new();
    let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
    let addr = server.addr().expect("addr");
    (device, server, addr)
}

fn values(report: &poll::CycleReport) -> Vec<Result<f64, String>> {
    report
        .readings
        .iter()
        .map(|r| r.value.clone().map_err(|e| e.to_string()))
        .collect()
}

#[tokio::test]
async fn merged_reads_decode_every_table_and_type() {
    let (dev, _server, addr) = device().await;
    dev.set_registers(Table::Holding, 0, &[7, 0xFFFB, 0x0001, 0x0002]);
    // f32 21.5 = 0x41AC0000, stored CDAB.
    dev.set_registers(Table::Holding, 4, &[0x0000, 0x41AC]);
    dev.set_register(Table::Holding, 8, 0b1000);
    dev.set_register(Table::Input, 3, 215);
    dev.set_register(Table::Coil, 0, 1);
    dev.set_register(Table::Discrete, 2, 1);
    let mut f32_cdab = item("f", Table::Holding, 4, ValueType::F32);
    f32_cdab.byte_order = ByteOrder::Cdab;
    let mut bit3 = item("bit", Table::Holding, 8, ValueType::Bool);
    bit3.bit = Some(3);
    let mut temp = item("temp", Table::Input, 3, ValueType::I16);
    temp.scale = 0.1;
    let host = tcp_host(
        "dev",
        addr,
        vec![
            item("u", Table::Holding, 0, ValueType::U16),
            item("i", Table::Holding, 1, ValueType::I16),
            item("u32", Table::Holding, 2, ValueType::U32),
            f32_cdab,
            bit3,
            temp,
            item("coil", Table::Coil, 0, ValueType::Bool),
            item("disc", Table::Discrete, 2, ValueType::Bool),
        ],
    );
    let mut reader = HostReader::new(Arc::new(host), &Buses::default());
    let all: Vec<usize> = (0..8).collect();
    let report = reader.read(&all).await;
    assert_eq!(
        values(&report),
        vec![
            Ok(7.0),
            Ok(-5.0),
            Ok(65538.0),
            Ok(21.5),
            Ok(1.0),
            Ok(21.5),
            Ok(1.0),
            Ok(1.0)
        ]
    );
    // holding 0..8, input 3, coil 0, discrete 2: one request per table.
    assert_eq!(report.requests, 4);
    assert_eq!(dev.requests(), 4);
}

#[tokio::test]
async fn an_exception_blinds_only_the_refused_item_and_is_remembered() {
    let (dev, _server, addr) = device().await;
    dev.set_registers(Table::Holding, 4, &[40, 50, 60]);
    dev.faults(|f| {
        f.exception_at.insert((Table::Holding, 5));
    });
    let host = tcp_host(
        "dev",
        addr,
        vec![
            item("a", Table::Holding, 4, ValueType::U16),
            item("b", Table::Holding, 5, ValueType::U16),
            item("c", Table::Holding, 6, ValueType::U16),
        ],
    );
    let mut reader = HostReader::new(Arc::new(host), &Buses::default());
    let first = reader.read(&[0, 1, 2]).await;
    assert_eq!(first.readings[0].value, Ok(40.0));
    assert!(
        first.readings[1]
            .value
            .as_ref()
            .is_err_and(|e| e.contains("illegal data address")),
        "{:?}",
        first.readings[1]
    );
    assert_eq!(first.readings[2].value, Ok(60.0));
    assert_eq!(first.requests, 4, "one merged read, then each item alone");
    // Next cycle: the refused item is read alone and its neighbours are not
    // merged across it, so nothing is refused but the item itself.
    let before = dev.requests();
    let second = reader.read(&[0, 1, 2]).await;
    assert_eq!(second.requests, 3);
    assert_eq!(dev.requests() - before, 3);
    assert_eq!(second.request_errors, 1);
    assert_eq!(second.readings[0].value, Ok(40.0));
    assert_eq!(second.readings[2].value, Ok(60.0));
}

#[tokio::test]
async fn a_refused_register_in_a_gap_splits_the_read() {
    let (dev, _server, addr) = device().await;
    dev.set_register(Table::Holding, 8, 8);
    dev.set_register(Table::Holding, 12, 12);
    dev.faults(|f| {
        f.exception_at.insert((Table::Holding, 10));
    });
    let host = tcp_host(
        "dev",
        addr,
        vec![
            item("a", Table::Holding, 8, ValueType::U16),
            item("b", Table::Holding, 12, ValueType::U16),
        ],
    );
    let mut reader = HostReader::new(Arc::new(host), &Buses::default());
    let first = reader.read(&[0, 1]).await;
    assert_eq!(values(&first), vec![Ok(8.0), Ok(12.0)]);
    assert_eq!(first.requests, 3);
    let second = reader.read(&[0, 1]).await;
    assert_eq!(values(&second), vec![Ok(8.0), Ok(12.0)]);
    assert_eq!(second.requests, 2);
    assert_eq!(second.request_errors, 0);
    assert_eq!(reader.cuts(), vec![(Table::Holding, 12)]);
}

#[tokio::test]
async fn a_late_answer_is_never_taken_for_the_next_one() {
    let (dev, _server, addr) = device().await;
    dev.set_register(Table::Holding, 0, 1);
    dev.faults(|f| f.delay = Duration::from_millis(600));
    let host = tcp_host(
        "dev",
        addr,
        vec![item("a", Table::Holding, 0, ValueType::U16)],
    );
    let mut reader = HostReader::new(Arc::new(host), &Buses::default());
    let slow = reader.read(&[0]).await;
    assert!(slow.transport_error.is_some());
    assert!(slow.readings[0]
        .value
        .as_ref()
        .is_err_and(|e| e.contains("timeout")));
    dev.faults(|f| f.delay = Duration::ZERO);
    dev.set_register(Table::Holding, 0, 2);
    let fast = reader.read(&[0]).await;
    assert_eq!(values(&fast), vec![Ok(2.0)]);
}

#[tokio::test]
async fn dropped_connections_and_garbage_are_survived() {
    let (dev, _server, addr) = device().await;
    dev.set_register(Table::Holding, 0, 5);
    let mut host = tcp_host(
        "dev",
        addr,
        vec![item("a", Table::Holding, 0, ValueType::U16)],
    );
    host.retries = 1;
    let mut reader = HostReader::new(Arc::new(host), &Buses::default());
    assert_eq!(values(&reader.read(&[0]).await), vec![Ok(5.0)]);
    // The device drops the connection: the retry reconnects within the same cycle.
    dev.drop_connections();
    assert_eq!(values(&reader.read(&[0]).await), vec![Ok(5.0)]);
    // Garbage answers: an error, no panic; clean answers afterwards.
    dev.faults(|f| f.garbage = true);
    let bad = reader.read(&[0]).await;
    assert!(bad.transport_error.is_some(), "{bad:?}");
    dev.faults(|f| f.garbage = false);
    assert_eq!(values(&reader.read(&[0]).await), vec![Ok(5.0)]);
}

#[tokio::test]
async fn a_silent_device_costs_one_timeout_per_attempt() {
    let (dev, _server, addr) = device().await;
    dev.faults(|f| f.silent = true);
    let mut host = tcp_host(
        "dev",
        addr,
        vec![item("a", Table::Holding, 0, ValueType::U16)],
    );
    host.timeout = Duration::from_millis(200);
    host.retries = 1;
    let mut reader = HostReader::new(Arc::new(host), &Buses::default());
    let started = std::time::Instant::now();
    let report = reader.read(&[0]).await;
    let took = started.elapsed();
    assert!(report.transport_error.is_some());
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test]
async fn rtu_hosts_share_a_serial_line() {
    let pty = PtyPair::new();
    let dev = SimDevice::new();
    dev.answer_units(&[2, 3]);
    dev.set_register(Table::Holding, 0, 42);
    dev.set_register(Table::Input, 1, 7);
    let _server = dev.serve_rtu(&pty.b, 19200).expect("serve rtu");
    let buses = Buses::default();
    let a = rtu_host(
        "a",
        &pty.a,
        2,
        vec![item("x", Table::Holding, 0, ValueType::U16)],
    );
    let b = rtu_host(
        "b",
        &pty.a,
        3,
        vec![item("y", Table::Input, 1, ValueType::U16)],
    );
    let mut silent = rtu_host(
        "c",
        &pty.a,
        4,
        vec![item("z", Table::Holding, 0, ValueType::U16)],
    );
    silent.timeout = Duration::from_millis(200);
    let mut ra = HostReader::new(Arc::new(a), &buses);
    let mut rb = HostReader::new(Arc::new(b), &buses);
    let mut rc = HostReader::new(Arc::new(silent), &buses);
    for _ in 0..3 {
        let (x, y, z) = tokio::join!(ra.read(&[0]), rb.read(&[0]), rc.read(&[0]));
        assert_eq!(values(&x), vec![Ok(42.0)]);
        assert_eq!(values(&y), vec![Ok(7.0)]);
        assert!(z.transport_error.is_some(), "unit 4 does not exist");
    }
}

#[tokio::test]
async fn a_host_task_recovers_when_its_device_comes_back() {
    // Reserve a port, then close it: the device is "off".
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let mut spec = tcp_host(
        "dev",
        addr,
        vec![item("a", Table::Holding, 0, ValueType::U16)],
    );
    spec.items[0].poll_interval = Duration::from_millis(300);
    spec.poll_interval = Duration::from_millis(300);
    let live = HostLiveCell::new(1);
    let mut cycles = live.subscribe();
    let cancel = CancellationToken::new();
    let reader = HostReader::new(Arc::new(spec), &Buses::default());
    let task = tokio::spawn(poll::run_host(
        reader,
        Outputs {
            live: live.clone(),
            store: None,
            item_ids: vec![None],
        },
        cancel.clone(),
    ));
    cycles.changed().await.expect("a cycle");
    {
        let l = live.lock();
        assert!(!l.link_up);
        assert_eq!(l.items[0].state, ItemState::Error);
        assert_eq!(l.items[0].value, None);
    }
    // The device comes back on the same port.
    let dev = SimDevice::new();
    dev.set_register(Table::Holding, 0, 9);
    let _server = dev.bind_tcp(&addr.to_string()).await.expect("rebind");
    let recovered = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            cycles.changed().await.expect("cycles");
            if live.lock().items[0].state == ItemState::Ok {
                break;
            }
        }
    })
    .await;
    assert!(
        recovered.is_ok(),
        "the device was not read again within 5 s"
    );
    let l = live.lock().clone();
    assert!(l.link_up);
    assert_eq!(l.items[0].value, Some(9.0));
    assert!(l.items[0].clock.is_some());
    drop(l);
    // The item keeps its value and clock when the device goes silent again.
    let before = live.lock().items[0].clone();
    dev.faults(|f| f.silent = true);
    loop {
        cycles.changed().await.expect("cycles");
        if live.lock().items[0].state == ItemState::Error {
            break;
        }
    }
    let after = live.lock().items[0].clone();
    assert_eq!(after.value, before.value);
    assert_eq!(after.clock, before.clock);
    assert!(after.error.is_some());
    cancel.cancel();
    task.await.expect("task");
}

#[tokio::test]
async fn writes_go_through_the_link_and_faults_apply() {
    use modbridge::modbus::{Link, Operation, Priority, ReadData, RequestError};
    let (dev, _server, addr) = device().await;
    let host = tcp_host("dev", addr, vec![]);
    let mut link = Link::new(&host, &Buses::default());
    let write = |start: u16, words: Vec<u16>| Operation::WriteRegisters { start, words };
    link.request(&write(3, vec![7]), Priority::Write)
        .await
        .expect("single register");
    link.request(&write(10, vec![1, 2]), Priority::Write)
        .await
        .expect("two registers");
    link.request(
        &Operation::WriteCoil {
            address: 4,
            on: true,
        },
        Priority::Write,
    )
    .await
    .expect("coil");
    assert_eq!(dev.register(Table::Holding, 3), 7);
    assert_eq!(
        (
            dev.register(Table::Holding, 10),
            dev.register(Table::Holding, 11)
        ),
        (1, 2)
    );
    assert_eq!(dev.register(Table::Coil, 4), 1);
    let read = Operation::Read {
        table: Table::Holding,
        start: 10,
        count: 2,
    };
    assert_eq!(
        link.request(&read, Priority::Poll).await,
        Ok(ReadData::Words(vec![1, 2]))
    );
    // A device that acknowledges writes but keeps its value.
    dev.faults(|f| f.ignore_writes = true);
    link.request(&write(3, vec![8]), Priority::Write)
        .await
        .expect("acknowledged");
    assert_eq!(dev.register(Table::Holding, 3), 7);
    // An exception on write is reported as such, and the link stays usable.
    dev.faults(|f| {
        f.ignore_writes = false;
        f.exception_at.insert((Table::Holding, 20));
    });
    let refused = link.request(&write(20, vec![1]), Priority::Write).await;
    assert!(
        matches!(refused, Err(RequestError::Exception(_))),
        "{refused:?}"
    );
    link.request(&write(3, vec![9]), Priority::Write)
        .await
        .expect("after exception");
    assert_eq!(dev.register(Table::Holding, 3), 9);
}

/// Three neighbouring items (one merged read) on a fresh reader.
fn three_neighbours(addr: std::net::SocketAddr) -> HostReader {
    let host = tcp_host(
        "dev",
        addr,
        vec![
            item("a", Table::Holding, 4, ValueType::U16),
            item("b", Table::Holding, 5, ValueType::U16),
            item("c", Table::Holding, 6, ValueType::U16),
        ],
    );
    HostReader::new(Arc::new(host), &Buses::default())
}

/// Reads all three items once; returns the report and the requests the device saw.
async fn cycle(reader: &mut HostReader, dev: &SimDevice) -> (poll::CycleReport, u64) {
    let before = dev.requests();
    let report = reader.read(&[0, 1, 2]).await;
    assert_eq!(
        dev.requests() - before,
        report.requests,
        "counted on the wire"
    );
    let seen = report.requests;
    (report, seen)
}

#[tokio::test]
async fn exceptions_01_02_03_narrow_the_merged_read_and_are_remembered() {
    for (code, name) in common::ABOUT_THE_REQUEST {
        let (dev, _server, addr) = device().await;
        dev.set_registers(Table::Holding, 4, &[40, 50, 60]);
        let mut reader = three_neighbours(addr);
        let (before, n) = cycle(&mut reader, &dev).await;
        assert_eq!(
            (n, values(&before)),
            (1, vec![Ok(40.0), Ok(50.0), Ok(60.0)])
        );
        dev.faults(|f| {
            f.exception_at.insert((Table::Holding, 5));
            f.exception = Some(code);
        });
        let (during, n) = cycle(&mut reader, &dev).await;
        assert_eq!(n, 4, "{name}: the merged read, then each item alone");
        assert!(during.busy.is_none() && during.transport_error.is_none());
        assert_eq!(during.readings[0].value, Ok(40.0));
        assert!(
            during.readings[1]
                .value
                .as_ref()
                .is_err_and(|e| e.contains(name)),
            "{name}: {:?}",
            during.readings[1]
        );
        assert_eq!(during.readings[2].value, Ok(60.0));
        let (next, n) = cycle(&mut reader, &dev).await;
        assert_eq!((n, next.request_errors), (3, 1), "{name}: remembered");
        assert_eq!(
            reader.cuts(),
            vec![(Table::Holding, 5), (Table::Holding, 6)]
        );
        // The device is fixed: the cut still holds until it is forgotten.
        dev.faults(|f| f.exception_at.clear());
        let (after, n) = cycle(&mut reader, &dev).await;
        assert_eq!((n, values(&after)), (3, vec![Ok(40.0), Ok(50.0), Ok(60.0)]));
    }
}

#[tokio::test]
async fn exceptions_04_05_06_0a_0b_mean_not_now_and_teach_nothing() {
    for (code, name) in common::NOT_NOW {
        let (dev, _server, addr) = device().await;
        dev.set_registers(Table::Holding, 4, &[40, 50, 60]);
        let mut reader = three_neighbours(addr);
        let mut live = poll::HostLive::new(3);
        let (before, n) = cycle(&mut reader, &dev).await;
        assert_eq!(n, 1);
        poll::apply_readings(reader.host(), &mut live, &before, 1000, &[]);
        dev.faults(|f| f.refuse_all = Some(code));
        for _ in 0..3 {
            let (during, n) = cycle(&mut reader, &dev).await;
            assert_eq!(n, 1, "{name}: no narrowing, the cycle ends at once");
            assert!(during.transport_error.is_none(), "the device is there");
            assert!(
                during
                    .busy
                    .as_ref()
                    .is_some_and(|e| e.to_string().contains(name)),
                "{name}: {during:?}"
            );
            assert!(during.unanswered().is_some(), "{name}: the host backs off");
            assert!(during
                .readings
                .iter()
                .all(|r| r.value.as_ref().is_err_and(|e| e.contains(name))));
            poll::apply_readings(reader.host(), &mut live, &during, 2000, &[]);
        }
        assert!(reader.cuts().is_empty(), "{name}: nothing learned");
        // The items keep their value and clock, in error.
        for (i, v) in [40.0, 50.0, 60.0].into_iter().enumerate() {
            let it = &live.items[i];
            assert_eq!((it.value, it.clock), (Some(v), Some(1000)), "{name}");
            assert_eq!(it.state, ItemState::Error);
        }
        assert!(!live.link_up);
        assert_eq!(live.consecutive_errors, 3);
        // It answers again: one merged read, as before.
        dev.faults(|f| f.refuse_all = None);
        let (after, n) = cycle(&mut reader, &dev).await;
        assert_eq!((n, values(&after)), (1, vec![Ok(40.0), Ok(50.0), Ok(60.0)]));
    }
}

#[tokio::test]
async fn a_not_now_answer_while_narrowing_teaches_nothing() {
    let (dev, _server, addr) = device().await;
    dev.faults(|f| {
        f.exception_at.insert((Table::Holding, 5));
        f.exception = Some(tokio_modbus::ExceptionCode::ServerDeviceBusy);
    });
    let mut reader = three_neighbours(addr);
    let (busy, n) = cycle(&mut reader, &dev).await;
    assert_eq!(n, 1);
    assert!(busy.busy.is_some());
    assert!(reader.cuts().is_empty());
}

#[tokio::test]
async fn a_cut_is_forgotten_after_an_hour_and_learned_again_if_still_true() {
    let (dev, _server, addr) = device().await;
    dev.set_registers(Table::Holding, 4, &[40, 50, 60]);
    dev.faults(|f| {
        f.exception_at.insert((Table::Holding, 5));
    });
    let mut reader = three_neighbours(addr);
    tokio::time::pause();
    assert_eq!(cycle(&mut reader, &dev).await.1, 4);
    assert_eq!(cycle(&mut reader, &dev).await.1, 3);
    tokio::time::advance(poll::CUT_LIFETIME - Duration::from_secs(60)).await;
    assert_eq!(cycle(&mut reader, &dev).await.1, 3, "still remembered");
    tokio::time::advance(Duration::from_secs(61)).await;
    // Forgotten: the merged read is tried again, refused, and narrowed.
    let (relearned, n) = cycle(&mut reader, &dev).await;
    assert_eq!(n, 4);
    assert_eq!(relearned.readings[0].value, Ok(40.0));
    assert_eq!(relearned.readings[2].value, Ok(60.0));
    assert_eq!(cycle(&mut reader, &dev).await.1, 3, "learned again");
    // Fixed by a firmware update: after the next hour, one merged read.
    dev.faults(|f| f.exception_at.clear());
    tokio::time::advance(poll::CUT_LIFETIME).await;
    let (merged, n) = cycle(&mut reader, &dev).await;
    assert_eq!(
        (n, values(&merged)),
        (1, vec![Ok(40.0), Ok(50.0), Ok(60.0)])
    );
    assert!(reader.cuts().is_empty());
}

/// The silences on the device's side: after each connect before the first
/// request, and between each answer and the next request.
fn silences(timing: &modbridge::sim::Timing) -> (Vec<Duration>, Vec<Duration>) {
    let after_connect = timing
        .connects
        .iter()
        .filter_map(|c| {
            let first = timing.requests.iter().find(|(at, _)| at > c)?;
            Some(first.0 - *c)
        })
        .collect();
    let between = timing
        .requests
        .windows(2)
        .map(|w| w[1].0 - w[0].1.expect("answered"))
        .collect();
    (after_connect, between)
}

#[tokio::test]
async fn pacing_is_kept_on_the_wire() {
    let (dev, _server, addr) = device().await;
    let spread = || {
        vec![
            item("a", Table::Holding, 0, ValueType::U16),
            item("b", Table::Holding, 100, ValueType::U16),
            item("c", Table::Holding, 200, ValueType::U16),
        ]
    };
    // Without pacing, requests follow each other at once.
    dev.record_timing();
    let mut plain = HostReader::new(Arc::new(tcp_host("dev", addr, spread())), &Buses::default());
    assert_eq!(plain.read(&[0, 1, 2]).await.requests, 3);
    let (_, between) = silences(&dev.timing());
    assert!(
        between.iter().all(|d| *d < Duration::from_millis(100)),
        "{between:?}"
    );
    // With pacing: 150 ms between an answer and the next request, 300 ms
    // after each connect (also after a reconnect).
    let mut host = tcp_host("paced", addr, spread());
    host.pacing = Pacing {
        between_requests: Duration::from_millis(150),
        after_connect: Duration::from_millis(300),
    };
    host.retries = 1;
    let mut paced = HostReader::new(Arc::new(host), &Buses::default());
    dev.record_timing();
    assert_eq!(values(&paced.read(&[0, 1, 2]).await), vec![Ok(0.0); 3]);
    dev.drop_connections();
    assert_eq!(values(&paced.read(&[0, 1, 2]).await), vec![Ok(0.0); 3]);
    let timing = dev.timing();
    assert_eq!(timing.connects.len(), 2, "connected, then reconnected");
    let (after_connect, between) = silences(&timing);
    assert_eq!(after_connect.len(), 2);
    assert!(
        after_connect
            .iter()
            .all(|d| *d >= Duration::from_millis(300)),
        "{after_connect:?}"
    );
    assert_eq!(between.len(), 5, "{timing:?}");
    assert!(
        between.iter().all(|d| *d >= Duration::from_millis(150)),
        "{between:?}"
    );
}

#[tokio::test]
async fn pacing_holds_on_a_serial_line_too() {
    let pty = PtyPair::new();
    let dev = SimDevice::new();
    dev.answer_units(&[2]);
    let _server = dev.serve_rtu(&pty.b, 19200).expect("serve rtu");
    let mut host = rtu_host(
        "meter",
        &pty.a,
        2,
        vec![
            item("a", Table::Holding, 0, ValueType::U16),
            item("b", Table::Holding, 100, ValueType::U16),
            item("c", Table::Holding, 200, ValueType::U16),
        ],
    );
    host.pacing.between_requests = Duration::from_millis(120);
    let mut reader = HostReader::new(Arc::new(host), &Buses::default());
    dev.record_timing();
    assert_eq!(values(&reader.read(&[0, 1, 2]).await), vec![Ok(0.0); 3]);
    let (_, between) = silences(&dev.timing());
    assert_eq!(between.len(), 2);
    assert!(
        between.iter().all(|d| *d >= Duration::from_millis(120)),
        "{between:?}"
    );
}
