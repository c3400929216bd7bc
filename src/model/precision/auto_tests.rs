use std::cell::Cell;

use super::*;

fn machine(cpu: &str) -> Machine {
    Machine {
        cpu: Some(cpu.into()),
        libtorch: "2.9.0".into(),
        threads: 2,
    }
}

const FAST_BF16: Rates = Rates {
    fp32: 118.0,
    bf16: 311.0,
};
const SLOW_BF16: Rates = Rates {
    fp32: 118.0,
    bf16: 107.0,
};

/// `decide` with a fake measurement; also returns whether it was called.
fn run(store: Option<&Path>, m: &Machine, rates: Rates) -> (Decision, bool) {
    let called = Cell::new(false);
    let d = decide(store, m, BUSY_CORES, || {
        called.set(true);
        Ok(Measured {
            rates,
            others: Some(0.0),
        })
    });
    (d, called.get())
}

fn stored_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(FILE)).unwrap()).unwrap()
}

#[test]
fn bf16_only_when_clearly_faster() {
    let kind = |bf16| run(None, &machine("x"), Rates { fp32: 100.0, bf16 }).0.kind;
    assert_eq!(kind(129.0), Kind::Float);
    assert_eq!(kind(130.0), Kind::BFloat16);
    assert_eq!(kind(40.0), Kind::Float);
}

#[test]
fn a_measured_decision_is_stored_and_reused_on_the_same_machine() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("nested");
    let m = machine("AMD EPYC 9R14");
    let (first, measured) = run(Some(&store), &m, FAST_BF16);
    assert!(measured);
    assert_eq!(first.kind, Kind::BFloat16);
    let path = store.join(FILE);
    assert_eq!(
        first.source,
        Source::Measured {
            saved: Some(path.clone())
        }
    );
    let j = stored_json(&store);
    assert_eq!(j["cpu"], "AMD EPYC 9R14");
    assert_eq!(j["libtorch"], "2.9.0");
    assert_eq!(j["threads"], 2);
    assert_eq!(j["bf16_gflops"], 311.0);
    assert_eq!(j["fp32_gflops"], 118.0);
    assert_eq!(j["precision"], "bf16");

    // Rates that would say fp32 are not asked for: the stored bf16 stands.
    let (again, measured) = run(Some(&store), &m, SLOW_BF16);
    assert!(!measured);
    assert_eq!(again.kind, Kind::BFloat16);
    assert_eq!(again.rates, FAST_BF16);
    assert_eq!(again.source, Source::Stored(path));
}

#[test]
fn a_decision_from_another_cpu_libtorch_or_thread_count_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let here = machine("Intel(R) Xeon(R) Platinum 8488C");
    let others = [
        machine("AMD EPYC 9R14"),
        Machine {
            libtorch: "2.8.0".into(),
            ..here.clone()
        },
        Machine {
            threads: 8,
            ..here.clone()
        },
    ];
    for other in others {
        run(Some(dir.path()), &other, FAST_BF16);
        let (d, measured) = run(Some(dir.path()), &here, SLOW_BF16);
        assert!(measured, "reused the decision of {other:?}");
        assert_eq!(d.kind, Kind::Float);
        // Overwritten with this machine's.
        let j = stored_json(dir.path());
        assert_eq!(j["cpu"], "Intel(R) Xeon(R) Platinum 8488C");
        assert_eq!(j["threads"], 2);
        assert_eq!(j["libtorch"], "2.9.0");
        assert_eq!(j["precision"], "fp32");
    }
}

#[test]
fn rates_timed_beside_other_work_are_used_but_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let m = machine("x");
    let timed = |others: Option<f64>| {
        decide(Some(dir.path()), &m, BUSY_CORES, || {
            Ok(Measured {
                rates: FAST_BF16,
                others,
            })
        })
    };
    let busy = timed(Some(1.0));
    assert_eq!((busy.kind, busy.rates), (Kind::BFloat16, FAST_BF16));
    assert_eq!(busy.source, Source::Busy { others: 1.0 });
    assert!(!dir.path().join(FILE).exists());
    // A higher threshold (the environment's) stores it.
    let d = decide(Some(dir.path()), &m, 2.0, || {
        Ok(Measured {
            rates: FAST_BF16,
            others: Some(1.0),
        })
    });
    assert!(matches!(d.source, Source::Measured { saved: Some(_) }));
    std::fs::remove_file(dir.path().join(FILE)).unwrap();
    assert_eq!(busy_cores(None), BUSY_CORES);
    assert_eq!(busy_cores(Some(" 100 ")), 100.0);
    for bad in ["-1", "lots", "", "NaN"] {
        assert_eq!(busy_cores(Some(bad)), BUSY_CORES, "{bad}");
    }
    // Unknown load (no /proc) or a quiet machine: stored as before.
    for others in [None, Some(0.2)] {
        let d = timed(others);
        assert_eq!(
            d.source,
            Source::Measured {
                saved: Some(dir.path().join(FILE))
            }
        );
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
    }
}

#[test]
fn a_file_whose_fp32_rate_was_a_probes_is_measured_again() {
    let dir = tempfile::tempdir().unwrap();
    let m = machine("x");
    // As written before the fp32 rate was always timed at full size: no `fp32_rows`.
    let before = r#"{"cpu":"x","libtorch":"2.9.0","threads":2,"fp32_gflops":43,"bf16_gflops":10,"precision":"fp32"}"#;
    std::fs::write(dir.path().join(FILE), before).unwrap();
    let (d, measured) = run(Some(dir.path()), &m, SLOW_BF16);
    assert!(measured);
    assert_eq!(d.rates, SLOW_BF16);
    assert_eq!(
        stored_json(dir.path())["fp32_rows"],
        super::super::gemm::ROWS
    );
    let (again, measured) = run(Some(dir.path()), &m, FAST_BF16);
    assert!(!measured);
    assert_eq!(again.rates, SLOW_BF16);
}

#[test]
fn a_corrupt_or_unwritable_store_only_means_measuring() {
    let dir = tempfile::tempdir().unwrap();
    let m = machine("x");
    for bad in [
        "{ not json",
        r#"{"cpu":"x","libtorch":"2.9.0","threads":2,"fp32_gflops":-1,"bf16_gflops":5,"precision":"bf16"}"#,
        r#"{"cpu":"x","libtorch":"2.9.0","threads":2,"fp32_gflops":1,"bf16_gflops":5,"precision":"int8"}"#,
    ] {
        std::fs::write(dir.path().join(FILE), bad).unwrap();
        let (d, measured) = run(Some(dir.path()), &m, SLOW_BF16);
        assert!(measured, "{bad}");
        assert_eq!(d.kind, Kind::Float);
        assert_eq!(stored_json(dir.path())["precision"], "fp32");
    }
    // A file where the folder should be: measured, nothing stored, no error.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let (d, measured) = run(Some(&blocker), &m, FAST_BF16);
    assert!(measured);
    assert_eq!(d.kind, Kind::BFloat16);
    assert_eq!(d.source, Source::Measured { saved: None });
}

#[test]
fn a_failed_measurement_is_fp32_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let m = machine("x");
    let d = decide(Some(dir.path()), &m, BUSY_CORES, || {
        Err(Error::runtime("no bf16 kernel"))
    });
    assert_eq!(d.kind, Kind::Float);
    let nan = Rates {
        fp32: f64::NAN,
        bf16: 300.0,
    };
    assert_eq!(run(Some(dir.path()), &m, nan).0.kind, Kind::Float);
    assert!(!dir.path().join(FILE).exists());
}

#[test]
fn an_unknown_cpu_is_never_stored() {
    let m = Machine {
        cpu: None,
        ..machine("x")
    };
    assert_eq!(m.store_dir(), None);
}

#[test]
fn the_log_line_names_the_choice_both_rates_and_where_it_came_from() {
    let mut d = Decision {
        kind: Kind::BFloat16,
        rates: Rates {
            fp32: 118.4,
            bf16: 310.6,
        },
        threads: 2,
        source: Source::Measured { saved: None },
    };
    assert_eq!(
        d.to_string(),
        "precision auto: bf16 (bf16 311 GFLOP/s, fp32 118 GFLOP/s, 2 threads; measured)"
    );
    d.source = Source::Busy { others: 0.94 };
    assert_eq!(
        d.to_string(),
        "precision auto: bf16 (bf16 311 GFLOP/s, fp32 118 GFLOP/s, 2 threads; measured beside \
         other work keeping 0.9 cores busy: not stored, timed again next run; \
         ANOMALYNCD_PRECISION_BUSY_CORES sets that threshold)"
    );
    d.kind = Kind::Float;
    d.threads = 1;
    d.source = Source::Stored(PathBuf::from("/c/precision.json"));
    assert_eq!(
        d.to_string(),
        "precision auto: fp32 (bf16 311 GFLOP/s, fp32 118 GFLOP/s, 1 thread; stored in /c/precision.json)"
    );
}

#[test]
fn the_cpu_model_comes_from_cpuinfo() {
    let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9R14\nflags\t: fpu\n";
    assert_eq!(cpu_model(info).as_deref(), Some("AMD EPYC 9R14"));
    assert_eq!(cpu_model("processor\t: 0\nCPU part\t: 0xd0c\n"), None);
    assert_eq!(cpu_model("model name\t: \n"), None);
}
