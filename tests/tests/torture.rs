//! A short seeded fault campaign (`harness::torture`, the engine of
//! `driftless-torture`) in the test suite: three real nodes, fixed seeds,
//! every fault the schedule draws, the invariants checked after each.
//! Longer campaigns with random seeds: `driftless-torture --cycles 200`.

use harness::torture::{run, NetnsMode, TortureArgs};

#[test]
fn a_short_seeded_campaign_keeps_every_invariant() {
    // Seeds whose ten cycles draw every kind of fault between them.
    for seed in [2, 7] {
        let args = TortureArgs {
            seed: Some(seed),
            cycles: 5,
            dir: None,
            keep: false,
            netns: NetnsMode::Auto,
            dry_run: false,
        };
        let summary = run(&args).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{summary}");
        assert_eq!(summary.cycles, 5);
        assert_eq!(
            summary.identical, 5,
            "every cycle ended with three identical copies"
        );
        assert!(summary.acked > 0, "{summary}");
    }
}
