//! The bank's view picking and row bounds, on a hand-made bank.
use super::*;

fn bank(views: usize, items: usize) -> TokenBank {
    TokenBank {
        views,
        block: 0,
        row: [1, 1],
        guide_aug: Tensor::zeros([(views * items) as i64, 1], (Kind::Uint8, Device::Cpu)),
        guide_plain: Tensor::zeros([items as i64, 1], (Kind::Uint8, Device::Cpu)),
        store: Store::Ram {
            aug: Tensor::zeros([(views * items) as i64, 1, 1], (Kind::Half, Device::Cpu)),
            plain: Tensor::zeros([items as i64, 1, 1], (Kind::Float, Device::Cpu)),
        },
        origin: BankOrigin {
            path: None,
            bytes: 0,
            reused: false,
            seconds: 0.0,
            precision: "Float".into(),
        },
        phases: None,
    }
}

#[test]
fn picks_two_distinct_views_of_each_sample_deterministically() {
    let b = bank(3, 10);
    let idx = [4, 0, 9, 4];
    let (first, second) = b.pick(7, 2, 1, &idx, None);
    assert_eq!((first.clone(), second.clone()), b.pick(7, 2, 1, &idx, None));
    for ((&f, &s), &i) in first.iter().zip(&second).zip(&idx) {
        let i = i as i64;
        assert!((i * 3..i * 3 + 3).contains(&f) && (i * 3..i * 3 + 3).contains(&s));
        assert_ne!(f, s);
    }
    // Other epochs draw other pairs.
    let many: Vec<_> = (0..20).map(|e| b.pick(7, e, 1, &idx, None).0).collect();
    assert!(many.iter().any(|p| p != &many[0]));
    // One view: the same row twice.
    let one = bank(1, 10);
    let (f, s) = one.pick(7, 0, 0, &[5], None);
    assert_eq!((f, s), (vec![5], vec![5]));
    assert!(b.gather(&[30], Device::Cpu).is_err());
    assert!(b.plain(&[10], Device::Cpu).is_err());
    assert!(b.plain(&[9], Device::Cpu).is_ok());
}

#[test]
fn neighbour_views_replace_only_the_second_view_and_keep_the_draws_without_them() {
    let b = bank(3, 10);
    let idx = [4, 0, 9, 4, 7];
    // Items 0..5 are base crops (no neighbours); 7 and 9 are novel, each other's neighbour.
    let mut of = vec![Vec::new(); 10];
    of[7] = vec![9];
    of[9] = vec![7];
    let never = NeighbourViews::new(0.0, of.clone()).unwrap();
    let always = NeighbourViews::new(1.0, of).unwrap();
    let plain = b.pick(7, 2, 1, &idx, None);
    let (f0, s0) = b.pick(7, 2, 1, &idx, Some(&never));
    assert_eq!((&f0, &s0), (&plain.0, &plain.1));
    let (f1, s1) = b.pick(7, 2, 1, &idx, Some(&always));
    assert_eq!(f1, plain.0, "the first views stay the sample's own");
    for (k, &i) in idx.iter().enumerate() {
        let owner = s1[k] / 3;
        match i {
            7 => assert_eq!(owner, 9),
            9 => assert_eq!(owner, 7),
            _ => assert_eq!(s1[k], plain.1[k]),
        }
        // The slot drawn is the reference's: only the item changes.
        assert_eq!(s1[k] % 3, plain.1[k] % 3);
    }
}

#[test]
fn the_default_budget_is_1_gb_or_half_the_free_memory() {
    assert_eq!(super::default_budget(None), super::DEFAULT_RAM_BUDGET);
    assert_eq!(super::default_budget(Some(24_000_000_000)), 1_000_000_000);
    assert_eq!(super::default_budget(Some(1_200_000_000)), 600_000_000);
}
