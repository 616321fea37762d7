//! Parsing and printing of expressions: good ones print canonically, bad
//! ones fail at the right character.

use super::*;

// ---------------------------------------------------------------- parsing

/// `Ok(canonical)` for a good expression, `Err((offset, message fragment))` for a bad one.
type Expected<'a> = Result<&'a str, (usize, &'a str)>;

fn check(input: &str, expected: Expected<'_>) {
    match (parse(input), expected) {
        (Ok(e), Ok(canonical)) => {
            assert_eq!(e.to_string(), canonical, "input: {input}");
            // The canonical form is a fixed point.
            let again = parse(canonical).map(|e| e.to_string());
            assert_eq!(again.as_deref(), Ok(canonical), "reparsing {canonical}");
        }
        (Err(err), Err((offset, message))) => {
            assert_eq!(err.offset, offset, "input: {input}: {}", err.message);
            assert!(
                err.message.contains(message),
                "input: {input}: message {:?} lacks {message:?}",
                err.message
            );
        }
        (got, want) => panic!("input: {input}: got {got:?}, expected {want:?}"),
    }
}

#[test]
fn parse_good_expressions() {
    let cases: &[(&str, &str)] = &[
        ("last(/h/k)>5", "last(/h/k) > 5"),
        ("  last( /h/k )  >  5  ", "last(/h/k) > 5"),
        (
            "max(/pump/modbus.pump.F1345.3.30004,5m) < -20",
            "max(/pump/modbus.pump.F1345.3.30004,5m) < -20",
        ),
        ("min(/h/k, 300s) > 1", "min(/h/k,5m) > 1"),
        ("avg(/h/k,90s) > 1", "avg(/h/k,90s) > 1"),
        ("sum(/h/k,2h)>1", "sum(/h/k,2h) > 1"),
        ("count(/h/k,1d)>1", "count(/h/k,1d) > 1"),
        ("count(/h/k,#10)>1", "count(/h/k,#10) > 1"),
        ("change(/h/k)<>0", "change(/h/k) <> 0"),
        ("nodata(/h/k,10m)=1", "nodata(/h/k,10m) = 1"),
        ("last(/h.1-x/a:b_c-d.e)=1", "last(/h.1-x/a:b_c-d.e) = 1"),
        // precedence: not > * / > + - > comparisons > = <> > and > or
        ("1+2*3", "1 + 2 * 3"),
        ("(1+2)*3", "(1 + 2) * 3"),
        ("1-(2-3)", "1 - (2 - 3)"),
        ("1-2-3", "1 - 2 - 3"),
        ("8/(4/2)", "8 / (4 / 2)"),
        ("1<2=1", "1 < 2 = 1"),
        ("1=(2<3)", "1 = 2 < 3"),
        ("(1=2)<3", "(1 = 2) < 3"),
        ("1 or 2 and 3", "1 or 2 and 3"),
        ("(1 or 2) and 3", "(1 or 2) and 3"),
        ("not 1 and 0", "not 1 and 0"),
        ("not (1 and 0)", "not (1 and 0)"),
        ("not 2*3", "not 2 * 3"),
        ("-last(/h/k) > 5", "-last(/h/k) > 5"),
        ("-(1+2)", "-(1 + 2)"),
        ("--5", "5"),
        ("- 2.5", "-2.5"),
        ("1 - -2", "1 - -2"),
        ("0.5 + .25", "0.5 + 0.25"),
        ("1e3", "1000"),
        ("5m", "300"),
        ("2K + 1M + 1G", "2048 + 1048576 + 1073741824"),
        ("1h+1d", "3600 + 86400"),
        (
            "max(/a/x,5m)<10 and last(/b/y)>90 or nodata(/a/x,1m)=1",
            "max(/a/x,5m) < 10 and last(/b/y) > 90 or nodata(/a/x,1m) = 1",
        ),
    ];
    for (input, canonical) in cases {
        check(input, Ok(canonical));
    }
}

#[test]
fn parse_bad_expressions() {
    let cases: &[(&str, usize, &str)] = &[
        ("", 0, "the expression is empty"),
        ("   ", 0, "the expression is empty"),
        ("maxx(/h/k,5m) > 1", 0, "unknown function \"maxx\"; known: last, min, max, avg, sum, count, change, nodata; did you mean \"max\"?"),
        ("MAX(/h/k,5m) > 1", 0, "did you mean \"max\"?"),
        ("max(/h/k,5m > 1", 12, "expected \")\" after the window"),
        ("max(/h/k,5x) > 1", 9, "window \"5x\": expected a number with s, m, h or d"),
        ("max(/h/k,5) > 1", 9, "window \"5\": expected a number with s, m, h or d"),
        ("max(/h/k,1.5h) > 1", 9, "window \"1.5h\""),
        ("max(/h/k,0m) > 1", 9, "window \"0m\" is empty"),
        ("max(/h/k,#0) > 1", 9, "window \"#0\""),
        ("max(/h/k,) > 1", 9, "expected a window after \",\""),
        ("max(/h/k) > 1", 8, "max needs a window, e.g. max(/host/key,5m)"),
        ("max(/h/k 5m) > 1", 9, "expected \",\" and a window after the item"),
        ("nodata(/h/k,#3)=1", 12, "nodata needs a time window"),
        ("last(/h/k,5m) > 1", 9, "last takes no window"),
        ("change(/h/k", 11, "expected \")\" after the item"),
        ("last(h/k) > 1", 5, "expected an item /host/key as the first argument of last"),
        ("last(/) > 1", 6, "expected a host after \"/\""),
        ("last(/h) > 1", 7, "expected \"/\" between the host and the key"),
        ("last(/h/) > 1", 8, "expected an item key after \"/h/\""),
        ("last > 1", 5, "expected \"(\" after last"),
        ("foo > 1", 0, "unknown word \"foo\""),
        ("last(/h/k) >", 12, "expected a value"),
        ("last(/h/k) > > 1", 13, "found \">\""),
        ("(last(/h/k) > 1", 15, "expected \")\" to close the \"(\" at character 0"),
        ("last(/h/k) > 1)", 14, "unexpected \")\""),
        ("last(/h/k) > 1 2", 15, "expected an operator or the end of the expression, found \"2\""),
        ("last(/h/k) == 1", 11, "write \"=\""),
        ("last(/h/k) != 1", 11, "write \"<>\""),
        ("last(/h/k) > 1 && 1", 15, "write \"and\""),
        ("last(/h/k) > 1 || 1", 15, "write \"or\""),
        ("last(/h/k) > 5x", 13, "number \"5x\": unknown suffix \"x\""),
        ("last(/h/k) > 1 and", 18, "expected a value"),
        ("and 1", 0, "expected a value before \"and\""),
        ("last(/h/k) > $", 13, "unexpected character \"$\""),
        ("last(\"/h/k\") > 1", 5, "quotes are not allowed"),
        (&"(".repeat(100), 64, "nested more than 64 levels deep"),
        (&"-".repeat(100), 64, "nested more than 64 levels deep"),
        (&"1+".repeat(3000), 4096, "longer than 4096 characters"),
        // character offsets, not bytes
        ("last(/h/k) > 1 + \u{e9}", 17, "unexpected character \"\u{e9}\""),
    ];
    for (input, offset, message) in cases {
        check(input, Err((*offset, message)));
    }
}

#[test]
fn ast_shape_and_first_item() {
    let e = parse("max(/a/x,5m) < 10 and last(/b/y) > 90").unwrap();
    let Expr::Bin {
        op: BinOp::And,
        lhs,
        ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert!(matches!(**lhs, Expr::Bin { op: BinOp::Lt, .. }));
    let functions = e.functions();
    assert_eq!(functions.len(), 2);
    assert_eq!(functions[0].0, Func::Max);
    assert_eq!(functions[0].2, Some(Window::Time(300)));
    assert_eq!(functions[1].1.host, "b");
    let first = e.first_item().unwrap();
    assert_eq!((first.host.as_str(), first.key.as_str()), ("a", "x"));
    assert_eq!((first.pos, first.host_pos(), first.key_pos()), (4, 5, 7));
}
