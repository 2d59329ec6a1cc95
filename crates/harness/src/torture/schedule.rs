//! A campaign's faults, drawn from a seed: the same seed gives the same
//! schedule (which fault, on which node, for how long), so a failure is
//! replayed with `--seed`. The timing of the processes is not replayed;
//! the schedule is.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The three nodes: two at the metro site (either may be primary), one DR.
pub const NODES: [&str; 3] = ["alpha", "metro", "dr"];
pub const ALPHA: usize = 0;
pub const METRO: usize = 1;
pub const DR: usize = 2;

/// How a resync is cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// kill -9 of the peer being resynced, then a restart.
    Kill,
    /// The link to it cut again for a while.
    Cut,
}

/// One fault. Nodes are indexes into [`NODES`]; a link is the primary's
/// link to a peer (both directions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of a node, down for `down`, then restarted (a primary comes
    /// back fenced until its peers confirm its history).
    KillRestart { node: usize, down: Duration },
    /// Everything on the link dropped for `time`.
    CutLink { to: usize, time: Duration },
    /// A one-way delay on the link for `time`.
    DelayLink {
        to: usize,
        delay: Duration,
        time: Duration,
    },
    /// A share (per mille) of the datagrams of a QUIC link lost for `time`.
    LossLink {
        to: usize,
        per_mille: u16,
        time: Duration,
    },
    /// The node cut off from every other for `time`: its network namespace's
    /// link down (as root), else every proxy to and from it.
    Partition { node: usize, time: Duration },
    /// Planned: demote the primary, promote `to`.
    Switchover { to: usize },
    /// Unplanned: kill -9 of the primary, promote `to` (an up-to-date sync
    /// peer), restart the old primary (it steps down).
    Failover { to: usize },
    /// The peer falls past the journal (its link cut for `outage`), a
    /// bitmap resync starts, and is cut short by `interrupt`.
    InterruptedResync {
        peer: usize,
        outage: Duration,
        interrupt: Interrupt,
    },
}

impl Fault {
    /// The kind, for the summary's counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::KillRestart { .. } => "kill -9 + restart",
            Fault::CutLink { .. } => "cut link",
            Fault::DelayLink { .. } => "delayed link",
            Fault::LossLink { .. } => "lossy link",
            Fault::Partition { .. } => "partition",
            Fault::Switchover { .. } => "switchover",
            Fault::Failover { .. } => "failover",
            Fault::InterruptedResync { .. } => "interrupted resync",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: &Duration| d.as_millis();
        match self {
            Fault::KillRestart { node, down } => {
                write!(f, "kill -9 {}, down {} ms", NODES[*node], ms(down))
            }
            Fault::CutLink { to, time } => {
                write!(f, "cut link to {} for {} ms", NODES[*to], ms(time))
            }
            Fault::DelayLink { to, delay, time } => write!(
                f,
                "delay link to {} by {} ms for {} ms",
                NODES[*to],
                ms(delay),
                ms(time)
            ),
            Fault::LossLink {
                to,
                per_mille,
                time,
            } => write!(
                f,
                "lose {}‰ on the link to {} for {} ms",
                per_mille,
                NODES[*to],
                ms(time)
            ),
            Fault::Partition { node, time } => {
                write!(f, "partition {} for {} ms", NODES[*node], ms(time))
            }
            Fault::Switchover { to } => write!(f, "switchover to {}", NODES[*to]),
            Fault::Failover { to } => write!(f, "failover to {}", NODES[*to]),
            Fault::InterruptedResync {
                peer,
                outage,
                interrupt,
            } => write!(
                f,
                "{} away {} ms, its resync interrupted by {:?}",
                NODES[*peer],
                ms(outage),
                interrupt
            ),
        }
    }
}

/// One cycle: writes run for `warmup`, then the fault; a frozen copy of
/// `probe` (a secondary) is checked while the fault is on, if it is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cycle {
    pub warmup: Duration,
    pub fault: Fault,
    pub probe: usize,
    /// Who is primary when the cycle starts (as the schedule expects).
    pub primary: usize,
}

/// The whole campaign.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub seed: u64,
    pub cycles: Vec<Cycle>,
}

fn ms(rng: &mut StdRng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.gen_range(lo..=hi))
}

impl Schedule {
    /// `cycles` cycles drawn from `seed`, starting with alpha primary.
    /// `dr_outage` is how long the DR link must be down for the journal to
    /// overflow (it depends on the journal and write rate the caller set).
    pub fn new(seed: u64, cycles: u32, dr_outage: Duration) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut primary = ALPHA;
        let mut out = Vec::new();
        for _ in 0..cycles {
            // Promotions stay at the metro site: DR is never primary.
            assert_ne!(primary, DR);
            let others: Vec<usize> = (0..3).filter(|&n| n != primary).collect();
            let any_peer = others[rng.gen_range(0..2)];
            // The other metro node: the one a switchover or failover goes to.
            let partner = ALPHA + METRO - primary;
            let fault = match rng.gen_range(0..100) {
                0..=17 => Fault::KillRestart {
                    node: rng.gen_range(0..3),
                    down: ms(&mut rng, 0, 1500),
                },
                18..=31 => Fault::CutLink {
                    to: any_peer,
                    time: ms(&mut rng, 300, 3000),
                },
                32..=41 => Fault::DelayLink {
                    to: any_peer,
                    delay: ms(&mut rng, 5, 80),
                    time: ms(&mut rng, 500, 2500),
                },
                42..=49 => Fault::LossLink {
                    to: DR,
                    per_mille: rng.gen_range(20..=300),
                    time: ms(&mut rng, 500, 2500),
                },
                50..=61 => Fault::Partition {
                    node: rng.gen_range(0..3),
                    time: ms(&mut rng, 300, 2500),
                },
                62..=73 => Fault::Switchover { to: partner },
                74..=85 => Fault::Failover { to: partner },
                _ => Fault::InterruptedResync {
                    peer: DR,
                    outage: dr_outage + ms(&mut rng, 0, 1000),
                    interrupt: if rng.gen_bool(0.5) {
                        Interrupt::Kill
                    } else {
                        Interrupt::Cut
                    },
                },
            };
            let cycle = Cycle {
                warmup: ms(&mut rng, 200, 1200),
                probe: others[rng.gen_range(0..2)],
                primary,
                fault,
            };
            if let Fault::Switchover { to } | Fault::Failover { to } = cycle.fault {
                primary = to;
            }
            out.push(cycle);
        }
        Schedule { seed, cycles: out }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "schedule of seed {}:", self.seed)?;
        for (i, c) in self.cycles.iter().enumerate() {
            writeln!(
                f,
                "  {:>3}: primary {}, writes {} ms, {}; probe {}",
                i + 1,
                NODES[c.primary],
                c.warmup.as_millis(),
                c.fault,
                NODES[c.probe]
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_and_the_primary_follows_it() {
        let outage = Duration::from_secs(2);
        let a = Schedule::new(42, 300, outage);
        let b = Schedule::new(42, 300, outage);
        assert_eq!(a.cycles, b.cycles);
        assert_ne!(Schedule::new(43, 300, outage).cycles, a.cycles);
        let mut primary = ALPHA;
        let mut kinds = std::collections::BTreeSet::new();
        for c in &a.cycles {
            assert_eq!(c.primary, primary);
            assert_ne!(c.probe, primary, "the probe is a secondary");
            kinds.insert(c.fault.kind());
            match c.fault {
                Fault::Switchover { to } | Fault::Failover { to } => {
                    assert_ne!(to, primary);
                    assert_ne!(to, DR, "promotions stay at the metro site");
                    primary = to;
                }
                Fault::CutLink { to, .. } | Fault::DelayLink { to, .. } => {
                    assert_ne!(to, primary)
                }
                Fault::InterruptedResync { peer, .. } => assert_ne!(peer, primary),
                _ => {}
            }
        }
        assert_eq!(
            kinds.len(),
            8,
            "every kind of fault in 300 cycles: {kinds:?}"
        );
        assert!(a.to_string().contains("schedule of seed 42"));
    }
}
